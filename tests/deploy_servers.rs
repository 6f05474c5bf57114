//! `kiln deploy-servers`, `kiln lab demo` and `kiln reset` on a virtual rack of two QEMU TCG VMs
//! (one BIOS, one UEFI): a deploy-servers run killed mid-imaging, then `kiln lab demo` finishing
//! the job without re-imaging (power-off → containers healthy on both VMs, its check passing),
//! then `kiln reset --all` re-imaging both and bringing their services back. Every run prints the
//! per-node phase table; the test asserts on it. Services: the built-in catalog's OpenStack slice
//! that README command 1 deploys (mariadb on rack-01, memcached and keystone on both), from the
//! Kolla-contract images (images/kolla), preloaded into the OS image the nodes get
//! (`kiln image build os --name debian-12-kolla --preload`): the deployer finds each image on the
//! node by content ID and tags it instead of streaming it, which the TCG VMs' dockerd would take
//! ~15 minutes to unpack. The demo's check asks every keystone for a token.

mod common;

use common::rack_lab::RackLab;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const REPO: &str = env!("CARGO_MANIFEST_DIR");
const FILES_ROOT: &str = "/var/cache/kiln-images/files";
const IMAGE: &str = "debian-12-kolla";
const SERVICES: &str = "mariadb,memcached,keystone";
/// What `kiln lab demo` writes, so deploy-servers and reset render the same containers.
const GLOBALS: &str = "docker_registry: \"kiln.local:5000\"\nkeystone_api_workers: 1\n";

fn run(command: &mut Command) -> (i32, String, String) {
    common::exit_and_text(&command.output().unwrap())
}

/// The virtual rack, and the image archives streamed to its nodes.
struct Rack {
    lab: RackLab,
    archives: PathBuf,
}

impl std::ops::Deref for Rack {
    type Target = RackLab;
    fn deref(&self) -> &RackLab {
        &self.lab
    }
}

