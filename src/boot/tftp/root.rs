//! The served directory: maps a requested name to a file that stays inside the root, and keeps
//! each file's bytes in memory, since every node of a rack asks for the same boot binary.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use super::{TftpError, TftpFailure};

/// Files larger than this are refused over TFTP (kernels and images go over HTTP).
const MAX_TFTP_FILE: u64 = 64 << 20;

pub(super) struct Root {
    /// Canonical, so that `starts_with` on a canonical request path is a containment check.
    dir: PathBuf,
    /// Keyed by canonical path; an entry is used only while the file's size and mtime match.
    cache: Mutex<HashMap<PathBuf, Cached>>,
}

struct Cached {
    modified: SystemTime,
    len: u64,
    bytes: Arc<[u8]>,
}

impl Root {
    pub async fn open(dir: &Path) -> Result<Self, TftpError> {
        let canonical = tokio::fs::canonicalize(dir)
            .await
            .map_err(|source| TftpError::Root {
                path: dir.to_path_buf(),
                source,
            })?;
        let is_dir = tokio::fs::metadata(&canonical)
            .await
            .is_ok_and(|m| m.is_dir());
        if !is_dir {
            return Err(TftpError::RootNotDir { path: canonical });
        }
        Ok(Self {
            dir: canonical,
            cache: Mutex::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The requested file's bytes, from the cache while its size and mtime still match.
    /// Blocking (path resolution, open, stat, and a read on a miss): run it off the runtime.
    pub fn load(&self, requested: &str) -> Result<Arc<[u8]>, TftpFailure> {
        let relative = relative_request(Path::new(requested)).ok_or(TftpFailure::BadPath)?;
        let real =
            std::fs::canonicalize(self.dir.join(relative)).map_err(|e| failure_from_io(&e))?;
        if !real.starts_with(&self.dir) {
            return Err(TftpFailure::OutsideRoot);
        }
        // O_NOFOLLOW: a symlink swapped in after canonicalize is refused, not followed.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&real)
            .map_err(|e| failure_from_io(&e))?;
        let meta = file.metadata().map_err(|e| failure_from_io(&e))?;
        if !meta.is_file() {
            return Err(TftpFailure::NotAFile);
        }
        let len = meta.len();
        if len > MAX_TFTP_FILE {
            return Err(TftpFailure::Unreadable(io::ErrorKind::FileTooLarge));
        }
        let modified = meta.modified().map_err(|e| failure_from_io(&e))?;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(hit) = cache.get(&real)
            && hit.modified == modified
            && hit.len == len
        {
            return Ok(Arc::clone(&hit.bytes));
        }
        drop(cache);
        let bytes = read_all(&file, len)?;
        cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let cached = Cached {
            modified,
            len,
            bytes: Arc::clone(&bytes),
        };
        cache.insert(real, cached);
        Ok(bytes)
    }
}

/// At most [`MAX_TFTP_FILE`] bytes, even if the file grew after the stat.
fn read_all(file: &File, len: u64) -> Result<Arc<[u8]>, TftpFailure> {
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(MAX_TFTP_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| failure_from_io(&e))?;
    if bytes.len() as u64 > MAX_TFTP_FILE {
        return Err(TftpFailure::Unreadable(io::ErrorKind::FileTooLarge));
    }
    Ok(bytes.into())
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

    #[tokio::test]
    async fn cached_bytes_follow_the_file_and_big_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        std::fs::write(&path, b"first").unwrap();
        let root = Root::open(dir.path()).await.unwrap();
        let first = root.load("a.bin").unwrap();
        assert_eq!(&*first, b"first");
        assert!(
            Arc::ptr_eq(&first, &root.load("/a.bin").unwrap()),
            "served from the cache"
        );
        std::fs::write(&path, b"second, longer").unwrap();
        assert_eq!(
            &*root.load("a.bin").unwrap(),
            b"second, longer",
            "size changed: re-read"
        );

        let big = File::create(dir.path().join("big.img")).unwrap();
        big.set_len(MAX_TFTP_FILE + 1).unwrap();
        let refused = root.load("big.img");
        assert_eq!(
            refused,
            Err(TftpFailure::Unreadable(io::ErrorKind::FileTooLarge))
        );
        assert_eq!(root.load("nope"), Err(TftpFailure::NotFound));
        assert_eq!(root.load(".."), Err(TftpFailure::BadPath));
    }
}
