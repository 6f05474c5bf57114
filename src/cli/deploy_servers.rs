//! `kiln deploy-servers` and `kiln reset`: enroll → verify → provision every node concurrently →
//! hand each node to the container deployer the moment it is active → a per-node phase table.
//! Kolla needed `deploy-servers` (Bifrost) then `deploy` with a barrier in between; here the two
//! run as one pipeline. Re-running after an interruption continues where it stopped.

use super::client::Client;
use super::services::{CommonOptions, execute_gated, load_for_rack};
use crate::deployer::engine::Engine;
use crate::deployer::engine::docker::DockerEngine;
use crate::deployer::run::{Gate, Operation, Outcome};
use crate::pipeline::drive::{DriveOptions, NodeTimes, RackApi, drive};
use crate::pipeline::phase::NodeView;
use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use clap::Args;
use comfy_table::Table;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct PipelineOptions {
    /// The rack inventory (nodes with BMCs, addresses and roles).
    #[arg(short = 'i', long = "inventory")]
    pub inventory: PathBuf,
    /// globals.yaml for the container deployer.
    #[arg(long, env = "KILN_GLOBALS", default_value = "/etc/kiln/globals.yaml")]
    pub globals: PathBuf,
    /// passwords.yaml; missing passwords are generated into it (mode 0600).
    #[arg(
        long,
        env = "KILN_PASSWORDS",
        default_value = "/etc/kiln/passwords.yaml"
    )]
    pub passwords: PathBuf,
    /// A catalog directory instead of (or extending) the built-in catalog.
    #[arg(long, env = "KILN_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Only these services (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Directory of `docker save` archives streamed to nodes lacking an image (see
    /// `kiln services --image-archives`).
    #[arg(long, env = "KILN_IMAGE_ARCHIVES")]
    pub image_archives: Option<PathBuf>,
    /// Provision only; deploy no containers.
    #[arg(long)]
    pub no_services: bool,
    /// Give up on nodes not active after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
}

struct DaemonApi(Client);

#[async_trait]
impl RackApi for DaemonApi {
    async fn progress(&self) -> Result<Vec<NodeView>, String> {
        self.0.get("/progress").await.map_err(|e| e.to_string())
    }

