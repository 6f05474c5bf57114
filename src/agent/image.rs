//! The agent's image writer: streams an OS image (raw or zstd) from HTTP or a file onto a disk.
//!
//! The download runs on the async side and hashes what it receives; one blocking thread
//! decompresses into 4 MiB aligned buffers and writes them, skipping all-zero 4 KiB blocks, so
//! memory stays bounded (a few chunks in the channel plus one buffer) whatever the image size.
//!
//! Checksum: like Ironic (`image_checksum`/`image_os_hash_value` are checked on the file as
//! downloaded), the digest covers the bytes as served — the `.zst` file for a compressed image,
//! which is what `sha256sum image.raw.zst` prints and what the inventory records. For a raw image
//! that is the same as the disk contents. It is verified once the whole stream is written.
//!
//! Skipped zeros: a regular-file target is truncated first, so skipped ranges stay holes (its
//! length is set at the end so trailing zeros exist). Any other target, a block device above
//! all, may hold old data, so skipped ranges are zeroed with `fallocate(PUNCH_HOLE)`, which the
//! kernel turns into write-zeroes or discard-with-zeroing (as `qemu-img convert` does), falling
//! back to writing zeros where that is unsupported.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use nix::fcntl::{FallocateFlags, fallocate};
use sha2::Digest;
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

use crate::model::ImageChecksum;

/// Size of the decompression buffer, and so of the largest single write.
pub const BUFFER_SIZE: usize = 4 << 20;
/// Granularity of zero detection: the usual filesystem block and 4Kn sector size.
const BLOCK: usize = 4096;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// Chunks in flight between the download and the writer thread (bounded memory).
const CHANNEL_CHUNKS: usize = 64;

/// Where the image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    Http(url::Url),
    File(PathBuf),
}

impl ImageSource {
    /// `http(s)://…` is fetched, `file://…` or a bare path is read locally.
    pub fn parse(text: &str) -> Result<Self, ImageError> {
        match url::Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(Self::Http(url)),
            Ok(url) if url.scheme() == "file" => url
                .to_file_path()
                .map(Self::File)
                .map_err(|()| ImageError::BadSource(text.to_string())),
            Ok(_) => Err(ImageError::BadSource(text.to_string())),
            Err(_) => Ok(Self::File(PathBuf::from(text))),
        }
    }

    fn says_zstd(&self) -> bool {
        match self {
            Self::Http(url) => url.path().ends_with(".zst"),
            Self::File(path) => path.extension().is_some_and(|e| e == "zst"),
        }
    }
}

impl std::fmt::Display for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http(url) => write!(f, "{url}"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Tuning; the defaults are what the agent uses.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// Report progress at least this often…
    pub progress_interval: Duration,
    /// …and whenever this many more bytes were downloaded.
    pub progress_bytes: u64,
    /// Per-read stall timeout of the HTTP download.
    pub read_timeout: Duration,
    /// Hold the written (non-zero) bytes to this many per second: the rack simulator's model of
    /// a disk's speed. `None` on real hardware.
    pub max_write_rate: Option<f64>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            progress_interval: Duration::from_secs(2),
            progress_bytes: 256 << 20,
            read_timeout: Duration::from_secs(60),
            max_write_rate: None,
        }
    }
}

/// A snapshot handed to the progress callback.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// Bytes received from the source (compressed, if it is).
    pub downloaded: u64,
    /// The source's size, when the server said (Content-Length) or the file has one.
    pub download_total: Option<u64>,
    /// Image bytes (decompressed) handled so far: `written + skipped`.
    pub image_bytes: u64,
    pub written: u64,
    /// All-zero bytes not written (holes, or zeroed by the device).
    pub skipped: u64,
    pub elapsed: Duration,
}

impl Progress {
    /// Image bytes per second.
    pub fn rate(&self) -> f64 {
        self.image_bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Share of the download done, when its size is known.
    pub fn percent(&self) -> Option<f64> {
        self.download_total
            .filter(|t| *t > 0)
            .map(|t| 100.0 * self.downloaded as f64 / t as f64)
    }
}

/// What a successful write did.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteReport {
    pub downloaded: u64,
    /// The image's (decompressed) size.
    pub image_size: u64,
    pub written: u64,
    pub skipped: u64,
    pub compressed: bool,
    /// Digest of the downloaded bytes (sha256 when no checksum was expected).
    pub digest: ImageChecksum,
    /// Whether `digest` was compared with an expected one.
    pub verified: bool,
    pub elapsed: Duration,
}

