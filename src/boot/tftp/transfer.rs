//! One read request, as its own task: load the file off the runtime, negotiate, send it from a
//! fresh socket on the listen address (TFTP's new transfer ID), and report exactly how it
//! ended to the observer, also when the task is dropped at shutdown.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::blocks::Blocks;
use super::negotiate::negotiate;
use super::packet::{self, ErrorCode, Request};
use super::root::Root;
use super::session::{End, Session};
use super::{TftpConfig, TftpFailure, TftpObserver};

/// What the listener and every transfer task share.
pub(super) struct Shared {
    /// The listening socket: requests come in here, refusals go out from here.
    pub socket: UdpSocket,
    /// Transfer sockets bind here, so replies come from the address the client asked.
    pub listen_ip: IpAddr,
    pub root: Root,
    pub observer: Arc<dyn TftpObserver>,
    pub config: TftpConfig,
    active: Mutex<Active>,
    /// Bounds the file loads running on the blocking pool: a rack's burst of requests would
    /// otherwise start a thread per request, each costing more than the load itself.
    loads: Semaphore,
}

/// Concurrent file loads; each is a few cached syscalls, or one read on a cache miss.
const CONCURRENT_LOADS: usize = 2;

/// Transfers in progress by client address, with the request that started each.
#[derive(Default)]
struct Active {
    next_id: u64,
    by_peer: HashMap<SocketAddr, (u64, Box<[u8]>)>,
}

/// A claim on serving one client address; released when the transfer task ends or is dropped.
pub(super) struct Ticket {
    shared: Arc<Shared>,
    peer: SocketAddr,
    id: u64,
}

impl Shared {
    pub fn new(
        socket: UdpSocket,
        listen_ip: IpAddr,
        root: Root,
        observer: Arc<dyn TftpObserver>,
        config: TftpConfig,
    ) -> Self {
        Self {
            socket,
            listen_ip,
            root,
            observer,
            config,
            active: Mutex::default(),
            loads: Semaphore::new(CONCURRENT_LOADS),
        }
    }

    /// A ticket for a read request, or `None` when it repeats, byte for byte, the request of a
    /// transfer still running for the same address: the client retransmitted its RRQ before
    /// our first answer arrived, and a second transfer would only be aborted by the client.
    pub fn claim(self: &Arc<Self>, peer: SocketAddr, request: &[u8]) -> Option<Ticket> {
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        if active
            .by_peer
            .get(&peer)
            .is_some_and(|(_, running)| **running == *request)
        {
            return None;
        }
        active.next_id += 1;
        let id = active.next_id;
        active.by_peer.insert(peer, (id, request.into()));
        Some(Ticket {
            shared: Arc::clone(self),
            peer,
            id,
        })
    }

    /// Best effort and without waiting: a lost ERROR only makes the client retry.
    pub fn reply_error(&self, peer: SocketAddr, code: ErrorCode, message: &str) {
        if let Err(err) = self
            .socket
            .try_send_to(&packet::encode_error(code, message), peer)
        {
            debug!(%peer, error = %err, "cannot send TFTP error");
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut active = self
            .shared
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if active
            .by_peer
            .get(&self.peer)
            .is_some_and(|(id, _)| *id == self.id)
        {
            active.by_peer.remove(&self.peer);
        }
    }
}

/// Serves one read request to its end.
pub(super) async fn serve(ticket: Ticket, request: Request) {
    let shared = Arc::clone(&ticket.shared);
    let peer = ticket.peer;
    let file = request.file;
    let load = async {
        // The semaphore is never closed, so acquiring fails only in theory; load anyway then.
        let _permit = shared.loads.acquire().await;
        let shared = Arc::clone(&shared);
        let file = file.clone();
        tokio::task::spawn_blocking(move || shared.root.load(&file)).await
    };
    let bytes = match load.await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(reason)) => return refuse(&shared, peer, &file, &reason),
        Err(panicked) => {
            warn!(%peer, file, error = %panicked, "TFTP file load failed");
            return refuse(
                &shared,
                peer,
                &file,
                &TftpFailure::Unreadable(io::ErrorKind::Other),
            );
        }
    };
    let size = bytes.len() as u64;
    let negotiated = negotiate(&request.options, &shared.config, size);
    debug!(%peer, file, size, ?negotiated, "TFTP transfer started");
    shared.observer.transfer_started(peer, &file);
    let mut outcome = Outcome {
        observer: &*shared.observer,
        peer,
        file: &file,
        sent: 0,
        finished: false,
    };
    let socket = match transfer_socket(shared.listen_ip, peer).await {
        Ok(socket) => socket,
        Err(err) => {
            warn!(%peer, file, error = %err, "cannot open a TFTP transfer socket");
            shared.reply_error(
                peer,
                ErrorCode::AccessViolation,
                "server cannot open a transfer socket",
            );
            return;
        }
    };
    let session = Session {
        socket,
        file: &bytes,
        window_size: negotiated.window_size,
        timeout: negotiated.timeout,
        max_send_retries: shared.config.max_send_retries,
    };
    let mut blocks = Blocks::new(size, negotiated.block_size);
    let sending = async {
        if !negotiated.oack.is_empty() {
            session
                .send_oack(&packet::encode_oack(&negotiated.oack))
                .await?;
        }
        session.send_file(&mut blocks, &mut outcome.sent).await
    };
    match sending.await {
        Ok(()) => outcome.finish(size, negotiated.block_size),
        Err(end @ End::ClientError { .. }) => {
            debug!(%peer, file, reason = %end, "TFTP transfer aborted by the client")
        }
        Err(end) => warn!(%peer, file, error = %end, "TFTP transfer failed"),
    }
}

