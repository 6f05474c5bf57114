//! Bifrost's inventory format (a mapping of node name to Ironic node fields), YAML or JSON.
//!
//! Mapped onto Kiln's model: `driver_info.ipmi_*`/`redfish_*` → BMC, `properties.ram` (MiB) and
//! `disk_size` (GiB) → memory/disk, `capabilities: boot_mode:bios|uefi` → boot mode,
//! `instance_info` → image, `ipv4_*` → static network, `host_groups` → roles and groups.

use super::fields;
use super::kiln_format::{check_gateway, optional, read_root_device, read_uuid};
use super::reader::Reader;
use super::tree::{Node, Value};
use super::unique::Unique;
use crate::model::{
    BmcKind, BmcSpec, BootMode, ImageSpec, NetworkSpec, Nic, NodeSpec, Properties, Secret,
    TlsVerify,
};
use std::net::Ipv4Addr;

const NODE: &[&str] = &[
    "name",
    "uuid",
    "driver",
    "driver_info",
    "nics",
    "properties",
    "instance_info",
    "ipv4_address",
    "ipv4_subnet_mask",
    "ipv4_gateway",
    "ipv4_nameserver",
    "ipv4_interface_mac",
    "host_groups",
    "ssh_public_key",
];
const DRIVER_INFO: &[&str] = &[
    "ipmi_address",
    "ipmi_username",
    "ipmi_password",
    "ipmi_port",
    "ipmi_cipher_suite",
    "redfish_address",
    "redfish_system_id",
    "redfish_username",
    "redfish_password",
    "redfish_verify_ca",
];
const NIC: &[&str] = &["mac"];
const PROPERTIES: &[&str] = &[
    "cpu_arch",
    "ram",
    "disk_size",
    "cpus",
    "root_device",
    "capabilities",
];
const ROOT_DEVICE: &[&str] = &["size", "model", "serial", "wwn", "name"];
const INSTANCE_INFO: &[&str] = &["image_source", "image_checksum"];

pub fn read(reader: &mut Reader, root: &Node) -> Vec<NodeSpec> {
    let Value::Map(entries) = &root.value else {
        reader.error(root.pos, "", "expected a mapping of node names to nodes");
        return Vec::new();
    };
    let mut unique = Unique::default();
    entries
        .iter()
        .filter_map(|(key, node)| {
            unique.claim(reader, "node name", key.name.clone(), key.pos, &key.name);
            read_node(reader, &mut unique, &key.name, node)
        })
        .collect()
}

fn read_node(reader: &mut Reader, unique: &mut Unique, key: &str, node: &Node) -> Option<NodeSpec> {
    let map = reader.map(node, key, NODE)?;
    let name = match map.get("name") {
        Some(n) => {
            let name = reader.text(n, &map.child("name"))?;
            if name != key {
                reader.error(
                    n.pos,
                    &map.child("name"),
                    format!("name '{name}' differs from its inventory key '{key}'"),
                );
                return None;
            }
            name
        }
        None => key.to_string(),
    };
    if !super::reader::is_host(&name) || name.contains('.') {
        reader.error(
            map.node.pos,
            key,
            format!("'{name}' is not a valid node name (letters, digits and '-')"),
        );
    }
    let uuid = optional(map.get("uuid"), |n| {
        read_uuid(reader, n, &map.child("uuid"))
    });
    let driver = reader.required(&map, "driver").and_then(|n| {
        match reader.text(n, &map.child("driver"))?.as_str() {
            "ipmi" => Some(BmcKind::Ipmi),
            "redfish" => Some(BmcKind::Redfish),
            other => {
                reader.error(
                    n.pos,
                    &map.child("driver"),
                    format!("unsupported driver '{other}' (use ipmi or redfish)"),
                );
                None
            }
        }
    });
    let bmc = match (driver, reader.required(&map, "driver_info")) {
        (Some(kind), Some(info)) => {
            read_driver_info(reader, unique, kind, info, &map.child("driver_info"))
        }
        _ => None,
    };
    let nics = reader
        .required(&map, "nics")
        .and_then(|n| read_nics(reader, unique, n, &map.child("nics")));
    let pxe_mac = optional(map.get("ipv4_interface_mac"), |n| {
        reader.mac(n, &map.child("ipv4_interface_mac"))
    });
    let (properties, boot_mode) = match map.get("properties") {
        Some(n) => read_properties(reader, n, &map.child("properties"))?,
        None => (Properties::default(), BootMode::default()),
    };
    let image = optional(map.get("instance_info"), |n| {
        read_instance_info(reader, n, &map.child("instance_info"))
    });
    let network = read_network(reader, unique, &map);
    let ssh_keys = optional(map.get("ssh_public_key"), |n| {
        fields::ssh_keys(reader, n, &map.child("ssh_public_key"))
    });
    let host_groups = optional(map.get("host_groups"), |n| {
        reader.strings(n, &map.child("host_groups"))
    });
    let (roles, groups) = fields::roles_and_groups(host_groups?.unwrap_or_default());

    let mut nics = nics?;
    if let Some(mac) = pxe_mac? {
        match nics.iter().position(|nic| nic.mac == mac) {
            Some(index) => nics
                .iter_mut()
                .enumerate()
                .for_each(|(i, nic)| nic.pxe = i == index),
            None => {
                let n = map.get("ipv4_interface_mac")?;
                reader.error(
                    n.pos,
                    &map.child("ipv4_interface_mac"),
                    format!("{mac} is not one of the node's nics"),
                );
                return None;
            }
        }
    }
    Some(NodeSpec {
        name,
        uuid: uuid?,
        bmc: bmc?,
        nics,
        boot_mode,
        properties,
        network: network?,
        image: image?,
        ssh_keys: ssh_keys?.unwrap_or_default(),
        roles,
        groups,
    })
}

