//! The hardware a ramdisk sees (CPU, RAM, disks, NICs), gathered for in-band inspection.

use super::disks::{self, Disk, DiskError};
use crate::model::MacAddress;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What the agent reports about its machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardwareInventory {
    /// Logical CPUs (hyper-threads count).
    pub cpus: u32,
    pub cpu_model: Option<String>,
    /// The agent binary's architecture, e.g. `x86_64`, `aarch64`.
    pub cpu_arch: String,
    pub memory_bytes: u64,
    pub disks: Vec<Disk>,
    pub nics: Vec<NicInfo>,
}

/// One network interface from `/sys/class/net`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicInfo {
    pub name: String,
    /// `None` for interfaces whose hardware address is not Ethernet (tunnels, InfiniBand).
    pub mac: Option<MacAddress>,
    /// `None` when the kernel cannot say (the interface is administratively down).
    pub carrier: Option<bool>,
    pub operstate: Option<String>,
    /// Backed by a device (PCI, virtio, USB) rather than virtual (bridge, veth, ifb).
    pub physical: bool,
}

/// Where each source is read from; [`Roots::default`] is the real machine, tests point at temp dirs.
#[derive(Clone, Debug)]
pub struct Roots {
    pub proc: PathBuf,
    pub sys_block: PathBuf,
    pub sys_net: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            proc: PathBuf::from("/proc"),
            sys_block: PathBuf::from(disks::SYS_BLOCK),
            sys_net: PathBuf::from("/sys/class/net"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} has no MemTotal line")]
    NoMemTotal { path: PathBuf },
    #[error("cannot list disks")]
    Disks(#[source] DiskError),
}

/// Reads the whole inventory. CPUs fall back to the scheduler's count when `/proc/cpuinfo` has no
/// `processor` lines (its format differs between architectures).
pub fn gather(roots: &Roots) -> Result<HardwareInventory, InventoryError> {
    let read = |path: PathBuf| {
        fs::read_to_string(&path).map_err(|source| InventoryError::Read { path, source })
    };
    let (mut cpus, cpu_model) = parse_cpuinfo(&read(roots.proc.join("cpuinfo"))?);
    if cpus == 0 {
        cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    }
    let meminfo = roots.proc.join("meminfo");
    let memory_bytes = parse_meminfo(&read(meminfo.clone())?)
        .ok_or(InventoryError::NoMemTotal { path: meminfo })?;
    Ok(HardwareInventory {
        cpus,
        cpu_model,
        cpu_arch: std::env::consts::ARCH.to_string(),
        memory_bytes,
        disks: disks::read_disks(&roots.sys_block).map_err(InventoryError::Disks)?,
        nics: read_nics(&roots.sys_net)?,
    })
}

/// Number of `processor` entries and the first model name (`model name` on x86, `Model` on some ARM boards).
pub fn parse_cpuinfo(text: &str) -> (u32, Option<String>) {
    let mut count = 0u32;
    let mut model = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => count = count.saturating_add(1),
            "model name" | "Model" | "cpu model" if model.is_none() && !value.is_empty() => {
                model = Some(value.to_string());
            }
            _ => {}
        }
    }
    (count, model)
}

