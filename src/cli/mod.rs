//! The `kiln` command line: the daemon (`serve`) and a client for it in the `baremetal`/kolla style.

mod boot;
mod client;
pub mod config;
mod deploy;
mod deploy_servers;
mod image;
mod lab;
mod output;
mod serve;
mod services;
mod services_checks;
mod sim;

use crate::model::Verb;
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use client::{Client, ClientError};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "Kiln: bare-metal provisioning appliance"
)]
pub struct Cli {
    /// Configuration file (YAML; see examples/kiln.yaml).
    #[arg(long, global = true, env = "KILN_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (database, API token, daemon address). Default /var/lib/kiln.
    #[arg(long, global = true, env = "KILN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Daemon API base URL. Default: the address the daemon wrote into the data directory.
    #[arg(long, global = true, env = "KILN_API_URL")]
    api_url: Option<String>,
    /// API bearer token. Default: read from the data directory.
    #[arg(long, global = true, env = "KILN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Log format.
    #[arg(long, global = true, env = "KILN_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Log filter (error, warn, info, debug, or tracing directives).
    #[arg(long, global = true, env = "KILN_LOG_LEVEL")]
    log_level: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

// Parsed once at start-up; boxing the serve options would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the Kiln daemon (API and conductor).
    Serve {
        /// Listen address. Default 127.0.0.1:6385.
        #[arg(long, env = "KILN_LISTEN")]
        listen: Option<std::net::SocketAddr>,
        /// Database URL (sqlite://… or postgres://…). Default: SQLite in the data directory.
        #[arg(long, env = "KILN_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        #[command(flatten)]
        boot: boot::BootOptions,
        #[command(flatten)]
        power_sync: serve::PowerSyncOptions,
        #[command(flatten)]
        deploy: deploy::DeployOptions,
    },
    /// OS images and the deploy ramdisk on this appliance (no daemon needed).
    Image {
        #[command(subcommand)]
        command: image::ImageCommand,
        /// The daemon's files root (default DATA_DIR/files).
        #[arg(long, env = "KILN_FILES_ROOT", global = true)]
        files_root: Option<PathBuf>,
    },
    /// Enroll (or update) the nodes of an inventory file, all or nothing.
    Enroll {
        file: PathBuf,
        /// Validate and report what would change without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// A virtual rack on this machine that outlives the command: QEMU VMs behind `kiln vbmc`
    /// and a Kiln daemon, all inside a network namespace of their own (`up`, `status`, `down`).
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
    },
    /// Offline inventory tools.
    Inventory {
        #[command(subcommand)]
        command: InventoryCommand,
    },
    /// Virtual BMCs (Redfish, IPMI) for QEMU VMs, for labs and tests. `--config` names the vbmc
    /// configuration here (see examples/vbmc.yaml), not the daemon's.
    Vbmc,
    /// A rack of simulated servers in one process (Redfish/IPMI BMCs, real DHCP/TFTP/HTTP boot
    /// from their own MACs, Kiln's agent on simulated disks, simulated Docker Engines), for
    /// rehearsing racks of hundreds of nodes; writes the rack inventory. Run it inside a network
    /// namespace (`kiln lab up --sim N` does).
    Sim {
        #[command(flatten)]
        options: sim::SimOptions,
    },
    /// DHCP state: `kiln dhcp leases` lists addresses handed out (discovered machines included).
    Dhcp {
        #[command(subcommand)]
        command: DhcpCommand,
    },
    /// Inspect and drive nodes.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// The container deployer (Kolla-ansible's commands): place the catalog's services on the
    /// inventory's hosts and reconcile them on each host's Docker Engine. Runs locally.
    Services {
        #[command(subcommand)]
        command: services::ServicesCommand,
    },
    /// Racked hardware to a running cloud: enroll, verify, provision every node and deploy the
    /// catalog's services on each node as soon as it is active. Re-run to continue.
    DeployServers {
        #[command(flatten)]
        options: deploy_servers::PipelineOptions,
    },
    /// Lab reset: re-image the given nodes (or --all) and deploy their services again, back to
    /// what the inventory describes. Nodes that are up go straight back into PXE (Ironic rebuild).
    Reset {
        #[command(flatten)]
        options: deploy_servers::PipelineOptions,
        /// Every node of the inventory.
        #[arg(long, conflicts_with = "nodes")]
        all: bool,
        /// Node names.
        nodes: Vec<String>,
    },
    /// Fill passwords.yaml with random secrets for every password the catalog needs (keeps
    /// existing values; mode 0600; values are never printed).
    Genpwd {
        #[arg(
            long,
            env = "KILN_PASSWORDS",
            default_value = "/etc/kiln/passwords.yaml"
        )]
        passwords: PathBuf,
        /// A catalog directory instead of the built-in catalog.
        #[arg(long, env = "KILN_CATALOG")]
        catalog: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum DhcpCommand {
    /// Addresses Kiln's DHCP server handed out: node, or "discovered" for unknown machines.
    Leases,
}

