//! `kiln services …` and `kiln genpwd`: the container deployer's command line, Kolla-ansible's
//! command set (prechecks, pull, deploy, reconfigure, upgrade, stop, destroy, genconfig,
//! certificates). Runs locally and talks to each host's Docker Engine directly.

use crate::deployer::catalog::Catalog;
use crate::deployer::engine::Engine;
use crate::deployer::engine::docker::DockerEngine;
use crate::deployer::globals::{Globals, Passwords};
use crate::deployer::hosts::{self, Host};
use crate::deployer::render::{self, RenderedService};
use crate::deployer::run::{self, Event, Filters, Operation, Outcome};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use comfy_table::Table;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct CommonOptions {
    /// Hosts file (`hosts:`) or rack inventory (`nodes:`; reached over TLS with Kiln's CA).
    #[arg(short = 'i', long = "inventory", env = "KILN_SERVICES_INVENTORY")]
    pub inventory: PathBuf,
    /// globals.yaml (registry, tag, enable_<service>, template variables).
    #[arg(long, env = "KILN_GLOBALS", default_value = "/etc/kiln/globals.yaml")]
    pub globals: PathBuf,
    /// passwords.yaml, filled by `kiln genpwd`.
    #[arg(
        long,
        env = "KILN_PASSWORDS",
        default_value = "/etc/kiln/passwords.yaml"
    )]
    pub passwords: PathBuf,
    /// A catalog directory (catalog.yaml + templates/) replacing or extending the built-in one.
    #[arg(long, env = "KILN_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Only these hosts (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub limit: Vec<String>,
    /// Only these services (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Directory of `docker save` archives (`keystone.tar`, …, as images/kolla/build.sh
    /// writes them): an image a host lacks is streamed to its engine from here instead of pulled.
    #[arg(long, env = "KILN_IMAGE_ARCHIVES")]
    pub image_archives: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ServicesCommand {
    /// Check engines (reachable, version, clock), ports and passwords before a deploy.
    Prechecks(CommonOptions),
    /// Pull every image on every host.
    Pull(CommonOptions),
    /// Create what is missing, recreate what changed, leave the rest alone.
    Deploy(CommonOptions),
    /// Same as deploy (only containers whose config changed are recreated); Kolla's name.
    Reconfigure(CommonOptions),
    /// Pull new images, rerun bootstrap (migrations), roll clustered services batch by batch.
    Upgrade(CommonOptions),
    /// Stop the catalog's containers (they stay, with their data).
    Stop(CommonOptions),
    /// Remove every Kiln container and volume on the hosts.
    Destroy {
        #[command(flatten)]
        options: CommonOptions,
        /// Required: destroy deletes data.
        #[arg(long = "yes-i-really-really-mean-it")]
        yes: bool,
    },
    /// Render every host's config files into a directory for review.
    Genconfig {
        #[command(flatten)]
        options: CommonOptions,
        #[arg(long, default_value = "kiln-config")]
        output: PathBuf,
    },
    /// Run the appliance's image registry (Debian's `docker-registry`) in the foreground: nodes
    /// pull the catalog's images from it (`docker_registry: ADDR` in globals.yaml; plain HTTP,
    /// so engines list it under `insecure-registries` — for a provisioning network only).
    Registry {
        /// Address to listen on, e.g. 10.99.0.1:5000.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Where the registry keeps its blobs (default DATA_DIR/registry).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Issue a TLS server certificate for every host from Kiln's CA into a directory.
    Certificates {
        #[command(flatten)]
        options: CommonOptions,
        #[arg(long, default_value = "kiln-certificates")]
        output: PathBuf,
    },
}

/// Everything a command needs, loaded and validated up front: a typo stops here, before any
/// engine is touched.
pub(super) struct Loaded {
    pub hosts: Vec<Host>,
    pub catalog: Catalog,
    pub passwords: Passwords,
    pub rendered: Vec<RenderedService>,
    pub filters: Filters,
    /// Prechecks fail a host with less free space under its engine's root (globals
    /// `precheck_min_free_gb`, default [`DEFAULT_MIN_FREE_GB`]).
    pub min_free_bytes: u64,
}

/// Room for a control host's images (Kolla's are ~0.5–1 GB each, sharing base layers) and logs.
const DEFAULT_MIN_FREE_GB: u64 = 2;

fn load(options: &CommonOptions) -> Result<Loaded> {
    let hosts = hosts::load(&options.inventory)?;
    let catalog = match &options.catalog {
        Some(dir) => Catalog::load_dir(dir)?,
        None => Catalog::builtin()?,
    };
    let globals_path = options
        .globals
        .exists()
        .then_some(options.globals.as_path());
    let globals = Globals::load(globals_path)?;
    let passwords = Passwords::load(&options.passwords)?;
    let rendered = render::render(&catalog, &hosts, &globals, &passwords)?;
    let min_free_gb = globals
        .get_u64("precheck_min_free_gb")
        .map_err(|message| anyhow::anyhow!("{}: {message}", options.globals.display()))?
        .unwrap_or(DEFAULT_MIN_FREE_GB);
    let names: BTreeSet<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    for host in &options.limit {
        if !names.contains(host.as_str()) {
            bail!(
                "--limit: '{host}' is not a host in {}",
                options.inventory.display()
            );
        }
    }
    for tag in &options.tags {
        if !catalog.services.contains_key(tag) {
            bail!("--tags: '{tag}' is not a service in the catalog");
        }
    }
    let filters = Filters {
        hosts: (!options.limit.is_empty()).then(|| options.limit.iter().cloned().collect()),
        services: (!options.tags.is_empty()).then(|| options.tags.iter().cloned().collect()),
        image_archives: options.image_archives.clone(),
    };
    Ok(Loaded {
        hosts,
        catalog,
        passwords,
        rendered,
        filters,
        min_free_bytes: min_free_gb << 30,
    })
}

/// For deploy-servers: like [`load`], but missing passwords are generated first (the rack's
/// first run needs no separate `kiln genpwd`).
pub(super) fn load_for_rack(options: &CommonOptions) -> Result<Loaded> {
    let catalog = match &options.catalog {
        Some(dir) => Catalog::load_dir(dir)?,
        None => Catalog::builtin()?,
    };
    let filled = Passwords::fill(&options.passwords, &catalog)?;
    if !filled.is_empty() {
        eprintln!(
            "generated {} missing passwords into {} (mode 0600)",
            filled.len(),
            options.passwords.display()
        );
    }
    load(options)
}

fn engines(hosts: &[Host], data_dir: &Path) -> Result<BTreeMap<String, Arc<dyn Engine>>> {
    hosts
        .iter()
        .map(|host| {
            let engine = DockerEngine::connect(&host.endpoint, data_dir)
                .with_context(|| format!("host {}", host.name))?;
            Ok((host.name.clone(), Arc::new(engine) as Arc<dyn Engine>))
        })
        .collect()
}

pub async fn run(command: ServicesCommand, data_dir: &Path, json: bool) -> Result<ExitCode> {
    let (operation, options) = match &command {
        ServicesCommand::Prechecks(o) => return prechecks(o, data_dir, json).await,
        ServicesCommand::Genconfig { options, output } => return genconfig(options, output),
        ServicesCommand::Certificates { options, output } => {
            return certificates(options, data_dir, output);
        }
        ServicesCommand::Registry { listen, root } => {
            let root = root.clone().unwrap_or_else(|| data_dir.join("registry"));
            return registry(*listen, &root);
        }
        ServicesCommand::Pull(o) => (Operation::Pull, o),
        ServicesCommand::Deploy(o) | ServicesCommand::Reconfigure(o) => (Operation::Deploy, o),
        ServicesCommand::Upgrade(o) => (Operation::Upgrade, o),
        ServicesCommand::Stop(o) => (Operation::Stop, o),
        ServicesCommand::Destroy { options, yes } => {
            if !yes {
                bail!(
                    "destroy removes every Kiln container and volume on the hosts; add --yes-i-really-really-mean-it"
                );
            }
            (Operation::Destroy, options)
        }
    };
    let loaded = load(options)?;
    if matches!(operation, Operation::Deploy | Operation::Upgrade) {
        let needed: BTreeSet<String> = loaded
            .rendered
            .iter()
            .flat_map(|s| loaded.catalog.services[&s.name].passwords.iter().cloned())
            .collect();
        let missing = loaded.passwords.missing(needed);
        if !missing.is_empty() {
            bail!(
                "{}: missing passwords {} (run `kiln genpwd --passwords {}`)",
                options.passwords.display(),
                missing.join(", "),
                options.passwords.display()
            );
        }
    }
    let engines = engines(&loaded.hosts, data_dir)?;
    let started = Instant::now();
    let outcome = execute(loaded.rendered, engines, operation, &loaded.filters, json).await;
    print_outcome(&outcome, started, json);
    Ok(if outcome.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the reconciler while printing its events as they come.
pub async fn execute(
    rendered: Vec<RenderedService>,
    engines: BTreeMap<String, Arc<dyn Engine>>,
    operation: Operation,
    filters: &Filters,
    json: bool,
) -> Outcome {
    execute_gated(
        rendered,
        engines,
        operation,
        filters,
        json,
        run::Gates::new(),
    )
    .await
}

/// [`execute`] with hosts that open later (deploy-servers).
pub async fn execute_gated(
    rendered: Vec<RenderedService>,
    engines: BTreeMap<String, Arc<dyn Engine>>,
    operation: Operation,
    filters: &Filters,
    json: bool,
    gates: run::Gates,
) -> Outcome {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let printer = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            print_event(&event, json);
        }
    });
    let outcome = run::run_gated(rendered, engines, operation, filters, tx, gates).await;
    let _ = printer.await;
    outcome
}

