//! The RMCP+ session handshake messages: Open Session Request/Response and RAKP 1–4, built and
//! parsed as pure functions. RAKP status codes become plain errors here, so a wrong password is
//! told apart from a BMC that does not speak the requested cipher suite.

use super::crypto::{self, CipherSuite, Rakp};
use super::rmcp::Malformed;
use crate::bmc::BmcError;

/// RAKP 1 role byte: Administrator, looked up by user name only (ipmitool's default).
pub const ROLE_ADMIN_BY_NAME: u8 = 0x14;

/// Open Session Request: tag, requested privilege, our session ID and the three algorithms.
pub fn open_session_request(tag: u8, console_id: u32, suite: CipherSuite) -> Vec<u8> {
    let (auth, integrity, confidentiality) = suite.algorithms();
    let mut out = vec![tag, ROLE_ADMIN_BY_NAME & 0x0f, 0, 0];
    out.extend_from_slice(&console_id.to_le_bytes());
    for (kind, alg) in [(0u8, auth), (1, integrity), (2, confidentiality)] {
        out.extend_from_slice(&[kind, 0, 0, 8, alg, 0, 0, 0]);
    }
    out
}

/// Reads an Open Session Response to the request with `tag`; returns the BMC's session ID.
/// `Ok(None)` means the reply belongs to another (earlier) request.
pub fn open_session_response(
    p: &[u8],
    tag: u8,
    console_id: u32,
    suite: CipherSuite,
) -> Result<Option<u32>, BmcError> {
    let [got_tag, status, ..] = p else {
        return Err(Malformed("open session response too short").into());
    };
    if *got_tag != tag {
        return Ok(None);
    }
    if *status != 0 {
        return Err(status_error(*status, suite));
    }
    if p.len() < 36 {
        return Err(Malformed("open session response too short").into());
    }
    if le32(p, 4) != console_id {
        return Ok(None);
    }
    let (auth, integrity, confidentiality) = suite.algorithms();
    if p[16] & 0x3f != auth || p[24] & 0x3f != integrity || p[32] & 0x3f != confidentiality {
        return Err(Malformed("BMC answered with other algorithms than offered").into());
    }
    match le32(p, 8) {
        0 => Err(Malformed("BMC assigned session ID 0").into()),
        id => Ok(Some(id)),
    }
}

fn le32(p: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = p.get(at..at + 4) {
        b.copy_from_slice(s);
    }
    u32::from_le_bytes(b)
}

/// RAKP 1: tag, the BMC's session ID, our random number, the role and the user name.
pub fn rakp1(tag: u8, r: &Rakp<'_>) -> Vec<u8> {
    let mut out = vec![tag, 0, 0, 0];
    out.extend_from_slice(&r.bmc_id.to_le_bytes());
    out.extend_from_slice(&r.console_random);
    out.extend_from_slice(&[r.role, 0, 0, r.username.len() as u8]);
    out.extend_from_slice(r.username);
    out
}

/// Reads RAKP 2 and checks the BMC's proof of the password. On success fills in the BMC's
/// random number and GUID. `Ok(false)` means the reply belongs to an earlier request.
pub fn rakp2(p: &[u8], tag: u8, r: &mut Rakp<'_>, kuid: &[u8]) -> Result<bool, BmcError> {
    let [got_tag, status, ..] = p else {
        return Err(Malformed("RAKP 2 too short").into());
    };
    if *got_tag != tag {
        return Ok(false);
    }
    if *status != 0 {
        return Err(status_error(*status, r.suite));
    }
    let code_len = r.suite.hmac_len();
    if p.len() < 40 + code_len {
        return Err(Malformed("RAKP 2 too short").into());
    }
    if le32(p, 4) != r.console_id {
        return Ok(false);
    }
    r.bmc_random.copy_from_slice(&p[8..24]);
    r.bmc_guid.copy_from_slice(&p[24..40]);
    if !crypto::same(&r.rakp2_code(kuid), &p[40..40 + code_len]) {
        // The BMC proved knowledge of a different password than ours.
        return Err(BmcError::WrongCredentials);
    }
    Ok(true)
}

