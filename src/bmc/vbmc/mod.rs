//! `kiln vbmc`: virtual BMCs for QEMU VMs (what VirtualBMC + sushy-tools do, without libvirt).
//! One Redfish endpoint serves every VM as a System; power is the QEMU process, the boot device
//! becomes its boot order. The virtual rack and the end-to-end tests drive VMs through it with the
//! same drivers as real hardware.

pub mod ipmi_server;
mod launcher;
pub mod machine;
pub mod redfish_server;
pub mod vm;

use crate::inventory::reader::Reader;
use crate::inventory::{InventoryError, tree};
use crate::model::Secret;
pub use machine::Machine;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vm::{VirtualMachine, VmSpec};

/// How long QEMU has to exit on SIGTERM at vbmc shutdown before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long requests still in flight at shutdown may take to finish (the VMs are already off).
const DRAIN: Duration = Duration::from_secs(1);

/// One BMC service: the credentials and the machines it controls, by Redfish system id.
pub struct Vbmc {
    pub username: String,
    pub password: Secret,
    machines: BTreeMap<String, Arc<dyn Machine>>,
}

impl Vbmc {
    pub fn new(username: String, password: Secret, machines: Vec<Arc<dyn Machine>>) -> Self {
        let machines = machines
            .into_iter()
            .map(|machine| (machine.name().to_string(), machine))
            .collect();
        Self {
            username,
            password,
            machines,
        }
    }

    pub fn vm(&self, name: &str) -> Option<&Arc<dyn Machine>> {
        self.machines.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.machines.keys().cloned().collect()
    }

    /// Stops every machine, all at once, and keeps each off from then on. Bounded by
    /// [`SHUTDOWN_GRACE`] plus a SIGKILL, so it is done before a supervisor that escalates to
    /// SIGKILL after a few seconds (the test kit's `ChildGuard` waits 5 s) loses patience.
    pub async fn shutdown(&self) {
        let mut stopping = tokio::task::JoinSet::new();
        for machine in self.machines.values() {
            let machine = Arc::clone(machine);
            stopping.spawn(async move { machine.retire(SHUTDOWN_GRACE).await });
        }
        while stopping.join_next().await.is_some() {}
    }
}

/// `kiln vbmc --config FILE`, see `examples/vbmc.yaml`.
#[derive(Clone, Debug)]
pub struct VbmcConfig {
    pub redfish_listen: SocketAddr,
    pub username: String,
    pub password: Secret,
    pub vms: Vec<VmSpec>,
}

const TOP: &[&str] = &[
    "redfish_listen",
    "username",
    "password",
    "netns",
    "state_dir",
    "vms",
];
const VM: &[&str] = &[
    "name",
    "mac",
    "tap",
    "disk",
    "memory_mb",
    "uefi",
    "ipmi_listen",
];

pub fn load_config(path: &Path) -> Result<VbmcConfig, Vec<InventoryError>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![InventoryError::new(
            &name,
            Default::default(),
            "",
            format!("cannot read file: {e}"),
        )]
    })?;
    parse_config(&name, &text)
}

pub fn parse_config(file: &str, text: &str) -> Result<VbmcConfig, Vec<InventoryError>> {
    let root = tree::parse(file, text)?;
    let mut reader = Reader::new(file);
    let config = read(&mut reader, &root);
    match config {
        Some(config) if reader.errors.is_empty() => Ok(config),
        _ => Err(reader.errors),
    }
}