#[derive(Subcommand, Debug)]
enum InventoryCommand {
    /// Validate an inventory file without a daemon; exit 1 with every error if invalid.
    Check { file: PathBuf },
}

#[derive(Subcommand, Debug)]
enum NodeCommand {
    /// List nodes.
    List,
    /// Show one node.
    Show { name: String },
    /// Show a node's provision-state timeline.
    History { name: String },
    /// Show a node's boot-path events (DHCP, TFTP, iPXE script, kernel and ramdisk fetched).
    Events { name: String },
    /// Delete node records (enroll, manageable, available, clean-failed or error only).
    Delete { names: Vec<String> },
    /// enroll → verifying → manageable (also available/clean-failed → manageable).
    Manage { names: Vec<String> },
    /// manageable → cleaning → available.
    Provide { names: Vec<String> },
    /// available (or deploy-failed) → deploying → … → active.
    Deploy { names: Vec<String> },
    /// active (or deploy-failed) → deploying again.
    Rebuild { names: Vec<String> },
    /// active/deploy-failed/error → deleting → cleaning → available.
    Undeploy { names: Vec<String> },
    /// Stop a deploy, clean or verification that is waiting.
    Abort { names: Vec<String> },
    /// manageable → cleaning → manageable.
    Clean { names: Vec<String> },
    /// Power control through the node's BMC: on, off, soft-off, reset, cycle, or status.
    Power { name: String, action: String },
    /// Set the next boot device (one-time unless --persistent), in the node's boot mode.
    BootDevice {
        name: String,
        device: String,
        #[arg(long)]
        persistent: bool,
    },
}

