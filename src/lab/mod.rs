//! `kiln lab`: a virtual rack on this machine that outlives the command building it — a network
//! namespace with bridge `br0`, one tap and sparse disk per QEMU VM, `kiln vbmc` as their Redfish
//! BMCs and a Kiln daemon serving DHCP/TFTP/HTTP on the bridge, plus the rack inventory to enroll.
//! Everything on the network side stays inside the lab's own namespace.
//!
//! The plan (names, MACs, addresses, both generated files) is pure, in [`plan`]; processes and
//! the namespace are in [`host`]; building the lab is `up`, asking it [`status`], and removing
//! it [`down`] (here).

pub mod demo;
pub mod host;
pub mod plan;
pub mod sim;
pub mod status;
mod up;

use host::HostError;
use plan::PlanError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use status::Status;
pub use up::{Lab, UpOptions, up};

pub const DEFAULT_NAME: &str = "kiln-lab";
pub const DEFAULT_DIR: &str = "/var/lib/kiln-lab";
pub const DEFAULT_FILES_ROOT: &str = "/var/cache/kiln-images/files";

/// Written first by `up`: what makes a directory a lab directory, and the plan to rebuild.
const RECORD: &str = "lab.json";
const PASSWORD_FILE: &str = "bmc-password";
const VBMC_CONFIG: &str = "vbmc.yaml";
const RACK: &str = "rack.yaml";
const SSH_KEY: &str = "ssh/id_ed25519";
const DAEMON: Service = Service {
    what: "the lab's Kiln daemon",
    pid: "daemon.pid",
    log: "daemon.log",
    ready: "DHCP serving",
};
const VBMC: Service = Service {
    what: "the lab's vbmc",
    pid: "vbmc.pid",
    log: "vbmc.log",
    ready: "vbmc Redfish listening",
};
/// How long a detached service may take to report that it serves.
const READY_LIMIT: Duration = Duration::from_secs(60);
/// How long the daemon and the vbmc (which stops its QEMUs, ~3 s) get after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