fn read_driver_info(
    reader: &mut Reader,
    unique: &mut Unique,
    kind: BmcKind,
    node: &Node,
    path: &str,
) -> Option<BmcSpec> {
    let map = reader.map(node, path, DRIVER_INFO)?;
    let prefix = match kind {
        BmcKind::Ipmi => "ipmi",
        BmcKind::Redfish => "redfish",
    };
    // Fields of the other driver are a mistake worth naming (they would be silently unused).
    let other = if kind == BmcKind::Ipmi {
        "redfish_"
    } else {
        "ipmi_"
    };
    if let Value::Map(entries) = &node.value {
        for (key, _) in entries.iter().filter(|(k, _)| k.name.starts_with(other)) {
            reader.error(
                key.pos,
                &map.child(&key.name),
                format!("'{}' does not apply to driver {prefix}", key.name),
            );
        }
    }
    let field = |suffix: &str| format!("{prefix}_{suffix}");
    let username = reader
        .required(&map, &field("username"))
        .and_then(|n| reader.text(n, &map.child(&field("username"))));
    let password = reader
        .required(&map, &field("password"))
        .and_then(|n| reader.text(n, &map.child(&field("password"))));
    let address_node = reader.required(&map, &field("address"))?;
    let (address, port, system_id, cipher_suite, tls_verify) = match kind {
        BmcKind::Ipmi => {
            let port = optional(map.get("ipmi_port"), |n| {
                reader
                    .int(n, &map.child("ipmi_port"), 1, 65535)
                    .map(|p| p as u16)
            })?;
            let suite = optional(map.get("ipmi_cipher_suite"), |n| {
                reader
                    .int(n, &map.child("ipmi_cipher_suite"), 0, 17)
                    .map(|c| c as u8)
            })?;
            let host = reader.host(address_node, &map.child("ipmi_address"))?;
            (host, port.unwrap_or(623), None, suite, TlsVerify::System)
        }
        BmcKind::Redfish => {
            let system_id = optional(map.get("redfish_system_id"), |n| {
                reader.text(n, &map.child("redfish_system_id"))
            })?;
            let verify = optional(map.get("redfish_verify_ca"), |n| {
                read_verify_ca(reader, n, &map.child("redfish_verify_ca"))
            })?;
            let (url, port) = fields::redfish_endpoint(
                reader,
                address_node,
                &map.child("redfish_address"),
                None,
            )?;
            (url, port, system_id, None, verify.unwrap_or_default())
        }
    };
    let spec = BmcSpec {
        kind,
        address,
        port,
        username: username?,
        password: Secret::new(password?),
        system_id,
        cipher_suite,
        tls_verify,
    };
    unique.claim(
        reader,
        "BMC endpoint",
        spec.endpoint_key(),
        address_node.pos,
        &map.child(&field("address")),
    );
    Some(spec)
}

/// Ironic's `redfish_verify_ca`: true, false, or a CA bundle path.
fn read_verify_ca(reader: &mut Reader, node: &Node, path: &str) -> Option<TlsVerify> {
    match &node.value {
        Value::Scalar {
            text,
            quoted: false,
        } if text == "true" || text == "True" => Some(TlsVerify::System),
        Value::Scalar {
            text,
            quoted: false,
        } if text == "false" || text == "False" => Some(TlsVerify::Insecure),
        _ => reader.text(node, path).map(TlsVerify::CaFile),
    }
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
    for (index, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{index}]");
        let Some(map) = reader.map(item, &item_path, NIC) else {
            continue;
        };
        if let Some(n) = reader.required(&map, "mac")
            && let Some(mac) = reader.mac(n, &map.child("mac"))
        {
            unique.claim(reader, "MAC", mac.to_string(), n.pos, &map.child("mac"));
            nics.push(Nic {
                mac,
                pxe: index == 0,
            });
        }
    }
    (nics.len() == items.len()).then_some(nics)
}

