//! OpenIPMI's `ipmi_sim` (Debian package `openipmi`) as a real IPMI v2.0 BMC for the lanplus
//! driver tests: one simulator per [`IpmiSim`] on a free 127.0.0.1 UDP port in a temp dir, with a
//! chassis-control script that keeps power and boot state in files the test can read. A shell
//! watchdog started with `setsid` kills the simulator when dropped, or when the test binary dies
//! (its end of the watchdog's stdin pipe closes).

#![allow(dead_code)]

use kiln::model::{BmcKind, BmcSpec, Secret};
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "admin";
pub const PASSWORD: &str = "Kiln-Ipmi-S3cret";

/// ipmi_sim runs `PROG get power|boot` and `PROG set power 1|0`, `set boot pxe|default|...`,
/// `set reset 1`, `set shutdown 1`. Every call is logged to `calls`; an ACPI shutdown request
/// powers off at once, like an OS that obeys it.
const CHASSIS_SCRIPT: &str = r#"#!/bin/sh
dir=$1; op=$2; shift 2
echo "$op $*" >> "$dir/calls"
case $op in
get)
    for p in "$@"; do
        case $p in
        power) echo "power:$(cat "$dir/power" 2>/dev/null || echo 0)" ;;
        boot) echo "boot:$(cat "$dir/boot" 2>/dev/null || echo none)" ;;
        *) echo "Invalid parameter: $p"; exit 1 ;;
        esac
    done ;;
set)
    while [ $# -ge 2 ]; do
        case $1 in
        power) echo "$2" > "$dir/power" ;;
        boot) echo "$2" > "$dir/boot" ;;
        shutdown) echo 0 > "$dir/power" ;;
        reset) echo "$(( $(cat "$dir/resets" 2>/dev/null || echo 0) + 1 ))" > "$dir/resets" ;;
        identify) shift ;;
        *) echo "Invalid parameter: $1"; exit 1 ;;
        esac
        shift 2
    done ;;
*) echo "Unknown operation: $op"; exit 1 ;;
esac
"#;

const EMULATION: &str =
    "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\nmc_enable 0x20\n";

/// Get Channel Authentication Capabilities outside a session: the readiness probe.
const PROBE: [u8; 23] = [
    0x06, 0x00, 0xff, 0x07, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x09, 0x20, 0x18, 0xc8, 0x81, 0x00, 0x38,
    0x8e, 0x04, 0xb5,
];

pub struct IpmiSim {
    dir: tempfile::TempDir,
    pub port: u16,
    watchdog: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
}

/// A loopback UDP port nothing listens on (bound, then released).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind a UDP port")
        .port()
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

impl IpmiSim {
    /// Starts a simulator on a free port; chassis power starts off, no boot override.
    pub fn start() -> IpmiSim {
        assert!(
            Path::new("/usr/bin/ipmi_sim").exists(),
            "ipmi_sim is not installed (apt-get install openipmi); tests/run.sh installs it"
        );
        let dir = tempfile::Builder::new()
            .prefix("kiln-ipmi-sim")
            .tempdir()
            .expect("temp dir");
        fs::create_dir_all(dir.path().join("state")).expect("state dir");
        fs::create_dir_all(dir.path().join("chassis")).expect("chassis dir");
        let script = dir.path().join("chassis.sh");
        fs::write(&script, CHASSIS_SCRIPT).expect("write chassis script");
        fs::write(dir.path().join("bmc.emu"), EMULATION).expect("write emu file");
        Command::new("chmod")
            .arg("+x")
            .arg(&script)
            .status()
            .expect("chmod");
        for _ in 0..5 {
            let port = free_udp_port();
            if let Some((watchdog, stdin, pid)) = launch(dir.path(), port) {
                return IpmiSim {
                    dir,
                    port,
                    watchdog,
                    stdin: Some(stdin),
                    pid,
                };
            }
        }
        panic!(
            "ipmi_sim did not start; see {}",
            dir.keep().join("ipmi_sim.log").display()
        );
    }

    /// A spec for this BMC with the right credentials and cipher suite 3.
    pub fn spec(&self) -> BmcSpec {
        self.spec_with(USER, PASSWORD)
    }

