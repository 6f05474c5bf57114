//! `kiln sim`: a rack of simulated servers in one process, driven by Kiln through its real code
//! paths. Each server has a BMC (a System of one Redfish service, or its own IPMI lanplus
//! endpoint — the same faces `kiln vbmc` gives QEMU VMs), boots from the network speaking real
//! DHCP, TFTP and HTTP to Kiln from its own MAC, runs Kiln's real agent against a simulated disk
//! (a sparse file) and hardware tree, and after "rebooting" to disk serves a simulated Docker
//! Engine with the TLS identity from its config drive, so the container deployer runs at rack
//! scale. A timing model ([`timing`]) makes runs realistic or as fast as possible.
//!
//! Network safety: DHCP goes out of `--interface` only (SO_BINDTODEVICE), which must be an
//! interface of a network namespace built for the simulation (`kiln lab up --sim N` makes one).

pub mod dhcp;
pub mod disk;
pub mod docker_api;
pub mod firmware;
pub mod node;
pub mod plan;
pub mod tftp;
pub mod timing;

use crate::bmc::vbmc::{self, Machine, Vbmc};
use crate::model::Secret;
use node::{Phase, Shared, SimServer};
use plan::{Layout, SimBmc};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use timing::Timing;
use tokio_util::sync::CancellationToken;

/// How often the simulator logs where its servers are.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub layout: Layout,
    /// The interface DHCP goes out of and node addresses are added to.
    pub interface: String,
    pub username: String,
    pub password: Secret,
    /// One directory per server: its hardware tree and disk file.
    pub state_dir: PathBuf,
    /// Write the rack inventory here.
    pub inventory_out: Option<PathBuf>,
    /// Prepare this files root for Kiln (the sim's OS image; placeholder deploy kernel/ramdisk).
    pub files_root: Option<PathBuf>,
    pub timing: Timing,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the DHCP socket on {interface}")]
    Dhcp {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen for {what} on {address}")]
    Listen {
        what: &'static str,
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("building the HTTP client")]
    Http(#[from] reqwest::Error),
    #[error("serving the BMCs")]
    Serve(#[source] std::io::Error),
}

fn io(action: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> SimError {
    let path = path.to_path_buf();
    move |source| SimError::Io {
        action,
        path,
        source,
    }
}

/// "120 OS up · 10 agent · 4 network boot"
pub fn summary(phases: &[Phase]) -> String {
    let mut counts: BTreeMap<Phase, usize> = BTreeMap::new();
    for phase in phases {
        *counts.entry(*phase).or_default() += 1;
    }
    let mut parts: Vec<(Phase, usize)> = counts.into_iter().collect();
    parts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    parts
        .iter()
        .map(|(phase, n)| format!("{n} {}", phase.label()))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// Runs the rack until `shutdown`; every server is off afterwards and the addresses it added are
/// removed from the interface.
pub async fn run(config: SimConfig, shutdown: CancellationToken) -> Result<(), SimError> {
    let nodes = plan::nodes(&config.layout)?;
    if let Some(root) = &config.files_root {
        let record = disk::prepare_files_root(root).map_err(io("prepare the files root", root))?;
        tracing::info!(files_root = %root.display(), image = %record.name, bytes = record.size, "sim image in the catalog");
    }
    if let Some(out) = &config.inventory_out {
        let text = plan::rack_inventory(
            &config.layout,
            &nodes,
            &config.username,
            config.password.expose(),
        );
        write_private(out, &text).map_err(io("write", out))?;
        tracing::info!(inventory = %out.display(), nodes = nodes.len(), "rack inventory written");
    }
    std::fs::create_dir_all(&config.state_dir).map_err(io("create", &config.state_dir))?;

    accept_local_sources(&config.interface)?;
    let dhcp = dhcp::DhcpLink::bind(&config.interface).map_err(|source| SimError::Dhcp {
        interface: config.interface.clone(),
        source,
    })?;
    let shared = Arc::new(Shared::new(
        dhcp,
        config.interface.clone(),
        config.timing.clone(),
    )?);
    let mut servers = Vec::new();
    let mut ipmi_sockets: Vec<(tokio::net::UdpSocket, Arc<dyn Machine>)> = Vec::new();
    let mut redfish: Vec<Arc<dyn Machine>> = Vec::new();
    let mut ipmi_count = 0;
    for node in nodes {
        let dir = disk::node_dir(&config.state_dir, &node);
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let bmc = node.bmc.clone();
        let server = Arc::new(SimServer::new(node, Arc::clone(&shared), dir));
        redfish.push(Arc::clone(&server) as Arc<dyn Machine>);
        match bmc {
            SimBmc::Redfish => {}
            SimBmc::Ipmi(address) => {
                let socket = tokio::net::UdpSocket::bind(address)
                    .await
                    .map_err(|source| SimError::Listen {
                        what: "IPMI",
                        address,
                        source,
                    })?;
                ipmi_sockets.push((socket, Arc::clone(&server) as Arc<dyn Machine>));
                ipmi_count += 1;
            }
        }
        servers.push(server);
    }
    let address = config.layout.redfish_listen;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| SimError::Listen {
            what: "Redfish",
            address,
            source,
        })?;
    tracing::info!(
        servers = servers.len(),
        ipmi = ipmi_count,
        interface = %config.interface,
        "sim ready"
    );
    let summary_task = {
        let servers = servers.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut last = String::new();
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(SUMMARY_EVERY) => {}
                }
                let phases: Vec<Phase> = servers.iter().map(|s| s.ctx.phase()).collect();
                let line = summary(&phases);
                if line != last {
                    tracing::info!("sim: {line}");
                    last = line;
                }
            }
        })
    };
    let vbmc = Arc::new(Vbmc::new(
        config.username.clone(),
        config.password.clone(),
        redfish,
    ));
    // IPMI servers are Systems of the Redfish service too (as on a BMC that speaks both), so one
    // place lists the whole rack; the inventory drives them over IPMI.
    let served = vbmc::serve(vbmc, listener, ipmi_sockets, shutdown.clone()).await;
    for server in &servers {
        server.retire(Duration::ZERO).await;
    }
    summary_task.abort();
    for address in shared.added_addresses() {
        let _ = tokio::process::Command::new("ip")
            .args([
                "addr",
                "del",
                &format!("{address}/32"),
                "dev",
                &config.interface,
            ])
            .output()
            .await;
    }
    tracing::info!("sim stopped; every simulated server is off");
    served.map_err(SimError::Serve)
}

/// The simulated servers' addresses live in the same namespace as Kiln's, so Kiln's replies
/// arrive on the interface from an address that is local: accept those there (the kernel drops
/// them as martians otherwise). Only this interface of this namespace changes.
fn accept_local_sources(interface: &str) -> Result<(), SimError> {
    for (knob, value) in [("accept_local", "1"), ("rp_filter", "0")] {
        let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{interface}/{knob}"));
        std::fs::write(&path, value).map_err(io("set", &path))?;
    }
    Ok(())
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_phases_largest_first() {
        let phases = [
            Phase::Os,
            Phase::Ramdisk,
            Phase::Os,
            Phase::NetworkBoot,
            Phase::Os,
        ];
        assert_eq!(summary(&phases), "3 OS up · 1 network boot · 1 agent");
        assert_eq!(summary(&[]), "");
    }
}
