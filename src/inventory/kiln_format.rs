//! Kiln's own inventory format (`version`, `defaults`, `nodes`), documented by `examples/rack.yaml`.

use super::fields;
use super::reader::Reader;
use super::tree::{Node, Value};
use super::unique::Unique;
use crate::model::{
    BmcKind, BmcSpec, BootMode, ImageSpec, NetworkSpec, Nic, NodeSpec, Properties, RootDeviceHints,
    Secret, TlsVerify,
};

const TOP: &[&str] = &["version", "defaults", "nodes"];
const NODE: &[&str] = &[
    "name",
    "uuid",
    "bmc",
    "nics",
    "boot_mode",
    "properties",
    "network",
    "image",
    "ssh_keys",
    "roles",
    "groups",
];
const DEFAULTS: &[&str] = &[
    "bmc",
    "boot_mode",
    "properties",
    "network",
    "image",
    "ssh_keys",
    "roles",
    "groups",
];
const BMC: &[&str] = &[
    "kind",
    "address",
    "port",
    "username",
    "password",
    "system_id",
    "cipher_suite",
    "verify_tls",
    "ca_file",
];
const NIC: &[&str] = &["mac", "pxe"];
const PROPERTIES: &[&str] = &["cpu_arch", "cpus", "memory_mb", "disk_gb", "root_device"];
const ROOT_DEVICE: &[&str] = &["size_gb", "model", "serial", "wwn", "name"];
const NETWORK: &[&str] = &["address", "prefix", "gateway", "dns"];
const IMAGE: &[&str] = &["source", "checksum"];

pub fn read(reader: &mut Reader, root: &Node) -> Vec<NodeSpec> {
    let Some(top) = reader.map(root, "", TOP) else {
        return Vec::new();
    };
    if let Some(version) = top.get("version")
        && let Some(v) = reader.int(version, "version", 1, u64::MAX)
        && v != 1
    {
        reader.error(
            version.pos,
            "version",
            format!("inventory version {v} is not supported (this Kiln reads version 1)"),
        );
    }
    let defaults = top
        .get("defaults")
        .and_then(|d| reader.map(d, "defaults", DEFAULTS).map(|m| m.node.clone()));
    let Some(nodes) = reader.required(&top, "nodes") else {
        return Vec::new();
    };
    let Some(items) = reader.list(nodes, "nodes") else {
        return Vec::new();
    };
    if items.is_empty() {
        reader.error(nodes.pos, "nodes", "the inventory lists no nodes");
    }
    let mut unique = Unique::default();
    items
        .iter()
        .enumerate()
        .filter_map(|(index, item)| {
            let merged = match &defaults {
                Some(defaults) => overlay(defaults, item),
                None => item.clone(),
            };
            read_node(reader, &mut unique, &merged, &format!("nodes[{index}]"))
        })
        .collect()
}

/// `node` on top of `defaults`: mappings merge key by key, anything else in `node` wins.
fn overlay(defaults: &Node, node: &Node) -> Node {
    match (&defaults.value, &node.value) {
        (Value::Map(base), Value::Map(over)) => {
            let mut entries = over.clone();
            for (key, value) in base {
                match entries.iter_mut().find(|(k, _)| k.name == key.name) {
                    Some((_, existing)) => *existing = overlay(value, existing),
                    None => entries.push((key.clone(), value.clone())),
                }
            }
            Node {
                pos: node.pos,
                value: Value::Map(entries),
            }
        }
        _ => node.clone(),
    }
}

