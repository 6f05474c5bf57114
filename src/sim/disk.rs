//! A simulated server's hardware as the real agent sees it, and its disk as its OS sees it:
//! a small sysfs/procfs tree per server (CPU, memory, one disk, one NIC), a sparse file as the
//! disk (only blocks the agent writes take space), the simulator's own small OS image for the
//! catalog, and the first boot's reading of the config drive the agent wrote.

use super::docker_api::TlsIdentity;
use super::plan::{IMAGE, SimNode};
use crate::agent::configdrive::{fat, mbr};
use crate::agent::inventory::Roots;
use crate::images::ImageRecord;
use sha2::Digest;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The disk the simulated server reports: 480 GB, as a typical boot SSD.
const DISK_SECTORS: u64 = 480_000_000_000 / 512;
/// The simulator's OS image: 64 MiB raw, an MBR with one 16 MiB partition holding 4 MiB of data,
/// and the rest free for the config drive.
const IMAGE_BYTES: u64 = 64 << 20;
const PARTITION_START: u32 = 2048;
const PARTITION_SECTORS: u32 = 32768;
const DATA_BYTES: usize = 4 << 20;

fn write(path: &Path, contents: impl AsRef<[u8]>) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, contents)
}

/// Writes the server's hardware tree under `dir` and returns where the agent reads it.
pub fn write_hardware(dir: &Path, node: &SimNode) -> io::Result<Roots> {
    let roots = Roots {
        proc: dir.join("proc"),
        sys_block: dir.join("sys/block"),
        sys_net: dir.join("sys/class/net"),
    };
    let cpuinfo: String = (0..8)
        .map(|i| format!("processor\t: {i}\nmodel name\t: Kiln simulated CPU @ 2.10GHz\n\n"))
        .collect();
    write(&roots.proc.join("cpuinfo"), cpuinfo)?;
    write(&roots.proc.join("meminfo"), "MemTotal:       32768000 kB\n")?;
    let disk = roots.sys_block.join("sda");
    write(&disk.join("size"), format!("{DISK_SECTORS}\n"))?;
    write(&disk.join("removable"), "0\n")?;
    write(&disk.join("queue/rotational"), "0\n")?;
    write(&disk.join("device/model"), "KILN SIM SSD\n")?;
    write(
        &disk.join("device/serial"),
        format!("SIM{:06}\n", node.index + 1),
    )?;
    let nic = roots.sys_net.join("eth0");
    write(&nic.join("address"), format!("{}\n", node.mac))?;
    write(&nic.join("carrier"), "1\n")?;
    write(&nic.join("operstate"), "up\n")?;
    fs::create_dir_all(nic.join("device"))?;
    Ok(roots)
}

/// Deterministic incompressible bytes (xorshift64), so the image is the same on every run.
fn filler(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The raw OS image (pure; tested).
pub fn os_image() -> Vec<u8> {
    let mut raw = vec![0u8; IMAGE_BYTES as usize];
    let entry = mbr::encode_entry(0x83, PARTITION_START, PARTITION_SECTORS);
    raw[446..446 + entry.len()].copy_from_slice(&entry);
    raw[510] = 0x55;
    raw[511] = 0xaa;
    let data_at = (PARTITION_START as usize) * 512;
    raw[data_at..data_at + DATA_BYTES].copy_from_slice(&filler(DATA_BYTES));
    raw
}

/// Makes `files_root` serve the simulator: a placeholder deploy kernel and ramdisk (the
/// simulated servers fetch them but run the agent in-process) where none exist, and the
/// `sim-os` image in the catalog. Returns the image's record.
pub fn prepare_files_root(files_root: &Path) -> io::Result<ImageRecord> {
    for (name, size) in [
        ("deploy/vmlinuz", 8 << 20),
        ("deploy/initramfs.gz", 12 << 20),
    ] {
        let path = files_root.join(name);
        if !path.exists() {
            write(&path, filler(size))?;
        }
    }
    let images = files_root.join("images");
    fs::create_dir_all(&images)?;
    let raw = os_image();
    let compressed = zstd::encode_all(raw.as_slice(), 3)?;
    let record = ImageRecord {
        name: IMAGE.to_string(),
        format: "raw+zstd".to_string(),
        raw_size: raw.len() as u64,
        size: compressed.len() as u64,
        sha256: hex(&sha2::Sha256::digest(&compressed)),
        built_at: None,
        ready_ports: vec![2376],
    };
    let file = images.join(record.file_name());
    let temp = images.join(format!(".{}.tmp", record.file_name()));
    fs::write(&temp, &compressed)?;
    fs::rename(&temp, &file)?;
    let json = serde_json::to_string_pretty(&record).map_err(io::Error::other)?;
    write(&images.join(format!("{IMAGE}.json")), json)?;
    Ok(record)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the OS on a simulated disk configures at boot, from its config drive.
#[derive(Clone, Debug)]
pub struct OsConfig {
    pub hostname: String,
    pub address: Option<(Ipv4Addr, u8)>,
    pub tls: Option<TlsIdentity>,
    /// Identifies this deploy (the server certificate is fresh on every one): a new value means
    /// the disk was re-imaged and the engine starts empty.
    pub generation: String,
}

const DRIVE_FILES: [&str; 5] = [
    "kiln/hostname",
    "kiln/network/10-kiln.network",
    "kiln/docker/ca.pem",
    "kiln/docker/server-cert.pem",
    "kiln/docker/server-key.pem",
];

/// Reads the config drive from the disk, as `kiln-firstboot` does; `None`: nothing bootable
/// (no partition table or no config drive: a blank or wiped disk).
pub fn read_os(disk: &Path) -> io::Result<Option<OsConfig>> {
    let file = match fs::File::open(disk) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut sector0 = [0u8; 512];
    if std::os::unix::fs::FileExt::read_exact_at(&file, &mut sector0, 0).is_err() {
        return Ok(None);
    }
    let Ok(table) = mbr::Mbr::parse(&sector0) else {
        return Ok(None);
    };
    for part in table.data_partitions() {
        let found =
            fat::read_config_drive(&file, part.start * 512, part.sectors * 512, &DRIVE_FILES)?;
        let Some(files) = found else { continue };
        let text = |i: usize| {
            files[i]
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).to_string())
        };
        let hostname = text(0).unwrap_or_default().trim().to_string();
        let address = text(1).and_then(|n| network_address(&n));
        let tls = match (text(2), text(3), text(4)) {
            (Some(ca_pem), Some(cert_pem), Some(key_pem)) => Some(TlsIdentity {
                cert_pem,
                key_pem,
                ca_pem,
            }),
            _ => None,
        };
        let generation = hex(&sha2::Sha256::digest(text(3).unwrap_or_default()))[..16].to_string();
        return Ok(Some(OsConfig {
            hostname,
            address,
            tls,
            generation,
        }));
    }
    Ok(None)
}