/// RAKP 3: our proof, or (with a non-zero `status`) an abort that lets the BMC free the session.
pub fn rakp3(tag: u8, status: u8, r: &Rakp<'_>, kuid: &[u8]) -> Vec<u8> {
    let mut out = vec![tag, status, 0, 0];
    out.extend_from_slice(&r.bmc_id.to_le_bytes());
    if status == 0 {
        out.extend_from_slice(&r.rakp3_code(kuid));
    }
    out
}

/// Reads RAKP 4 and checks the BMC's integrity check value over the new session key.
pub fn rakp4(p: &[u8], tag: u8, r: &Rakp<'_>, sik: &[u8]) -> Result<bool, BmcError> {
    let [got_tag, status, ..] = p else {
        return Err(Malformed("RAKP 4 too short").into());
    };
    if *got_tag != tag {
        return Ok(false);
    }
    if *status != 0 {
        return Err(status_error(*status, r.suite));
    }
    let icv_len = r.suite.icv_len();
    if p.len() < 8 + icv_len {
        return Err(Malformed("RAKP 4 too short").into());
    }
    if le32(p, 4) != r.console_id {
        return Ok(false);
    }
    if !crypto::same(&r.rakp4_icv(sik), &p[8..8 + icv_len]) {
        // RAKP 2 proved the password, so a different session key means the BMC mixes in a
        // BMC key (Kg), which Kiln does not configure.
        return Err(BmcError::Unsupported("BMC key (Kg) two-key logins".into()));
    }
    Ok(true)
}