fn read_node(
    reader: &mut Reader,
    unique: &mut Unique,
    node: &Node,
    path: &str,
) -> Option<NodeSpec> {
    let map = reader.map(node, path, NODE)?;
    let name = reader.required(&map, "name").and_then(|n| {
        let name = reader.text(n, &map.child("name"))?;
        if !super::reader::is_host(&name) || name.contains('.') {
            reader.error(
                n.pos,
                &map.child("name"),
                format!("'{name}' is not a valid node name (letters, digits and '-')"),
            );
            return None;
        }
        unique.claim(reader, "node name", name.clone(), n.pos, &map.child("name"));
        Some(name)
    });
    let uuid = map
        .get("uuid")
        .and_then(|n| read_uuid(reader, n, &map.child("uuid")));
    let bmc = reader
        .required(&map, "bmc")
        .and_then(|n| read_bmc(reader, unique, n, &map.child("bmc")));
    let nics = reader
        .required(&map, "nics")
        .and_then(|n| read_nics(reader, unique, n, &map.child("nics")));
    let boot_mode = match map.get("boot_mode") {
        Some(n) => read_boot_mode(reader, n, &map.child("boot_mode")),
        None => Some(BootMode::default()),
    };
    let properties = match map.get("properties") {
        Some(n) => read_properties(reader, n, &map.child("properties")),
        None => Some(Properties::default()),
    };
    let network = optional(map.get("network"), |n| {
        read_network(reader, unique, n, &map.child("network"))
    });
    let image = optional(map.get("image"), |n| {
        read_image(reader, n, &map.child("image"))
    });
    let ssh_keys = optional(map.get("ssh_keys"), |n| {
        fields::ssh_keys(reader, n, &map.child("ssh_keys"))
    });
    let roles = optional(map.get("roles"), |n| {
        read_roles(reader, n, &map.child("roles"))
    });
    let groups = optional(map.get("groups"), |n| {
        reader.strings(n, &map.child("groups"))
    });
    Some(NodeSpec {
        name: name?,
        uuid,
        bmc: bmc?,
        nics: nics?,
        boot_mode: boot_mode?,
        properties: properties?,
        network: network?,
        image: image?,
        ssh_keys: ssh_keys?.unwrap_or_default(),
        roles: roles?.unwrap_or_default(),
        groups: groups?.unwrap_or_default(),
    })
}

/// `Some(None)` when absent, `Some(Some(v))` when valid, `None` when present but invalid.
pub fn optional<T>(
    node: Option<&Node>,
    read: impl FnOnce(&Node) -> Option<T>,
) -> Option<Option<T>> {
    match node {
        None => Some(None),
        Some(node) => read(node).map(Some),
    }
}

pub fn read_uuid(reader: &mut Reader, node: &Node, path: &str) -> Option<uuid::Uuid> {
    let text = reader.text(node, path)?;
    match uuid::Uuid::parse_str(text.trim()) {
        Ok(uuid) => Some(uuid),
        Err(_) => {
            reader.error(node.pos, path, format!("'{text}' is not a UUID"));
            None
        }
    }
}

fn read_bmc(reader: &mut Reader, unique: &mut Unique, node: &Node, path: &str) -> Option<BmcSpec> {
    let map = reader.map(node, path, BMC)?;
    let kind = reader.required(&map, "kind").and_then(|n| {
        match reader.text(n, &map.child("kind"))?.as_str() {
            "ipmi" => Some(BmcKind::Ipmi),
            "redfish" => Some(BmcKind::Redfish),
            other => {
                reader.error(
                    n.pos,
                    &map.child("kind"),
                    format!("unknown BMC kind '{other}' (use ipmi or redfish)"),
                );
                None
            }
        }
    });
    let port = optional(map.get("port"), |n| {
        reader
            .int(n, &map.child("port"), 1, 65535)
            .map(|p| p as u16)
    });
    let username = reader
        .required(&map, "username")
        .and_then(|n| reader.text(n, &map.child("username")));
    let password = reader
        .required(&map, "password")
        .and_then(|n| reader.text(n, &map.child("password")));
    let system_id = optional(map.get("system_id"), |n| {
        reader.text(n, &map.child("system_id"))
    });
    let cipher_suite = optional(map.get("cipher_suite"), |n| {
        reader
            .int(n, &map.child("cipher_suite"), 0, 17)
            .map(|c| c as u8)
    });
    let verify_tls = optional(map.get("verify_tls"), |n| {
        reader.bool(n, &map.child("verify_tls"))
    });
    let ca_file = optional(map.get("ca_file"), |n| {
        reader.text(n, &map.child("ca_file"))
    });
    let (kind, port) = (kind?, port?);
    let address_node = reader.required(&map, "address")?;
    let (address, port) = match kind {
        BmcKind::Ipmi => {
            let host = reader.host(address_node, &map.child("address"))?;
            (host, port.unwrap_or(BmcKind::Ipmi.default_port()))
        }
        BmcKind::Redfish => {
            fields::redfish_endpoint(reader, address_node, &map.child("address"), port)?
        }
    };
    if kind == BmcKind::Ipmi
        && let Some(n) = map.get("system_id")
    {
        reader.error(
            n.pos,
            &map.child("system_id"),
            "system_id applies to Redfish BMCs only",
        );
    }
    let tls_verify = match (verify_tls?, ca_file?) {
        (Some(false), Some(_)) => {
            reader.error(
                map.node.pos,
                &map.child("ca_file"),
                "ca_file contradicts verify_tls: false",
            );
            return None;
        }
        (Some(false), None) => TlsVerify::Insecure,
        (_, Some(ca)) => TlsVerify::CaFile(ca),
        _ => TlsVerify::System,
    };
    let spec = BmcSpec {
        kind,
        address,
        port,
        username: username?,
        password: Secret::new(password?),
        system_id: system_id?,
        cipher_suite: cipher_suite?,
        tls_verify,
    };
    unique.claim(
        reader,
        "BMC endpoint",
        spec.endpoint_key(),
        address_node.pos,
        &map.child("address"),
    );
    Some(spec)
}

