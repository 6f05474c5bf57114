//! The BMC's half of the RMCP+ login: Open Session, RAKP 1→2 and RAKP 3→4 as pure functions over
//! one half-open session. The codes and keys come from the same formulas Kiln's client uses
//! (`bmc::ipmi::crypto::Rakp`), so both ends are checked against one set of known answers.

use crate::bmc::ipmi::crypto::{self, CipherSuite, Rakp, SessionKeys};
use crate::model::Secret;
use std::net::SocketAddr;
use std::time::Instant;

/// The one cipher suite served: RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128.
pub const SUITE: CipherSuite = CipherSuite::Three;
/// The highest privilege a session can reach (the configured user is an Administrator).
pub const ADMIN: u8 = 0x04;

/// RMCP+ status codes (IPMI v2.0 table 13-15) this BMC sends.
pub mod status {
    pub const OK: u8 = 0x00;
    pub const NO_RESOURCES: u8 = 0x01;
    pub const INVALID_SESSION_ID: u8 = 0x02;
    pub const INVALID_AUTH_ALGORITHM: u8 = 0x04;
    pub const INVALID_INTEGRITY_ALGORITHM: u8 = 0x05;
    pub const INVALID_ROLE: u8 = 0x09;
    pub const INVALID_NAME_LENGTH: u8 = 0x0c;
    pub const UNAUTHORIZED_NAME: u8 = 0x0d;
    pub const INVALID_INTEGRITY_CHECK: u8 = 0x0f;
    pub const INVALID_CONFIDENTIALITY_ALGORITHM: u8 = 0x10;
    pub const ILLEGAL_PARAMETER: u8 = 0x12;
}

/// The one user this BMC knows. `Secret` keeps the password out of `Debug`.
#[derive(Debug)]
pub struct Credentials {
    pub username: Vec<u8>,
    pub password: Secret,
}

/// Open Session Request: tag, requested maximum privilege, the console's session ID and the
/// algorithms it proposes (`None`: a zero-length record, "the BMC chooses").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenRequest {
    pub tag: u8,
    pub privilege: u8,
    pub console_id: u32,
    pub algorithms: [Option<u8>; 3],
}

fn le32(p: &[u8], at: usize) -> Option<u32> {
    let b = p.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads an Open Session Request; `Err` carries the tag and status to refuse it with.
pub fn parse_open(p: &[u8]) -> Option<Result<OpenRequest, (u8, u8, u32)>> {
    if p.len() < 32 {
        return None;
    }
    let (tag, console_id) = (p[0], le32(p, 4)?);
    let mut algorithms = [None; 3];
    for (kind, slot) in algorithms.iter_mut().enumerate() {
        let record = &p[8 + 8 * kind..16 + 8 * kind];
        if usize::from(record[0]) != kind || !matches!(record[3], 0 | 8) {
            return Some(Err((tag, status::ILLEGAL_PARAMETER, console_id)));
        }
        *slot = (record[3] == 8).then_some(record[4] & 0x3f);
    }
    let privilege = match p[1] & 0x0f {
        0 => ADMIN,
        level @ 1..=4 => level,
        _ => return Some(Err((tag, status::INVALID_ROLE, console_id))),
    };
    let (auth, integrity, confidentiality) = SUITE.algorithms();
    let refusal = [
        (auth, status::INVALID_AUTH_ALGORITHM),
        (integrity, status::INVALID_INTEGRITY_ALGORITHM),
        (confidentiality, status::INVALID_CONFIDENTIALITY_ALGORITHM),
    ]
    .into_iter()
    .zip(algorithms)
    .find_map(|((ours, refuse), theirs)| theirs.filter(|alg| *alg != ours).map(|_| refuse));
    if let Some(refuse) = refusal {
        return Some(Err((tag, refuse, console_id)));
    }
    Some(Ok(OpenRequest {
        tag,
        privilege,
        console_id,
        algorithms,
    }))
}

/// Open Session Response; on an error status only tag, status and console ID are meaningful.
pub fn open_response(tag: u8, status: u8, privilege: u8, console_id: u32, bmc_id: u32) -> Vec<u8> {
    let mut out = vec![tag, status, privilege, 0];
    out.extend_from_slice(&console_id.to_le_bytes());
    if status != status::OK {
        return out;
    }
    out.extend_from_slice(&bmc_id.to_le_bytes());
    let (auth, integrity, confidentiality) = SUITE.algorithms();
    for (kind, alg) in [(0u8, auth), (1, integrity), (2, confidentiality)] {
        out.extend_from_slice(&[kind, 0, 0, 8, alg, 0, 0, 0]);
    }
    out
}

/// The error form of RAKP 2 and RAKP 4: tag, status, reserved, the console's session ID.
pub fn rakp_error(tag: u8, status: u8, console_id: u32) -> Vec<u8> {
    let mut out = vec![tag, status, 0, 0];
    out.extend_from_slice(&console_id.to_le_bytes());
    out
}

/// RAKP 1: the console's random number, the role it asks for and the user name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rakp1 {
    pub tag: u8,
    pub bmc_id: u32,
    pub console_random: [u8; 16],
    pub role: u8,
    pub username: Vec<u8>,
}

