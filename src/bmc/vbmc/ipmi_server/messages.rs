//! IPMI messages as the BMC sees them: requests decoded with their checksums checked, responses
//! encoded to echo the requester's address, sequence and LUN, plus what a BMC answers before any
//! session exists (ASF presence pong, channel authentication capabilities, cipher suites).

use super::handshake::SUITE;
use crate::bmc::ipmi::commands::{BMC_ADDR, NETFN_APP, checksum};

pub const CMD_GET_CHANNEL_AUTH_CAPS: u8 = 0x38;
pub const CMD_GET_CHANNEL_CIPHER_SUITES: u8 = 0x54;
/// The LAN channel this BMC answers for (and "this channel", 0Eh).
const CHANNEL: u8 = 0x01;
const THIS_CHANNEL: u8 = 0x0e;

/// Completion codes (IPMI v2.0 table 5-2) this BMC sends.
pub mod cc {
    pub const OK: u8 = 0x00;
    pub const INVALID_COMMAND: u8 = 0xc1;
    pub const LENGTH_INVALID: u8 = 0xc7;
    pub const INVALID_DATA: u8 = 0xcc;
    pub const INSUFFICIENT_PRIVILEGE: u8 = 0xd4;
    pub const NOT_IN_PRESENT_STATE: u8 = 0xd5;
    pub const UNSPECIFIED: u8 = 0xff;
}

/// One IPMI request, with what the response has to echo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub netfn: u8,
    pub rs_lun: u8,
    pub rq_addr: u8,
    pub rq_seq: u8,
    pub rq_lun: u8,
    pub cmd: u8,
    pub data: Vec<u8>,
}

/// Decodes a request addressed to the BMC; anything else (bad checksums, bridged requests,
/// responses) is `None`.
pub fn decode_request(msg: &[u8]) -> Option<Request> {
    let [
        rs_addr,
        netfn_lun,
        header_sum,
        rq_addr,
        seq_lun,
        cmd,
        ..,
        body_sum,
    ] = *msg
    else {
        return None;
    };
    let body = &msg[3..msg.len() - 1];
    if rs_addr != BMC_ADDR
        || checksum(&msg[..2]) != header_sum
        || checksum(body) != body_sum
        || (netfn_lun >> 2) & 1 != 0
    {
        return None;
    }
    Some(Request {
        netfn: netfn_lun >> 2,
        rs_lun: netfn_lun & 0x03,
        rq_addr,
        rq_seq: seq_lun >> 2,
        rq_lun: seq_lun & 0x03,
        cmd,
        data: body[3..].to_vec(),
    })
}

/// The response to `req` with completion code `cc` and `data`.
pub fn encode_response(req: &Request, cc: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![req.rq_addr, ((req.netfn | 1) << 2) | req.rq_lun];
    out.push(checksum(&out));
    out.extend_from_slice(&[BMC_ADDR, (req.rq_seq << 2) | req.rs_lun, req.cmd, cc]);
    out.extend_from_slice(data);
    out.push(checksum(&out[3..]));
    out
}

/// The commands answered outside a session; `None` for any other (the datagram is dropped).
pub fn presession(req: &Request) -> Option<(u8, Vec<u8>)> {
    match (req.netfn, req.cmd) {
        (NETFN_APP, CMD_GET_CHANNEL_AUTH_CAPS) => Some(channel_auth_caps(&req.data)),
        (NETFN_APP, CMD_GET_CHANNEL_CIPHER_SUITES) => Some(cipher_suites(&req.data)),
        _ => None,
    }
}

fn channel_ok(byte: u8) -> bool {
    matches!(byte & 0x0f, CHANNEL | THIS_CHANNEL)
}

/// Get Channel Authentication Capabilities: no IPMI v1.5 login types, non-null user names,
/// and (when asked with bit 7) the IPMI v2.0 extended data saying RMCP+ is spoken.
pub fn channel_auth_caps(data: &[u8]) -> (u8, Vec<u8>) {
    let [channel, privilege] = *data else {
        return (cc::LENGTH_INVALID, Vec::new());
    };
    if !channel_ok(channel) || !matches!(privilege & 0x0f, 1..=4) {
        return (cc::INVALID_DATA, Vec::new());
    }
    let v2 = channel & 0x80;
    let extended = if v2 != 0 { 0x02 } else { 0x00 };
    (cc::OK, vec![CHANNEL, v2, 0x04, extended, 0, 0, 0, 0])
}

