//! The disk as a file descriptor: its size (BLKGETSIZE64 or the file's length), sector reads, the
//! ordered writes of a planned table change, and telling the kernel about the new partition.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{ConfigDriveError, Pending, SECTOR, Target, mbr};

mod ioctl {
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    nix::ioctl_read_bad!(
        blksszget,
        nix::request_code_none!(0x12, 104),
        nix::libc::c_int
    );
    nix::ioctl_none!(blkrrpart, 0x12, 95);
    nix::ioctl_write_ptr_bad!(blkpg, nix::request_code_none!(0x12, 105), BlkpgIoctlArg);

    /// `struct blkpg_ioctl_arg` of `<linux/blkpg.h>`.
    #[repr(C)]
    pub struct BlkpgIoctlArg {
        pub op: nix::libc::c_int,
        pub flags: nix::libc::c_int,
        pub datalen: nix::libc::c_int,
        pub data: *mut BlkpgPartition,
    }

    /// `struct blkpg_partition`: offsets in bytes.
    #[repr(C)]
    pub struct BlkpgPartition {
        pub start: nix::libc::c_longlong,
        pub length: nix::libc::c_longlong,
        pub pno: nix::libc::c_int,
        pub devname: [nix::libc::c_char; 64],
        pub volname: [nix::libc::c_char; 64],
    }

    pub const BLKPG_ADD_PARTITION: nix::libc::c_int = 1;
}

/// The start and size (512-byte sectors) the kernel lists for partition `number` of the disk
/// whose sysfs directory is `disk_dir` (`/sys/dev/block/MAJ:MIN`), if it lists one.
pub fn kernel_partition(disk_dir: &Path, number: u32) -> Option<(u64, u64)> {
    let read = |dir: &Path, name: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    std::fs::read_dir(disk_dir)
        .ok()?
        .flatten()
        .find_map(|entry| {
            let dir = entry.path();
            (read(&dir, "partition")? == u64::from(number))
                .then(|| Some((read(&dir, "start")?, read(&dir, "size")?)))
                .flatten()
        })
}

/// The open disk and what is known about it.
pub(super) struct Device {
    pub(super) file: File,
    path: PathBuf,
    pub(super) sectors: u64,
    pub(super) block: bool,
    /// Device number, for finding the disk in sysfs.
    rdev: u64,
}

