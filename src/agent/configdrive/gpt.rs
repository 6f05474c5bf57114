//! The GUID partition table: header and entry-array parsing with their CRCs, and the one change
//! the config drive needs — move the backup to the real end of a disk larger than the image (as
//! `sgdisk -e` does) and add a "Microsoft basic data" entry named `config-2` at the end.

use uuid::Uuid;

use super::{SECTOR, TableError, Target, place};

pub const SIGNATURE: [u8; 8] = *b"EFI PART";
/// What Linux, Windows and cloud-init take for a FAT data partition.
pub const BASIC_DATA: Uuid = Uuid::from_u128(0xEBD0A0A2_B9E5_4433_87C0_68B6B72699C7);
pub const PARTITION_NAME: &str = "config-2";
const HEADER_MIN: u32 = 92;
const ENTRY_MIN: u32 = 128;
/// 128 entries of 128 bytes is usual; anything beyond 1 MiB is corruption, not a table.
const MAX_ARRAY_BYTES: u64 = 1 << 20;
const SECTOR_LEN: usize = SECTOR as usize;

fn le32(b: &[u8], at: usize) -> u32 {
    let mut v = [0; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// A GPT header as read, keeping its whole sector so fields this code does not know survive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    raw: Vec<u8>,
    pub header_size: u32,
    pub my_lba: u64,
    pub alternate_lba: u64,
    pub first_usable: u64,
    pub last_usable: u64,
    pub entries_lba: u64,
    pub entries: u32,
    pub entry_size: u32,
    pub entries_crc: u32,
}

impl Header {
    /// Parses and checks the header sector read at `lba`: signature, size, CRC, its own LBA, the
    /// entry size and a sane array size.
    pub fn parse(sector: &[u8], lba: u64) -> Result<Self, TableError> {
        let field = |field, value| TableError::GptHeaderField { lba, field, value };
        let Some(sector) = sector.get(..SECTOR_LEN) else {
            return Err(field("sector length", sector.len() as u64));
        };
        if sector[..8] != SIGNATURE {
            return Err(field("signature", le64(sector, 0)));
        }
        let header_size = le32(sector, 12);
        if !(HEADER_MIN..=SECTOR as u32).contains(&header_size) {
            return Err(field("header size", header_size.into()));
        }
        let stored = le32(sector, 16);
        let computed = header_crc(sector, header_size);
        if stored != computed {
            return Err(TableError::GptHeaderCrc { stored, computed });
        }
        let header = Self {
            raw: sector.to_vec(),
            header_size,
            my_lba: le64(sector, 24),
            alternate_lba: le64(sector, 32),
            first_usable: le64(sector, 40),
            last_usable: le64(sector, 48),
            entries_lba: le64(sector, 72),
            entries: le32(sector, 80),
            entry_size: le32(sector, 84),
            entries_crc: le32(sector, 88),
        };
        if header.my_lba != lba {
            return Err(field("own LBA", header.my_lba));
        }
        header.check_shape()?;
        if header.first_usable > header.last_usable {
            return Err(field("first usable LBA", header.first_usable));
        }
        Ok(header)
    }

    /// Entry size and array size within what the code below indexes safely. The fields are
    /// public, so the functions taking a header check this again rather than trust `parse`.
    fn check_shape(&self) -> Result<(), TableError> {
        let field = |field, value| TableError::GptHeaderField {
            lba: self.my_lba,
            field,
            value,
        };
        if self.entry_size < ENTRY_MIN || !self.entry_size.is_power_of_two() {
            return Err(field("entry size", self.entry_size.into()));
        }
        if self.array_bytes() > MAX_ARRAY_BYTES {
            return Err(field("entry array size", self.array_bytes()));
        }
        Ok(())
    }

    /// The primary's entry array must lie after the header and inside the disk.
    pub fn check_array_fits(&self, disk_sectors: u64) -> Result<(), TableError> {
        let end = self.entries_lba.checked_add(self.array_sectors());
        if self.entries_lba < 2 || end.is_none_or(|end| end > disk_sectors) {
            return Err(TableError::GptHeaderField {
                lba: self.my_lba,
                field: "entry array LBA",
                value: self.entries_lba,
            });
        }
        Ok(())
    }

    pub fn array_bytes(&self) -> u64 {
        u64::from(self.entries) * u64::from(self.entry_size)
    }

    pub fn array_sectors(&self) -> u64 {
        self.array_bytes().div_ceil(SECTOR)
    }

    /// The header sector with the fields set and the CRC recomputed.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = self.raw.clone();
        s.resize(SECTOR_LEN, 0);
        s[12..16].copy_from_slice(&self.header_size.to_le_bytes());
        s[24..32].copy_from_slice(&self.my_lba.to_le_bytes());
        s[32..40].copy_from_slice(&self.alternate_lba.to_le_bytes());
        s[40..48].copy_from_slice(&self.first_usable.to_le_bytes());
        s[48..56].copy_from_slice(&self.last_usable.to_le_bytes());
        s[72..80].copy_from_slice(&self.entries_lba.to_le_bytes());
        s[80..84].copy_from_slice(&self.entries.to_le_bytes());
        s[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
        s[88..92].copy_from_slice(&self.entries_crc.to_le_bytes());
        let crc = header_crc(&s, self.header_size);
        s[16..20].copy_from_slice(&crc.to_le_bytes());
        s
    }
}

/// CRC32 of the first `size` bytes with the CRC field taken as zero. `size` ≤ the sector.
pub fn header_crc(sector: &[u8], size: u32) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    let end = (size as usize).min(sector.len());
    hasher.update(&sector[..16]);
    hasher.update(&[0; 4]);
    hasher.update(&sector[20..end]);
    hasher.finalize()
}