fn print_event(event: &Event, json: bool) {
    if json {
        let line = serde_json::json!({
            "event": "container",
            "at_s": event.at.as_secs_f64(),
            "host": event.host,
            "service": event.service,
            "container": event.container,
            "message": event.message,
        });
        println!("{line}");
    } else {
        eprintln!(
            "{:>7.1}s  {:<12} {:<12} {:<20} {}",
            event.at.as_secs_f64(),
            event.host,
            event.service,
            event.container,
            event.message
        );
    }
}

fn print_outcome(outcome: &Outcome, started: Instant, json: bool) {
    let elapsed = started.elapsed().as_secs_f64();
    if json {
        let rows: Vec<_> = outcome
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({"host": r.host, "service": r.service, "container": r.container,
                    "action": r.action, "result": r.result, "seconds": r.seconds})
            })
            .collect();
        let failures: Vec<_> = outcome
            .failures
            .iter()
            .map(|f| {
                serde_json::json!({"host": f.host, "service": f.service, "container": f.container,
                    "reason": f.reason, "logs": f.logs})
            })
            .collect();
        let skipped: Vec<_> = outcome
            .skipped
            .iter()
            .map(|(s, r)| serde_json::json!({"service": s, "reason": r}))
            .collect();
        let summary = serde_json::json!({"event": "summary", "ok": outcome.ok(), "seconds": elapsed,
            "rows": rows, "failures": failures, "skipped": skipped});
        println!("{summary}");
        return;
    }
    let mut table = Table::new();
    table.set_header(vec![
        "HOST",
        "SERVICE",
        "CONTAINER",
        "ACTION",
        "RESULT",
        "SECONDS",
    ]);
    for row in &outcome.rows {
        table.add_row(vec![
            row.host.clone(),
            row.service.clone(),
            row.container.clone(),
            row.action.clone(),
            row.result.clone(),
            format!("{:.1}", row.seconds),
        ]);
    }
    println!("{table}");
    let changed = outcome
        .rows
        .iter()
        .filter(|r| r.action != "unchanged" && r.action != "bootstrap")
        .count();
    println!(
        "{} containers, {changed} changed, {} failed, {} services skipped, in {elapsed:.2} s",
        outcome.rows.len(),
        outcome.failures.len(),
        outcome.skipped.len()
    );
    for failure in &outcome.failures {
        eprintln!(
            "FAILED: host {}, service {}, container {}: {}",
            failure.host, failure.service, failure.container, failure.reason
        );
        if !failure.logs.is_empty() {
            eprintln!("  last log lines of {}:", failure.container);
            for line in &failure.logs {
                eprintln!("    {line}");
            }
        }
    }
    for (service, reason) in &outcome.skipped {
        eprintln!("SKIPPED: service {service}: {reason}");
    }
}