fn read_nics(
    reader: &mut Reader,
    unique: &mut Unique,
    node: &Node,
    path: &str,
) -> Option<Vec<Nic>> {
    let items = reader.list(node, path)?;
    if items.is_empty() {
        reader.error(node.pos, path, "a node needs at least one NIC");
        return None;
    }
    let mut nics = Vec::new();
    let mut ok = true;
    for (index, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{index}]");
        let Some(map) = reader.map(item, &item_path, NIC) else {
            ok = false;
            continue;
        };
        let mac = reader.required(&map, "mac").and_then(|n| {
            let mac = reader.mac(n, &map.child("mac"))?;
            unique.claim(reader, "MAC", mac.to_string(), n.pos, &map.child("mac"));
            Some(mac)
        });
        let pxe = optional(map.get("pxe"), |n| reader.bool(n, &map.child("pxe")));
        match (mac, pxe) {
            (Some(mac), Some(pxe)) => nics.push(Nic {
                mac,
                pxe: pxe.unwrap_or(false),
            }),
            _ => ok = false,
        }
    }
    if !ok {
        return None;
    }
    match nics.iter().filter(|nic| nic.pxe).count() {
        0 => nics[0].pxe = true,
        1 => {}
        _ => {
            reader.error(node.pos, path, "only one NIC may have pxe: true");
            return None;
        }
    }
    Some(nics)
}

fn read_boot_mode(reader: &mut Reader, node: &Node, path: &str) -> Option<BootMode> {
    match reader.text(node, path)?.as_str() {
        "bios" => Some(BootMode::Bios),
        "uefi" => Some(BootMode::Uefi),
        other => {
            reader.error(
                node.pos,
                path,
                format!("unknown boot mode '{other}' (use bios or uefi)"),
            );
            None
        }
    }
}

fn read_properties(reader: &mut Reader, node: &Node, path: &str) -> Option<Properties> {
    let map = reader.map(node, path, PROPERTIES)?;
    let cpu_arch = optional(map.get("cpu_arch"), |n| {
        reader.text(n, &map.child("cpu_arch"))
    });
    let cpus = optional(map.get("cpus"), |n| {
        reader
            .int(n, &map.child("cpus"), 1, 65536)
            .map(|c| c as u32)
    });
    let memory_mb = optional(map.get("memory_mb"), |n| {
        reader.int(n, &map.child("memory_mb"), 1, u64::MAX)
    });
    let disk_gb = optional(map.get("disk_gb"), |n| {
        reader.int(n, &map.child("disk_gb"), 1, u64::MAX)
    });
    let root_device = optional(map.get("root_device"), |n| {
        read_root_device(reader, n, &map.child("root_device"), "size_gb", ROOT_DEVICE)
    });
    Some(Properties {
        cpu_arch: cpu_arch?,
        cpus: cpus?,
        memory_mb: memory_mb?,
        disk_gb: disk_gb?,
        root_device: root_device?.unwrap_or_default(),
    })
}

