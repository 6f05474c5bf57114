//! Inventory validation: the shipped examples pass, and each malformed inventory fails with the
//! file, line, column and field path of its problem (all problems at once).

use kiln::inventory::{self, Format};
use kiln::model::{BmcKind, BootMode, Role, TlsVerify};
use std::path::Path;

const NODE: &str = "nodes:
  - name: n1
    bmc:
      kind: ipmi
      address: 10.0.0.1
      username: admin
      password: pw
    nics:
      - mac: 52:54:00:00:00:01
";

/// Expect exactly one error at `line:column` on `field` whose message contains `needle`.
fn rejects(text: &str, line: usize, column: usize, field: &str, needle: &str) {
    let errors = inventory::parse("rack.yaml", text).expect_err("inventory must be rejected");
    let rendered: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let hit = errors
        .iter()
        .find(|e| e.field == field && e.message.contains(needle));
    let Some(error) = hit else {
        panic!("no error on {field} containing {needle:?}: {rendered:#?}")
    };
    assert_eq!((error.line, error.column), (line, column), "{error}");
    assert!(
        error
            .to_string()
            .starts_with(&format!("rack.yaml:{line}:{column}: {field}")),
        "{error}"
    );
}

#[test]
fn shipped_examples_pass() {
    let rack = inventory::load(Path::new("examples/rack.yaml")).unwrap();
    assert_eq!(rack.format, Format::Kiln);
    assert_eq!(rack.nodes.len(), 2);
    let ctl = &rack.nodes[0];
    assert_eq!(ctl.bmc.username, "admin", "inherited from defaults");
    assert_eq!(ctl.bmc.password.expose(), "change-me");
    assert_eq!(ctl.boot_mode, BootMode::Bios);
    assert_eq!(ctl.network.as_ref().unwrap().prefix, 24);
    assert_eq!(ctl.roles, vec![Role::Control, Role::Network]);
    let cmp = &rack.nodes[1];
    assert_eq!(cmp.bmc.kind, BmcKind::Redfish);
    assert_eq!(cmp.bmc.address, "https://10.99.1.12:8000");
    assert_eq!(cmp.bmc.username, "root");
    assert_eq!(cmp.bmc.tls_verify, TlsVerify::Insecure);
    assert_eq!(cmp.nics[0].mac.to_string(), "52:54:00:99:00:12");
    assert_eq!(cmp.boot_mode, BootMode::Uefi);

    let bifrost = inventory::load(Path::new("examples/bifrost-inventory.json")).unwrap();
    assert_eq!(bifrost.format, Format::Bifrost);
    let vm1 = &bifrost.nodes[0];
    assert_eq!(
        (
            vm1.bmc.port,
            vm1.properties.memory_mb,
            vm1.properties.disk_gb
        ),
        (6230, Some(3072), Some(10))
    );
    assert_eq!(vm1.boot_mode, BootMode::Bios);
    assert_eq!(
        vm1.image
            .as_ref()
            .unwrap()
            .checksum
            .as_ref()
            .unwrap()
            .algorithm,
        "md5"
    );
    assert_eq!(vm1.network.as_ref().unwrap().prefix, 24);
    assert_eq!(
        (vm1.roles.clone(), vm1.groups.clone()),
        (vec![Role::Control], vec!["baremetal".to_string()])
    );
    let vm2 = &bifrost.nodes[1];
    assert_eq!(vm2.bmc.address, "http://192.168.122.1:8000");
    assert_eq!(
        vm2.bmc.system_id.as_deref(),
        Some("/redfish/v1/Systems/testvm2")
    );
    assert_eq!(vm2.properties.root_device.size_gb, Some(20));

    let yaml = inventory::load(Path::new("examples/bifrost-inventory.yaml")).unwrap();
    assert_eq!(
        (yaml.format, yaml.nodes[0].bmc.port),
        (Format::Bifrost, 443)
    );
}

#[test]
fn all_errors_are_reported_at_once() {
    let text = NODE
        .replace("10.0.0.1", "10.0.0.999")
        .replace("52:54:00:00:00:01", "zz")
        + "    cpus: 4\n";
    let errors = inventory::parse("rack.yaml", &text).unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "nodes[0].bmc.address",
            "nodes[0].nics[0].mac",
            "nodes[0].cpus"
        ],
        "{errors:#?}"
    );
}

