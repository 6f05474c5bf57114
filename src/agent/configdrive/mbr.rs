//! The DOS (MBR) partition table in sector 0: parsing it, choosing the primary slot and extent of
//! a new partition, and encoding that one entry without touching the rest of the sector.

use super::{SECTOR, TableError, Target, fat, place};

const ENTRIES_AT: usize = 446;
const ENTRY_LEN: usize = 16;
/// The highest sector an MBR can address, plus one: starts and sizes are 32-bit.
const ADDRESSABLE: u64 = 1 << 32;
pub const TYPE_FAT32_LBA: u8 = 0x0c;
pub const TYPE_GPT_PROTECTIVE: u8 = 0xee;
/// CHS-addressed, LBA-addressed and Linux extended partitions.
const EXTENDED_TYPES: [u8; 3] = [0x05, 0x0f, 0x85];

/// One of the four primary entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub boot: u8,
    pub kind: u8,
    pub start: u32,
    pub sectors: u32,
}

impl Entry {
    fn read(bytes: &[u8; ENTRY_LEN]) -> Self {
        let le32 = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        Self {
            boot: bytes[0],
            kind: bytes[4],
            start: le32(8),
            sectors: le32(12),
        }
    }

    /// Nothing in the slot: what a new partition may take.
    pub fn is_free(&self) -> bool {
        self.kind == 0 && self.sectors == 0
    }

    /// The kernel creates a partition for every entry with a size.
    pub fn is_used(&self) -> bool {
        self.sectors != 0
    }

    pub fn is_extended(&self) -> bool {
        EXTENDED_TYPES.contains(&self.kind)
    }

    /// First sector after the partition.
    pub fn end(&self) -> u64 {
        u64::from(self.start) + u64::from(self.sectors)
    }
}

/// The four primary entries of a valid MBR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mbr {
    pub entries: [Entry; 4],
}

impl Mbr {
    /// Reads sector 0. Like libblkid it wants the 0x55AA signature and boot flags of 0x00 or
    /// 0x80, and refuses a FAT boot sector (a whole-disk filesystem also ends in 0x55AA).
    pub fn parse(sector: &[u8]) -> Result<Self, TableError> {
        let Some(sector) = sector.get(..SECTOR as usize) else {
            return Err(TableError::NotATable("the disk is smaller than one sector"));
        };
        if sector[510..] != [0x55, 0xaa] {
            return Err(TableError::NotATable("sector 0 lacks the 0x55AA signature"));
        }
        let mut entries = [Entry::default(); 4];
        for (slot, entry) in entries.iter_mut().enumerate() {
            let at = ENTRIES_AT + slot * ENTRY_LEN;
            let mut raw = [0; ENTRY_LEN];
            raw.copy_from_slice(&sector[at..at + ENTRY_LEN]);
            *entry = Entry::read(&raw);
        }
        if entries.iter().any(|e| e.boot != 0 && e.boot != 0x80) {
            return Err(TableError::NotATable(
                "sector 0 has the 0x55AA signature but boot flags other than 0x00/0x80",
            ));
        }
        if fat::Bpb::parse(sector).is_some() {
            return Err(TableError::NotATable(
                "sector 0 is a FAT boot sector: the disk is one filesystem",
            ));
        }
        Ok(Self { entries })
    }

    /// A protective (or hybrid) MBR: the real table is the GPT.
    pub fn is_protective(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e.is_used() && e.kind == TYPE_GPT_PROTECTIVE)
    }

    /// Used primary partitions that could hold a filesystem, as the kernel numbers them (slot + 1).
    pub fn data_partitions(&self) -> impl Iterator<Item = Target> + '_ {
        self.entries
            .iter()
            .zip(1..)
            .filter(|(e, _)| e.is_used() && !e.is_extended() && e.kind != TYPE_GPT_PROTECTIVE)
            .map(|(e, number)| Target {
                number,
                start: u64::from(e.start),
                sectors: u64::from(e.sectors),
            })
    }
}

