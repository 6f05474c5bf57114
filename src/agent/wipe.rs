//! Erasing disk metadata (Ironic's `erase_devices_metadata` clean step): the first and last MiB
//! of a disk, which hold the MBR/GPT primary table, the GPT backup and the signatures of most
//! filesystems, RAID and LVM members at the disk's start, become zeros.
//!
//! Not a secure erase: data blocks stay. It makes the disk blank to firmware, the kernel and the
//! next image (and stops a stale copy of an image on another disk from being booted by UUID).

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

const EDGE: u64 = 1 << 20;

nix::ioctl_none!(blkrrpart, 0x12, 95);

#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {disk}")]
pub struct WipeError {
    op: &'static str,
    disk: String,
    #[source]
    source: std::io::Error,
}

/// Zeroes the first and last MiB of `disk` (a block device or an image file) and asks the
/// kernel to re-read its (now empty) partition table. Returns the disk's size.
pub fn erase_metadata(disk: &Path) -> Result<u64, WipeError> {
    let err = |op: &'static str| {
        let disk = disk.display().to_string();
        move |source| WipeError { op, disk, source }
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(err("open"))?;
    // Seeking to the end gives the size of block devices and files alike.
    let size = file.seek(SeekFrom::End(0)).map_err(err("size"))?;
    let zeros = vec![0u8; EDGE.min(size) as usize];
    file.write_all_at(&zeros, 0)
        .map_err(err("zero the start of"))?;
    if size > EDGE {
        let tail = size - EDGE.min(size - EDGE);
        let len = (size - tail) as usize;
        file.write_all_at(&zeros[..len], tail)
            .map_err(err("zero the end of"))?;
    }
    file.sync_all().map_err(err("sync"))?;
    if file.metadata().map(|m| !m.is_file()).unwrap_or(false) {
        // SAFETY: BLKRRPART takes no argument; a refusal (EBUSY) only delays what the kernel sees.
        let _ = unsafe { blkrrpart(file.as_raw_fd()) };
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroes_both_edges_and_keeps_the_middle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("disk.img");
        let size = 5 * EDGE + 123;
        std::fs::write(&disk, vec![0xAAu8; size as usize]).expect("write");
        assert_eq!(erase_metadata(&disk).expect("wipes"), size);
        let data = std::fs::read(&disk).expect("read");
        assert_eq!(data.len() as u64, size);
        assert!(data[..EDGE as usize].iter().all(|b| *b == 0));
        assert!(data[(size - EDGE) as usize..].iter().all(|b| *b == 0));
        assert!(
            data[EDGE as usize..(size - EDGE) as usize]
                .iter()
                .all(|b| *b == 0xAA)
        );
    }

    #[test]
    fn tiny_disks_are_zeroed_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("tiny.img");
        std::fs::write(&disk, vec![1u8; 1500]).expect("write");
        erase_metadata(&disk).expect("wipes");
        assert!(std::fs::read(&disk).expect("read").iter().all(|b| *b == 0));
        let missing = erase_metadata(&dir.path().join("nope")).expect_err("missing disk");
        assert!(missing.to_string().contains("cannot open"), "{missing}");
    }
}
