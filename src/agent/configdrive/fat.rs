//! FAT on the config drive: recognising an existing config drive by its volume label (a total
//! parser of the boot sector and root directory, never `fatfs` on unknown bytes), and formatting a
//! partition with `fatfs` and writing the caller's files into it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{ConfigDriveError, ConfigDriveFile, split_path};

/// The label cloud-init's NoCloud source looks for (it also takes `cidata`).
pub const LABEL: [u8; 11] = *b"CIDATA     ";
/// Labels of partitions this module reformats instead of adding another: NoCloud's and
/// OpenStack's config drive, compared case-insensitively.
const REUSABLE_LABELS: [&str; 2] = ["cidata", "config-2"];
/// How much of a root directory is searched for the label; tools put it first.
const MAX_DIR_READ: u64 = 64 << 10;
/// Zeroed at both ends of the partition before formatting, so old signatures (an ISO 9660 config
/// drive at 32 KiB, an ext4 superblock, RAID metadata at the end) cannot make blkid ambivalent.
const WIPE_BYTES: u64 = 1 << 20;

/// What the boot sector says about a FAT volume, read only as far as finding its label needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bpb {
    pub bytes_per_sector: u64,
    pub sectors_per_cluster: u64,
    pub reserved_sectors: u64,
    pub fats: u64,
    pub root_entries: u64,
    pub sectors_per_fat: u64,
    /// FAT32 only: where the root directory starts.
    pub root_cluster: Option<u64>,
    /// The BPB's label, when the extended boot signature says there is one.
    pub label: Option<[u8; 11]>,
}

impl Bpb {
    /// Reads a FAT boot sector, or `None` when the bytes are not a plausible one.
    pub fn parse(s: &[u8]) -> Option<Self> {
        let s = s.get(..512)?;
        let u16_at = |at: usize| u64::from(u16::from_le_bytes([s[at], s[at + 1]]));
        let u32_at =
            |at: usize| u64::from(u32::from_le_bytes([s[at], s[at + 1], s[at + 2], s[at + 3]]));
        if s[510..] != [0x55, 0xaa] || !matches!(s[0], 0xeb | 0xe9) {
            return None;
        }
        let bytes_per_sector = u16_at(11);
        let sectors_per_cluster = u64::from(s[13]);
        let reserved_sectors = u16_at(14);
        let fats = u64::from(s[16]);
        let root_entries = u16_at(17);
        let media = s[21];
        let plausible = matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
            && sectors_per_cluster.is_power_of_two()
            && sectors_per_cluster <= 128
            && reserved_sectors >= 1
            && (1..=2).contains(&fats)
            && (media == 0xf0 || media >= 0xf8)
            && (u16_at(19) != 0 || u32_at(32) != 0);
        if !plausible {
            return None;
        }
        let fat32 = u16_at(22) == 0;
        let (sectors_per_fat, root_cluster, ext) = if fat32 {
            (u32_at(36), Some(u32_at(44)), 64)
        } else {
            (u16_at(22), None, 36)
        };
        if sectors_per_fat == 0
            || fat32 != (root_entries == 0)
            || root_cluster.is_some_and(|c| c < 2)
        {
            return None;
        }
        let label = (s[ext + 2] == 0x29).then(|| {
            let mut l = [0; 11];
            l.copy_from_slice(&s[ext + 7..ext + 18]);
            l
        });
        Some(Self {
            bytes_per_sector,
            sectors_per_cluster,
            reserved_sectors,
            fats,
            root_entries,
            sectors_per_fat,
            root_cluster,
            label,
        })
    }

    /// Offset from the volume's start and length of the first part of the root directory (at
    /// most 64 KiB), or `None` if that is not addressable.
    pub fn root_dir(&self) -> Option<(u64, u64)> {
        let fat_area = self.fats.checked_mul(self.sectors_per_fat)?;
        let first_after_fats = self.reserved_sectors.checked_add(fat_area)?;
        let (sector, len) = match self.root_cluster {
            None => (first_after_fats, self.root_entries.checked_mul(32)?),
            Some(cluster) => {
                // FAT32 has no fixed root area: the data region starts right after the FATs.
                let into_data = cluster
                    .checked_sub(2)?
                    .checked_mul(self.sectors_per_cluster)?;
                (
                    first_after_fats.checked_add(into_data)?,
                    self.sectors_per_cluster
                        .checked_mul(self.bytes_per_sector)?,
                )
            }
        };
        Some((
            sector.checked_mul(self.bytes_per_sector)?,
            len.min(MAX_DIR_READ),
        ))
    }
}

