//! The simulated firmware's TFTP client: one read request with the options PXE ROMs send
//! (blksize 1468, tsize), each block acknowledged, retransmission on silence. It counts and
//! hashes nothing: only that the whole file arrived matters (the bytes are Kiln's iPXE binary).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;

const BLKSIZE: usize = 1468;
const RETRIES: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("TFTP socket")]
    Io(#[source] std::io::Error),
    #[error("no answer from {server} for {file} after {RETRIES} tries")]
    Timeout { server: SocketAddr, file: String },
    #[error("{server} refused {file}: {message}")]
    Refused {
        server: SocketAddr,
        file: String,
        message: String,
    },
    #[error("{server} sent a malformed packet for {file}")]
    Malformed { server: SocketAddr, file: String },
}

/// The read request: `filename\0octet\0blksize\01468\0tsize\00\0`.
pub fn read_request(file: &str) -> Vec<u8> {
    let mut packet = vec![0, 1];
    for part in [file, "octet", "blksize", &BLKSIZE.to_string(), "tsize", "0"] {
        packet.extend_from_slice(part.as_bytes());
        packet.push(0);
    }
    packet
}

/// What one packet from the server means to the reader.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    Data { block: u16, payload: &'a [u8] },
    OptionAck,
    Error(String),
    Malformed,
}

pub fn parse(packet: &[u8]) -> Incoming<'_> {
    match packet {
        [0, 3, hi, lo, payload @ ..] => Incoming::Data {
            block: u16::from_be_bytes([*hi, *lo]),
            payload,
        },
        [0, 6, ..] => Incoming::OptionAck,
        [0, 5, _, _, message @ ..] => Incoming::Error(
            String::from_utf8_lossy(message)
                .trim_end_matches('\0')
                .to_string(),
        ),
        _ => Incoming::Malformed,
    }
}

fn ack(block: u16) -> [u8; 4] {
    let [hi, lo] = block.to_be_bytes();
    [0, 4, hi, lo]
}

/// Downloads `file` from `server` (port 69) from `local` (the server's reply port is learnt from
/// its first answer). Returns the byte count.
pub async fn fetch(
    local: IpAddr,
    server: SocketAddr,
    file: &str,
    wait: Duration,
) -> Result<u64, TftpError> {
    let socket = UdpSocket::bind(SocketAddr::new(local, 0))
        .await
        .map_err(TftpError::Io)?;
    let request = read_request(file);
    let mut last_sent = request.clone();
    let mut send_to = server;
    let mut peer: Option<SocketAddr> = None;
    let mut expected: u16 = 1;
    let mut total: u64 = 0;
    let mut blksize = 512;
    let mut buf = vec![0u8; 65536];
    let timeout = || TftpError::Timeout {
        server,
        file: file.to_string(),
    };
    socket
        .send_to(&last_sent, send_to)
        .await
        .map_err(TftpError::Io)?;
    let mut tries = 0;
    loop {
        let received = tokio::time::timeout(wait, socket.recv_from(&mut buf)).await;
        let (len, from) = match received {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => return Err(TftpError::Io(e)),
            Err(_) => {
                tries += 1;
                if tries >= RETRIES {
                    return Err(timeout());
                }
                socket
                    .send_to(&last_sent, send_to)
                    .await
                    .map_err(TftpError::Io)?;
                continue;
            }
        };
        if peer.is_some_and(|p| p != from) || from.ip() != server.ip() {
            continue;
        }
        peer = Some(from);
        send_to = from;
        tries = 0;
        match parse(&buf[..len]) {
            Incoming::OptionAck => {
                blksize = BLKSIZE;
                last_sent = ack(0).to_vec();
            }
            Incoming::Data { block, payload } if block == expected => {
                total += payload.len() as u64;
                last_sent = ack(block).to_vec();
                expected = expected.wrapping_add(1);
                if payload.len() < blksize {
                    socket
                        .send_to(&last_sent, send_to)
                        .await
                        .map_err(TftpError::Io)?;
                    return Ok(total);
                }
            }
            // A duplicate: acknowledge it again.
            Incoming::Data { .. } => {}
            Incoming::Error(message) => {
                return Err(TftpError::Refused {
                    server,
                    file: file.to_string(),
                    message,
                });
            }
            Incoming::Malformed => {
                return Err(TftpError::Malformed {
                    server,
                    file: file.to_string(),
                });
            }
        }
        socket
            .send_to(&last_sent, send_to)
            .await
            .map_err(TftpError::Io)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_carries_the_pxe_options() {
        assert_eq!(
            read_request("undionly.kpxe"),
            b"\0\x01undionly.kpxe\0octet\0blksize\x001468\x00tsize\x000\x00"
        );
    }

    #[test]
    fn packets_are_read_by_opcode() {
        assert_eq!(
            parse(&[0, 3, 0, 2, 9, 9]),
            Incoming::Data {
                block: 2,
                payload: &[9, 9]
            }
        );
        assert_eq!(parse(&[0, 6, b'b']), Incoming::OptionAck);
        assert_eq!(
            parse(b"\0\x05\0\x01File not found\0"),
            Incoming::Error("File not found".into())
        );
        assert_eq!(parse(&[0]), Incoming::Malformed);
        assert_eq!(parse(&[0, 9, 1, 1]), Incoming::Malformed);
    }
}