/// Plans a new FAT32 (LBA) primary partition after the last one (an extended partition counts
/// with all its logicals) and returns it with the new sector 0: only the chosen slot changes.
pub fn add_partition(
    sector0: &[u8],
    mbr: &Mbr,
    disk_sectors: u64,
) -> Result<(Target, Vec<u8>), TableError> {
    for (entry, number) in mbr.entries.iter().zip(1..) {
        if entry.is_used() && entry.end() > disk_sectors {
            return Err(TableError::BeyondDisk {
                number,
                start: u64::from(entry.start),
                end: entry.end(),
                disk_sectors,
            });
        }
    }
    let Some(slot) = mbr.entries.iter().position(Entry::is_free) else {
        return Err(TableError::MbrSlotsFull);
    };
    let free_start = mbr
        .entries
        .iter()
        .filter(|e| e.is_used())
        .map(Entry::end)
        .max()
        .unwrap_or(1)
        .max(1);
    let (start, sectors) = place(free_start, disk_sectors.min(ADDRESSABLE))?;
    let (Ok(start32), Ok(sectors32)) = (u32::try_from(start), u32::try_from(sectors)) else {
        // place() stays below ADDRESSABLE, so this is unreachable; say so without panicking.
        return Err(TableError::NoSpace { free_sectors: 0 });
    };
    let Some(sector0) = sector0.get(..SECTOR as usize) else {
        return Err(TableError::NotATable("the disk is smaller than one sector"));
    };
    let mut sector0 = sector0.to_vec();
    let at = ENTRIES_AT + slot * ENTRY_LEN;
    sector0[at..at + ENTRY_LEN].copy_from_slice(&encode_entry(TYPE_FAT32_LBA, start32, sectors32));
    let number = u32::try_from(slot).map_or(0, |s| s + 1);
    Ok((
        Target {
            number,
            start,
            sectors,
        },
        sector0,
    ))
}

/// A non-bootable entry, with CHS addresses for the usual 255-head, 63-sector geometry.
pub fn encode_entry(kind: u8, start: u32, sectors: u32) -> [u8; ENTRY_LEN] {
    let mut e = [0; ENTRY_LEN];
    let last = u64::from(start) + u64::from(sectors).max(1) - 1;
    e[1..4].copy_from_slice(&chs(u64::from(start)));
    e[4] = kind;
    e[5..8].copy_from_slice(&chs(last));
    e[8..12].copy_from_slice(&start.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
    e
}

/// The CHS form of `lba` (head, sector and cylinder's top bits, cylinder's low byte), or
/// 1023/254/63 when beyond cylinder 1023, as fdisk writes it.
pub fn chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SPT: u64 = 63;
    let cylinder = lba / (HEADS * SPT);
    if cylinder > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let head = (lba / SPT) % HEADS;
    let sector = lba % SPT + 1;
    // Each value fits its byte: head < 255, sector ≤ 63, cylinder ≤ 1023.
    [
        head as u8,
        (sector as u8) | ((cylinder >> 2) & 0xc0) as u8,
        (cylinder & 0xff) as u8,
    ]
}

