//! `kiln image import` with the real qemu-img and zstd: a qcow2 becomes a catalog entry whose
//! `.raw.zst` decompresses to the original disk bytes and whose record carries the right sha256
//! and sizes; `kiln image list` shows it; a bad name is refused without leaving files behind.

use rand::{RngCore, SeedableRng};
use sha2::Digest;
use std::process::Command;

const MIB: usize = 1 << 20;

fn kiln(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn qcow2_import_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let raw_path = dir.path().join("disk.raw");
    let mut raw = vec![0u8; 16 * MIB];
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    rng.fill_bytes(&mut raw[..3 * MIB]);
    rng.fill_bytes(&mut raw[9 * MIB..10 * MIB]);
    std::fs::write(&raw_path, &raw).unwrap();
    let qcow2 = dir.path().join("cloud.qcow2");
    let convert = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw_path)
        .arg(&qcow2)
        .output()
        .expect("qemu-img (qemu-utils)");
    assert!(convert.status.success());

    let files = dir.path().join("files");
    let files_arg = files.to_str().unwrap();
    let (code, out, err) = kiln(&[
        "--json",
        "image",
        "import",
        qcow2.to_str().unwrap(),
        "--files-root",
        files_arg,
    ]);
    assert_eq!(code, 0, "{err}");
    let records: serde_json::Value = serde_json::from_str(&out).unwrap();
    let record = &records[0];
    assert_eq!(record["name"], "cloud");
    assert_eq!(record["raw_size"], raw.len() as u64);

    let zst = std::fs::read(files.join("images/cloud.raw.zst")).unwrap();
    assert_eq!(record["size"], zst.len() as u64);
    let digest: String = sha2::Sha256::digest(&zst)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(record["sha256"], digest);
    assert_eq!(
        zstd::decode_all(&zst[..]).unwrap(),
        raw,
        "decompressed image differs"
    );

    let (code, table, _) = kiln(&["image", "list", "--files-root", files_arg]);
    assert_eq!(code, 0);
    assert!(
        table.contains("cloud") && table.contains(&digest),
        "{table}"
    );

    let (code, _, err) = kiln(&[
        "image",
        "import",
        qcow2.to_str().unwrap(),
        "--name",
        "bad name",
        "--files-root",
        files_arg,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("image name 'bad name'"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(files.join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