    async fn verb(&self, node: &str, verb: &str) -> Result<(), String> {
        let body = serde_json::json!({"target": verb});
        self.0
            .put::<_, serde_json::Value>(&format!("/nodes/{node}/states/provision"), &body)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// `reimage`: None for deploy-servers; the nodes to image again for reset.
pub async fn run(
    client: Client,
    data_dir: &Path,
    options: &PipelineOptions,
    reimage: Option<Vec<String>>,
    json: bool,
) -> Result<ExitCode> {
    let started = Instant::now();
    let inventory = crate::inventory::load(&options.inventory)
        .map_err(|errors| super::joined_errors(&errors))?;
    let names: BTreeSet<String> = inventory.nodes.iter().map(|n| n.name.clone()).collect();
    let reimage: BTreeSet<String> = match reimage {
        None => BTreeSet::new(),
        Some(list) if list.is_empty() => names.clone(),
        Some(list) => {
            for name in &list {
                if !names.contains(name) {
                    bail!("'{name}' is not a node in {}", options.inventory.display());
                }
            }
            list.into_iter().collect()
        }
    };
    // Everything the deployer needs is loaded and rendered before any node is touched.
    let common = CommonOptions {
        inventory: options.inventory.clone(),
        globals: options.globals.clone(),
        passwords: options.passwords.clone(),
        catalog: options.catalog.clone(),
        limit: Vec::new(),
        tags: options.tags.clone(),
        image_archives: options.image_archives.clone(),
    };
    let loaded = if options.no_services {
        None
    } else {
        Some(load_for_rack(&common)?)
    };

    let content = std::fs::read_to_string(&options.inventory)
        .with_context(|| format!("cannot read {}", options.inventory.display()))?;
    let body = serde_json::json!({"file": options.inventory.display().to_string(), "content": content, "dry_run": false});
    let report: crate::store::EnrollReport = client.post("/inventory", &body).await?;
    say(
        json,
        &format!(
            "enrolled {}: {} new, {} updated, {} unchanged",
            options.inventory.display(),
            report.created.len(),
            report.updated.len(),
            report.unchanged.len()
        ),
    );

    let mut senders = BTreeMap::new();
    let mut gates = HashMap::new();
    for name in &names {
        let (tx, rx) = tokio::sync::watch::channel(Gate::Waiting);
        senders.insert(name.clone(), tx);
        gates.insert(name.clone(), rx);
    }
    let deployer = match loaded {
        Some(loaded) => {
            let mut engines: BTreeMap<String, Arc<dyn Engine>> = BTreeMap::new();
            for host in &loaded.hosts {
                let engine = DockerEngine::connect(&host.endpoint, data_dir)
                    .with_context(|| format!("host {}", host.name))?;
                engines.insert(host.name.clone(), Arc::new(engine));
            }
            let filters = loaded.filters.clone();
            Some(tokio::spawn(async move {
                execute_gated(
                    loaded.rendered,
                    engines,
                    Operation::Deploy,
                    &filters,
                    json,
                    gates,
                )
                .await
            }))
        }
        None => None,
    };
    let drive_options = DriveOptions {
        nodes: names.clone(),
        reimage,
        poll: Duration::from_secs(1),
        timeout: Duration::from_secs(options.timeout),
        json,
    };
    let api = DaemonApi(client);
    let times = drive(&api, &drive_options, &senders).await;
    drop(senders);
    let outcome = match deployer {
        Some(task) => Some(task.await.context("the container deployer crashed")?),
        None => None,
    };
    let ok = report_table(&names, &times, outcome.as_ref(), started, json);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn say(json: bool, text: &str) {
    if json {
        println!("{}", serde_json::json!({"event": "info", "message": text}));
    } else {
        eprintln!("{text}");
    }
}

/// The final per-node table: each phase's duration and the services healthy on it.
fn report_table(
    names: &BTreeSet<String>,
    times: &BTreeMap<String, NodeTimes>,
    outcome: Option<&Outcome>,
    started: Instant,
    json: bool,
) -> bool {
    let fmt = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{s:.0} s"));
    let span = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b >= a => Some(b - a),
        _ => None,
    };
    let mut ok = true;
    let mut rows = Vec::new();
    for name in names {
        let t = times.get(name).cloned().unwrap_or_default();
        let (healthy, failed, services_s) = match outcome {
            Some(outcome) => {
                let mine: Vec<_> = outcome.rows.iter().filter(|r| &r.host == name).collect();
                let healthy: BTreeSet<&str> = mine
                    .iter()
                    .filter(|r| r.result == "healthy" || r.result == "running")
                    .map(|r| r.service.as_str())
                    .collect();
                let failed = outcome.failures.iter().any(|f| &f.host == name);
                // From the node's handoff (active) to its last service ready: both clocks start
                // with the pipeline.
                let last = mine.iter().map(|r| r.finished_s).reduce(f64::max);
                (
                    healthy.into_iter().collect::<Vec<_>>().join(","),
                    failed,
                    span(t.active_s, last),
                )
            }
            None => (String::new(), false, None),
        };
        let result = match (&t.failed, failed) {
            (Some(reason), _) => format!("FAILED: {reason}"),
            (None, true) => "FAILED: services (see above)".to_string(),
            (None, false) if t.active_s.is_some() => "ok".to_string(),
            _ => "FAILED: not active".to_string(),
        };
        ok &= result == "ok";
        let provision = if t.already_active {
            "already active".to_string()
        } else {
            fmt(span(t.verified_s, t.active_s))
        };
        rows.push(serde_json::json!({
            "node": name,
            "verify_s": t.verified_s,
            "imaging_started_s": t.imaging_s,
            "active_s": t.active_s,
            "already_active": t.already_active,
            "provision": provision,
            "services_s": services_s,
            "services_healthy": healthy,
            "result": result,
        }));
    }
    if let Some(outcome) = outcome {
        ok &= outcome.ok();
    }
    let total = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({"event": "report", "ok": ok, "seconds": total, "nodes": rows})
        );
        return ok;
    }
    let mut table = Table::new();
    table.set_header(vec![
        "NODE",
        "VERIFIED AT",
        "PROVISION (→ active)",
        "ACTIVE AT",
        "SERVICES (active → ready)",
        "HEALTHY SERVICES",
        "RESULT",
    ]);
    for row in &rows {
        let get = |k: &str| row[k].as_f64();
        table.add_row(vec![
            row["node"].as_str().unwrap_or("").to_string(),
            fmt(get("verify_s")),
            row["provision"].as_str().unwrap_or("").to_string(),
            fmt(get("active_s")),
            fmt(get("services_s")),
            row["services_healthy"].as_str().unwrap_or("").to_string(),
            row["result"].as_str().unwrap_or("").to_string(),
        ]);
    }
    println!("{table}");
    if let Some(outcome) = outcome {
        for failure in &outcome.failures {
            eprintln!(
                "FAILED: host {}, service {}, container {}: {}",
                failure.host, failure.service, failure.container, failure.reason
            );
            for line in &failure.logs {
                eprintln!("    {line}");
            }
        }
        for (service, reason) in &outcome.skipped {
            eprintln!("SKIPPED: service {service}: {reason}");
        }
    }
    println!(
        "{} in {:.0} s: {} of {} nodes ok",
        if ok { "done" } else { "FAILED" },
        total,
        rows.iter().filter(|r| r["result"] == "ok").count(),
        rows.len()
    );
    ok
}