pub fn parse_rakp1(p: &[u8]) -> Option<Rakp1> {
    let header = p.get(..28)?;
    let mut console_random = [0u8; 16];
    console_random.copy_from_slice(&header[8..24]);
    let name_len = usize::from(header[27]);
    Some(Rakp1 {
        tag: header[0],
        bmc_id: le32(header, 4)?,
        console_random,
        role: header[24],
        // A name longer than 16 bytes is refused in `Login::rakp1`, with its own status.
        username: p.get(28..28 + name_len)?.to_vec(),
    })
}

/// RAKP 3: the console's status and its proof of the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rakp3 {
    pub tag: u8,
    pub status: u8,
    pub bmc_id: u32,
    pub code: Vec<u8>,
}

pub fn parse_rakp3(p: &[u8]) -> Option<Rakp3> {
    Some(Rakp3 {
        tag: *p.first()?,
        status: *p.get(1)?,
        bmc_id: le32(p, 4)?,
        code: p.get(8..).unwrap_or_default().to_vec(),
    })
}

/// What RAKP 1 fixed and RAKP 3 must prove.
#[derive(Clone, Copy)]
struct Exchange {
    console_random: [u8; 16],
    bmc_random: [u8; 16],
    role: u8,
}

/// One half-open session, from Open Session until RAKP 3 proves the password.
#[derive(Clone)]
pub struct Login {
    pub peer: SocketAddr,
    pub console_id: u32,
    pub started: Instant,
    exchange: Option<Exchange>,
}

/// A finished handshake: RAKP 4 to send and the session's keys and privilege limit.
pub struct Accepted {
    pub reply: Vec<u8>,
    pub keys: SessionKeys,
    pub max_privilege: u8,
}

impl Login {
    pub fn new(peer: SocketAddr, console_id: u32, started: Instant) -> Self {
        Self {
            peer,
            console_id,
            started,
            exchange: None,
        }
    }

