//! Read-only TFTP server for the iPXE boot binaries, so PXE firmware can chainload into iPXE.
//!
//! async-tftp (RFC 1350/2347/2348/2349/7440) does the protocol; this module confines requests to
//! one root directory and reports each transfer to a [`TftpObserver`] for the node timeline.
//! async-tftp registers the socket with its own reactor and runs its own executor inside
//! [`run`]'s future, so `run` takes a `std::net::UdpSocket` the caller bound. Every transfer
//! socket binds to that socket's IP, so it must be a specific address (the provisioning
//! interface's, or 127.0.0.1 in tests), never 0.0.0.0.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_tftp::packet;
use async_tftp::server::{Handler, TftpServerBuilder};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

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
    /// Retransmissions of a block before giving up. async-tftp ignores ERROR packets from the
    /// client, so this bounds how long an aborted transfer lingers (async-tftp's default is 100).
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
/// `file` is the name as the client sent it.
pub trait TftpObserver: Send + Sync {
    fn transfer_started(&self, peer: SocketAddr, file: &str);
    /// The whole file was read and the transfer ended. async-tftp does not say whether the
    /// client acknowledged the last block (or last window), only that the transfer ended.
    /// `block_size` is the negotiated blksize, inferred because async-tftp does not expose it:
    /// it reads each block with one buffer of exactly blksize bytes (`tests/tftp.rs` checks).
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
    /// The file exists but could not be opened or read.
    Unreadable(io::ErrorKind),
    /// Write requests are always refused.
    WriteRefused,
    /// The transfer stopped before the whole file was read: the client went away, retries ran
    /// out, or the server shut down.
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
    #[error("cannot set up the TFTP server on {addr}")]
    Setup {
        addr: SocketAddr,
        #[source]
        source: async_tftp::Error,
    },
    #[error("TFTP server on {addr} stopped")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: async_tftp::Error,
    },
}

/// Serves `config.root` on `socket` until `shutdown` fires. Transfers still running then are
/// dropped and reported as [`TftpFailure::Interrupted`].
pub async fn run(
    socket: UdpSocket,
    config: TftpConfig,
    observer: Arc<dyn TftpObserver>,
    shutdown: CancellationToken,
) -> Result<(), TftpError> {
    let addr = socket.local_addr().map_err(TftpError::LocalAddr)?;
    check_listen_addr(addr)?;
    let root = tokio::fs::canonicalize(&config.root)
        .await
        .map_err(|source| TftpError::Root {
            path: config.root.clone(),
            source,
        })?;
    let is_dir = tokio::fs::metadata(&root).await.is_ok_and(|m| m.is_dir());
    if !is_dir {
        return Err(TftpError::RootNotDir { path: root });
    }
    let mut builder = TftpServerBuilder::with_handler(RootHandler {
        root: root.clone(),
        observer,
        cache: Arc::default(),
    })
    .timeout(config.timeout)
    .max_send_retries(config.max_send_retries);
    if let Some(limit) = config.block_size_limit {
        builder = builder.block_size_limit(limit);
    }
    if let Some(limit) = config.window_size_limit {
        builder = builder.window_size_limit(limit);
    }
    let setup = |source| TftpError::Setup { addr, source };
    let server = builder
        .std_socket(socket)
        .map_err(setup)?
        .build()
        .await
        .map_err(setup)?;
    info!(%addr, root = %root.display(), "TFTP server listening");
    tokio::select! {
        result = server.serve() => result.map_err(|source| TftpError::Serve { addr, source }),
        () = shutdown.cancelled() => Ok(()),
    }
}

fn check_listen_addr(addr: SocketAddr) -> Result<(), TftpError> {
    if addr.ip().is_unspecified() {
        return Err(TftpError::UnspecifiedAddress { addr });
    }
    Ok(())
}

/// The request as a path relative to the root, or `None` if it is not a plain name. A leading
/// `/` means the root, as with `tftpd -s`; `..` is refused even where it would stay inside.
fn relative_request(requested: &Path) -> Option<PathBuf> {
    let mut relative = PathBuf::new();
    for component in requested.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => relative.push(part),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!relative.as_os_str().is_empty()).then_some(relative)
}

fn failure_from_io(error: &io::Error) -> TftpFailure {
    match error.kind() {
        io::ErrorKind::NotFound => TftpFailure::NotFound,
        kind => TftpFailure::Unreadable(kind),
    }
}

struct RootHandler {
    /// Canonical, so that `starts_with` on a canonical request path is a containment check.
    root: PathBuf,
    observer: Arc<dyn TftpObserver>,
    /// Boot binaries are small and every node of a rack asks for the same one: each file is read
    /// once (per size and mtime) and served from memory, instead of one blocking read per block.
    cache: Arc<std::sync::Mutex<FileCache>>,
}

type FileCache = std::collections::HashMap<PathBuf, (std::time::SystemTime, u64, Arc<[u8]>)>;

/// Files larger than this are refused over TFTP (kernels and images go over HTTP).
const MAX_TFTP_FILE: u64 = 64 << 20;

