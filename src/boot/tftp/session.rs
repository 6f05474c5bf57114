//! The sending half of a read transfer: the OACK, then the file in windows of blocks over the
//! transfer's own connected socket, each block sent straight from the shared file bytes,
//! retransmitted on timeout, until the client acknowledges the last block or gives up.

use std::io::{self, IoSlice};
use std::ops::RangeInclusive;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::time::{Instant, sleep_until};

use super::blocks::{Ack, Blocks, wire};
use super::packet::{self, Reply};

/// Why a transfer ended before the client acknowledged the last block.
#[derive(Debug, thiserror::Error)]
pub(super) enum End {
    /// Normal for PXE firmware, which asks for tsize and then aborts with ERROR 8.
    #[error("client sent ERROR {code} ({message:?})")]
    ClientError { code: u16, message: String },
    #[error("no acknowledgement after {transmissions} transmissions")]
    Silent { transmissions: u32 },
    #[error("transfer socket failed")]
    Io(#[source] io::Error),
}

pub(super) struct Session<'a> {
    /// Connected to the client, so the kernel drops datagrams from any other port.
    pub socket: UdpSocket,
    pub file: &'a [u8],
    pub window_size: u16,
    pub timeout: Duration,
    pub max_send_retries: u32,
}

/// What one transmission of an exchange sends.
enum Transmission<'b> {
    Oack(&'b [u8]),
    Window(&'b Blocks, RangeInclusive<u64>),
}

impl Session<'_> {
    /// Sends the OACK until the client acknowledges it with ACK 0.
    pub async fn send_oack(&self, oack: &[u8]) -> Result<(), End> {
        let accept = |ack| (ack == 0).then_some(());
        self.exchange(Transmission::Oack(oack), accept).await
    }

    /// Sends the whole file; `sent` follows how far into it the server got, for the report if
    /// the transfer is dropped half-way.
    pub async fn send_file(&self, blocks: &mut Blocks, sent: &mut u64) -> Result<(), End> {
        while !blocks.is_complete() {
            let window = blocks.window(self.window_size);
            let sent_through = *window.end();
            *sent = (*sent).max(blocks.bytes_through(sent_through));
            let view = &*blocks;
            let accept = |ack| match view.classify(ack, sent_through) {
                Ack::Through(block) => Some(block),
                Ack::Duplicate | Ack::Stale => None,
            };
            let through = self
                .exchange(Transmission::Window(view, window), accept)
                .await?;
            blocks.acknowledge(through);
        }
        Ok(())
    }

    /// Sends `what` and waits for an ACK that `accept` takes, retransmitting after each
    /// timeout, at most `1 + max_send_retries` times in all.
    async fn exchange<T>(
        &self,
        what: Transmission<'_>,
        mut accept: impl FnMut(u16) -> Option<T>,
    ) -> Result<T, End> {
        let transmissions = self.max_send_retries.saturating_add(1);
        for _ in 0..transmissions {
            self.transmit(&what).await?;
            let deadline = Instant::now() + self.timeout;
            while let Some(ack) = self.recv_ack(deadline).await? {
                if let Some(accepted) = accept(ack) {
                    return Ok(accepted);
                }
            }
        }
        Err(End::Silent { transmissions })
    }

    async fn transmit(&self, what: &Transmission<'_>) -> Result<(), End> {
        match what {
            Transmission::Oack(oack) => self.send(&[IoSlice::new(oack)]).await,
            Transmission::Window(blocks, window) => {
                for block in window.clone() {
                    let header = packet::data_header(wire(block));
                    let payload = blocks.payload(self.file, block);
                    self.send(&[IoSlice::new(&header), IoSlice::new(payload)])
                        .await?;
                }
                Ok(())
            }
        }
    }

    /// The next ACK before `deadline`, `None` once it passes. An ERROR ends the transfer;
    /// anything else is ignored.
    async fn recv_ack(&self, deadline: Instant) -> Result<Option<u16>, End> {
        let mut datagram = [0u8; 516];
        loop {
            let received = tokio::select! {
                biased;
                received = self.socket.recv(&mut datagram) => received,
                () = sleep_until(deadline) => return Ok(None),
            };
            let len = received.map_err(End::Io)?;
            match packet::decode_reply(datagram.get(..len).unwrap_or_default()) {
                Reply::Ack(block) => return Ok(Some(block)),
                Reply::Error { code, message } => {
                    let message = message.into_owned();
                    return Err(End::ClientError { code, message });
                }
                Reply::Other => {}
            }
        }
    }

    /// One datagram gathered from `parts`, so a block goes out from the shared file bytes
    /// without a copy. Tries the send at once: the socket is nearly always writable, while
    /// the reactor learns that a new socket is writable only on its next turn.
    async fn send(&self, parts: &[IoSlice<'_>]) -> Result<(), End> {
        let send = || SockRef::from(&self.socket).send_vectored(parts);
        match send() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.socket.async_io(Interest::WRITABLE, send).await
            }
            sent => sent,
        }
        .map(drop)
        .map_err(End::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client socket and a session for `file` sending to it, both connected on loopback.
    async fn pair(
        file: &[u8],
        window_size: u16,
        max_send_retries: u32,
    ) -> (UdpSocket, Session<'_>) {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        server.connect(client.local_addr().unwrap()).await.unwrap();
        client.connect(server.local_addr().unwrap()).await.unwrap();
        let session = Session {
            socket: server,
            file,
            window_size,
            timeout: Duration::from_secs(3),
            max_send_retries,
        };
        (client, session)
    }

    fn drain(client: &UdpSocket) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut datagram = [0u8; 64];
        while let Ok(n) = client.try_recv(&mut datagram) {
            got.push(datagram[..n].to_vec());
        }
        got
    }

    /// Paused clock: the 3 s timeouts pass at once.
    #[tokio::test(start_paused = true)]
    async fn a_silent_client_gets_one_plus_retries_copies_of_the_window() {
        let file = vec![1u8; 100];
        let (client, session) = pair(&file, 2, 2).await;
        let mut blocks = Blocks::new(100, 40);
        let mut sent = 0;
        let ended = session.send_file(&mut blocks, &mut sent).await;
        assert!(
            matches!(ended, Err(End::Silent { transmissions: 3 })),
            "{ended:?}"
        );
        assert_eq!(sent, 80, "two blocks of 40 were out");
        let block = |n: u8| [&[0, 3, 0, n][..], &[1; 40]].concat();
        let want = [block(1), block(2), block(1), block(2), block(1), block(2)];
        assert_eq!(drain(&client), want);
    }

    #[tokio::test(start_paused = true)]
    async fn duplicate_acks_are_not_answered_and_errors_end_the_transfer() {
        let file = vec![2u8; 100];
        let (client, session) = pair(&file, 1, 5).await;
        let mut blocks = Blocks::new(100, 40);
        let mut sent = 0;
        let client_side = async {
            let mut datagram = [0u8; 64];
            assert_eq!(client.recv(&mut datagram).await.unwrap(), 44);
            assert_eq!(datagram[..4], [0, 3, 0, 1]);
            client.send(&[0, 4, 0, 1]).await.unwrap();
            assert_eq!(client.recv(&mut datagram).await.unwrap(), 44);
            assert_eq!(datagram[..4], [0, 3, 0, 2]);
            client.send(&[0, 4, 0, 1]).await.unwrap(); // duplicate
            client.send(&[0, 4, 0, 9]).await.unwrap(); // never sent
            client.send(b"\x00\x05\x00\x00stop\x00").await.unwrap();
        };
        let (ended, ()) = tokio::join!(session.send_file(&mut blocks, &mut sent), client_side);
        let stopped =
            matches!(&ended, Err(End::ClientError { code: 0, message }) if message == "stop");
        assert!(stopped, "{ended:?}");
        assert_eq!(sent, 80);
        assert_eq!(
            drain(&client),
            Vec::<Vec<u8>>::new(),
            "no DATA for the duplicate ACK"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_is_resent_from_the_last_block_acknowledged() {
        let file: Vec<u8> = (0..=255).collect();
        let (client, session) = pair(&file, 4, 5).await;
        let mut blocks = Blocks::new(256, 64); // four full blocks and an empty fifth
        let mut sent = 0;
        let client_side = async {
            let mut datagram = [0u8; 128];
            for block in 1..=4u8 {
                client.recv(&mut datagram).await.unwrap();
                assert_eq!(datagram[..4], [0, 3, 0, block]);
            }
            // Block 3 "lost": acknowledge 2, the next window starts at 3.
            client.send(&[0, 4, 0, 2]).await.unwrap();
            for block in 3..=5u8 {
                let n = client.recv(&mut datagram).await.unwrap();
                assert_eq!(datagram[..4], [0, 3, 0, block]);
                let start = usize::from(block - 1) * 64;
                assert_eq!(
                    &datagram[4..n],
                    &file[start.min(256)..(start + 64).min(256)]
                );
            }
            client.send(&[0, 4, 0, 5]).await.unwrap();
        };
        let (ended, ()) = tokio::join!(session.send_file(&mut blocks, &mut sent), client_side);
        assert!(ended.is_ok(), "{ended:?}");
        assert!(blocks.is_complete());
        assert_eq!(sent, 256);
    }
}
