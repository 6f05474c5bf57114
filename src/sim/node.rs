//! One simulated server: its BMC-visible state (power, boot device) and its life between power
//! events — POST, network boot or disk boot, then the deploy agent (Kiln's real agent code on the
//! simulated hardware and disk) or the installed OS (a simulated Docker Engine with the node's
//! own TLS identity from its config drive). A power change ends the current life at once.

use super::dhcp::{Asker, DhcpError, DhcpLink, Lease};
use super::disk::{self, OsConfig};
use super::docker_api::{self, EngineTiming, SimDocker};
use super::firmware::{self, BootError, Booted};
use super::plan::SimNode;
use super::timing::Timing;
use crate::agent::runner::AgentEnv;
use crate::bmc::vbmc::Machine;
use crate::bmc::{BmcError, BootDevice, BootSetting, PowerState};
use async_trait::async_trait;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What every simulated server shares.
pub struct Shared {
    pub dhcp: Arc<DhcpLink>,
    pub http: reqwest::Client,
    /// Where node addresses are added when a server gets one (DHCP or its OS's static address).
    pub interface: String,
    pub timing: Timing,
    added: Mutex<HashSet<Ipv4Addr>>,
}

impl Shared {
    pub fn new(
        dhcp: Arc<DhcpLink>,
        interface: String,
        timing: Timing,
    ) -> Result<Shared, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(4)
            .build()?;
        Ok(Shared {
            dhcp,
            http,
            interface,
            timing,
            added: Mutex::default(),
        })
    }

    /// Every address added so far (removed again when the simulator stops).
    pub fn added_addresses(&self) -> Vec<Ipv4Addr> {
        self.added
            .lock()
            .map(|a| a.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// Where a server is, for the simulator's summary line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Off,
    Post,
    NetworkBoot,
    Ramdisk,
    OsBoot,
    Os,
    NoBootDevice,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Off => "off",
            Phase::Post => "POST",
            Phase::NetworkBoot => "network boot",
            Phase::Ramdisk => "agent",
            Phase::OsBoot => "OS booting",
            Phase::Os => "OS up",
            Phase::NoBootDevice => "no boot device",
        }
    }
}

/// A server's identity and its connections to the world, used by its lives.
pub struct NodeContext {
    pub node: SimNode,
    pub shared: Arc<Shared>,
    pub dir: PathBuf,
    phase: Mutex<Phase>,
    /// The engine of the installed OS, kept across reboots, by deploy generation.
    engine: Mutex<Option<(String, Arc<SimDocker>)>>,
}

impl NodeContext {
    pub fn say(&self, message: impl std::fmt::Display) {
        tracing::info!(server = %self.node.name, "{message}");
    }

    pub fn phase(&self) -> Phase {
        self.phase.lock().map(|p| *p).unwrap_or(Phase::Off)
    }

    fn set_phase(&self, phase: Phase) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase;
        }
    }

    pub fn disk_path(&self) -> PathBuf {
        self.dir.join("disk.img")
    }

    /// The current OS engine, if the server ever booted one.
    pub fn engine(&self) -> Option<Arc<SimDocker>> {
        self.engine
            .lock()
            .ok()
            .and_then(|e| e.as_ref().map(|(_, e)| Arc::clone(e)))
    }

    pub async fn dhcp_lease(&self, asker: Asker, wait: Duration) -> Result<Lease, DhcpError> {
        if Timing::happens(self.shared.timing.boot_failure_rate) {
            // The firmware's DISCOVER is lost: it waits, as a real PXE ROM does, and says so.
            tokio::time::sleep(wait).await;
            return Err(DhcpError::NoOffer(wait));
        }
        let mac = self
            .node
            .mac
            .parse()
            .map_err(|_| DhcpError::Encode(format!("bad MAC {}", self.node.mac)))?;
        let lease = self.shared.dhcp.lease(mac, asker, wait).await?;
        self.say(format!(
            "DHCP ({asker:?}): {}/{}",
            lease.address, lease.prefix
        ));
        Ok(lease)
    }

    /// Puts the server's address on the simulator's interface (once), so Kiln can reach it.
    pub async fn add_address(&self, lease: &Lease) -> Result<(), BootError> {
        self.ensure_address(lease.address, lease.prefix).await
    }

    async fn ensure_address(&self, address: Ipv4Addr, prefix: u8) -> Result<(), BootError> {
        let fresh = self
            .shared
            .added
            .lock()
            .map(|mut a| a.insert(address))
            .unwrap_or(false);
        if !fresh {
            return Ok(());
        }
        let cidr = format!("{address}/{prefix}");
        let out = tokio::process::Command::new("ip")
            .args(["addr", "add", &cidr, "dev", &self.shared.interface])
            .output()
            .await;
        let failed = |message: String| BootError::Address {
            address: cidr.clone(),
            interface: self.shared.interface.clone(),
            message,
        };
        match out {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                if stderr.contains("File exists") {
                    return Ok(());
                }
                if let Ok(mut a) = self.shared.added.lock() {
                    a.remove(&address);
                }
                Err(failed(stderr.trim().to_string()))
            }
            Err(e) => Err(failed(e.to_string())),
        }
    }

    async fn get(&self, url: &str) -> Result<reqwest::Response, BootError> {
        let http_err = |source| BootError::Http {
            url: url.to_string(),
            source,
        };
        let response = self.shared.http.get(url).send().await.map_err(http_err)?;
        if !response.status().is_success() {
            return Err(BootError::Status {
                url: url.to_string(),
                status: response.status().as_u16(),
            });
        }
        Ok(response)
    }

    pub async fn get_text(&self, url: &str) -> Result<String, BootError> {
        self.get(url)
            .await?
            .text()
            .await
            .map_err(|source| BootError::Http {
                url: url.to_string(),
                source,
            })
    }

    /// Downloads a body and counts it (a kernel or ramdisk the simulator does not run).
    pub async fn get_count(&self, url: &str) -> Result<u64, BootError> {
        let mut response = self.get(url).await?;
        let mut total = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|source| BootError::Http {
            url: url.to_string(),
            source,
        })? {
            total += chunk.len() as u64;
        }
        Ok(total)
    }
}

