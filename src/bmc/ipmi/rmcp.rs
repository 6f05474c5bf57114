//! RMCP and IPMI session framing: the IPMI v1.5 wrapper used once before a session exists (Get
//! Channel Authentication Capabilities) and RMCP+ packets with their integrity trailer and
//! encrypted payloads. Decoding is bounds-checked: any datagram, however hostile, becomes a
//! packet or a [`Malformed`] reason, never a panic.

use super::crypto::{self, CipherSuite, SessionKeys};
use crate::bmc::BmcError;

/// RMCP header: version 1.0, reserved, no RMCP ACK, class IPMI.
const RMCP_IPMI: [u8; 4] = [0x06, 0x00, 0xff, 0x07];
const AUTH_NONE: u8 = 0x00;
pub(crate) const AUTH_RMCP_PLUS: u8 = 0x06;
const ENCRYPTED: u8 = 0x80;
const AUTHENTICATED: u8 = 0x40;
const NEXT_HEADER: u8 = 0x07;
/// Auth type, payload type, session ID, sequence number, payload length.
const V2_HEADER: usize = 12;

/// RMCP+ payload types.
pub mod payload {
    pub const IPMI: u8 = 0x00;
    pub const OPEN_SESSION_REQUEST: u8 = 0x10;
    pub const OPEN_SESSION_RESPONSE: u8 = 0x11;
    pub const RAKP1: u8 = 0x12;
    pub const RAKP2: u8 = 0x13;
    pub const RAKP3: u8 = 0x14;
    pub const RAKP4: u8 = 0x15;
}

/// Why a datagram could not be used; becomes [`BmcError::Protocol`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl From<Malformed> for BmcError {
    fn from(m: Malformed) -> Self {
        BmcError::Protocol(m.0.to_string())
    }
}

/// The keys that protect an active session's packets.
#[derive(Clone, Copy, Debug)]
pub struct Protection<'a> {
    pub suite: CipherSuite,
    pub keys: &'a SessionKeys,
}

/// One decoded packet. `session_id` is the receiver's ID (ours, in a reply from the BMC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub payload_type: u8,
    pub session_id: u32,
    pub seq: u32,
    pub payload: Vec<u8>,
}

/// Wraps an IPMI message in an unauthenticated IPMI v1.5 session (auth type none, session 0).
pub fn encode_v15(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + message.len());
    out.extend_from_slice(&RMCP_IPMI);
    out.push(AUTH_NONE);
    out.extend_from_slice(&[0; 8]); // sequence number, session ID
    out.push(message.len() as u8);
    out.extend_from_slice(message);
    out
}

/// Builds an RMCP+ packet. With `protect`, the payload is encrypted under a fresh random IV and
/// the packet carries the integrity pad, pad length, next header and AuthCode.
pub fn encode(
    payload_type: u8,
    session_id: u32,
    seq: u32,
    body: &[u8],
    protect: Option<Protection<'_>>,
) -> Vec<u8> {
    encode_with_iv(payload_type, session_id, seq, body, protect, rand::random())
}

pub(super) fn encode_with_iv(
    payload_type: u8,
    session_id: u32,
    seq: u32,
    body: &[u8],
    protect: Option<Protection<'_>>,
    iv: [u8; 16],
) -> Vec<u8> {
    let sealed;
    let (type_byte, body) = match protect {
        Some(p) => {
            sealed = crypto::encrypt(&p.keys.aes, iv, body);
            (payload_type | ENCRYPTED | AUTHENTICATED, &sealed[..])
        }
        None => (payload_type, body),
    };
    let mut out = Vec::with_capacity(4 + V2_HEADER + body.len() + 4 + 16);
    out.extend_from_slice(&RMCP_IPMI);
    out.push(AUTH_RMCP_PLUS);
    out.push(type_byte);
    out.extend_from_slice(&session_id.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(body);
    if let Some(p) = protect {
        // The AuthCode covers auth type .. next header, which must be a whole number of dwords.
        let pad = (4 - (V2_HEADER + body.len() + 2) % 4) % 4;
        out.extend(std::iter::repeat_n(0xff, pad));
        out.push(pad as u8);
        out.push(NEXT_HEADER);
        let code = p.suite.auth_code(&p.keys.k1, &out[4..]);
        out.extend_from_slice(&code);
    }
    out
}

fn take<'a>(
    data: &'a [u8],
    at: usize,
    len: usize,
    what: &'static str,
) -> Result<&'a [u8], Malformed> {
    data.get(at..at.saturating_add(len)).ok_or(Malformed(what))
}

