//! The simulated rack's plan, as pure functions of its size: names, MACs, addresses, boot modes,
//! roles and BMC kinds of every simulated server, and the rack inventory `kiln deploy-servers`
//! consumes. No I/O here, so the whole layout is unit-tested.

use std::net::{Ipv4Addr, SocketAddr};

/// The largest rack one simulator holds: MACs and addresses are derived from a 16-bit index.
pub const MAX_NODES: u32 = 10_000;
/// The image `kiln sim` puts in the catalog of the files root it prepares.
pub const IMAGE: &str = "sim-os";

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("--nodes must be between 1 and {MAX_NODES}, not {0}")]
    Nodes(u32),
    #[error(
        "{nodes} nodes do not fit after {first} in a /{prefix} (the last would be past the subnet)"
    )]
    Subnet {
        nodes: u32,
        first: Ipv4Addr,
        prefix: u8,
    },
    #[error(
        "--ipmi-every and --uefi-every must be 0 (never) or more, and the IPMI ports must fit below 65536"
    )]
    IpmiPorts,
}

/// How the rack is laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub nodes: u32,
    /// Names are `{prefix}-{index:03}` (4 digits past 999 nodes).
    pub name_prefix: String,
    /// The first node's address; the rest follow, skipping .0 and .255 of every /24.
    pub first_address: Ipv4Addr,
    pub prefix: u8,
    /// Every k-th node (k = this) boots UEFI; 0: none.
    pub uefi_every: u32,
    /// Every k-th node has an IPMI BMC instead of Redfish; 0: none.
    pub ipmi_every: u32,
    pub redfish_listen: SocketAddr,
    /// IPMI BMCs listen on this address, port `ipmi_base_port + index`.
    pub ipmi_address: Ipv4Addr,
    pub ipmi_base_port: u16,
    /// How many of the first nodes are the control plane (`control`, the first also `network`).
    pub control_nodes: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimBmc {
    /// A System of the simulator's one Redfish service.
    Redfish,
    /// An IPMI lanplus endpoint of its own.
    Ipmi(SocketAddr),
}

/// One simulated server and the node it becomes in the inventory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimNode {
    pub index: u32,
    pub name: String,
    pub mac: String,
    pub address: Ipv4Addr,
    pub uefi: bool,
    pub bmc: SimBmc,
    pub roles: Vec<&'static str>,
}

/// The `index`-th usable address from `first`: .0 and .255 of each /24 are skipped, so no node
/// gets a network or broadcast-looking address.
fn nth_address(first: Ipv4Addr, index: u32) -> Option<Ipv4Addr> {
    let mut at = u32::from(first);
    let mut left = index;
    loop {
        let last_octet = at & 0xff;
        if last_octet == 0 || last_octet == 255 {
            at = at.checked_add(1)?;
            continue;
        }
        if left == 0 {
            return Some(Ipv4Addr::from(at));
        }
        left -= 1;
        at = at.checked_add(1)?;
    }
}

fn in_subnet(first: Ipv4Addr, prefix: u8, address: Ipv4Addr) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    u32::from(first) & mask == u32::from(address) & mask && u32::from(address) | mask != u32::MAX
}

fn roles(index: u32, layout: &Layout) -> Vec<&'static str> {
    let control = layout.control_nodes.min(layout.nodes);
    match index {
        0 if layout.nodes == 1 => vec!["control", "network", "compute"],
        0 => vec!["control", "network"],
        i if i < control => vec!["control"],
        _ => vec!["compute"],
    }
}

pub fn nodes(layout: &Layout) -> Result<Vec<SimNode>, PlanError> {
    if layout.nodes == 0 || layout.nodes > MAX_NODES {
        return Err(PlanError::Nodes(layout.nodes));
    }
    let subnet_error = PlanError::Subnet {
        nodes: layout.nodes,
        first: layout.first_address,
        prefix: layout.prefix,
    };
    if layout.ipmi_every > 0
        && u32::from(layout.ipmi_base_port) + layout.nodes > u32::from(u16::MAX)
    {
        return Err(PlanError::IpmiPorts);
    }
    let width = if layout.nodes > 999 { 4 } else { 3 };
    (0..layout.nodes)
        .map(|index| {
            let address = nth_address(layout.first_address, index)
                .filter(|a| in_subnet(layout.first_address, layout.prefix, *a))
                .ok_or_else(|| subnet_error.clone())?;
            let number = index + 1;
            let every = |k: u32| k > 0 && number % k == 0;
            let bmc = if every(layout.ipmi_every) {
                // Checked above: the port fits.
                let port = layout.ipmi_base_port + index as u16;
                SimBmc::Ipmi(SocketAddr::new(layout.ipmi_address.into(), port))
            } else {
                SimBmc::Redfish
            };
            Ok(SimNode {
                index,
                name: format!("{}-{number:0width$}", layout.name_prefix),
                mac: format!(
                    "52:54:00:5e:{:02x}:{:02x}",
                    (index >> 8) & 0xff,
                    index & 0xff
                ),
                address,
                uefi: every(layout.uefi_every),
                bmc,
                roles: roles(index, layout),
            })
        })
        .collect()
}

