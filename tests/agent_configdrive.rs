//! The config drive end to end on sparse 2 GiB disk images (and a loop device when there is
//! one): tables made by `sfdisk` when it is installed (else by the small writers below), the result
//! checked with libblkid's `partx` and `blkid` (plus `sfdisk`, `sgdisk`, `mtype` when installed)
//! and by reading the FAT back with `fatfs`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Cursor, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::agent::configdrive::{
    ConfigDriveError, ConfigDriveFile, ConfigDriveReport, TableError, TableKind, write_config_drive,
};
use rand::{RngCore, SeedableRng};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const DISK: u64 = 2 * GIB;
const BASIC_DATA: &str = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7";
const LINUX_FS: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn sparse(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    File::create(&path).unwrap().set_len(size).unwrap();
    path
}

/// One partition of a fixture, in MiB.
#[derive(Clone, Copy)]
struct Part {
    start_mib: u64,
    size_mib: u64,
    kind: u8,
}

fn p(start_mib: u64, size_mib: u64, kind: u8) -> Part {
    Part {
        start_mib,
        size_mib,
        kind,
    }
}

/// `label: dos` with `parts`, by sfdisk when installed, else by hand.
fn make_dos(disk: &Path, parts: &[Part]) {
    if !have("sfdisk") {
        return make_dos_by_hand(disk, parts);
    }
    let mut script = String::from("label: dos\n");
    for p in parts {
        script += &format!(
            "start={}, size={}, type={:x}\n",
            p.start_mib * 2048,
            p.size_mib * 2048,
            p.kind
        );
    }
    sfdisk_script(disk, &script);
}

/// The entries and the signature, nothing else; any values, even ones sfdisk would refuse.
fn make_dos_by_hand(disk: &Path, parts: &[Part]) {
    let mut mbr = [0u8; 512];
    mbr[440..444].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    for (i, p) in parts.iter().enumerate() {
        let e = &mut mbr[446 + 16 * i..462 + 16 * i];
        e[4] = p.kind;
        e[8..12].copy_from_slice(&((p.start_mib * 2048) as u32).to_le_bytes());
        e[12..16].copy_from_slice(&((p.size_mib * 2048) as u32).to_le_bytes());
    }
    mbr[510..].copy_from_slice(&[0x55, 0xaa]);
    File::options()
        .write(true)
        .open(disk)
        .unwrap()
        .write_all_at(&mbr, 0)
        .unwrap();
}

/// `label: gpt` on a file of `image` bytes with Linux filesystem partitions, which is then grown
/// to [`DISK`]: a whole-disk image written to a larger disk.
fn make_gpt_image(disk: &Path, image: u64, parts: &[Part]) {
    File::options()
        .write(true)
        .open(disk)
        .unwrap()
        .set_len(image)
        .unwrap();
    if have("sfdisk") {
        let mut script = String::from("label: gpt\n");
        for p in parts {
            script += &format!(
                "start={}, size={}, type={LINUX_FS}\n",
                p.start_mib * 2048,
                p.size_mib * 2048
            );
        }
        sfdisk_script(disk, &script);
    } else {
        write_gpt_by_hand(disk, image / 512, parts);
    }
    File::options()
        .write(true)
        .open(disk)
        .unwrap()
        .set_len(DISK)
        .unwrap();
}

fn sfdisk_script(disk: &Path, script: &str) {
    let mut child = Command::new("sfdisk")
        .args(["--no-reread", "--no-tell-kernel", "-q"])
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk {script}");
}

