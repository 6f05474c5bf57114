//! A node as Kiln knows it: the validated description from the inventory plus its runtime status.

use super::{ProvisionState, Secret};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use uuid::Uuid;

/// A validated, normalised (lower-case, colon-separated) Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddress(pub [u8; 6]);

impl FromStr for MacAddress {
    type Err = String;
    /// Accepts `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff`, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        let malformed = || {
            format!("'{s}' is not a MAC address (expected six hex pairs like 52:54:00:12:34:56)")
        };
        if parts.len() != 6 {
            return Err(malformed());
        }
        let mut bytes = [0u8; 6];
        for (byte, part) in bytes.iter_mut().zip(&parts) {
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(malformed());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| malformed())?;
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for MacAddress {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddress {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BmcKind {
    Ipmi,
    Redfish,
}

impl BmcKind {
    pub fn default_port(self) -> u16 {
        match self {
            Self::Ipmi => 623,
            Self::Redfish => 443,
        }
    }
}

/// How a Redfish client checks the BMC's TLS certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "mode", content = "ca_file")]
pub enum TlsVerify {
    /// Verify against the system trust store (the default, as in Ironic).
    #[default]
    System,
    /// Verify against this CA bundle.
    CaFile(String),
    /// Do not verify. Only when the operator asks for it explicitly.
    Insecure,
}

/// How to reach and authenticate to a node's baseboard management controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BmcSpec {
    pub kind: BmcKind,
    /// IP address or host name (IPMI), or base URL `scheme://host[:port]` (Redfish).
    pub address: String,
    pub port: u16,
    pub username: String,
    /// Never serialised: the store keeps it in its own column, the API never shows it.
    #[serde(skip)]
    pub password: Secret,
    /// Redfish system path or id; optional when the BMC manages exactly one system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_id: Option<String>,
    /// IPMI RMCP+ cipher suite (3 = HMAC-SHA1 / AES-CBC-128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher_suite: Option<u8>,
    #[serde(default)]
    pub tls_verify: TlsVerify,
}

impl BmcSpec {
    /// What makes two BMC entries the same endpoint (several Redfish systems may share one).
    pub fn endpoint_key(&self) -> String {
        format!(
            "{}:{}:{}",
            self.address.to_ascii_lowercase(),
            self.port,
            self.system_id.as_deref().unwrap_or("")
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub mac: MacAddress,
    /// The NIC the node network-boots from. Exactly one per node.
    pub pxe: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    Bios,
    #[default]
    Uefi,
}

/// Ironic-style root device hints; the agent picks the disk matching all given hints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RootDeviceHints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_gb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl RootDeviceHints {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Properties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gb: Option<u64>,
    #[serde(default, skip_serializing_if = "RootDeviceHints::is_empty")]
    pub root_device: RootDeviceHints,
}

/// Static IPv4 settings on the provisioning network, written into the config drive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub address: Ipv4Addr,
    pub prefix: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ipv4Addr>,
}

/// Image checksum, as Ironic accepts it: an algorithm and hex digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageChecksum {
    pub algorithm: String,
    pub digest: String,
}

impl fmt::Display for ImageChecksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.digest)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<ImageChecksum>,
}

/// Inventory groups the container deployer places services by (Kolla-ansible's groups).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Control,
    Network,
    Compute,
    Storage,
    Monitoring,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::Network => "network",
            Self::Compute => "compute",
            Self::Storage => "storage",
            Self::Monitoring => "monitoring",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "control" => Ok(Self::Control),
            "network" => Ok(Self::Network),
            "compute" => Ok(Self::Compute),
            "storage" => Ok(Self::Storage),
            "monitoring" => Ok(Self::Monitoring),
            other => Err(format!(
                "unknown role '{other}' (roles: control, network, compute, storage, monitoring; put other names under groups)"
            )),
        }
    }
}