/// A used entry (its type GUID is not all zeros).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Index in the array plus one: the kernel's partition number.
    pub number: u32,
    pub type_guid: Uuid,
    pub unique_guid: Uuid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

impl Entry {
    pub fn target(&self) -> Target {
        Target {
            number: self.number,
            start: self.first_lba,
            sectors: (self.last_lba - self.first_lba).saturating_add(1),
        }
    }
}

/// Checks the array's CRC and returns its used entries. `array` holds at least the header's
/// array bytes (whole sectors read from the disk).
pub fn parse_entries(header: &Header, array: &[u8]) -> Result<Vec<Entry>, TableError> {
    header.check_shape()?;
    let len = usize::try_from(header.array_bytes()).unwrap_or(usize::MAX);
    let Some(array) = array.get(..len) else {
        return Err(TableError::GptHeaderField {
            lba: header.my_lba,
            field: "entry array size",
            value: header.array_bytes(),
        });
    };
    let computed = crc32fast::hash(array);
    if computed != header.entries_crc {
        return Err(TableError::GptEntriesCrc {
            stored: header.entries_crc,
            computed,
        });
    }
    let mut used = Vec::new();
    for (raw, number) in array.chunks_exact(header.entry_size as usize).zip(1u32..) {
        let mut guid = [0; 16];
        guid.copy_from_slice(&raw[..16]);
        let type_guid = Uuid::from_bytes_le(guid);
        if type_guid.is_nil() {
            continue;
        }
        guid.copy_from_slice(&raw[16..32]);
        let (first_lba, last_lba) = (le64(raw, 32), le64(raw, 40));
        if first_lba > last_lba {
            return Err(TableError::GptEntryBackwards {
                number,
                first: first_lba,
                last: last_lba,
            });
        }
        let name: Vec<u16> = raw[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        used.push(Entry {
            number,
            type_guid,
            unique_guid: Uuid::from_bytes_le(guid),
            first_lba,
            last_lba,
            name: String::from_utf16_lossy(&name),
        });
    }
    Ok(used)
}

/// Everything to write for the new partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub target: Target,
    pub primary: Vec<u8>,
    pub primary_array_lba: u64,
    pub backup: Vec<u8>,
    pub backup_lba: u64,
    pub backup_array_lba: u64,
    /// The new entry array, written at both array LBAs.
    pub array: Vec<u8>,
}