/// What sfdisk writes: protective MBR, 128 entries at LBA 2, backup array and header at the end.
fn write_gpt_by_hand(disk: &Path, sectors: u64, parts: &[Part]) {
    let f = File::options().write(true).open(disk).unwrap();
    let mut pmbr = [0u8; 512];
    pmbr[446 + 4] = 0xee;
    pmbr[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    pmbr[446 + 12..446 + 16].copy_from_slice(&((sectors - 1) as u32).to_le_bytes());
    pmbr[510..].copy_from_slice(&[0x55, 0xaa]);
    f.write_all_at(&pmbr, 0).unwrap();
    let mut array = vec![0u8; 128 * 128];
    let linux = uuid::Uuid::parse_str(LINUX_FS).unwrap().to_bytes_le();
    for (i, p) in parts.iter().enumerate() {
        let e = &mut array[128 * i..128 * (i + 1)];
        e[..16].copy_from_slice(&linux);
        e[16..32].copy_from_slice(&uuid::Uuid::new_v4().to_bytes_le());
        e[32..40].copy_from_slice(&(p.start_mib * 2048).to_le_bytes());
        e[40..48].copy_from_slice(&((p.start_mib + p.size_mib) * 2048 - 1).to_le_bytes());
    }
    let header = |my: u64, alt: u64, entries: u64| {
        let mut h = [0u8; 512];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
        h[56..72].copy_from_slice(uuid::Uuid::from_u128(0xd15c).as_bytes());
        h[72..80].copy_from_slice(&entries.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(&array).to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    f.write_all_at(&header(1, sectors - 1, 2), 512).unwrap();
    f.write_all_at(&array, 1024).unwrap();
    f.write_all_at(&array, (sectors - 33) * 512).unwrap();
    f.write_all_at(&header(sectors - 1, 1, sectors - 33), (sectors - 1) * 512)
        .unwrap();
}

/// `sfdisk --verify`, stdout and stderr together.
fn verify(disk: &Path) -> String {
    let out = Command::new("sfdisk")
        .arg("--verify")
        .arg(disk)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A partition as libblkid (through `partx`) reads the table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    nr: u32,
    start: u64,
    sectors: u64,
    kind: String,
    name: String,
}

fn partx(disk: &Path) -> Vec<Seen> {
    let out = run(Command::new("partx")
        .args(["-g", "-P", "-o", "NR,START,SECTORS,TYPE,NAME"])
        .arg(disk));
    out.lines()
        .map(|line| {
            let f = pairs(line);
            Seen {
                nr: f["NR"].parse().unwrap(),
                start: f["START"].parse().unwrap(),
                sectors: f["SECTORS"].parse().unwrap(),
                kind: f["TYPE"].clone(),
                name: f["NAME"].clone(),
            }
        })
        .collect()
}

/// `KEY="value" KEY="value"` as `partx -P` and `blkid -o export` print them.
fn pairs(line: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = line.trim();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().to_string();
        let after = &rest[eq + 1..];
        let (value, next) = match after.strip_prefix('"') {
            Some(q) => {
                let end = q.find('"').unwrap();
                (&q[..end], &q[end + 1..])
            }
            None => after.split_once([' ', '\n']).unwrap_or((after, "")),
        };
        out.insert(key, value.to_string());
        rest = next.trim_start();
    }
    out
}

/// The filesystem libblkid finds at `offset` (its TYPE, LABEL, …).
fn blkid_at(disk: &Path, offset: u64, size: u64) -> HashMap<String, String> {
    let out = run(Command::new("blkid")
        .args(["-p", "-o", "export", "-O", &offset.to_string(), "-S"])
        .arg(size.to_string())
        .arg(disk));
    out.lines().flat_map(|l| pairs(l).into_iter()).collect()
}

fn files(hostname: &str) -> Vec<ConfigDriveFile> {
    vec![
        ConfigDriveFile {
            path: "meta-data".into(),
            contents: format!("instance-id: {hostname}\nlocal-hostname: {hostname}\n").into(),
        },
        ConfigDriveFile {
            path: "user-data".into(),
            contents: b"#cloud-config\n".to_vec(),
        },
        ConfigDriveFile {
            path: "kiln/hostname".into(),
            contents: hostname.as_bytes().to_vec(),
        },
        ConfigDriveFile {
            path: "kiln/docker/ca.pem".into(),
            contents: (0..70_000u32).map(|i| (i % 251) as u8).collect(),
        },
    ]
}

fn read_region(disk: &Path, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0; len as usize];
    File::open(disk)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

/// Every file of the config drive, path → contents, read with fatfs; and the volume label.
fn read_drive(disk: &Path, report: &ConfigDriveReport) -> (String, HashMap<String, Vec<u8>>) {
    let image = read_region(disk, report.start_bytes, report.size_bytes);
    let fs = fatfs::FileSystem::new(Cursor::new(image), fatfs::FsOptions::new()).unwrap();
    let label = fs
        .read_volume_label_from_root_dir()
        .unwrap()
        .unwrap_or_default();
    let mut found = HashMap::new();
    let mut dirs = vec![(String::new(), fs.root_dir())];
    while let Some((prefix, dir)) = dirs.pop() {
        for entry in dir.iter() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = format!("{prefix}{name}");
            if entry.is_dir() {
                dirs.push((format!("{path}/"), entry.to_dir()));
            } else {
                let mut data = Vec::new();
                entry.to_file().read_to_end(&mut data).unwrap();
                found.insert(path, data);
            }
        }
    }
    (label, found)
}

/// The drive holds exactly `want`, labelled CIDATA, as fatfs, blkid and (if present) mtools see it.
fn assert_drive(disk: &Path, report: &ConfigDriveReport, want: &[ConfigDriveFile]) {
    let (label, found) = read_drive(disk, report);
    assert_eq!(label, "CIDATA");
    let want_map: HashMap<String, Vec<u8>> = want
        .iter()
        .map(|f| (f.path.clone(), f.contents.clone()))
        .collect();
    assert_eq!(
        found.keys().collect::<std::collections::BTreeSet<_>>(),
        want_map.keys().collect()
    );
    for (path, data) in &want_map {
        assert!(found[path] == *data, "{path} differs");
    }
    let probe = blkid_at(disk, report.start_bytes, report.size_bytes);
    assert_eq!(
        probe.get("TYPE").map(String::as_str),
        Some("vfat"),
        "{probe:?}"
    );
    assert_eq!(
        probe.get("LABEL").map(String::as_str),
        Some("CIDATA"),
        "{probe:?}"
    );
    if have("mtype") {
        for f in want {
            let out = Command::new("mtype")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(format!("{}@@{}", disk.display(), report.start_bytes))
                .arg(format!("::/{}", f.path))
                .output()
                .unwrap();
            assert!(out.status.success(), "mtype {}", f.path);
            assert!(out.stdout == f.contents, "mtype {} differs", f.path);
        }
    }
}

/// Random bytes over the first and last MiB of each partition (and 0.5 MiB just after the
/// last), so that "untouched" can be checked; returns the regions and their bytes.
fn fill_partitions(disk: &Path, parts: &[Part]) -> Vec<(u64, Vec<u8>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let f = OpenOptions::new().write(true).open(disk).unwrap();
    let mut regions = Vec::new();
    for p in parts {
        let end = (p.start_mib + p.size_mib) * MIB;
        for at in [p.start_mib * MIB, end - MIB] {
            let mut data = vec![0u8; MIB as usize];
            rng.fill_bytes(&mut data);
            f.write_all_at(&data, at).unwrap();
            regions.push((at, data));
        }
    }
    regions
}

fn assert_untouched(disk: &Path, regions: &[(u64, Vec<u8>)]) {
    for (at, data) in regions {
        assert!(
            read_region(disk, *at, data.len() as u64) == *data,
            "bytes at {at} changed"
        );
    }
}

fn table_err(r: Result<ConfigDriveReport, ConfigDriveError>) -> TableError {
    match r {
        Err(ConfigDriveError::Table { source, .. }) => source,
        other => panic!("expected a table error, got {other:?}"),
    }
}

#[test]
fn dos_disk_gets_a_fat32_lba_partition_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let disk = sparse(dir.path(), "disk", DISK);
    let parts = [p(1, 200, 0x83), p(300, 100, 0x82)];
    make_dos(&disk, &parts);
    let regions = fill_partitions(&disk, &parts);
    let sector0 = read_region(&disk, 0, 512);

    let want = files("node-1");
    let report = write_config_drive(&disk, &want).unwrap();
    assert_eq!(
        report,
        ConfigDriveReport {
            partition_number: 3,
            start_bytes: DISK - 64 * MIB,
            size_bytes: 64 * MIB,
            table: TableKind::Mbr,
            reused: false,
            kernel_has_partition: false,
        }
    );
    let seen = partx(&disk);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!((seen[0].start, seen[1].start), (2048, 300 * 2048));
    assert_eq!(
        (
            seen[2].nr,
            seen[2].start,
            seen[2].sectors,
            seen[2].kind.as_str()
        ),
        (3, (DISK - 64 * MIB) / 512, 64 * MIB / 512, "0xc")
    );
    if have("sfdisk") {
        let json = run(Command::new("sfdisk").arg("--json").arg(&disk));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let p3 = &v["partitiontable"]["partitions"][2];
        assert_eq!(p3["start"], (DISK - 64 * MIB) / 512);
        assert_eq!(p3["size"], 64 * MIB / 512);
        assert_eq!(p3["type"], "c");
    }
    assert_drive(&disk, &report, &want);
    assert_untouched(&disk, &regions);
    let after = read_region(&disk, 0, 512);
    let changed: Vec<usize> = (0..512).filter(|&i| sector0[i] != after[i]).collect();
    assert!(
        changed.iter().all(|i| (478..494).contains(i)),
        "only slot 3 changes: {changed:?}"
    );
}

