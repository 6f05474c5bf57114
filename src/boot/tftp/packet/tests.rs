//! The wire format table-driven, plus proptests: any datagram decodes without panicking, and a
//! request the encoder below builds decodes to what it was built from.

use super::*;

/// A request as a client would send it: opcode, then NUL-terminated fields.
fn request(opcode: u16, fields: &[&[u8]]) -> Vec<u8> {
    let mut datagram = opcode.to_be_bytes().to_vec();
    for field in fields {
        datagram.extend_from_slice(field);
        datagram.push(0);
    }
    datagram
}

fn read(file: &str, options: Options) -> Result<Request, Malformed> {
    Ok(Request {
        direction: Direction::Read,
        file: file.into(),
        options,
    })
}

#[test]
fn requests_decode() {
    let none = Options::default();
    let cases: Vec<(&str, Vec<u8>, Result<Request, Malformed>)> = vec![
        (
            "plain RRQ",
            request(RRQ, &[b"undionly.kpxe", b"octet"]),
            read("undionly.kpxe", none),
        ),
        (
            "mode is case-insensitive",
            request(RRQ, &[b"a", b"OCTET"]),
            read("a", none),
        ),
        (
            "netascii served as octet",
            request(RRQ, &[b"a", b"netascii"]),
            read("a", none),
        ),
        (
            "WRQ",
            request(WRQ, &[b"up.bin", b"octet"]),
            Ok(Request {
                direction: Direction::Write,
                file: "up.bin".into(),
                options: none,
            }),
        ),
        (
            "all four options, any case, unknown ones skipped",
            request(
                RRQ,
                &[
                    b"a",
                    b"octet",
                    b"BlkSize",
                    b"1468",
                    b"multicast",
                    b"",
                    b"tsize",
                    b"0",
                    b"timeout",
                    b"3",
                    b"windowsize",
                    b"8",
                ],
            ),
            read(
                "a",
                Options {
                    blksize: Some(1468),
                    timeout: Some(3),
                    tsize: Some(0),
                    windowsize: Some(8),
                },
            ),
        ),
        (
            "first occurrence wins; bad numbers ignored",
            request(
                RRQ,
                &[
                    b"a", b"octet", b"blksize", b"1024", b"blksize", b"8", b"tsize", b"-1",
                ],
            ),
            read(
                "a",
                Options {
                    blksize: Some(1024),
                    ..none
                },
            ),
        ),
        (
            "numbers too large for u64 ignored",
            request(
                RRQ,
                &[b"a", b"octet", b"blksize", b"99999999999999999999999"],
            ),
            read("a", none),
        ),
        (
            "a dangling option name is ignored",
            request(RRQ, &[b"a", b"octet", b"blksize"]),
            read("a", none),
        ),
        (
            "trailing bytes without NUL are ignored",
            [request(RRQ, &[b"a", b"octet"]), b"blk".to_vec()].concat(),
            read("a", none),
        ),
        (
            "empty file name decodes (refused as a path later)",
            request(RRQ, &[b"", b"octet"]),
            read("", none),
        ),
        (
            "mail mode",
            request(RRQ, &[b"a", b"mail"]),
            Err(Malformed::Mode("mail".into())),
        ),
        (
            "no mode",
            request(RRQ, &[b"a"]),
            Err(Malformed::Truncated("mode")),
        ),
        (
            "name without NUL",
            [RRQ.to_be_bytes().to_vec(), b"abc".to_vec()].concat(),
            Err(Malformed::Truncated("file name")),
        ),
        (
            "opcode only",
            RRQ.to_be_bytes().to_vec(),
            Err(Malformed::Truncated("file name")),
        ),
        (
            "non-UTF-8 name",
            request(RRQ, &[b"\xff\xfe", b"octet"]),
            Err(Malformed::NotUtf8),
        ),
        ("empty datagram", vec![], Err(Malformed::NotARequest)),
        ("one byte", vec![0], Err(Malformed::NotARequest)),
        (
            "ACK on the listening port",
            vec![0, 4, 0, 1],
            Err(Malformed::NotARequest),
        ),
        (
            "unknown opcode",
            request(9, &[b"a", b"octet"]),
            Err(Malformed::NotARequest),
        ),
    ];
    for (what, datagram, want) in cases {
        assert_eq!(decode_request(&datagram), want, "{what}");
    }
}

