//! The agent's life in the ramdisk: look itself up, report inventory, heartbeat, and run each
//! command Kiln offers (once per command id), reporting progress and the result.
//!
//! The agent never exits on its own: after a failure it keeps heartbeating so the operator can
//! retry, and a refused token (the attempt is over) only slows the heartbeat down.

use super::client::{AgentClient, ClientError};
use super::cmdline::AgentArgs;
use super::configdrive::{self, ConfigDriveFile};
use super::disks;
use super::image::{self, ImageSource, WriteOptions};
use super::inventory::{self, Roots};
use super::protocol::{
    Action, Command, CommandResult, DeployCommand, Heartbeat, Lookup, ProgressReport,
};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the agent reads its machine; tests point these at temp trees and files.
#[derive(Clone, Debug, Default)]
pub struct AgentEnv {
    pub roots: Roots,
    /// Write here instead of the chosen disk's `/dev` node (tests, the rack simulator).
    pub target_override: Option<PathBuf>,
    /// The simulated disk's speed, bytes/s (the rack simulator); `None` on real hardware.
    pub write_rate: Option<f64>,
}

fn log(message: impl std::fmt::Display) {
    eprintln!("kiln-agent: {message}");
}

/// Runs until killed.
pub async fn run(args: AgentArgs, env: AgentEnv) -> Result<(), ClientError> {
    let (Some(node), Some(token)) = (args.node, args.token.clone()) else {
        log("no kiln.node / kiln.token on the command line: nothing to call back");
        return Ok(());
    };
    let client = Arc::new(AgentClient::new(&args.api, node, token)?);
    let lookup = Lookup {
        mac: args.mac,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut delay = Duration::from_secs(1);
    let reply = loop {
        match client.lookup(&lookup).await {
            Ok(reply) => break reply,
            Err(err) => {
                log(format!(
                    "lookup failed: {err}; retrying in {} s",
                    delay.as_secs()
                ));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    };
    log(format!("I am node {} ({})", reply.name, reply.node));
    match inventory::gather(&env.roots) {
        Ok(found) => match client.inventory(&found).await {
            Ok(()) => log(format!(
                "inventory reported: {} CPUs, {} MiB, {} disks, {} NICs",
                found.cpus,
                found.memory_bytes >> 20,
                found.disks.len(),
                found.nics.len()
            )),
            Err(err) => log(format!("cannot report inventory: {err}")),
        },
        Err(err) => log(format!("cannot read the hardware inventory: {err}")),
    }

    let interval = Duration::from_secs(reply.heartbeat_secs.max(1));
    let running: Arc<Mutex<Option<u64>>> = Arc::default();
    let mut seen: HashSet<u64> = HashSet::new();
    // A command's task ends with the agent: in the rack simulator a power change drops `run`
    // (in a ramdisk the reboot ends the process), and a write must not go on behind it.
    let mut commands = AbortOnDrop(Vec::new());
    loop {
        let current = running.lock().ok().and_then(|r| *r);
        let mut wait = interval;
        match client.heartbeat(&Heartbeat { running: current }).await {
            Ok(reply) => {
                if let Some(command) = reply.command
                    && current.is_none()
                    && seen.insert(command.id)
                {
                    log(format!("command {}: {:?}", command.id, command.action));
                    if let Ok(mut slot) = running.lock() {
                        *slot = Some(command.id);
                    }
                    let client = Arc::clone(&client);
                    let running = Arc::clone(&running);
                    let env = env.clone();
                    let task = tokio::spawn(async move {
                        let result = execute(&client, &env, &command).await;
                        log(format!(
                            "command {} {}: {}",
                            command.id,
                            if result.ok { "done" } else { "failed" },
                            result.detail
                        ));
                        report_result(&client, &result).await;
                        if let Ok(mut slot) = running.lock() {
                            *slot = None;
                        }
                    });
                    commands.0.retain(|t| !t.is_finished());
                    commands.0.push(task.abort_handle());
                }
            }
            Err(ClientError::Unauthorized) => {
                log("token refused: this deploy attempt is over; waiting");
                wait = interval * 6;
            }
            Err(err) => log(format!("heartbeat failed: {err}")),
        }
        tokio::time::sleep(wait).await;
    }
}

struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Results matter: retry until Kiln has it (or refuses the token).
async fn report_result(client: &AgentClient, result: &CommandResult) {
    for attempt in 1..=30 {
        match client.result(result).await {
            Ok(()) | Err(ClientError::Unauthorized) => return,
            Err(err) => {
                log(format!(
                    "cannot report the result (attempt {attempt}): {err}"
                ));
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

async fn execute(client: &Arc<AgentClient>, env: &AgentEnv, command: &Command) -> CommandResult {
    let outcome = match &command.action {
        Action::Deploy(deploy) => run_deploy(client, env, command.id, deploy).await,
        Action::Wipe => run_wipe(env).await,
    };
    match outcome {
        Ok(detail) => CommandResult {
            command_id: command.id,
            ok: true,
            detail,
        },
        Err(detail) => CommandResult {
            command_id: command.id,
            ok: false,
            detail,
        },
    }
}

/// Erases partition tables and signatures on every fixed disk (or the test target).
async fn run_wipe(env: &AgentEnv) -> Result<String, String> {
    let targets: Vec<PathBuf> = match &env.target_override {
        Some(target) => vec![target.clone()],
        None => disks::read_disks(&env.roots.sys_block)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|d| !d.removable)
            .map(|d| d.path())
            .collect(),
    };
    let mut done = Vec::new();
    for target in targets {
        let path = target.clone();
        let size = tokio::task::spawn_blocking(move || super::wipe::erase_metadata(&path))
            .await
            .map_err(|e| format!("wipe task died: {e}"))?
            .map_err(|e| chain(&e))?;
        log(format!(
            "erased partition tables and signatures on {}",
            target.display()
        ));
        done.push(format!("{} ({} GiB)", target.display(), size >> 30));
    }
    if done.is_empty() {
        return Err("no disk to wipe".into());
    }
    Ok(format!("erased disk metadata on {}", done.join(", ")))
}

async fn run_deploy(
    client: &Arc<AgentClient>,
    env: &AgentEnv,
    command_id: u64,
    deploy: &DeployCommand,
) -> Result<String, String> {
    let found = disks::read_disks(&env.roots.sys_block).map_err(|e| e.to_string())?;
    let disk = disks::choose_root_disk(&found, &deploy.root_device, deploy.image_size.unwrap_or(0))
        .map_err(|e| e.to_string())?;
    let target = env.target_override.clone().unwrap_or_else(|| disk.path());
    log(format!(
        "writing {} to {} ({disk})",
        deploy.image_url,
        target.display()
    ));
    let source = ImageSource::parse(&deploy.image_url).map_err(|e| e.to_string())?;

    // Progress goes out from its own task so a slow Kiln never stalls the write.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProgressReport>();
    let reporter = {
        let client = Arc::clone(client);
        tokio::spawn(async move {
            while let Some(mut report) = rx.recv().await {
                while let Ok(newer) = rx.try_recv() {
                    report = newer;
                }
                if let Err(err) = client.progress(&report).await {
                    log(format!("cannot report progress: {err}"));
                }
            }
        })
    };
    let image_size = deploy.image_size;
    let written = image::write_image(
        &source,
        &target,
        deploy.checksum.as_ref(),
        &WriteOptions {
            max_write_rate: env.write_rate,
            ..WriteOptions::default()
        },
        |p| {
            let (done, total) = match image_size {
                Some(size) => (p.image_bytes, Some(size)),
                None => (p.downloaded, p.download_total),
            };
            let _ = tx.send(ProgressReport {
                command_id,
                done,
                total,
                rate: p.rate(),
            });
        },
    )
    .await;
    drop(tx);
    let _ = reporter.await;
    let report = written.map_err(|e| chain(&e))?;

    let files: Vec<ConfigDriveFile> = deploy
        .config_drive
        .iter()
        .map(|f| ConfigDriveFile {
            path: f.path.clone(),
            contents: f.contents.clone().into_bytes(),
        })
        .collect();
    let drive = if files.is_empty() {
        "no config drive".to_string()
    } else {
        let target = target.clone();
        let drive =
            tokio::task::spawn_blocking(move || configdrive::write_config_drive(&target, &files))
                .await
                .map_err(|e| format!("config drive writer died: {e}"))?
                .map_err(|e| format!("config drive: {}", chain(&e)))?;
        format!(
            "config drive on partition {} ({} MiB)",
            drive.partition_number,
            drive.size_bytes >> 20
        )
    };
    nix::unistd::sync();
    Ok(format!(
        "wrote {:.2} GiB to {} in {:.1} s ({:.1} MB/s, {:.2} GiB of zeros skipped), {}; {drive}",
        report.image_size as f64 / (1u64 << 30) as f64,
        target.display(),
        report.elapsed.as_secs_f64(),
        report.rate() / 1e6,
        report.skipped as f64 / (1u64 << 30) as f64,
        report.digest,
    ))
}

/// An error and its causes on one line ("a: b: c").
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