async fn transfer_socket(listen_ip: IpAddr, peer: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::new(listen_ip, 0)).await?;
    socket.connect(peer).await?;
    Ok(socket)
}

fn refuse(shared: &Shared, peer: SocketAddr, file: &str, reason: &TftpFailure) {
    warn!(%peer, file, ?reason, "TFTP read request refused");
    shared.observer.transfer_failed(peer, file, reason);
    let (code, message) = refusal(reason);
    shared.reply_error(peer, code, message);
}

/// The ERROR a refused read request gets.
fn refusal(reason: &TftpFailure) -> (ErrorCode, &'static str) {
    match reason {
        TftpFailure::NotFound => (ErrorCode::FileNotFound, "file not found"),
        TftpFailure::NotAFile => (ErrorCode::FileNotFound, "not a regular file"),
        TftpFailure::BadPath => (
            ErrorCode::AccessViolation,
            "file name must stay inside the root",
        ),
        TftpFailure::OutsideRoot => (ErrorCode::AccessViolation, "file is outside the root"),
        TftpFailure::Unreadable(io::ErrorKind::FileTooLarge) => (
            ErrorCode::AccessViolation,
            "file too large for TFTP: fetch it over HTTP",
        ),
        _ => (ErrorCode::AccessViolation, "file cannot be read"),
    }
}

/// Reports the transfer's end exactly once: finished when the client acknowledged the last
/// block, otherwise interrupted, including when the task is dropped at shutdown.
struct Outcome<'a> {
    observer: &'a dyn TftpObserver,
    peer: SocketAddr,
    file: &'a str,
    sent: u64,
    finished: bool,
}

impl Outcome<'_> {
    fn finish(&mut self, bytes: u64, block_size: u16) {
        self.finished = true;
        info!(peer = %self.peer, file = self.file, bytes, block_size, "TFTP transfer finished");
        self.observer
            .transfer_finished(self.peer, self.file, bytes, Some(block_size));
    }
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let reason = TftpFailure::Interrupted { bytes: self.sent };
            debug!(peer = %self.peer, file = self.file, ?reason, "TFTP transfer interrupted");
            self.observer.transfer_failed(self.peer, self.file, &reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_why() {
        let cases = [
            (TftpFailure::NotFound, ErrorCode::FileNotFound),
            (TftpFailure::NotAFile, ErrorCode::FileNotFound),
            (TftpFailure::BadPath, ErrorCode::AccessViolation),
            (TftpFailure::OutsideRoot, ErrorCode::AccessViolation),
            (
                TftpFailure::Unreadable(io::ErrorKind::PermissionDenied),
                ErrorCode::AccessViolation,
            ),
            (
                TftpFailure::Unreadable(io::ErrorKind::FileTooLarge),
                ErrorCode::AccessViolation,
            ),
        ];
        for (reason, code) in cases {
            let (got, message) = refusal(&reason);
            assert_eq!(got, code, "{reason:?}");
            assert!(!message.is_empty());
        }
        assert!(
            refusal(&TftpFailure::Unreadable(io::ErrorKind::FileTooLarge))
                .1
                .contains("HTTP")
        );
    }
}