#[test]
fn yaml_syntax_error() {
    let errors = inventory::parse("rack.yaml", "nodes:\n  - name: [n1\n").unwrap_err();
    assert!(
        errors[0].message.starts_with("YAML syntax error"),
        "{}",
        errors[0]
    );
    assert_eq!(errors[0].line, 3);
}

#[test]
fn unknown_top_level_key() {
    rejects(&format!("nodez: 1\n{NODE}"), 1, 1, "nodez", "unknown field");
}

#[test]
fn unknown_node_key() {
    rejects(
        &NODE.replace("    nics:", "    nick: x\n    nics:"),
        8,
        5,
        "nodes[0].nick",
        "unknown field 'nick'",
    );
}

#[test]
fn unknown_bmc_key() {
    rejects(
        &NODE.replace("      kind: ipmi", "      kind: ipmi\n      passwd: x"),
        5,
        7,
        "nodes[0].bmc.passwd",
        "unknown field",
    );
}

#[test]
fn missing_password() {
    rejects(
        &NODE.replace("      password: pw\n", ""),
        4,
        7,
        "nodes[0].bmc.password",
        "missing required field",
    );
}

#[test]
fn missing_username() {
    rejects(
        &NODE.replace("      username: admin\n", ""),
        4,
        7,
        "nodes[0].bmc.username",
        "missing required field",
    );
}

#[test]
fn empty_password() {
    rejects(
        &NODE.replace("password: pw", "password: ''"),
        7,
        17,
        "nodes[0].bmc.password",
        "must not be empty",
    );
}

#[test]
fn missing_nodes() {
    rejects("version: 1\n", 1, 1, "nodes", "missing required field");
}

#[test]
fn nodes_not_a_list() {
    rejects(
        "nodes:\n  n1: {}\n",
        2,
        3,
        "nodes",
        "expected a list, found a mapping",
    );
}

#[test]
fn malformed_mac() {
    rejects(
        &NODE.replace("52:54:00:00:00:01", "52:54:00:00:01"),
        9,
        14,
        "nodes[0].nics[0].mac",
        "not a MAC address",
    );
}

#[test]
fn malformed_bmc_ip() {
    rejects(
        &NODE.replace("10.0.0.1", "10.0.0.300"),
        5,
        16,
        "nodes[0].bmc.address",
        "not an IPv4 address or host name",
    );
}

#[test]
fn malformed_network_ip() {
    rejects(
        &format!("{NODE}    network: {{address: 10.1.2, prefix: 24}}\n"),
        10,
        24,
        "nodes[0].network.address",
        "not an IPv4 address",
    );
}

#[test]
fn malformed_image_url() {
    rejects(
        &format!("{NODE}    image: {{source: 'not a url'}}\n"),
        10,
        21,
        "nodes[0].image.source",
        "neither an image catalog name",
    );
    rejects(
        &format!("{NODE}    image: {{source: 'http//x y'}}\n"),
        10,
        21,
        "nodes[0].image.source",
        "neither an image catalog name",
    );
}

#[test]
fn image_catalog_names_are_accepted() {
    let text = format!("{NODE}    image: {{source: debian-12}}\n");
    let inventory = kiln::inventory::parse("rack.yaml", &text).expect("a catalog name is valid");
    assert_eq!(
        inventory.nodes[0].image.as_ref().unwrap().source,
        "debian-12"
    );
}

#[test]
fn image_url_with_wrong_scheme() {
    rejects(
        &format!("{NODE}    image: {{source: 'ftp://x/img'}}\n"),
        10,
        21,
        "nodes[0].image.source",
        "scheme 'ftp'",
    );
}

#[test]
fn malformed_checksum() {
    rejects(
        &format!("{NODE}    image: {{source: 'http://x/i', checksum: 'sha256:abc'}}\n"),
        10,
        45,
        "nodes[0].image.checksum",
        "64 hex digits",
    );
}

#[test]
fn malformed_redfish_url() {
    let text = NODE
        .replace("kind: ipmi", "kind: redfish")
        .replace("10.0.0.1", "'https://'");
    rejects(&text, 5, 16, "nodes[0].bmc.address", "not a valid URL");
}

#[test]
fn wrong_type_cpus() {
    rejects(
        &format!("{NODE}    properties: {{cpus: four}}\n"),
        10,
        24,
        "nodes[0].properties.cpus",
        "expected a whole number, found a string",
    );
}

