//! The config drive: after a whole-disk image is written, add (or reuse) a small FAT partition
//! labelled `CIDATA` holding files for cloud-init, as Ironic does for whole-disk images.
//!
//! Every decision is a pure function of bytes read from the disk: [`mbr`] and [`gpt`] parse the
//! table and plan the new entry, [`fat`] recognises an existing config drive by its volume label
//! and fills a new one. This file ties them together; `device` does the I/O, in an order that
//! keeps the disk consistent if it stops half way: the filesystem is written into free space
//! first, then the table (for GPT the backup before the primary), then fsync. Last the kernel is
//! told (`BLKRRPART`, else `BLKPG` for the one partition, as `partprobe` does).
//!
//! Only 512-byte logical sectors are handled; a 4Kn disk is refused with a clear error. Logical
//! (extended) MBR partitions are neither created nor searched for an existing config drive.

mod device;
pub mod fat;
pub mod gpt;
pub mod mbr;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use device::Device;
pub use device::kernel_partition;

/// The only logical sector size handled.
pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries (2048 sectors), as every current partitioning tool does.
pub const ALIGN_SECTORS: u64 = (1 << 20) / SECTOR;
/// The size Ironic gives a config drive partition.
pub const DESIRED_SECTORS: u64 = (64 << 20) / SECTOR;
/// Below this the free space is reported as too small rather than used.
pub const MIN_SECTORS: u64 = (16 << 20) / SECTOR;

/// One file to put on the config drive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDriveFile {
    /// Relative, `/`-separated, e.g. `meta-data` or `kiln/docker/ca.pem`; directories are created.
    pub path: String,
    pub contents: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Mbr,
    Gpt,
}

/// What [`write_config_drive`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDriveReport {
    /// The kernel's number: the MBR slot (1–4) or the GPT entry index plus one.
    pub partition_number: u32,
    pub start_bytes: u64,
    pub size_bytes: u64,
    pub table: TableKind,
    /// An existing partition labelled `CIDATA` or `config-2` was reformatted; the table was not touched.
    pub reused: bool,
    /// The disk is a block device and the kernel now lists this partition with this start and
    /// size (in sysfs; its device node follows from devtmpfs/udev), after `BLKRRPART` or, where
    /// that was refused or did not produce it, `BLKPG_ADD_PARTITION`. False for regular files and
    /// when the kernel refused both (a warning is logged); the partition appears at next boot.
    pub kernel_has_partition: bool,
}

/// A partition to hold the config drive, in sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub number: u32,
    pub start: u64,
    pub sectors: u64,
}

