//! Typed access to a positioned YAML tree that records every problem instead of stopping at one.
//!
//! Each getter returns `None` after recording an error, so a validator reads the whole file and
//! reports all errors at once, each with file, line, column and field path.

use super::InventoryError;
use super::tree::{Node, PlainKind, Pos, Value, plain_scalar_kind};
use crate::model::MacAddress;
use std::net::Ipv4Addr;

pub struct Reader<'f> {
    file: &'f str,
    pub errors: Vec<InventoryError>,
}

/// A mapping whose keys were checked against the allowed set.
pub struct Map<'n> {
    pub node: &'n Node,
    pub path: String,
}

impl<'n> Map<'n> {
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.node.get(key).filter(|value| !value.is_null())
    }

    pub fn child(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'f> Reader<'f> {
    pub fn new(file: &'f str) -> Self {
        Self {
            file,
            errors: Vec::new(),
        }
    }

    pub fn error(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.errors
            .push(InventoryError::new(self.file, pos, path, message));
    }

    fn wrong_type(&mut self, node: &Node, path: &str, expected: &str) {
        self.error(
            node.pos,
            path,
            format!("expected {expected}, found {}", node.kind()),
        );
    }

    /// Checks that `node` is a mapping with only `allowed` keys; unknown keys are errors.
    pub fn map<'n>(&mut self, node: &'n Node, path: &str, allowed: &[&str]) -> Option<Map<'n>> {
        let Value::Map(entries) = &node.value else {
            self.wrong_type(node, path, "a mapping");
            return None;
        };
        for (key, _) in entries {
            if !allowed.contains(&key.name.as_str()) {
                self.error(
                    key.pos,
                    &join(path, &key.name),
                    format!(
                        "unknown field '{}' (expected one of: {})",
                        key.name,
                        allowed.join(", ")
                    ),
                );
            }
        }
        Some(Map {
            node,
            path: path.to_string(),
        })
    }

    pub fn list<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            _ => {
                self.wrong_type(node, path, "a list");
                None
            }
        }
    }

    /// A field that must be present (and not null).
    pub fn required<'n>(&mut self, map: &Map<'n>, key: &str) -> Option<&'n Node> {
        let found = map.get(key);
        if found.is_none() {
            self.error(
                map.node.pos,
                &map.child(key),
                format!("missing required field '{key}'"),
            );
        }
        found
    }

    /// Any scalar except null and booleans, as text (YAML numbers are accepted as their text).
    pub fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Scalar { text, quoted: true } => Some(text.clone()),
            Value::Scalar {
                text,
                quoted: false,
            } => match plain_scalar_kind(text) {
                PlainKind::Null | PlainKind::Bool(_) => {
                    self.wrong_type(node, path, "a string");
                    None
                }
                _ => Some(text.clone()),
            },
            _ => {
                self.wrong_type(node, path, "a string");
                None
            }
        }
    }

    /// A non-empty string.
    pub fn text(&mut self, node: &Node, path: &str) -> Option<String> {
        let text = self.string(node, path)?;
        if text.trim().is_empty() {
            self.error(node.pos, path, "must not be empty");
            return None;
        }
        Some(text)
    }

    /// A whole number in `min..=max`; quoted digits are accepted (Bifrost writes `"ram": "3072"`).
    pub fn int(&mut self, node: &Node, path: &str, min: u64, max: u64) -> Option<u64> {
        let parsed = match &node.value {
            Value::Scalar { text, .. } => text.trim().parse::<u64>().ok(),
            _ => None,
        };
        match parsed {
            Some(value) if (min..=max).contains(&value) => Some(value),
            Some(value) => {
                self.error(
                    node.pos,
                    path,
                    format!("{value} is out of range ({min}..={max})"),
                );
                None
            }
            None => {
                self.wrong_type(node, path, "a whole number");
                None
            }
        }
    }

    pub fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        match &node.value {
            Value::Scalar {
                text,
                quoted: false,
            } => match plain_scalar_kind(text) {
                PlainKind::Bool(value) => Some(value),
                _ => {
                    self.wrong_type(node, path, "true or false");
                    None
                }
            },
            _ => {
                self.wrong_type(node, path, "true or false");
                None
            }
        }
    }

    pub fn ipv4(&mut self, node: &Node, path: &str) -> Option<Ipv4Addr> {
        let text = self.string(node, path)?;
        match text.trim().parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.error(node.pos, path, format!("'{text}' is not an IPv4 address"));
                None
            }
        }
    }

    pub fn mac(&mut self, node: &Node, path: &str) -> Option<MacAddress> {
        let text = self.string(node, path)?;
        match text.trim().parse::<MacAddress>() {
            Ok(mac) => Some(mac),
            Err(message) => {
                self.error(node.pos, path, message);
                None
            }
        }
    }

    /// An absolute URL with one of the given schemes.
    pub fn url(&mut self, node: &Node, path: &str, schemes: &[&str]) -> Option<url::Url> {
        let text = self.string(node, path)?;
        match url::Url::parse(text.trim()) {
            Ok(url)
                if schemes.contains(&url.scheme())
                    && (url.scheme() == "file" || url.host().is_some()) =>
            {
                Some(url)
            }
            Ok(url) => {
                self.error(
                    node.pos,
                    path,
                    format!(
                        "URL scheme '{}' is not allowed here (use {})",
                        url.scheme(),
                        schemes.join(", ")
                    ),
                );
                None
            }
            Err(err) => {
                self.error(
                    node.pos,
                    path,
                    format!("'{text}' is not a valid URL: {err}"),
                );
                None
            }
        }
    }

    /// An IPv4 address or a DNS host name.
    pub fn host(&mut self, node: &Node, path: &str) -> Option<String> {
        let text = self.text(node, path)?.trim().to_string();
        if is_host(&text) {
            Some(text)
        } else {
            self.error(
                node.pos,
                path,
                format!("'{text}' is not an IPv4 address or host name"),
            );
            None
        }
    }

    /// A list of strings, or a single string standing for a one-item list.
    pub fn strings(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        if let Value::Scalar { .. } = node.value {
            return self.text(node, path).map(|one| vec![one]);
        }
        let items = self.list(node, path)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (index, item) in items.iter().enumerate() {
            match self.text(item, &format!("{path}[{index}]")) {
                Some(text) => out.push(text),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

/// True for a dotted-quad IPv4 address or an RFC 1123 host name.
pub fn is_host(text: &str) -> bool {
    if text.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    // All-numeric dotted text that did not parse as an address is a malformed address.
    if text
        .split('.')
        .all(|label| label.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for good in ["10.0.0.1", "bmc-01", "bmc01.rack.example"] {
            assert!(is_host(good), "{good}");
        }
        for bad in ["10.0.0.300", "10.0.0", "-bmc", "bmc_01", "a..b", ""] {
            assert!(!is_host(bad), "{bad}");
        }
    }
}
