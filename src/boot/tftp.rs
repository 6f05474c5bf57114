//! Read-only TFTP server for the iPXE boot binaries, so PXE firmware can chainload into iPXE.
//!
//! RFC 1350 reads with RFC 2347 options (2348 blksize, 2349 tsize and timeout, 7440
//! windowsize); writes are refused. The listener decodes requests; each read is its own tokio
//! task (`transfer`) that sends slices of one in-memory copy of the file (`root`) from a fresh
//! socket, and reports its exact outcome to a [`TftpObserver`] for the node timeline.
//! Every transfer socket binds to the listening socket's IP, so that must be a specific address
//! (the provisioning interface's, or 127.0.0.1 in tests), never 0.0.0.0.

mod blocks;
mod negotiate;
mod packet;
mod root;
mod session;
mod transfer;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use packet::{Direction, ErrorCode, Malformed};
use transfer::Shared;

/// Where Debian's `ipxe` package puts undionly.kpxe, ipxe.pxe, snponly.efi and ipxe.efi.
pub const DEFAULT_ROOT: &str = "/usr/lib/ipxe";

/// Server settings. Client options (blksize, tsize, windowsize, timeout) are honoured up to the
/// limits given here.
#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// Directory served read-only; nothing outside it is ever sent, symlinks included.
    pub root: PathBuf,
    /// Retransmit timeout when the client does not ask for one.
    pub timeout: Duration,
    /// Retransmissions of a block (or window) before giving up: a client that vanishes without
    /// an ERROR is given up on after `(1 + max_send_retries) × timeout`.
    pub max_send_retries: u32,
    /// Cap on the negotiated blksize, for links whose MTU is below what the client asks for.
    pub block_size_limit: Option<u16>,
    /// Cap on the negotiated windowsize; `Some(1)` turns RFC 7440 windowing off.
    pub window_size_limit: Option<u16>,
}

impl Default for TftpConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from(DEFAULT_ROOT),
            timeout: Duration::from_secs(3),
            max_send_retries: 5,
            block_size_limit: None,
            window_size_limit: None,
        }
    }
}

/// Receives one event per transfer, so the daemon can add it to the node's timeline.
///
/// Every read request ends in exactly one `transfer_finished` or `transfer_failed`;
/// `transfer_started` comes first only for requests that opened a file. Methods run on the
/// serving task: they must neither block nor panic (forward to a channel for anything slow).
/// `file` is the name as the client sent it. A retransmitted copy of a request whose transfer
/// is running, and datagrams that are not a valid request, are not reported.
pub trait TftpObserver: Send + Sync {
    fn transfer_started(&self, peer: SocketAddr, file: &str);
    /// The client acknowledged the last block: it has the whole file. `bytes` is the file's
    /// size, `block_size` the negotiated blksize (512 when the client did not ask); always
    /// `Some`.
    fn transfer_finished(&self, peer: SocketAddr, file: &str, bytes: u64, block_size: Option<u16>);
    fn transfer_failed(&self, peer: SocketAddr, file: &str, reason: &TftpFailure);
}