/// An error and its causes on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

struct PowerAndBoot {
    on: bool,
    boot: BootDevice,
    persistent: bool,
    retired: bool,
    /// The current life: its task and the token that ends what it serves.
    life: Option<(tokio::task::JoinHandle<()>, CancellationToken)>,
}

pub struct SimServer {
    pub ctx: Arc<NodeContext>,
    state: tokio::sync::Mutex<PowerAndBoot>,
}

impl SimServer {
    pub fn new(node: SimNode, shared: Arc<Shared>, dir: PathBuf) -> SimServer {
        SimServer {
            ctx: Arc::new(NodeContext {
                node,
                shared,
                dir,
                phase: Mutex::new(Phase::Off),
                engine: Mutex::default(),
            }),
            state: tokio::sync::Mutex::new(PowerAndBoot {
                on: false,
                boot: BootDevice::Disk,
                persistent: true,
                retired: false,
                life: None,
            }),
        }
    }

    async fn bmc_call(&self) -> Result<(), BmcError> {
        let timing = &self.ctx.shared.timing;
        if !timing.bmc_latency.is_zero() {
            tokio::time::sleep(timing.bmc_latency).await;
        }
        if Timing::happens(timing.bmc_failure_rate) {
            return Err(BmcError::Protocol("simulated BMC failure".into()));
        }
        Ok(())
    }

    fn end_life(state: &mut PowerAndBoot) {
        if let Some((task, token)) = state.life.take() {
            token.cancel();
            task.abort();
        }
    }

    fn start_life(&self, state: &mut PowerAndBoot) {
        let device = state.boot;
        if !state.persistent {
            state.boot = BootDevice::Disk;
            state.persistent = true;
        }
        let token = CancellationToken::new();
        let ctx = Arc::clone(&self.ctx);
        let task = tokio::spawn(life(ctx, device, token.clone()));
        state.life = Some((task, token));
        state.on = true;
    }
}

#[async_trait]
impl Machine for SimServer {
    fn name(&self) -> &str {
        &self.ctx.node.name
    }

    fn uefi(&self) -> bool {
        self.ctx.node.uefi
    }

    async fn power_state(&self) -> PowerState {
        if self.state.lock().await.on {
            PowerState::On
        } else {
            PowerState::Off
        }
    }

    async fn boot_setting(&self) -> BootSetting {
        let state = self.state.lock().await;
        BootSetting {
            device: Some(state.boot),
            persistent: state.persistent,
            uefi: Some(self.ctx.node.uefi),
        }
    }

    async fn set_boot(&self, device: BootDevice, persistent: bool) {
        let mut state = self.state.lock().await;
        state.boot = device;
        state.persistent = persistent;
    }

    async fn power_on(&self) -> Result<(), BmcError> {
        self.bmc_call().await?;
        let mut state = self.state.lock().await;
        if state.retired {
            return Err(BmcError::Protocol("the simulator is shutting down".into()));
        }
        if !state.on {
            self.start_life(&mut state);
        }
        Ok(())
    }

    async fn power_off(&self) -> Result<(), BmcError> {
        self.bmc_call().await?;
        let mut state = self.state.lock().await;
        Self::end_life(&mut state);
        state.on = false;
        self.ctx.set_phase(Phase::Off);
        Ok(())
    }

    async fn soft_off(&self) -> Result<(), BmcError> {
        self.power_off().await
    }

    async fn reset(&self) -> Result<(), BmcError> {
        self.bmc_call().await?;
        let mut state = self.state.lock().await;
        if state.retired {
            return Err(BmcError::Protocol("the simulator is shutting down".into()));
        }
        Self::end_life(&mut state);
        self.start_life(&mut state);
        Ok(())
    }