/// Plans the config drive partition on a GPT disk of `disk_sectors`: the backup array and header
/// move to the disk's last sectors, the last usable LBA follows, and the new entry takes the first
/// free slot with the free space after the last partition.
pub fn add_partition(
    header: &Header,
    array: &[u8],
    entries: &[Entry],
    disk_sectors: u64,
    unique: Uuid,
) -> Result<Update, TableError> {
    header.check_shape()?;
    let array_sectors = header.array_sectors();
    let layout = disk_sectors.checked_sub(1).and_then(|backup_lba| {
        let backup_array_lba = backup_lba.checked_sub(array_sectors)?;
        let last_usable = backup_array_lba.checked_sub(1)?;
        Some((backup_lba, backup_array_lba, last_usable))
    });
    let Some((backup_lba, backup_array_lba, last_usable)) = layout else {
        return Err(TableError::NoSpace { free_sectors: 0 });
    };
    let primary_array_end = header.entries_lba.saturating_add(array_sectors);
    if primary_array_end > backup_array_lba {
        return Err(TableError::NoSpace { free_sectors: 0 });
    }
    for entry in entries {
        if entry.last_lba > last_usable {
            return Err(TableError::BeyondDisk {
                number: entry.number,
                start: entry.first_lba,
                end: entry.last_lba.saturating_add(1),
                disk_sectors,
            });
        }
    }
    let slot = (0..header.entries).find(|&i| entries.iter().all(|e| e.number != i + 1));
    let Some(slot) = slot else {
        return Err(TableError::GptSlotsFull(header.entries));
    };
    let free_start = entries
        .iter()
        .map(|e| e.last_lba + 1)
        .max()
        .unwrap_or(0)
        .max(header.first_usable)
        .max(primary_array_end);
    let (start, sectors) = place(free_start, last_usable + 1)?;

    let mut array = array
        .get(..usize::try_from(header.array_bytes()).unwrap_or(usize::MAX))
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    // The array is written in whole sectors; the slack after the entries is zero.
    array.resize(usize::try_from(array_sectors * SECTOR).unwrap_or(0), 0);
    let entry_size = header.entry_size as usize;
    let at = slot as usize * entry_size;
    array[at..at + entry_size].fill(0);
    array[at..at + 128].copy_from_slice(&encode_entry(
        BASIC_DATA,
        unique,
        start,
        start + sectors - 1,
    ));
    let entries_crc = crc32fast::hash(&array[..header.array_bytes() as usize]);

    let primary = Header {
        alternate_lba: backup_lba,
        last_usable,
        entries_crc,
        ..header.clone()
    };
    let backup = Header {
        my_lba: backup_lba,
        alternate_lba: header.my_lba,
        entries_lba: backup_array_lba,
        ..primary.clone()
    };
    Ok(Update {
        target: Target {
            number: slot + 1,
            start,
            sectors,
        },
        primary: primary.encode(),
        primary_array_lba: header.entries_lba,
        backup: backup.encode(),
        backup_lba,
        backup_array_lba,
        array,
    })
}