struct Service {
    what: &'static str,
    pid: &'static str,
    log: &'static str,
    ready: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("simulated rack: {0}")]
    Sim(String),
    #[error(
        "{dir} already holds lab '{name}'; remove it first with \
         `kiln lab down --name {name} --dir {dir}`"
    )]
    Exists { name: String, dir: String },
    #[error(
        "network namespace {name} already exists; remove that lab first with \
         `kiln lab down --name {name} --dir ITS_DIR`, or choose another --name"
    )]
    NamespaceExists { name: String },
    #[error("{dir} is not empty and holds no lab ({RECORD}); choose another --dir")]
    NotALab { dir: String },
    #[error("{dir} is not empty and holds no lab ({RECORD}); not touching it")]
    Foreign { dir: String },
    #[error("{dir} holds lab '{recorded}', not '{given}'")]
    OtherName {
        dir: String,
        recorded: String,
        given: String,
    },
    #[error("{program} is missing (Debian package {package})")]
    MissingTool {
        program: &'static str,
        package: &'static str,
    },
    #[error(
        "images missing in {files_root}: {missing}. Build them with:\n{commands}\
         or run `kiln lab up --build-images`"
    )]
    MissingImages {
        files_root: String,
        missing: String,
        commands: String,
    },
    #[error("`kiln image build {target}` failed ({status})")]
    ImageBuild {
        target: &'static str,
        status: String,
    },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: invalid lab record", path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot {action}")]
    Host {
        action: String,
        #[source]
        source: HostError,
    },
    #[error("{what} did not come up: {reason}\n--- {log} ---\n{tail}")]
    NotReady {
        what: &'static str,
        reason: String,
        log: String,
        tail: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LabError {
    let path = path.to_path_buf();
    move |source| LabError::Io {
        action,
        path,
        source,
    }
}

fn host_error(action: impl Into<String>) -> impl FnOnce(HostError) -> LabError {
    let action = action.into();
    move |source| LabError::Host { action, source }
}

/// The lab's parameters, kept in `DIR/lab.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    name: String,
    nodes: u32,
    uefi: u32,
    memory_mb: u32,
    disk_gb: u32,
    files_root: PathBuf,
    /// Simulated servers (`kiln lab up --sim`) rather than QEMU VMs.
    #[serde(default)]
    sim: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct DownReport {
    pub name: String,
    pub dir: PathBuf,
    /// Processes of the lab that were stopped, and which of them needed SIGKILL.
    pub stopped: Vec<u32>,
    pub killed: Vec<u32>,
    pub namespace_deleted: bool,
    pub dir_removed: bool,
    /// Processes that still mention the lab directory or sit in its namespace ("PID COMMAND"),
    /// which `down` does not kill because the lab did not start them.
    pub left: Vec<String>,
}

/// An absolute path without trailing slash: the form every command line of the lab uses, so
/// that `down` finds its processes by it.
fn absolute(dir: &Path) -> Result<PathBuf, LabError> {
    let path = std::path::absolute(dir).map_err(io("resolve", dir))?;
    Ok(path.components().collect())
}

fn read_record(dir: &Path) -> Result<Option<Record>, LabError> {
    let path = dir.join(RECORD);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| LabError::Record { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", &path)(e)),
    }
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// The flag's name, else the one recorded in the directory, else the default; a flag that
/// contradicts the record is refused rather than acting on the wrong namespace.
fn resolve_name(
    given: Option<&str>,
    record: Option<&Record>,
    dir: &Path,
) -> Result<String, LabError> {
    let name = match (given, record) {
        (Some(given), Some(record)) if given != record.name => {
            return Err(LabError::OtherName {
                dir: dir.display().to_string(),
                recorded: record.name.clone(),
                given: given.to_string(),
            });
        }
        (Some(given), _) => given.to_string(),
        (None, Some(record)) => record.name.clone(),
        (None, None) => DEFAULT_NAME.to_string(),
    };
    plan::check_name(&name)?;
    Ok(name)
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A service's PID from its file, if that process is still the lab's (PIDs get reused).
fn service_pid(dir: &Path, service: &Service) -> Option<u32> {
    read_pid(&dir.join(service.pid))
        .filter(|pid| host::alive(*pid) && host::mentions(&host::cmdline(*pid), dir))
}

/// Stops and removes the lab: SIGTERM to the daemon and the vbmc (which powers off its VMs),
/// SIGKILL after [`STOP_GRACE`], then any QEMU or kiln process still naming the lab directory or
/// sitting in its namespace, then the namespace and the directory. Safe to repeat, and works on a
/// half-built lab; refuses a non-empty directory that holds no lab.
pub fn down(name: Option<&str>, dir: &Path) -> Result<DownReport, LabError> {
    let dir = absolute(dir)?;
    let record = read_record(&dir)?;
    if record.is_none() && dir.exists() && !is_empty_dir(&dir) {
        return Err(LabError::Foreign {
            dir: dir.display().to_string(),
        });
    }
    let name = resolve_name(name, record.as_ref(), &dir)?;
    let services: Vec<u32> = [&DAEMON, &VBMC]
        .into_iter()
        .filter_map(|service| service_pid(&dir, service))
        .collect();
    let mut stopped = services.clone();
    let mut killed = host::terminate(&services, STOP_GRACE);
    let mut stray = host::lab_processes(&dir);
    for pid in host::namespace_pids(&name) {
        if !stray.contains(&pid) && host::is_lab_program(&host::cmdline(pid)) {
            stray.push(pid);
        }
    }
    killed.extend(host::terminate(&stray, Duration::from_secs(3)));
    stopped.extend(stray);
    let left_in_namespace: Vec<u32> = host::namespace_pids(&name)
        .into_iter()
        .filter(|pid| host::alive(*pid))
        .collect();
    let namespace_deleted = host::delete_namespace(&name)
        .map_err(host_error(format!("delete network namespace {name}")))?;
    let dir_removed = record.is_some() && dir.exists();
    if dir_removed {
        std::fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
    }
    let mut left: Vec<String> = host::processes_mentioning(&dir)
        .into_iter()
        .map(|(pid, line)| format!("{pid} {line}"))
        .collect();
    for pid in left_in_namespace {
        if host::alive(pid) && !left.iter().any(|l| l.starts_with(&format!("{pid} "))) {
            left.push(format!("{pid} {}", host::cmdline(pid).join(" ")));
        }
    }
    Ok(DownReport {
        name,
        dir,
        stopped,
        killed,
        namespace_deleted,
        dir_removed,
        left,
    })
}

/// What exists of the lab and what runs, with each VM's power (from the vbmc) and node state
/// (from the daemon), both asked inside the namespace.
pub fn status(name: Option<&str>, dir: &Path) -> Result<Status, LabError> {
    let dir = absolute(dir)?;
    let record = read_record(&dir)?;
    let name = resolve_name(name, record.as_ref(), &dir)?;
    let namespace = host::namespace_exists(&name);
    let process = |service: &Service| {
        let pid = read_pid(&dir.join(service.pid));
        status::ProcessStatus {
            pid,
            alive: service_pid(&dir, service).is_some(),
        }
    };
    let (daemon, vbmc) = (process(&DAEMON), process(&VBMC));
    let planned = match &record {
        Some(record) if record.sim => sim::vms(record.nodes)?,
        Some(record) => plan::vms(record.nodes, Some(record.uefi))?,
        None => Vec::new(),
    };
    let answers = if namespace {
        let secret = |path: PathBuf| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string())
        };
        status::ask(
            &name,
            secret(dir.join(PASSWORD_FILE)),
            secret(dir.join("data").join(crate::api::TOKEN_FILE)),
        )
    } else {
        let reason = format!("namespace {name} does not exist");
        status::Answers {
            power: Err(reason.clone()),
            nodes: Err(reason),
        }
    };
    let lookup = |answer: &Result<Vec<(String, String)>, String>, vm: &str| {
        answer
            .as_ref()
            .ok()
            .and_then(|pairs| pairs.iter().find(|(n, _)| n == vm).map(|(_, s)| s.clone()))
    };
    let vms = planned
        .iter()
        .map(|vm| status::VmStatus {
            name: vm.name.clone(),
            mac: vm.mac.clone(),
            address: vm.address.to_string(),
            boot_mode: if vm.uefi { "uefi" } else { "bios" },
            power: lookup(&answers.power, &vm.name),
            provision_state: lookup(&answers.nodes, &vm.name),
        })
        .collect();
    Ok(Status {
        name,
        exists: record.is_some(),
        dir,
        namespace,
        daemon,
        vbmc,
        vms,
        vbmc_error: answers.power.err(),
        daemon_error: answers.nodes.err(),
    })
}