fn read(reader: &mut Reader, root: &tree::Node) -> Option<VbmcConfig> {
    let top = reader.map(root, "", TOP)?;
    let listen = reader.required(&top, "redfish_listen").and_then(|n| {
        let text = reader.text(n, "redfish_listen")?;
        text.parse()
            .map_err(|_| {
                reader.error(
                    n.pos,
                    "redfish_listen",
                    format!("'{text}' is not address:port"),
                )
            })
            .ok()
    });
    let username = reader
        .required(&top, "username")
        .and_then(|n| reader.text(n, "username"));
    let password = reader
        .required(&top, "password")
        .and_then(|n| reader.text(n, "password"));
    let netns = top.get("netns").and_then(|n| reader.text(n, "netns"));
    let state_dir = top
        .get("state_dir")
        .and_then(|n| reader.text(n, "state_dir"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/kiln-vbmc"));
    let items = reader
        .required(&top, "vms")
        .and_then(|n| reader.list(n, "vms"))?;
    let mut vms = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let path = format!("vms[{index}]");
        let Some(map) = reader.map(item, &path, VM) else {
            continue;
        };
        let name = reader
            .required(&map, "name")
            .and_then(|n| reader.text(n, &map.child("name")));
        let mac = reader
            .required(&map, "mac")
            .and_then(|n| reader.mac(n, &map.child("mac")));
        let tap = reader
            .required(&map, "tap")
            .and_then(|n| reader.text(n, &map.child("tap")));
        let disk = map
            .get("disk")
            .and_then(|n| reader.text(n, &map.child("disk")))
            .map(PathBuf::from);
        let memory_mb = map.get("memory_mb").map_or(Some(1024), |n| {
            reader
                .int(n, &map.child("memory_mb"), 64, 1 << 20)
                .map(|m| m as u32)
        });
        let uefi = map
            .get("uefi")
            .map_or(Some(false), |n| reader.bool(n, &map.child("uefi")));
        let ipmi_listen = match map.get("ipmi_listen") {
            None => Some(None),
            Some(n) => {
                reader
                    .text(n, &map.child("ipmi_listen"))
                    .and_then(|text| match text.parse() {
                        Ok(addr) => Some(Some(addr)),
                        Err(_) => {
                            reader.error(
                                n.pos,
                                &map.child("ipmi_listen"),
                                format!("'{text}' is not address:port"),
                            );
                            None
                        }
                    })
            }
        };
        if let (Some(name), Some(mac), Some(tap), Some(memory_mb), Some(uefi), Some(ipmi_listen)) =
            (name, mac, tap, memory_mb, uefi, ipmi_listen)
        {
            vms.push(VmSpec {
                name,
                mac: mac.to_string(),
                tap,
                disk,
                memory_mb,
                uefi,
                netns: netns.clone(),
                state_dir: state_dir.clone(),
                ipmi_listen,
            });
        }
    }
    Some(VbmcConfig {
        redfish_listen: listen?,
        username: username?,
        password: Secret::new(password?),
        vms,
    })
}

/// Serves until `shutdown`, then stops every VM: Redfish for every VM, and an IPMI lanplus
/// endpoint for each VM with `ipmi_listen`. Every socket is bound before anything is served, so a
/// taken port fails the start instead of leaving a VM without its BMC.
pub async fn run(
    config: VbmcConfig,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    if let Some(dir) = config.vms.first().map(|vm| vm.state_dir.clone()) {
        std::fs::create_dir_all(dir)?;
    }
    let vms: Vec<Arc<VirtualMachine>> = config
        .vms
        .into_iter()
        .map(|spec| Arc::new(VirtualMachine::new(spec)))
        .collect();
    let listener = tokio::net::TcpListener::bind(config.redfish_listen).await?;
    let mut sockets: Vec<(tokio::net::UdpSocket, Arc<dyn Machine>)> = Vec::new();
    for vm in &vms {
        let Some(address) = vm.spec.ipmi_listen else {
            continue;
        };
        let name = &vm.spec.name;
        let socket = tokio::net::UdpSocket::bind(address).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("IPMI {address} for {name}: {e}"))
        })?;
        tracing::info!(address = %socket.local_addr()?, vm = %name, "vbmc IPMI listening");
        sockets.push((socket, Arc::clone(vm) as Arc<dyn Machine>));
    }
    let machines = vms.into_iter().map(|vm| vm as Arc<dyn Machine>).collect();
    let vbmc = Arc::new(Vbmc::new(config.username, config.password, machines));
    serve(vbmc, listener, sockets, shutdown).await?;
    tracing::info!("vbmc stopped; every VM it started is off");
    Ok(())
}

/// Serves the Redfish face on `listener` (every machine a System) and an IPMI lanplus endpoint
/// on each socket until `shutdown`, then stops every machine. Shared by `kiln vbmc` and `kiln sim`.
pub async fn serve(
    vbmc: Arc<Vbmc>,
    listener: tokio::net::TcpListener,
    ipmi_sockets: Vec<(tokio::net::UdpSocket, Arc<dyn Machine>)>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let mut ipmi = tokio::task::JoinSet::new();
    for (socket, vm) in ipmi_sockets {
        ipmi.spawn(ipmi_server::run(
            socket,
            vm,
            vbmc.username.clone(),
            vbmc.password.clone(),
            shutdown.clone(),
        ));
    }
    tracing::info!(address = %listener.local_addr()?, vms = vbmc.names().len(), "vbmc Redfish listening");
    let stop = shutdown.clone();
    let serving = axum::serve(listener, redfish_server::router(Arc::clone(&vbmc)))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .into_future();
    let mut serving = std::pin::pin!(serving);
    let served = tokio::select! {
        served = &mut serving => served,
        () = shutdown.cancelled() => {
            // VMs first: a graceful drain waits for clients, which must not keep QEMU alive.
            // Retired VMs refuse to power on, so requests still in flight cannot start one.
            vbmc.shutdown().await;
            tokio::time::timeout(DRAIN, serving).await.unwrap_or_else(|_| {
                tracing::warn!(?DRAIN, "vbmc Redfish requests still open at shutdown; dropped");
                Ok(())
            })
        }
    };
    shutdown.cancel();
    while ipmi.join_next().await.is_some() {}
    // Also when serving failed on its own.
    vbmc.shutdown().await;
    served
}
