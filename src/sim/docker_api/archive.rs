//! Reads a tar stream as it arrives, without keeping it: the entry names, plus the contents of
//! the few small entries asked for (`manifest.json` of a `docker save` archive). Image archives
//! are hundreds of megabytes; the simulated engine only needs their tags.

const BLOCK: usize = 512;
/// Kept entries larger than this are not kept (a manifest is a few hundred bytes).
const KEEP_LIMIT: u64 = 1 << 20;

#[derive(Debug, PartialEq, Eq)]
pub enum ArchiveError {
    BadHeader(String),
    Truncated,
}

impl std::fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchiveError::BadHeader(why) => write!(f, "bad tar header: {why}"),
            ArchiveError::Truncated => write!(f, "the tar stream ends inside an entry"),
        }
    }
}

enum Phase {
    Header,
    /// Inside an entry's data: bytes left, padding after, whether its content is kept.
    Data {
        left: u64,
        padding: u64,
        keep: bool,
    },
    End,
}

pub struct TarScanner {
    keep: Vec<String>,
    phase: Phase,
    header: Vec<u8>,
    /// Names of regular files and directories seen, in order.
    pub names: Vec<String>,
    /// (name, content) of the kept entries.
    pub kept: Vec<(String, Vec<u8>)>,
    /// A GNU long name (`L` entry) applies to the next header.
    long_name: Option<Vec<u8>>,
    collecting_long_name: bool,
}

fn octal(field: &[u8]) -> Result<u64, ArchiveError> {
    let text: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| ArchiveError::BadHeader(format!("size {text:?}")))
}

fn c_string(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).to_string()
}

impl TarScanner {
    pub fn new(keep: &[&str]) -> TarScanner {
        TarScanner {
            keep: keep.iter().map(|k| k.to_string()).collect(),
            phase: Phase::Header,
            header: Vec::with_capacity(BLOCK),
            names: Vec::new(),
            kept: Vec::new(),
            long_name: None,
            collecting_long_name: false,
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), ArchiveError> {
        while !bytes.is_empty() {
            match &mut self.phase {
                Phase::End => return Ok(()),
                Phase::Header => {
                    let take = (BLOCK - self.header.len()).min(bytes.len());
                    self.header.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.header.len() == BLOCK {
                        let header = std::mem::take(&mut self.header);
                        self.on_header(&header)?;
                    }
                }
                Phase::Data {
                    left,
                    padding,
                    keep,
                } => {
                    let (mut left, mut padding, keep) = (*left, *padding, *keep);
                    if left > 0 {
                        let take = left.min(bytes.len() as u64) as usize;
                        if keep {
                            self.keep_bytes(&bytes[..take]);
                        }
                        left -= take as u64;
                        bytes = &bytes[take..];
                    } else {
                        let take = padding.min(bytes.len() as u64) as usize;
                        padding -= take as u64;
                        bytes = &bytes[take..];
                    }
                    if left == 0 && padding == 0 {
                        self.phase = Phase::Header;
                        self.collecting_long_name = false;
                    } else {
                        self.phase = Phase::Data {
                            left,
                            padding,
                            keep,
                        };
                    }
                }
            }
        }
        Ok(())
    }

    fn keep_bytes(&mut self, bytes: &[u8]) {
        if self.collecting_long_name {
            self.long_name
                .get_or_insert_with(Vec::new)
                .extend_from_slice(bytes);
        } else if let Some((_, content)) = self.kept.last_mut() {
            content.extend_from_slice(bytes);
        }
    }

    fn on_header(&mut self, header: &[u8]) -> Result<(), ArchiveError> {
        if header.iter().all(|b| *b == 0) {
            self.phase = Phase::End;
            return Ok(());
        }
        let size = octal(&header[124..136])?;
        let padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        let kind = header[156];
        let mut name = match self.long_name.take() {
            Some(long) => c_string(&long),
            None => {
                let prefix = c_string(&header[345..500]);
                let base = c_string(&header[..100]);
                if prefix.is_empty() || &header[257..262] != b"ustar" {
                    base
                } else {
                    format!("{prefix}/{base}")
                }
            }
        };
        if let Some(stripped) = name.strip_prefix("./") {
            name = stripped.to_string();
        }
        let mut keep = false;
        match kind {
            b'L' => {
                self.collecting_long_name = true;
                keep = true;
            }
            b'x' | b'g' => {}
            _ => {
                if self.keep.contains(&name) && size <= KEEP_LIMIT {
                    self.kept.push((name.clone(), Vec::new()));
                    keep = true;
                }
                self.names.push(name);
            }
        }
        self.phase = if size == 0 {
            self.collecting_long_name = false;
            Phase::Header
        } else {
            Phase::Data {
                left: size,
                padding,
                keep,
            }
        };
        Ok(())
    }

    /// Whether the stream ended cleanly (the end blocks, or between entries).
    pub fn finish(&self) -> Result<(), ArchiveError> {
        match self.phase {
            Phase::Data { .. } => Err(ArchiveError::Truncated),
            Phase::Header if !self.header.is_empty() => Err(ArchiveError::Truncated),
            _ => Ok(()),
        }
    }

    pub fn kept(&self, name: &str) -> Option<&[u8]> {
        self.kept
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.as_slice())
    }
}

