//! The agent callback protocol: the JSON messages between `kiln-agent` and Kiln's agent API.
//!
//! The agent pulls: it looks itself up, then heartbeats every few seconds, and each heartbeat's
//! reply may carry a command (deploy an image, wipe the disk). Progress and the command's result
//! are posted back. Unlike Ironic, where the conductor calls the agent's own HTTP server on
//! port 9999, nothing listens in the ramdisk: the agent only needs to reach Kiln, and commands
//! survive a daemon restart because they are stored and re-offered until a result arrives.
//!
//! Every request carries the node's one-time token as `Authorization: Bearer …` and names its
//! node in the path: `/agent/v1/nodes/{uuid}/{lookup,heartbeat,inventory,progress,result}`.

use crate::model::{ImageChecksum, MacAddress, RootDeviceHints};
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// Path prefix of the agent API on the boot HTTP server.
pub const PREFIX: &str = "/agent/v1/nodes";

/// `POST …/lookup`: the agent introduces itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    pub mac: Option<MacAddress>,
    pub agent_version: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupReply {
    pub node: Uuid,
    pub name: String,
    pub heartbeat_secs: u64,
}

/// `POST …/heartbeat`: the agent is alive; `running` names the command it is executing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub running: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The command the agent should run, re-offered until its result arrives; the agent runs
    /// each id at most once.
    pub command: Option<Command>,
    pub heartbeat_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: u64,
    pub action: Action,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// A command is built once per deploy; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Action {
    /// Write the image to the root disk, then the config drive, then sync.
    Deploy(DeployCommand),
    /// Erase partition tables and filesystem signatures on every disk (undeploy / reset).
    Wipe,
}

impl fmt::Debug for Action {
    // The config drive holds the node's TLS key: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Deploy(deploy) => write!(
                f,
                "Deploy({} to {:?}, {} config-drive files)",
                deploy.image_url,
                deploy.root_device,
                deploy.config_drive.len()
            ),
            Self::Wipe => f.write_str("Wipe"),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployCommand {
    pub image_url: String,
    pub checksum: Option<ImageChecksum>,
    /// Uncompressed size, when known: the agent picks the smallest disk at least this big.
    pub image_size: Option<u64>,
    #[serde(default)]
    pub root_device: RootDeviceHints,
    /// Files of the config drive (path inside the drive → text), filled in when delivered.
    #[serde(default)]
    pub config_drive: Vec<ConfigDriveEntry>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDriveEntry {
    pub path: String,
    pub contents: String,
}

/// `POST …/progress`: bytes of the image written so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgressReport {
    pub command_id: u64,
    /// Image bytes done (written or skipped as zeros).
    pub done: u64,
    pub total: Option<u64>,
    /// Bytes per second since the start.
    pub rate: f64,
}

/// `POST …/result`: how a command ended. `detail` is the plain reason on failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    pub command_id: u64,
    pub ok: bool,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_debug_hides_the_config_drive() {
        let action = Action::Deploy(DeployCommand {
            image_url: "http://x/i.raw.zst".into(),
            checksum: None,
            image_size: None,
            root_device: RootDeviceHints::default(),
            config_drive: vec![ConfigDriveEntry {
                path: "kiln/docker/server-key.pem".into(),
                contents: "-----BEGIN PRIVATE KEY-----".into(),
            }],
        });
        let printed = format!("{action:?}");
        assert!(!printed.contains("PRIVATE"), "{printed}");
        assert!(printed.contains("1 config-drive files"));
    }

    #[test]
    fn commands_round_trip_as_tagged_json() {
        let command = Command {
            id: 7,
            action: Action::Wipe,
        };
        let json = serde_json::to_string(&command).expect("encodes");
        assert_eq!(json, r#"{"id":7,"action":{"kind":"wipe"}}"#);
        let back: Command = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, command);
    }
}
