//! `kiln serve`: wires the store, the conductor and the API, and shuts them down cleanly.

use super::{LogFormat, Settings};
use crate::api::agent::AgentApiState;
use crate::api::{self, ApiState};
use crate::bmc::guard::GuardPolicy;
use crate::bmc::registry::{Drivers, Registry, run_power_sync};
use crate::conductor::deploy::DeployWorkflow;
use crate::conductor::{BmcProvisioner, Conductor};
use crate::images::ImageCatalog;
use crate::store::Store;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// BMC settings: how often the daemon reads every node's real power state (Ironic's
/// `sync_power_state_interval`, 60 s by default there too) and the guard every BMC call goes
/// through (timeout, retries, spacing, circuit breaker).
#[derive(clap::Args, Debug, Clone)]
pub struct PowerSyncOptions {
    /// Seconds between power-state sync passes; 0 turns the sync off.
    #[arg(
        long = "power-sync-interval",
        env = "KILN_POWER_SYNC_INTERVAL",
        default_value_t = 60
    )]
    pub interval_secs: u64,
    /// BMCs queried at once during a sync pass.
    #[arg(
        long = "power-sync-concurrency",
        env = "KILN_POWER_SYNC_CONCURRENCY",
        default_value_t = 16
    )]
    pub concurrency: usize,
    /// Limit on one BMC call attempt, seconds (a power change's polling included).
    #[arg(long = "bmc-timeout", env = "KILN_BMC_TIMEOUT", default_value_t = 90)]
    pub bmc_timeout_secs: u64,
    /// Attempts per BMC call for transient failures (exponential backoff from 500 ms).
    #[arg(long = "bmc-attempts", env = "KILN_BMC_ATTEMPTS", default_value_t = 3)]
    pub bmc_attempts: u32,
    /// Minimum time between two calls to the same BMC, milliseconds.
    #[arg(
        long = "bmc-min-interval-ms",
        env = "KILN_BMC_MIN_INTERVAL_MS",
        default_value_t = 0
    )]
    pub bmc_min_interval_ms: u64,
    /// Consecutive failed calls after which a BMC is marked unreachable (fails fast).
    #[arg(
        long = "bmc-breaker-threshold",
        env = "KILN_BMC_BREAKER_THRESHOLD",
        default_value_t = 3
    )]
    pub bmc_breaker_threshold: u32,
    /// How long an unreachable BMC fails fast before it is tried again, seconds.
    #[arg(
        long = "bmc-breaker-cooldown",
        env = "KILN_BMC_BREAKER_COOLDOWN",
        default_value_t = 60
    )]
    pub bmc_breaker_cooldown_secs: u64,
}

/// File in the data directory holding the URL the daemon listens on (so the CLI finds it).
pub const API_URL_FILE: &str = "api-url";

pub fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match settings.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

pub async fn run(
    settings: &Settings,
    listen: Option<SocketAddr>,
    database_url: Option<String>,
    boot: &super::boot::BootOptions,
    power_sync: &PowerSyncOptions,
    deploy: &super::deploy::DeployOptions,
) -> Result<()> {
    init_logging(settings);
    let data_dir = &settings.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", data_dir.display()))?;
    let token = api::load_or_create_token(data_dir).context("cannot create the API token")?;

    let store = match database_url.or(settings.file.database_url.clone()) {
        Some(url) => Store::connect(&url).await,
        None => Store::open_in(data_dir).await,
    }
    .context("cannot open the database")?;
    tracing::info!(dialect = ?store.dialect(), "database ready");

    let policy = GuardPolicy {
        timeout: std::time::Duration::from_secs(power_sync.bmc_timeout_secs),
        attempts: power_sync.bmc_attempts.max(1),
        min_interval: std::time::Duration::from_millis(power_sync.bmc_min_interval_ms),
        breaker_threshold: power_sync.bmc_breaker_threshold.max(1),
        breaker_cooldown: std::time::Duration::from_secs(power_sync.bmc_breaker_cooldown_secs),
        ..GuardPolicy::default()
    };
    let bmcs = Arc::new(Registry::new(Arc::new(Drivers), policy));
    let boot_plan = super::boot::plan(boot, data_dir)?;
    // The appliance CA issues each node's Docker server certificate (delivered on its config drive).
    let ca = Arc::new(
        crate::ca::CertificateAuthority::load_or_create(&data_dir.join("ca"))
            .context("cannot create the appliance CA")?,
    );
    // The deployer's client certificate (DATA_DIR/ca/client.pem), for Docker over mutual TLS.
    ca.deployer_client()
        .context("cannot issue the deployer's client certificate")?;
    let workflow = boot_plan.as_ref().map(|plan| {
        Arc::new(DeployWorkflow {
            store: store.clone(),
            registry: Arc::clone(&bmcs),
            images: ImageCatalog {
                dir: plan.images_dir(),
                url_base: Some(format!("{}/files/images", plan.http_base)),
                default: deploy.default_image.clone(),
            },
            limits: deploy.limits(),
            os_ports: vec![2376, 22],
            clean_erase_metadata: deploy.clean_erase_metadata,
        })
    });
    let conductor = Conductor::new(
        store.clone(),
        Arc::new(BmcProvisioner {
            registry: Arc::clone(&bmcs),
            deploy: workflow,
        }),
    );
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(conductor.clone().run(shutdown.clone()));
    if power_sync.interval_secs > 0 {
        let every = std::time::Duration::from_secs(power_sync.interval_secs);
        tasks.spawn(run_power_sync(
            store.clone(),
            Arc::clone(&bmcs),
            every,
            power_sync.concurrency,
            shutdown.clone(),
        ));
    }

    let listen = listen
        .or(settings.file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 6385)));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener
        .local_addr()
        .context("cannot read the bound address")?;
    std::fs::write(data_dir.join(API_URL_FILE), format!("http://{bound}\n"))
        .context("cannot record the API address")?;
    tracing::info!(address = %bound, "kiln API listening");
    if let Some(plan) = &boot_plan {
        let agent_api = crate::api::agent::router(AgentApiState {
            conductor: conductor.clone(),
            ca: Some(Arc::clone(&ca)),
            heartbeat_secs: deploy.agent_heartbeat.max(1),
        });
        super::boot::start(plan, boot, &store, agent_api, &mut tasks, &shutdown).await?;
    }

    let app = api::router(ApiState {
        conductor,
        token: token.into(),
        bmcs,
    });
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            wait_for_signal().await;
            stop.cancel();
        })
        .await
        .context("API server failed")?;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    store.close().await;
    tracing::info!("kiln stopped");
    Ok(())
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
