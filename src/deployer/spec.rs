//! A container exactly as it should run on one host, after rendering: the unit the deployer
//! compares with what a Docker Engine reports. Its hash (over everything, config file contents
//! included) is stored as a label, so "did anything change?" is one string comparison.

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Labels Kiln puts on every container and volume it manages.
pub const LABEL_MANAGED: &str = "org.kiln.managed";
pub const LABEL_SERVICE: &str = "org.kiln.service";
pub const LABEL_HASH: &str = "org.kiln.spec-hash";
pub const LABEL_KIND: &str = "org.kiln.kind";

/// Where Kolla images expect their config files and config.json.
pub const KOLLA_CONFIG_DIR: &str = "/var/lib/kolla/config_files";

/// First 16 bytes of SHA-256, in hex.
pub fn short_digest(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Long-running; kept running by its restart policy.
    Service,
    /// One-shot; must exit 0. Kept (exited) as the record that it ran with this spec.
    Bootstrap,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Bootstrap => "bootstrap",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Healthcheck {
    pub test: String,
    pub interval_s: u64,
    pub timeout_s: u64,
    pub retries: u64,
    pub start_period_s: u64,
}

impl Healthcheck {
    /// How long a fresh container may take to become healthy before the deployer gives up:
    /// Docker's own budget (start period + retries × (interval + timeout)) plus slack.
    pub fn patience_s(&self) -> u64 {
        self.start_period_s + self.retries.max(1) * (self.interval_s + self.timeout_s) + 10
    }
}

/// A file placed into the container before it starts (the whole tree is uploaded as one tar).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileSpec {
    /// Absolute path inside the container.
    pub path: String,
    pub content: String,
    pub mode: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerSpec {
    pub name: String,
    pub service: String,
    pub kind: Kind,
    pub image: String,
    /// Replaces the image's Cmd (non-Kolla images); Kolla images get their command via
    /// config.json instead.
    pub cmd: Option<Vec<String>>,
    pub environment: BTreeMap<String, String>,
    pub volumes: Vec<String>,
    pub network_host: bool,
    pub cap_add: Vec<String>,
    pub privileged: bool,
    pub ulimits: BTreeMap<String, i64>,
    pub healthcheck: Option<Healthcheck>,
    pub restart: String,
    pub stop_timeout_s: u64,
    pub ports: Vec<u16>,
    pub files: Vec<FileSpec>,
}

impl ContainerSpec {
    /// Stable digest of the whole spec (hex, 16 bytes is plenty for change detection).
    pub fn hash(&self) -> String {
        short_digest(&serde_json::to_string(self).unwrap_or_default())
    }

    /// Named volumes (not bind mounts) this container uses: created with Kiln's labels so
    /// `destroy` can find them.
    pub fn named_volumes(&self) -> Vec<String> {
        self.volumes
            .iter()
            .filter_map(|v| v.split(':').next())
            .filter(|name| !name.is_empty() && !name.starts_with('/'))
            .map(str::to_string)
            .collect()
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_SERVICE.to_string(), self.service.clone()),
            (LABEL_HASH.to_string(), self.hash()),
            (LABEL_KIND.to_string(), self.kind.label().to_string()),
        ])
    }
}

#[cfg(test)]
pub(crate) fn sample(name: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.to_string(),
        service: "svc".to_string(),
        kind: Kind::Service,
        image: "reg/ns/img:tag".to_string(),
        cmd: None,
        environment: BTreeMap::new(),
        volumes: vec![
            "data:/var/lib/data".into(),
            "/etc/localtime:/etc/localtime:ro".into(),
        ],
        network_host: true,
        cap_add: vec![],
        privileged: false,
        ulimits: BTreeMap::new(),
        healthcheck: None,
        restart: "unless-stopped".into(),
        stop_timeout_s: 20,
        ports: vec![],
        files: vec![FileSpec {
            path: "/etc/a.conf".into(),
            content: "a = 1\n".into(),
            mode: 0o600,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_changes_with_any_field_and_only_then() {
        let base = sample("c");
        assert_eq!(base.hash(), sample("c").hash());
        let mut changed = sample("c");
        changed.files[0].content = "a = 2\n".into();
        assert_ne!(base.hash(), changed.hash());
        let mut changed = sample("c");
        changed.image = "reg/ns/img:other".into();
        assert_ne!(base.hash(), changed.hash());
        let mut changed = sample("c");
        changed.environment.insert("X".into(), "1".into());
        assert_ne!(base.hash(), changed.hash());
        assert_eq!(base.hash().len(), 32);
    }

    #[test]
    fn named_volumes_skip_bind_mounts() {
        assert_eq!(sample("c").named_volumes(), vec!["data"]);
    }
}