/// The volume label entry of a directory: the first live short entry with the volume-ID
/// attribute and not a long-name part.
pub fn dir_label(dir: &[u8]) -> Option<[u8; 11]> {
    for entry in dir.chunks_exact(32) {
        match entry[0] {
            0x00 => return None,
            0xe5 => continue,
            _ => {}
        }
        let attributes = entry[11];
        if attributes != 0x0f && attributes & 0x08 != 0 && attributes & 0x10 == 0 {
            let mut l = [0; 11];
            l.copy_from_slice(&entry[..11]);
            return Some(l);
        }
    }
    None
}

/// `CIDATA`, `cidata`, `config-2`, `CONFIG-2` (space-padded, any case).
pub fn is_config_drive_label(label: &[u8]) -> bool {
    let trimmed = label.trim_ascii_end();
    REUSABLE_LABELS
        .iter()
        .any(|l| trimmed.eq_ignore_ascii_case(l.as_bytes()))
}

/// The partition as a stream `fatfs` can use: positions are relative to its start and nothing
/// outside it can be read or written.
struct Slice<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Slice<'_> {
    /// How many of `want` bytes fit before the end.
    fn room(&self, want: usize) -> usize {
        let left = self.len.saturating_sub(self.pos);
        usize::try_from(left).map_or(want, |left| left.min(want))
    }
}

impl Read for Slice<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.room(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Slice<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.room(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let n = self.file.write_at(&buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Slice<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek outside the partition")
        })?;
        Ok(self.pos)
    }
}

/// Reads the files at `paths` from the FAT volume at `start..start + len` (bytes) of `file`, if
/// that volume is labelled as a config drive; a missing file is `None`. What an OS's first boot
/// does with its config drive (the rack simulator's "OS" reads its own this way).
pub fn read_config_drive(
    file: &File,
    start: u64,
    len: u64,
    paths: &[&str],
) -> io::Result<Option<Vec<Option<Vec<u8>>>>> {
    let slice = Slice {
        file,
        start,
        len,
        pos: 0,
    };
    let Ok(fs) = fatfs::FileSystem::new(slice, fatfs::FsOptions::new()) else {
        return Ok(None);
    };
    if !is_config_drive_label(fs.volume_label().as_bytes()) {
        return Ok(None);
    }
    let root = fs.root_dir();
    let mut out = Vec::new();
    for path in paths {
        match root.open_file(path) {
            Ok(mut f) => {
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes)?;
                out.push(Some(bytes));
            }
            Err(_) => out.push(None),
        }
    }
    Ok(Some(out))
}

