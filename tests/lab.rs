//! `kiln lab up|status|down` with the real binary: a two-VM lab (one BIOS, one UEFI) comes up in
//! its own namespace, its rack inventory enrolls into its daemon and both nodes verify through
//! the vbmc's Redfish service to `manageable`; a VM powered on through Kiln shows in the status;
//! `down` then leaves no namespace, no process naming the lab directory and no directory. Needs
//! the cached images in /var/cache/kiln-images/files (the test command builds them first).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// (exit code, stdout, stderr)
fn run(command: &mut Command) -> (i32, String, String) {
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A lab name and directory unique to this test process; `kiln lab down` on drop, so a failing
/// test leaves nothing running either.
struct TestLab {
    name: String,
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl TestLab {
    fn new() -> TestLab {
        let parent = tempfile::Builder::new()
            .prefix("kiln-lab-test-")
            .tempdir()
            .unwrap();
        TestLab {
            name: format!("klt{}", std::process::id()),
            dir: parent.path().join("lab"),
            _parent: parent,
        }
    }

    fn lab(&self, args: &[&str]) -> (i32, String, String) {
        let (command, rest) = args.split_first().unwrap();
        run(Command::new(KILN)
            .args(["lab", command, "--name", &self.name, "--dir"])
            .arg(&self.dir)
            .args(rest))
    }

    /// `kiln --data-dir DIR/data ARGS` inside the lab's namespace, as `lab up` tells users to.
    fn kiln(&self, args: &[&str]) -> (i32, String, String) {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name, KILN, "--data-dir"])
            .arg(self.dir.join("data"))
            .args(args))
    }

    fn status(&self) -> serde_json::Value {
        let (code, out, err) = run(Command::new(KILN)
            .args(["--json", "lab", "status", "--name", &self.name, "--dir"])
            .arg(&self.dir));
        let status: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("status is not JSON ({e}): {out}\n{err}"));
        assert_eq!(
            code, 0,
            "lab status says the lab is not up: {status:#}\n{err}"
        );
        status
    }

    fn log(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = self.lab(&["down"]);
    }
}

/// Every other process whose command line names `dir` (a leaked QEMU or daemon would).
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let pid = entry.ok()?.file_name().into_string().ok()?;
            if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
                return None;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&dir).then(|| format!("{pid} {cmdline}"))
        })
        .collect()
}

fn wait_until(
    lab: &TestLab,
    what: &str,
    limit: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        let status = lab.status();
        if done(&status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not reached: {status:#}\n--- daemon ---\n{}\n--- vbmc ---\n{}",
            lab.log("daemon.log"),
            lab.log("vbmc.log")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_lab_comes_up_verifies_its_nodes_and_goes_away_without_a_trace() {
    let started = Instant::now();
    let lab = TestLab::new();
    let (code, out, err) = lab.lab(&["up", "--nodes", "2", "--uefi", "1"]);
    assert_eq!(code, 0, "lab up failed:\n{out}\n{err}");
    let up_took = started.elapsed();
    assert!(out.contains("enroll") && out.contains("lab down"), "{out}");

    // A second `up` on the same lab is refused and says how to remove it.
    let (code, _, err) = lab.lab(&["up"]);
    assert_ne!(code, 0);
    assert!(err.contains("kiln lab down"), "{err}");

    let status = lab.status();
    assert_eq!(status["namespace"], true);
    assert_eq!(status["daemon"]["alive"], true, "{status:#}");
    assert_eq!(status["vbmc"]["alive"], true, "{status:#}");
    let vms: Vec<(&str, &str, &str)> = status["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| {
            (
                vm["name"].as_str().unwrap(),
                vm["boot_mode"].as_str().unwrap(),
                vm["power"].as_str().unwrap_or("no answer"),
            )
        })
        .collect();
    assert_eq!(
        vms,
        [("rack-01", "bios", "Off"), ("rack-02", "uefi", "Off")],
        "{status:#}"
    );

    let rack = lab.dir.join("rack.yaml");
    let (code, out, err) = lab.kiln(&["enroll", rack.to_str().unwrap()]);
    assert_eq!(code, 0, "enroll:\n{out}\n{err}");
    let (code, out, err) = lab.kiln(&["node", "manage", "rack-01", "rack-02"]);
    assert_eq!(code, 0, "manage:\n{out}\n{err}");
    wait_until(
        &lab,
        "both nodes manageable",
        Duration::from_secs(30),
        |s| {
            s["vms"]
                .as_array()
                .is_some_and(|vms| vms.iter().all(|vm| vm["provision_state"] == "manageable"))
        },
    );

    // A running QEMU that `down` must stop: power the UEFI VM on through Kiln and its BMC.
    let (code, out, err) = lab.kiln(&["node", "power", "rack-02", "on"]);
    assert_eq!(code, 0, "power on:\n{out}\n{err}");
    wait_until(&lab, "rack-02 on", Duration::from_secs(15), |s| {
        s["vms"][1]["power"] == "On"
    });
    assert!(
        processes_mentioning(&lab.dir)
            .iter()
            .any(|p| p.contains("qemu-system")),
        "no QEMU for rack-02"
    );

    let (code, out, err) = lab.lab(&["down"]);
    assert_eq!(code, 0, "lab down failed:\n{out}\n{err}");
    assert!(
        !Path::new("/run/netns").join(&lab.name).exists(),
        "namespace {} is still there",
        lab.name
    );
    let left = processes_mentioning(&lab.dir);
    assert!(left.is_empty(), "still running: {left:#?}");
    assert!(!lab.dir.exists(), "{} was not removed", lab.dir.display());

    // Down again: nothing left to do, and still a success.
    let (code, out, err) = lab.lab(&["down"]);
    assert_eq!(code, 0, "second lab down:\n{out}\n{err}");
    assert!(out.contains("nothing to remove"), "{out}");
    let (code, _, _) = lab.lab(&["status"]);
    assert_eq!(code, 1, "status of a removed lab must fail");
    eprintln!(
        "lab up {:.1} s, whole test {:.1} s",
        up_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
