//! Static files for booting nodes (deploy kernel, ramdisk, OS images), streamed from one root.
//!
//! Images are gigabytes, so bodies are streamed from disk, never read whole. Single byte ranges
//! (with `If-Range`), ETags and `If-None-Match` keep resumed or repeated downloads cheap. Request
//! paths are checked lexically: only plain components below the root pass, so no `..`, absolute
//! path or drive prefix can leave it. Symlinks inside the root are followed; only the operator can
//! place them there.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

/// Read size of the streaming body and the unit downloads share: large enough that a multi-GiB
/// image is not a syscall storm. Larger chunks only cost memory (hyper queues up to ~400 KiB per
/// connection before it asks for more): 134 unshared downloads held 228 MB with 1 MiB chunks,
/// 80 MB with these.
const CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("'{0}' is not a path inside the files root")]
    BadPath(String),
    #[error("no file '{0}'")]
    NotFound(String),
    #[error("requested range is outside the {size}-byte file")]
    Unsatisfiable { size: u64 },
    #[error("reading '{path}'")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a `Range` header asks of a file of known size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No (usable) range: send the whole file with 200.
    Full,
    /// Bytes `start..=end`, both within the file: send 206.
    Partial { start: u64, end: u64 },
    /// A well-formed range that selects nothing: send 416.
    Unsatisfiable,
}

/// Interprets a `Range` header. Malformed headers and multi-range requests are ignored (RFC 9110
/// allows that), which makes the reply the whole file rather than an error.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let number = |text: &str| {
        let text = text.trim();
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse::<u64>().ok())
            .flatten()
    };
    match (number(first), number(last), last.trim().is_empty()) {
        // `-n`: the last n bytes.
        (None, Some(suffix), _) if first.trim().is_empty() => match (suffix, size) {
            (0, _) | (_, 0) => RangeRequest::Unsatisfiable,
            (n, size) => RangeRequest::Partial {
                start: size.saturating_sub(n),
                end: size - 1,
            },
        },
        // `a-`: from a to the end.
        (Some(start), None, true) if start < size => RangeRequest::Partial {
            start,
            end: size - 1,
        },
        (Some(_), None, true) => RangeRequest::Unsatisfiable,
        // `a-b`: inclusive, clamped to the file.
        (Some(start), Some(end), _) if start <= end => {
            if start < size {
                RangeRequest::Partial {
                    start,
                    end: end.min(size - 1),
                }
            } else {
                RangeRequest::Unsatisfiable
            }
        }
        _ => RangeRequest::Full,
    }
}

/// A strong validator from size and modification time: it changes whenever the file is replaced.
pub fn etag(size: u64, modified: SystemTime) -> String {
    let nanos = modified
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("\"{size:x}-{nanos:x}\"")
}

/// True when an `If-None-Match` header names `etag` (weak comparison, as RFC 9110 requires).
pub fn none_match(header: &str, etag: &str) -> bool {
    let bare = |tag: &str| tag.trim().trim_start_matches("W/").to_string();
    header.trim() == "*" || header.split(',').any(|tag| bare(tag) == bare(etag))
}