/// Wipes the ends of the partition at `start..start + len` (bytes) of `file`, formats it as FAT
/// labelled [`LABEL`] and writes `files` (already checked with [`super::split_path`]).
pub fn write_volume(
    file: &File,
    disk: &Path,
    start: u64,
    len: u64,
    files: &[ConfigDriveFile],
) -> Result<(), ConfigDriveError> {
    let fat_err = |op, path: &str| {
        let path = path.to_string();
        move |source| ConfigDriveError::Fat {
            disk: disk.to_path_buf(),
            op,
            path,
            source,
        }
    };
    let wipe = WIPE_BYTES.min(len);
    let zeros = vec![0; usize::try_from(wipe).unwrap_or(0)];
    for at in [start, start + len - wipe] {
        file.write_all_at(&zeros, at)
            .map_err(fat_err("wipe the old signatures of", "/"))?;
    }

    let slice = || Slice {
        file,
        start,
        len,
        pos: 0,
    };
    let options = fatfs::FormatVolumeOptions::new()
        .volume_label(LABEL)
        .volume_id(rand::random());
    fatfs::format_volume(slice(), options).map_err(fat_err("format", "/"))?;
    let fs =
        fatfs::FileSystem::new(slice(), fatfs::FsOptions::new()).map_err(fat_err("mount", "/"))?;
    {
        let root = fs.root_dir();
        for entry in files {
            let parts = split_path(&entry.path).map_err(|why| ConfigDriveError::BadFilePath {
                path: entry.path.clone(),
                why,
            })?;
            for depth in 1..parts.len() {
                let dir = parts[..depth].join("/");
                root.create_dir(&dir)
                    .map_err(fat_err("create directory", &dir))?;
            }
            let mut out = root
                .create_file(&entry.path)
                .map_err(fat_err("create", &entry.path))?;
            out.truncate().map_err(fat_err("truncate", &entry.path))?;
            out.write_all(&entry.contents)
                .map_err(fat_err("write", &entry.path))?;
            out.flush().map_err(fat_err("write", &entry.path))?;
        }
    }
    fs.unmount().map_err(fat_err("unmount", "/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Formats a volume of `sectors` in a temp file and returns its bytes.
    fn formatted(sectors: u64, files: &[ConfigDriveFile]) -> Vec<u8> {
        let tmp = tempfile::tempfile().unwrap();
        tmp.set_len(sectors * 512).unwrap();
        write_volume(&tmp, Path::new("test"), 0, sectors * 512, files).unwrap();
        let mut bytes = vec![0; (sectors * 512) as usize];
        tmp.read_exact_at(&mut bytes, 0).unwrap();
        bytes
    }

    #[test]
    fn a_formatted_volume_is_recognised_by_its_label_in_both_places() {
        for sectors in [32 * 1024, 128 * 1024, 1024 * 1024] {
            let bytes = formatted(sectors, &[]);
            let bpb = Bpb::parse(&bytes).unwrap();
            assert_eq!(bpb.label, Some(LABEL), "{sectors}");
            let (at, len) = bpb.root_dir().unwrap();
            let dir = &bytes[at as usize..(at + len) as usize];
            assert_eq!(dir_label(dir), Some(LABEL), "{sectors}");
            assert!(is_config_drive_label(&LABEL));
        }
    }

    #[test]
    fn labels_match_without_case_and_padding() {
        for yes in [
            &b"CIDATA     "[..],
            b"cidata",
            b"config-2   ",
            b"CONFIG-2",
            b"CiData",
        ] {
            assert!(is_config_drive_label(yes), "{yes:?}");
        }
        for no in [&b"NO NAME    "[..], b"CIDATA2", b"config", b"", b" CIDATA"] {
            assert!(!is_config_drive_label(no), "{no:?}");
        }
    }

    #[test]
    fn dir_label_skips_deleted_and_long_name_entries() {
        let mut dir = vec![0u8; 32 * 4];
        dir[..11].copy_from_slice(b"OLD        ");
        dir[0] = 0xe5;
        dir[11] = 0x08;
        dir[32..43].copy_from_slice(b"Alongname  ");
        dir[43] = 0x0f;
        dir[64..75].copy_from_slice(b"config-2   ");
        dir[75] = 0x08 | 0x20;
        assert_eq!(dir_label(&dir), Some(*b"config-2   "));
        dir[64] = 0;
        assert_eq!(dir_label(&dir), None);
    }

    #[test]
    fn files_are_written_and_read_back() {
        let files = [
            ConfigDriveFile {
                path: "meta-data".into(),
                contents: b"instance-id: n1\n".to_vec(),
            },
            ConfigDriveFile {
                path: "kiln/docker/ca.pem".into(),
                contents: vec![7; 100_000],
            },
        ];
        let tmp = tempfile::tempfile().unwrap();
        tmp.set_len(64 << 20).unwrap();
        write_volume(&tmp, Path::new("test"), 0, 64 << 20, &files).unwrap();
        let fs = fatfs::FileSystem::new(
            Slice {
                file: &tmp,
                start: 0,
                len: 64 << 20,
                pos: 0,
            },
            fatfs::FsOptions::new(),
        )
        .unwrap();
        for f in &files {
            let mut back = Vec::new();
            fs.root_dir()
                .open_file(&f.path)
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, f.contents);
        }
    }

    #[test]
    fn the_slice_stays_inside_its_partition() {
        let tmp = tempfile::tempfile().unwrap();
        tmp.write_all_at(&[1; 30], 0).unwrap();
        let mut s = Slice {
            file: &tmp,
            start: 10,
            len: 10,
            pos: 0,
        };
        assert_eq!(s.seek(SeekFrom::End(-2)).unwrap(), 8);
        assert_eq!(s.write(&[9; 5]).unwrap(), 2);
        assert!(s.write(&[9]).is_err());
        assert!(s.seek(SeekFrom::Current(-20)).is_err());
        s.seek(SeekFrom::Start(0)).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        assert_eq!(all, [1, 1, 1, 1, 1, 1, 1, 1, 9, 9]);
        let mut whole = [0; 30];
        tmp.read_exact_at(&mut whole, 0).unwrap();
        assert_eq!(whole[20..], [1; 10]);
    }

    proptest! {
        #[test]
        fn boot_sector_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), plausible in any::<bool>()) {
            let mut bytes = bytes;
            if plausible && bytes.len() >= 512 {
                bytes[0] = 0xeb;
                bytes[11..13].copy_from_slice(&512u16.to_le_bytes());
                bytes[13] = 1 << (bytes[13] % 8);
                bytes[16] = 1 + bytes[16] % 2;
                bytes[21] = 0xf8;
                bytes[510] = 0x55;
                bytes[511] = 0xaa;
            }
            if let Some((_, len)) = Bpb::parse(&bytes).and_then(|bpb| bpb.root_dir()) {
                prop_assert!(len <= MAX_DIR_READ);
            }
            let _ = dir_label(&bytes);
        }
    }
}
