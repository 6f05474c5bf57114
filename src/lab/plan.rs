//! The lab's plan, as pure functions of its size: which VMs, their MACs, taps, addresses, boot
//! modes and roles, and the two files built from it (the vbmc configuration and the rack
//! inventory). No I/O here, so the whole layout is unit-tested.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The lab bridge's address inside the namespace; node addresses follow it in the same /24.
pub const BRIDGE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 1);
pub const PREFIX: u8 = 24;
/// Where `kiln vbmc` serves Redfish, inside the namespace.
pub const REDFISH_LISTEN: &str = "127.0.0.1:8000";
/// Where the lab's daemon serves its API, inside the namespace.
pub const API_LISTEN: &str = "127.0.0.1:6385";
pub const BRIDGE: &str = "br0";
pub const BMC_USERNAME: &str = "admin";
/// The catalog name `kiln image build os` produces.
pub const IMAGE: &str = "debian-12";
/// Two-digit names and MACs, and room in the /24 above `.10`.
pub const MAX_NODES: u32 = 99;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("--nodes must be between 1 and {MAX_NODES}, not {0}")]
    Nodes(u32),
    #[error("--uefi {uefi} is more than the {nodes} nodes of the lab")]
    Uefi { uefi: u32, nodes: u32 },
    #[error(
        "lab name '{0}' must be 1-15 letters, digits, '-' or '_' (it names a network namespace)"
    )]
    Name(String),
}

/// One virtual machine of the lab and the node it becomes in the inventory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LabVm {
    pub name: String,
    pub mac: String,
    pub tap: String,
    pub address: Ipv4Addr,
    pub uefi: bool,
    pub roles: Vec<&'static str>,
}

/// The namespace name doubles as a file name in /run/netns and a prefix in `ip` output.
pub fn check_name(name: &str) -> Result<(), PlanError> {
    let ok = (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(PlanError::Name(name.to_string()))
    }
}

/// `nodes` VMs, the last `uefi` of them UEFI (default: half, rounded down). VM `i` (from 1) is
/// `rack-0i` with MAC `52:54:00:66:00:ii`, tap `tapi` and address `10.66.0.(10+i)`.
pub fn vms(nodes: u32, uefi: Option<u32>) -> Result<Vec<LabVm>, PlanError> {
    if !(1..=MAX_NODES).contains(&nodes) {
        return Err(PlanError::Nodes(nodes));
    }
    let uefi = uefi.unwrap_or(nodes / 2);
    if uefi > nodes {
        return Err(PlanError::Uefi { uefi, nodes });
    }
    let [a, b, c, _] = BRIDGE_ADDRESS.octets();
    Ok((1..=nodes)
        .map(|i| LabVm {
            name: format!("rack-{i:02}"),
            mac: format!("52:54:00:66:00:{i:02x}"),
            tap: format!("tap{i}"),
            // MAX_NODES keeps this within the /24.
            address: Ipv4Addr::new(a, b, c, 10 + i as u8),
            uefi: i > nodes - uefi,
            roles: roles(i, nodes),
        })
        .collect())
}

/// The first node runs the control plane and the network services; the second is a control
/// and compute node; the rest compute. A one-node lab computes too.
fn roles(index: u32, nodes: u32) -> Vec<&'static str> {
    match (index, nodes) {
        (1, 1) => vec!["control", "network", "compute"],
        (1, _) => vec!["control", "network"],
        // A second control host, so an API service runs on two nodes (the database and the
        // broker stay on the first: the catalog places them once).
        (2, _) => vec!["control", "compute"],
        _ => vec!["compute"],
    }
}

/// The disk image of one VM in the lab directory.
pub fn disk_path(dir: &Path, vm: &LabVm) -> PathBuf {
    dir.join(format!("{}.raw", vm.name))
}