fn genconfig(options: &CommonOptions, output: &Path) -> Result<ExitCode> {
    let loaded = load(options)?;
    let mut count = 0;
    for service in &loaded.rendered {
        let bootstrap = service.bootstrap.iter().map(|(h, c)| (h, c));
        for (host, containers) in service.hosts.iter().map(|(h, c)| (h, c)).chain(bootstrap) {
            for spec in containers {
                let dir = output.join(host).join(&spec.name);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                for file in &spec.files {
                    let path = dir.join(file.path.trim_start_matches('/'));
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)
                            .with_context(|| format!("cannot create {}", parent.display()))?;
                    }
                    write_private(&path, &file.content)?;
                    count += 1;
                }
                let spec_path = dir.join("container.json");
                let mut summary = serde_json::to_value(spec)?;
                if let Some(object) = summary.as_object_mut() {
                    object.remove("files");
                    object.insert("hash".into(), spec.hash().into());
                }
                write_private(&spec_path, &serde_json::to_string_pretty(&summary)?)?;
            }
        }
    }
    println!(
        "rendered {count} files for {} services on {} hosts into {}",
        loaded.rendered.len(),
        loaded.hosts.len(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Rendered files hold passwords: owner-only.
fn write_private(path: &Path, content: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(content.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn certificates(options: &CommonOptions, data_dir: &Path, output: &Path) -> Result<ExitCode> {
    let hosts = hosts::load(&options.inventory)?;
    let ca = crate::ca::CertificateAuthority::load_or_create(&data_dir.join("ca"))?;
    std::fs::create_dir_all(output)
        .with_context(|| format!("cannot create {}", output.display()))?;
    write_private(&output.join("ca.pem"), ca.ca_pem())?;
    // The deployer presents DATA_DIR/ca/client.pem to engines using these certificates.
    ca.deployer_client()?;
    for host in &hosts {
        let issued = ca.issue_server(&host.name, &[host.address])?;
        let dir = output.join(&host.name);
        std::fs::create_dir_all(&dir)?;
        write_private(&dir.join("cert.pem"), &issued.cert_pem)?;
        write_private(&dir.join("key.pem"), issued.key_pem.expose())?;
    }
    println!(
        "issued {} server certificates from {} into {}",
        hosts.len(),
        ca.common_name(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn prechecks(options: &CommonOptions, data_dir: &Path, json: bool) -> Result<ExitCode> {
    let loaded = load(options)?;
    let engines = engines(&loaded.hosts, data_dir)?;
    let needed: BTreeSet<String> = loaded
        .rendered
        .iter()
        .flat_map(|s| loaded.catalog.services[&s.name].passwords.iter().cloned())
        .collect();
    let mut problems = Vec::new();
    let missing = loaded.passwords.missing(needed);
    if !missing.is_empty() {
        problems.push(format!(
            "passwords: {} missing in {} (run `kiln genpwd`)",
            missing.join(", "),
            options.passwords.display()
        ));
    }
    let hosts: Vec<&Host> = loaded
        .hosts
        .iter()
        .filter(|h| {
            loaded
                .filters
                .hosts
                .as_ref()
                .is_none_or(|l| l.contains(&h.name))
        })
        .collect();
    let checks = futures::future::join_all(hosts.iter().map(|host| {
        let engine = engines.get(&host.name).cloned();
        let rendered = &loaded.rendered;
        let min_free = loaded.min_free_bytes;
        async move { super::services_checks::check_host(host, engine, rendered, min_free).await }
    }))
    .await;
    let mut table = Table::new();
    table.set_header(vec![
        "HOST",
        "ENGINE",
        "VERSION",
        "CLOCK SKEW",
        "PORTS",
        "DISK",
        "RESULT",
    ]);
    for check in &checks {
        table.add_row(check.row());
        problems.extend(
            check
                .problems
                .iter()
                .map(|p| format!("host {}: {p}", check.host)),
        );
    }
    if json {
        let value = serde_json::json!({"ok": problems.is_empty(), "problems": problems});
        println!("{value}");
    } else {
        println!("{table}");
        for problem in &problems {
            eprintln!("PROBLEM: {problem}");
        }
        if problems.is_empty() {
            println!("prechecks passed on {} hosts", checks.len());
        }
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Writes the registry's configuration under `root` and replaces this process with
/// `docker-registry serve` (signals and exit status are the registry's own).
fn registry(listen: std::net::SocketAddr, root: &Path) -> Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let storage = root.join("storage");
    std::fs::create_dir_all(&storage)
        .with_context(|| format!("cannot create {}", storage.display()))?;
    let config = root.join("config.yml");
    let text = format!(
        "# Written by `kiln services registry`.\nversion: 0.1\nlog:\n  level: warn\nstorage:\n  \
         filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {listen}\n",
        storage.display()
    );
    std::fs::write(&config, text).with_context(|| format!("cannot write {}", config.display()))?;
    eprintln!(
        "kiln registry: docker-registry on {listen}, storage {}",
        storage.display()
    );
    let err = std::process::Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .exec();
    Err(anyhow::anyhow!(
        "cannot run docker-registry (apt-get install docker-registry): {err}"
    ))
}

/// `kiln genpwd`: fills passwords.yaml.
pub fn genpwd(passwords: &Path, catalog: Option<&Path>) -> Result<ExitCode> {
    let catalog = match catalog {
        Some(dir) => Catalog::load_dir(dir)?,
        None => Catalog::builtin()?,
    };
    let filled = Passwords::fill(passwords, &catalog)?;
    println!(
        "{}: {} passwords generated ({} already set); values are not shown",
        passwords.display(),
        filled.len(),
        catalog.password_keys().len() - filled.len()
    );
    Ok(ExitCode::SUCCESS)
}
