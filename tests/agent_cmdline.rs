//! The real `kiln-agent` binary against kernel command-line fixtures, fake sysfs trees and this machine.

use std::fs;
use std::path::Path;
use std::process::Command;

const TOKEN: &str = "5eb63bbbe01eeed093cb22bb8f5acdc3a6b1f1c2d3e4f5a6";
const NODE: &str = "6f1c2a4e-9a3b-4c1d-8e2f-0a1b2c3d4e5f";
const GIB: u64 = 1 << 30;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn agent(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
        .args(args)
        .output()
        .expect("run kiln-agent");
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stdout.contains(TOKEN) && !run.stderr.contains(TOKEN),
        "token printed:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    run
}

fn write(path: &Path, contents: &str) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, contents).expect("write");
}

/// A temp dir with `cmdline` holding `line` and `block/` holding two fake disks.
fn fixture(line: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write(&dir.path().join("cmdline"), &format!("{line}\n"));
    let block = dir.path().join("block");
    write(&block.join("vda/size"), &(10 * GIB / 512).to_string());
    write(&block.join("vda/removable"), "0\n");
    write(&block.join("sda/size"), &(40 * GIB / 512).to_string());
    write(&block.join("sda/device/model"), "QEMU HARDDISK   \n");
    write(&block.join("sda/removable"), "0\n");
    write(&block.join("loop0/size"), &(100 * GIB / 512).to_string());
    dir
}

fn run_with(dir: &tempfile::TempDir, extra: &[&str]) -> Run {
    let cmdline = dir.path().join("cmdline");
    let block = dir.path().join("block");
    let mut args = vec![
        "--cmdline",
        cmdline.to_str().expect("utf-8"),
        "--sys-block",
        block.to_str().expect("utf-8"),
    ];
    // Deploy mode without --dry-run would call Kiln back.
    args.push("--dry-run");
    args.extend_from_slice(extra);
    agent(&args)
}

fn deploy_line() -> String {
    format!(
        "BOOT_IMAGE=/vmlinuz kiln.api=http://10.99.0.1:6385 kiln.node={NODE} kiln.token={TOKEN} \
         kiln.mode=deploy kiln.mac=52:54:00:12:34:56 initrd=initramfs.gz console=ttyS0,115200n8"
    )
}

#[test]
fn deploy_mode_chooses_the_root_disk() {
    let dir = fixture(&deploy_line());
    let cases: &[(&[&str], &str)] = &[
        (&[], "root disk: /dev/vda (vda 10 GiB)"),
        (
            &["--image-size", "11811160064"],
            "root disk: /dev/sda (sda 40 GiB QEMU HARDDISK)",
        ),
        (
            &["--hints-json", r#"{"size_gb": 40}"#],
            "root disk: /dev/sda",
        ),
        (
            &["--hints-json", r#"{"name": "/dev/vda"}"#],
            "root disk: /dev/vda",
        ),
    ];
    for (extra, want) in cases {
        let run = run_with(&dir, extra);
        assert_eq!(run.code, Some(0), "{extra:?}: {}", run.stderr);
        assert!(run.stdout.contains(want), "{extra:?}: {}", run.stdout);
        assert!(run.stderr.contains("mode=deploy") && run.stderr.contains("token=********"));
        assert!(
            run.stderr.contains(&format!("node={NODE}")),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn errors_exit_1_with_a_plain_message() {
    let base = deploy_line();
    let cases: &[(String, &[&str], &str)] = &[
        (
            base.replace(&format!(" kiln.token={TOKEN}"), ""),
            &[],
            "kiln.mode=deploy needs kiln.token=",
        ),
        (
            base.replace(&format!("kiln.node={NODE}"), ""),
            &[],
            "kiln.mode=deploy needs kiln.node=",
        ),
        (
            base.replace(NODE, "node-7"),
            &[],
            "kiln.node=\"node-7\" is not valid",
        ),
        (
            base.replace("http://10.99.0.1:6385", "tftp://x"),
            &[],
            "kiln.api=\"tftp://x\" is not valid",
        ),
        (
            base.replace("kiln.api=http://10.99.0.1:6385 ", ""),
            &[],
            "no kiln.api= argument",
        ),
        ("quiet splash".into(), &[], "no kiln.api= argument"),
        (
            base.clone(),
            &["--hints-json", r#"{"size_gb": 41}"#],
            "no disk matches hints size_gb=41; disks: sda 40 GiB QEMU HARDDISK, vda 10 GiB",
        ),
        (
            base.clone(),
            &["--hints-json", r#"{"sizegb": 40}"#],
            "--hints-json: unknown field `sizegb`",
        ),
        (
            base.clone(),
            &["--image-size", "64424509440"],
            "no non-removable disk holds the image (64424509440 bytes)",
        ),
        (base.clone(), &["--bogus"], "unexpected argument '--bogus'"),
    ];
    for (line, extra, want) in cases {
        let run = run_with(&fixture(line), extra);
        assert_eq!(run.code, Some(1), "{line:?} {extra:?}: {}", run.stdout);
        assert!(
            run.stderr.contains(want),
            "{line:?} {extra:?}: {}",
            run.stderr
        );
    }
    let run = agent(&["--cmdline", "/nonexistent/cmdline"]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("cannot read /nonexistent/cmdline"),
        "{}",
        run.stderr
    );
}

#[test]
fn discover_mode_prints_the_inventory() {
    let dir =
        fixture("kiln.api=http://10.99.0.1:6385 kiln.mode=discover kiln.mac=52:54:00:12:34:56");
    let run = run_with(&dir, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let inv: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    let names: Vec<&str> = inv["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, ["sda", "vda"]);
}

#[test]
fn inventory_of_this_machine() {
    let run = agent(&["--inventory"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let inv: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert!(inv["cpus"].as_u64().unwrap_or(0) > 0, "{inv}");
    assert!(inv["memory_bytes"].as_u64().unwrap_or(0) > 0, "{inv}");
    let nics = inv["nics"].as_array().expect("nics");
    assert!(!nics.is_empty(), "{inv}");
    assert!(nics.iter().all(|n| n["name"] != "lo"), "{inv}");
    assert!(inv["disks"].is_array(), "{inv}");
}