#[test]
fn a_second_call_reuses_the_partition_and_replaces_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let disk = sparse(dir.path(), "disk", DISK);
    let parts = [p(1, 500, 0x83)];
    make_dos(&disk, &parts);
    let regions = fill_partitions(&disk, &parts);
    let first = write_config_drive(&disk, &files("first")).unwrap();
    let table = read_region(&disk, 0, 512);

    let want = vec![ConfigDriveFile {
        path: "kiln/hostname".into(),
        contents: b"second".to_vec(),
    }];
    let second = write_config_drive(&disk, &want).unwrap();
    assert!(second.reused && !first.reused);
    assert_eq!(
        (
            second.partition_number,
            second.start_bytes,
            second.size_bytes
        ),
        (first.partition_number, first.start_bytes, first.size_bytes)
    );
    assert_eq!(
        read_region(&disk, 0, 512),
        table,
        "the table is not rewritten"
    );
    assert_eq!(partx(&disk).len(), 2);
    assert_drive(&disk, &second, &want);
    assert_untouched(&disk, &regions);
}

#[test]
fn gpt_image_on_a_larger_disk_gets_its_backup_moved_and_a_basic_data_partition() {
    let dir = tempfile::tempdir().unwrap();
    let disk = sparse(dir.path(), "disk", GIB);
    let parts = [p(1, 100, 0), p(101, 900, 0)];
    make_gpt_image(&disk, GIB, &parts);
    let regions = fill_partitions(&disk, &parts);
    let disk_guid = read_region(&disk, 512 + 56, 16);
    if have("sfdisk") {
        let before = verify(&disk);
        assert!(before.contains("not on the end of the device"), "{before}");
    }

    let want = files("node-gpt");
    let report = write_config_drive(&disk, &want).unwrap();
    // The backup's 33 sectors take part of the last MiB, so the partition ends 1 MiB early.
    assert_eq!(
        report,
        ConfigDriveReport {
            partition_number: 3,
            start_bytes: DISK - 65 * MIB,
            size_bytes: 64 * MIB,
            table: TableKind::Gpt,
            reused: false,
            kernel_has_partition: false,
        }
    );
    let seen = partx(&disk);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[1].kind, LINUX_FS);
    assert_eq!(
        seen[2],
        Seen {
            nr: 3,
            start: (DISK - 65 * MIB) / 512,
            sectors: 64 * MIB / 512,
            kind: BASIC_DATA.into(),
            name: "config-2".into(),
        }
    );
    // The primary now points at a backup in the disk's last sector, with its array before it.
    let primary = read_region(&disk, 512, 512);
    let last = DISK / 512 - 1;
    assert_eq!(primary[32..40], last.to_le_bytes(), "alternate LBA");
    assert_eq!(
        primary[48..56],
        (last - 33).to_le_bytes(),
        "last usable LBA"
    );
    assert_eq!(read_region(&disk, 512 + 56, 16), disk_guid);
    let backup = read_region(&disk, last * 512, 512);
    assert_eq!(&backup[..8], b"EFI PART");
    assert_eq!(
        read_region(&disk, 1024, 16384),
        read_region(&disk, (last - 32) * 512, 16384)
    );
    // The protective MBR now covers the whole disk.
    assert_eq!(read_region(&disk, 446 + 12, 4), (last as u32).to_le_bytes());
    if have("sfdisk") {
        // It exits 0 either way; what it prints is the verdict.
        let after = verify(&disk);
        assert!(after.contains("No errors detected"), "{after}");
        assert!(
            !after.contains("mismatch") && !after.contains("backup"),
            "{after}"
        );
    }
    if have("sgdisk") {
        let out = run(Command::new("sgdisk").arg("-v").arg(&disk));
        assert!(out.contains("No problems found"), "{out}");
    }
    assert_drive(&disk, &report, &want);
    assert_untouched(&disk, &regions);

    let again = write_config_drive(&disk, &files("node-gpt-2")).unwrap();
    assert!(again.reused);
    assert_eq!(again.start_bytes, report.start_bytes);
    assert_eq!(read_region(&disk, 512, 512), primary);
    assert_drive(&disk, &again, &files("node-gpt-2"));

    // libblkid falls back to the backup when the primary header is bad: it must agree.
    let f = OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&[0; 512], 512).unwrap();
    assert_eq!(partx(&disk), seen);
}