/// Grows a purely protective MBR's 0xEE entry to cover the disk (as `sgdisk -e` does), after the
/// GPT has moved to the disk's end. Hybrid MBRs are left alone. Returns whether it changed.
pub fn fit_protective(sector0: &mut [u8], disk_sectors: u64) -> bool {
    let Ok(mbr) = Mbr::parse(sector0) else {
        return false;
    };
    let used: Vec<(usize, &Entry)> = mbr
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.is_used())
        .collect();
    let [(slot, entry)] = used.as_slice() else {
        return false;
    };
    let want = u32::try_from(disk_sectors.saturating_sub(1)).unwrap_or(u32::MAX);
    if entry.kind != TYPE_GPT_PROTECTIVE || entry.start != 1 || entry.sectors == want {
        return false;
    }
    let at = ENTRIES_AT + slot * ENTRY_LEN + 12;
    sector0[at..at + 4].copy_from_slice(&want.to_le_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sector(entries: &[(usize, u8, u32, u32)]) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        s[..4].copy_from_slice(&[0x33, 0xc0, 0x8e, 0xd0]); // boot code, kept as is
        s[440..444].copy_from_slice(&[1, 2, 3, 4]); // disk identifier
        for &(slot, kind, start, sectors) in entries {
            let at = ENTRIES_AT + slot * ENTRY_LEN;
            s[at..at + 16].copy_from_slice(&encode_entry(kind, start, sectors));
        }
        s[510] = 0x55;
        s[511] = 0xaa;
        s
    }

    const GIB: u64 = 2 * 1024 * 1024;

    #[test]
    fn parses_entries_and_numbers_slots() {
        let s = sector(&[(0, 0x83, 2048, 4096), (2, 0x82, 8192, 2048)]);
        let mbr = Mbr::parse(&s).unwrap();
        assert!(!mbr.is_protective());
        let parts: Vec<Target> = mbr.data_partitions().collect();
        assert_eq!(
            parts,
            [
                Target {
                    number: 1,
                    start: 2048,
                    sectors: 4096
                },
                Target {
                    number: 3,
                    start: 8192,
                    sectors: 2048
                }
            ]
        );
    }

    #[test]
    fn refuses_what_is_not_a_table() {
        let mut s = sector(&[]);
        s[511] = 0;
        assert!(matches!(Mbr::parse(&s), Err(TableError::NotATable(_))));
        let mut s = sector(&[(0, 0x83, 2048, 4096)]);
        s[ENTRIES_AT] = 0x12;
        assert!(matches!(Mbr::parse(&s), Err(TableError::NotATable(_))));
        assert!(matches!(
            Mbr::parse(&[0; 100]),
            Err(TableError::NotATable(_))
        ));
        // An empty but signed table is a table.
        assert!(Mbr::parse(&sector(&[])).is_ok());
    }

    #[test]
    fn adds_the_new_partition_at_the_end_in_the_first_free_slot() {
        let s = sector(&[(0, 0x83, 2048, 1_000_000), (2, 0x83, 1_002_048, 1000)]);
        let mbr = Mbr::parse(&s).unwrap();
        let (target, new) = add_partition(&s, &mbr, 2 * GIB).unwrap();
        assert_eq!(
            target,
            Target {
                number: 2,
                start: 2 * GIB - 131_072,
                sectors: 131_072
            }
        );
        let after = Mbr::parse(&new).unwrap();
        assert_eq!(
            after.entries[1],
            Entry {
                boot: 0,
                kind: 0x0c,
                start: (2 * GIB - 131_072) as u32,
                sectors: 131_072
            }
        );
        // Only the slot's 16 bytes changed.
        let changed: Vec<usize> = (0..512).filter(|&i| s[i] != new[i]).collect();
        assert!(
            changed.iter().all(|&i| (462..478).contains(&i)),
            "{changed:?}"
        );
    }

    #[test]
    fn an_extended_partition_counts_to_its_end_and_logicals_are_not_made() {
        let s = sector(&[(0, 0x83, 2048, 2048), (1, 0x05, 4096, 3 * 1024 * 1024)]);
        let mbr = Mbr::parse(&s).unwrap();
        assert_eq!(mbr.data_partitions().count(), 1);
        let (target, _) = add_partition(&s, &mbr, 2 * GIB).unwrap();
        assert_eq!(target.number, 3);
        assert!(target.start >= 4096 + 3 * 1024 * 1024);
        let s = sector(&[
            (0, 0x83, 2048, 2048),
            (1, 0x83, 4096, 2048),
            (2, 0x83, 6144, 2048),
            (3, 0x0f, 8192, 2048),
        ]);
        let mbr = Mbr::parse(&s).unwrap();
        assert_eq!(
            add_partition(&s, &mbr, 2 * GIB),
            Err(TableError::MbrSlotsFull)
        );
    }

    #[test]
    fn refuses_a_table_larger_than_the_disk_and_a_full_disk() {
        let s = sector(&[(0, 0x83, 2048, 4 * 1024 * 1024)]);
        let mbr = Mbr::parse(&s).unwrap();
        assert_eq!(
            add_partition(&s, &mbr, 2 * GIB),
            Err(TableError::BeyondDisk {
                number: 1,
                start: 2048,
                end: 2048 + 4 * 1024 * 1024,
                disk_sectors: 2 * GIB
            })
        );
        let s = sector(&[(0, 0x83, 2048, 2 * GIB as u32 - 2048 - 10_000)]);
        let mbr = Mbr::parse(&s).unwrap();
        assert_eq!(
            add_partition(&s, &mbr, 2 * GIB),
            Err(TableError::NoSpace {
                free_sectors: 10_000
            })
        );
    }

    #[test]
    fn on_a_disk_over_2_tib_the_partition_stays_addressable() {
        let s = sector(&[(0, 0x83, 2048, 2048)]);
        let mbr = Mbr::parse(&s).unwrap();
        let (target, _) = add_partition(&s, &mbr, 10 * 1024 * GIB).unwrap();
        assert!(target.start + target.sectors <= ADDRESSABLE);
        assert_eq!(target.sectors, 131_072);
    }

    #[test]
    fn chs_matches_fdisk() {
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(2048), [32, 33, 0]); // what fdisk writes for a partition at 1 MiB
        assert_eq!(chs(62), [0, 63, 0]);
        assert_eq!(chs(63), [1, 1, 0]);
        assert_eq!(chs(255 * 63), [0, 1, 1]);
        assert_eq!(chs(255 * 63 * 256), [0, 1 | 0x40, 0]);
        assert_eq!(chs(255 * 63 * 1024 - 1), [254, 63 | 0xc0, 0xff]);
        assert_eq!(chs(255 * 63 * 1024), [0xfe, 0xff, 0xff]);
    }

    #[test]
    fn fits_a_protective_mbr_to_the_disk_but_not_a_hybrid() {
        let mut s = sector(&[(0, 0xee, 1, 999)]);
        assert!(fit_protective(&mut s, 2 * GIB));
        assert_eq!(
            Mbr::parse(&s).unwrap().entries[0].sectors,
            2 * GIB as u32 - 1
        );
        assert!(!fit_protective(&mut s, 2 * GIB), "already fits");
        assert!(fit_protective(&mut s, 1 << 40));
        assert_eq!(Mbr::parse(&s).unwrap().entries[0].sectors, u32::MAX);
        let mut hybrid = sector(&[(0, 0xee, 1, 999), (1, 0x0c, 2048, 2048)]);
        let before = hybrid.clone();
        assert!(!fit_protective(&mut hybrid, 2 * GIB));
        assert_eq!(hybrid, before);
    }

    proptest! {
        #[test]
        fn parse_and_plan_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), disk in any::<u64>(), sign in any::<bool>()) {
            let mut bytes = bytes;
            if sign && bytes.len() >= 512 {
                bytes[510] = 0x55;
                bytes[511] = 0xaa;
            }
            if let Ok(mbr) = Mbr::parse(&bytes) {
                let _ = mbr.data_partitions().count();
                if let Ok((target, new)) = add_partition(&bytes, &mbr, disk) {
                    prop_assert!(target.start + target.sectors <= disk.min(ADDRESSABLE));
                    prop_assert!(Mbr::parse(&new).is_ok());
                }
                let _ = fit_protective(&mut bytes, disk);
            }
        }

        #[test]
        fn planned_partitions_never_overlap(entries in proptest::collection::vec((0usize..4, 1u8..=0xff, 1u32..(1 << 23), 1u32..(1 << 22)), 0..4)) {
            let s = sector(&entries.iter().map(|&(slot, kind, start, n)| (slot, if kind == 0xee { 0x83 } else { kind }, start, n)).collect::<Vec<_>>());
            let mbr = Mbr::parse(&s).unwrap();
            if let Ok((target, new)) = add_partition(&s, &mbr, 1 << 24) {
                for e in mbr.entries.iter().filter(|e| e.is_used()) {
                    prop_assert!(target.start >= e.end() || target.start + target.sectors <= u64::from(e.start));
                }
                let after = Mbr::parse(&new).unwrap();
                prop_assert_eq!(after.entries.iter().filter(|e| e.is_used()).count(), mbr.entries.iter().filter(|e| e.is_used()).count() + 1);
            }
        }
    }
}