/// Why a request did not end in a complete transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TftpFailure {
    /// Not a plain relative name: `..`, a drive prefix, or empty.
    BadPath,
    /// Resolves, through a symlink, to something outside the root.
    OutsideRoot,
    NotFound,
    /// A directory or other non-regular file.
    NotAFile,
    /// The file exists but could not be opened or read (`FileTooLarge` above 64 MiB).
    Unreadable(io::ErrorKind),
    /// Write requests are always refused.
    WriteRefused,
    /// The client did not acknowledge the last block: it sent an ERROR (PXE firmware does after
    /// learning the tsize), stopped answering until the retries ran out, or the server shut
    /// down. `bytes` is how far into the file the server had sent, acknowledged or not.
    Interrupted {
        bytes: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("cannot read the local address of the TFTP socket")]
    LocalAddr(#[source] io::Error),
    #[error("TFTP socket is bound to {addr}; bind the provisioning interface's own address")]
    UnspecifiedAddress { addr: SocketAddr },
    #[error("TFTP root {} is not usable", path.display())]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("TFTP root {} is not a directory", path.display())]
    RootNotDir { path: PathBuf },
    #[error("cannot register the TFTP socket on {addr} with the runtime")]
    Socket {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("TFTP server on {addr} stopped receiving")]
    Receive {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// The largest request accepted; RFC 2347 keeps requests within 512 bytes.
const MAX_REQUEST: usize = 4096;

/// Serves `config.root` on `socket` until `shutdown` fires. Transfers still running then are
/// dropped and reported as [`TftpFailure::Interrupted`] before `run` returns.
pub async fn run(
    socket: UdpSocket,
    config: TftpConfig,
    observer: Arc<dyn TftpObserver>,
    shutdown: CancellationToken,
) -> Result<(), TftpError> {
    let addr = socket.local_addr().map_err(TftpError::LocalAddr)?;
    check_listen_addr(addr)?;
    let root = root::Root::open(&config.root).await?;
    enlarge_receive_buffer(&socket);
    let registered = socket
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UdpSocket::from_std(socket));
    let socket = registered.map_err(|source| TftpError::Socket { addr, source })?;
    info!(%addr, root = %root.dir().display(), "TFTP server listening");
    let shared = Arc::new(Shared::new(socket, addr.ip(), root, observer, config));
    let mut transfers = JoinSet::new();
    let mut datagram = vec![0u8; MAX_REQUEST];
    let served = loop {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ok(()),
            received = shared.socket.recv_from(&mut datagram) => received,
        };
        let (len, peer) = match received {
            Ok(received) => received,
            Err(source) => break Err(TftpError::Receive { addr, source }),
        };
        dispatch(
            &shared,
            &mut transfers,
            peer,
            datagram.get(..len).unwrap_or_default(),
        );
        while let Some(ended) = transfers.try_join_next() {
            if let Err(err) = ended {
                error!(error = %err, "TFTP transfer task failed");
            }
        }
    };
    transfers.shutdown().await;
    served
}

fn dispatch(shared: &Arc<Shared>, transfers: &mut JoinSet<()>, peer: SocketAddr, datagram: &[u8]) {
    match packet::decode_request(datagram) {
        Ok(request) if request.direction == Direction::Write => {
            let file = request.file;
            warn!(%peer, file, "TFTP write request refused");
            let reason = TftpFailure::WriteRefused;
            shared.observer.transfer_failed(peer, &file, &reason);
            shared.reply_error(
                peer,
                ErrorCode::IllegalOperation,
                "this server is read-only",
            );
        }
        Ok(request) => match shared.claim(peer, datagram) {
            Some(ticket) => {
                transfers.spawn(transfer::serve(ticket, request));
            }
            None => debug!(%peer, "repeated TFTP read request ignored"),
        },
        Err(Malformed::NotARequest) => debug!(%peer, "TFTP datagram that is no request ignored"),
        Err(malformed) => {
            debug!(%peer, error = %malformed, "malformed TFTP request");
            shared.reply_error(peer, ErrorCode::IllegalOperation, &malformed.to_string());
        }
    }
}

/// A rack powering on sends its read requests in one burst; the default receive buffer holds
/// a few hundred. Best effort: root may exceed `rmem_max`, others get what it allows.
fn enlarge_receive_buffer(socket: &UdpSocket) {
    let size = 1 << 20;
    let forced =
        nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::RcvBufForce, &size);
    if forced.is_err()
        && let Err(err) = socket2::SockRef::from(socket).set_recv_buffer_size(size)
    {
        debug!(error = %err, "cannot enlarge the TFTP receive buffer");
    }
}

fn check_listen_addr(addr: SocketAddr) -> Result<(), TftpError> {
    if addr.ip().is_unspecified() {
        return Err(TftpError::UnspecifiedAddress { addr });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_address_is_refused() {
        let any: SocketAddr = ([0, 0, 0, 0], 69).into();
        assert!(matches!(
            check_listen_addr(any),
            Err(TftpError::UnspecifiedAddress { .. })
        ));
        assert!(check_listen_addr(([127, 0, 0, 1], 0).into()).is_ok());
    }
}
