//! What goes on a node's config drive: hostname, SSH keys, network and Docker TLS material.
//!
//! Two layouts side by side on one `CIDATA` FAT partition: cloud-init NoCloud (`meta-data`,
//! `user-data`, `network-config` v2) for cloud images a user imports, and Kiln's plain files under
//! `kiln/` that the Kiln OS image's first-boot step copies into place (no YAML parsing in shell):
//! `kiln/hostname`, `kiln/authorized_keys`, `kiln/network/10-kiln.network` (systemd-networkd),
//! `kiln/docker/{ca,server-cert,server-key}.pem`. Without a static address in the inventory the
//! network files ask for DHCP (Kiln's DHCP keeps the node's address).

use crate::agent::protocol::ConfigDriveEntry;
use crate::model::Node;

/// The node's Docker server certificate, issued by the appliance CA.
pub struct NodeTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A YAML double-quoted scalar (JSON strings are valid YAML).
fn quoted(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

pub fn files(node: &Node, tls: Option<&NodeTls>) -> Vec<ConfigDriveEntry> {
    let spec = &node.spec;
    let name = &spec.name;
    let mac = spec.pxe_mac().map(|m| m.to_string());
    let mut out = Vec::new();
    let mut add = |path: &str, contents: String| {
        out.push(ConfigDriveEntry {
            path: path.to_string(),
            contents,
        })
    };

    add(
        "meta-data",
        format!("instance-id: {}\nlocal-hostname: {name}\n", node.uuid),
    );
    let mut user_data = format!("#cloud-config\nhostname: {name}\n");
    if !spec.ssh_keys.is_empty() {
        user_data.push_str("ssh_authorized_keys:\n");
        for key in &spec.ssh_keys {
            user_data.push_str(&format!("  - {}\n", quoted(key)));
        }
    }
    add("user-data", user_data);

    // Network: cloud-init v2 and systemd-networkd, both matching the PXE NIC by MAC.
    let mut v2 = String::from("version: 2\nethernets:\n  provisioning:\n");
    let mut networkd = String::from("[Match]\n");
    match &mac {
        Some(mac) => {
            v2.push_str(&format!("    match:\n      macaddress: \"{mac}\"\n"));
            networkd.push_str(&format!("MACAddress={mac}\n"));
        }
        None => networkd.push_str("Name=en* eth*\n"),
    }
    // No router advertisement comes on the provisioning network: don't wait ~12 s for one.
    networkd.push_str("\n[Network]\nIPv6AcceptRA=no\n");
    match &spec.network {
        Some(net) => {
            v2.push_str(&format!(
                "    addresses: [\"{}/{}\"]\n",
                net.address, net.prefix
            ));
            networkd.push_str(&format!("Address={}/{}\n", net.address, net.prefix));
            if let Some(gateway) = net.gateway {
                v2.push_str(&format!("    gateway4: \"{gateway}\"\n"));
                networkd.push_str(&format!("Gateway={gateway}\n"));
            }
            if !net.dns.is_empty() {
                let list: Vec<String> = net.dns.iter().map(|d| format!("\"{d}\"")).collect();
                v2.push_str(&format!(
                    "    nameservers:\n      addresses: [{}]\n",
                    list.join(", ")
                ));
                for dns in &net.dns {
                    networkd.push_str(&format!("DNS={dns}\n"));
                }
            }
        }
        None => {
            v2.push_str("    dhcp4: true\n");
            // Identify by MAC: the machine-id (the default) changes with every deploy.
            networkd.push_str("DHCP=ipv4\n\n[DHCPv4]\nClientIdentifier=mac\n");
        }
    }
    add("network-config", v2);

    add("kiln/hostname", format!("{name}\n"));
    if !spec.ssh_keys.is_empty() {
        add("kiln/authorized_keys", spec.ssh_keys.join("\n") + "\n");
    }
    add("kiln/network/10-kiln.network", networkd);
    if let Some(tls) = tls {
        add("kiln/docker/ca.pem", tls.ca_pem.clone());
        add("kiln/docker/server-cert.pem", tls.cert_pem.clone());
        add("kiln/docker/server-key.pem", tls.key_pem.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NetworkSpec;

    fn node(network: Option<NetworkSpec>) -> Node {
        let text = "nodes:
  - name: ctl-01
    bmc: {kind: ipmi, address: 10.0.0.1, username: admin, password: bmc-secret-pw}
    nics: [{mac: '52:54:00:00:00:01'}]
    ssh_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyA op@x', 'ssh-rsa AAAAB3NzaC1yc2EAAAADAQABKeyB \"q\"']
";
        let mut spec = crate::inventory::parse("rack.yaml", text)
            .map(|inv| inv.nodes.into_iter().next())
            .ok()
            .flatten()
            .expect("test inventory parses");
        spec.network = network;
        Node::fresh(
            uuid::Uuid::nil(),
            spec,
            crate::model::ProvisionState::Deploying,
        )
    }

    fn get<'a>(files: &'a [ConfigDriveEntry], path: &str) -> &'a str {
        &files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("{path} missing"))
            .contents
    }

    #[test]
    fn static_network_and_keys() {
        let files = files(
            &node(Some(NetworkSpec {
                address: "10.99.0.11".parse().expect("ip"),
                prefix: 24,
                gateway: Some("10.99.0.1".parse().expect("ip")),
                dns: vec!["10.99.0.1".parse().expect("ip")],
            })),
            Some(&NodeTls {
                ca_pem: "CA".into(),
                cert_pem: "CERT".into(),
                key_pem: "KEY".into(),
            }),
        );
        assert_eq!(get(&files, "kiln/hostname"), "ctl-01\n");
        assert_eq!(
            get(&files, "kiln/network/10-kiln.network"),
            "[Match]\nMACAddress=52:54:00:00:00:01\n\n[Network]\nIPv6AcceptRA=no\nAddress=10.99.0.11/24\nGateway=10.99.0.1\nDNS=10.99.0.1\n"
        );
        assert!(get(&files, "network-config").contains("addresses: [\"10.99.0.11/24\"]"));
        assert_eq!(
            get(&files, "kiln/authorized_keys"),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyA op@x\nssh-rsa AAAAB3NzaC1yc2EAAAADAQABKeyB \"q\"\n"
        );
        // Keys are quoted so a key comment cannot break the YAML.
        assert!(
            get(&files, "user-data")
                .contains("  - \"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABKeyB \\\"q\\\"\"\n")
        );
        assert!(get(&files, "meta-data").contains("local-hostname: ctl-01"));
        assert_eq!(get(&files, "kiln/docker/server-key.pem"), "KEY");
    }

    #[test]
    fn dhcp_without_an_inventory_address_and_no_tls_without_a_ca() {
        let files = files(&node(None), None);
        assert!(
            get(&files, "kiln/network/10-kiln.network")
                .ends_with("DHCP=ipv4\n\n[DHCPv4]\nClientIdentifier=mac\n")
        );
        assert!(get(&files, "network-config").contains("dhcp4: true"));
        assert!(files.iter().all(|f| !f.path.starts_with("kiln/docker/")));
    }
}