#[test]
fn the_partition_shrinks_to_the_free_space_but_not_below_16_mib() {
    let dir = tempfile::tempdir().unwrap();
    let disk = sparse(dir.path(), "disk", DISK);
    make_dos(&disk, &[p(1, 2048 - 1 - 40, 0x83)]);
    let report = write_config_drive(&disk, &files("small")).unwrap();
    assert_eq!(
        (report.start_bytes, report.size_bytes),
        (DISK - 40 * MIB, 40 * MIB)
    );
    assert_drive(&disk, &report, &files("small"));

    let disk = sparse(dir.path(), "full", DISK);
    make_dos(&disk, &[p(1, 2048 - 1 - 15, 0x83)]);
    let before = read_region(&disk, 0, MIB);
    let err = write_config_drive(&disk, &files("x")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot add a config drive to {}", disk.display())
    );
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert_eq!(
        source,
        "only 15 MiB free after the last partition; a config drive needs at least 16 MiB"
    );
    assert_eq!(read_region(&disk, 0, MIB), before);
}

#[test]
fn refusals_leave_the_disk_alone() {
    let dir = tempfile::tempdir().unwrap();

    let blank = sparse(dir.path(), "blank", DISK);
    assert!(matches!(
        table_err(write_config_drive(&blank, &files("x"))),
        TableError::NotATable(_)
    ));
    assert_eq!(read_region(&blank, 0, MIB), vec![0; MIB as usize]);

    let tiny = sparse(dir.path(), "tiny", 700);
    assert!(matches!(
        table_err(write_config_drive(&tiny, &files("x"))),
        TableError::NotATable(_)
    ));

    // A whole-disk FAT filesystem also ends its first sector in 0x55AA.
    let superfloppy = sparse(dir.path(), "superfloppy", 64 * MIB);
    fatfs::format_volume(
        File::options()
            .read(true)
            .write(true)
            .open(&superfloppy)
            .unwrap(),
        fatfs::FormatVolumeOptions::new(),
    )
    .unwrap();
    assert!(matches!(
        table_err(write_config_drive(&superfloppy, &files("x"))),
        TableError::NotATable(_)
    ));

    let four = sparse(dir.path(), "four", DISK);
    make_dos(
        &four,
        &[
            p(1, 10, 0x83),
            p(11, 10, 0x83),
            p(21, 10, 0x83),
            p(31, 10, 0x83),
        ],
    );
    let before = read_region(&four, 0, 512);
    assert_eq!(
        table_err(write_config_drive(&four, &files("x"))),
        TableError::MbrSlotsFull
    );
    assert_eq!(read_region(&four, 0, 512), before);

    let extended = sparse(dir.path(), "extended", DISK);
    make_dos(
        &extended,
        &[
            p(1, 10, 0x83),
            p(11, 10, 0x83),
            p(21, 10, 0x83),
            p(31, 1000, 0x05),
        ],
    );
    assert_eq!(
        table_err(write_config_drive(&extended, &files("x"))),
        TableError::MbrSlotsFull
    );

    let gpt = sparse(dir.path(), "gpt", GIB);
    make_gpt_image(&gpt, GIB, &[p(1, 100, 0)]);
    let clean = read_region(&gpt, 0, 20 * 1024);
    let f = OpenOptions::new().write(true).open(&gpt).unwrap();
    f.write_all_at(&[0x42], 512 + 48).unwrap(); // last usable LBA
    assert!(matches!(
        table_err(write_config_drive(&gpt, &files("x"))),
        TableError::GptHeaderCrc { .. }
    ));
    f.write_all_at(&clean, 0).unwrap();
    f.write_all_at(&[0x42], 1024 + 200).unwrap(); // inside the second entry
    assert!(matches!(
        table_err(write_config_drive(&gpt, &files("x"))),
        TableError::GptEntriesCrc { .. }
    ));
    f.write_all_at(&clean, 0).unwrap();

    let bad_name = vec![ConfigDriveFile {
        path: "../etc/passwd".into(),
        contents: vec![],
    }];
    assert!(matches!(
        write_config_drive(&gpt, &bad_name),
        Err(ConfigDriveError::BadFilePath { .. })
    ));
    assert_eq!(read_region(&gpt, 0, 20 * 1024), clean);
    assert!(matches!(
        write_config_drive(&dir.path().join("missing"), &files("x")),
        Err(ConfigDriveError::Io { op: "open", .. })
    ));
}

