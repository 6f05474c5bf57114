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
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Read size of the streaming body, and the size of each body chunk handed to hyper: large enough
/// that a multi-GiB image is neither a syscall storm nor a storm of blocking-pool hand-offs.
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
    let body = Body::from_stream(chunks(file.into_std().await, start, len));
    Ok(response.body(body).unwrap_or_else(|_| internal()))
}

/// The next `len` bytes of `file`, from `offset`, as body chunks of up to [`CHUNK`] bytes, each
/// read straight into the buffer hyper then writes to the socket.
///
/// A chunk already in the page cache (every chunk but the first reader's, when a rack downloads
/// one image) is read right here on the runtime thread, with `RWF_NOWAIT` so that the read fails
/// rather than waits for the disk; only then does it go to the blocking pool. The hand-off is what
/// made serving expensive: `tokio::fs::File` behind `ReaderStream` sent every chunk to a pool
/// thread and back and copied it once more in user space, and the socket write then copied it
/// from another core's cache. Reading in place halves the daemon's CPU per byte served.
fn chunks(
    file: std::fs::File,
    offset: u64,
    len: u64,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send {
    let state = (Arc::new(file), offset, len);
    futures::stream::try_unfold(state, |(file, offset, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let want = left.min(chunk_size() as u64) as usize; // TEMP-EXPERIMENT
        let chunk = match read_at(&file, offset, want, true) {
            Ok(chunk) if !chunk.is_empty() => chunk,
            _ => {
                let file = Arc::clone(&file);
                tokio::task::spawn_blocking(move || read_at(&file, offset, want, false))
                    .await
                    .map_err(std::io::Error::other)??
            }
        };
        if chunk.is_empty() {
            // The file shrank under the download: end it short rather than spin.
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let read = chunk.len() as u64;
        Ok(Some((
            Bytes::from(chunk),
            (file, offset + read, left - read),
        )))
    })
}

/// `preadv2(2)` of up to `want` bytes at `offset` into a new buffer that is not zeroed first.
/// With `cached_only` (`RWF_NOWAIT`) the kernel reads only what is in the page cache and fails
/// with `EAGAIN` for the rest (older kernels: `EOPNOTSUPP`), so it never blocks on the disk.
fn read_at(
    file: &std::fs::File,
    offset: u64,
    want: usize,
    cached_only: bool,
) -> std::io::Result<Vec<u8>> {
    /// `struct iovec`.
    #[repr(C)]
    struct IoVec {
        base: *mut u8,
        len: usize,
    }
    unsafe extern "C" {
        fn preadv2(fd: i32, iov: *const IoVec, iovcnt: i32, offset: i64, flags: i32) -> isize;
    }
    const RWF_NOWAIT: i32 = 0x8;
    let offset = i64::try_from(offset).map_err(std::io::Error::other)?;
    let mut buf = Vec::with_capacity(want);
    let iov = IoVec {
        base: buf.as_mut_ptr(),
        len: want,
    };
    let flags = if cached_only { RWF_NOWAIT } else { 0 };
    // SAFETY: `iov` describes `want` bytes of `buf`'s allocation, which outlives the call; the
    // kernel writes at most that many bytes there and returns how many, or -1.
    let read = unsafe { preadv2(file.as_raw_fd(), &iov, 1, offset, flags) };
    let read = usize::try_from(read).map_err(|_| std::io::Error::last_os_error())?;
    // SAFETY: the kernel initialised the first `read` (≤ `want`) bytes.
    unsafe { buf.set_len(read) };
    Ok(buf)
}

// TEMP-EXPERIMENT
fn chunk_size() -> usize {
    static SIZE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        std::env::var("KILN_EXP_CHUNK")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(CHUNK)
    })
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
}