/// Maps a request path (already percent-decoded) to a relative path of plain components.
pub fn relative_path(request: &str) -> Result<PathBuf, FileError> {
    let mut out = PathBuf::new();
    for component in Path::new(request).components() {
        match component {
            Component::Normal(part) if !part.to_string_lossy().contains('\\') => out.push(part),
            Component::CurDir => {}
            _ => return Err(FileError::BadPath(request.to_string())),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(FileError::BadPath(request.to_string()));
    }
    Ok(out)
}

/// Serves `request` (relative to `root`) for GET or HEAD, honouring Range and If-None-Match.
pub async fn serve(
    root: &Path,
    request: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, FileError> {
    let path = root.join(relative_path(request)?);
    let io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => FileError::NotFound(request.to_string()),
        _ => FileError::Io {
            path: path.clone(),
            source,
        },
    };
    let file = tokio::fs::File::open(&path).await.map_err(io)?;
    let meta = file.metadata().await.map_err(io)?;
    if !meta.is_file() {
        return Err(FileError::NotFound(request.to_string()));
    }
    let size = meta.len();
    let tag = etag(size, meta.modified().unwrap_or(UNIX_EPOCH));
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };

    let mut response = Response::builder()
        .header(header::ETAG, &tag)
        .header(header::ACCEPT_RANGES, "bytes");
    if text(header::IF_NONE_MATCH).is_some_and(|h| none_match(h, &tag)) {
        return Ok(empty(response.status(StatusCode::NOT_MODIFIED)));
    }
    // A resume against a file that changed since (If-Range no longer matching) gets it whole.
    let range = text(header::RANGE).filter(|_| text(header::IF_RANGE).is_none_or(|t| t == tag));
    let (start, len) = match parse_range(range, size) {
        RangeRequest::Full => (0, size),
        RangeRequest::Partial { start, end } => {
            response = response
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
            (start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => return Err(FileError::Unsatisfiable { size }),
    };
    response = response
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len);
    if *method == Method::HEAD {
        return Ok(empty(response));
    }
    let body = Body::from_stream(chunks(file.into_std().await, FileId::of(&meta), start, len));
    Ok(response.body(body).unwrap_or_else(|_| internal()))
}

/// The next `len` bytes of `file`, from `offset`, as body chunks: slices of the file's
/// [`CHUNK`]-aligned chunks, each read straight into the buffer hyper then writes to the socket.
///
/// Two things keep a rack downloading one image cheap; together they cut the daemon's CPU time
/// for 134 downloads of 128 MiB from 12 s to 5 s (`tests/bench/image-serve.sh`):
/// - a chunk already in the page cache is read right here on the runtime thread, with
///   `RWF_NOWAIT` so that the read fails rather than waits for the disk; only then does it go to
///   the blocking pool. (`tokio::fs::File` under `ReaderStream` sent every read to a pool thread
///   and back, and copied each chunk once more in user space: twice the CPU.)
/// - a chunk that another download of the same file still holds is shared, not read again
///   ([`SHARED`]).
fn chunks(
    file: std::fs::File,
    id: FileId,
    offset: u64,
    len: u64,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send {
    let state = (Arc::new(file), offset, len);
    futures::stream::try_unfold(state, move |(file, offset, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let index = offset / CHUNK as u64;
        let chunk = match shared(id, index) {
            Some(chunk) => chunk,
            None => {
                let start = index * CHUNK as u64;
                let full = id.size.saturating_sub(start).min(CHUNK as u64) as usize;
                let chunk = Arc::new(read_chunk(&file, start, full).await?);
                if chunk.len() == full {
                    share(id, index, &chunk);
                }
                chunk
            }
        };
        let within = (offset % CHUNK as u64) as usize;
        if chunk.len() <= within {
            // The file shrank under the download: end it short rather than spin.
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let end = chunk
            .len()
            .min(within.saturating_add(usize::try_from(left).unwrap_or(usize::MAX)));
        let bytes = Bytes::from_owner(SharedChunk(chunk)).slice(within..end);
        let sent = bytes.len() as u64;
        Ok(Some((bytes, (file, offset + sent, left - sent))))
    })
}

/// Which file a chunk belongs to: a replaced or rewritten file is another file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
}

/// Chunks some download still holds (queued in hyper for its socket), by file and chunk index.
/// The downloads of a rack move through an image roughly together, so most reach a chunk while
/// another still holds it and take it from here: one page-cache copy serves many nodes. Only weak
/// references, so the table keeps no memory alive; dead entries are swept as it grows.
static SHARED: LazyLock<Mutex<ChunkTable>> = LazyLock::new(Default::default);

type ChunkTable = HashMap<(FileId, u64), Weak<Vec<u8>>>;

/// A live chunk `index` of file `id`, if some download still holds it.
fn shared(id: FileId, index: u64) -> Option<Arc<Vec<u8>>> {
    let table = SHARED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    table.get(&(id, index)).and_then(Weak::upgrade)
}

fn share(id: FileId, index: u64, chunk: &Arc<Vec<u8>>) {
    let mut table = SHARED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if table.len() >= 1024 {
        table.retain(|_, chunk| chunk.strong_count() > 0);
    }
    table.insert((id, index), Arc::downgrade(chunk));
}

/// A shared chunk as the owner of body bytes.
struct SharedChunk(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedChunk {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Up to `want` bytes of `file` at `offset`, fewer only at the end of the file: from the page
/// cache on this thread if all of it is there, else (the rest) on the blocking pool.
async fn read_chunk(
    file: &Arc<std::fs::File>,
    offset: u64,
    want: usize,
) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(want);
    // Whatever fails here (EAGAIN: not cached; EOPNOTSUPP: an old kernel) is read below.
    let _ = read_at(file, offset, &mut buf, want, true);
    if buf.len() == want {
        return Ok(buf);
    }
    let file = Arc::clone(file);
    tokio::task::spawn_blocking(move || {
        while buf.len() < want {
            match read_at(&file, offset + buf.len() as u64, &mut buf, want, false) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(buf)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// One `preadv2(2)` at `offset` of at most the bytes `buf` lacks to reach `want`, appended into
/// its spare capacity without zeroing it first. With `cached_only` (`RWF_NOWAIT`) the kernel
/// copies only what is in the page cache and fails with `EAGAIN` for the rest, so the call never
/// waits for the disk. (std has no `preadv2` and `nix` none without features Kiln does not enable;
/// the declaration is glibc's and musl's.)
fn read_at(
    file: &std::fs::File,
    offset: u64,
    buf: &mut Vec<u8>,
    want: usize,
    cached_only: bool,
) -> std::io::Result<usize> {
    use std::ffi::{c_int, c_long};
    /// `struct iovec`.
    #[repr(C)]
    struct IoVec {
        base: *mut u8,
        len: usize,
    }
    unsafe extern "C" {
        // `off_t` is a C long with glibc (no `_FILE_OFFSET_BITS=64`) and on 64-bit musl.
        fn preadv2(
            fd: c_int,
            iov: *const IoVec,
            count: c_int,
            offset: c_long,
            flags: c_int,
        ) -> isize;
    }
    const RWF_NOWAIT: c_int = 0x8;
    let offset = c_long::try_from(offset).map_err(std::io::Error::other)?;
    let missing = want.saturating_sub(buf.len());
    let spare = &mut buf.spare_capacity_mut()[..missing];
    let iov = IoVec {
        base: spare.as_mut_ptr().cast(),
        len: spare.len(),
    };
    let flags = if cached_only { RWF_NOWAIT } else { 0 };
    // SAFETY: `iov` describes `missing` bytes of `buf`'s spare capacity, which outlives the call;
    // the kernel writes at most that many bytes there and returns how many, or -1.
    let read = unsafe { preadv2(file.as_raw_fd(), &iov, 1, offset, flags) };
    let read = usize::try_from(read).map_err(|_| std::io::Error::last_os_error())?;
    // SAFETY: the kernel initialised `read` (≤ `missing`) bytes after the old length.
    unsafe { buf.set_len(buf.len() + read) };
    Ok(read)
}

fn empty(builder: axum::http::response::Builder) -> Response {
    builder.body(Body::empty()).unwrap_or_else(|_| internal())
}

/// Only reachable if a header value above were invalid, which they are not by construction.
fn internal() -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ranges() {
        use RangeRequest::{Full, Partial, Unsatisfiable};
        let p = |start, end| Partial { start, end };
        for (header, size, want) in [
            (None, 100, Full),
            (Some("bytes=0-9"), 100, p(0, 9)),
            (Some("bytes=10-"), 100, p(10, 99)),
            (Some("bytes=-10"), 100, p(90, 99)),
            (Some("bytes=-500"), 100, p(0, 99)),
            (Some("bytes=90-500"), 100, p(90, 99)),
            (Some("bytes=99-99"), 100, p(99, 99)),
            (Some(" bytes= 5 - 6 "), 100, p(5, 6)),
            (Some("bytes=100-"), 100, Unsatisfiable),
            (Some("bytes=100-200"), 100, Unsatisfiable),
            (Some("bytes=-0"), 100, Unsatisfiable),
            (Some("bytes=0-"), 0, Unsatisfiable),
            (Some("bytes=-5"), 0, Unsatisfiable),
            (Some("bytes=9-3"), 100, Full),
            (Some("bytes=0-1,5-6"), 100, Full),
            (Some("bytes=a-b"), 100, Full),
            (Some("bytes=-"), 100, Full),
            (Some("bytes=+1-2"), 100, Full),
            (Some("items=0-9"), 100, Full),
            (Some("bytes=18446744073709551616-"), 100, Full),
        ] {
            assert_eq!(parse_range(header, size), want, "{header:?} of {size}");
        }
    }

    #[test]
    fn etags() {
        let t = UNIX_EPOCH + Duration::from_nanos(0x1234);
        assert_eq!(etag(0x10, t), "\"10-1234\"");
        assert_ne!(etag(0x10, t), etag(0x11, t));
        assert_ne!(etag(0x10, t), etag(0x10, t + Duration::from_nanos(1)));
        for (header, want) in [
            ("\"10-1234\"", true),
            ("W/\"10-1234\"", true),
            ("\"x\", \"10-1234\"", true),
            ("*", true),
            ("\"10-1235\"", false),
            ("", false),
        ] {
            assert_eq!(none_match(header, "\"10-1234\""), want, "{header}");
        }
    }

    #[test]
    fn paths_stay_inside_the_root() {
        for ok in [
            "deploy/vmlinuz",
            "./deploy/vmlinuz",
            "a//b",
            "images/disk.raw",
        ] {
            assert!(relative_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../Cargo.toml",
            "deploy/../../x",
            "deploy/..",
            "/etc/passwd",
            "..\\x",
        ] {
            assert!(
                matches!(relative_path(bad), Err(FileError::BadPath(_))),
                "{bad}"
            );
        }
        assert_eq!(
            relative_path("./a//b").ok(),
            Some(PathBuf::from("a/b")),
            "normalised"
        );
    }

    /// A file of `len` bytes that differ from chunk to chunk and within one.
    fn pattern_file(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len)
            .map(|i| (i % 251) as u8 ^ (i / CHUNK) as u8)
            .collect();
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut file, &data).expect("write");
        (file, data)
    }

    fn open(path: &Path) -> (std::fs::File, FileId) {
        let file = std::fs::File::open(path).expect("open");
        let id = FileId::of(&file.metadata().expect("metadata"));
        (file, id)
    }

    async fn collect(path: &Path, offset: u64, len: u64) -> std::io::Result<Vec<Bytes>> {
        use futures::TryStreamExt;
        let (file, id) = open(path);
        chunks(file, id, offset, len).try_collect().await
    }

    #[tokio::test]
    async fn chunks_cover_any_range_exactly() {
        let size = 3 * CHUNK + 1000;
        let (file, data) = pattern_file(size);
        let c = CHUNK as u64;
        for (offset, len) in [
            (0, size as u64),
            (0, 1),
            (1, c),
            (c - 1, 2),
            (c, c),
            (c + 17, 2 * c),
            (3 * c, 1000),
            (size as u64 - 1, 1),
        ] {
            let got = collect(file.path(), offset, len).await.expect("read");
            assert!(
                got.iter()
                    .all(|chunk| chunk.len() <= CHUNK && !chunk.is_empty())
            );
            let got: Vec<u8> = got.concat();
            let want = &data[offset as usize..(offset + len) as usize];
            assert!(got == want, "bytes {offset}+{len}");
        }
    }

    #[tokio::test]
    async fn concurrent_downloads_share_chunks_of_the_same_file_only() {
        let (file, data) = pattern_file(2 * CHUNK);
        let first = collect(file.path(), 0, CHUNK as u64).await.expect("read");
        // While `first` holds chunk 0, a second download of it gets the same memory.
        let second = collect(file.path(), 10, 20).await.expect("read");
        assert_eq!(second[0].as_ptr(), first[0][10..].as_ptr());
        assert_eq!(&second[0][..], &data[10..30]);
        drop((first, second));

        // Rewritten (new size and time): its chunks are its own.
        let held = collect(file.path(), 0, 1).await.expect("read");
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(file.path(), vec![7u8; CHUNK + 1]).expect("rewrite");
        let fresh = collect(file.path(), 0, CHUNK as u64 + 1)
            .await
            .expect("read");
        assert_eq!(held[0][0], data[0]);
        assert!(fresh.concat().iter().all(|&b| b == 7));
    }

    #[tokio::test]
    async fn a_file_that_shrinks_ends_the_download_with_an_error() {
        let (file, _) = pattern_file(2 * CHUNK);
        let (handle, id) = open(file.path());
        file.as_file().set_len(100).expect("truncate");
        let got: std::io::Result<Vec<Bytes>> =
            futures::TryStreamExt::try_collect(chunks(handle, id, 0, 2 * CHUNK as u64)).await;
        let err = got.expect_err("short file");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