#[test]
fn wrong_type_pxe_flag() {
    rejects(
        &NODE.replace("00:01\n", "00:01\n        pxe: 'yes'\n"),
        10,
        14,
        "nodes[0].nics[0].pxe",
        "expected true or false",
    );
}

#[test]
fn wrong_type_bmc_is_a_list() {
    rejects(
        &NODE.replace("    bmc:\n", "    bmc: [1]\n    x_bmc:\n"),
        3,
        10,
        "nodes[0].bmc",
        "expected a mapping, found a list",
    );
}

#[test]
fn port_out_of_range() {
    rejects(
        &NODE.replace("      username", "      port: 70000\n      username"),
        6,
        13,
        "nodes[0].bmc.port",
        "out of range",
    );
}

#[test]
fn unknown_bmc_kind() {
    rejects(
        &NODE.replace("kind: ipmi", "kind: ilo"),
        4,
        13,
        "nodes[0].bmc.kind",
        "unknown BMC kind 'ilo'",
    );
}

#[test]
fn unknown_role() {
    rejects(
        &format!("{NODE}    roles: [control, db]\n"),
        10,
        12,
        "nodes[0].roles[1]",
        "unknown role 'db'",
    );
}

#[test]
fn unknown_boot_mode() {
    rejects(
        &format!("{NODE}    boot_mode: efi\n"),
        10,
        16,
        "nodes[0].boot_mode",
        "unknown boot mode",
    );
}

#[test]
fn two_pxe_nics() {
    let text = NODE.replace(
        "00:01\n",
        "00:01\n        pxe: true\n      - mac: 52:54:00:00:00:02\n        pxe: true\n",
    );
    rejects(&text, 9, 7, "nodes[0].nics", "only one NIC");
}

#[test]
fn gateway_outside_subnet() {
    rejects(
        &format!("{NODE}    network: {{address: 10.0.1.5, prefix: 24, gateway: 10.0.2.1}}\n"),
        10,
        55,
        "nodes[0].network.gateway",
        "outside",
    );
}

#[test]
fn invalid_uuid() {
    rejects(
        &NODE.replace("  - name: n1\n", "  - name: n1\n    uuid: 1234\n"),
        3,
        11,
        "nodes[0].uuid",
        "not a UUID",
    );
}

#[test]
fn invalid_node_name() {
    rejects(
        &NODE.replace("name: n1", "name: 'n 1'"),
        2,
        11,
        "nodes[0].name",
        "not a valid node name",
    );
}

#[test]
fn duplicate_yaml_key() {
    rejects(
        &NODE.replace(
            "      username: admin\n",
            "      username: admin\n      username: root\n",
        ),
        7,
        7,
        "username",
        "duplicate key",
    );
}

fn two_nodes(second: &str) -> String {
    format!("{NODE}{second}")
}

const SECOND: &str = "  - name: n2
    bmc:
      kind: ipmi
      address: 10.0.0.2
      username: admin
      password: pw
    nics:
      - mac: 52:54:00:00:00:02
";

#[test]
fn duplicate_node_name() {
    rejects(
        &two_nodes(&SECOND.replace("n2", "n1")),
        10,
        11,
        "nodes[1].name",
        "duplicate node name 'n1' (already used by nodes[0].name on line 2)",
    );
}

#[test]
fn duplicate_mac() {
    rejects(
        &two_nodes(&SECOND.replace("00:00:02", "00:00:01")),
        17,
        14,
        "nodes[1].nics[0].mac",
        "duplicate MAC",
    );
}

#[test]
fn duplicate_mac_in_other_spelling() {
    rejects(
        &two_nodes(&SECOND.replace("52:54:00:00:00:02", "52-54-00-00-00-01")),
        17,
        14,
        "nodes[1].nics[0].mac",
        "duplicate MAC '52:54:00:00:00:01'",
    );
}

#[test]
fn duplicate_bmc_endpoint() {
    rejects(
        &two_nodes(&SECOND.replace("10.0.0.2", "10.0.0.1")),
        13,
        16,
        "nodes[1].bmc.address",
        "duplicate BMC endpoint",
    );
}