impl WriteReport {
    /// Image bytes per second.
    pub fn rate(&self) -> f64 {
        self.image_size as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image source {0:?} is neither an http(s) URL nor a file path")]
    BadSource(String),
    #[error("checksum algorithm {0:?} is not supported (use sha256, sha512 or sha1)")]
    UnsupportedAlgorithm(String),
    #[error("{algorithm} digest {digest:?} is not {len} hex digits")]
    BadDigest {
        algorithm: String,
        digest: String,
        len: usize,
    },
    #[error("building the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("requesting {url}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}")]
    HttpStatus {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("downloading {url} after {offset} bytes")]
    Download {
        url: String,
        offset: u64,
        #[source]
        source: reqwest::Error,
    },
    #[error("reading {path}")]
    ReadSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path} at offset {offset}")]
    Write {
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("syncing {path}")]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("zstd decompression failed after {offset} compressed bytes")]
    Decompress {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("zstd stream ends inside a frame after {offset} compressed bytes (truncated image?)")]
    Truncated { offset: u64 },
    #[error("checksum mismatch: expected {expected}, got {actual}")]
    ChecksumMismatch {
        expected: ImageChecksum,
        actual: ImageChecksum,
    },
    #[error("the image writer thread died")]
    WriterDied(#[source] tokio::task::JoinError),
}