impl RootHandler {
    /// The file's bytes, from the cache when its size and mtime still match.
    async fn load(&self, requested: &Path) -> Result<Arc<[u8]>, TftpFailure> {
        let (real, file, size) = self.open(requested).await?;
        let modified = file
            .metadata()
            .await
            .and_then(|m| m.modified())
            .map_err(|e| failure_from_io(&e))?;
        if let Ok(cache) = self.cache.lock()
            && let Some((at, len, bytes)) = cache.get(&real)
            && *at == modified
            && *len == size
        {
            return Ok(Arc::clone(bytes));
        }
        if size > MAX_TFTP_FILE {
            return Err(TftpFailure::Unreadable(io::ErrorKind::FileTooLarge));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        let mut file = file;
        tokio::io::AsyncReadExt::read_to_end(&mut file, &mut bytes)
            .await
            .map_err(|e| failure_from_io(&e))?;
        let bytes: Arc<[u8]> = bytes.into();
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(real, (modified, size, Arc::clone(&bytes)));
        }
        Ok(bytes)
    }

    async fn open(&self, requested: &Path) -> Result<(PathBuf, tokio::fs::File, u64), TftpFailure> {
        let relative = relative_request(requested).ok_or(TftpFailure::BadPath)?;
        let real = tokio::fs::canonicalize(self.root.join(relative))
            .await
            .map_err(|e| failure_from_io(&e))?;
        if !real.starts_with(&self.root) {
            return Err(TftpFailure::OutsideRoot);
        }
        // O_NOFOLLOW: a symlink swapped in after canonicalize is refused, not followed.
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&real)
            .await
            .map_err(|e| failure_from_io(&e))?;
        let meta = file.metadata().await.map_err(|e| failure_from_io(&e))?;
        if !meta.is_file() {
            return Err(TftpFailure::NotAFile);
        }
        Ok((real, file, meta.len()))
    }
}

impl Handler for RootHandler {
    type Reader = ObservedReader;
    type Writer = futures::io::Sink;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(ObservedReader, Option<u64>), packet::Error> {
        let file = path.display().to_string();
        match self.load(path).await {
            Ok(bytes) => {
                let size = bytes.len() as u64;
                debug!(peer = %client, file, size, "TFTP transfer started");
                self.observer.transfer_started(*client, &file);
                let reader = ObservedReader {
                    inner: futures::io::Cursor::new(bytes),
                    peer: *client,
                    file,
                    observer: Arc::clone(&self.observer),
                    bytes: 0,
                    largest_read: 0,
                    eof: false,
                };
                Ok((reader, Some(size)))
            }
            Err(reason) => {
                warn!(peer = %client, file, ?reason, "TFTP read request refused");
                self.observer.transfer_failed(*client, &file, &reason);
                Err(match reason {
                    TftpFailure::NotFound | TftpFailure::NotAFile => packet::Error::FileNotFound,
                    _ => packet::Error::PermissionDenied,
                })
            }
        }
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        _size: Option<u64>,
    ) -> Result<futures::io::Sink, packet::Error> {
        let file = path.display().to_string();
        warn!(peer = %client, file, "TFTP write request refused");
        self.observer
            .transfer_failed(*client, &file, &TftpFailure::WriteRefused);
        Err(packet::Error::IllegalOperation)
    }
}

/// Counts what async-tftp reads and reports the outcome when it drops the reader, which it does
/// when the transfer ends for any reason.
struct ObservedReader {
    inner: futures::io::Cursor<Arc<[u8]>>,
    peer: SocketAddr,
    file: String,
    observer: Arc<dyn TftpObserver>,
    bytes: u64,
    largest_read: usize,
    eof: bool,
}

impl futures::io::AsyncRead for ObservedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.largest_read = this.largest_read.max(buf.len());
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.bytes += n as u64;
            this.eof |= n == 0 && !buf.is_empty();
        }
        polled
    }
}

impl Drop for ObservedReader {
    fn drop(&mut self) {
        if self.eof {
            let block_size = u16::try_from(self.largest_read).ok();
            info!(peer = %self.peer, file = self.file, bytes = self.bytes, ?block_size, "TFTP transfer finished");
            self.observer
                .transfer_finished(self.peer, &self.file, self.bytes, block_size);
        } else {
            let reason = TftpFailure::Interrupted { bytes: self.bytes };
            warn!(peer = %self.peer, file = self.file, ?reason, "TFTP transfer failed");
            self.observer
                .transfer_failed(self.peer, &self.file, &reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_map_into_the_root() {
        let cases: &[(&str, Option<&str>)] = &[
            ("undionly.kpxe", Some("undionly.kpxe")),
            ("/undionly.kpxe", Some("undionly.kpxe")),
            ("//etc/passwd", Some("etc/passwd")),
            ("./efi/./snponly.efi", Some("efi/snponly.efi")),
            ("../../etc/passwd", None),
            ("efi/../undionly.kpxe", None),
            ("/..", None),
            ("", None),
            (".", None),
            ("/", None),
        ];
        for (requested, expected) in cases {
            let got = relative_request(Path::new(requested));
            assert_eq!(
                got.as_deref(),
                expected.map(Path::new),
                "request {requested:?}"
            );
        }
    }

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