/// A YAML double-quoted scalar (JSON's string syntax is a subset of it), so paths and passwords
/// with any characters survive.
fn quote(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

/// `kiln vbmc --config` for the lab (see examples/vbmc.yaml). No `netns`: the vbmc itself runs
/// inside the lab's namespace, and its QEMUs with it.
pub fn vbmc_config(dir: &Path, vms: &[LabVm], password: &str, memory_mb: u32) -> String {
    let mut out = format!(
        "# Written by `kiln lab up`; removed by `kiln lab down`.\n\
         redfish_listen: {REDFISH_LISTEN}\n\
         username: {BMC_USERNAME}\n\
         password: {}\n\
         state_dir: {}\n\
         vms:\n",
        quote(password),
        quote(&dir.join("vbmc").display().to_string()),
    );
    for vm in vms {
        out.push_str(&format!(
            "  - {{name: {}, mac: \"{}\", tap: {}, disk: {}, memory_mb: {memory_mb}, uefi: {}}}\n",
            vm.name,
            vm.mac,
            vm.tap,
            quote(&disk_path(dir, vm).display().to_string()),
            vm.uefi,
        ));
    }
    out
}

/// The rack inventory for `kiln enroll` (format: examples/rack.yaml): every node behind the
/// vbmc's Redfish service, with a static address on the lab bridge and `image` (a catalog name).
pub fn rack_inventory(vms: &[LabVm], image: &str, password: &str, ssh_key: Option<&str>) -> String {
    let mut out = format!(
        "# Written by `kiln lab up`: the lab's VMs as a Kiln rack. Enroll it from inside the lab's\n\
         # namespace (`ip netns exec NAME kiln --data-dir DIR/data enroll DIR/rack.yaml`).\n\
         version: 1\n\
         defaults:\n\
         \x20 bmc: {{kind: redfish, address: \"http://{REDFISH_LISTEN}\", username: {BMC_USERNAME}, password: {}}}\n\
         \x20 image: {{source: {image}}}\n\
         \x20 network: {{prefix: {PREFIX}}}\n",
        quote(password),
    );
    if let Some(key) = ssh_key {
        out.push_str(&format!("  ssh_keys: [{}]\n", quote(key.trim())));
    }
    out.push_str("nodes:\n");
    for vm in vms {
        out.push_str(&format!(
            "  - name: {name}\n    \
               bmc: {{system_id: {name}}}\n    \
               nics: [{{mac: \"{mac}\"}}]\n    \
               boot_mode: {mode}\n    \
               network: {{address: {address}}}\n    \
               roles: [{roles}]\n",
            name = vm.name,
            mac = vm.mac,
            mode = if vm.uefi { "uefi" } else { "bios" },
            address = vm.address,
            roles = vm.roles.join(", "),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BmcKind, BootMode, Role};

    #[test]
    fn the_last_m_nodes_boot_uefi() {
        let table: &[(u32, Option<u32>, &[bool])] = &[
            (1, None, &[false]),
            (1, Some(1), &[true]),
            (2, None, &[false, true]),
            (2, Some(0), &[false, false]),
            (3, None, &[false, false, true]),
            (4, Some(3), &[false, true, true, true]),
            (4, Some(4), &[true, true, true, true]),
        ];
        for (nodes, uefi, want) in table {
            let got: Vec<bool> = vms(*nodes, *uefi).unwrap().iter().map(|v| v.uefi).collect();
            assert_eq!(&got, want, "nodes {nodes} uefi {uefi:?}");
        }
    }

    #[test]
    fn names_macs_taps_and_addresses_follow_the_index() {
        let plan = vms(12, None).unwrap();
        let first = &plan[0];
        assert_eq!(
            (
                first.name.as_str(),
                first.mac.as_str(),
                first.tap.as_str(),
                first.address
            ),
            (
                "rack-01",
                "52:54:00:66:00:01",
                "tap1",
                Ipv4Addr::new(10, 66, 0, 11)
            )
        );
        let last = &plan[11];
        assert_eq!(
            (last.name.as_str(), last.mac.as_str(), last.address),
            ("rack-12", "52:54:00:66:00:0c", Ipv4Addr::new(10, 66, 0, 22))
        );
        let max = vms(MAX_NODES, Some(0)).unwrap();
        assert_eq!(max[98].address, Ipv4Addr::new(10, 66, 0, 109));
    }

    #[test]
    fn roles_put_the_control_plane_on_the_first_node() {
        assert_eq!(
            vms(1, None).unwrap()[0].roles,
            ["control", "network", "compute"]
        );
        let plan = vms(3, None).unwrap();
        assert_eq!(plan[0].roles, ["control", "network"]);
        assert_eq!(plan[1].roles, ["control", "compute"]);
        assert_eq!(plan[2].roles, ["compute"]);
    }

    #[test]
    fn bad_sizes_and_names_are_refused() {
        assert_eq!(vms(0, None), Err(PlanError::Nodes(0)));
        assert_eq!(vms(100, None), Err(PlanError::Nodes(100)));
        assert_eq!(vms(2, Some(3)), Err(PlanError::Uefi { uefi: 3, nodes: 2 }));
        for good in ["kiln-lab", "a", "lab_2", "abcdefghijklmno"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in ["", "a/b", "..", "has space", "abcdefghijklmnop", "é"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_vbmc_config_parses_and_matches_the_plan() {
        let dir = Path::new("/var/lib/my lab");
        let plan = vms(3, Some(1)).unwrap();
        let text = vbmc_config(dir, &plan, "p\"a:ss# word", 1536);
        let config = crate::bmc::vbmc::parse_config("vbmc.yaml", &text).unwrap();
        assert_eq!(config.redfish_listen.to_string(), REDFISH_LISTEN);
        assert_eq!(config.password.expose(), "p\"a:ss# word");
        assert_eq!(config.vms.len(), 3);
        for (spec, vm) in config.vms.iter().zip(&plan) {
            assert_eq!(spec.name, vm.name);
            assert_eq!(spec.mac, vm.mac);
            assert_eq!(spec.tap, vm.tap);
            assert_eq!(spec.uefi, vm.uefi);
            assert_eq!(spec.memory_mb, 1536);
            assert_eq!(spec.netns, None);
            assert_eq!(spec.state_dir, dir.join("vbmc"));
            assert_eq!(spec.disk.as_deref(), Some(disk_path(dir, vm).as_path()));
        }
    }

    #[test]
    fn the_rack_inventory_validates_and_matches_the_plan() {
        let plan = vms(2, None).unwrap();
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKilnLabTestKey0000000000000000000000 lab\n";
        let text = rack_inventory(&plan, IMAGE, "s3cret: 'x'", Some(key));
        let inventory = crate::inventory::parse("rack.yaml", &text).unwrap();
        assert_eq!(inventory.nodes.len(), 2);
        for (node, vm) in inventory.nodes.iter().zip(&plan) {
            assert_eq!(node.name, vm.name);
            assert_eq!(node.bmc.kind, BmcKind::Redfish);
            assert_eq!(node.bmc.address, "http://127.0.0.1:8000");
            assert_eq!(node.bmc.username, BMC_USERNAME);
            assert_eq!(node.bmc.password.expose(), "s3cret: 'x'");
            assert_eq!(node.bmc.system_id.as_deref(), Some(vm.name.as_str()));
            assert_eq!(node.pxe_mac().map(|m| m.to_string()), Some(vm.mac.clone()));
            let mode = if vm.uefi {
                BootMode::Uefi
            } else {
                BootMode::Bios
            };
            assert_eq!(node.boot_mode, mode);
            let network = node.network.as_ref().unwrap();
            assert_eq!((network.address, network.prefix), (vm.address, PREFIX));
            assert_eq!(node.image.as_ref().unwrap().source, IMAGE);
            assert_eq!(node.ssh_keys, [key.trim()]);
        }
        assert_eq!(inventory.nodes[0].roles, [Role::Control, Role::Network]);
        assert_eq!(inventory.nodes[1].roles, [Role::Control, Role::Compute]);
        let without_key = rack_inventory(&plan, "debian-12-kolla", "x", None);
        let inventory = crate::inventory::parse("rack.yaml", &without_key).unwrap();
        assert!(inventory.nodes.iter().all(|n| n.ssh_keys.is_empty()));
        assert!(
            inventory
                .nodes
                .iter()
                .all(|n| n.image.as_ref().unwrap().source == "debian-12-kolla")
        );
    }
}