/// Streams `source` onto `target`, decompressing zstd, skipping zero blocks, verifying
/// `expected` over the downloaded bytes and syncing before it returns. `progress` is called
/// every `options.progress_interval` or `progress_bytes`, and once at the end. On a checksum
/// mismatch the target has already been written: the caller must not boot from it.
pub async fn write_image(
    source: &ImageSource,
    target: &Path,
    expected: Option<&ImageChecksum>,
    options: &WriteOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<WriteReport, ImageError> {
    let mut hasher = Hasher::for_expected(expected)?;
    let start = Instant::now();
    let sink = Sink::open(target)?;
    let counters = Arc::new(Counters::default());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(CHANNEL_CHUNKS);
    let mut writer = Writer::new(sink, source.says_zstd(), counters.clone());
    let writer = tokio::task::spawn_blocking(move || {
        while let Some(chunk) = rx.blocking_recv() {
            writer.feed(&chunk)?;
        }
        writer.finish()
    });

    let mut snapshot = Progress::default();
    let mut last = (Instant::now(), 0u64);
    let mut report = |snapshot: &mut Progress, force: bool| {
        let now = Instant::now();
        if force
            || now - last.0 >= options.progress_interval
            || snapshot.downloaded - last.1 >= options.progress_bytes
        {
            snapshot.written = counters.written.load(Relaxed);
            snapshot.skipped = counters.skipped.load(Relaxed);
            snapshot.image_bytes = snapshot.written + snapshot.skipped;
            snapshot.elapsed = start.elapsed();
            progress(snapshot);
            last = (now, snapshot.downloaded);
        }
    };
    let pumped: Result<(), ImageError> = async {
        let mut reader = Reader::open(source, options, &mut snapshot).await?;
        while let Some(chunk) = reader.next(snapshot.downloaded).await? {
            hasher.update(&chunk);
            snapshot.downloaded += chunk.len() as u64;
            if tx.send(chunk).await.is_err() {
                break; // the writer failed; its error is the one to report
            }
            report(&mut snapshot, false);
            if let Some(rate) = options.max_write_rate.filter(|r| *r > 0.0) {
                let due = Duration::from_secs_f64(counters.written.load(Relaxed) as f64 / rate);
                let elapsed = start.elapsed();
                if due > elapsed {
                    tokio::time::sleep(due - elapsed).await;
                }
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    let written = writer.await.map_err(ImageError::WriterDied);
    pumped?;
    let (image_size, compressed) = written??;
    report(&mut snapshot, true);

    let digest = hasher.finish();
    if let Some(expected) = expected
        && !expected.digest.eq_ignore_ascii_case(&digest.digest)
    {
        return Err(ImageError::ChecksumMismatch {
            expected: expected.clone(),
            actual: digest,
        });
    }
    Ok(WriteReport {
        downloaded: snapshot.downloaded,
        image_size,
        written: snapshot.written,
        skipped: snapshot.skipped,
        compressed,
        digest,
        verified: expected.is_some(),
        elapsed: start.elapsed(),
    })
}

/// The source, read chunk by chunk (`Response::chunk`: the crate's `stream` feature is off).
enum Reader {
    Http {
        url: String,
        response: reqwest::Response,
    },
    File {
        path: PathBuf,
        file: tokio::fs::File,
        buf: Vec<u8>,
    },
}

impl Reader {
    /// Opens the source and notes its size in `snapshot` when known.
    async fn open(
        source: &ImageSource,
        options: &WriteOptions,
        snapshot: &mut Progress,
    ) -> Result<Self, ImageError> {
        match source {
            ImageSource::Http(url) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let client = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(30))
                    .read_timeout(options.read_timeout)
                    .user_agent(concat!("kiln-agent/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(ImageError::Client)?;
                let url_text = url.to_string();
                let response = match client.get(url.clone()).send().await {
                    Ok(response) => response,
                    Err(source) => {
                        return Err(ImageError::Request {
                            url: url_text,
                            source,
                        });
                    }
                };
                if !response.status().is_success() {
                    let status = response.status();
                    return Err(ImageError::HttpStatus {
                        url: url_text,
                        status,
                    });
                }
                snapshot.download_total = response.content_length();
                Ok(Self::Http {
                    url: url_text,
                    response,
                })
            }
            ImageSource::File(path) => {
                let read_err = |source| ImageError::ReadSource {
                    path: path.clone(),
                    source,
                };
                let file = tokio::fs::File::open(path).await.map_err(read_err)?;
                snapshot.download_total = Some(file.metadata().await.map_err(read_err)?.len());
                Ok(Self::File {
                    path: path.clone(),
                    file,
                    buf: vec![0; 1 << 20],
                })
            }
        }
    }

    /// The next chunk; `None` at the end. `offset` is only for the error's context.
    async fn next(&mut self, offset: u64) -> Result<Option<Vec<u8>>, ImageError> {
        match self {
            Self::Http { url, response } => match response.chunk().await {
                Ok(chunk) => Ok(chunk.map(Vec::from)),
                Err(source) => Err(ImageError::Download {
                    url: url.clone(),
                    offset,
                    source,
                }),
            },
            Self::File { path, file, buf } => {
                use tokio::io::AsyncReadExt;
                match file.read(buf).await {
                    Ok(0) => Ok(None),
                    Ok(n) => Ok(Some(buf[..n].to_vec())),
                    Err(source) => Err(ImageError::ReadSource {
                        path: path.clone(),
                        source,
                    }),
                }
            }
        }
    }
}

/// The expected algorithm's hasher; sha256 when nothing is expected, for the report.
enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn for_expected(expected: Option<&ImageChecksum>) -> Result<Self, ImageError> {
        let Some(expected) = expected else {
            return Ok(Self::Sha256(Default::default()));
        };
        let (hasher, len) = match expected.algorithm.to_ascii_lowercase().as_str() {
            "sha1" => (Self::Sha1(Default::default()), 40),
            "sha256" => (Self::Sha256(Default::default()), 64),
            "sha512" => (Self::Sha512(Default::default()), 128),
            _ => return Err(ImageError::UnsupportedAlgorithm(expected.algorithm.clone())),
        };
        let digest = &expected.digest;
        if digest.len() != len || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ImageError::BadDigest {
                algorithm: expected.algorithm.clone(),
                digest: digest.clone(),
                len,
            });
        }
        Ok(hasher)
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha1(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    fn finish(self) -> ImageChecksum {
        let (algorithm, bytes) = match self {
            Self::Sha1(h) => ("sha1", h.finalize().to_vec()),
            Self::Sha256(h) => ("sha256", h.finalize().to_vec()),
            Self::Sha512(h) => ("sha512", h.finalize().to_vec()),
        };
        let digest = bytes.iter().map(|b| format!("{b:02x}")).collect();
        ImageChecksum {
            algorithm: algorithm.to_string(),
            digest,
        }
    }
}

/// What the writer thread has done, read by the progress reports.
#[derive(Default)]
struct Counters {
    written: AtomicU64,
    skipped: AtomicU64,
}

enum Format {
    /// Fewer than 4 bytes seen: the magic is not known yet.
    Unknown(Vec<u8>),
    Raw,
    Zstd(Box<zstd::stream::raw::Decoder<'static>>),
}

/// Runs on the blocking thread: decodes into an aligned buffer that goes to the sink when full.
struct Writer {
    format: Format,
    says_zstd: bool,
    /// Compressed bytes fed so far.
    consumed: u64,
    frame_done: bool,
    out: Output,
}

struct Output {
    buf: Vec<u8>,
    filled: usize,
    sink: Sink,
    counters: Arc<Counters>,
}

impl Output {
    fn flush(&mut self) -> Result<(), ImageError> {
        self.sink.write(&self.buf[..self.filled])?;
        self.filled = 0;
        self.counters.written.store(self.sink.written, Relaxed);
        self.counters.skipped.store(self.sink.skipped, Relaxed);
        Ok(())
    }
}

impl Writer {
    fn new(sink: Sink, says_zstd: bool, counters: Arc<Counters>) -> Self {
        Self {
            format: Format::Unknown(Vec::new()),
            says_zstd,
            consumed: 0,
            frame_done: false,
            out: Output {
                buf: vec![0; BUFFER_SIZE],
                filled: 0,
                sink,
                counters,
            },
        }
    }

    fn feed(&mut self, data: &[u8]) -> Result<(), ImageError> {
        if let Format::Unknown(head) = &mut self.format {
            head.extend_from_slice(data);
            if head.len() < ZSTD_MAGIC.len() {
                return Ok(());
            }
            let head = std::mem::take(head);
            self.decide(&head)?;
            return self.feed(&head);
        }
        let out = &mut self.out;
        if let Format::Zstd(decoder) = &mut self.format {
            let mut input = InBuffer::around(data);
            loop {
                let before = input.pos();
                let mut window = OutBuffer::around_pos(&mut out.buf[..], out.filled);
                let hint = decoder.run(&mut input, &mut window).map_err(|source| {
                    let offset = self.consumed + input.pos() as u64;
                    ImageError::Decompress { offset, source }
                })?;
                // A call that moved nothing (a drain after the frame ended) asks for the next
                // frame's header: that hint says nothing about the frame just finished.
                if input.pos() > before || window.pos() > out.filled {
                    self.frame_done = hint == 0;
                }
                out.filled = window.pos();
                // A full buffer may leave output inside the decoder: drain before stopping.
                if out.filled == out.buf.len() {
                    out.flush()?;
                } else if input.pos() == data.len() {
                    break;
                }
            }
        } else {
            let mut rest = data;
            while !rest.is_empty() {
                let n = rest.len().min(out.buf.len() - out.filled);
                out.buf[out.filled..out.filled + n].copy_from_slice(&rest[..n]);
                out.filled += n;
                rest = &rest[n..];
                if out.filled == out.buf.len() {
                    out.flush()?;
                }
            }
        }
        self.consumed += data.len() as u64;
        Ok(())
    }

    fn decide(&mut self, head: &[u8]) -> Result<(), ImageError> {
        self.format = if self.says_zstd || head.starts_with(&ZSTD_MAGIC) {
            let decoder = zstd::stream::raw::Decoder::new()
                .map_err(|source| ImageError::Decompress { offset: 0, source })?;
            Format::Zstd(Box::new(decoder))
        } else {
            Format::Raw
        };
        Ok(())
    }

    /// Returns the image size and whether it was compressed.
    fn finish(mut self) -> Result<(u64, bool), ImageError> {
        if let Format::Unknown(head) = &mut self.format {
            let head = std::mem::take(head);
            self.decide(&head)?;
            if !head.is_empty() {
                self.feed(&head)?;
            }
        }
        let compressed = matches!(self.format, Format::Zstd(_));
        if compressed && !self.frame_done {
            return Err(ImageError::Truncated {
                offset: self.consumed,
            });
        }
        self.out.flush()?;
        Ok((self.out.sink.finish()?, compressed))
    }
}

/// The target: positioned writes of non-zero runs; zero runs become holes or zeroed ranges.
struct Sink {
    file: File,
    path: PathBuf,
    /// Regular files were truncated, so their skipped ranges already read as zero.
    regular: bool,
    offset: u64,
    /// A zero run on a non-regular target not yet zeroed: it ends at `offset`.
    pending_zeros: u64,
    written: u64,
    skipped: u64,
}

impl Sink {
    fn open(path: &Path) -> Result<Self, ImageError> {
        let open_err = |source| ImageError::Open {
            path: path.to_path_buf(),
            source,
        };
        let regular = match std::fs::metadata(path) {
            Ok(meta) => meta.is_file(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(open_err(e)),
        };
        let file = OpenOptions::new()
            .write(true)
            .create(regular)
            .truncate(regular)
            .open(path)
            .map_err(open_err)?;
        let path = path.to_path_buf();
        Ok(Self {
            file,
            path,
            regular,
            offset: 0,
            pending_zeros: 0,
            written: 0,
            skipped: 0,
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<(), ImageError> {
        let mut pos = 0;
        while pos < data.len() {
            let zeros = run_len(&data[pos..], true) as u64;
            self.offset += zeros;
            self.skipped += zeros;
            self.pending_zeros += zeros;
            pos += zeros as usize;
            let len = run_len(&data[pos..], false);
            if len > 0 {
                self.zero_pending()?;
                let run = &data[pos..pos + len];
                self.file
                    .write_all_at(run, self.offset)
                    .map_err(|e| self.write_err(e))?;
                self.offset += len as u64;
                self.written += len as u64;
                pos += len;
            }
        }
        Ok(())
    }

    /// Zeroes the pending run on a device; a no-op for regular files (holes read as zero).
    fn zero_pending(&mut self) -> Result<(), ImageError> {
        let len = std::mem::take(&mut self.pending_zeros);
        if self.regular || len == 0 {
            return Ok(());
        }
        let start = self.offset - len;
        // Runs start 4 KiB-aligned; only the image's last run may end unaligned.
        let aligned = len & !(BLOCK as u64 - 1);
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        let punched = aligned > 0
            && i64::try_from(start).is_ok_and(|s| {
                i64::try_from(aligned).is_ok_and(|a| fallocate(&self.file, flags, s, a).is_ok())
            });
        let from = if punched { start + aligned } else { start };
        let zeros = vec![0u8; BUFFER_SIZE.min((self.offset - from) as usize)];
        let mut at = from;
        while at < self.offset {
            let n = zeros.len().min((self.offset - at) as usize);
            self.file
                .write_all_at(&zeros[..n], at)
                .map_err(|e| self.write_err_at(e, at))?;
            at += n as u64;
        }
        Ok(())
    }

    /// Zeroes what is pending, gives a regular file its full length, syncs; returns the size.
    fn finish(mut self) -> Result<u64, ImageError> {
        self.zero_pending()?;
        if self.regular {
            self.file
                .set_len(self.offset)
                .map_err(|e| self.write_err(e))?;
        }
        let path = self.path.clone();
        self.file
            .sync_all()
            .map_err(|source| ImageError::Sync { path, source })?;
        Ok(self.offset)
    }

    fn write_err(&self, source: io::Error) -> ImageError {
        self.write_err_at(source, self.offset)
    }

    fn write_err_at(&self, source: io::Error, offset: u64) -> ImageError {
        ImageError::Write {
            path: self.path.clone(),
            offset,
            source,
        }
    }
}

/// Length of the leading run of whole blocks that are (or are not) all zero.
fn run_len(data: &[u8], zero: bool) -> usize {
    data.chunks(BLOCK)
        .take_while(|b| is_zero(b) == zero)
        .map(<[u8]>::len)
        .sum()
}

/// Whether a block is all zero: a byte-slice comparison against zeros is a `memcmp`, fast even in
/// an unoptimised build (the ramdisk's agent may be one) and stopping at the first data byte.
fn is_zero(block: &[u8]) -> bool {
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    block
        .chunks(BLOCK)
        .all(|piece| piece == &ZEROS[..piece.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(algorithm: &str, digest: &str) -> ImageChecksum {
        ImageChecksum {
            algorithm: algorithm.into(),
            digest: digest.into(),
        }
    }

    #[test]
    fn sources_parse_by_scheme() {
        let http = ImageSource::parse("http://10.0.0.1/os.raw.zst").unwrap();
        assert!(matches!(&http, ImageSource::Http(_)) && http.says_zstd());
        assert_eq!(
            ImageSource::parse("/srv/os.raw").unwrap(),
            ImageSource::File("/srv/os.raw".into())
        );
        assert_eq!(
            ImageSource::parse("file:///srv/a.zst").unwrap(),
            ImageSource::File("/srv/a.zst".into())
        );
        assert!(matches!(
            ImageSource::parse("ftp://x/y"),
            Err(ImageError::BadSource(_))
        ));
    }

    #[test]
    fn checksums_are_validated_before_anything_is_written() {
        let md5 = Hasher::for_expected(Some(&sum("md5", "00"))).err().unwrap();
        assert!(
            md5.to_string().contains("\"md5\" is not supported"),
            "{md5}"
        );
        let short = Hasher::for_expected(Some(&sum("sha256", "abc")))
            .err()
            .unwrap();
        assert!(matches!(short, ImageError::BadDigest { len: 64, .. }));
        let mut h = Hasher::for_expected(Some(&sum("SHA1", &"0".repeat(40)))).unwrap();
        h.update(b"abc");
        assert_eq!(
            h.finish(),
            sum("sha1", "a9993e364706816aba3e25717850c26c9cd0d89d")
        );
    }

    #[test]
    fn zero_runs_are_whole_blocks() {
        let mut data = vec![0u8; 5 * BLOCK + 100];
        assert_eq!(run_len(&data, true), data.len());
        data[2 * BLOCK + 4095] = 1;
        assert_eq!(run_len(&data, true), 2 * BLOCK);
        assert_eq!(run_len(&data[2 * BLOCK..], false), BLOCK);
        assert!(is_zero(&[]) && !is_zero(&[0, 0, 7]));
    }

    /// The device path (zero what is skipped) on a file that is not truncated first.
    #[test]
    fn skipped_ranges_are_zeroed_on_non_regular_targets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0xFFu8; 3 * BUFFER_SIZE]).unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let mut sink = Sink {
            file,
            path: path.clone(),
            regular: false,
            offset: 0,
            pending_zeros: 0,
            written: 0,
            skipped: 0,
        };
        let mut image = vec![0u8; 2 * BUFFER_SIZE + 1000];
        image[BLOCK..2 * BLOCK].fill(9);
        sink.write(&image[..BUFFER_SIZE]).unwrap();
        sink.write(&image[BUFFER_SIZE..]).unwrap();
        assert_eq!(sink.finish().unwrap(), image.len() as u64);
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[..image.len()], &image[..]);
        assert!(
            back[image.len()..].iter().all(|b| *b == 0xFF),
            "past the image is left alone"
        );
    }

    fn writer(path: &Path) -> Writer {
        Writer::new(Sink::open(path).unwrap(), false, Arc::default())
    }

    #[test]
    fn zstd_frames_decode_across_tiny_chunks_and_truncation_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let image: Vec<u8> = (0..3 * BUFFER_SIZE as u32 / 2)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut packed = zstd::encode_all(&image[..BUFFER_SIZE], 1).unwrap();
        packed.extend(zstd::encode_all(&image[BUFFER_SIZE..], 1).unwrap());
        let target = dir.path().join("out");
        let mut w = writer(&target);
        for piece in packed.chunks(3) {
            w.feed(piece).unwrap();
        }
        assert_eq!(w.finish().unwrap(), (image.len() as u64, true));
        assert_eq!(std::fs::read(&target).unwrap(), image);

        let mut w = writer(&target);
        w.feed(&packed[..packed.len() - 10]).unwrap();
        assert!(matches!(w.finish(), Err(ImageError::Truncated { .. })));
    }
}