    async fn retire(&self, _grace: Duration) {
        let mut state = self.state.lock().await;
        state.retired = true;
        Self::end_life(&mut state);
        state.on = false;
        self.ctx.set_phase(Phase::Off);
    }
}

/// From power-on (or reset) until the next power event.
async fn life(ctx: Arc<NodeContext>, device: BootDevice, token: CancellationToken) {
    let timing = ctx.shared.timing.clone();
    ctx.set_phase(Phase::Post);
    tokio::time::sleep(timing.post).await;
    let booted = match device {
        BootDevice::Disk => Booted::LocalDisk,
        BootDevice::Pxe => {
            ctx.set_phase(Phase::NetworkBoot);
            loop {
                match firmware::network_boot(&ctx).await {
                    Ok(booted) => break booted,
                    Err(err) => {
                        ctx.say(format!("network boot failed: {}; retrying", chain(&err)));
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
        }
    };
    match booted {
        Booted::Ramdisk(args) => {
            tokio::time::sleep(timing.ramdisk_boot).await;
            ctx.set_phase(Phase::Ramdisk);
            run_agent(&ctx, &args).await;
        }
        Booted::LocalDisk => run_os(&ctx, token).await,
    }
    std::future::pending::<()>().await;
}

/// Kiln's real agent, on the simulated hardware tree and disk file.
async fn run_agent(ctx: &NodeContext, kernel_args: &str) {
    let args = match crate::agent::cmdline::parse(kernel_args) {
        Ok(args) => args,
        Err(err) => {
            ctx.say(format!(
                "the ramdisk cannot read its kernel arguments: {err}"
            ));
            return;
        }
    };
    let hardware = ctx.dir.join("hardware");
    let roots = match disk::write_hardware(&hardware, &ctx.node) {
        Ok(roots) => roots,
        Err(err) => {
            ctx.say(format!("cannot write the simulated hardware tree: {err}"));
            return;
        }
    };
    let env = AgentEnv {
        roots,
        target_override: Some(ctx.disk_path()),
        write_rate: ctx.shared.timing.disk_bytes_per_sec,
    };
    ctx.say("deploy ramdisk up; the agent calls back");
    if let Err(err) = crate::agent::runner::run(args, env).await {
        ctx.say(format!("agent stopped: {}", chain(&err)));
    }
}

/// The installed OS: the config drive says who the server is; its Docker Engine then answers.
async fn run_os(ctx: &NodeContext, token: CancellationToken) {
    ctx.set_phase(Phase::OsBoot);
    let disk = ctx.disk_path();
    let os = tokio::task::spawn_blocking(move || disk::read_os(&disk)).await;
    let os: OsConfig = match os {
        Ok(Ok(Some(os))) => os,
        Ok(Ok(None)) => {
            ctx.set_phase(Phase::NoBootDevice);
            ctx.say("no bootable disk (no partition table or config drive)");
            return;
        }
        Ok(Err(err)) => {
            ctx.set_phase(Phase::NoBootDevice);
            ctx.say(format!("cannot read the disk: {err}"));
            return;
        }
        Err(err) => {
            ctx.say(format!("disk reader died: {err}"));
            return;
        }
    };
    tokio::time::sleep(ctx.shared.timing.os_boot).await;
    let (address, prefix) = os.address.unwrap_or((ctx.node.address, 16));
    if let Err(err) = ctx.ensure_address(address, prefix).await {
        ctx.say(format!(
            "the OS cannot configure its network: {}",
            chain(&err)
        ));
        return;
    }
    let engine = {
        let Ok(mut slot) = ctx.engine.lock() else {
            return;
        };
        match slot.as_ref() {
            Some((generation, engine)) if *generation == os.generation => Arc::clone(engine),
            _ => {
                let timing = &ctx.shared.timing;
                let engine = SimDocker::new(
                    &os.hostname,
                    EngineTiming {
                        pull: timing.pull,
                        health_delay: timing.health_delay,
                    },
                );
                *slot = Some((os.generation.clone(), Arc::clone(&engine)));
                engine
            }
        }
    };
    let port = if os.tls.is_some() { 2376 } else { 2375 };
    let listener = match tokio::net::TcpListener::bind((address, port)).await {
        Ok(listener) => listener,
        Err(err) => {
            ctx.say(format!("dockerd cannot listen on {address}:{port}: {err}"));
            return;
        }
    };
    ctx.set_phase(Phase::Os);
    ctx.say(format!(
        "OS up as {}; Docker Engine on {address}:{port}",
        os.hostname
    ));
    let served = match os.tls {
        Some(tls) => docker_api::serve_tls(listener, engine, tls, token).await,
        None => docker_api::serve_plain(listener, engine, token).await,
    };
    if let Err(err) = served {
        ctx.say(format!("dockerd stopped: {}", chain(&err)));
    }
}
