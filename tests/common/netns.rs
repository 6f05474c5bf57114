//! Network labs for tests: namespaces, a bridge, veth clients and tap devices that the test
//! creates itself and removes on drop. Kiln's DHCP never touches this machine's real interfaces.

use super::ChildGuard;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One server namespace holding bridge `br0` with `10.77.<subnet>.1/24`, plus client namespaces.
pub struct Lab {
    pub server_ns: String,
    pub subnet: u8,
    clients: Vec<String>,
    links: u32,
}

pub fn ip(args: &[&str]) {
    run("ip", args);
}

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Lab {
    pub fn new() -> Lab {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let subnet = ((pid as u32 * 7 + n * 13) % 200 + 20) as u8;
        let server_ns = format!("kt{pid}s{n}");
        ip(&["netns", "add", &server_ns]);
        let lab = Lab {
            server_ns,
            subnet,
            clients: Vec::new(),
            links: 0,
        };
        lab.exec_ok(&["ip", "link", "set", "lo", "up"]);
        lab.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        lab.exec_ok(&[
            "ip",
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
        ]);
        lab.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", lab.server_ip()),
            "dev",
            "br0",
        ]);
        lab.exec_ok(&["ip", "link", "set", "br0", "up"]);
        lab
    }

    pub fn server_ip(&self) -> String {
        format!("10.77.{}.1", self.subnet)
    }

    pub fn addr(&self, host: u8) -> String {
        format!("10.77.{}.{host}", self.subnet)
    }

    /// Runs a command inside the server namespace and asserts it succeeded.
    pub fn exec_ok(&self, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.server_ns];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `kiln --data-dir DATA ARGS` inside the server namespace, where a daemon started
    /// there listens; returns (exit code, stdout, stderr).
    pub fn kiln(&self, data: &std::path::Path, args: &[&str]) -> (i32, String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.server_ns, env!("CARGO_BIN_EXE_kiln")])
            .arg("--data-dir")
            .arg(data)
            .args(args)
            .output()
            .unwrap();
        super::exit_and_text(&out)
    }

    /// Starts `kiln ARGS` (`serve`, `vbmc`) inside the server namespace, appending its stderr to
    /// `log` (so a restarted daemon keeps one log), and waits until `ready` appears in the log
    /// once more than before. The guard stops it with SIGTERM, so it cleans up as in production.
    pub fn spawn_kiln(&self, log: &Path, args: &[&str], ready: &str) -> ChildGuard {
        let read = || std::fs::read_to_string(log).unwrap_or_default();
        let before = read().matches(ready).count();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.server_ns, env!("CARGO_BIN_EXE_kiln")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        let mut guard = ChildGuard(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while read().matches(ready).count() == before {
            let exited = guard.0.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "kiln {args:?} did not print {ready:?} (exit: {exited:?}):\n{}",
                read()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        guard
    }

    /// Every process still in the server namespace, as "PID COMMAND LINE": a test that has
    /// stopped what it started there expects none (a leaked QEMU would show up here).
    pub fn processes(&self) -> Vec<String> {
        let out = run("ip", &["netns", "pids", &self.server_ns]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                format!("{pid} {}", cmdline.trim_end())
            })
            .collect()
    }

    /// A client namespace with `eth0` (the given MAC) cabled to the bridge.
    pub fn add_client(&mut self, mac: &str) -> String {
        self.links += 1;
        let ns = format!("{}c{}", self.server_ns, self.links);
        let host_end = format!("vc{}", self.links);
        ip(&["netns", "add", &ns]);
        self.clients.push(ns.clone());
        self.exec_ok(&[
            "ip", "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        self.exec_ok(&["ip", "link", "set", &host_end, "master", "br0", "up"]);
        run("ip", &["-n", &ns, "link", "set", "eth0", "address", mac]);
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// A tap device on the bridge, for a QEMU VM started inside the server namespace.
    pub fn add_tap(&mut self) -> String {
        self.links += 1;
        let tap = format!("tap{}", self.links);
        self.exec_ok(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"]);
        self.exec_ok(&["ip", "link", "set", &tap, "master", "br0", "up"]);
        tap
    }

    /// Runs `f` on a thread that has entered the server namespace: sockets it creates live there.
    pub fn in_server_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.server_ns);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.clients.iter().chain(std::iter::once(&self.server_ns)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs busybox udhcpc in `ns` on eth0 and returns the address it was given, if any.
pub fn udhcpc(ns: &str, tries: u32) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.sh");
    let result = dir.path().join("ip");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && echo \"$ip\" > {}\nexit 0\n",
            result.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-T", "1",
        ])
        .args(["-t", &tries.to_string(), "-s"])
        .arg(&script)
        .output()
        .unwrap();
    let _ = out;
    std::fs::read_to_string(&result)
        .ok()
        .map(|s| s.trim().to_string())
}