    fn rakp<'a>(&self, x: &Exchange, bmc_id: u32, guid: [u8; 16], name: &'a [u8]) -> Rakp<'a> {
        Rakp {
            suite: SUITE,
            console_id: self.console_id,
            bmc_id,
            console_random: x.console_random,
            bmc_random: x.bmc_random,
            bmc_guid: guid,
            role: x.role,
            username: name,
        }
    }

    /// RAKP 1 → RAKP 2 proving this BMC knows the password, or the status to refuse with.
    /// A repeated RAKP 1 (the console resending) starts the exchange over.
    pub fn rakp1(
        &mut self,
        msg: &Rakp1,
        user: &Credentials,
        guid: [u8; 16],
        bmc_random: [u8; 16],
    ) -> Result<Vec<u8>, u8> {
        if msg.username.len() > 16 {
            return Err(status::INVALID_NAME_LENGTH);
        }
        if !matches!(msg.role & 0x0f, 1..=4) || msg.role & 0xe0 != 0 {
            return Err(status::INVALID_ROLE);
        }
        if !crypto::same(&msg.username, &user.username) {
            return Err(status::UNAUTHORIZED_NAME);
        }
        let x = Exchange {
            console_random: msg.console_random,
            bmc_random,
            role: msg.role,
        };
        let code = self
            .rakp(&x, msg.bmc_id, guid, &user.username)
            .rakp2_code(user.password.expose().as_bytes());
        self.exchange = Some(x);
        let mut out = rakp_error(msg.tag, status::OK, self.console_id);
        out.extend_from_slice(&bmc_random);
        out.extend_from_slice(&guid);
        out.extend_from_slice(&code);
        Ok(out)
    }

    /// RAKP 3 → RAKP 4 and the session keys, or the status to refuse with (a wrong password
    /// shows here as an invalid integrity check value).
    pub fn rakp3(&self, msg: &Rakp3, user: &Credentials, guid: [u8; 16]) -> Result<Accepted, u8> {
        let Some(x) = self.exchange else {
            return Err(status::INVALID_SESSION_ID);
        };
        let rakp = self.rakp(&x, msg.bmc_id, guid, &user.username);
        let password = user.password.expose().as_bytes();
        if !crypto::same(&rakp.rakp3_code(password), &msg.code) {
            return Err(status::INVALID_INTEGRITY_CHECK);
        }
        let keys = rakp.session_keys(password);
        let mut reply = rakp_error(msg.tag, status::OK, self.console_id);
        reply.extend_from_slice(&rakp.rakp4_icv(&keys.sik));
        Ok(Accepted {
            reply,
            keys,
            max_privilege: x.role & 0x0f,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bmc::BmcError;
    use crate::bmc::ipmi::rakp;

    fn user() -> Credentials {
        Credentials {
            username: b"admin".to_vec(),
            password: Secret::new("password"),
        }
    }

    #[test]
    fn open_session_accepts_suite_3_and_refuses_others_with_their_status() {
        let ok = rakp::open_session_request(7, 0xa0a2_a3a4, CipherSuite::Three);
        let req = parse_open(&ok).unwrap().unwrap();
        assert_eq!(
            (req.tag, req.privilege, req.console_id),
            (7, 4, 0xa0a2_a3a4)
        );
        let reply = open_response(7, 0, req.privilege, req.console_id, 0x0102_0304);
        let client = rakp::open_session_response(&reply, 7, 0xa0a2_a3a4, CipherSuite::Three);
        assert_eq!(client, Ok(Some(0x0102_0304)));

        let seventeen = rakp::open_session_request(7, 1, CipherSuite::Seventeen);
        assert_eq!(parse_open(&seventeen), Some(Err((7, 0x04, 1))));
        let reply = open_response(7, 0x04, 0, 1, 0);
        assert_eq!(
            rakp::open_session_response(&reply, 7, 1, CipherSuite::Seventeen),
            Err(BmcError::Unsupported("IPMI cipher suite 17".into()))
        );
        let mut cases = Vec::new();
        for (at, value, want) in [(20, 0, 0x05), (28, 0, 0x10), (8, 1, 0x12), (1, 5, 0x09)] {
            let mut p = ok.clone();
            p[at] = value;
            cases.push((parse_open(&p), want));
        }
        for (got, want) in cases {
            assert_eq!(got.and_then(Result::err).map(|e| e.1), Some(want));
        }
        let mut wildcard = ok.clone();
        wildcard[11] = 0;
        assert_eq!(parse_open(&wildcard).unwrap().unwrap().algorithms[0], None);
        assert_eq!(parse_open(&ok[..31]), None);
    }

    #[test]
    fn rakp_checks_name_role_and_password_proof() {
        let peer = "127.0.0.1:5000".parse().unwrap();
        let mut login = Login::new(peer, 0x1111_2222, Instant::now());
        let mut client = Rakp {
            suite: SUITE,
            console_id: 0x1111_2222,
            bmc_id: 0x0a0b_0c0d,
            console_random: [3; 16],
            bmc_random: [0; 16],
            bmc_guid: [0; 16],
            role: rakp::ROLE_ADMIN_BY_NAME,
            username: b"admin",
        };
        let msg = parse_rakp1(&rakp::rakp1(9, &client)).unwrap();
        let reply = login.rakp1(&msg, &user(), [6; 16], [5; 16]).unwrap();
        assert_eq!(rakp::rakp2(&reply, 9, &mut client, b"password"), Ok(true));
        assert_eq!(
            rakp::rakp2(&reply, 9, &mut client.clone(), b"wrong"),
            Err(BmcError::WrongCredentials)
        );

        let wrong = parse_rakp3(&rakp::rakp3(2, 0, &client, b"Password")).unwrap();
        assert_eq!(login.rakp3(&wrong, &user(), [6; 16]).err(), Some(0x0f));
        let right = parse_rakp3(&rakp::rakp3(2, 0, &client, b"password")).unwrap();
        let accepted = login.rakp3(&right, &user(), [6; 16]).unwrap();
        let keys = client.session_keys(b"password");
        assert_eq!(
            rakp::rakp4(&accepted.reply, 2, &client, &keys.sik),
            Ok(true)
        );
        assert_eq!((accepted.keys.k1, accepted.max_privilege), (keys.k1, 4));

        let mut other = msg.clone();
        other.username = b"root".to_vec();
        assert_eq!(login.rakp1(&other, &user(), [6; 16], [5; 16]), Err(0x0d));
        other.username = vec![b'a'; 17];
        assert_eq!(login.rakp1(&other, &user(), [6; 16], [5; 16]), Err(0x0c));
        let mut role = msg.clone();
        role.role = 0x15;
        assert_eq!(login.rakp1(&role, &user(), [6; 16], [5; 16]), Err(0x09));
        let fresh = Login::new(peer, 1, Instant::now());
        assert_eq!(fresh.rakp3(&right, &user(), [6; 16]).err(), Some(0x02));
        assert_eq!(
            rakp::status_error(0x0d, SUITE),
            BmcError::WrongCredentials,
            "Kiln's client reads an unknown name as wrong credentials"
        );
    }
}
