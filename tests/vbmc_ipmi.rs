//! `kiln vbmc`'s IPMI face against real clients: `ipmitool -I lanplus -C 3` and Kiln's own IPMI
//! driver power a real QEMU VM and set its boot device through it. Everything (the vbmc, QEMU, its
//! tap, both clients) lives in a network namespace the test creates and deletes.
//! The vbmc is the real binary, `ip netns exec NS kiln vbmc --config FILE`; Kiln's driver runs on
//! a thread that entered the namespace, so its socket lives there too.

use kiln::bmc::ipmi::{IpmiBmc, IpmiOptions};
use kiln::bmc::{Bmc, BmcError, BootDevice, PowerAction, PowerState};
use kiln::model::{BmcKind, BmcSpec, Secret};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "ipmi-Secret-7";
const IPMI_PORT: u16 = 6230;

fn run(program: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ipmitool -I lanplus -C suite` inside namespace `ns` against the vbmc; (success, output).
fn ipmitool(ns: &str, suite: &str, user: &str, password: &str, args: &[&str]) -> (bool, String) {
    let started = Instant::now();
    let port = IPMI_PORT.to_string();
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ipmitool", "-I", "lanplus"])
        // An empty suite leaves the choice to ipmitool (it asks for the channel's cipher suites).
        .args(if suite.is_empty() {
            vec![]
        } else {
            vec!["-C", suite]
        })
        .args(["-U", user, "-P", password, "-H", "127.0.0.1", "-p", &port])
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "ipmitool -C {suite} {} -> {} in {:?}",
        args.join(" "),
        out.status,
        started.elapsed()
    );
    (out.status.success(), text)
}

/// A network namespace with `lo` and tap `tap0` up, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let ns = Netns(format!("kvipmi{}", std::process::id()));
        run("ip", &["netns", "add", &ns.0]);
        run("ip", &["-n", &ns.0, "link", "set", "lo", "up"]);
        run(
            "ip",
            &["-n", &ns.0, "tuntap", "add", "dev", "tap0", "mode", "tap"],
        );
        run("ip", &["-n", &ns.0, "link", "set", "tap0", "up"]);
        ns
    }

    /// Runs `f` on a thread inside the namespace: the sockets it opens live there.
    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
    }

    /// Runs an async block inside the namespace on its own runtime and waits for it.
    fn block_on<T: Send + 'static, F: Future<Output = T> + 'static>(
        &self,
        f: impl FnOnce() -> F + Send + 'static,
    ) -> T {
        self.spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f())
        })
        .join()
        .unwrap()
    }

    fn ipmitool(&self, user: &str, password: &str, args: &[&str]) -> (bool, String) {
        ipmitool(&self.0, "3", user, password, args)
    }

    /// ipmitool as admin with the right password; asserts it succeeded and printed `needle`.
    fn expect(&self, args: &[&str], needle: &str) -> String {
        let (ok, text) = self.ipmitool("admin", PASSWORD, args);
        assert!(
            ok && text.contains(needle),
            "ipmitool {args:?}: want {needle:?}, got {text}"
        );
        text
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// `kiln vbmc` serving in the namespace; stopped with SIGTERM on drop (it powers its VMs off),
/// and any QEMU it left behind killed.
struct Vbmc {
    child: Child,
    state: PathBuf,
    log: PathBuf,
}

impl Vbmc {
    fn start(ns: &Netns, dir: &Path) -> Vbmc {
        let state = dir.join("state");
        let config = dir.join("vbmc.yaml");
        std::fs::write(
            &config,
            format!(
                "redfish_listen: 127.0.0.1:8000\nusername: admin\npassword: {PASSWORD}\nnetns: {}\nstate_dir: {}\nvms:\n  - name: vm-ipmi\n    mac: '52:54:00:77:30:01'\n    tap: tap0\n    memory_mb: 128\n    ipmi_listen: 127.0.0.1:{IPMI_PORT}\n",
                ns.0,
                state.display()
            ),
        )
        .unwrap();
        let log = dir.join("vbmc.log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                env!("CARGO_BIN_EXE_kiln"),
                "--log-level",
                "debug",
                "vbmc",
                "--config",
            ])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut vbmc = Vbmc { child, state, log };
        let started = Instant::now();
        while !ns.block_on(asf_ping) {
            let exited = vbmc.child.try_wait().unwrap();
            let waited = started.elapsed() > Duration::from_secs(20);
            assert!(
                exited.is_none() && !waited,
                "vbmc never answered ({exited:?}): {}",
                vbmc.logs()
            );
        }
        eprintln!("vbmc answering ASF ping after {:?}", started.elapsed());
        vbmc
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for_qmp(&self) {
        let qmp = self.state.join("vm-ipmi.qmp");
        let started = Instant::now();
        while !qmp.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "QEMU made no QMP socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// (pid, command line) of every QEMU started for this vbmc.
    fn qemus(&self) -> Vec<(u32, String)> {
        let needle = self.state.display().to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            // Until `ip netns exec` has exec'd QEMU, the same process still shows the `ip` command line.
            if line.contains("qemu-system-x86_64 ") && line.contains(&needle) {
                found.push((pid, line));
            }
        }
        found
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .output();
        let started = Instant::now();
        while matches!(self.child.try_wait(), Ok(None))
            && started.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vbmc {
    fn drop(&mut self) {
        self.stop();
        for (pid, _) in self.qemus() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
        }
    }
}

/// One ASF presence ping to the IPMI port; whether a pong came back.
async fn asf_ping() -> bool {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ping = [6, 0, 0xff, 6, 0, 0, 0x11, 0xbe, 0x80, 1, 0, 0];
    if socket
        .send_to(&ping, ("127.0.0.1", IPMI_PORT))
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        return false;
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await {
        Ok(Ok(len)) => len == 28 && buf[8] == 0x40,
        _ => false,
    }
}

fn kiln_client(password: &str) -> IpmiBmc {
    let spec = BmcSpec {
        kind: BmcKind::Ipmi,
        address: "127.0.0.1".into(),
        port: IPMI_PORT,
        username: "admin".into(),
        password: Secret::new(password),
        system_id: None,
        cipher_suite: Some(3),
        tls_verify: Default::default(),
    };
    let options = IpmiOptions {
        timeout: Duration::from_millis(1000),
        retransmits: 2,
        power_wait: Duration::from_secs(20),
        poll_interval: Duration::from_millis(200),
        ..IpmiOptions::default()
    };
    IpmiBmc::with_options(&spec, options).unwrap()
}

#[test]
fn ipmitool_and_kilns_driver_power_a_qemu_vm_through_the_vbmc() {
    let test_started = Instant::now();
    let ns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let mut vbmc = Vbmc::start(&ns, dir.path());

    ipmitool_powers_the_vm_and_sets_its_boot_device(&ns, &vbmc);
    refusals_leave_the_bmc_serving(&ns);
    let ns_name = ns.0.clone();
    let steps = ns.block_on(move || kilns_driver_beside_ipmitool(ns_name));
    eprintln!("{}", steps.join("\n"));
    assert!(vbmc.qemus().is_empty());

    // Stopping the vbmc powers its VMs off.
    ns.expect(&["chassis", "power", "on"], "Chassis Power Control: Up/On");
    let deadline = Instant::now() + Duration::from_secs(5);
    while vbmc.qemus().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        vbmc.qemus().len(),
        1,
        "QEMU log: {:?}",
        std::fs::read_to_string(dir.path().join("state/vm-ipmi.qemu.log"))
    );
    vbmc.wait_for_qmp();
    let t = Instant::now();
    vbmc.stop();
    eprintln!("vbmc stopped by SIGTERM in {:?}", t.elapsed());
    assert!(vbmc.qemus().is_empty(), "{:?}", vbmc.qemus());
    let logs = vbmc.logs();
    assert!(
        logs.contains("IPMI session opened") && logs.contains("vbmc IPMI listening"),
        "{logs}"
    );
    assert!(
        !logs.contains(PASSWORD) && !logs.contains("not-the-password"),
        "no password in the logs"
    );
    assert!(
        vbmc.child
            .try_wait()
            .unwrap()
            .is_some_and(|status| status.success()),
        "clean exit: {logs}"
    );
    eprintln!("whole test: {:?}", test_started.elapsed());
}

fn ipmitool_powers_the_vm_and_sets_its_boot_device(ns: &Netns, vbmc: &Vbmc) {
    // Status, one-time PXE (read back by Kiln's driver too), power on starts QEMU with PXE first.
    ns.expect(&["chassis", "power", "status"], "Chassis Power is off");
    ns.expect(
        &["chassis", "bootparam", "get", "5"],
        "Force Boot from default Hard-Drive",
    );
    ns.expect(&["chassis", "bootdev", "pxe"], "Set Boot Device to pxe");
    let flags = ns.expect(&["chassis", "bootparam", "get", "5"], "Force PXE");
    assert!(flags.contains("Options apply to only next boot"), "{flags}");
    let read = ns
        .block_on(|| async { kiln_client(PASSWORD).boot_device().await })
        .unwrap();
    assert_eq!(
        (read.device, read.persistent),
        (Some(BootDevice::Pxe), false),
        "Kiln's driver reads it"
    );
    assert!(vbmc.qemus().is_empty());
    ns.expect(&["chassis", "power", "on"], "Chassis Power Control: Up/On");
    ns.expect(&["chassis", "power", "status"], "Chassis Power is on");
    let qemus = vbmc.qemus();
    assert_eq!(qemus.len(), 1, "{qemus:?}");
    assert!(
        qemus[0].1.contains("-boot order=c,once=n") && qemus[0].1.contains("ifname=tap0"),
        "{}",
        qemus[0].1
    );

    // Persistent disk; cycle and reset restart QEMU with it; soft off is an ACPI request.
    ns.expect(
        &["chassis", "bootdev", "disk", "options=persistent"],
        "Set Boot Device to disk",
    );
    let flags = ns.expect(
        &["chassis", "bootparam", "get", "5"],
        "Force Boot from default Hard-Drive",
    );
    assert!(
        flags.contains("Options apply to all future boots"),
        "{flags}"
    );
    // Power-off and soft-off go through QMP: wait until QEMU has its QMP socket.
    vbmc.wait_for_qmp();
    ns.expect(
        &["chassis", "power", "cycle"],
        "Chassis Power Control: Cycle",
    );
    let cycled = vbmc.qemus();
    assert_eq!(cycled.len(), 1, "{cycled:?} {}", vbmc.logs());
    assert_ne!(cycled[0].0, qemus[0].0, "cycle restarts QEMU");
    assert!(
        cycled[0].1.contains("-boot order=c ") && !cycled[0].1.contains("once=n"),
        "{}",
        cycled[0].1
    );
    vbmc.wait_for_qmp();
    ns.expect(
        &["chassis", "power", "reset"],
        "Chassis Power Control: Reset",
    );
    vbmc.wait_for_qmp();
    ns.expect(&["chassis", "power", "soft"], "Chassis Power Control: Soft");
    ns.expect(&["chassis", "power", "status"], "Chassis Power is on"); // no OS to act on ACPI

    ns.expect(
        &["chassis", "power", "off"],
        "Chassis Power Control: Down/Off",
    );
    ns.expect(&["chassis", "power", "status"], "Chassis Power is off");
    assert!(vbmc.qemus().is_empty(), "{:?}", vbmc.qemus());
    let (ok, text) = ns.ipmitool("admin", PASSWORD, &["chassis", "power", "cycle"]);
    assert!(
        !ok && text.contains("Cycle failed"),
        "cycling a chassis that is off is refused: {text}"
    );
}

/// Wrong password, unknown user, another cipher suite fail; no `-C` and `mc info` work.
fn refusals_leave_the_bmc_serving(ns: &Netns) {
    let status = ["chassis", "power", "status"];
    let (ok, text) = ns.ipmitool("admin", "not-the-password", &status);
    assert!(!ok, "{text}");
    let (ok, text) = ns.ipmitool("root", PASSWORD, &status);
    assert!(!ok, "{text}");
    let (ok, text) = ipmitool(&ns.0, "17", "admin", PASSWORD, &status);
    assert!(
        !ok && text.contains("invalid authentication algorithm"),
        "{text}"
    );
    // Without -C, ipmitool picks the suite from Get Channel Cipher Suites.
    let (ok, text) = ipmitool(&ns.0, "", "admin", PASSWORD, &["-v", "chassis", "status"]);
    assert!(ok && text.contains("System Power         : off"), "{text}");
    assert!(
        text.contains("Using best available cipher suite 3"),
        "{text}"
    );
    ns.expect(&["mc", "info"], "IPMI Version              : 2.0");
    ns.expect(&status, "Chassis Power is off");
}

/// Kiln's own driver: boot device, power, wrong credentials; its session stays open while
/// ipmitool opens another one beside it. Returns the timings of its calls.
async fn kilns_driver_beside_ipmitool(ns: String) -> Vec<String> {
    let bmc = kiln_client(PASSWORD);
    let mut steps = Vec::new();
    let mut step =
        |name: &str, started: Instant| steps.push(format!("{name}: {:?}", started.elapsed()));
    let t = Instant::now();
    assert_eq!(bmc.power_state().await, Ok(PowerState::Off));
    step("kiln power status (with login)", t);
    let t = Instant::now();
    bmc.set_boot_device(BootDevice::Pxe, true, false)
        .await
        .unwrap();
    step("kiln set boot device", t);
    let boot = bmc.boot_device().await.unwrap();
    assert_eq!(
        (boot.device, boot.persistent),
        (Some(BootDevice::Pxe), true)
    );
    let t = Instant::now();
    bmc.power(PowerAction::On).await.unwrap();
    step("kiln power on", t);
    assert_eq!(bmc.power_state().await, Ok(PowerState::On));
    let (ok, text) = ipmitool(&ns, "3", "admin", PASSWORD, &["chassis", "power", "status"]);
    assert!(
        ok && text.contains("Chassis Power is on"),
        "a second session beside Kiln's: {text}"
    );
    let t = Instant::now();
    bmc.power(PowerAction::Off).await.unwrap();
    step("kiln power off", t);
    assert_eq!(bmc.power_state().await, Ok(PowerState::Off));
    assert_eq!(bmc.logins(), 1, "one session for every call");
    bmc.close().await;
    let t = Instant::now();
    assert_eq!(
        kiln_client("wrong-password").power_state().await,
        Err(BmcError::WrongCredentials)
    );
    step("kiln wrong password", t);
    steps
}
