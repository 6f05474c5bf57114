//! The appliance's image catalog: OS images stored as raw+zstd under `FILES_ROOT/images/`, each
//! with a `NAME.json` record, served by the boot HTTP server, and resolved for deploys.
//!
//! A node's `image.source` is a catalog name (`debian-12`), or a URL with its checksum, or absent
//! (then the appliance default image, `--default-image`, or the catalog's only image).
//! `kiln image import` converts qcow2/raw once at the appliance (qemu-img, then zstd), so every
//! deploy streams the compact form and the agent needs no qcow2 support.

use crate::model::{ImageChecksum, ImageSpec};
use crate::store::DeployImage;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `NAME.json` beside `NAME.raw.zst`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    pub format: String,
    /// Size of the raw disk image (what the root disk must hold).
    pub raw_size: u64,
    /// Size of the stored file.
    pub size: u64,
    /// SHA-256 of the stored (compressed) file, which the agent verifies over the stream.
    pub sha256: String,
    #[serde(default)]
    pub built_at: Option<String>,
    /// TCP ports that prove a node booted this image is up, in order (e.g. `[2376]` for an image
    /// whose Docker Engine must answer); empty: the daemon's default (2376, then 22).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ready_ports: Vec<u16>,
}

impl ImageRecord {
    pub fn file_name(&self) -> String {
        format!("{}.raw.zst", self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read the image catalog {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image record {path} is unreadable: {message}")]
    Record { path: PathBuf, message: String },
    #[error("no image named '{0}' in the catalog (see `kiln image list`)")]
    Unknown(String),
    #[error(
        "no image to deploy: give the node an image.source, or start the daemon with --default-image (the catalog has {0} images)"
    )]
    NoDefault(usize),
    #[error("images are served by the boot HTTP server: start the daemon with --boot-interface")]
    NotServed,
    #[error("cannot fetch the checksum file {url}: {message}")]
    ChecksumUrl { url: String, message: String },
    #[error("`{command}` failed: {message}")]
    Tool { command: String, message: String },
    #[error("image name '{0}' must be letters, digits, '.', '_' or '-'")]
    BadName(String),
}

/// The catalog directory and how nodes reach it.
#[derive(Clone, Debug)]
pub struct ImageCatalog {
    pub dir: PathBuf,
    /// `http://ADDR:PORT/files/images` when the boot HTTP server runs.
    pub url_base: Option<String>,
    pub default: Option<String>,
}

impl ImageCatalog {
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        list(&self.dir)
    }

    /// The image a node's deploy writes.
    pub async fn resolve(&self, spec: Option<&ImageSpec>) -> Result<DeployImage, ImageError> {
        match spec {
            Some(spec) if spec.source.contains("://") => {
                let checksum = match &spec.checksum {
                    Some(c) if c.algorithm == "url" => {
                        Some(fetch_checksum(&c.digest, &spec.source).await?)
                    }
                    other => other.clone(),
                };
                Ok(DeployImage {
                    url: spec.source.clone(),
                    checksum,
                    raw_size: None,
                    ready_ports: Vec::new(),
                })
            }
            Some(spec) => self.by_name(&spec.source),
            None => {
                if let Some(name) = &self.default {
                    return self.by_name(name);
                }
                let all = self.list()?;
                match all.as_slice() {
                    [only] => self.by_name(&only.name),
                    _ => Err(ImageError::NoDefault(all.len())),
                }
            }
        }
    }

    fn by_name(&self, name: &str) -> Result<DeployImage, ImageError> {
        let record = self
            .list()?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| ImageError::Unknown(name.to_string()))?;
        let base = self.url_base.as_ref().ok_or(ImageError::NotServed)?;
        Ok(DeployImage {
            url: format!("{base}/{}", record.file_name()),
            checksum: Some(ImageChecksum {
                algorithm: "sha256".into(),
                digest: record.sha256.clone(),
            }),
            raw_size: Some(record.raw_size),
            ready_ports: record.ready_ports,
        })
    }
}

/// Every `*.json` record in `dir` whose image file exists, sorted by name.
pub fn list(dir: &Path) -> Result<Vec<ImageRecord>, ImageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ImageError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut records = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ImageError::Read {
            path: path.clone(),
            source,
        })?;
        let record: ImageRecord = serde_json::from_str(&text).map_err(|e| ImageError::Record {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if dir.join(record.file_name()).exists() {
            records.push(record);
        }
    }
    records.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(records)
}

/// Reads `HEX  NAME` lines of a checksum file and picks the line for `image_url`'s file name
/// (or the only line).
async fn fetch_checksum(url: &str, image_url: &str) -> Result<ImageChecksum, ImageError> {
    let fail = |message: String| ImageError::ChecksumUrl {
        url: url.to_string(),
        message,
    };
    let text = reqwest::get(url)
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| fail(e.to_string()))?
        .text()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let file = image_url.rsplit('/').next().unwrap_or(image_url);
    parse_checksum_file(&text, file).ok_or_else(|| fail(format!("no checksum for {file}")))
}

