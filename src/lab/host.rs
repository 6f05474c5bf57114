//! The lab's footprint on this machine: its network namespace (built with `ip -n NAME`, so no
//! command ever touches the host's own interfaces), the processes it starts detached, and finding
//! and stopping whatever of it still runs.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
}

/// Runs a command to completion; its stderr becomes the error.
pub fn run(program: &str, args: &[&str]) -> Result<String, HostError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HostError::Spawn {
            program: program.to_string(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(HostError::Failed {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Where `ip netns add` mounts a named namespace.
pub fn namespace_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// `ip netns add`, then everything else with `ip -n NAME`: lo up, the bridge with its address,
/// and one tap per VM on it. Only the new namespace is changed.
pub fn build_network(
    name: &str,
    bridge: &str,
    address: &str,
    taps: &[&str],
) -> Result<(), HostError> {
    run("ip", &["netns", "add", name])?;
    let ip = |args: &[&str]| {
        let mut full = vec!["-n", name];
        full.extend_from_slice(args);
        run("ip", &full).map(drop)
    };
    ip(&["link", "set", "lo", "up"])?;
    ip(&[
        "link",
        "add",
        bridge,
        "type",
        "bridge",
        "forward_delay",
        "0",
    ])?;
    ip(&["addr", "add", address, "dev", bridge])?;
    ip(&["link", "set", bridge, "up"])?;
    for tap in taps {
        ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        ip(&["link", "set", tap, "master", bridge, "up"])?;
    }
    Ok(())
}

/// Deletes the namespace (its bridge and taps go with it); false if there was none.
pub fn delete_namespace(name: &str) -> Result<bool, HostError> {
    if !namespace_exists(name) {
        return Ok(false);
    }
    run("ip", &["netns", "del", name])?;
    Ok(true)
}

/// PIDs of the processes inside the namespace.
pub fn namespace_pids(name: &str) -> Vec<u32> {
    if !namespace_exists(name) {
        return Vec::new();
    }
    run("ip", &["netns", "pids", name])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Starts `program ARGS` inside namespace `ns` (`ip netns exec` execs it in the same process, so
/// the child's PID is the program's), in a session of its own so it outlives this command and a
/// closing terminal, with stdio on `log`, `/` as its working directory (it holds no mount
/// busy) and no `KILN_*` variables from the caller's environment
/// (a `KILN_DATABASE_URL` must not point the lab's daemon at someone's database).
pub fn spawn_detached(
    ns: &str,
    program: &Path,
    args: &[&OsStr],
    log: &Path,
) -> Result<Child, HostError> {
    let spawn_error = |source| HostError::Spawn {
        program: program.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(spawn_error)?;
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(spawn_error)?)
        .stderr(file);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KILN_") {
            command.env_remove(key);
        }
    }
    // SAFETY: setsid is async-signal-safe and touches no memory shared with the parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            if nix::libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().map_err(spawn_error)
}

/// A process that exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|b| *b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether an argument names `dir` or something under it: `DIR`, `DIR/x`, `file=DIR/x`,
/// `unix:DIR/x,server=on` — but not `DIR2/x` or `/other/DIR/x`.
pub fn mentions(args: &[String], dir: &Path) -> bool {
    let dir = dir.to_string_lossy();
    let dir = dir.trim_end_matches('/');
    if dir.is_empty() {
        return false;
    }
    args.iter().any(|arg| {
        arg.match_indices(dir).any(|(at, _)| {
            let before = arg[..at].chars().last();
            let after = arg[at + dir.len()..].chars().next();
            matches!(before, None | Some('=' | ':' | ','))
                && matches!(after, None | Some('/' | ','))
        })
    })
}

/// Processes of the kinds a lab runs (QEMU, kiln) whose command line mentions `dir`, never this
/// process or its ancestors (a shell running `kiln lab down --dir DIR` mentions it too).
pub fn lab_processes(dir: &Path) -> Vec<u32> {
    let spared = ancestors();
    all_pids()
        .into_iter()
        .filter(|pid| !spared.contains(pid) && alive(*pid))
        .filter(|pid| {
            let args = cmdline(*pid);
            is_lab_program(&args) && mentions(&args, dir)
        })
        .collect()
}

/// Any process (other than this one and its ancestors) whose command line mentions `dir`.
pub fn processes_mentioning(dir: &Path) -> Vec<(u32, String)> {
    let spared = ancestors();
    all_pids()
        .into_iter()
        .filter(|pid| !spared.contains(pid) && alive(*pid))
        .filter_map(|pid| {
            let args = cmdline(pid);
            mentions(&args, dir).then(|| (pid, args.join(" ")))
        })
        .collect()
}

/// QEMU, or a kiln binary (the daemon, the vbmc), judged by the program name.
pub fn is_lab_program(args: &[String]) -> bool {
    let Some(program) = args.first() else {
        return false;
    };
    let base = Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    base.starts_with("qemu-system") || base == "kiln"
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn ancestors() -> Vec<u32> {
    let mut chain = vec![std::process::id()];
    let mut pid = std::process::id();
    while let Some(parent) = parent_of(pid) {
        if parent == 0 || chain.contains(&parent) {
            break;
        }
        chain.push(parent);
        pid = parent;
    }
    chain
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// SIGTERM to every live PID, SIGKILL to whatever has not gone after `grace`; returns the PIDs
/// that had to be killed. Waits until all are gone (or a short while after SIGKILL).
pub fn terminate(pids: &[u32], grace: Duration) -> Vec<u32> {
    let signal = |pid: u32, sig| {
        let _ = kill(Pid::from_raw(pid as i32), sig);
    };
    let live: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    for pid in &live {
        signal(*pid, Signal::SIGTERM);
    }
    if wait_gone(&live, grace) {
        return Vec::new();
    }
    let stubborn: Vec<u32> = live.iter().copied().filter(|p| alive(*p)).collect();
    for pid in &stubborn {
        signal(*pid, Signal::SIGKILL);
    }
    wait_gone(&stubborn, Duration::from_secs(3));
    stubborn
}

fn wait_gone(pids: &[u32], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !pids.iter().any(|p| alive(*p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `log` contains `ready`, failing early if the child exits.
pub fn wait_for_log(
    child: &mut Child,
    log: &Path,
    ready: &str,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        if std::fs::read_to_string(log).is_ok_and(|text| text.contains(ready)) {
            return Ok(());
        }
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("exited ({status})")),
            Ok(None) => {}
            Err(e) => return Err(format!("cannot watch it: {e}")),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "did not log {ready:?} within {} s",
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `lines` lines of a log, for error messages.
pub fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A program on PATH, as `command -v` finds it.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs `work` on a fresh thread that has entered the network namespace `namespace`, with a
/// current-thread tokio runtime: every socket it opens lives there, so `127.0.0.1` is the lab's
/// loopback, not the host's.
pub fn in_namespace<T, F, Fut>(namespace: &str, work: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    use std::os::fd::AsFd;
    let path = format!("/run/netns/{namespace}");
    let joined = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("cannot enter the namespace: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        Ok(runtime.block_on(work()))
    })
    .join();
    joined.unwrap_or_else(|_| Err("the namespace thread panicked".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split(' ').map(String::from).collect()
    }

    #[test]
    fn mentions_matches_the_directory_as_a_path_only() {
        let dir = Path::new("/tmp/lab");
        for yes in [
            "kiln vbmc --config /tmp/lab/vbmc.yaml",
            "kiln --data-dir /tmp/lab/data serve",
            "qemu-system-x86_64 -drive if=none,id=d0,file=/tmp/lab/rack-01.raw,format=raw",
            "qemu-system-x86_64 -serial file:/tmp/lab/vbmc/rack-01.serial.log",
            "qemu-system-x86_64 -qmp unix:/tmp/lab/vbmc/rack-01.qmp,server=on,wait=off",
            "rm -rf /tmp/lab",
        ] {
            assert!(mentions(&args(yes), dir), "{yes}");
        }
        for no in [
            "kiln --data-dir /tmp/lab2/data serve",
            "cat /var/tmp/lab/x",
            "kiln lab up",
            "",
        ] {
            assert!(!mentions(&args(no), dir), "{no}");
        }
        assert!(mentions(&args("x /tmp/lab/y"), Path::new("/tmp/lab/")));
    }

    #[test]
    fn lab_programs_are_qemu_and_kiln() {
        assert!(is_lab_program(&args(
            "/usr/bin/qemu-system-x86_64 -accel tcg"
        )));
        assert!(is_lab_program(&args("/work/target/debug/kiln vbmc")));
        assert!(!is_lab_program(&args("tail -f /tmp/lab/daemon.log")));
        assert!(!is_lab_program(&[]));
    }

    #[test]
    fn this_process_is_alive_and_spared() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(ancestors().contains(&me));
        assert!(!alive(u32::MAX));
    }
}
