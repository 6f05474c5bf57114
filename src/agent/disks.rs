//! Block devices as sysfs describes them, and the pure choice of the disk an image is written to.

use crate::model::RootDeviceHints;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where the kernel lists block devices.
pub const SYS_BLOCK: &str = "/sys/block";

/// Device name prefixes that are never a place to install an OS: loop files, RAM disks, CD-ROMs,
/// device-mapper volumes.
const SKIPPED_PREFIXES: [&str; 5] = ["loop", "ram", "zram", "sr", "dm-"];

const GIB: u64 = 1 << 30;

/// One whole disk (partitions are not listed in `/sys/block`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Kernel name, e.g. `sda`, `vda`, `nvme0n1`; the device is `/dev/<name>`.
    pub name: String,
    pub size_bytes: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    pub rotational: bool,
    pub removable: bool,
}

impl Disk {
    pub fn path(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }

    /// Size in whole GiB, rounded down: what an Ironic `size_gb` hint is compared with.
    pub fn size_gib(&self) -> u64 {
        self.size_bytes / GIB
    }
}

impl fmt::Display for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} GiB", self.name, self.size_gib())?;
        if let Some(model) = &self.model {
            write!(f, " {model}")?;
        }
        if self.removable {
            f.write_str(" (removable)")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds {value:?}, not a number of sectors")]
    BadSize { path: PathBuf, value: String },
}

/// Reads every disk under `root` (normally [`SYS_BLOCK`]), sorted by name. Devices of zero size
/// (a card reader without a card) and the kinds in [`SKIPPED_PREFIXES`] are left out.
pub fn read_disks(root: &Path) -> Result<Vec<Disk>, DiskError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DiskError::Read { path, source }
    };
    let mut disks = Vec::new();
    for entry in fs::read_dir(root).map_err(read_err(root))? {
        let entry = entry.map_err(read_err(root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if SKIPPED_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let dir = root.join(&name);
        let size_path = dir.join("size");
        let text = fs::read_to_string(&size_path).map_err(read_err(&size_path))?;
        let sectors: u64 = text.trim().parse().map_err(|_| DiskError::BadSize {
            path: size_path.clone(),
            value: text.trim().to_string(),
        })?;
        // sysfs counts 512-byte sectors whatever the device's logical block size.
        let size_bytes = sectors.saturating_mul(512);
        if size_bytes == 0 {
            continue;
        }
        disks.push(Disk {
            size_bytes,
            model: attr(&dir, &["device/model"]),
            serial: attr(&dir, &["device/serial", "serial"]).or_else(|| vpd_serial(&dir)),
            wwn: attr(&dir, &["device/wwid", "wwid"]),
            rotational: attr(&dir, &["queue/rotational"]).as_deref() == Some("1"),
            removable: attr(&dir, &["removable"]).as_deref() == Some("1"),
            name,
        });
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(disks)
}

/// The first of `files` under `dir` that exists and is not blank, trimmed (sysfs pads with spaces).
fn attr(dir: &Path, files: &[&str]) -> Option<String> {
    files.iter().find_map(|file| {
        let text = fs::read_to_string(dir.join(file)).ok()?;
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_string())
    })
}

/// SCSI VPD page 0x80 (unit serial number): a 4-byte header, then the serial in ASCII.
fn vpd_serial(dir: &Path) -> Option<String> {
    let bytes = fs::read(dir.join("device/vpd_pg80")).ok()?;
    let text: String = bytes
        .get(4..)?
        .iter()
        .map(|&b| b as char)
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .collect();
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Why no disk was chosen, with the disks that were seen so an operator can fix the hints.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoDisk {
    #[error("no disks found (loop, ram, zram, sr and dm devices are not considered)")]
    NoDisks,
    #[error("no disk matches hints {hints}; disks: {disks}")]
    NoMatch { hints: String, disks: String },
    #[error(
        "disk {disk} matches hints {hints} but is smaller than the image ({image_bytes} bytes)"
    )]
    MatchTooSmall {
        disk: String,
        hints: String,
        image_bytes: u64,
    },
    #[error("no non-removable disk holds the image ({image_bytes} bytes); disks: {disks}")]
    NoneLargeEnough { image_bytes: u64, disks: String },
}

