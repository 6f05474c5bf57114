//! TFTP wire format (RFC 1350, options from RFC 2347): decoding what clients send and encoding
//! what the server sends. Pure and bounds-checked, so a malformed datagram is an `Err`, never a
//! panic.

use std::borrow::Cow;

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// Without a blksize option, RFC 1350's block size.
pub(super) const DEFAULT_BLOCK_SIZE: u16 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    Read,
    Write,
}

/// A read or write request. Netascii is accepted and served as octet: boot files are binary,
/// and translating line ends would corrupt them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Request {
    pub direction: Direction,
    /// As the client sent it; not yet checked as a path.
    pub file: String,
    pub options: Options,
}

/// The options this server understands, as the client asked for them (not yet range-checked).
/// Unknown options and values that are not decimal numbers are ignored, as RFC 2347 allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Options {
    pub blksize: Option<u64>,
    pub timeout: Option<u64>,
    pub tsize: Option<u64>,
    pub windowsize: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum Malformed {
    /// Any other opcode on the listening port: ignored without an answer.
    #[error("not a read or write request")]
    NotARequest,
    #[error("request ends before its {0}")]
    Truncated(&'static str),
    #[error("file name is not UTF-8")]
    NotUtf8,
    #[error("transfer mode {0:?} is not supported: use octet")]
    Mode(String),
}

/// Decodes a datagram received on the listening port.
pub(super) fn decode_request(datagram: &[u8]) -> Result<Request, Malformed> {
    let direction = match opcode(datagram) {
        Some(RRQ) => Direction::Read,
        Some(WRQ) => Direction::Write,
        _ => return Err(Malformed::NotARequest),
    };
    let rest = datagram.get(2..).unwrap_or_default();
    let (file, rest) = field(rest).ok_or(Malformed::Truncated("file name"))?;
    let file = std::str::from_utf8(file).map_err(|_| Malformed::NotUtf8)?;
    let (mode, rest) = field(rest).ok_or(Malformed::Truncated("mode"))?;
    if !(mode.eq_ignore_ascii_case(b"octet") || mode.eq_ignore_ascii_case(b"netascii")) {
        return Err(Malformed::Mode(String::from_utf8_lossy(mode).into_owned()));
    }
    Ok(Request {
        direction,
        file: file.to_owned(),
        options: decode_options(rest),
    })
}

/// Name/value pairs after the mode. The first occurrence of an option counts; a trailing name
/// without a value is ignored rather than refusing the whole request.
fn decode_options(mut rest: &[u8]) -> Options {
    let mut options = Options::default();
    while let Some((name, after_name)) = field(rest) {
        let Some((value, after_value)) = field(after_name) else {
            break;
        };
        rest = after_value;
        let value = std::str::from_utf8(value)
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok());
        let slot = match name.to_ascii_lowercase().as_slice() {
            b"blksize" => &mut options.blksize,
            b"timeout" => &mut options.timeout,
            b"tsize" => &mut options.tsize,
            b"windowsize" => &mut options.windowsize,
            _ => continue,
        };
        if slot.is_none() {
            *slot = value;
        }
    }
    options
}

/// What a client may send to a transfer socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply<'a> {
    Ack(u16),
    /// The client gives up; the message is for the log only.
    Error {
        code: u16,
        message: Cow<'a, str>,
    },
    /// Anything else (including a repeated RRQ): ignored.
    Other,
}

pub(super) fn decode_reply(datagram: &[u8]) -> Reply<'_> {
    let number = datagram.get(2..4).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match (opcode(datagram), number) {
        (Some(ACK), Some(block)) => Reply::Ack(block),
        (Some(ERROR), Some(code)) => {
            // Lenient: a message without its NUL is still an ERROR.
            let text = datagram.get(4..).unwrap_or_default();
            let text = field(text).map_or(text, |(message, _)| message);
            Reply::Error {
                code,
                message: String::from_utf8_lossy(text),
            }
        }
        _ => Reply::Other,
    }
}

/// The four bytes in front of each block's payload.
pub(super) fn data_header(block: u16) -> [u8; 4] {
    let [hi, lo] = block.to_be_bytes();
    let [op_hi, op_lo] = DATA.to_be_bytes();
    [op_hi, op_lo, hi, lo]
}

pub(super) fn encode_oack(options: &[(&str, u64)]) -> Vec<u8> {
    let mut packet = OACK.to_be_bytes().to_vec();
    for (name, value) in options {
        packet.extend_from_slice(name.as_bytes());
        packet.push(0);
        packet.extend_from_slice(value.to_string().as_bytes());
        packet.push(0);
    }
    packet
}

/// RFC 1350 error codes, those this server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorCode {
    FileNotFound = 1,
    AccessViolation = 2,
    IllegalOperation = 4,
}

pub(super) fn encode_error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut packet = ERROR.to_be_bytes().to_vec();
    packet.extend_from_slice(&(code as u16).to_be_bytes());
    packet.extend(message.bytes().filter(|b| *b != 0));
    packet.push(0);
    packet
}

fn opcode(datagram: &[u8]) -> Option<u16> {
    datagram.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// The bytes up to the next NUL and what follows it; `None` without a NUL.
fn field(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = input.iter().position(|b| *b == 0)?;
    Some((input.get(..end)?, input.get(end + 1..)?))
}

#[cfg(test)]
mod tests;