#[test]
fn a_partition_labelled_config_2_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let disk = sparse(dir.path(), "disk", DISK);
    make_dos(&disk, &[p(1, 100, 0x83), p(200, 32, 0x0c)]);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    let mut image = Cursor::new(vec![0u8; 32 * MIB as usize]);
    fatfs::format_volume(
        &mut image,
        fatfs::FormatVolumeOptions::new().volume_label(*b"config-2   "),
    )
    .unwrap();
    f.write_all_at(image.get_ref(), 200 * MIB).unwrap();

    let report = write_config_drive(&disk, &files("n")).unwrap();
    assert!(report.reused);
    assert_eq!(
        (
            report.partition_number,
            report.start_bytes,
            report.size_bytes
        ),
        (2, 200 * MIB, 32 * MIB)
    );
    assert_eq!(partx(&disk).len(), 2);
    assert_drive(&disk, &report, &files("n"));

    // Two config drives: which one cloud-init reads is a coin toss, so refuse.
    f.write_all_at(image.get_ref(), MIB).unwrap();
    assert!(matches!(
        write_config_drive(&disk, &files("n")),
        Err(ConfigDriveError::SeveralConfigDrives { ref numbers, .. }) if numbers == &[1, 2]
    ));
}

/// Detaches the loop device when the test ends, however it ends.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// On a block device the size comes from BLKGETSIZE64 and the kernel learns of the partition.
#[test]
fn on_a_loop_device_the_kernel_sees_the_new_partition() {
    if !Path::new("/dev/loop-control").exists() || !have("losetup") {
        eprintln!("no loop devices here: this test needs /dev/loop-control, losetup and root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = sparse(dir.path(), "backing", GIB);
    make_dos(&backing, &[p(1, 100, 0x83)]);
    let out = Command::new("losetup")
        .args(["-f", "--show", "-P"])
        .arg(&backing)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!("losetup failed: {}", String::from_utf8_lossy(&out.stderr));
        return;
    }
    let device = Loop(String::from_utf8(out.stdout).unwrap().trim().to_string());
    let name = device.0.trim_start_matches("/dev/");

    let report = write_config_drive(Path::new(&device.0), &files("loop")).unwrap();
    assert_eq!(report.partition_number, 2);
    assert_eq!(report.start_bytes, GIB - 64 * MIB);
    // What the kernel lists: through BLKRRPART, or BLKPG where its kernel lacks the MBR parser.
    assert!(report.kernel_has_partition, "{report:?}");
    let sys = PathBuf::from(format!("/sys/block/{name}/{name}p2"));
    let read = |f: &str| -> u64 {
        let text = std::fs::read_to_string(sys.join(f)).unwrap();
        text.trim().parse().unwrap()
    };
    assert_eq!(read("start"), report.start_bytes / 512);
    assert_eq!(read("size"), report.size_bytes / 512);
    // Reusing it finds the kernel already knows it.
    let again = write_config_drive(Path::new(&device.0), &files("loop2")).unwrap();
    assert!(again.reused && again.kernel_has_partition, "{again:?}");
    assert_drive(&backing, &again, &files("loop2"));
}

mod random_tables {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Random primary entries on a 256 MiB disk: either a clear refusal, or a fourth… first
        /// free slot that libblkid reads back, overlapping nothing.
        #[test]
        fn random_dos_tables_are_refused_or_extended_cleanly(
            entries in proptest::collection::vec((0u64..300, 0u64..300, any::<u8>()), 0..5),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let disk = sparse(dir.path(), "disk", 256 * MIB);
            let parts: Vec<Part> = entries.iter().take(4).map(|&(s, n, k)| p(s, n, k)).collect();
            make_dos_by_hand(&disk, &parts);
            match write_config_drive(&disk, &files("r")) {
                Ok(report) => {
                    let seen = partx(&disk);
                    let new = seen.iter().find(|s| s.nr == report.partition_number).unwrap();
                    prop_assert_eq!(new.start * 512, report.start_bytes);
                    for other in seen.iter().filter(|s| s.nr != report.partition_number && s.nr <= 4) {
                        prop_assert!(other.start + other.sectors <= new.start);
                    }
                    assert_drive(&disk, &report, &files("r"));
                }
                Err(ConfigDriveError::Table { .. }) => {}
                Err(other) => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
