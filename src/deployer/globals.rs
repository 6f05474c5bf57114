//! `globals.yaml` (Kolla's globals.yml: registry, tag, VIP, `enable_<service>`, any extra
//! template variables) and `passwords.yaml` (random secrets, filled by `kiln genpwd`, mode 0600,
//! never printed).

use super::catalog::Catalog;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Defaults an operator coming from Kolla would expect, adjusted to images built on the
/// appliance (`images/kolla/build.sh`).
pub const DEFAULTS: &[(&str, &str)] = &[
    ("docker_registry", "localhost:5000"),
    ("docker_namespace", "kolla"),
    ("openstack_release", "zed"),
    ("openstack_tag", "zed-debian-bookworm"),
    ("region_name", "RegionOne"),
    ("keystone_admin_user", "admin"),
    ("keystone_admin_project", "admin"),
    ("database_user", "root"),
    ("rabbitmq_user", "openstack"),
    ("openstack_logging_debug", "false"),
];

#[derive(Clone, Debug, Default)]
pub struct Globals {
    pub values: Map<String, Value>,
}

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct GlobalsError {
    pub file: String,
    pub message: String,
}

impl Globals {
    /// Reads `globals.yaml` (absent file → all defaults).
    pub fn load(path: Option<&Path>) -> Result<Globals, GlobalsError> {
        let mut values = Map::new();
        for (key, value) in DEFAULTS {
            values.insert(key.to_string(), Value::String(value.to_string()));
        }
        if let Some(path) = path {
            let file = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| GlobalsError {
                file: file.clone(),
                message: format!("cannot read: {e}"),
            })?;
            let given: Map<String, Value> = parse_map(&text).map_err(|message| GlobalsError {
                file: file.clone(),
                message,
            })?;
            for (key, value) in given {
                if key.starts_with("enable_") && !value.is_boolean() && !is_yes_no(&value) {
                    return Err(GlobalsError {
                        file,
                        message: format!("{key}: must be yes/no or true/false"),
                    });
                }
                values.insert(key, value);
            }
        }
        Ok(Globals { values })
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Globals {
        self.values.insert(key.to_string(), value.into());
        self
    }

    /// A whole number; `Err` names the key when it is set to something else.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, String> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
            Some(Value::String(s)) if s.trim().parse::<u64>().is_ok() => Ok(s.trim().parse().ok()),
            Some(other) => Err(format!("{key}: must be a whole number, not {other}")),
        }
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.values.get(key).and_then(Value::as_str)
    }

    /// `enable_<service>` if set (hyphens spelled as underscores also match, as Kolla spells its
    /// flags: `enable_nova_compute`); else, for a sub-service such as `nova-compute`, the flag of
    /// the service it belongs to (`enable_nova`, as in Kolla-ansible); else the catalog's default.
    pub fn enabled(&self, service: &str, default: bool) -> bool {
        let flag = |name: &str| -> Option<bool> {
            match self.values.get(&format!("enable_{name}")) {
                Some(Value::Bool(b)) => Some(*b),
                Some(Value::String(s)) => {
                    Some(matches!(s.as_str(), "yes" | "true" | "True" | "on"))
                }
                _ => None,
            }
        };
        flag(service)
            .or_else(|| flag(&service.replace('-', "_")))
            .or_else(|| service.split_once('-').and_then(|(parent, _)| flag(parent)))
            .unwrap_or(default)
    }
}

fn is_yes_no(value: &Value) -> bool {
    matches!(
        value.as_str(),
        Some("yes" | "no" | "true" | "false" | "True" | "False" | "on" | "off")
    )
}

fn parse_map(text: &str) -> Result<Map<String, Value>, String> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    let value: Value = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        _ => Err("the file must be a mapping of names to values".into()),
    }
}

/// Secrets by name. Debug and Display never show values.
#[derive(Clone, Default)]
pub struct Passwords {
    values: BTreeMap<String, String>,
}

impl fmt::Debug for Passwords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

