//! Real network boots: QEMU VMs (TCG) PXE-boot from the real `kiln serve` inside a namespace lab,
//! and the test reads the VM's serial console to see the node's own iPXE script run.

mod common;

use common::netns::Lab;
use common::{ChildGuard, wait_for_text};
use kiln::conductor::{BasicProvisioner, Conductor};
use kiln::model::Verb;
use kiln::store::Store;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Fields drop in order: the daemon and dnsmasq stop before their namespace and directory go.
struct BootLab {
    _daemon: ChildGuard,
    _others: Vec<ChildGuard>,
    lab: Lab,
    dir: tempfile::TempDir,
}

/// Enrolls one node (made `manageable`, so Kiln answers with its "nothing to boot" script that
/// names it), then starts the daemon inside the lab's namespace with boot services on br0.
async fn boot_lab(
    name: &str,
    mac: &str,
    boot_mode: &str,
    dhcp_mode: &str,
    dnsmasq: bool,
) -> BootLab {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let store = Store::open_in(&data).await.unwrap();
    let network = if dhcp_mode == "reservation" {
        format!("\n    network: {{address: {}, prefix: 24}}", lab.addr(60))
    } else {
        String::new()
    };
    let inventory = format!(
        "nodes:\n  - name: {name}\n    bmc: {{kind: ipmi, address: 10.1.0.1, username: u, password: p}}\n    nics: [{{mac: '{mac}'}}]\n    boot_mode: {boot_mode}{network}\n"
    );
    store
        .enroll(
            &kiln::inventory::parse("rack.yaml", &inventory)
                .unwrap()
                .nodes,
            false,
        )
        .await
        .unwrap();
    let conductor = Conductor::new(store.clone(), Arc::new(BasicProvisioner));
    conductor.request(name, Verb::Manage).await.unwrap();
    conductor.reconcile_once().await.unwrap();
    store.close().await;

    let mut others = Vec::new();
    if dnsmasq {
        // The network's "other" DHCP server: addresses only, no boot options.
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.server_ns,
                "dnsmasq",
                "--no-daemon",
                "--port=0",
                "--interface=br0",
                "--bind-interfaces",
            ])
            .arg(format!(
                "--dhcp-range={},{},1h",
                lab.addr(100),
                lab.addr(150)
            ))
            .arg(format!(
                "--dhcp-leasefile={}",
                dir.path().join("dnsmasq.leases").display()
            ))
            .args(["--conf-file=/dev/null", "--log-dhcp"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("dnsmasq.log")).unwrap())
            .spawn()
            .expect("dnsmasq (package dnsmasq-base)");
        others.push(ChildGuard(child));
    }
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
            "127.0.0.1:0",
            "--boot-interface",
            "br0",
            "--dhcp-mode",
            dhcp_mode,
            &pool,
        ],
        if dhcp_mode == "off" {
            "boot HTTP listening"
        } else {
            "DHCP serving"
        },
    );
    BootLab {
        _daemon: daemon,
        _others: others,
        lab,
        dir,
    }
}

fn start_vm(lab: &mut Lab, dir: &Path, mac: &str, uefi: bool) -> (ChildGuard, PathBuf) {
    let tap = lab.add_tap();
    let serial = dir.join("serial.log");
    let mut args: Vec<String> = vec![
        "netns".into(),
        "exec".into(),
        lab.server_ns.clone(),
        "qemu-system-x86_64".into(),
    ];
    let nic = format!(
        "virtio-net-pci,netdev=n0,mac={mac}{}",
        if uefi { ",romfile=" } else { "" }
    );
    if uefi {
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
        args.extend(["-machine".into(), "q35".into()]);
        args.extend([
            "-drive".into(),
            "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
        ]);
        args.extend([
            "-drive".into(),
            format!("if=pflash,format=raw,file={}", vars.display()),
        ]);
    } else {
        args.extend(["-machine".into(), "pc,graphics=off".into()]);
    }
    args.extend(
        [
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
            "-vga",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-boot",
            "n",
            "-netdev",
        ]
        .map(String::from),
    );
    args.push(format!("tap,id=n0,ifname={tap},script=no,downscript=no"));
    args.extend([
        "-device".into(),
        nic,
        "-serial".into(),
        format!("file:{}", serial.display()),
    ]);
    let child = Command::new("ip")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    (ChildGuard(child), serial)
}

