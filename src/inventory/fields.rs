//! Field readers shared by both inventory dialects: checksums, SSH keys, Redfish endpoints, roles.

use super::reader::Reader;
use super::tree::Node;
use crate::model::{ImageChecksum, Role};

/// Ironic-style checksum: `sha256:HEX` (also sha512, md5), a bare hex digest (algorithm from its
/// length), or an `http(s)://` URL of a checksum file.
pub fn checksum(reader: &mut Reader, node: &Node, path: &str) -> Option<ImageChecksum> {
    let text = reader.text(node, path)?.trim().to_string();
    if text.starts_with("http://") || text.starts_with("https://") {
        reader.url(node, path, &["http", "https"])?;
        return Some(ImageChecksum {
            algorithm: "url".into(),
            digest: text,
        });
    }
    let (algorithm, digest) = match text.split_once(':') {
        Some((algorithm, digest)) => (algorithm.to_ascii_lowercase(), digest.to_ascii_lowercase()),
        None => {
            let algorithm = match text.len() {
                32 => "md5",
                64 => "sha256",
                128 => "sha512",
                _ => "unknown",
            };
            (algorithm.to_string(), text.to_ascii_lowercase())
        }
    };
    let expected_len = match algorithm.as_str() {
        "md5" => 32,
        "sha256" => 64,
        "sha512" => 128,
        _ => {
            reader.error(node.pos, path, format!("'{text}' is not a checksum (use sha256:<64 hex digits>, sha512:…, md5:… or a checksum file URL)"));
            return None;
        }
    };
    if digest.len() != expected_len || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        reader.error(
            node.pos,
            path,
            format!("a {algorithm} checksum is {expected_len} hex digits"),
        );
        return None;
    }
    Some(ImageChecksum { algorithm, digest })
}

/// OpenSSH public keys (`type base64 [comment]`).
pub fn ssh_keys(reader: &mut Reader, node: &Node, path: &str) -> Option<Vec<String>> {
    let keys = reader.strings(node, path)?;
    let mut ok = true;
    for (index, key) in keys.iter().enumerate() {
        let mut words = key.split_whitespace();
        let kind = words.next().unwrap_or("");
        let body = words.next().unwrap_or("");
        let known =
            kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
        if !known || body.len() < 16 {
            reader.error(
                node.pos,
                &format!("{path}[{index}]"),
                "not an OpenSSH public key (expected 'ssh-ed25519 AAAA… comment')",
            );
            ok = false;
        }
    }
    ok.then_some(keys)
}

/// A Redfish base URL: `https://host[:port]` (or http), or a bare host that gets `https://`.
/// Returns the normalised base URL and its port.
pub fn redfish_endpoint(
    reader: &mut Reader,
    node: &Node,
    path: &str,
    port: Option<u16>,
) -> Option<(String, u16)> {
    let text = reader.text(node, path)?.trim().to_string();
    if text.contains("://") {
        let url = reader.url(node, path, &["http", "https"])?;
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default().unwrap_or(443);
        return Some((format!("{}://{}:{}", url.scheme(), host, port), port));
    }
    let host = reader.host(node, path)?;
    let port = port.unwrap_or(443);
    Some((format!("https://{host}:{port}"), port))
}

/// Splits names into Kiln roles and free-form groups (Kolla's inventory groups).
pub fn roles_and_groups(names: Vec<String>) -> (Vec<Role>, Vec<String>) {
    let mut roles = Vec::new();
    let mut groups = Vec::new();
    for name in names {
        match name.parse::<Role>() {
            Ok(role) if !roles.contains(&role) => roles.push(role),
            Ok(_) => {}
            Err(_) if !groups.contains(&name) => groups.push(name),
            Err(_) => {}
        }
    }
    (roles, groups)
}

/// An image source: a name from the appliance's image catalog (`kiln image list`), or an
/// `http(s)://` / `file://` URL of a raw (optionally `.zst`) image.
pub fn image_source(reader: &mut Reader, node: &Node, path: &str) -> Option<String> {
    let text = reader.string(node, path)?;
    if text.contains("://") {
        return reader
            .url(node, path, &["http", "https", "file"])
            .map(|u| u.to_string());
    }
    let is_name = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if is_name {
        Some(text)
    } else {
        reader.error(
            node.pos,
            path,
            format!(
                "'{text}' is neither an image catalog name (letters, digits, '.', '_', '-') nor an http(s)/file URL"
            ),
        );
        None
    }
}