/// Picks the disk the image is written to, Ironic's way: with hints, the first disk (by name)
/// matching every given hint; without, the smallest non-removable disk that holds the image.
pub fn choose_root_disk(
    disks: &[Disk],
    hints: &RootDeviceHints,
    image_size: u64,
) -> Result<Disk, NoDisk> {
    if disks.is_empty() {
        return Err(NoDisk::NoDisks);
    }
    let list = || {
        disks
            .iter()
            .map(Disk::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !hints.is_empty() {
        let mut sorted: Vec<&Disk> = disks.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let found = sorted.into_iter().find(|d| matches_hints(d, hints));
        return match found {
            None => Err(NoDisk::NoMatch {
                hints: describe_hints(hints),
                disks: list(),
            }),
            Some(d) if d.size_bytes < image_size => Err(NoDisk::MatchTooSmall {
                disk: d.to_string(),
                hints: describe_hints(hints),
                image_bytes: image_size,
            }),
            Some(d) => Ok(d.clone()),
        };
    }
    disks
        .iter()
        .filter(|d| !d.removable && d.size_bytes >= image_size)
        .min_by(|a, b| (a.size_bytes, &a.name).cmp(&(b.size_bytes, &b.name)))
        .cloned()
        .ok_or_else(|| NoDisk::NoneLargeEnough {
            image_bytes: image_size,
            disks: list(),
        })
}

/// True when every hint that is set matches `disk`.
pub fn matches_hints(disk: &Disk, hints: &RootDeviceHints) -> bool {
    let text = |hint: &Option<String>, value: &Option<String>| match hint {
        None => true,
        Some(h) => value.as_deref() == Some(h.trim()),
    };
    hints.size_gb.is_none_or(|gb| gb == disk.size_gib())
        && text(&hints.model, &disk.model)
        && text(&hints.serial, &disk.serial)
        && hints
            .wwn
            .as_deref()
            .is_none_or(|w| wwn_matches(w, disk.wwn.as_deref()))
        && hints
            .name
            .as_deref()
            .is_none_or(|n| n.trim_start_matches("/dev/") == disk.name)
}

/// sysfs gives `naa.5000c500a1b2c3d4`; Ironic users write udev's `0x5000c500a1b2c3d4`. Both match.
fn wwn_matches(hint: &str, wwid: Option<&str>) -> bool {
    let Some(wwid) = wwid else { return false };
    let hint = hint.trim();
    if hint == wwid {
        return true;
    }
    let hex = ["naa.", "eui.", "0x"]
        .iter()
        .find_map(|p| wwid.strip_prefix(p))
        .unwrap_or(wwid);
    hint.strip_prefix("0x")
        .is_some_and(|h| h.eq_ignore_ascii_case(hex))
}

/// `size_gb=40, model=X`: the hints as an operator wrote them.
pub fn describe_hints(hints: &RootDeviceHints) -> String {
    let mut parts = Vec::new();
    if let Some(gb) = hints.size_gb {
        parts.push(format!("size_gb={gb}"));
    }
    for (key, value) in [
        ("model", &hints.model),
        ("serial", &hints.serial),
        ("wwn", &hints.wwn),
        ("name", &hints.name),
    ] {
        if let Some(v) = value {
            parts.push(format!("{key}={v}"));
        }
    }
    parts.join(", ")
}

/// The `--hints-json` wire form: the same fields as [`RootDeviceHints`] but unknown keys refused,
/// so a typo (`"sizegb"`) fails loudly instead of silently meaning "no hints".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HintsWire {
    size_gb: Option<u64>,
    model: Option<String>,
    serial: Option<String>,
    wwn: Option<String>,
    name: Option<String>,
}

/// Parses root device hints from JSON such as `{"size_gb": 40, "model": "QEMU HARDDISK"}`.
pub fn parse_hints(json: &str) -> Result<RootDeviceHints, serde_json::Error> {
    let w: HintsWire = serde_json::from_str(json)?;
    Ok(RootDeviceHints {
        size_gb: w.size_gb,
        model: w.model,
        serial: w.serial,
        wwn: w.wwn,
        name: w.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A fake `/sys/block` entry: name, size in sectors, then (relative file, contents) pairs.
    fn device(root: &Path, name: &str, sectors: &str, files: &[(&str, &[u8])]) {
        let dir = root.join(name);
        let mut all = vec![("size", sectors.as_bytes())];
        all.extend_from_slice(files);
        for (file, contents) in all {
            let path = dir.join(file);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).expect("mkdir");
            }
            fs::write(path, contents).expect("write");
        }
    }

    /// A tree with what real machines show: SCSI, virtio, NVMe, USB stick, and devices to skip.
    fn rack_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let gib = |n: u64| (n * GIB / 512).to_string();
        device(
            root,
            "sda",
            &gib(40),
            &[
                ("device/model", b"QEMU HARDDISK   \n"),
                ("device/vpd_pg80", b"\0\x80\0\x08 SER-SDA"),
                ("device/wwid", b"naa.5000c500a1b2c3d4\n"),
                ("queue/rotational", b"1\n"),
                ("removable", b"0\n"),
            ],
        );
        device(
            root,
            "vda",
            &gib(10),
            &[
                ("serial", b"overlay\n"),
                ("queue/rotational", b"0\n"),
                ("removable", b"0\n"),
            ],
        );
        device(
            root,
            "nvme0n1",
            &(gib(20).parse::<u64>().unwrap_or(0) + 7).to_string(),
            &[
                ("device/model", b"Samsung SSD 980\n"),
                ("device/serial", b"S64DNX0R\n"),
                ("wwid", b"eui.002538b911b3c2d1\n"),
                ("removable", b"0\n"),
            ],
        );
        device(
            root,
            "sdb",
            &gib(8),
            &[("device/model", b"USB Stick\n"), ("removable", b"1\n")],
        );
        device(root, "sdc", "0\n", &[("removable", b"1\n")]);
        for skipped in ["loop0", "ram0", "zram0", "sr0", "dm-0"] {
            device(root, skipped, &gib(100), &[]);
        }
        dir
    }

    #[test]
    fn reads_a_fake_sysfs() {
        let tree = rack_tree();
        let disks = read_disks(tree.path()).expect("read");
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "sda", "sdb", "vda"]);
        let sda = &disks[1];
        assert_eq!(sda.size_bytes, 40 * GIB);
        assert_eq!(sda.model.as_deref(), Some("QEMU HARDDISK"));
        assert_eq!(sda.serial.as_deref(), Some("SER-SDA"));
        assert_eq!(sda.wwn.as_deref(), Some("naa.5000c500a1b2c3d4"));
        assert!(sda.rotational && !sda.removable);
        assert_eq!(disks[0].serial.as_deref(), Some("S64DNX0R"));
        assert_eq!(disks[0].wwn.as_deref(), Some("eui.002538b911b3c2d1"));
        assert_eq!(disks[3].serial.as_deref(), Some("overlay"));
        assert_eq!(
            (disks[3].model.as_deref(), disks[3].rotational),
            (None, false)
        );
        assert!(disks[2].removable);
    }

    #[test]
    fn read_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let e = read_disks(&missing)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("nope"), "{e}");
        device(dir.path(), "sda", "lots\n", &[]);
        let e = read_disks(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("sda/size") && e.contains("lots"), "{e}");
    }

    #[test]
    fn choice_table() {
        let tree = rack_tree();
        let disks = read_disks(tree.path()).expect("read");
        let hints = |json: &str| parse_hints(json).expect("hints");
        let cases: &[(&str, u64, Result<&str, &str>)] = &[
            ("{}", 0, Ok("vda")),
            ("{}", 11 * GIB, Ok("nvme0n1")),
            ("{}", 30 * GIB, Ok("sda")),
            (
                "{}",
                41 * GIB,
                Err(
                    "no non-removable disk holds the image (44023414784 bytes); disks: nvme0n1 20 GiB Samsung SSD 980, sda 40 GiB QEMU HARDDISK, sdb 8 GiB USB Stick (removable), vda 10 GiB",
                ),
            ),
            (r#"{"size_gb": 40}"#, 0, Ok("sda")),
            (r#"{"size_gb": 20}"#, 0, Ok("nvme0n1")),
            (
                r#"{"size_gb": 21}"#,
                0,
                Err(
                    "no disk matches hints size_gb=21; disks: nvme0n1 20 GiB Samsung SSD 980, sda 40 GiB QEMU HARDDISK, sdb 8 GiB USB Stick (removable), vda 10 GiB",
                ),
            ),
            (r#"{"model": "QEMU HARDDISK"}"#, 0, Ok("sda")),
            (
                r#"{"model": "QEMU"}"#,
                0,
                Err(
                    "no disk matches hints model=QEMU; disks: nvme0n1 20 GiB Samsung SSD 980, sda 40 GiB QEMU HARDDISK, sdb 8 GiB USB Stick (removable), vda 10 GiB",
                ),
            ),
            (
                r#"{"size_gb": 40, "model": "Samsung SSD 980"}"#,
                0,
                Err(
                    "no disk matches hints size_gb=40, model=Samsung SSD 980; disks: nvme0n1 20 GiB Samsung SSD 980, sda 40 GiB QEMU HARDDISK, sdb 8 GiB USB Stick (removable), vda 10 GiB",
                ),
            ),
            (r#"{"serial": "S64DNX0R"}"#, 0, Ok("nvme0n1")),
            (r#"{"serial": "overlay"}"#, 0, Ok("vda")),
            (r#"{"wwn": "naa.5000c500a1b2c3d4"}"#, 0, Ok("sda")),
            (r#"{"wwn": "0x5000C500A1B2C3D4"}"#, 0, Ok("sda")),
            (r#"{"wwn": "0x002538b911b3c2d1"}"#, 0, Ok("nvme0n1")),
            (
                r#"{"wwn": "0x5000c500a1b2c3d5"}"#,
                0,
                Err(
                    "no disk matches hints wwn=0x5000c500a1b2c3d5; disks: nvme0n1 20 GiB Samsung SSD 980, sda 40 GiB QEMU HARDDISK, sdb 8 GiB USB Stick (removable), vda 10 GiB",
                ),
            ),
            (r#"{"name": "/dev/sdb"}"#, 0, Ok("sdb")),
            (r#"{"name": "vda"}"#, 0, Ok("vda")),
            (
                r#"{"name": "vda"}"#,
                11 * GIB,
                Err(
                    "disk vda 10 GiB matches hints name=vda but is smaller than the image (11811160064 bytes)",
                ),
            ),
            (
                r#"{"name": "sdc"}"#,
                0,
                Err(
                    "no disk matches hints name=sdc; disks: nvme0n1 20 GiB Samsung SSD 980, sda 40 GiB QEMU HARDDISK, sdb 8 GiB USB Stick (removable), vda 10 GiB",
                ),
            ),
        ];
        for (json, image, want) in cases {
            let got = choose_root_disk(&disks, &hints(json), *image);
            let got = got
                .as_ref()
                .map(|d| d.name.as_str())
                .map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(str::to_string), "{json} image={image}");
        }
        assert_eq!(
            choose_root_disk(&[], &RootDeviceHints::default(), 0),
            Err(NoDisk::NoDisks)
        );
    }

    #[test]
    fn equal_sizes_break_ties_by_name() {
        let disk = |name: &str| Disk {
            name: name.into(),
            size_bytes: 10 * GIB,
            model: None,
            serial: None,
            wwn: None,
            rotational: false,
            removable: false,
        };
        let disks = [disk("sdb"), disk("sda")];
        let chosen = choose_root_disk(&disks, &RootDeviceHints::default(), 0);
        assert_eq!(chosen.map(|d| d.name), Ok("sda".to_string()));
    }

    #[test]
    fn hints_json_refuses_typos() {
        assert!(parse_hints(r#"{"sizegb": 40}"#).is_err());
        assert!(parse_hints(r#"{"size_gb": "40"}"#).is_err());
        assert_eq!(parse_hints("{}").ok(), Some(RootDeviceHints::default()));
    }
}
