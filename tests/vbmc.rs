//! `kiln vbmc` end to end: curl against its Redfish API, then Kiln's own Redfish driver verifies a
//! QEMU VM through it, sets one-time PXE, powers it on, and the VM network-boots from Kiln — all
//! inside a namespace lab the test builds (the daemon, the vbmc and QEMU all run in it).

mod common;

use common::netns::Lab;
use common::wait_for_text;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn in_ns(lab: &Lab, program: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &lab.server_ns, program])
        .args(args)
        .output()
        .unwrap()
}

fn curl(lab: &Lab, args: &[&str]) -> (String, String) {
    let mut full = vec!["-s", "-w", "\n%{http_code}"];
    full.extend_from_slice(args);
    let out = in_ns(lab, "curl", &full);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (body.to_string(), code.to_string())
}

#[test]
fn vbmc_redfish_drives_a_qemu_vm_that_pxe_boots_from_kiln() {
    let mut lab = Lab::new();
    let tap = lab.add_tap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("vbmc");
    let mac = "52:54:00:77:20:01";
    let config = dir.path().join("vbmc.yaml");
    std::fs::write(
        &config,
        format!(
            "redfish_listen: 127.0.0.1:8000\nusername: admin\npassword: vbmc-Secret-9\nstate_dir: {}\nvms:\n  - name: vm-node\n    mac: '{mac}'\n    tap: {tap}\n    memory_mb: 256\n",
            state.display()
        ),
    )
    .unwrap();
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let vbmc = lab.spawn_kiln(
        &dir.path().join("vbmc.log"),
        &[
            "--log-level",
            "debug",
            "vbmc",
            "--config",
            config.to_str().unwrap(),
        ],
        "vbmc Redfish listening",
    );

    // curl: auth required, root, Systems, the System, boot PATCH, Reset.
    let base = "http://127.0.0.1:8000/redfish/v1";
    let (_, code) = curl(&lab, &[&format!("{base}/")]);
    assert_eq!(code, "401");
    let auth = ["-u", "admin:vbmc-Secret-9"];
    let (body, code) = curl(&lab, &[auth[0], auth[1], &format!("{base}/")]);
    assert_eq!(code, "200");
    assert!(body.contains("/redfish/v1/Systems"), "{body}");
    let (body, _) = curl(&lab, &[auth[0], auth[1], &format!("{base}/Systems")]);
    assert!(body.contains("/redfish/v1/Systems/vm-node"), "{body}");
    let (body, _) = curl(
        &lab,
        &[auth[0], auth[1], &format!("{base}/Systems/vm-node")],
    );
    assert!(body.contains("\"PowerState\":\"Off\""), "{body}");
    let (_, code) = curl(
        &lab,
        &[
            auth[0],
            auth[1],
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"Boot":{"BootSourceOverrideTarget":"Hdd","BootSourceOverrideEnabled":"Continuous"}}"#,
            &format!("{base}/Systems/vm-node"),
        ],
    );
    assert_eq!(code, "204");
    let (_, code) = curl(
        &lab,
        &[
            auth[0],
            auth[1],
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"ResetType":"Dance"}"#,
            &format!("{base}/Systems/vm-node/Actions/ComputerSystem.Reset"),
        ],
    );
    assert_eq!(code, "400");

    // Kiln with boot services in the same namespace; the node's BMC is the vbmc.
    let data = dir.path().join("data");
    let pool = format!("--dhcp-pool={}-{}", lab.addr(20), lab.addr(30));
    let daemon = lab.spawn_kiln(
        &dir.path().join("daemon.log"),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--log-level",
            "debug",
            "serve",
            "--listen",
            "127.0.0.1:6385",
            "--boot-interface",
            "br0",
            "--power-sync-interval",
            "0",
            &pool,
        ],
        "DHCP serving",
    );
    let rack = dir.path().join("rack.yaml");
    std::fs::write(
        &rack,
        format!("nodes:\n  - name: vm-node\n    bmc: {{kind: redfish, address: 'http://127.0.0.1:8000', username: admin, password: vbmc-Secret-9}}\n    nics: [{{mac: '{mac}'}}]\n    boot_mode: bios\n"),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let mut full = vec!["--data-dir", data.to_str().unwrap()];
        full.extend_from_slice(args);
        let out = in_ns(&lab, kiln, &full);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    assert_eq!(cli(&["enroll", rack.to_str().unwrap()]).0, Some(0));
    assert_eq!(cli(&["node", "manage", "vm-node"]).0, Some(0));
    let mut shown = String::new();
    for _ in 0..200 {
        shown = cli(&["--json", "node", "show", "vm-node"]).1;
        if shown.contains("\"provision_state\": \"manageable\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        shown.contains("\"provision_state\": \"manageable\""),
        "verified through the vbmc: {shown}"
    );

    let (code, out) = cli(&["node", "boot-device", "vm-node", "pxe"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = cli(&["node", "power", "vm-node", "on"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("power on"), "{out}");
    wait_for_text(
        &state.join("vm-node.serial.log"),
        "Kiln: vm-node: node vm-node is manageable",
        Duration::from_secs(120),
    );

    let (code, out) = cli(&["node", "power", "vm-node", "off"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("power off"), "{out}");
    let (_, out) = cli(&["node", "power", "vm-node", "status"]);
    assert!(out.contains("power off"), "{out}");
    let log = std::fs::read_to_string(dir.path().join("vbmc.log")).unwrap()
        + &std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(!log.contains("vbmc-Secret-9"), "no password in the logs");

    // Powered on again and left running: stopping the vbmc (SIGTERM) stops its QEMU too, even
    // with its state directory (QMP socket) already gone, as when a test's temp dir goes first.
    let (code, out) = cli(&["node", "power", "vm-node", "on"]);
    assert_eq!(code, Some(0), "{out}");
    drop(daemon);
    assert!(lab.processes().iter().any(|p| p.contains("qemu-system")));
    std::fs::remove_dir_all(&state).unwrap();
    drop(vbmc);
    let left = lab.processes();
    let log = std::fs::read_to_string(dir.path().join("vbmc.log")).unwrap();
    assert!(
        left.is_empty() && log.contains("every VM it started is off"),
        "left behind: {left:#?}\n{log}"
    );
}

/// A vbmc killed outright runs no cleanup; the kernel still takes its VMs down
/// (`PR_SET_PDEATHSIG`), so a crashed vbmc leaks no QEMU.
#[test]
fn a_killed_vbmc_takes_its_vms_with_it() {
    let mut lab = Lab::new();
    let tap = lab.add_tap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vbmc.yaml");
    std::fs::write(
        &config,
        format!(
            "redfish_listen: 127.0.0.1:8000\nusername: admin\npassword: vbmc-Secret-9\nstate_dir: {}\nvms:\n  - {{name: doomed, mac: '52:54:00:77:20:02', tap: {tap}, memory_mb: 128}}\n",
            dir.path().join("vbmc").display()
        ),
    )
    .unwrap();
    // Killed and reaped by hand below; the guard's own SIGTERM must not go to a reused PID.
    let mut vbmc = std::mem::ManuallyDrop::new(lab.spawn_kiln(
        &dir.path().join("vbmc.log"),
        &["vbmc", "--config", config.to_str().unwrap()],
        "vbmc Redfish listening",
    ));
    let (body, code) = curl(
        &lab,
        &[
            "-u",
            "admin:vbmc-Secret-9",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"ResetType":"On"}"#,
            "http://127.0.0.1:8000/redfish/v1/Systems/doomed/Actions/ComputerSystem.Reset",
        ],
    );
    assert!(code.starts_with('2'), "{code} {body}");
    assert!(
        lab.processes().iter().any(|p| p.contains("qemu-system")),
        "{:?}",
        lab.processes()
    );
    vbmc.0.kill().unwrap();
    vbmc.0.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab.processes().is_empty() {
        assert!(
            Instant::now() < deadline,
            "QEMU outlived a killed vbmc: {:#?}",
            lab.processes()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