/// Everything the inventory says about a node. Enrolling the same spec twice changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub uuid: Option<Uuid>,
    pub bmc: BmcSpec,
    pub nics: Vec<Nic>,
    pub boot_mode: BootMode,
    #[serde(default)]
    pub properties: Properties,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl NodeSpec {
    pub fn pxe_mac(&self) -> Option<MacAddress> {
        self.nics.iter().find(|nic| nic.pxe).map(|nic| nic.mac)
    }

    /// Names of the top-level fields that differ, for "what changed" reports. The password is
    /// compared but only ever reported by name.
    pub fn changed_fields(&self, other: &NodeSpec) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |name: &'static str, differs: bool| {
            if differs {
                changed.push(name);
            }
        };
        check("uuid", self.uuid != other.uuid && other.uuid.is_some());
        check("bmc.kind", self.bmc.kind != other.bmc.kind);
        check("bmc.address", self.bmc.address != other.bmc.address);
        check("bmc.port", self.bmc.port != other.bmc.port);
        check("bmc.username", self.bmc.username != other.bmc.username);
        check("bmc.password", self.bmc.password != other.bmc.password);
        check("bmc.system_id", self.bmc.system_id != other.bmc.system_id);
        check(
            "bmc.cipher_suite",
            self.bmc.cipher_suite != other.bmc.cipher_suite,
        );
        check(
            "bmc.tls_verify",
            self.bmc.tls_verify != other.bmc.tls_verify,
        );
        check("nics", self.nics != other.nics);
        check("boot_mode", self.boot_mode != other.boot_mode);
        check("properties", self.properties != other.properties);
        check("network", self.network != other.network);
        check("image", self.image != other.image);
        check("ssh_keys", self.ssh_keys != other.ssh_keys);
        check("roles", self.roles != other.roles);
        check("groups", self.groups != other.groups);
        changed
    }
}

/// Status of the containers the deployer runs on a node; separate from provisioning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ServicesStatus {
    #[default]
    Pending,
    Deploying,
    Healthy,
    Failed,
}

impl ServicesStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Deploying => "deploying",
            Self::Healthy => "healthy",
            Self::Failed => "failed",
        }
    }
}

impl FromStr for ServicesStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "deploying" => Ok(Self::Deploying),
            "healthy" => Ok(Self::Healthy),
            "failed" => Ok(Self::Failed),
            other => Err(format!("unknown services status '{other}'")),
        }
    }
}

/// A node as stored: its spec plus what Kiln knows about it now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    pub uuid: Uuid,
    pub spec: NodeSpec,
    pub provision_state: ProvisionState,
    pub target_provision_state: Option<ProvisionState>,
    pub services_status: ServicesStatus,
    pub last_error: Option<String>,
    /// Unix time in milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// Last power state the BMC reported (`on`/`off`), kept when the BMC becomes unreadable.
    pub power_state: Option<String>,
    /// Why the BMC could not be read at the last check, in plain words; `None` when it could.
    pub bmc_error: Option<String>,
    pub power_checked_at: Option<i64>,
}

impl Node {
    /// A node as first enrolled: no target, no error, no power reading, times zero (for tests and
    /// previews; the store builds real rows).
    pub fn fresh(uuid: Uuid, spec: NodeSpec, provision_state: ProvisionState) -> Node {
        Node {
            uuid,
            spec,
            provision_state,
            target_provision_state: None,
            services_status: ServicesStatus::default(),
            last_error: None,
            created_at: 0,
            updated_at: 0,
            power_state: None,
            bmc_error: None,
            power_checked_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parsing_normalises_and_rejects() {
        let mac: MacAddress = "52-54-00-AB-cd-0F".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "52:54:00:ab:cd:zz",
            "525:4:00:ab:cd:0f",
            "+1:54:00:ab:cd:0f",
        ] {
            assert!(bad.parse::<MacAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn serialised_spec_has_no_password() {
        let spec = BmcSpec {
            kind: BmcKind::Ipmi,
            address: "10.0.0.1".into(),
            port: 623,
            username: "admin".into(),
            password: Secret::new("s3cret-pw"),
            system_id: None,
            cipher_suite: Some(3),
            tls_verify: TlsVerify::System,
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert!(!json.contains("s3cret-pw"));
        assert!(!json.contains("password"));
    }
}