impl Rack {
    /// deploy-servers / reset arguments shared with what `lab demo` runs.
    fn pipeline_args(&self) -> Vec<String> {
        [
            "-i",
            &self.path("rack.yaml"),
            "--globals",
            &self.path("globals.yaml"),
            "--passwords",
            &self.path("passwords.yaml"),
            "--tags",
            SERVICES,
            "--image-archives",
            self.archives.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn imagings(&self, node: &str) -> usize {
        let (code, out, err) = run(&mut self.kiln(&["--json", "node", "history", node]));
        assert_eq!(code, 0, "{err}");
        let items: Vec<serde_json::Value> = serde_json::from_str(&out).expect("history JSON");
        items
            .iter()
            // A new imaging starts from available (deploy), active (rebuild) or deploy-failed;
            // wait-callback → deploying is the same deploy moving on.
            .filter(|i| {
                i["type"] == "transition"
                    && i["to"] == "deploying"
                    && matches!(
                        i["from"].as_str(),
                        Some("available" | "active" | "deploy-failed")
                    )
            })
            .count()
    }
}

/// The slice's images as `docker save` archives (DIR/archives/keystone.tar, …), and the OS image
/// with them preloaded in FILES_ROOT's catalog (both built once and cached).
fn preloaded_image(dir: &Path) -> PathBuf {
    let started = Instant::now();
    let archives = dir.join("archives");
    let status = Command::new("bash")
        .arg(format!("{REPO}/images/kolla/export.sh"))
        .arg(&archives)
        .arg("mariadb-server,memcached,keystone")
        .stdout(Stdio::null())
        .status()
        .expect("images/kolla/export.sh");
    assert!(status.success(), "images/kolla/export.sh failed");
    let status = Command::new(KILN)
        .args([
            "image",
            "build",
            "os",
            "--files-root",
            FILES_ROOT,
            "--recipes",
        ])
        .arg(format!("{REPO}/images"))
        .args(["--name", IMAGE, "--preload"])
        .arg(&archives)
        .stdout(Stdio::null())
        .status()
        .expect("kiln image build os");
    assert!(status.success(), "kiln image build os --preload failed");
    eprintln!(
        "archives and {IMAGE} ready in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    archives
}

/// Rows of the phase table: node → (healthy services, result). Every node's SERVICES cell (from
/// its handoff to its last service ready) must be a duration.
fn phase_table(stdout: &str) -> Vec<(String, String, String)> {
    stdout
        .lines()
        .filter(|l| l.starts_with("| rack-"))
        .map(|l| {
            let cells: Vec<String> = l.split('|').map(|c| c.trim().to_string()).collect();
            // | NODE | VERIFIED AT | PROVISION | ACTIVE AT | SERVICES | HEALTHY SERVICES | RESULT |
            let services_s = cells[5]
                .strip_suffix(" s")
                .and_then(|n| n.parse::<u64>().ok());
            assert!(services_s.is_some(), "SERVICES cell {:?} in {l}", cells[5]);
            (cells[1].clone(), cells[6].clone(), cells[7].clone())
        })
        .collect()
}

fn assert_rack_healthy(stdout: &str) {
    let rows = phase_table(stdout);
    assert_eq!(
        rows,
        vec![
            (
                "rack-01".into(),
                "keystone,mariadb,memcached".into(),
                "ok".into()
            ),
            ("rack-02".into(), "keystone,memcached".into(), "ok".into()),
        ],
        "phase table:\n{stdout}"
    );
}

/// Every image the slice needs was found on its node: 3 on rack-01, 2 on rack-02.
fn assert_preloaded_images_were_tagged_not_streamed(log: &str) {
    let tagged = log
        .lines()
        .filter(|l| l.contains("(preloaded, same content ID): tagged, not loaded"))
        .count();
    assert_eq!(tagged, 5, "images tagged, not loaded:\n{log}");
}

#[test]
fn interrupted_deploy_servers_then_lab_demo_then_reset() {
    let lab = RackLab::new("kiln-ds-", "kds");
    let archives = preloaded_image(lab.parent.path());
    let rack = Rack { lab, archives };
    let (code, out, err) = run(Command::new(KILN)
        .args([
            "lab",
            "up",
            "--nodes",
            "2",
            "--uefi",
            "1",
            "--image",
            IMAGE,
            "--files-root",
            FILES_ROOT,
            "--name",
            &rack.name,
            "--dir",
        ])
        .arg(&rack.dir));
    assert_eq!(code, 0, "lab up: {out}{err}");
    std::fs::write(rack.path("globals.yaml"), GLOBALS).unwrap();

    // 1. deploy-servers, killed while the nodes are being imaged.
    let log = rack.dir.join("interrupted.log");
    let mut args = vec!["deploy-servers".to_string()];
    args.extend(rack.pipeline_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = rack
        .kiln(&args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(" imaging") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "no node started imaging:\n{text}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "deploy-servers ended early:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    child.kill().unwrap(); // SIGKILL: no clean-up of any kind
    child.wait().unwrap();
    eprintln!(
        "deploy-servers killed mid-imaging after {:.0} s",
        started.elapsed().as_secs_f64()
    );

    // 2. kiln lab demo: the lab is up, so it runs deploy-servers again, which picks the nodes up
    //    where they are, and checks that every service is healthy and nothing drifted.
    let started = Instant::now();
    let (code, out, err) = run(Command::new(KILN)
        .args(["lab", "demo", "--name", &rack.name, "--dir"])
        .arg(&rack.dir)
        .args(["--services", SERVICES, "--image-archives"])
        .arg(&rack.archives));
    eprintln!(
        "lab demo: {:.0} s\n{out}\n{err}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(code, 0, "lab demo failed");
    assert!(out.contains("lab demo passed"), "{out}");
    assert!(out.contains("check all nodes: services:"), "{out}");
    for address in ["10.66.0.11", "10.66.0.12"] {
        assert!(
            out.contains(&format!("check {address}: keystone issued a token")),
            "{out}"
        );
    }
    assert_preloaded_images_were_tagged_not_streamed(&err);
    assert_rack_healthy(&out);
    for node in ["rack-01", "rack-02"] {
        assert_eq!(rack.imagings(node), 1, "{node} imaged exactly once");
    }

    // 3. kiln reset --all: both nodes imaged again, services back.
    let started = Instant::now();
    let mut args = vec!["reset".to_string(), "--all".to_string()];
    args.extend(rack.pipeline_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run(&mut rack.kiln(&args));
    eprintln!(
        "reset --all: {:.0} s\n{out}\n{err}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(code, 0, "reset failed");
    assert_preloaded_images_were_tagged_not_streamed(&err);
    assert_rack_healthy(&out);
    for node in ["rack-01", "rack-02"] {
        assert_eq!(rack.imagings(node), 2, "{node} re-imaged by reset");
    }
}