impl Passwords {
    pub fn load(path: &Path) -> Result<Passwords, GlobalsError> {
        let file = path.display().to_string();
        let err = |message: String| GlobalsError {
            file: file.clone(),
            message,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(err(format!("cannot read: {e}"))),
        };
        let map = parse_map(&text).map_err(err)?;
        let mut values = BTreeMap::new();
        for (key, value) in map {
            let text = match value {
                Value::String(s) => s,
                Value::Null => continue,
                Value::Number(n) => n.to_string(),
                _ => return Err(err(format!("{key}: must be a string"))),
            };
            values.insert(key, text);
        }
        Ok(Passwords { values })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Keys the catalog's enabled services need that have no value.
    pub fn missing(&self, needed: impl IntoIterator<Item = String>) -> Vec<String> {
        needed
            .into_iter()
            .filter(|k| self.values.get(k).is_none_or(|v| v.is_empty()))
            .collect()
    }

    /// For templates: the values as a JSON object (the only place values leave this type).
    pub fn as_json(&self) -> Map<String, Value> {
        self.values
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect()
    }

    /// `kiln genpwd`: fills every missing key the catalog names with 32 random alphanumerics,
    /// keeps existing values, writes the file with mode 0600 atomically. Returns the keys filled.
    pub fn fill(path: &Path, catalog: &Catalog) -> Result<Vec<String>, GlobalsError> {
        let mut passwords = Passwords::load(path)?;
        let filled = passwords.missing(catalog.password_keys());
        for key in &filled {
            passwords.values.insert(key.clone(), secret_for(key));
        }
        let mut text =
            String::from("# Generated by `kiln genpwd`: secrets for the services. Keep private.\n");
        for (key, value) in &passwords.values {
            text.push_str(&format!("{key}: \"{value}\"\n"));
        }
        let file = path.display().to_string();
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            out.write_all(text.as_bytes())?;
            out.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| GlobalsError {
            file,
            message: format!("cannot write: {e}"),
        })?;
        Ok(filled)
    }
}

/// A new value for `key`: a Fernet key (32 random bytes, URL-safe base64, what `keystone-manage
/// fernet_setup` writes) for names containing `_fernet_key`, else 32 alphanumerics.
fn secret_for(key: &str) -> String {
    if key.contains("_fernet_key") {
        let mut bytes = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut bytes);
        urlsafe_base64(&bytes)
    } else {
        random_secret(32)
    }
}

/// RFC 4648 §5 base64 with padding.
fn urlsafe_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn random_secret(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn urlsafe_base64_matches_rfc_4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(urlsafe_base64(input.as_bytes()), want, "{input}");
        }
        assert_eq!(urlsafe_base64(&[0xfb, 0xff]), "-_8=");
    }

    #[test]
    fn fernet_keys_are_44_characters_of_urlsafe_base64() {
        let key = secret_for("keystone_fernet_key_0");
        assert_eq!(key.len(), 44, "{key}");
        assert!(key.ends_with('='));
        assert!(
            key[..43]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(key, secret_for("keystone_fernet_key_0"));
        assert_eq!(secret_for("keystone_admin_password").len(), 32);
    }

    #[test]
    fn globals_override_defaults_and_enable_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("globals.yaml");
        std::fs::write(
            &path,
            "openstack_tag: t1\nenable_glance: no\nenable_haproxy: true\n",
        )
        .unwrap();
        let g = Globals::load(Some(&path)).unwrap();
        assert_eq!(g.get_str("openstack_tag"), Some("t1"));
        assert_eq!(g.get_str("docker_namespace"), Some("kolla"));
        assert!(!g.enabled("glance", true));
        assert!(g.enabled("haproxy", false));
        assert!(g.enabled("keystone", true));
        let nova: Globals = Globals::default().with("enable_nova", true);
        assert!(
            nova.enabled("nova-compute", false),
            "follows its parent's flag"
        );
        let split = nova.clone().with("enable_nova_compute", false);
        assert!(!split.enabled("nova-compute", false), "its own flag wins");
        assert!(!Globals::default().enabled("nova-compute", false));
        std::fs::write(&path, "enable_glance: maybe\n").unwrap();
        let err = Globals::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("enable_glance"), "{err}");
    }

    #[test]
    fn genpwd_fills_missing_keeps_existing_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwords.yaml");
        std::fs::write(&path, "database_password: keepme\n").unwrap();
        let catalog = Catalog::builtin().unwrap();
        let filled = Passwords::fill(&path, &catalog).unwrap();
        assert!(!filled.contains(&"database_password".to_string()));
        assert!(filled.contains(&"keystone_admin_password".to_string()));
        let p = Passwords::load(&path).unwrap();
        assert_eq!(p.get("database_password"), Some("keepme"));
        assert_eq!(p.get("keystone_admin_password").unwrap().len(), 32);
        assert!(p.missing(catalog.password_keys()).is_empty());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!format!("{p:?}").contains("keepme"));
        assert!(Passwords::fill(&path, &catalog).unwrap().is_empty());
    }
}