#[test]
fn same_redfish_bmc_with_distinct_systems_is_fine() {
    let redfish = |text: &str, system: &str| {
        text.replace("kind: ipmi", "kind: redfish")
            .replace("10.0.0.2", "10.0.0.1")
            .replace(
                "      username",
                &format!("      system_id: {system}\n      username"),
            )
    };
    let text = format!("{}{}", redfish(NODE, "s1"), redfish(SECOND, "s2"));
    inventory::parse("rack.yaml", &text).unwrap();
    let text = format!("{}{}", redfish(NODE, "s1"), redfish(SECOND, "s1"));
    rejects(
        &text,
        14,
        16,
        "nodes[1].bmc.address",
        "duplicate BMC endpoint",
    );
}

#[test]
fn duplicate_ip() {
    let first = format!("{NODE}    network: {{address: 10.0.9.9, prefix: 24}}\n");
    let second = format!("{SECOND}    network: {{address: 10.0.9.9, prefix: 24}}\n");
    rejects(
        &format!("{first}{second}"),
        19,
        24,
        "nodes[1].network.address",
        "duplicate IP address",
    );
}

#[test]
fn defaults_are_inherited_and_validated() {
    let text = "defaults:\n  bmc: {username: admin, password: pw, kind: ipmi}\nnodes:\n  - name: n1\n    bmc: {address: 10.0.0.1}\n    nics: [{mac: '52:54:00:00:00:01'}]\n";
    let inv = inventory::parse("rack.yaml", text).unwrap();
    assert_eq!(inv.nodes[0].bmc.username, "admin");
    rejects(
        &text.replace("kind: ipmi", "kind: x"),
        2,
        46,
        "nodes[0].bmc.kind",
        "unknown BMC kind",
    );
}

// Bifrost dialect.

const BIFROST: &str = r#"{
  "n1": {
    "driver": "ipmi",
    "driver_info": {"ipmi_address": "10.0.0.1", "ipmi_username": "u", "ipmi_password": "p"},
    "nics": [{"mac": "52:54:00:00:00:01"}]
  }
}
"#;

#[test]
fn bifrost_minimal_passes() {
    let inv = inventory::parse("rack.json", BIFROST).unwrap();
    assert_eq!((inv.format, inv.nodes[0].bmc.port), (Format::Bifrost, 623));
}

#[test]
fn bifrost_unknown_key() {
    rejects(
        &BIFROST.replace(
            "\"driver\": \"ipmi\",",
            "\"driver\": \"ipmi\", \"drvier_info\": {},",
        ),
        3,
        23,
        "n1.drvier_info",
        "unknown field",
    );
}

#[test]
fn bifrost_missing_password() {
    rejects(
        &BIFROST.replace(", \"ipmi_password\": \"p\"", ""),
        4,
        20,
        "n1.driver_info.ipmi_password",
        "missing required field",
    );
}

#[test]
fn bifrost_wrong_driver_fields() {
    rejects(
        &BIFROST.replace(
            "\"ipmi_username\"",
            "\"redfish_system_id\": \"x\", \"ipmi_username\"",
        ),
        4,
        49,
        "n1.driver_info.redfish_system_id",
        "does not apply to driver ipmi",
    );
}

#[test]
fn bifrost_unsupported_driver() {
    rejects(
        &BIFROST.replace("\"driver\": \"ipmi\"", "\"driver\": \"idrac\""),
        3,
        15,
        "n1.driver",
        "unsupported driver 'idrac'",
    );
}

#[test]
fn bifrost_bad_netmask() {
    rejects(&BIFROST.replace("\"driver\": \"ipmi\",", "\"driver\": \"ipmi\", \"ipv4_address\": \"10.0.0.9\", \"ipv4_subnet_mask\": \"255.0.255.0\","), 3, 71, "n1.ipv4_subnet_mask", "not a contiguous netmask");
}

#[test]
fn bifrost_ram_not_a_number() {
    rejects(
        &BIFROST.replace(
            "\"driver\": \"ipmi\",",
            "\"driver\": \"ipmi\", \"properties\": {\"ram\": \"lots\"},",
        ),
        3,
        45,
        "n1.properties.ram",
        "expected a whole number",
    );
}

#[test]
fn bifrost_duplicate_mac_across_nodes() {
    let two = BIFROST.replacen("\n}\n", ",\n  \"n2\": {\"driver\": \"ipmi\", \"driver_info\": {\"ipmi_address\": \"10.0.0.2\", \"ipmi_username\": \"u\", \"ipmi_password\": \"p\"}, \"nics\": [{\"mac\": \"52:54:00:00:00:01\"}]}\n}\n", 1);
    rejects(&two, 7, 134, "n2.nics[0].mac", "duplicate MAC");
}
