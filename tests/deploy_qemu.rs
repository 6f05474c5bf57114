//! Provisioning end to end on a virtual rack: two QEMU TCG VMs (one BIOS, one UEFI) behind
//! `kiln vbmc` Redfish BMCs, the real daemon with its own DHCP/TFTP/HTTP in a namespace lab, the
//! real deploy ramdisk and Debian 12 image built by `kiln image build` (cached under
//! /var/cache/kiln-images). `kiln node deploy` on both → each boots the ramdisk, its agent writes
//! the image and a config drive, the node reboots from its own disk into Debian, which applies
//! the hostname and Docker TLS material → `active`. The daemon is killed and restarted while the
//! nodes wait for their agents. The test then talks to each node's Docker Engine over mutual TLS
//! with a client certificate from Kiln's CA (and is refused with one from another CA).

mod common;

use common::netns::Lab;
use common::{ChildGuard, free_port};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const FILES: &str = "/var/cache/kiln-images/files";
const VBMC_PASSWORD: &str = "Vbmc-E2E-Secret-1";

struct Vm {
    name: &'static str,
    mac: &'static str,
    uefi: bool,
    host: u8,
}

const VMS: [Vm; 2] = [
    Vm {
        name: "e2e-bios",
        mac: "52:54:00:e2:00:01",
        uefi: false,
        host: 11,
    },
    Vm {
        name: "e2e-uefi",
        mac: "52:54:00:e2:00:02",
        uefi: true,
        host: 12,
    },
];