impl Device {
    pub(super) fn open(path: &Path) -> Result<Self, ConfigDriveError> {
        let io_err = |op| {
            move |source| ConfigDriveError::Io {
                disk: path.to_path_buf(),
                op,
                source,
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("open"))?;
        let meta = file.metadata().map_err(io_err("stat"))?;
        let kind = meta.file_type();
        let (bytes, block) = if kind.is_block_device() {
            let mut bytes = 0u64;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid for it.
            unsafe { ioctl::blkgetsize64(file.as_raw_fd(), &mut bytes) }
                .map_err(|e| io_err("read the size (BLKGETSIZE64) of")(e.into()))?;
            let mut sector = 0;
            // SAFETY: BLKSSZGET writes one int through the pointer, which is valid for it.
            unsafe { ioctl::blksszget(file.as_raw_fd(), &mut sector) }
                .map_err(|e| io_err("read the sector size (BLKSSZGET) of")(e.into()))?;
            if u64::try_from(sector).ok() != Some(SECTOR) {
                return Err(ConfigDriveError::SectorSize {
                    disk: path.to_path_buf(),
                    size: u64::try_from(sector).unwrap_or(0),
                });
            }
            (bytes, true)
        } else if kind.is_file() {
            (meta.len(), false)
        } else {
            return Err(ConfigDriveError::NotADisk {
                disk: path.to_path_buf(),
            });
        };
        Ok(Self {
            file,
            path: path.to_path_buf(),
            sectors: bytes / SECTOR,
            block,
            rdev: meta.rdev(),
        })
    }

    fn io_err(&self, op: &'static str) -> impl FnOnce(io::Error) -> ConfigDriveError + '_ {
        move |source| ConfigDriveError::Io {
            disk: self.path.clone(),
            op,
            source,
        }
    }

    pub(super) fn read_bytes(&self, offset: u64, len: u64) -> Result<Vec<u8>, ConfigDriveError> {
        let len = usize::try_from(len)
            .map_err(|_| self.io_err("read")(io::Error::other("read too large")))?;
        let mut buf = vec![0; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(self.io_err("read"))?;
        Ok(buf)
    }

    pub(super) fn read_sectors(&self, lba: u64, count: u64) -> Result<Vec<u8>, ConfigDriveError> {
        self.read_bytes(lba * SECTOR, count * SECTOR)
    }

    fn write_sectors(&self, lba: u64, data: &[u8]) -> Result<(), ConfigDriveError> {
        self.file
            .write_all_at(data, lba * SECTOR)
            .map_err(self.io_err("write the partition table of"))
    }

    pub(super) fn sync(&self) -> Result<(), ConfigDriveError> {
        self.file.sync_all().map_err(self.io_err("fsync"))
    }

    /// Writes a planned table change. For GPT the backup goes first: until the primary is
    /// rewritten it still points at the old, intact backup, so a crash leaves a valid table.
    pub(super) fn commit(&self, pending: &Pending) -> Result<(), ConfigDriveError> {
        match pending {
            Pending::Mbr { sector0, .. } => self.write_sectors(0, sector0)?,
            Pending::Gpt { update, sector0 } => {
                self.write_sectors(update.backup_array_lba, &update.array)?;
                self.write_sectors(update.backup_lba, &update.backup)?;
                self.sync()?;
                self.write_sectors(update.primary_array_lba, &update.array)?;
                self.write_sectors(1, &update.primary)?;
                let mut sector0 = sector0.clone();
                if mbr::fit_protective(&mut sector0, self.sectors) {
                    self.write_sectors(0, &sector0)?;
                }
            }
        }
        self.sync()
    }

    /// Makes the kernel list `target`: `BLKRRPART` when the table `changed` (refused with EBUSY
    /// while a partition of the disk is open, and a no-op on kernels without the table's parser),
    /// then, if the partition is still missing, `BLKPG_ADD_PARTITION` for it alone, as `partprobe`
    /// and `partx -a` do. Nothing here harms what was written, so failures are only logged.
    pub(super) fn tell_kernel(&self, target: Target, changed: bool) -> bool {
        let sys = PathBuf::from(format!(
            "/sys/dev/block/{}:{}",
            nix::sys::stat::major(self.rdev),
            nix::sys::stat::minor(self.rdev)
        ));
        let want = Some((target.start, target.sectors));
        if changed {
            // SAFETY: BLKRRPART takes no argument.
            if let Err(errno) = unsafe { ioctl::blkrrpart(self.file.as_raw_fd()) } {
                tracing::debug!(disk = %self.path.display(), error = %errno, "BLKRRPART refused");
            }
        }
        if kernel_partition(&sys, target.number) == want {
            return true;
        }
        let result = self.blkpg_add(target);
        let listed = kernel_partition(&sys, target.number) == want;
        if !listed {
            tracing::warn!(
                disk = %self.path.display(),
                partition = target.number,
                blkpg = ?result,
                "the kernel does not list the config drive partition; it appears after a reboot"
            );
        }
        listed
    }

    fn blkpg_add(&self, target: Target) -> nix::Result<nix::libc::c_int> {
        let bytes = |sectors: u64| {
            nix::libc::c_longlong::try_from(sectors * SECTOR).map_err(|_| nix::Error::EOVERFLOW)
        };
        let mut partition = ioctl::BlkpgPartition {
            start: bytes(target.start)?,
            length: bytes(target.sectors)?,
            pno: nix::libc::c_int::try_from(target.number).map_err(|_| nix::Error::EOVERFLOW)?,
            devname: [0; 64],
            volname: [0; 64],
        };
        let arg = ioctl::BlkpgIoctlArg {
            op: ioctl::BLKPG_ADD_PARTITION,
            flags: 0,
            datalen: std::mem::size_of::<ioctl::BlkpgPartition>() as nix::libc::c_int,
            data: &mut partition,
        };
        // SAFETY: `arg` and the partition it points to are valid, initialised and outlive the call.
        unsafe { ioctl::blkpg(self.file.as_raw_fd(), &arg) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_partitions_are_found_by_number_in_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        for (name, number, start, size) in [("vda1", 1, 2048, 4096), ("vda3", 3, 8192, 131_072)] {
            let part = dir.path().join(name);
            std::fs::create_dir(&part).unwrap();
            std::fs::write(part.join("partition"), format!("{number}\n")).unwrap();
            std::fs::write(part.join("start"), format!("{start}\n")).unwrap();
            std::fs::write(part.join("size"), format!("{size}\n")).unwrap();
        }
        std::fs::create_dir(dir.path().join("queue")).unwrap();
        std::fs::write(dir.path().join("size"), "999\n").unwrap();
        assert_eq!(kernel_partition(dir.path(), 3), Some((8192, 131_072)));
        assert_eq!(kernel_partition(dir.path(), 1), Some((2048, 4096)));
        assert_eq!(kernel_partition(dir.path(), 2), None);
        assert_eq!(kernel_partition(&dir.path().join("missing"), 1), None);
    }
}