/// `MemTotal` in bytes (the file says kB and means KiB).
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// Every interface under `root` (normally `/sys/class/net`) except loopback, sorted by name.
pub fn read_nics(root: &Path) -> Result<Vec<NicInfo>, InventoryError> {
    let read_err = |source| InventoryError::Read {
        path: root.to_path_buf(),
        source,
    };
    let mut nics = Vec::new();
    for entry in fs::read_dir(root).map_err(read_err)? {
        let name = entry
            .map_err(read_err)?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name == "lo" {
            continue;
        }
        let dir = root.join(&name);
        let attr = |file: &str| {
            let text = fs::read_to_string(dir.join(file)).ok()?;
            let text = text.trim();
            (!text.is_empty()).then(|| text.to_string())
        };
        nics.push(NicInfo {
            mac: attr("address").and_then(|a| a.parse().ok()),
            // Reading `carrier` fails with EINVAL while the interface is down: unknown, not "no".
            carrier: attr("carrier").map(|c| c == "1"),
            operstate: attr("operstate"),
            physical: dir.join("device").exists(),
            name,
        });
    }
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, contents: &str) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(path, contents).expect("write");
    }

    #[test]
    fn cpuinfo_table() {
        let x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 167\nmodel name\t: Intel(R) Xeon(R) Processor\n\n\
                   processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\n";
        let arm64 =
            "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n\nprocessor\t: 1\n";
        let rpi = "processor\t: 0\nprocessor\t: 1\nprocessor\t: 2\nprocessor\t: 3\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n";
        let cases = [
            (x86, (2, Some("Intel(R) Xeon(R) Processor"))),
            (arm64, (2, None)),
            (rpi, (4, Some("Raspberry Pi 4 Model B Rev 1.4"))),
            ("", (0, None)),
            ("garbage\n:::\nmodel name:\n", (0, None)),
        ];
        for (text, (count, model)) in cases {
            assert_eq!(
                parse_cpuinfo(text),
                (count, model.map(str::to_string)),
                "{text:?}"
            );
        }
    }

    #[test]
    fn meminfo_table() {
        let cases = [
            (
                "MemTotal:       16318412 kB\nMemFree: 1 kB\n",
                Some(16_318_412 * 1024),
            ),
            ("MemFree: 1 kB\nMemTotal: 2048 kB\n", Some(2048 * 1024)),
            ("MemTotal: 4096\n", Some(4096)),
            ("MemTotal: lots kB\n", None),
            ("MemTotal: 1 MB\n", None),
            ("MemTotal: 18446744073709551615 kB\n", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_meminfo(text), want, "{text:?}");
        }
    }

    #[test]
    fn gathers_from_fake_trees() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(
            &root.join("proc/cpuinfo"),
            "processor : 0\nmodel name : Fake CPU\n",
        );
        write(&root.join("proc/meminfo"), "MemTotal: 1024 kB\n");
        write(&root.join("block/vda/size"), "2097152\n");
        write(&root.join("net/lo/address"), "00:00:00:00:00:00\n");
        write(&root.join("net/eth0/address"), "52:54:00:12:34:56\n");
        write(&root.join("net/eth0/carrier"), "1\n");
        write(&root.join("net/eth0/operstate"), "up\n");
        write(&root.join("net/eth0/device/vendor"), "0x1af4\n");
        write(&root.join("net/ifb0/address"), "6a:0e:5d:2b:3c:4d\n");
        write(&root.join("net/ifb0/operstate"), "down\n");
        write(&root.join("net/tun0/address"), "\n");
        let roots = Roots {
            proc: root.join("proc"),
            sys_block: root.join("block"),
            sys_net: root.join("net"),
        };
        let inv = gather(&roots).expect("gather");
        assert_eq!((inv.cpus, inv.cpu_model.as_deref()), (1, Some("Fake CPU")));
        assert_eq!(inv.memory_bytes, 1024 * 1024);
        assert_eq!(inv.disks.len(), 1);
        assert_eq!(inv.disks[0].size_bytes, 1 << 30);
        let nics: Vec<String> = inv
            .nics
            .iter()
            .map(|n| {
                let mac = n.mac.map(|m| m.to_string()).unwrap_or_default();
                let (carrier, state) = (n.carrier, n.operstate.as_deref().unwrap_or("-"));
                format!("{} {mac} {carrier:?} {state} {}", n.name, n.physical)
            })
            .collect();
        assert_eq!(
            nics,
            [
                "eth0 52:54:00:12:34:56 Some(true) up true",
                "ifb0 6a:0e:5d:2b:3c:4d None down false",
                "tun0  None - false",
            ]
        );
        let json = serde_json::to_value(&inv).expect("json");
        assert_eq!(json["nics"][0]["mac"], "52:54:00:12:34:56");

        fs::remove_file(root.join("proc/meminfo")).expect("rm");
        let e = gather(&roots)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("proc/meminfo"), "{e}");
        write(&root.join("proc/meminfo"), "MemFree: 1 kB\n");
        let e = gather(&roots)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no MemTotal"), "{e}");
    }
}