/// What is wrong with a disk's table, or why no partition fits: the decisions of the pure
/// functions, without the disk's name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("no partition table ({0}); a whole-disk image without one is not supported")]
    NotATable(&'static str),
    #[error("GPT header CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    GptHeaderCrc { stored: u32, computed: u32 },
    #[error("GPT entry array CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    GptEntriesCrc { stored: u32, computed: u32 },
    #[error("GPT header at LBA {lba} has an invalid {field} ({value})")]
    GptHeaderField {
        lba: u64,
        field: &'static str,
        value: u64,
    },
    #[error("GPT entry {number} ends (LBA {last}) before it starts (LBA {first})")]
    GptEntryBackwards { number: u32, first: u64, last: u64 },
    #[error(
        "partition {number} (sectors {start}..{end}) does not fit a disk of {disk_sectors} sectors"
    )]
    BeyondDisk {
        number: u32,
        start: u64,
        end: u64,
        disk_sectors: u64,
    },
    #[error("all four MBR primary slots are used (logical partitions are not created)")]
    MbrSlotsFull,
    #[error("all {0} GPT entries are used")]
    GptSlotsFull(u32),
    #[error(
        "only {} MiB free after the last partition; a config drive needs at least {} MiB",
        .free_sectors / ALIGN_SECTORS,
        MIN_SECTORS / ALIGN_SECTORS
    )]
    NoSpace { free_sectors: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigDriveError {
    #[error("cannot {op} {disk}")]
    Io {
        disk: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{disk} is neither a block device nor a regular file")]
    NotADisk { disk: PathBuf },
    #[error("{disk} has {size}-byte logical sectors; only 512-byte sectors are supported")]
    SectorSize { disk: PathBuf, size: u64 },
    #[error("cannot add a config drive to {disk}")]
    Table {
        disk: PathBuf,
        #[source]
        source: TableError,
    },
    #[error("partitions {numbers:?} of {disk} are all config drives; expected at most one")]
    SeveralConfigDrives { disk: PathBuf, numbers: Vec<u32> },
    #[error("config drive file {path:?}: {why}")]
    BadFilePath { path: String, why: &'static str },
    #[error("cannot {op} {path:?} in the config drive on {disk}")]
    Fat {
        disk: PathBuf,
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Adds a config drive to `disk` (a block device, or a regular file holding a disk image) or
/// reformats the one it has, and writes `files` to it. See the module documentation.
pub fn write_config_drive(
    disk: &Path,
    files: &[ConfigDriveFile],
) -> Result<ConfigDriveReport, ConfigDriveError> {
    check_files(files)?;
    let dev = Device::open(disk)?;
    let table_err = |source| ConfigDriveError::Table {
        disk: disk.to_path_buf(),
        source,
    };

    if dev.sectors < 2 {
        return Err(table_err(TableError::NotATable(
            "the disk is smaller than two sectors",
        )));
    }
    let sector0 = dev.read_sectors(0, 1)?;
    let mbr = mbr::Mbr::parse(&sector0).map_err(table_err)?;
    let (kind, candidates, pending) = if mbr.is_protective() {
        let header = gpt::Header::parse(&dev.read_sectors(1, 1)?, 1).map_err(table_err)?;
        header.check_array_fits(dev.sectors).map_err(table_err)?;
        let array = dev.read_sectors(header.entries_lba, header.array_sectors())?;
        let entries = gpt::parse_entries(&header, &array).map_err(table_err)?;
        let candidates: Vec<Target> = entries.iter().map(gpt::Entry::target).collect();
        let unique = uuid::Uuid::new_v4();
        let plan = gpt::add_partition(&header, &array, &entries, dev.sectors, unique);
        let pending = plan.map(|update| Pending::Gpt {
            update,
            sector0: sector0.clone(),
        });
        (TableKind::Gpt, candidates, pending)
    } else {
        let candidates = mbr.data_partitions().collect();
        let plan = mbr::add_partition(&sector0, &mbr, dev.sectors);
        let pending = plan.map(|(target, sector0)| Pending::Mbr { target, sector0 });
        (TableKind::Mbr, candidates, pending)
    };

    let existing = find_config_drives(&dev, &candidates)?;
    let (target, reused) = match existing.as_slice() {
        [] => (
            pending.as_ref().map_err(|e| table_err(e.clone()))?.target(),
            false,
        ),
        [one] => (*one, true),
        several => {
            return Err(ConfigDriveError::SeveralConfigDrives {
                disk: disk.to_path_buf(),
                numbers: several.iter().map(|t| t.number).collect(),
            });
        }
    };

    let start_bytes = target.start * SECTOR;
    let size_bytes = target.sectors * SECTOR;
    fat::write_volume(&dev.file, disk, start_bytes, size_bytes, files)?;
    dev.sync()?;
    if !reused {
        match pending {
            Ok(pending) => dev.commit(&pending)?,
            Err(e) => return Err(table_err(e)),
        }
    }
    let kernel_has_partition = dev.block && dev.tell_kernel(target, !reused);
    tracing::info!(
        disk = %disk.display(),
        partition = target.number,
        start_bytes,
        size_bytes,
        reused,
        kernel_has_partition,
        "config drive written"
    );
    Ok(ConfigDriveReport {
        partition_number: target.number,
        start_bytes,
        size_bytes,
        table: kind,
        reused,
        kernel_has_partition,
    })
}

/// The device node of partition `number` of `disk`, named the way the kernel names it:
/// `/dev/sda` → `/dev/sda2`, `/dev/nvme0n1` → `/dev/nvme0n1p2`.
pub fn partition_path(disk: &Path, number: u32) -> PathBuf {
    let mut name = disk.as_os_str().to_os_string();
    if name
        .to_string_lossy()
        .ends_with(|c: char| c.is_ascii_digit())
    {
        name.push("p");
    }
    name.push(number.to_string());
    PathBuf::from(name)
}

/// Where a new partition goes in the free sectors `[free_start, free_end)`: 64 MiB, its start
/// aligned to 1 MiB and as late as that allows, so it ends within 1 MiB of `free_end`; when that
/// does not fit, as many whole MiB as fit from the first aligned sector. Returns (start, sectors),
/// or [`TableError::NoSpace`] with the free sectors when not even [`MIN_SECTORS`] fit.
pub fn place(free_start: u64, free_end: u64) -> Result<(u64, u64), TableError> {
    let no_space = TableError::NoSpace {
        free_sectors: free_end.saturating_sub(free_start),
    };
    let Some(first) = free_start.checked_next_multiple_of(ALIGN_SECTORS) else {
        return Err(no_space);
    };
    if let Some(latest) = free_end.checked_sub(DESIRED_SECTORS) {
        let start = latest - latest % ALIGN_SECTORS;
        if start >= first {
            return Ok((start, DESIRED_SECTORS));
        }
    }
    let room = free_end.saturating_sub(first);
    let room = room - room % ALIGN_SECTORS;
    if room >= MIN_SECTORS {
        Ok((first, room.min(DESIRED_SECTORS)))
    } else {
        Err(no_space)
    }
}

/// Characters a FAT long name may hold besides ASCII letters, digits and U+0080–U+FFFF: the set
/// `fatfs` accepts, checked here so a bad name fails before the disk is touched.
const NAME_PUNCTUATION: &str = "$%'-_@~`!(){}. +,;=[]^#&";

/// Splits a config drive path into its components, or says what is wrong with it.
pub fn split_path(path: &str) -> Result<Vec<&str>, &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path.starts_with('/') {
        return Err("absolute path; paths are relative to the drive's root");
    }
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts {
        match *part {
            "" => return Err("empty path component"),
            "." | ".." => return Err("`.` and `..` are not allowed"),
            _ => {}
        }
        if part.len() > 255 {
            return Err("a component is longer than 255 bytes");
        }
        if part.ends_with(['.', ' ']) {
            return Err("a component ends with a dot or a space, which FAT drops");
        }
        let allowed = |c: char| {
            c.is_ascii_alphanumeric()
                || ('\u{80}'..='\u{FFFF}').contains(&c)
                || NAME_PUNCTUATION.contains(c)
        };
        if !part.chars().all(allowed) {
            return Err("a character FAT long names cannot hold (\\:*?\"<>|, controls, non-BMP)");
        }
    }
    Ok(parts)
}

/// Every path valid, none repeated, none both a file and a directory (FAT compares names
/// case-insensitively, so neither may differ only in case).
fn check_files(files: &[ConfigDriveFile]) -> Result<(), ConfigDriveError> {
    let bad = |path: &str, why| ConfigDriveError::BadFilePath {
        path: path.to_string(),
        why,
    };
    let mut file_names = std::collections::HashSet::new();
    let mut dir_names = std::collections::HashSet::new();
    for file in files {
        let parts = split_path(&file.path).map_err(|why| bad(&file.path, why))?;
        for depth in 1..parts.len() {
            dir_names.insert(parts[..depth].join("/").to_lowercase());
        }
        if !file_names.insert(file.path.to_lowercase()) {
            return Err(bad(&file.path, "given twice (FAT ignores case)"));
        }
    }
    match files
        .iter()
        .find(|f| dir_names.contains(&f.path.to_lowercase()))
    {
        Some(file) => Err(bad(&file.path, "both a file and a directory")),
        None => Ok(()),
    }
}

/// A table change planned but not yet written.
enum Pending {
    Mbr {
        target: Target,
        sector0: Vec<u8>,
    },
    Gpt {
        update: gpt::Update,
        sector0: Vec<u8>,
    },
}

impl Pending {
    fn target(&self) -> Target {
        match self {
            Self::Mbr { target, .. } => *target,
            Self::Gpt { update, .. } => update.target,
        }
    }
}

/// The partitions among `candidates` whose FAT volume label says they are config drives.
fn find_config_drives(
    dev: &Device,
    candidates: &[Target],
) -> Result<Vec<Target>, ConfigDriveError> {
    let mut found = Vec::new();
    for target in candidates {
        let Some(end) = target.start.checked_add(target.sectors) else {
            continue;
        };
        if target.sectors == 0 || end > dev.sectors {
            continue;
        }
        let boot = dev.read_sectors(target.start, 1)?;
        let Some(bpb) = fat::Bpb::parse(&boot) else {
            continue;
        };
        let mut labels = vec![bpb.label];
        if let Some((offset, len)) = bpb.root_dir()
            && offset + len <= target.sectors * SECTOR
        {
            let dir = dev.read_bytes(target.start * SECTOR + offset, len)?;
            labels.push(fat::dir_label(&dir));
        }
        if labels
            .iter()
            .flatten()
            .any(|l| fat::is_config_drive_label(l))
        {
            found.push(*target);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = ALIGN_SECTORS;

    #[test]
    fn place_puts_64_mib_at_the_end_aligned() {
        // Free from 1 MiB to exactly 2 GiB: the last 64 MiB.
        assert_eq!(
            place(2048, 2048 * MIB),
            Ok((2048 * MIB - 64 * MIB, 64 * MIB))
        );
        // A GPT's last usable sector is not aligned: the start is aligned down, the end leaves
        // the unaligned tail free.
        let end = 4_194_304 - 33;
        let (start, sectors) = place(100 * MIB, end).unwrap();
        assert_eq!(start % MIB, 0);
        assert_eq!(sectors, 64 * MIB);
        assert!(start + sectors <= end && end - (start + sectors) < MIB);
    }

    #[test]
    fn place_clamps_to_whole_mib_and_refuses_below_16() {
        assert_eq!(place(MIB, MIB + 40 * MIB + 5), Ok((MIB, 40 * MIB)));
        assert_eq!(place(MIB + 1, 2 * MIB + 16 * MIB), Ok((2 * MIB, 16 * MIB)));
        assert_eq!(
            place(MIB + 1, 2 * MIB + 16 * MIB - 1),
            Err(TableError::NoSpace {
                free_sectors: 17 * MIB - 2
            })
        );
        assert_eq!(place(10, 5), Err(TableError::NoSpace { free_sectors: 0 }));
        assert!(place(u64::MAX - 3, u64::MAX).is_err());
    }

    #[test]
    fn no_space_message_names_the_free_mib() {
        let e = TableError::NoSpace {
            free_sectors: 5 * MIB + 7,
        };
        assert_eq!(
            e.to_string(),
            "only 5 MiB free after the last partition; a config drive needs at least 16 MiB"
        );
    }

    proptest! {
        #[test]
        fn place_stays_inside_aligned_and_prefers_64_mib(start in any::<u64>(), len in 0u64..(1 << 24)) {
            let end = start.saturating_add(len);
            match place(start, end) {
                Ok((s, n)) => {
                    prop_assert_eq!(s % MIB, 0);
                    prop_assert_eq!(n % MIB, 0);
                    prop_assert!(s >= start && s + n <= end);
                    prop_assert!((MIN_SECTORS..=DESIRED_SECTORS).contains(&n));
                    let first = start.next_multiple_of(MIB);
                    if end - first >= DESIRED_SECTORS {
                        prop_assert_eq!(n, DESIRED_SECTORS);
                        prop_assert!(end - (s + n) < MIB);
                    }
                }
                Err(TableError::NoSpace { free_sectors }) => {
                    prop_assert_eq!(free_sectors, end - start);
                    let first = start.checked_next_multiple_of(MIB);
                    prop_assert!(first.is_none_or(|f| end.saturating_sub(f) < MIN_SECTORS));
                }
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn partition_paths_follow_the_kernel() {
        for (disk, want) in [
            ("/dev/sda", "/dev/sda3"),
            ("/dev/vda", "/dev/vda3"),
            ("/dev/nvme0n1", "/dev/nvme0n1p3"),
            ("/dev/mmcblk0", "/dev/mmcblk0p3"),
            ("/dev/loop7", "/dev/loop7p3"),
        ] {
            assert_eq!(partition_path(Path::new(disk), 3), PathBuf::from(want));
        }
    }

    #[test]
    fn paths_are_checked() {
        assert_eq!(split_path("meta-data"), Ok(vec!["meta-data"]));
        assert_eq!(
            split_path("kiln/docker/ca.pem"),
            Ok(vec!["kiln", "docker", "ca.pem"])
        );
        assert_eq!(split_path("ünï ([x]).txt"), Ok(vec!["ünï ([x]).txt"]));
        for bad in [
            "",
            "/etc",
            "a//b",
            "a/",
            "./a",
            "a/../b",
            "a:b",
            "a\\b",
            "a*",
            "q?",
            "x\"y",
            "<",
            "|",
            "tab\t",
            "dot.",
            "space ",
            "emoji😀",
        ] {
            assert!(split_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(split_path(&"a".repeat(255)).is_ok());
        assert!(split_path(&"a".repeat(256)).is_err());
    }

    fn file(path: &str) -> ConfigDriveFile {
        ConfigDriveFile {
            path: path.into(),
            contents: vec![],
        }
    }

    #[test]
    fn file_sets_are_checked() {
        let ok = [file("meta-data"), file("kiln/a"), file("kiln/b/c")];
        assert!(check_files(&ok).is_ok());
        assert!(check_files(&[]).is_ok());
        for bad in [
            vec![file("a"), file("A")],
            vec![file("kiln"), file("kiln/x")],
            vec![file("Kiln/b/c"), file("kiln/B")],
            vec![file("ok"), file("../x")],
        ] {
            assert!(
                matches!(check_files(&bad), Err(ConfigDriveError::BadFilePath { .. })),
                "{bad:?}"
            );
        }
    }
}
