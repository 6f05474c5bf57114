//! The shipped systemd unit passes `systemd-analyze verify` without a single complaint.

use std::process::Command;

#[test]
fn kiln_service_verifies_cleanly() {
    let unit = std::fs::read_to_string("systemd/kiln.service").unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/kiln serve"));
    // Point ExecStart at the freshly built binary: verify checks that it exists and is executable.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/kiln", env!("CARGO_BIN_EXE_kiln")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );

    // The check itself can fail: a broken copy must be reported.
    let broken = dir.path().join("broken.service");
    std::fs::write(
        &broken,
        unit.replace("Type=exec", "Type=bogus")
            .replace("/usr/bin/kiln", env!("CARGO_BIN_EXE_kiln")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("Failed to parse service type"));
}