pub fn parse_checksum_file(text: &str, file: &str) -> Option<ImageChecksum> {
    let lines: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let digest = parts.next()?;
            let name = parts.next().unwrap_or("").trim_start_matches('*');
            Some((digest, name))
        })
        .collect();
    let digest = match lines.as_slice() {
        [(digest, _)] => *digest,
        _ => lines.iter().find(|(_, name)| *name == file)?.0,
    };
    let algorithm = match digest.len() {
        32 => "md5",
        64 => "sha256",
        128 => "sha512",
        _ => return None,
    };
    digest
        .chars()
        .all(|c| c.is_ascii_hexdigit())
        .then(|| ImageChecksum {
            algorithm: algorithm.into(),
            digest: digest.to_ascii_lowercase(),
        })
}

/// Imports a qcow2 or raw image into the catalog as `NAME.raw.zst` (qemu-img, then zstd) with
/// its record. Runs at the appliance, once per image.
pub fn import(dir: &Path, source: &Path, name: &str) -> Result<ImageRecord, ImageError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(ImageError::BadName(name.to_string()));
    }
    std::fs::create_dir_all(dir).map_err(|source| ImageError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let raw = dir.join(format!(".{name}.raw.importing"));
    let zst_tmp = dir.join(format!(".{name}.raw.zst.importing"));
    let result = (|| {
        run(Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(source)
            .arg(&raw))?;
        let raw_size = std::fs::metadata(&raw)
            .map_err(|source| ImageError::Read {
                path: raw.clone(),
                source,
            })?
            .len();
        run(Command::new("zstd")
            .args(["-q", "-f", "-3", "-T0", "--sparse"])
            .arg(&raw)
            .arg("-o")
            .arg(&zst_tmp))?;
        let (sha256, size) = sha256_file(&zst_tmp)?;
        let record = ImageRecord {
            name: name.to_string(),
            format: "raw+zstd".into(),
            raw_size,
            size,
            sha256,
            built_at: None,
            ready_ports: Vec::new(),
        };
        let final_path = dir.join(record.file_name());
        std::fs::rename(&zst_tmp, &final_path).map_err(|source| ImageError::Read {
            path: final_path.clone(),
            source,
        })?;
        let json = serde_json::to_string_pretty(&record).map_err(|e| ImageError::Record {
            path: dir.join(format!("{name}.json")),
            message: e.to_string(),
        })?;
        std::fs::write(dir.join(format!("{name}.json")), json).map_err(|source| {
            ImageError::Read {
                path: dir.join(format!("{name}.json")),
                source,
            }
        })?;
        Ok(record)
    })();
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&zst_tmp);
    result
}

fn run(command: &mut Command) -> Result<(), ImageError> {
    let shown = format!("{command:?}");
    let output = command.output().map_err(|e| ImageError::Tool {
        command: shown.clone(),
        message: e.to_string(),
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ImageError::Tool {
            command: shown,
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

fn sha256_file(path: &Path) -> Result<(String, u64), ImageError> {
    use sha2::Digest;
    use std::io::Read;
    let read_err = |source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let digest = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((digest, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_files() {
        let hex = "a".repeat(64);
        let text = format!("{hex}  debian.raw.zst\n{}  other.raw\n", "b".repeat(64));
        let got = parse_checksum_file(&text, "debian.raw.zst").expect("found");
        assert_eq!(
            (got.algorithm.as_str(), got.digest),
            ("sha256", hex.clone())
        );
        assert_eq!(
            parse_checksum_file(&text, "other.raw").map(|c| c.digest),
            Some("b".repeat(64))
        );
        assert!(parse_checksum_file(&text, "missing.raw").is_none());
        // A single line needs no matching name; md5 by length; junk is refused.
        assert_eq!(
            parse_checksum_file(&format!("{}\n", "C".repeat(32)), "x").map(|c| c.algorithm),
            Some("md5".into())
        );
        assert!(parse_checksum_file("xyz  file\n", "file").is_none());
    }

    #[tokio::test]
    async fn resolve_by_name_default_and_url() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = ImageRecord {
            name: "debian-12".into(),
            format: "raw+zstd".into(),
            raw_size: 3 << 30,
            size: 300 << 20,
            sha256: "f".repeat(64),
            built_at: None,
            ready_ports: vec![2376],
        };
        std::fs::write(
            dir.path().join("debian-12.json"),
            serde_json::to_string(&record).expect("json"),
        )
        .expect("write");
        let mut catalog = ImageCatalog {
            dir: dir.path().into(),
            url_base: Some("http://10.0.0.1:8080/files/images".into()),
            default: None,
        };
        // The record alone is not an image: the file must exist.
        assert!(matches!(
            catalog.resolve(None).await,
            Err(ImageError::NoDefault(0))
        ));
        std::fs::write(dir.path().join("debian-12.raw.zst"), b"x").expect("write");
        let image = catalog.resolve(None).await.expect("only image");
        assert_eq!(
            image.url,
            "http://10.0.0.1:8080/files/images/debian-12.raw.zst"
        );
        assert_eq!(image.raw_size, Some(3 << 30));
        assert_eq!(image.ready_ports, [2376]);
        let named = ImageSpec {
            source: "nope".into(),
            checksum: None,
        };
        assert!(matches!(
            catalog.resolve(Some(&named)).await,
            Err(ImageError::Unknown(_))
        ));
        let url = ImageSpec {
            source: "http://elsewhere/img.raw".into(),
            checksum: None,
        };
        assert_eq!(
            catalog.resolve(Some(&url)).await.expect("url").url,
            "http://elsewhere/img.raw"
        );
        catalog.url_base = None;
        assert!(matches!(
            catalog.resolve(None).await,
            Err(ImageError::NotServed)
        ));
    }
}