fn read_properties(reader: &mut Reader, node: &Node, path: &str) -> Option<(Properties, BootMode)> {
    let map = reader.map(node, path, PROPERTIES)?;
    let cpu_arch = optional(map.get("cpu_arch"), |n| {
        reader.text(n, &map.child("cpu_arch"))
    });
    let cpus = optional(map.get("cpus"), |n| {
        reader
            .int(n, &map.child("cpus"), 1, 65536)
            .map(|c| c as u32)
    });
    let ram = optional(map.get("ram"), |n| {
        reader.int(n, &map.child("ram"), 1, u64::MAX)
    });
    let disk = optional(map.get("disk_size"), |n| {
        reader.int(n, &map.child("disk_size"), 1, u64::MAX)
    });
    let root_device = optional(map.get("root_device"), |n| {
        read_root_device(reader, n, &map.child("root_device"), "size", ROOT_DEVICE)
    });
    let boot_mode = optional(map.get("capabilities"), |n| {
        read_capabilities(reader, n, &map.child("capabilities"))
    });
    let properties = Properties {
        cpu_arch: cpu_arch?,
        cpus: cpus?,
        memory_mb: ram?,
        disk_gb: disk?,
        root_device: root_device?.unwrap_or_default(),
    };
    Some((properties, boot_mode?.flatten().unwrap_or_default()))
}

/// Ironic capabilities string `key:value,key:value`; only `boot_mode` matters to Kiln.
fn read_capabilities(reader: &mut Reader, node: &Node, path: &str) -> Option<Option<BootMode>> {
    let text = reader.string(node, path)?;
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once(':') {
            Some(("boot_mode", "bios")) => return Some(Some(BootMode::Bios)),
            Some(("boot_mode", "uefi")) => return Some(Some(BootMode::Uefi)),
            Some(("boot_mode", other)) => {
                reader.error(
                    node.pos,
                    path,
                    format!("unknown boot_mode '{other}' (use bios or uefi)"),
                );
                return None;
            }
            Some(_) => {}
            None => {
                reader.error(
                    node.pos,
                    path,
                    format!("capability '{pair}' is not key:value"),
                );
                return None;
            }
        }
    }
    Some(None)
}

fn read_instance_info(reader: &mut Reader, node: &Node, path: &str) -> Option<ImageSpec> {
    let map = reader.map(node, path, INSTANCE_INFO)?;
    let source = reader
        .required(&map, "image_source")
        .and_then(|n| fields::image_source(reader, n, &map.child("image_source")));
    let checksum = optional(map.get("image_checksum"), |n| {
        fields::checksum(reader, n, &map.child("image_checksum"))
    });
    Some(ImageSpec {
        source: source?,
        checksum: checksum?,
    })
}

fn read_network(
    reader: &mut Reader,
    unique: &mut Unique,
    map: &super::reader::Map,
) -> Option<Option<NetworkSpec>> {
    let Some(address_node) = map.get("ipv4_address") else {
        for key in ["ipv4_subnet_mask", "ipv4_gateway", "ipv4_nameserver"] {
            if let Some(n) = map.get(key) {
                reader.error(n.pos, &map.child(key), "needs ipv4_address");
            }
        }
        return Some(None);
    };
    let address = reader
        .ipv4(address_node, &map.child("ipv4_address"))
        .inspect(|ip| {
            unique.claim(
                reader,
                "IP address",
                ip.to_string(),
                address_node.pos,
                &map.child("ipv4_address"),
            );
        });
    let prefix =
        match map.get("ipv4_subnet_mask") {
            Some(n) => reader
                .ipv4(n, &map.child("ipv4_subnet_mask"))
                .and_then(|mask| match mask_prefix(mask) {
                    Some(prefix) => Some(prefix),
                    None => {
                        reader.error(
                            n.pos,
                            &map.child("ipv4_subnet_mask"),
                            format!("{mask} is not a contiguous netmask"),
                        );
                        None
                    }
                }),
            None => Some(24),
        };
    let gateway = optional(map.get("ipv4_gateway"), |n| {
        reader.ipv4(n, &map.child("ipv4_gateway"))
    });
    let dns = optional(map.get("ipv4_nameserver"), |n| {
        let texts = reader.strings(n, &map.child("ipv4_nameserver"))?;
        let parsed: Option<Vec<Ipv4Addr>> = texts.iter().map(|t| t.trim().parse().ok()).collect();
        if parsed.is_none() {
            reader.error(
                n.pos,
                &map.child("ipv4_nameserver"),
                "every nameserver must be an IPv4 address",
            );
        }
        parsed
    });
    let spec = NetworkSpec {
        address: address?,
        prefix: prefix?,
        gateway: gateway?,
        dns: dns?.unwrap_or_default(),
    };
    check_gateway(
        reader,
        &spec,
        map.get("ipv4_gateway"),
        &map.child("ipv4_gateway"),
    )?;
    Some(Some(spec))
}

/// 255.255.255.0 → 24; `None` for a non-contiguous mask.
fn mask_prefix(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let prefix = bits.leading_ones();
    (bits.checked_shl(prefix).unwrap_or(0) == 0 && prefix > 0).then_some(prefix as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks() {
        assert_eq!(mask_prefix("255.255.255.0".parse().unwrap()), Some(24));
        assert_eq!(mask_prefix("255.255.255.255".parse().unwrap()), Some(32));
        assert_eq!(mask_prefix("255.0.255.0".parse().unwrap()), None);
        assert_eq!(mask_prefix("0.0.0.0".parse().unwrap()), None);
    }
}