/// A YAML double-quoted scalar (JSON's string syntax is a subset of it).
fn quote(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

/// The rack inventory (format: examples/rack.yaml) for the simulated servers.
pub fn rack_inventory(
    layout: &Layout,
    nodes: &[SimNode],
    username: &str,
    password: &str,
) -> String {
    let mut out = format!(
        "# Written by `kiln sim`: {} simulated servers as a Kiln rack.\n\
         version: 1\n\
         defaults:\n\
         \x20 bmc: {{kind: redfish, address: \"http://{}\", username: {}, password: {}}}\n\
         \x20 image: {{source: {IMAGE}}}\n\
         \x20 network: {{prefix: {}}}\n\
         nodes:\n",
        nodes.len(),
        layout.redfish_listen,
        quote(username),
        quote(password),
        layout.prefix,
    );
    for node in nodes {
        let bmc = match &node.bmc {
            SimBmc::Redfish => format!("{{system_id: {}}}", node.name),
            SimBmc::Ipmi(at) => format!(
                "{{kind: ipmi, address: \"{}\", port: {}}}",
                at.ip(),
                at.port()
            ),
        };
        out.push_str(&format!(
            "  - name: {name}\n    \
               bmc: {bmc}\n    \
               nics: [{{mac: \"{mac}\"}}]\n    \
               boot_mode: {mode}\n    \
               network: {{address: {address}}}\n    \
               roles: [{roles}]\n",
            name = node.name,
            mac = node.mac,
            mode = if node.uefi { "uefi" } else { "bios" },
            address = node.address,
            roles = node.roles.join(", "),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(nodes: u32) -> Layout {
        Layout {
            nodes,
            name_prefix: "sim".into(),
            first_address: Ipv4Addr::new(10, 66, 1, 1),
            prefix: 16,
            uefi_every: 2,
            ipmi_every: 4,
            redfish_listen: "127.0.0.1:8000".parse().unwrap(),
            ipmi_address: Ipv4Addr::LOCALHOST,
            ipmi_base_port: 7000,
            control_nodes: 3,
        }
    }

    #[test]
    fn names_macs_addresses_and_kinds_follow_the_index() {
        let nodes = nodes(&layout(300)).unwrap();
        assert_eq!(nodes.len(), 300);
        assert_eq!(nodes[0].name, "sim-001");
        assert_eq!(nodes[0].mac, "52:54:00:5e:00:00");
        assert_eq!(nodes[0].address, Ipv4Addr::new(10, 66, 1, 1));
        assert!(!nodes[0].uefi && nodes[1].uefi);
        assert_eq!(nodes[2].bmc, SimBmc::Redfish);
        assert_eq!(
            nodes[3].bmc,
            SimBmc::Ipmi("127.0.0.1:7003".parse().unwrap())
        );
        // .255 and .0 are skipped: node 255 is 10.66.1.255 → 10.66.2.1.
        assert_eq!(nodes[253].address, Ipv4Addr::new(10, 66, 1, 254));
        assert_eq!(nodes[254].address, Ipv4Addr::new(10, 66, 2, 1));
        assert_eq!(nodes[299].mac, "52:54:00:5e:01:2b");
        let mut macs: Vec<_> = nodes.iter().map(|n| &n.mac).collect();
        macs.sort();
        macs.dedup();
        assert_eq!(macs.len(), 300, "MACs are unique");
        let mut addresses: Vec<_> = nodes.iter().map(|n| n.address).collect();
        addresses.dedup();
        assert_eq!(addresses.len(), 300, "addresses are unique");
    }

    #[test]
    fn the_control_plane_is_the_first_nodes() {
        let nodes = nodes(&layout(5)).unwrap();
        assert_eq!(nodes[0].roles, ["control", "network"]);
        assert_eq!(nodes[2].roles, ["control"]);
        assert_eq!(nodes[3].roles, ["compute"]);
        assert_eq!(
            super::nodes(&layout(1)).unwrap()[0].roles,
            ["control", "network", "compute"]
        );
    }

    #[test]
    fn sizes_that_do_not_fit_are_refused() {
        assert_eq!(nodes(&layout(0)), Err(PlanError::Nodes(0)));
        assert_eq!(
            nodes(&layout(MAX_NODES + 1)),
            Err(PlanError::Nodes(MAX_NODES + 1))
        );
        let mut small = layout(300);
        small.prefix = 24;
        assert!(matches!(nodes(&small), Err(PlanError::Subnet { .. })));
        let mut ports = layout(100);
        ports.ipmi_base_port = 65500;
        assert_eq!(nodes(&ports), Err(PlanError::IpmiPorts));
        assert!(super::nodes(&layout(1000)).unwrap()[999].name == "sim-1000");
    }

    #[test]
    fn the_inventory_validates_and_matches_the_plan() {
        let layout = layout(8);
        let nodes = nodes(&layout).unwrap();
        let text = rack_inventory(&layout, &nodes, "admin", "p\"w");
        let parsed = crate::inventory::parse("rack.yaml", &text).unwrap().nodes;
        assert_eq!(parsed.len(), 8);
        assert_eq!(parsed[3].name, "sim-004");
        assert_eq!(parsed[3].bmc.kind, crate::model::BmcKind::Ipmi);
        assert_eq!(parsed[0].bmc.kind, crate::model::BmcKind::Redfish);
        assert_eq!(parsed[0].bmc.password.expose(), "p\"w");
        assert_eq!(parsed[1].boot_mode, crate::model::BootMode::Uefi);
    }
}