async fn events(dir: &Path, name: &str) -> Vec<String> {
    let store = Store::open_in(&dir.join("data")).await.unwrap();
    let kinds = store
        .events(name)
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{}: {}", e.kind, e.detail))
        .collect();
    store.close().await;
    kinds
}

#[tokio::test(flavor = "multi_thread")]
async fn bios_vm_boots_its_own_script() {
    let mac = "52:54:00:77:10:01";
    let mut lab = boot_lab("pxe-bios", mac, "bios", "reservation", false).await;
    let (_vm, serial) = start_vm(&mut lab.lab, lab.dir.path(), mac, false);
    let console = wait_for_text(
        &serial,
        "Kiln: pxe-bios: node pxe-bios is manageable",
        Duration::from_secs(120),
    );
    assert!(
        console.contains(&lab.lab.addr(60)),
        "the VM got its reserved address: {console}"
    );
    let events = events(lab.dir.path(), "pxe-bios").await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("dhcp-ack") && e.contains("Ipxe")),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e.starts_with("script-served")),
        "{events:#?}"
    );
    // The operator's view of the same node, through the daemon's API and the CLI.
    let data = lab.dir.path().join("data");
    let kiln = |args: &[&str]| lab.lab.kiln(&data, args).1;
    let table = kiln(&["node", "events", "pxe-bios"]);
    assert!(
        table.contains("dhcp-offer")
            && table.contains("dhcp-ack")
            && table.contains("script-served"),
        "{table}"
    );
    let leases = kiln(&["dhcp", "leases"]);
    assert!(
        leases.contains(&lab.lab.addr(60)) && leases.contains("pxe-bios"),
        "{leases}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn uefi_vm_fetches_snponly_over_tftp_then_its_script() {
    let mac = "52:54:00:77:10:02";
    let mut lab = boot_lab("pxe-uefi", mac, "uefi", "reservation", false).await;
    let (_vm, serial) = start_vm(&mut lab.lab, lab.dir.path(), mac, true);
    wait_for_text(
        &serial,
        "Kiln: pxe-uefi: node pxe-uefi is manageable",
        Duration::from_secs(240),
    );
    let events = events(lab.dir.path(), "pxe-uefi").await;
    assert!(
        events.iter().any(|e| e.starts_with("dhcp-ack")
            && e.contains("UefiPxe")
            && e.contains("snponly.efi")),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("tftp-done") && e.contains("snponly.efi")),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e.starts_with("script-served")),
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_dhcp_beside_dnsmasq_boots_a_vm() {
    let mac = "52:54:00:77:10:03";
    let mut lab = boot_lab("pxe-proxy", mac, "bios", "proxy", true).await;
    let (_vm, serial) = start_vm(&mut lab.lab, lab.dir.path(), mac, false);
    wait_for_text(
        &serial,
        "Kiln: pxe-proxy: node pxe-proxy is manageable",
        Duration::from_secs(120),
    );
    let dnsmasq = std::fs::read_to_string(lab.dir.path().join("dnsmasq.log")).unwrap();
    assert!(
        dnsmasq.contains("DHCPACK") && dnsmasq.contains(mac),
        "dnsmasq gave the address: {dnsmasq}"
    );
    let events = events(lab.dir.path(), "pxe-proxy").await;
    assert!(
        events.iter().any(|e| e.starts_with("dhcp-boot-info")),
        "{events:#?}"
    );
    assert!(
        events.iter().all(|e| !e.starts_with("dhcp-ack")),
        "the proxy never hands out addresses: {events:#?}"
    );
}
