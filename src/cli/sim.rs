//! `kiln sim`: flags → [`crate::sim::SimConfig`], then the simulated rack until SIGTERM.

use super::{LogFormat, Settings, config, serve};
use crate::model::Secret;
use crate::sim::plan::Layout;
use crate::sim::timing::Timing;
use anyhow::{Context, Result, bail};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct SimOptions {
    /// How many simulated servers.
    #[arg(long, default_value_t = 134)]
    pub nodes: u32,
    /// The interface DHCP goes out of and node addresses are added to: an interface of a
    /// network namespace made for the simulation (never a real one).
    #[arg(long)]
    pub interface: String,
    /// The first server's address; the rest follow (skipping .0 and .255).
    #[arg(long, default_value = "10.66.1.1")]
    pub first_address: Ipv4Addr,
    #[arg(long, default_value_t = 16)]
    pub prefix: u8,
    #[arg(long, default_value = "sim")]
    pub name_prefix: String,
    /// The Redfish service of every server (basic auth).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub redfish_listen: SocketAddr,
    /// Every k-th server has an IPMI lanplus BMC (port --ipmi-base-port + index); 0: none.
    #[arg(long, default_value_t = 4)]
    pub ipmi_every: u32,
    #[arg(long, default_value_t = 7000)]
    pub ipmi_base_port: u16,
    /// Every k-th server boots UEFI; 0: none.
    #[arg(long, default_value_t = 2)]
    pub uefi_every: u32,
    /// How many of the first servers get the `control` role (the rest `compute`).
    #[arg(long, default_value_t = 3)]
    pub control_nodes: u32,
    #[arg(long, default_value = "admin")]
    pub username: String,
    /// File holding the BMC password (first line); never given on the command line.
    #[arg(long)]
    pub password_file: PathBuf,
    /// Per-server state: hardware tree and disk file (sparse).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Write the rack inventory for `kiln deploy-servers` here.
    #[arg(long)]
    pub inventory_out: Option<PathBuf>,
    /// Put the sim's OS image (`sim-os`) and placeholder deploy kernel/ramdisk in this files root.
    #[arg(long)]
    pub files_root: Option<PathBuf>,
    /// Timing preset: `fast` (no delays) or `realistic`.
    #[arg(long, default_value = "fast")]
    pub timing: String,
    /// Multiply the preset's delays by this (e.g. 0.1 for a realistic rack in a tenth of the time).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Overrides, seconds: POST, ramdisk boot, OS boot; milliseconds: BMC latency.
    #[arg(long)]
    pub post_delay: Option<f64>,
    #[arg(long)]
    pub ramdisk_boot_delay: Option<f64>,
    #[arg(long)]
    pub os_boot_delay: Option<f64>,
    #[arg(long)]
    pub bmc_latency_ms: Option<u64>,
    /// Simulated disk speed, MB/s (0: unlimited).
    #[arg(long)]
    pub disk_mb_s: Option<f64>,
    /// Failure probabilities (0..1): per BMC request, per network-boot DHCP attempt.
    #[arg(long)]
    pub bmc_failure_rate: Option<f64>,
    #[arg(long)]
    pub boot_failure_rate: Option<f64>,
}

impl SimOptions {
    pub fn timing(&self) -> Result<Timing> {
        let Some(preset) = Timing::preset(&self.timing) else {
            bail!("--timing must be fast or realistic, not {:?}", self.timing);
        };
        let mut timing = preset.scaled(self.time_scale);
        let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
        if let Some(s) = self.post_delay {
            timing.post = secs(s);
        }
        if let Some(s) = self.ramdisk_boot_delay {
            timing.ramdisk_boot = secs(s);
        }
        if let Some(s) = self.os_boot_delay {
            timing.os_boot = secs(s);
        }
        if let Some(ms) = self.bmc_latency_ms {
            timing.bmc_latency = Duration::from_millis(ms);
        }
        if let Some(rate) = self.disk_mb_s {
            timing.disk_bytes_per_sec = (rate > 0.0).then_some(rate * 1e6);
        }
        for (value, slot) in [
            (self.bmc_failure_rate, &mut timing.bmc_failure_rate),
            (self.boot_failure_rate, &mut timing.boot_failure_rate),
        ] {
            if let Some(rate) = value {
                if !(0.0..=1.0).contains(&rate) {
                    bail!("failure rates are probabilities between 0 and 1, not {rate}");
                }
                *slot = rate;
            }
        }
        Ok(timing)
    }
}

/// Serves until SIGTERM/ctrl-c, then powers every simulated server off.
pub async fn run(
    options: &SimOptions,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
) -> Result<ExitCode> {
    let settings = Settings {
        data_dir: PathBuf::new(),
        api_url: None,
        token: None,
        log_format: log_format.unwrap_or(LogFormat::Text),
        log_level: log_level.unwrap_or_else(|| "info".into()),
        file: config::ConfigFile::default(),
    };
    serve::init_logging(&settings);
    let password = std::fs::read_to_string(&options.password_file)
        .with_context(|| format!("cannot read {}", options.password_file.display()))?;
    let password = password.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        bail!("{} holds no password", options.password_file.display());
    }
    let config = crate::sim::SimConfig {
        layout: Layout {
            nodes: options.nodes,
            name_prefix: options.name_prefix.clone(),
            first_address: options.first_address,
            prefix: options.prefix,
            uefi_every: options.uefi_every,
            ipmi_every: options.ipmi_every,
            redfish_listen: options.redfish_listen,
            ipmi_address: match options.redfish_listen.ip() {
                std::net::IpAddr::V4(v4) => v4,
                std::net::IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
            },
            ipmi_base_port: options.ipmi_base_port,
            control_nodes: options.control_nodes,
        },
        interface: options.interface.clone(),
        username: options.username.clone(),
        password: Secret::new(password),
        state_dir: options.state_dir.clone(),
        inventory_out: options.inventory_out.clone(),
        files_root: options.files_root.clone(),
        timing: options.timing()?,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        serve::wait_for_signal().await;
        stop.cancel();
    });
    crate::sim::run(config, shutdown)
        .await
        .context("kiln sim failed")?;
    Ok(ExitCode::SUCCESS)
}
