//! `kiln lab up --sim`: the virtual rack with simulated servers (`kiln sim`) in place of QEMU
//! VMs — hundreds of them on one small machine. The namespace gets the bridge (a /16) and one
//! veth pair: `sim0`, where the simulator's servers send DHCP and hold their addresses, and its
//! peer on the bridge, where Kiln serves. The simulator runs where the vbmc would (same pid
//! and log files, same Redfish address), so `status` and `down` treat both labs alike.

use super::plan::{self, LabVm};
use super::up::{Lab, UpOptions, start, write_file};
use super::{DAEMON, LabError, PASSWORD_FILE, RACK, Record, VBMC, host, host_error, io};
use crate::sim::plan::{Layout, SimNode};
use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::Path;

pub const BRIDGE_ADDRESS: &str = "10.66.0.1/16";
pub const INTERFACE: &str = "sim0";
const BRIDGE_PORT: &str = "sim0-br";

/// The simulated rack's layout inside a lab (what `kiln sim` is told with flags below).
pub fn layout(nodes: u32) -> Layout {
    Layout {
        nodes,
        name_prefix: "sim".into(),
        first_address: Ipv4Addr::new(10, 66, 1, 1),
        prefix: 16,
        uefi_every: 2,
        ipmi_every: 4,
        redfish_listen: plan::REDFISH_LISTEN
            .parse()
            .unwrap_or_else(|_| ([127, 0, 0, 1], 8000).into()),
        ipmi_address: Ipv4Addr::LOCALHOST,
        ipmi_base_port: 7000,
        control_nodes: 3,
    }
}

fn as_lab_vm(node: SimNode) -> LabVm {
    LabVm {
        name: node.name,
        mac: node.mac,
        tap: INTERFACE.to_string(),
        address: node.address,
        uefi: node.uefi,
        roles: node.roles,
    }
}

/// The servers of a simulated lab of `nodes`, as the lab lists its machines.
pub fn vms(nodes: u32) -> Result<Vec<LabVm>, LabError> {
    let nodes =
        crate::sim::plan::nodes(&layout(nodes)).map_err(|e| LabError::Sim(e.to_string()))?;
    Ok(nodes.into_iter().map(as_lab_vm).collect())
}

pub(super) fn build(
    options: &UpOptions,
    record: &Record,
    dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Lab, LabError> {
    let vms = vms(options.nodes)?;
    let name = &record.name;
    progress(&format!(
        "namespace {name}: bridge {} {BRIDGE_ADDRESS}, veth {INTERFACE} for {} simulated servers",
        plan::BRIDGE,
        vms.len()
    ));
    host::build_network(name, plan::BRIDGE, BRIDGE_ADDRESS, &[])
        .map_err(host_error(format!("build network namespace {name}")))?;
    let ip = |args: &[&str]| {
        let mut full = vec!["-n", name.as_str()];
        full.extend_from_slice(args);
        host::run("ip", &full).map(drop)
    };
    ip(&[
        "link",
        "add",
        INTERFACE,
        "type",
        "veth",
        "peer",
        "name",
        BRIDGE_PORT,
    ])
    .and_then(|()| ip(&["link", "set", BRIDGE_PORT, "master", plan::BRIDGE, "up"]))
    .and_then(|()| ip(&["link", "set", INTERFACE, "up"]))
    .map_err(host_error(format!("add the simulator's veth in {name}")))?;

    // IPMI passwords are at most 20 bytes.
    let password: String = super::up::random_password().chars().take(16).collect();
    let password_file = dir.join(PASSWORD_FILE);
    write_file(&password_file, &format!("{password}\n"), 0o600)?;
    let files_root = &record.files_root;
    std::fs::create_dir_all(files_root).map_err(io("create", files_root))?;
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).map_err(io("create", &data_dir))?;
    let rack = dir.join(RACK);
    let state_dir = dir.join("sim");
    let layout = layout(options.nodes);
    let nodes = options.nodes.to_string();

    progress(&format!(
        "starting kiln sim ({} servers; Redfish on {} in the namespace)",
        vms.len(),
        layout.redfish_listen
    ));
    let sim_pid = start(
        name,
        dir,
        &options.kiln,
        &VBMC,
        &[
            OsStr::new("sim"),
            OsStr::new("--nodes"),
            OsStr::new(&nodes),
            OsStr::new("--interface"),
            OsStr::new(INTERFACE),
            OsStr::new("--password-file"),
            password_file.as_os_str(),
            OsStr::new("--state-dir"),
            state_dir.as_os_str(),
            OsStr::new("--inventory-out"),
            rack.as_os_str(),
            OsStr::new("--files-root"),
            files_root.as_os_str(),
            OsStr::new("--timing"),
            OsStr::new(&options.sim_timing),
        ],
    )?;
    // Every node deploys at once (the rehearsal's point), unless KILN_DEPLOY_PARALLEL caps it
    // as it would on a real appliance (default 64): the daemon's memory grows with concurrent
    // image downloads (a 256 KiB chunk in flight each), not with enrolled nodes.
    let parallel = std::env::var("KILN_DEPLOY_PARALLEL")
        .ok()
        .filter(|v| v.parse::<usize>().is_ok_and(|n| n > 0))
        .unwrap_or_else(|| nodes.clone());
    progress(&format!(
        "starting the Kiln daemon (API 127.0.0.1:6385, boot services on br0, {parallel} deploys at once)"
    ));
    let daemon_pid = start(
        name,
        dir,
        &options.kiln,
        &DAEMON,
        &[
            OsStr::new("--data-dir"),
            data_dir.as_os_str(),
            OsStr::new("serve"),
            OsStr::new("--listen"),
            OsStr::new(plan::API_LISTEN),
            OsStr::new("--boot-interface"),
            OsStr::new(plan::BRIDGE),
            OsStr::new("--files-root"),
            files_root.as_os_str(),
            OsStr::new("--deploy-parallel"),
            OsStr::new(&parallel),
            OsStr::new("--agent-heartbeat"),
            OsStr::new("1"),
        ],
    )?;
    Ok(Lab {
        name: name.clone(),
        dir: dir.to_path_buf(),
        vms,
        daemon_pid,
        vbmc_pid: sim_pid,
        data_dir,
        rack,
        ssh_key: None,
        api_url: format!("http://{}", plan::API_LISTEN),
        redfish_url: format!("http://{}", plan::REDFISH_LISTEN),
        bmc_password_file: password_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_layout_fits_134_and_1000_servers() {
        let small = vms(134).unwrap();
        assert_eq!(small.len(), 134);
        assert_eq!(small[0].roles, ["control", "network"]);
        assert!(small.iter().all(|vm| vm.tap == INTERFACE));
        assert_eq!(vms(1000).unwrap().len(), 1000);
        assert!(vms(0).is_err());
    }
}