#[test]
fn replies_decode() {
    let error = |code, message: &'static str| Reply::Error {
        code,
        message: message.into(),
    };
    let cases: &[(&str, &[u8], Reply<'_>)] = &[
        ("ACK 0", &[0, 4, 0, 0], Reply::Ack(0)),
        ("ACK 65535", &[0, 4, 0xff, 0xff], Reply::Ack(65535)),
        ("ACK with padding", &[0, 4, 1, 2, 0, 0], Reply::Ack(0x0102)),
        ("short ACK", &[0, 4, 1], Reply::Other),
        (
            "ERROR with message",
            b"\x00\x05\x00\x08tsize only\x00",
            error(8, "tsize only"),
        ),
        ("ERROR without NUL", b"\x00\x05\x00\x00bye", error(0, "bye")),
        ("ERROR without message", &[0, 5, 0, 5], error(5, "")),
        ("short ERROR", &[0, 5, 0], Reply::Other),
        ("DATA", &[0, 3, 0, 1, 42], Reply::Other),
        ("repeated RRQ", b"\x00\x01a\x00octet\x00", Reply::Other),
        ("empty", &[], Reply::Other),
    ];
    for (what, datagram, want) in cases {
        assert_eq!(&decode_reply(datagram), want, "{what}");
    }
}

#[test]
fn server_packets_encode() {
    assert_eq!(data_header(1), [0, 3, 0, 1]);
    assert_eq!(data_header(0x1234), [0, 3, 0x12, 0x34]);
    assert_eq!(data_header(65535), [0, 3, 0xff, 0xff]);
    assert_eq!(encode_oack(&[]), [0, 6]);
    assert_eq!(
        encode_oack(&[("blksize", 1468), ("tsize", 73_000)]),
        b"\x00\x06blksize\x001468\x00tsize\x0073000\x00"
    );
    assert_eq!(
        encode_error(ErrorCode::FileNotFound, "file not found"),
        b"\x00\x05\x00\x01file not found\x00"
    );
    assert_eq!(
        encode_error(ErrorCode::IllegalOperation, "a\0b"),
        b"\x00\x05\x00\x04ab\x00",
        "a NUL inside the message would end it early"
    );
    assert_eq!(
        encode_error(ErrorCode::AccessViolation, "")[..4],
        [0, 5, 0, 2]
    );
}

proptest::proptest! {
    #[test]
    fn decoding_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600), opcode in 0u16..8) {
        let _ = decode_request(&data);
        let _ = decode_reply(&data);
        // Steer half of the inputs past the opcode check.
        let mut steered = opcode.to_be_bytes().to_vec();
        steered.extend_from_slice(&data);
        let _ = decode_request(&steered);
        let _ = decode_reply(&steered);
    }

    #[test]
    fn encoded_requests_decode_to_themselves(
        file in "[^\u{0}]{0,64}",
        write in proptest::bool::ANY,
        mode in proptest::sample::select(vec!["octet", "Octet", "NETASCII"]),
        blksize in proptest::option::of(proptest::num::u64::ANY),
        timeout in proptest::option::of(0u64..300),
        tsize in proptest::option::of(proptest::num::u64::ANY),
        windowsize in proptest::option::of(0u64..70_000),
    ) {
        let mut fields: Vec<Vec<u8>> = vec![file.clone().into_bytes(), mode.as_bytes().to_vec()];
        for (name, value) in [("blksize", blksize), ("timeout", timeout), ("tsize", tsize), ("windowsize", windowsize)] {
            if let Some(value) = value {
                fields.push(name.into());
                fields.push(value.to_string().into_bytes());
            }
        }
        let fields: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        let datagram = request(if write { WRQ } else { RRQ }, &fields);
        let want = Request {
            direction: if write { Direction::Write } else { Direction::Read },
            file,
            options: Options { blksize, timeout, tsize, windowsize },
        };
        proptest::prop_assert_eq!(decode_request(&datagram), Ok(want));
    }
}