/// Builds (or finds cached) the deploy ramdisk and the Debian image.
fn build_images() {
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("images");
    for target in ["ramdisk", "os"] {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["image", "build", target, "--files-root", FILES, "--recipes"])
            .arg(&recipes)
            .args(["--agent", env!("CARGO_BIN_EXE_kiln-agent")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kiln image build {target}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Fields drop in order: the daemon and the vbmc (which stops its QEMUs) before the namespace
/// and the directory holding the disks and QMP sockets are removed.
struct Rack {
    daemon: Option<ChildGuard>,
    vbmc: Option<ChildGuard>,
    lab: Lab,
    dir: tempfile::TempDir,
}

impl Rack {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn start_daemon(&mut self) {
        let data = self.data();
        let args = [
            "--data-dir",
            data.to_str().unwrap(),
            "--log-level",
            "info,kiln=debug",
            "serve",
            "--listen",
            "127.0.0.1:6385",
            "--boot-interface",
            "br0",
            "--files-root",
            FILES,
            "--default-image",
            "debian-12",
            "--agent-heartbeat",
            "2",
            "--deploy-callback-timeout",
            "600",
            "--deploy-os-timeout",
            "900",
        ];
        let log = self.dir.path().join("daemon.log");
        self.daemon = Some(self.lab.spawn_kiln(&log, &args, "DHCP serving"));
    }

    /// Stops the daemon, then the vbmc (SIGTERM, as systemd would): it must stop every QEMU it
    /// started itself (not leave them to the kernel's parent-death signal), leaving nothing in
    /// the lab's namespace.
    fn stop(&mut self) {
        self.daemon = None;
        self.vbmc = None;
        let vbmc_log =
            std::fs::read_to_string(self.dir.path().join("vbmc.log")).unwrap_or_default();
        let left = self.lab.processes();
        assert!(
            left.is_empty() && vbmc_log.contains("every VM it started is off"),
            "still running after the vbmc stopped: {left:#?}\n--- vbmc ---\n{}",
            tail(&vbmc_log, 40)
        );
    }

    fn kiln(&self, args: &[&str]) -> (i32, String, String) {
        self.lab.kiln(&self.data(), args)
    }

    fn node(&self, name: &str) -> serde_json::Value {
        let (code, out, err) = self.kiln(&["--json", "node", "show", name]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    }

    fn serial(&self, name: &str) -> String {
        let path = self.dir.path().join(format!("vbmc/{name}.serial.log"));
        String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
    }

    /// Waits until every VM's node is in `state`; fails early on deploy-failed.
    fn wait_all(&self, state: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last_report = Instant::now();
        loop {
            let nodes: Vec<serde_json::Value> = VMS.iter().map(|vm| self.node(vm.name)).collect();
            if nodes.iter().all(|n| n["provision_state"] == state) {
                return;
            }
            for (vm, node) in VMS.iter().zip(&nodes) {
                assert!(
                    node["provision_state"] != "deploy-failed" || state == "deploy-failed",
                    "{} failed: {node:#}\n--- serial ---\n{}\n--- daemon ---\n{}",
                    vm.name,
                    tail(&self.serial(vm.name), 60),
                    tail(&self.log(), 80)
                );
            }
            if last_report.elapsed() > Duration::from_secs(30) {
                for node in &nodes {
                    eprintln!(
                        "{}: {} {} {}",
                        node["spec"]["name"],
                        node["provision_state"],
                        node["deploy"]["step"],
                        node["waiting"]
                    );
                }
                last_report = Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "not all {state}: {nodes:#?}\n--- serials ---\n{}\n{}\n--- daemon ---\n{}",
                tail(&self.serial(VMS[0].name), 40),
                tail(&self.serial(VMS[1].name), 40),
                tail(&self.log(), 80)
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// HTTPS to a node's Docker Engine from inside the lab, with a client identity.
    fn docker(&self, ip: &str, path: &str, ca: &Path, cert: &Path, key: &Path) -> (bool, String) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.lab.server_ns,
                "curl",
                "-sS",
                "--max-time",
                "20",
                "--cacert",
            ])
            .arg(ca)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg(format!("https://{ip}:2376{path}"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn rack() -> Rack {
    let mut lab = Lab::new();
    let dir = tempfile::Builder::new()
        .prefix("kiln-e2e-")
        .tempdir()
        .unwrap();
    let vbmc_port = free_port();
    let mut vms_yaml = String::new();
    for vm in &VMS {
        let tap = lab.add_tap();
        let disk = dir.path().join(format!("{}.raw", vm.name));
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(4 << 30)
            .unwrap();
        vms_yaml.push_str(&format!(
            "  - {{name: {}, mac: '{}', tap: {tap}, disk: {}, memory_mb: 1024, uefi: {}}}\n",
            vm.name,
            vm.mac,
            disk.display(),
            vm.uefi
        ));
    }
    let vbmc_config = dir.path().join("vbmc.yaml");
    std::fs::write(
        &vbmc_config,
        format!(
            "redfish_listen: 127.0.0.1:{vbmc_port}\nusername: admin\npassword: {VBMC_PASSWORD}\nstate_dir: {}\nvms:\n{vms_yaml}",
            dir.path().join("vbmc").display()
        ),
    )
    .unwrap();
    let vbmc = lab.spawn_kiln(
        &dir.path().join("vbmc.log"),
        &["--config", vbmc_config.to_str().unwrap(), "vbmc"],
        "vbmc Redfish listening",
    );
    let mut rack = Rack {
        daemon: None,
        vbmc: Some(vbmc),
        lab,
        dir,
    };
    rack.start_daemon();

    let mut inventory = format!(
        "defaults:\n  bmc: {{kind: redfish, address: 'http://127.0.0.1:{vbmc_port}', username: admin, password: '{VBMC_PASSWORD}'}}\n  ssh_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorKeyForExamplesOnly00000000000 op@e2e']\nnodes:\n"
    );
    for vm in &VMS {
        inventory.push_str(&format!(
            "  - {{name: {}, bmc: {{system_id: {}}}, nics: [{{mac: '{}'}}], boot_mode: {}, network: {{address: {}, prefix: 24}}, roles: [control]}}\n",
            vm.name,
            vm.name,
            vm.mac,
            if vm.uefi { "uefi" } else { "bios" },
            rack.lab.addr(vm.host)
        ));
    }
    let file = rack.dir.path().join("rack.yaml");
    std::fs::write(&file, inventory).unwrap();
    let names: Vec<&str> = VMS.iter().map(|vm| vm.name).collect();
    let (code, _, err) = rack.kiln(&["enroll", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = rack.kiln(&[&["node", "manage"][..], &names].concat());
    assert_eq!(code, 0, "{err}");
    rack.wait_all("manageable", Duration::from_secs(60));
    let (code, _, err) = rack.kiln(&[&["node", "provide"][..], &names].concat());
    assert_eq!(code, 0, "{err}");
    rack.wait_all("available", Duration::from_secs(60));
    rack
}

#[test]
fn two_vms_deploy_to_active_and_serve_docker_over_mutual_tls() {
    build_images();
    let mut rack = rack();
    let names: Vec<&str> = VMS.iter().map(|vm| vm.name).collect();
    let started = Instant::now();
    let (code, _, err) = rack.kiln(&[&["node", "deploy"][..], &names].concat());
    assert_eq!(code, 0, "{err}");
    rack.wait_all("wait-callback", Duration::from_secs(60));
    // A daemon restart while both wait for their agents loses nothing.
    rack.daemon = None;
    rack.start_daemon();
    rack.wait_all("active", Duration::from_secs(1200));
    eprintln!(
        "both nodes active {:.0} s after `kiln node deploy`",
        started.elapsed().as_secs_f64()
    );

    // Kiln's CA and its deployer client certificate (what the container deployer will use).
    let ca = kiln::ca::CertificateAuthority::load_or_create(&rack.data().join("ca")).unwrap();
    let client = ca.deployer_client().unwrap();
    let certs = rack.dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.pem"), ca.ca_pem()).unwrap();
    std::fs::write(certs.join("client.pem"), &client.cert_pem).unwrap();
    std::fs::write(certs.join("client-key.pem"), client.key_pem.expose()).unwrap();
    // A certificate from another CA must be refused.
    let other =
        kiln::ca::CertificateAuthority::load_or_create(&rack.dir.path().join("other-ca")).unwrap();
    let stranger = other.issue_client("stranger").unwrap();
    std::fs::write(certs.join("stranger.pem"), &stranger.cert_pem).unwrap();
    std::fs::write(certs.join("stranger-key.pem"), stranger.key_pem.expose()).unwrap();

    for vm in &VMS {
        let node = rack.node(vm.name);
        let ip = rack.lab.addr(vm.host);
        // Booted from its own disk into Debian (the serial console shows the kernel and GRUB
        // ran after the ramdisk), with the hostname from the inventory.
        let (ca_pem, cert, key) = (
            certs.join("ca.pem"),
            certs.join("client.pem"),
            certs.join("client-key.pem"),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let info = loop {
            let (ok, info) = rack.docker(&ip, "/info", &ca_pem, &cert, &key);
            if ok {
                break info;
            }
            assert!(
                Instant::now() < deadline,
                "{}: docker /info over mutual TLS failed: {info}\n--- serial ---\n{}",
                vm.name,
                tail(&rack.serial(vm.name), 120)
            );
            std::thread::sleep(Duration::from_secs(2));
        };
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["Name"], vm.name, "hostname from the inventory");
        assert!(
            info["OperatingSystem"]
                .as_str()
                .unwrap_or_default()
                .contains("Debian"),
            "{info}"
        );
        let (ok, containers) = rack.docker(
            &ip,
            "/containers/json",
            &certs.join("ca.pem"),
            &certs.join("client.pem"),
            &certs.join("client-key.pem"),
        );
        assert!(ok && containers.trim() == "[]", "{}: {containers}", vm.name);
        let (ok, refused) = rack.docker(
            &ip,
            "/containers/json",
            &certs.join("ca.pem"),
            &certs.join("stranger.pem"),
            &certs.join("stranger-key.pem"),
        );
        assert!(
            !ok,
            "{}: a foreign client certificate was accepted: {refused}",
            vm.name
        );

        // In-band inspection: disk size, MAC, RAM.
        let data = &node["inventory"]["data"];
        let disks = data["disks"].as_array().unwrap();
        assert!(
            disks.iter().any(|d| d["size_bytes"] == 4u64 << 30),
            "{}: {data}",
            vm.name
        );
        let macs: Vec<&str> = data["nics"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["mac"].as_str())
            .collect();
        assert!(macs.contains(&vm.mac), "{}: {macs:?}", vm.name);
        let ram = data["memory_bytes"].as_u64().unwrap();
        assert!(
            (900 << 20..=1024 << 20).contains(&ram),
            "{}: RAM {ram}",
            vm.name
        );

        // The timeline has every phase.
        let (_, history, _) = rack.kiln(&["node", "history", vm.name]);
        for needle in [
            "dhcp",
            "script",
            "agent",
            "inventory",
            "writing image",
            "rebooted",
            "answers",
            "deploying → active",
        ] {
            assert!(
                history.to_lowercase().contains(needle),
                "{}: history lacks {needle}:\n{history}",
                vm.name
            );
        }
    }
    // No secret leaked into the daemon's log.
    let log = rack.log();
    assert!(!log.contains(VBMC_PASSWORD) && !log.contains("PRIVATE KEY"));
    // Both VMs are still running here; stopping the vbmc must take their QEMUs with it.
    rack.stop();
}
