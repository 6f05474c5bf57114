//! The deploy workflow through the real daemon, the real `kiln-agent` binary and a real Redfish
//! BMC (sushy-tools), all inside a namespace lab, without VMs: the agent is started the way the
//! ramdisk starts it (a kernel command line from the node's real iPXE script), writes the image
//! to a file standing in for the disk, and a listener on the node's address stands in for its OS.
//!
//! Proves: token-less or wrong-token agent calls get 401; the inventory lands in `kiln node show`;
//! a wrong checksum ends in `deploy-failed` naming the mismatch; `deploy` again succeeds, the
//! written disk matches the image and carries a config drive; a daemon restart while the node is
//! in `wait-callback` loses nothing; `undeploy` with `--clean-erase-metadata` wipes the disk's
//! partition tables through the agent and ends `available`.

mod common;
#[path = "peers/sushy.rs"]
mod sushy;

use common::netns::Lab;
use common::{ChildGuard, free_port};
use rand::{RngCore, SeedableRng};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use sushy::{PASSWORD, SYSTEM_A, Sushy, SushyOptions, USER};

const MIB: usize = 1 << 20;
const BOOT_HTTP_PORT: u16 = 8080;

/// Fields drop in order: the daemon and sushy stop before their namespace and directory go.
struct Rig {
    daemon: Option<ChildGuard>,
    _sushy: Sushy,
    lab: Lab,
    dir: tempfile::TempDir,
    api_port: u16,
    image: Vec<u8>,
    /// Extra `kiln serve` flags for the next start.
    serve_flags: Vec<&'static str>,
}

impl Rig {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start_daemon(&mut self) {
        let data = self.data();
        let files = self.dir.path().join("files");
        let listen = format!("127.0.0.1:{}", self.api_port);
        let mut args = vec![
            "--data-dir",
            data.to_str().unwrap(),
            "--log-level",
            "debug",
            "serve",
            "--listen",
            &listen,
            "--boot-interface",
            "br0",
            "--dhcp-mode",
            "off",
            "--no-router-advertisements",
            "--files-root",
            files.to_str().unwrap(),
            "--agent-heartbeat",
            "1",
            "--deploy-os-timeout",
            "60",
            "--power-sync-interval=0",
        ];
        args.extend(&self.serve_flags);
        let log = self.dir.path().join("daemon.log");
        self.daemon = Some(self.lab.spawn_kiln(&log, &args, "boot HTTP listening"));
    }