fn le32(data: &[u8], at: usize) -> Result<u32, Malformed> {
    let b = take(data, at, 4, "packet too short")?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Decodes one datagram. Pass `protect` once the session is active: its packets must then be
/// authenticated (checked before anything else) and are decrypted when marked encrypted.
pub fn decode(datagram: &[u8], protect: Option<Protection<'_>>) -> Result<Packet, Malformed> {
    let rmcp = take(datagram, 0, 4, "datagram shorter than an RMCP header")?;
    if rmcp[0] != RMCP_IPMI[0] || rmcp[3] & 0x1f != RMCP_IPMI[3] {
        return Err(Malformed("not an RMCP IPMI datagram"));
    }
    match take(datagram, 4, 1, "no IPMI session header")?[0] {
        AUTH_RMCP_PLUS => decode_v2(datagram, protect),
        auth => decode_v15(datagram, auth),
    }
}

fn decode_v15(datagram: &[u8], auth: u8) -> Result<Packet, Malformed> {
    if auth > 0x05 {
        return Err(Malformed("unknown IPMI session authentication type"));
    }
    let seq = le32(datagram, 5)?;
    let session_id = le32(datagram, 9)?;
    // Every authentication type but "none" puts a 16-byte AuthCode before the length.
    let len_at = if auth == AUTH_NONE { 13 } else { 29 };
    let len = usize::from(take(datagram, len_at, 1, "IPMI v1.5 header too short")?[0]);
    let payload = take(
        datagram,
        len_at + 1,
        len,
        "IPMI v1.5 message shorter than its length",
    )?
    .to_vec();
    Ok(Packet {
        payload_type: payload::IPMI,
        session_id,
        seq,
        payload,
    })
}

fn decode_v2(datagram: &[u8], protect: Option<Protection<'_>>) -> Result<Packet, Malformed> {
    let type_byte = take(datagram, 5, 1, "RMCP+ header too short")?[0];
    let payload_type = type_byte & 0x3f;
    if payload_type == 0x02 {
        return Err(Malformed("OEM payloads are not supported"));
    }
    let session_id = le32(datagram, 6)?;
    let seq = le32(datagram, 10)?;
    let len_bytes = take(datagram, 14, 2, "RMCP+ header too short")?;
    let len = usize::from(u16::from_le_bytes([len_bytes[0], len_bytes[1]]));
    let body = take(
        datagram,
        4 + V2_HEADER,
        len,
        "RMCP+ payload shorter than its length",
    )?;
    let authenticated = type_byte & AUTHENTICATED != 0;
    let encrypted = type_byte & ENCRYPTED != 0;
    let Some(p) = protect else {
        if authenticated || encrypted {
            return Err(Malformed("protected packet outside a session"));
        }
        return Ok(Packet {
            payload_type,
            session_id,
            seq,
            payload: body.to_vec(),
        });
    };
    if !authenticated {
        return Err(Malformed("unauthenticated packet inside the session"));
    }
    let trailer = &datagram[4 + V2_HEADER + len..];
    let icv_len = p.suite.icv_len();
    if trailer.len() < 2 + icv_len || trailer.len() - 2 - icv_len > 3 {
        return Err(Malformed("bad integrity trailer length"));
    }
    let covered = datagram.len() - icv_len;
    let pad_len = usize::from(datagram[covered - 2]);
    if datagram[covered - 1] != NEXT_HEADER || pad_len != trailer.len() - 2 - icv_len {
        return Err(Malformed("bad integrity trailer"));
    }
    let want = p.suite.auth_code(&p.keys.k1, &datagram[4..covered]);
    if !crypto::same(&want, &datagram[covered..]) {
        return Err(Malformed("integrity check failed"));
    }
    let payload = if encrypted {
        crypto::decrypt(&p.keys.aes, body).map_err(Malformed)?
    } else {
        body.to_vec()
    };
    Ok(Packet {
        payload_type,
        session_id,
        seq,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SessionKeys {
        SessionKeys {
            sik: vec![9; 20],
            k1: vec![1; 20],
            aes: [2; 16],
        }
    }

    #[test]
    fn v15_round_trip_and_known_bytes() {
        let msg = [0x20, 0x18, 0xc8, 0x81, 0x00, 0x38, 0x8e, 0x04, 0xb5];
        let wire = encode_v15(&msg);
        assert_eq!(&wire[..14], &[6, 0, 0xff, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
        let packet = decode(&wire, None).unwrap();
        assert_eq!(
            (packet.payload_type, packet.session_id, packet.payload),
            (payload::IPMI, 0, msg.to_vec())
        );
    }

    #[test]
    fn pre_session_v2_round_trip() {
        let wire = encode(payload::RAKP1, 0, 0, &[1, 2, 3], None);
        assert_eq!(&wire[4..16], &[6, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0]);
        let packet = decode(&wire, None).unwrap();
        assert_eq!(
            (packet.payload_type, packet.payload),
            (payload::RAKP1, vec![1, 2, 3])
        );
    }

    #[test]
    fn protected_packets_are_padded_to_dwords_and_round_trip() {
        let keys = keys();
        for suite in [CipherSuite::Three, CipherSuite::Seventeen] {
            let p = Protection { suite, keys: &keys };
            for len in 0..40usize {
                let body: Vec<u8> = (0..len as u8).collect();
                let wire = encode(payload::IPMI, 0x1234_5678, 7, &body, Some(p));
                assert_eq!(wire[5], 0xc0, "encrypted and authenticated");
                assert_eq!((wire.len() - 4 - suite.icv_len()) % 4, 0, "len {len}");
                let packet = decode(&wire, Some(p)).unwrap();
                assert_eq!(
                    (packet.session_id, packet.seq, packet.payload),
                    (0x1234_5678, 7, body)
                );
            }
        }
    }

    #[test]
    fn tampering_and_wrong_keys_are_rejected() {
        let keys = keys();
        let p = Protection {
            suite: CipherSuite::Three,
            keys: &keys,
        };
        let wire = encode(payload::IPMI, 1, 1, b"hello", Some(p));
        for i in 4..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0x01;
            assert!(decode(&bad, Some(p)).is_err(), "flip at {i}");
        }
        let other = SessionKeys {
            sik: vec![9; 20],
            k1: vec![3; 20],
            aes: [2; 16],
        };
        let q = Protection {
            suite: CipherSuite::Three,
            keys: &other,
        };
        assert_eq!(
            decode(&wire, Some(q)),
            Err(Malformed("integrity check failed"))
        );
        let plain = encode(payload::IPMI, 1, 1, b"hello", None);
        assert_eq!(
            decode(&plain, Some(p)),
            Err(Malformed("unauthenticated packet inside the session"))
        );
        assert_eq!(
            decode(&wire, None),
            Err(Malformed("protected packet outside a session"))
        );
        assert!(
            decode(&[6, 0, 0xff, 6, 0x80], None).is_err(),
            "ASF ping is not IPMI"
        );
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(0u8.., 0..120), prefix in 0usize..3) {
            let keys = keys();
            let mut datagram = data;
            // Make many inputs reach the deeper branches: a valid RMCP header and auth type.
            if prefix > 0 && datagram.len() >= 5 {
                datagram[..4].copy_from_slice(&RMCP_IPMI);
                datagram[4] = if prefix == 1 { AUTH_RMCP_PLUS } else { AUTH_NONE };
            }
            let _ = decode(&datagram, None);
            let _ = decode(&datagram, Some(Protection { suite: CipherSuite::Three, keys: &keys }));
            let _ = decode(&datagram, Some(Protection { suite: CipherSuite::Seventeen, keys: &keys }));
        }
    }
}