    pub fn spec_with(&self, username: &str, password: &str) -> BmcSpec {
        BmcSpec {
            username: username.into(),
            password: Secret::new(password),
            ..Self::spec_for_port(self.port)
        }
    }

    /// A spec with this helper's credentials for any loopback port (a closed or silent one).
    pub fn spec_for_port(port: u16) -> BmcSpec {
        BmcSpec {
            kind: BmcKind::Ipmi,
            address: "127.0.0.1".into(),
            port,
            username: USER.into(),
            password: Secret::new(PASSWORD),
            system_id: None,
            cipher_suite: Some(3),
            tls_verify: Default::default(),
        }
    }

    fn chassis(&self, name: &str) -> PathBuf {
        self.dir.path().join("chassis").join(name)
    }

    /// The chassis power the script holds: `Some("1")` on, `Some("0")` off, `None` never set.
    pub fn power(&self) -> Option<String> {
        fs::read_to_string(self.chassis("power"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The boot device ipmi_sim last handed to the script (`pxe`, `default`, ...).
    pub fn boot(&self) -> Option<String> {
        fs::read_to_string(self.chassis("boot"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    pub fn resets(&self) -> u32 {
        fs::read_to_string(self.chassis("resets"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Every call ipmi_sim made to the chassis script, one per line (`set power 1`, ...).
    pub fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.chassis("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Kills the simulator and starts a new one on the same port and state: every session the
    /// old one knew is gone, as after a BMC reboot.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some((watchdog, stdin, pid)) = launch(self.dir.path(), self.port) {
                (self.watchdog, self.stdin, self.pid) = (watchdog, Some(stdin), pid);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("ipmi_sim did not restart on port {}", self.port);
    }

    fn stop(&mut self) {
        // Closing the watchdog's stdin makes it kill the simulator; then reap the watchdog.
        self.stdin.take();
        let _ = self.watchdog.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(self.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes lan.conf for `port`, starts ipmi_sim under a `setsid` watchdog shell and waits until it
/// answers. `None` when it exits early (port taken) or stays silent.
fn launch(dir: &Path, port: u16) -> Option<(Child, ChildStdin, u32)> {
    let d = dir.display();
    let lan_conf = format!(
        "name \"kiln\"\nset_working_mc 0x20\n  startlan 1\n    addr 127.0.0.1 {port}\n    priv_limit admin\n\
         \x20   allowed_auths_callback none md2 md5 straight\n    allowed_auths_user none md2 md5 straight\n\
         \x20   allowed_auths_operator none md2 md5 straight\n    allowed_auths_admin none md2 md5 straight\n\
         \x20   guid a123456789abcdefa123456789abcdef\n  endlan\n\
         \x20 chassis_control \"{d}/chassis.sh {d}/chassis\"\n\
         \x20 user 2 true \"{USER}\" \"{PASSWORD}\" admin 10 none md2 md5 straight\n"
    );
    fs::write(dir.join("lan.conf"), lan_conf).ok()?;
    let watchdog_script = format!(
        "ipmi_sim -n -c {d}/lan.conf -f {d}/bmc.emu -s {d}/state </dev/null >>{d}/ipmi_sim.log 2>&1 & \
         echo $!; read _; kill -9 $!"
    );
    let mut watchdog = Command::new("setsid")
        .args(["sh", "-c", &watchdog_script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn setsid sh");
    let stdin = watchdog.stdin.take().expect("watchdog stdin");
    match wait_ready(&mut watchdog, port) {
        Some(pid) => Some((watchdog, stdin, pid)),
        None => {
            drop(stdin);
            let _ = watchdog.wait();
            None
        }
    }
}

/// Reads the simulator's pid from the watchdog and probes the port until it answers.
fn wait_ready(watchdog: &mut Child, port: u16) -> Option<u32> {
    let mut line = String::new();
    BufReader::new(watchdog.stdout.take()?)
        .read_line(&mut line)
        .ok()?;
    let pid: u32 = line.trim().parse().ok()?;
    let probe = UdpSocket::bind("127.0.0.1:0").ok()?;
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline && alive(pid) {
        let _ = probe.send_to(&PROBE, ("127.0.0.1", port));
        if probe.recv_from(&mut buf).is_ok_and(|(n, _)| n > 20) {
            return Some(pid);
        }
    }
    None
}