    fn stop_daemon(&mut self) {
        self.daemon = None;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Runs `kiln` inside the lab namespace; returns (code, stdout, stderr).
    fn kiln(&self, args: &[&str]) -> (i32, String, String) {
        self.lab.kiln(&self.data(), args)
    }

    fn node(&self) -> serde_json::Value {
        let (code, out, err) = self.kiln(&["--json", "node", "show", "n1"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    }

    fn wait_state(&self, want: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let node = self.node();
            if node["provision_state"] == want {
                return node;
            }
            assert!(
                Instant::now() < deadline,
                "n1 never reached {want}: {node:#}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// HTTP from inside the namespace, as the node would send it: (status, body).
    fn curl(&self, args: &[&str]) -> (u16, String) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.lab.server_ns,
                "curl",
                "-s",
                "-w",
                "\n%{http_code}",
            ])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap();
        (status.trim().parse().unwrap_or(0), body.to_string())
    }

    /// The node's iPXE script, as iPXE fetches it; returns the kernel command line it boots.
    fn deploy_cmdline(&self) -> String {
        let url = format!(
            "http://{}:{BOOT_HTTP_PORT}/boot/{}.ipxe",
            self.lab.server_ip(),
            SYSTEM_A.mac
        );
        let (status, script) = self.curl(&[&url]);
        assert_eq!(status, 200, "{script}");
        let kernel = script
            .lines()
            .find(|l| l.starts_with("kernel "))
            .unwrap_or_else(|| panic!("no kernel line: {script}"));
        kernel
            .split_whitespace()
            .filter(|w| w.starts_with("kiln."))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Starts the real agent with that command line; it writes to `disk`.
    fn start_agent(&self, cmdline: &str, disk: &Path) -> ChildGuard {
        let file = self.dir.path().join("cmdline");
        std::fs::write(&file, format!("BOOT_IMAGE=vmlinuz {cmdline}\n")).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.lab.server_ns,
                env!("CARGO_BIN_EXE_kiln-agent"),
            ])
            .arg("--cmdline")
            .arg(&file)
            .arg("--sys-block")
            .arg(self.dir.path().join("block"))
            .arg("--target")
            .arg(disk)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        ChildGuard(child)
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn write_image_record(&self, sha256: &str) {
        let zst = zstd::encode_all(&self.image[..], 3).unwrap();
        let dir = self.dir.path().join("files/images");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tiny.raw.zst"), &zst).unwrap();
        let record = serde_json::json!({
            "name": "tiny", "format": "raw+zstd", "raw_size": self.image.len(),
            "size": zst.len(), "sha256": sha256,
        });
        std::fs::write(dir.join("tiny.json"), record.to_string()).unwrap();
    }

    fn image_sha256(&self) -> String {
        let zst = std::fs::read(self.dir.path().join("files/images/tiny.raw.zst")).unwrap();
        hex(&sha2::Sha256::digest(&zst))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A 96 MiB disk image: an MBR with one partition (1–48 MiB) full of random data.
fn make_image(dir: &Path) -> Vec<u8> {
    let path = dir.join("image.raw");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(96 * MIB as u64).unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("sfdisk (util-linux)");
    use std::io::Write;
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, size=96256, type=83\n")
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let mut image = std::fs::read(&path).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    rng.fill_bytes(&mut image[MIB..20 * MIB]);
    image
}

fn rig() -> Rig {
    let lab = Lab::new();
    let dir = tempfile::Builder::new()
        .prefix("kiln-deploy-")
        .tempdir()
        .unwrap();
    let block = dir.path().join("block");
    std::fs::create_dir_all(block.join("vda")).unwrap();
    std::fs::write(block.join("vda/size"), ((10u64 << 30) / 512).to_string()).unwrap();
    std::fs::write(block.join("vda/removable"), "0\n").unwrap();
    let sushy = Sushy::start(SushyOptions {
        netns: Some(lab.server_ns.clone()),
        single_system: true,
        ..SushyOptions::default()
    });
    let image = make_image(dir.path());
    let mut rig = Rig {
        api_port: free_port(),
        daemon: None,
        _sushy: sushy,
        image,
        serve_flags: Vec::new(),
        lab,
        dir,
    };
    // The node's "OS": something listening on its address once it "boots".
    let node_ip = rig.lab.addr(11);
    rig.lab
        .exec_ok(&["ip", "addr", "add", &format!("{node_ip}/24"), "dev", "br0"]);
    rig.write_image_record(&"0".repeat(64));
    rig.start_daemon();
    let inventory = format!(
        "nodes:\n  - name: n1\n    bmc: {{kind: redfish, address: '{}', system_id: '{}', username: {USER}, password: '{PASSWORD}'}}\n    nics: [{{mac: '{}'}}]\n    boot_mode: bios\n    network: {{address: {node_ip}, prefix: 24}}\n    image: {{source: tiny}}\n    ssh_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorKeyForExamplesOnly00000000000 op@lab']\n",
        rig._sushy.base_url,
        SYSTEM_A.path(),
        SYSTEM_A.mac
    );
    let file = rig.dir.path().join("rack.yaml");
    std::fs::write(&file, inventory).unwrap();
    let (code, _, err) = rig.kiln(&["enroll", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = rig.kiln(&["node", "manage", "n1"]);
    assert_eq!(code, 0, "{err}");
    rig.wait_state("manageable", Duration::from_secs(30));
    let (code, _, err) = rig.kiln(&["node", "provide", "n1"]);
    assert_eq!(code, 0, "{err}");
    rig.wait_state("available", Duration::from_secs(30));
    rig
}

#[test]
fn deploy_workflow_with_the_real_agent() {
    let mut rig = rig();
    let disk = rig.dir.path().join("disk.img");

    // Attempt 1: the catalog's checksum is wrong.
    assert_eq!(rig.kiln(&["node", "deploy", "n1"]).0, 0);
    let node = rig.wait_state("wait-callback", Duration::from_secs(30));
    let uuid = node["uuid"].as_str().unwrap().to_string();
    let cmdline = rig.deploy_cmdline();
    assert!(cmdline.contains(&format!("kiln.node={uuid}")), "{cmdline}");

    // Agent calls without the token, or with a wrong one, are refused.
    let lookup = format!(
        "http://{}:{BOOT_HTTP_PORT}/agent/v1/nodes/{uuid}/lookup",
        rig.lab.server_ip()
    );
    let body = r#"{"mac":null,"agent_version":"x"}"#;
    let (status, _) = rig.curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        body,
        &lookup,
    ]);
    assert_eq!(status, 401);
    let (status, _) = rig.curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        "authorization: Bearer 0123456789abcdef",
        "-d",
        body,
        &lookup,
    ]);
    assert_eq!(status, 401);

    let agent = rig.start_agent(&cmdline, &disk);
    let failed = rig.wait_state("deploy-failed", Duration::from_secs(60));
    let error = failed["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("checksum mismatch"),
        "{failed:#}\n{}",
        rig.agent_log()
    );
    // Inspection data reached the store and `kiln node show`.
    assert_eq!(
        failed["inventory"]["data"]["disks"][0]["name"], "vda",
        "{failed:#}"
    );
    let (_, table, _) = rig.kiln(&["node", "show", "n1"]);
    assert!(
        table.contains("inventory_disk_vda") && table.contains("10737418240 bytes"),
        "{table}"
    );
    drop(agent);

    // Attempt 2: right checksum; the daemon restarts while the node waits for its agent.
    let sha = rig.image_sha256();
    rig.write_image_record(&sha);
    assert_eq!(rig.kiln(&["node", "deploy", "n1"]).0, 0);
    rig.wait_state("wait-callback", Duration::from_secs(30));
    let cmdline = rig.deploy_cmdline();
    rig.stop_daemon();
    rig.start_daemon();
    assert_eq!(rig.node()["provision_state"], "wait-callback");
    let _agent = rig.start_agent(&cmdline, &disk);
    // The node is up once the image is written and the "OS" answers on the node's address.
    let deadline = Instant::now() + Duration::from_secs(60);
    while rig.node()["deploy"]["step"] != "wait-os" {
        assert!(
            Instant::now() < deadline,
            "{:#}\n{}",
            rig.node(),
            rig.agent_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let node_ip = rig.lab.addr(11);
    let listener = rig
        .lab
        .in_server_ns(move || std::net::TcpListener::bind((node_ip.as_str(), 22)).unwrap());
    let node = rig.wait_state("active", Duration::from_secs(30));
    drop(listener);
    assert_eq!(node["last_error"], serde_json::Value::Null);

    // The disk holds the image, then a config drive partition after it.
    let written = std::fs::read(&disk).unwrap();
    assert_eq!(
        &written[..96 * MIB][446..462],
        &rig.image[446..462],
        "partition 1 entry kept"
    );
    assert_eq!(&written[MIB..20 * MIB], &rig.image[MIB..20 * MIB]);
    let agent_log = rig.agent_log();
    assert!(
        agent_log.contains("config drive on partition 2"),
        "{agent_log}"
    );
    let partx = Command::new("partx")
        .args(["-g", "-o", "NR,START,SECTORS"])
        .arg(&disk)
        .output()
        .unwrap();
    let partx = String::from_utf8_lossy(&partx.stdout);
    assert_eq!(partx.lines().count(), 2, "{partx}");
    // The token is spent: the old agent can no longer call.
    let (status, _) = rig.curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        &format!("authorization: Bearer {}", token_of(&cmdline)),
        "-d",
        body,
        &lookup,
    ]);
    assert_eq!(status, 401);

    // Undeploy with metadata erase (Ironic's erase_devices_metadata): power off, then cleaning
    // boots the ramdisk again and its agent wipes the disk's partition tables.
    rig.serve_flags = vec!["--clean-erase-metadata"];
    rig.stop_daemon();
    rig.start_daemon();
    assert_eq!(rig.kiln(&["node", "undeploy", "n1"]).0, 0);
    rig.wait_state("clean-wait", Duration::from_secs(30));
    let clean_cmdline = rig.deploy_cmdline();
    let cleaner = rig.start_agent(&clean_cmdline, &disk);
    rig.wait_state("available", Duration::from_secs(60));
    drop(cleaner);
    let wiped = std::fs::read(&disk).unwrap();
    assert!(
        wiped[..MIB].iter().all(|b| *b == 0),
        "partition table not erased"
    );
    assert!(wiped[wiped.len() - MIB..].iter().all(|b| *b == 0));
    let partx = Command::new("partx")
        .args(["-g"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        partx.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&partx.stdout)
    );
    assert!(
        rig.agent_log().contains("erased partition tables"),
        "{}",
        rig.agent_log()
    );

    // The timeline tells the story.
    let (_, history, _) = rig.kiln(&["node", "history", "n1"]);
    for needle in [
        "agent",
        "inventory",
        "writing image",
        "rebooted",
        "answers",
        "active",
    ] {
        assert!(
            history.contains(needle),
            "history lacks {needle}:\n{history}"
        );
    }
    // No secret in any log.
    for text in [rig.log(), rig.agent_log()] {
        assert!(!text.contains(PASSWORD));
        assert!(!text.contains(token_of(&cmdline)));
        assert!(!text.contains("PRIVATE KEY"));
    }
}

fn token_of(cmdline: &str) -> &str {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("kiln.token="))
        .unwrap()
}
