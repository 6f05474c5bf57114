//! `kiln lab demo`: the virtual rack from power-off to a cloud that answers. Brings the lab up
//! (unless it is), runs `kiln deploy-servers` inside its namespace with a small OpenStack slice
//! (mariadb, memcached, keystone by default; images streamed from `images/kolla` archives), then
//! checks the cloud from the appliance: each keystone issues a token for the admin user.

use super::{LabError, UpOptions, host};
use crate::deployer::globals::Passwords;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct DemoOptions {
    pub up: UpOptions,
    /// Services to deploy (catalog names).
    pub services: Vec<String>,
    /// A catalog directory instead of the built-in one.
    pub catalog: Option<PathBuf>,
    /// `docker save` archives for the images (images/kolla/build.sh --export DIR).
    pub image_archives: PathBuf,
}

#[derive(Debug, serde::Serialize)]
pub struct DemoReport {
    pub deploy_seconds: f64,
    pub deploy_ok: bool,
    /// (node address, what the check saw)
    pub checks: Vec<(String, Result<String, String>)>,
}

impl DemoReport {
    pub fn ok(&self) -> bool {
        self.deploy_ok && self.checks.iter().all(|(_, r)| r.is_ok())
    }
}

pub fn demo(options: &DemoOptions, progress: &mut dyn FnMut(&str)) -> Result<DemoReport, LabError> {
    let up = &options.up;
    let status = super::status(Some(&up.name), &up.dir)?;
    if !status.healthy() {
        if status.exists {
            return Err(LabError::NotReady {
                what: "the lab",
                reason: format!(
                    "{} exists but is not fully up; run `kiln lab down --dir {}` first",
                    up.name,
                    up.dir.display()
                ),
                log: "status".into(),
                tail: String::new(),
            });
        }
        super::up(up, progress)?;
    }
    let dir = std::path::absolute(&up.dir).map_err(super::io("resolve", &up.dir))?;
    let globals = dir.join("globals.yaml");
    // Images come from the archives, tagged with this (nominal) registry name on each node.
    // One Keystone worker: a lab VM has one TCG vCPU, and uwsgi's lazy-apps makes every worker
    // import Keystone itself (with two, keystone took ~300 s to answer on a lab VM).
    std::fs::write(
        &globals,
        "docker_registry: \"kiln.local:5000\"\nkeystone_api_workers: 1\n",
    )
    .map_err(super::io("write", &globals))?;
    let passwords = dir.join("passwords.yaml");
    let mut args: Vec<String> = vec![
        "netns".into(),
        "exec".into(),
        up.name.clone(),
        up.kiln.display().to_string(),
        "--data-dir".into(),
        dir.join("data").display().to_string(),
        "deploy-servers".into(),
        "-i".into(),
        dir.join("rack.yaml").display().to_string(),
        "--globals".into(),
        globals.display().to_string(),
        "--passwords".into(),
        passwords.display().to_string(),
        "--image-archives".into(),
        options.image_archives.display().to_string(),
    ];
    if !options.services.is_empty() {
        args.push("--tags".into());
        args.push(options.services.join(","));
    }
    if let Some(catalog) = &options.catalog {
        args.push("--catalog".into());
        args.push(catalog.display().to_string());
    }
    progress(&format!(
        "kiln deploy-servers -i {}",
        dir.join("rack.yaml").display()
    ));
    let started = Instant::now();
    let status = Command::new("ip")
        .args(&args)
        .env_remove("KILN_DATABASE_URL")
        .status()
        .map_err(|source| LabError::Host {
            action: "run kiln deploy-servers".into(),
            source: host::HostError::Spawn {
                program: "ip".into(),
                source,
            },
        })?;
    let deploy_seconds = started.elapsed().as_secs_f64();
    let mut checks = Vec::new();
    if status.success() {
        // Every service healthy and nothing drifted: a second deploy must change nothing.
        let mut again = args.clone();
        if let Some(position) = again.iter().position(|a| a == "deploy-servers") {
            again[position] = "services".into();
            again.insert(position + 1, "deploy".into());
        }
        progress("checking every node's services: kiln services deploy (must change nothing)");
        let out = Command::new("ip").args(&again).output();
        let result = match out {
            Ok(out) if out.status.success() => {
                let text = String::from_utf8_lossy(&out.stdout);
                let summary = text.lines().last().unwrap_or("").to_string();
                if summary.contains(" 0 changed, 0 failed") {
                    Ok(format!("services: {summary}"))
                } else {
                    Err(format!("services drifted: {summary}"))
                }
            }
            Ok(out) => Err(format!(
                "kiln services deploy failed: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            )),
            Err(e) => Err(format!("cannot run kiln services deploy: {e}")),
        };
        checks.push(("all nodes".to_string(), result));
    }
    if status.success() && options.services.iter().any(|s| s == "keystone") {
        let password = Passwords::load(&passwords)
            .ok()
            .and_then(|p| p.get("keystone_admin_password").map(str::to_string))
            .unwrap_or_default();
        let controls: Vec<String> = read_control_addresses(&dir.join("rack.yaml"));
        for address in controls {
            progress(&format!("checking keystone at http://{address}:5000"));
            let result = keystone_token(&up.name, &address, &password);
            checks.push((address, result));
        }
    }
    Ok(DemoReport {
        deploy_seconds,
        deploy_ok: status.success(),
        checks,
    })
}

/// Addresses of the rack's control nodes (keystone runs on each).
fn read_control_addresses(rack: &Path) -> Vec<String> {
    match crate::inventory::load(rack) {
        Ok(inventory) => inventory
            .nodes
            .iter()
            .filter(|n| n.roles.contains(&crate::model::Role::Control))
            .filter_map(|n| n.network.as_ref().map(|net| net.address.to_string()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// POST /v3/auth/tokens for admin, from a thread inside the lab's namespace. Ok("token issued
/// in N ms") on 201 with a token header.
fn keystone_token(namespace: &str, address: &str, password: &str) -> Result<String, String> {
    let url = format!("http://{address}:5000/v3/auth/tokens");
    let body = serde_json::json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}});
    let asked = host::in_namespace(namespace, move || async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let reply = client
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = reply.status();
        let has_token = reply.headers().contains_key("x-subject-token");
        if status.as_u16() == 201 && has_token {
            Ok(format!(
                "keystone issued a token for admin in {} ms",
                started.elapsed().as_millis()
            ))
        } else {
            Err(format!(
                "{url}: HTTP {status}, token header present: {has_token}"
            ))
        }
    });
    asked.and_then(|result| result)
}