/// Root device hints; `size_key` is `size_gb` (Kiln) or `size` (Ironic), both in GiB.
pub fn read_root_device(
    reader: &mut Reader,
    node: &Node,
    path: &str,
    size_key: &str,
    allowed: &[&str],
) -> Option<RootDeviceHints> {
    let map = reader.map(node, path, allowed)?;
    let mut text = |key: &str| optional(map.get(key), |n| reader.text(n, &map.child(key)));
    let (model, serial, wwn, name) = (text("model"), text("serial"), text("wwn"), text("name"));
    let size_gb = optional(map.get(size_key), |n| {
        reader.int(n, &map.child(size_key), 1, u64::MAX)
    });
    Some(RootDeviceHints {
        size_gb: size_gb?,
        model: model?,
        serial: serial?,
        wwn: wwn?,
        name: name?,
    })
}

fn read_network(
    reader: &mut Reader,
    unique: &mut Unique,
    node: &Node,
    path: &str,
) -> Option<NetworkSpec> {
    let map = reader.map(node, path, NETWORK)?;
    let address = reader.required(&map, "address").and_then(|n| {
        let ip = reader.ipv4(n, &map.child("address"))?;
        unique.claim(
            reader,
            "IP address",
            ip.to_string(),
            n.pos,
            &map.child("address"),
        );
        Some(ip)
    });
    let prefix = reader
        .required(&map, "prefix")
        .and_then(|n| reader.int(n, &map.child("prefix"), 1, 32).map(|p| p as u8));
    let gateway = optional(map.get("gateway"), |n| {
        reader.ipv4(n, &map.child("gateway"))
    });
    let dns = optional(map.get("dns"), |n| {
        let texts = reader.strings(n, &map.child("dns"))?;
        let parsed: Vec<_> = texts.iter().map(|t| t.trim().parse().ok()).collect();
        if parsed.iter().any(Option::is_none) {
            reader.error(
                n.pos,
                &map.child("dns"),
                "every DNS server must be an IPv4 address",
            );
            return None;
        }
        Some(parsed.into_iter().flatten().collect())
    });
    let spec = NetworkSpec {
        address: address?,
        prefix: prefix?,
        gateway: gateway?,
        dns: dns?.unwrap_or_default(),
    };
    check_gateway(reader, &spec, map.get("gateway"), &map.child("gateway"))?;
    Some(spec)
}

/// The gateway must sit inside the node's own subnet.
pub fn check_gateway(
    reader: &mut Reader,
    spec: &NetworkSpec,
    node: Option<&Node>,
    path: &str,
) -> Option<()> {
    let (Some(gateway), Some(node)) = (spec.gateway, node) else {
        return Some(());
    };
    let mask = u32::MAX
        .checked_shl(32 - u32::from(spec.prefix))
        .unwrap_or(0);
    if u32::from(gateway) & mask != u32::from(spec.address) & mask {
        reader.error(
            node.pos,
            path,
            format!(
                "gateway {gateway} is outside {}/{}",
                spec.address, spec.prefix
            ),
        );
        return None;
    }
    Some(())
}

fn read_image(reader: &mut Reader, node: &Node, path: &str) -> Option<ImageSpec> {
    let map = reader.map(node, path, IMAGE)?;
    let source = reader
        .required(&map, "source")
        .and_then(|n| fields::image_source(reader, n, &map.child("source")));
    let checksum = optional(map.get("checksum"), |n| {
        fields::checksum(reader, n, &map.child("checksum"))
    });
    Some(ImageSpec {
        source: source?,
        checksum: checksum?,
    })
}

fn read_roles(reader: &mut Reader, node: &Node, path: &str) -> Option<Vec<crate::model::Role>> {
    let names = reader.strings(node, path)?;
    let mut roles = Vec::new();
    for (index, name) in names.iter().enumerate() {
        match name.parse() {
            Ok(role) => roles.push(role),
            Err(message) => reader.error(node.pos, &format!("{path}[{index}]"), message),
        }
    }
    (roles.len() == names.len()).then_some(roles)
}