/// RMCP+ status codes (IPMI v2.0 table 13-15) as errors an operator can act on.
pub fn status_error(status: u8, suite: CipherSuite) -> BmcError {
    match status {
        // Unauthorized name; invalid integrity check value; illegal parameter, which several
        // BMCs (and ipmi_sim) send for an unknown user.
        0x0d | 0x0f | 0x12 => BmcError::WrongCredentials,
        0x04 | 0x05 | 0x06 | 0x07 | 0x10 | 0x11 => {
            BmcError::Unsupported(format!("IPMI cipher suite {}", suite.id()))
        }
        0x01 | 0x0b => BmcError::Protocol("BMC has no free sessions".into()),
        0x09 | 0x0a => {
            BmcError::Protocol("BMC refused the Administrator role for this user".into())
        }
        0x02 | 0x08 => BmcError::Protocol("BMC lost the session during login".into()),
        other => BmcError::Protocol(format!(
            "BMC rejected the login (RMCP+ status 0x{other:02x})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rakp(suite: CipherSuite) -> Rakp<'static> {
        Rakp {
            suite,
            console_id: 0x1111_2222,
            bmc_id: 0x0000_0402,
            console_random: [3; 16],
            bmc_random: [0; 16],
            bmc_guid: [0; 16],
            role: ROLE_ADMIN_BY_NAME,
            username: b"admin",
        }
    }

    /// What a BMC knowing `password` would send in RAKP 2.
    fn bmc_rakp2(suite: CipherSuite, tag: u8, password: &[u8]) -> Vec<u8> {
        let mut bmc = rakp(suite);
        bmc.bmc_random = [5; 16];
        bmc.bmc_guid = [6; 16];
        let mut p = vec![tag, 0, 0, 0];
        p.extend_from_slice(&bmc.console_id.to_le_bytes());
        p.extend_from_slice(&[5; 16]);
        p.extend_from_slice(&[6; 16]);
        p.extend_from_slice(&bmc.rakp2_code(password));
        p
    }

    #[test]
    fn open_session_request_layout() {
        let p = open_session_request(7, 0xa0a1_a2a3, CipherSuite::Three);
        assert_eq!(p.len(), 32);
        assert_eq!(&p[..8], &[7, 4, 0, 0, 0xa3, 0xa2, 0xa1, 0xa0]);
        assert_eq!(
            &p[8..],
            &[
                0, 0, 0, 8, 1, 0, 0, 0, 1, 0, 0, 8, 1, 0, 0, 0, 2, 0, 0, 8, 1, 0, 0, 0
            ]
        );
        assert_eq!(
            &open_session_request(7, 1, CipherSuite::Seventeen)[12..13],
            &[3]
        );
    }

    #[test]
    fn open_session_response_cases() {
        let mut ok = vec![7, 0, 4, 0, 0xa3, 0xa2, 0xa1, 0xa0, 0x02, 0x04, 0, 0];
        for (kind, alg) in [(0u8, 1u8), (1, 1), (2, 1)] {
            ok.extend_from_slice(&[kind, 0, 0, 8, alg, 0, 0, 0]);
        }
        let suite = CipherSuite::Three;
        assert_eq!(
            open_session_response(&ok, 7, 0xa0a1_a2a3, suite),
            Ok(Some(0x0402))
        );
        assert_eq!(
            open_session_response(&ok, 8, 0xa0a1_a2a3, suite),
            Ok(None),
            "other tag"
        );
        assert_eq!(
            open_session_response(&ok, 7, 1, suite),
            Ok(None),
            "other console session"
        );
        assert_eq!(
            open_session_response(&[7, 0x04], 7, 1, suite),
            Err(BmcError::Unsupported("IPMI cipher suite 3".into()))
        );
        let mut other_alg = ok.clone();
        other_alg[16] = 3;
        assert!(matches!(
            open_session_response(&other_alg, 7, 0xa0a1_a2a3, suite),
            Err(BmcError::Protocol(_))
        ));
        assert!(open_session_response(&ok[..20], 7, 0xa0a1_a2a3, suite).is_err());
    }

    #[test]
    fn rakp2_checks_the_password_proof() {
        for suite in [CipherSuite::Three, CipherSuite::Seventeen] {
            let reply = bmc_rakp2(suite, 9, b"password");
            let mut r = rakp(suite);
            assert_eq!(rakp2(&reply, 9, &mut r, b"password"), Ok(true));
            assert_eq!((r.bmc_random, r.bmc_guid), ([5; 16], [6; 16]));
            assert_eq!(
                rakp2(&reply, 9, &mut rakp(suite), b"wrong"),
                Err(BmcError::WrongCredentials)
            );
            assert_eq!(rakp2(&reply, 8, &mut rakp(suite), b"password"), Ok(false));
            assert_eq!(
                rakp2(&[9, 0x0d], 9, &mut rakp(suite), b"x"),
                Err(BmcError::WrongCredentials)
            );
            assert!(rakp2(&reply[..50], 9, &mut rakp(suite), b"password").is_err());
        }
    }

    #[test]
    fn rakp3_and_rakp4() {
        let r = rakp(CipherSuite::Three);
        assert_eq!(rakp3(1, 0, &r, b"pw").len(), 8 + 20);
        assert_eq!(rakp3(1, 0x0f, &r, b"pw"), vec![1, 0x0f, 0, 0, 2, 4, 0, 0]);
        let keys = r.session_keys(b"pw");
        let mut reply = vec![4, 0, 0, 0];
        reply.extend_from_slice(&r.console_id.to_le_bytes());
        reply.extend_from_slice(&r.rakp4_icv(&keys.sik));
        assert_eq!(rakp4(&reply, 4, &r, &keys.sik), Ok(true));
        assert!(matches!(
            rakp4(&reply, 4, &r, &[0; 20]),
            Err(BmcError::Unsupported(_))
        ));
        assert_eq!(
            rakp4(&[4, 0x0f], 4, &r, &keys.sik),
            Err(BmcError::WrongCredentials)
        );
    }

    #[test]
    fn status_codes_read_plainly() {
        let s = CipherSuite::Seventeen;
        let cases = [
            (0x0d, BmcError::WrongCredentials),
            (0x12, BmcError::WrongCredentials),
            (0x11, BmcError::Unsupported("IPMI cipher suite 17".into())),
            (0x01, BmcError::Protocol("BMC has no free sessions".into())),
            (
                0x3f,
                BmcError::Protocol("BMC rejected the login (RMCP+ status 0x3f)".into()),
            ),
        ];
        for (status, want) in cases {
            assert_eq!(status_error(status, s), want, "0x{status:02x}");
        }
    }

    proptest::proptest! {
        #[test]
        fn handshake_parsers_never_panic(p in proptest::collection::vec(0u8.., 0..80), tag in 0u8..3) {
            for suite in [CipherSuite::Three, CipherSuite::Seventeen] {
                let _ = open_session_response(&p, tag, 0, suite);
                let mut r = rakp(suite);
                let _ = rakp2(&p, tag, &mut r, b"pw");
                let _ = rakp4(&p, tag, &r, &[0; 20]);
            }
        }
    }
}