pub fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            if let Some(ClientError::Api { details, .. }) = err.downcast_ref::<ClientError>() {
                for detail in details {
                    eprintln!("  {detail}");
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// Settings after merging flags, environment and the config file.
pub struct Settings {
    pub data_dir: PathBuf,
    pub api_url: Option<String>,
    pub token: Option<String>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub file: config::ConfigFile,
}

fn settings(cli: &Cli) -> Result<Settings> {
    let file = match &cli.config {
        Some(path) => config::load(path).map_err(|errors| joined_errors(&errors))?,
        None => config::ConfigFile::default(),
    };
    let log_format = match (cli.log_format, file.log_format.as_deref()) {
        (Some(format), _) => format,
        (None, Some("json")) => LogFormat::Json,
        _ => LogFormat::Text,
    };
    Ok(Settings {
        data_dir: cli
            .data_dir
            .clone()
            .or(file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("/var/lib/kiln")),
        api_url: cli.api_url.clone().or(file.api_url.clone()),
        token: cli.token.clone(),
        log_format,
        log_level: cli
            .log_level
            .clone()
            .or(file.log_level.clone())
            .unwrap_or_else(|| "info".into()),
        file,
    })
}

async fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Vbmc = cli.command {
        return vbmc(&cli).await;
    }
    if let Command::Sim { options } = &cli.command {
        return sim::run(options, cli.log_format, cli.log_level.clone()).await;
    }
    let settings = settings(&cli)?;
    match cli.command {
        Command::Serve {
            listen,
            database_url,
            boot,
            power_sync,
            deploy,
        } => {
            serve::run(&settings, listen, database_url, &boot, &power_sync, &deploy).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inventory {
            command: InventoryCommand::Check { file },
        } => Ok(output::inventory_check(&file, cli.json)),
        Command::Enroll { file, dry_run } => {
            let content = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let body = serde_json::json!({"file": file.display().to_string(), "content": content, "dry_run": dry_run});
            let report: crate::store::EnrollReport =
                client(&settings)?.post("/inventory", &body).await?;
            output::enroll_report(&report, dry_run, cli.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Node { command } => node_command(&settings, command, cli.json).await,
        Command::Lab { command } => lab::run(command, cli.json).await,
        Command::Vbmc => vbmc(&cli).await,
        Command::Sim { options } => sim::run(&options, cli.log_format, cli.log_level.clone()).await,
        Command::Image {
            command,
            files_root,
        } => {
            let files_root = files_root.unwrap_or_else(|| settings.data_dir.join("files"));
            image::run(command, &files_root, cli.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Services { command } => services::run(command, &settings.data_dir, cli.json).await,
        Command::Genpwd { passwords, catalog } => services::genpwd(&passwords, catalog.as_deref()),
        Command::DeployServers { options } => {
            deploy_servers::run(
                client(&settings)?,
                &settings.data_dir,
                &options,
                None,
                cli.json,
            )
            .await
        }
        Command::Reset {
            options,
            all,
            nodes,
        } => {
            if !all && nodes.is_empty() {
                bail!("name the nodes to reset, or --all");
            }
            let client = client(&settings)?;
            deploy_servers::run(client, &settings.data_dir, &options, Some(nodes), cli.json).await
        }
        Command::Dhcp {
            command: DhcpCommand::Leases,
        } => {
            let leases: Vec<serde_json::Value> = client(&settings)?.get("/dhcp/leases").await?;
            output::leases(&leases, cli.json);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `kiln vbmc --config FILE`: serves until SIGTERM/ctrl-c, then powers its VMs off.
async fn vbmc(cli: &Cli) -> Result<ExitCode> {
    let path = cli
        .config
        .as_ref()
        .context("kiln vbmc needs --config FILE (see examples/vbmc.yaml)")?;
    let settings = Settings {
        data_dir: PathBuf::new(),
        api_url: None,
        token: None,
        log_format: cli.log_format.unwrap_or(LogFormat::Text),
        log_level: cli.log_level.clone().unwrap_or_else(|| "info".into()),
        file: config::ConfigFile::default(),
    };
    serve::init_logging(&settings);
    let config = crate::bmc::vbmc::load_config(path).map_err(|errors| joined_errors(&errors))?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        serve::wait_for_signal().await;
        stop.cancel();
    });
    crate::bmc::vbmc::run(config, shutdown)
        .await
        .context("vbmc failed")?;
    Ok(ExitCode::SUCCESS)
}

async fn node_command(settings: &Settings, command: NodeCommand, json: bool) -> Result<ExitCode> {
    let client = client(settings)?;
    let (verb, names) = match command {
        NodeCommand::List => {
            let nodes: Vec<serde_json::Value> = client.get("/nodes").await?;
            output::node_list(&nodes, json);
            return Ok(ExitCode::SUCCESS);
        }
        NodeCommand::Show { name } => {
            let node: serde_json::Value = client.get(&format!("/nodes/{name}")).await?;
            output::node_show(&node, json);
            return Ok(ExitCode::SUCCESS);
        }
        NodeCommand::Events { name } => {
            let entries: Vec<serde_json::Value> =
                client.get(&format!("/nodes/{name}/events")).await?;
            output::events(&entries, json);
            return Ok(ExitCode::SUCCESS);
        }
        NodeCommand::History { name } => {
            let transitions: Vec<serde_json::Value> =
                client.get(&format!("/nodes/{name}/history")).await?;
            let events: Vec<serde_json::Value> =
                client.get(&format!("/nodes/{name}/events")).await?;
            output::timeline(&transitions, &events, json);
            return Ok(ExitCode::SUCCESS);
        }
        NodeCommand::Delete { names } => {
            let mut failed = false;
            for name in &names {
                match client.delete(&format!("/nodes/{name}")).await {
                    Ok(()) => println!("{name}: deleted"),
                    Err(err) => {
                        eprintln!("{name}: {err}");
                        failed = true;
                    }
                }
            }
            return Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        NodeCommand::Power { name, action } => {
            let path = format!("/nodes/{name}/states/power");
            let reply: serde_json::Value = if action == "status" {
                client.get(&path).await?
            } else {
                client
                    .put(&path, &serde_json::json!({"target": action}))
                    .await?
            };
            output::power(&name, &reply, json);
            return Ok(ExitCode::SUCCESS);
        }
        NodeCommand::BootDevice {
            name,
            device,
            persistent,
        } => {
            let body = serde_json::json!({"device": device, "persistent": persistent});
            let reply: serde_json::Value = client
                .put(&format!("/nodes/{name}/states/boot_device"), &body)
                .await?;
            if json {
                println!("{reply}");
            } else {
                println!(
                    "{name}: next boot from {device}{}",
                    if persistent {
                        " (persistent)"
                    } else {
                        " (once)"
                    }
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        NodeCommand::Manage { names } => (Verb::Manage, names),
        NodeCommand::Provide { names } => (Verb::Provide, names),
        NodeCommand::Deploy { names } => (Verb::Deploy, names),
        NodeCommand::Rebuild { names } => (Verb::Rebuild, names),
        NodeCommand::Undeploy { names } => (Verb::Undeploy, names),
        NodeCommand::Abort { names } => (Verb::Abort, names),
        NodeCommand::Clean { names } => (Verb::Clean, names),
    };
    if names.is_empty() {
        bail!("name at least one node");
    }
    let mut failed = false;
    for name in &names {
        let body = serde_json::json!({"target": verb.as_str()});
        match client
            .put::<_, serde_json::Value>(&format!("/nodes/{name}/states/provision"), &body)
            .await
        {
            Ok(node) => println!(
                "{name}: {verb} accepted, now {}",
                node["provision_state"].as_str().unwrap_or("?")
            ),
            Err(err) => {
                eprintln!("{name}: {err}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn client(settings: &Settings) -> Result<Client> {
    let url = match &settings.api_url {
        Some(url) => url.clone(),
        None => std::fs::read_to_string(settings.data_dir.join(serve::API_URL_FILE))
            .map(|url| url.trim().to_string())
            .with_context(|| {
                format!(
                    "no --api-url given and no running daemon recorded in {}",
                    settings.data_dir.display()
                )
            })?,
    };
    let token = match &settings.token {
        Some(token) => token.clone(),
        None => std::fs::read_to_string(settings.data_dir.join(crate::api::TOKEN_FILE))
            .map(|token| token.trim().to_string())
            .with_context(|| {
                format!(
                    "no --token given and cannot read the token in {}",
                    settings.data_dir.display()
                )
            })?,
    };
    Ok(Client::new(&url, token))
}

/// Every error of a file (inventory, configuration), one per line, as one error.
fn joined_errors<E: std::fmt::Display>(errors: &[E]) -> anyhow::Error {
    anyhow::anyhow!(
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    )
}