/// `Address=A/P` of a systemd-networkd file.
pub fn network_address(networkd: &str) -> Option<(Ipv4Addr, u8)> {
    networkd.lines().find_map(|line| {
        let value = line.trim().strip_prefix("Address=")?;
        let (address, prefix) = value.split_once('/')?;
        Some((address.parse().ok()?, prefix.parse().ok()?))
    })
}

/// The per-server files under the simulator's state directory.
pub fn node_dir(state_dir: &Path, node: &SimNode) -> PathBuf {
    state_dir.join(&node.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::configdrive::{ConfigDriveFile, write_config_drive};

    #[test]
    fn the_image_has_a_table_data_and_room_for_a_config_drive() {
        let raw = os_image();
        let table = mbr::Mbr::parse(&raw[..512]).unwrap();
        let parts: Vec<_> = table.data_partitions().collect();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].start, 2048);
        assert!(raw[(2048 * 512)..(2048 * 512 + 64)].iter().any(|b| *b != 0));
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        fs::write(&disk, &raw).unwrap();
        assert!(read_os(&disk).unwrap().is_none(), "no config drive yet");
        let file = |path: &str, text: &str| ConfigDriveFile {
            path: path.into(),
            contents: text.as_bytes().to_vec(),
        };
        write_config_drive(
            &disk,
            &[
                file("kiln/hostname", "sim-007\n"),
                file(
                    "kiln/network/10-kiln.network",
                    "[Match]\n\n[Network]\nAddress=10.66.1.7/16\n",
                ),
                file("kiln/docker/ca.pem", "CA"),
                file("kiln/docker/server-cert.pem", "CERT"),
                file("kiln/docker/server-key.pem", "KEY"),
            ],
        )
        .unwrap();
        let os = read_os(&disk).unwrap().expect("config drive found");
        assert_eq!(os.hostname, "sim-007");
        assert_eq!(os.address, Some((Ipv4Addr::new(10, 66, 1, 7), 16)));
        let tls = os.tls.unwrap();
        assert_eq!(
            (
                tls.ca_pem.as_str(),
                tls.cert_pem.as_str(),
                tls.key_pem.as_str()
            ),
            ("CA", "CERT", "KEY")
        );
        // A wiped disk boots nothing.
        fs::write(&disk, vec![0u8; 4096]).unwrap();
        assert!(read_os(&disk).unwrap().is_none());
        assert!(read_os(&dir.path().join("absent")).unwrap().is_none());
    }

    #[test]
    fn the_prepared_catalog_entry_matches_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let record = prepare_files_root(dir.path()).unwrap();
        let stored = fs::read(dir.path().join("images/sim-os.raw.zst")).unwrap();
        assert_eq!(record.size, stored.len() as u64);
        assert_eq!(record.sha256, hex(&sha2::Sha256::digest(&stored)));
        assert_eq!(zstd::decode_all(stored.as_slice()).unwrap(), os_image());
        assert!(dir.path().join("deploy/vmlinuz").exists());
        let listed = crate::images::list(&dir.path().join("images")).unwrap();
        assert_eq!(listed[0].name, "sim-os");
    }

    #[test]
    fn the_agent_reads_the_simulated_hardware() {
        let dir = tempfile::tempdir().unwrap();
        let layout_node = SimNode {
            index: 6,
            name: "sim-007".into(),
            mac: "52:54:00:5e:00:06".into(),
            address: Ipv4Addr::new(10, 66, 1, 7),
            uefi: false,
            bmc: super::super::plan::SimBmc::Redfish,
            roles: vec!["compute"],
        };
        let roots = write_hardware(dir.path(), &layout_node).unwrap();
        let found = crate::agent::inventory::gather(&roots).unwrap();
        assert_eq!(found.cpus, 8);
        assert_eq!(found.memory_bytes, 32_768_000 * 1024);
        assert_eq!(found.disks.len(), 1);
        assert_eq!(found.disks[0].size_bytes, DISK_SECTORS * 512);
        assert_eq!(found.nics[0].mac.unwrap().to_string(), "52:54:00:5e:00:06");
        assert!(found.nics[0].physical);
    }
}