/// The `RepoTags` of a `docker save` manifest, and the image ID from its config file name.
pub fn manifest_tags(manifest: &[u8]) -> Vec<(String, String)> {
    let Ok(serde_json::Value::Array(images)) = serde_json::from_slice(manifest) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for image in images {
        let config = image["Config"].as_str().unwrap_or_default();
        let hex = config
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".json");
        let id = format!("sha256:{hex}");
        for tag in image["RepoTags"].as_array().into_iter().flatten() {
            if let Some(tag) = tag.as_str() {
                out.push((tag.to_string(), id.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, content) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, *content)
                .expect("append");
        }
        builder.into_inner().expect("finish")
    }

    const MANIFEST: &[u8] =
        br#"[{"Config":"blobs/sha256/abc123","RepoTags":["kolla/mariadb:zed","x:1"],"Layers":[]}]"#;

    #[test]
    fn keeps_the_manifest_in_any_chunking() {
        let big = vec![7u8; 5000];
        let long = "d/".repeat(80) + "file";
        let bytes = archive(&[
            ("layer.tar", &big),
            (&long, b"x"),
            ("manifest.json", MANIFEST),
        ]);
        for chunk in [1, 7, 511, 512, 513, 4096, bytes.len()] {
            let mut scanner = TarScanner::new(&["manifest.json"]);
            for piece in bytes.chunks(chunk) {
                scanner.feed(piece).expect("feed");
            }
            scanner.finish().expect("complete");
            assert_eq!(
                scanner.names,
                vec![
                    "layer.tar".to_string(),
                    long.clone(),
                    "manifest.json".into()
                ]
            );
            assert_eq!(
                scanner.kept("manifest.json"),
                Some(MANIFEST),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_cut_stream_is_truncated() {
        let bytes = archive(&[("a", &[1u8; 1000])]);
        let mut scanner = TarScanner::new(&[]);
        scanner.feed(&bytes[..700]).expect("feed");
        assert_eq!(scanner.finish(), Err(ArchiveError::Truncated));
    }

    #[test]
    fn garbage_is_a_bad_header() {
        let mut scanner = TarScanner::new(&[]);
        let mut junk = vec![b'z'; 512];
        junk[124..136].copy_from_slice(b"notoctal!!!\0");
        assert!(matches!(
            scanner.feed(&junk),
            Err(ArchiveError::BadHeader(_))
        ));
    }

    #[test]
    fn manifest_tags_carry_the_config_id() {
        assert_eq!(
            manifest_tags(MANIFEST),
            vec![
                ("kolla/mariadb:zed".to_string(), "sha256:abc123".to_string()),
                ("x:1".to_string(), "sha256:abc123".to_string()),
            ]
        );
        let legacy = br#"[{"Config":"def456.json","RepoTags":["a:b"]}]"#;
        assert_eq!(
            manifest_tags(legacy),
            vec![("a:b".to_string(), "sha256:def456".to_string())]
        );
        assert!(manifest_tags(b"not json").is_empty());
    }
}