/// A 128-byte entry named [`PARTITION_NAME`] with no attributes.
pub fn encode_entry(type_guid: Uuid, unique: Uuid, first: u64, last: u64) -> [u8; 128] {
    let mut e = [0; 128];
    e[..16].copy_from_slice(&type_guid.to_bytes_le());
    e[16..32].copy_from_slice(&unique.to_bytes_le());
    e[32..40].copy_from_slice(&first.to_le_bytes());
    e[40..48].copy_from_slice(&last.to_le_bytes());
    for (i, unit) in PARTITION_NAME.encode_utf16().enumerate().take(36) {
        e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 2048;
    const LINUX: Uuid = Uuid::from_u128(0x0FC63DAF_8483_4772_8E79_3D69D8477DE4);

    /// A GPT as `sgdisk` writes it for an image of `image_sectors`: 128 entries at LBA 2, the
    /// backup at the image's end. Returns the header and the array.
    fn image_gpt(image_sectors: u64, parts: &[(u64, u64)]) -> (Header, Vec<u8>) {
        let mut array = vec![0u8; 128 * 128];
        for (i, &(first, last)) in parts.iter().enumerate() {
            let mut e = encode_entry(LINUX, Uuid::from_u128(i as u128 + 1), first, last);
            e[56..58].copy_from_slice(&(b'r' as u16).to_le_bytes());
            e[58..60].copy_from_slice(&0u16.to_le_bytes());
            array[i * 128..(i + 1) * 128].copy_from_slice(&e);
        }
        let mut s = vec![0u8; 512];
        s[..8].copy_from_slice(&SIGNATURE);
        s[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        s[56..72].copy_from_slice(&[7; 16]);
        let header = Header {
            raw: s,
            header_size: 92,
            my_lba: 1,
            alternate_lba: image_sectors - 1,
            first_usable: 34,
            last_usable: image_sectors - 34,
            entries_lba: 2,
            entries: 128,
            entry_size: 128,
            entries_crc: crc32fast::hash(&array),
        };
        let encoded = header.encode();
        (Header::parse(&encoded, 1).unwrap(), array)
    }

    #[test]
    fn header_crc_round_trips_and_catches_one_flipped_bit() {
        let (header, _) = image_gpt(1 << 21, &[(2048, 4095)]);
        let mut s = header.encode();
        assert_eq!(Header::parse(&s, 1).unwrap(), header);
        s[40] ^= 1;
        assert!(matches!(
            Header::parse(&s, 1),
            Err(TableError::GptHeaderCrc { .. })
        ));
        // Bytes past header_size are not covered.
        let mut s = header.encode();
        s[200] = 9;
        assert!(Header::parse(&s, 1).is_ok());
        assert!(matches!(
            Header::parse(&header.encode(), 2),
            Err(TableError::GptHeaderField {
                field: "own LBA",
                ..
            })
        ));
    }

    #[test]
    fn header_crc_is_the_spec_crc32() {
        // CRC-32 (IEEE) of "123456789" is 0xCBF43926; with bytes 16..20 zeroed that is what
        // header_crc hashes when they already are zero.
        let mut s = *b"0123456789abcdef\0\0\0\0rest";
        assert_eq!(header_crc(&s, s.len() as u32), crc32fast::hash(&s));
        s[16] = 0xff;
        s[17] = 0xff;
        assert_eq!(
            header_crc(&s, 25),
            crc32fast::hash(b"0123456789abcdef\0\0\0\0rest")
        );
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn basic_data_guid_has_the_on_disk_bytes_of_the_spec() {
        assert_eq!(
            BASIC_DATA.to_bytes_le(),
            [
                0xa2, 0xa0, 0xd0, 0xeb, 0xe5, 0xb9, 0x33, 0x44, 0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26,
                0x99, 0xc7
            ]
        );
    }

    #[test]
    fn entries_parse_with_numbers_names_and_crc() {
        let (header, array) = image_gpt(1 << 21, &[(2048, 4095), (4096, 1 << 20)]);
        let entries = parse_entries(&header, &array).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].number, 2);
        assert_eq!(entries[1].type_guid, LINUX);
        assert_eq!(entries[0].name, "r");
        assert_eq!(
            entries[0].target(),
            Target {
                number: 1,
                start: 2048,
                sectors: 2048
            }
        );
        let mut bad = array.clone();
        bad[300] ^= 0x80;
        assert!(matches!(
            parse_entries(&header, &bad),
            Err(TableError::GptEntriesCrc { .. })
        ));
        assert!(parse_entries(&header, &array[..100]).is_err());
    }

    #[test]
    fn the_backup_moves_to_the_end_and_the_entry_goes_last() {
        let image = 1u64 << 21; // 1 GiB image…
        let disk = 1u64 << 22; // …on a 2 GiB disk
        let (header, array) = image_gpt(image, &[(2048, 4095), (4096, image - 2048)]);
        let entries = parse_entries(&header, &array).unwrap();
        let unique = Uuid::from_u128(42);
        let u = add_partition(&header, &array, &entries, disk, unique).unwrap();
        assert_eq!(u.backup_lba, disk - 1);
        assert_eq!(u.backup_array_lba, disk - 33);
        assert_eq!(u.primary_array_lba, 2);
        // The backup's 33 sectors take part of the last MiB, so the partition ends 1 MiB early.
        assert_eq!(
            u.target,
            Target {
                number: 3,
                start: disk - 65 * MIB,
                sectors: 64 * MIB
            }
        );
        let primary = Header::parse(&u.primary, 1).unwrap();
        let backup = Header::parse(&u.backup, disk - 1).unwrap();
        assert_eq!(primary.last_usable, disk - 34);
        assert_eq!(primary.alternate_lba, disk - 1);
        assert_eq!(backup.alternate_lba, 1);
        assert_eq!(backup.entries_lba, disk - 33);
        assert_eq!(backup.last_usable, primary.last_usable);
        assert_eq!(backup.first_usable, 34);
        assert_eq!(u.primary[56..72], [7; 16], "the disk GUID is kept");
        assert_eq!(u.array.len(), 128 * 128);
        let after = parse_entries(&primary, &u.array).unwrap();
        assert_eq!(after[..2], entries[..]);
        let new = &after[2];
        assert_eq!(new.type_guid, BASIC_DATA);
        assert_eq!(new.unique_guid, unique);
        assert_eq!(new.name, "config-2");
        assert_eq!(new.target(), u.target);
        assert!(parse_entries(&backup, &u.array).is_ok());
    }

    #[test]
    fn a_hole_in_the_array_is_filled_first() {
        let (header, mut array) = image_gpt(1 << 21, &[(2048, 4095), (4096, 8191), (8192, 9000)]);
        array[128..256].fill(0);
        let header = Header {
            entries_crc: crc32fast::hash(&array),
            ..header
        };
        let entries = parse_entries(&header, &array).unwrap();
        let u = add_partition(&header, &array, &entries, 1 << 22, Uuid::from_u128(1)).unwrap();
        assert_eq!(u.target.number, 2);
        assert!(u.target.start > 9000, "still after the last partition");
    }

    #[test]
    fn refusals() {
        let (header, array) = image_gpt(1 << 22, &[(2048, (1 << 22) - 34)]);
        let entries = parse_entries(&header, &array).unwrap();
        assert!(matches!(
            add_partition(&header, &array, &entries, 1 << 22, Uuid::nil()),
            Err(TableError::NoSpace { free_sectors: 0 })
        ));
        // The image's table is larger than this disk.
        assert!(matches!(
            add_partition(&header, &array, &entries, 1 << 21, Uuid::nil()),
            Err(TableError::BeyondDisk { number: 1, .. })
        ));
        let full: Vec<(u64, u64)> = (0..128).map(|i| (2048 + i, 2048 + i)).collect();
        let (header, array) = image_gpt(1 << 21, &full);
        let entries = parse_entries(&header, &array).unwrap();
        assert_eq!(
            add_partition(&header, &array, &entries, 1 << 22, Uuid::nil()),
            Err(TableError::GptSlotsFull(128))
        );
        assert!(add_partition(&header, &array, &entries, 0, Uuid::nil()).is_err());
    }

    proptest! {
        #[test]
        fn random_headers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), lba in 0u64..4) {
            let mut bytes = bytes;
            if bytes.len() >= 8 { bytes[..8].copy_from_slice(&SIGNATURE); }
            let _ = Header::parse(&bytes, lba);
        }

        /// Headers with valid CRCs and arbitrary fields: the checks behind the CRC must hold too.
        #[test]
        fn valid_crc_arbitrary_fields_never_panic(
            header_size in prop_oneof![4 => Just(92u32), 1 => any::<u32>()],
            first in prop_oneof![4 => Just(34u64), 1 => any::<u64>()],
            last in prop_oneof![4 => Just((1u64 << 21) - 34), 1 => any::<u64>()],
            entries_lba in prop_oneof![4 => Just(2u64), 1 => any::<u64>()],
            entries in prop_oneof![4 => Just(128u32), 1 => 0u32..300, 1 => any::<u32>()],
            entry_size in prop_oneof![4 => Just(128u32), 1 => Just(256u32), 1 => any::<u32>()],
            disk in prop_oneof![4 => Just(1u64 << 22), 1 => any::<u64>()],
            parts in proptest::collection::vec(
                prop_oneof![(0u64..(1 << 22), 0u64..(1 << 22)), (any::<u64>(), any::<u64>())], 0..4),
        ) {
            let (base, _) = image_gpt(1 << 21, &[]);
            let len = u64::from(entries) * u64::from(entry_size);
            let mut array = vec![0u8; if len > 1 << 21 { 0 } else { len as usize }];
            if entry_size >= 128 {
                for (i, &(a, b)) in parts.iter().enumerate() {
                    let at = i * entry_size as usize;
                    if let Some(slot) = array.get_mut(at..at + 128) {
                        slot.copy_from_slice(&encode_entry(LINUX, Uuid::nil(), a, b));
                    }
                }
            }
            let h = Header {
                header_size, first_usable: first, last_usable: last, entries_lba, entries,
                entry_size, entries_crc: crc32fast::hash(&array), ..base
            };
            if let Ok(h) = Header::parse(&h.encode(), 1) {
                let _ = h.check_array_fits(disk);
                if let Ok(entries) = parse_entries(&h, &array) {
                    let _ = entries.iter().map(Entry::target).count();
                    if let Ok(u) = add_partition(&h, &array, &entries, disk, Uuid::from_u128(5)) {
                        prop_assert!(u.target.start + u.target.sectors <= u.backup_array_lba);
                        prop_assert!(u.target.start >= h.first_usable);
                        for e in &entries {
                            prop_assert!(u.target.start > e.last_lba);
                        }
                        prop_assert!(Header::parse(&u.backup, u.backup_lba).is_ok());
                        let primary = Header::parse(&u.primary, 1).unwrap();
                        prop_assert_eq!(parse_entries(&primary, &u.array).unwrap().len(), entries.len() + 1);
                    }
                }
            }
        }

        #[test]
        fn random_arrays_never_panic(array in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let (base, _) = image_gpt(1 << 21, &[]);
            let h = Header { entries: 16, entries_crc: crc32fast::hash(&array), ..base };
            if let Ok(entries) = parse_entries(&h, &array) {
                let _ = add_partition(&h, &array, &entries, 1 << 22, Uuid::nil());
            }
        }
    }
}