/// Get Channel Cipher Suites: one record, suite 3, in 16-byte pages (`ipmitool` without `-C`
/// reads this to choose a suite).
pub fn cipher_suites(data: &[u8]) -> (u8, Vec<u8>) {
    let [channel, _payload_type, index] = *data else {
        return (cc::LENGTH_INVALID, Vec::new());
    };
    if !channel_ok(channel) {
        return (cc::INVALID_DATA, Vec::new());
    }
    let (auth, integrity, confidentiality) = SUITE.algorithms();
    // Start of a standard record, suite ID, then each algorithm with its kind in bits 7:6.
    let record = [
        0xc0,
        SUITE.id(),
        auth,
        0x40 | integrity,
        0x80 | confidentiality,
    ];
    let start = usize::from(index & 0x3f) * 16;
    let mut out = vec![CHANNEL];
    out.extend(record.iter().skip(start).take(16));
    (cc::OK, out)
}

/// ASF Presence Ping → Pong advertising IPMI support (RMCP class 6, IANA 4542).
pub fn asf_pong(datagram: &[u8]) -> Option<Vec<u8>> {
    const ASF_IANA: [u8; 4] = [0x00, 0x00, 0x11, 0xbe];
    let [0x06, _, seq, class, i0, i1, i2, i3, 0x80, tag, ..] = *datagram else {
        return None;
    };
    if class & 0x1f != 0x06 || [i0, i1, i2, i3] != ASF_IANA {
        return None;
    }
    let mut out = vec![0x06, 0x00, seq, 0x06];
    out.extend_from_slice(&ASF_IANA);
    out.extend_from_slice(&[0x40, tag, 0x00, 0x10]);
    out.extend_from_slice(&ASF_IANA);
    // OEM data, then "IPMI supported, ASF 1.0", no interactions, reserved.
    out.extend_from_slice(&[0, 0, 0, 0, 0x81, 0x00, 0, 0, 0, 0, 0, 0]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bmc::ipmi::commands::{self as client, Request as ClientRequest};

    #[test]
    fn requests_round_trip_with_kilns_client_encoding() {
        let sent = ClientRequest {
            netfn: 0x00,
            cmd: 0x08,
            data: vec![0x05, 0x80, 0x04, 0, 0, 0],
        };
        let req = decode_request(&client::encode_request(&sent, 0x2a)).unwrap();
        assert_eq!((req.netfn, req.cmd, req.rq_seq), (0, 8, 0x2a));
        assert_eq!((req.rq_addr, req.data.as_slice()), (0x81, &sent.data[..]));
        let resp = client::decode_response(&encode_response(&req, 0xc1, &[1, 2])).unwrap();
        assert!(resp.answers(&sent, 0x2a));
        assert_eq!((resp.completion, resp.data), (0xc1, vec![1, 2]));

        let mut bad = client::encode_request(&sent, 1);
        bad[6] ^= 1;
        assert_eq!(decode_request(&bad), None, "body checksum");
        let mut other = client::encode_request(&sent, 1);
        other[0] = 0x22;
        assert_eq!(decode_request(&other), None, "not addressed to the BMC");
        assert_eq!(decode_request(&[0x20, 0, 0xe0, 0x81, 0, 1]), None);
    }

    #[test]
    fn presession_answers_advertise_rmcp_plus_and_suite_3() {
        let caps = client::get_channel_auth_caps();
        let req = decode_request(&client::encode_request(&caps, 0)).unwrap();
        let (code, data) = presession(&req).unwrap();
        assert_eq!(code, 0);
        assert_eq!(client::supports_v2(&data), Ok(true));
        assert_eq!(
            channel_auth_caps(&[0x0e, 4]).1[3],
            0,
            "no v2 data unless asked"
        );
        assert_eq!(channel_auth_caps(&[0x8e]).0, 0xc7);
        assert_eq!(channel_auth_caps(&[0x83, 4]).0, 0xcc);

        assert_eq!(
            cipher_suites(&[0x0e, 0, 0x80]),
            (0, vec![1, 0xc0, 3, 1, 0x41, 0x81])
        );
        assert_eq!(cipher_suites(&[0x0e, 0, 0x81]), (0, vec![1]));
        let device_id = ClientRequest {
            netfn: 0x06,
            cmd: 0x01,
            data: vec![],
        };
        let req = decode_request(&client::encode_request(&device_id, 0)).unwrap();
        assert_eq!(presession(&req), None, "nothing else before a session");
    }

    #[test]
    fn asf_ping_gets_a_pong() {
        let ping = [6, 0, 0xff, 6, 0, 0, 0x11, 0xbe, 0x80, 0x2a, 0, 0];
        let pong = asf_pong(&ping).unwrap();
        assert_eq!(
            &pong[..12],
            &[6, 0, 0xff, 6, 0, 0, 0x11, 0xbe, 0x40, 0x2a, 0, 0x10]
        );
        assert_eq!(pong.len(), 28);
        assert_eq!(pong[20], 0x81);
        assert_eq!(
            asf_pong(&[6, 0, 0xff, 7, 0, 0, 0x11, 0xbe, 0x80, 1, 0, 0]),
            None
        );
        assert_eq!(asf_pong(&ping[..9]), None);
    }
}
