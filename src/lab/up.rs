//! `kiln lab up`: checks (name, size, tools, images, no lab there yet), then the namespace, the
//! disks, the generated files and the two detached services, torn down again if any step fails.

use super::plan::{self, LabVm};
use super::{
    DAEMON, LabError, PASSWORD_FILE, RACK, READY_LIMIT, RECORD, Record, SSH_KEY, Service, VBMC,
    VBMC_CONFIG, absolute, down, host, host_error, io, is_empty_dir, read_record,
};
use serde::Serialize;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub struct UpOptions {
    pub name: String,
    pub dir: PathBuf,
    pub nodes: u32,
    /// How many of the last nodes boot UEFI; default half.
    pub uefi: Option<u32>,
    pub memory_mb: u32,
    pub disk_gb: u32,
    pub files_root: PathBuf,
    /// The OS image the nodes get (a catalog name under FILES_ROOT/images): `debian-12`, or one
    /// built with container images preloaded (`kiln image build os --name N --preload DIR`).
    /// The simulator always uses its own small `debian-12`.
    pub image: String,
    /// Run `kiln image build ramdisk` and `kiln image build os` first.
    pub build_images: bool,
    /// The kiln binary the lab runs (`serve`, `vbmc`, `sim`, `image build`).
    pub kiln: PathBuf,
    /// Simulated servers (`kiln sim`) instead of QEMU VMs: no images needed, up to 10,000 nodes.
    pub sim: bool,
    /// The simulator's timing preset (`fast` or `realistic`).
    pub sim_timing: String,
}

/// A lab that `up` built and left running.
#[derive(Clone, Debug, Serialize)]
pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
    pub vms: Vec<LabVm>,
    pub daemon_pid: u32,
    pub vbmc_pid: u32,
    pub data_dir: PathBuf,
    pub rack: PathBuf,
    pub ssh_key: Option<PathBuf>,
    pub api_url: String,
    pub redfish_url: String,
    pub bmc_password_file: PathBuf,
}

/// Files the lab's daemon serves, and the `kiln image build` target that makes each.
fn missing_images(files_root: &Path, image: &str) -> Vec<(&'static str, PathBuf)> {
    let image = format!("images/{image}.raw.zst");
    [
        ("ramdisk", "deploy/vmlinuz"),
        ("ramdisk", "deploy/initramfs.gz"),
        ("os", image.as_str()),
    ]
    .into_iter()
    .map(|(target, file)| (target, files_root.join(file)))
    .filter(|(_, path)| !path.exists())
    .collect()
}

fn check_tools(vms: &[LabVm]) -> Result<(), LabError> {
    for (program, package) in [
        ("ip", "iproute2"),
        ("qemu-system-x86_64", "qemu-system-x86"),
    ] {
        if host::on_path(program).is_none() {
            return Err(LabError::MissingTool { program, package });
        }
    }
    if vms.iter().any(|vm| vm.uefi) && !Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd").exists() {
        return Err(LabError::MissingTool {
            program: "/usr/share/OVMF/OVMF_CODE_4M.fd",
            package: "ovmf",
        });
    }
    Ok(())
}

/// Builds the lab and leaves it running. Refuses an existing lab; anything that fails after the
/// lab directory is claimed is torn down again (the error carries the log tail).
pub fn up(options: &UpOptions, progress: &mut dyn FnMut(&str)) -> Result<Lab, LabError> {
    plan::check_name(&options.name)?;
    let vms = if options.sim {
        super::sim::vms(options.nodes)?
    } else {
        plan::vms(options.nodes, options.uefi)?
    };
    let dir = absolute(&options.dir)?;
    if let Some(record) = read_record(&dir)? {
        return Err(LabError::Exists {
            name: record.name,
            dir: dir.display().to_string(),
        });
    }
    if host::namespace_exists(&options.name) {
        return Err(LabError::NamespaceExists {
            name: options.name.clone(),
        });
    }
    if dir.exists() && !is_empty_dir(&dir) {
        return Err(LabError::NotALab {
            dir: dir.display().to_string(),
        });
    }
    let files_root = if options.sim {
        // The simulator's own small image and placeholder boot files, never the shared cache.
        dir.join("files")
    } else {
        check_tools(&vms)?;
        absolute(&options.files_root)?
    };
    if options.sim && host::on_path("ip").is_none() {
        return Err(LabError::MissingTool {
            program: "ip",
            package: "iproute2",
        });
    }
    if options.build_images && !options.sim {
        for target in ["ramdisk", "os"] {
            progress(&format!("building images: kiln image build {target}"));
            build_image(&options.kiln, target, &files_root)?;
        }
    }
    let missing = if options.sim {
        Vec::new()
    } else {
        missing_images(&files_root, &options.image)
    };
    if !missing.is_empty() {
        let mut targets: Vec<&str> = missing.iter().map(|(target, _)| *target).collect();
        targets.dedup();
        return Err(LabError::MissingImages {
            files_root: files_root.display().to_string(),
            missing: missing
                .iter()
                .map(|(_, path)| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            commands: targets
                .iter()
                .map(|t| {
                    let variant = if *t == "os" && options.image != plan::IMAGE {
                        format!(" --name {} --preload ARCHIVE_DIR", options.image)
                    } else {
                        String::new()
                    };
                    format!(
                        "  kiln image build {t}{variant} --files-root {}\n",
                        files_root.display()
                    )
                })
                .collect(),
        });
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io("create", &dir))?;
    let record = Record {
        name: options.name.clone(),
        nodes: options.nodes,
        uefi: vms.iter().filter(|vm| vm.uefi).count() as u32,
        memory_mb: options.memory_mb,
        disk_gb: options.disk_gb,
        files_root,
        sim: options.sim,
    };
    let text = serde_json::to_string_pretty(&record).unwrap_or_default();
    write_file(&dir.join(RECORD), &text, 0o644)?;
    let built = if options.sim {
        super::sim::build(options, &record, &dir, progress)
    } else {
        build(options, &record, &dir, vms, progress)
    };
    match built {
        Ok(lab) => Ok(lab),
        Err(err) => {
            progress("start-up failed; removing the half-built lab");
            let _ = down(Some(&options.name), &dir);
            Err(err)
        }
    }
}

fn build(
    options: &UpOptions,
    record: &Record,
    dir: &Path,
    vms: Vec<LabVm>,
    progress: &mut dyn FnMut(&str),
) -> Result<Lab, LabError> {
    let name = &record.name;
    let image = if options.sim {
        plan::IMAGE // the simulator serves its own small image under that name
    } else {
        options.image.as_str()
    };
    progress(&format!(
        "namespace {name}: bridge {} {}/{}, {} taps",
        plan::BRIDGE,
        plan::BRIDGE_ADDRESS,
        plan::PREFIX,
        vms.len()
    ));
    let taps: Vec<&str> = vms.iter().map(|vm| vm.tap.as_str()).collect();
    let bridge_address = format!("{}/{}", plan::BRIDGE_ADDRESS, plan::PREFIX);
    host::build_network(name, plan::BRIDGE, &bridge_address, &taps)
        .map_err(host_error(format!("build network namespace {name}")))?;

    for vm in &vms {
        let path = plan::disk_path(dir, vm);
        let file = std::fs::File::create_new(&path).map_err(io("create", &path))?;
        file.set_len(u64::from(record.disk_gb) << 30)
            .map_err(io("size", &path))?;
    }
    let password = random_password();
    write_file(&dir.join(PASSWORD_FILE), &format!("{password}\n"), 0o600)?;
    let config = plan::vbmc_config(dir, &vms, &password, record.memory_mb);
    write_file(&dir.join(VBMC_CONFIG), &config, 0o600)?;
    let ssh_key = ssh_key(dir, name)?;
    let public = match &ssh_key {
        Some(key) => {
            let path = key.with_extension("pub");
            Some(std::fs::read_to_string(&path).map_err(io("read", &path))?)
        }
        None => None,
    };
    let rack = dir.join(RACK);
    write_file(
        &rack,
        &plan::rack_inventory(&vms, image, &password, public.as_deref()),
        0o600,
    )?;
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).map_err(io("create", &data_dir))?;

    progress("starting kiln vbmc (Redfish on 127.0.0.1:8000 in the namespace)");
    let config = dir.join(VBMC_CONFIG);
    let vbmc_pid = start(
        name,
        dir,
        &options.kiln,
        &VBMC,
        &[
            OsStr::new("vbmc"),
            OsStr::new("--config"),
            config.as_os_str(),
        ],
    )?;
    progress("starting the Kiln daemon (API 127.0.0.1:6385, boot services on br0)");
    let daemon_pid = start(
        name,
        dir,
        &options.kiln,
        &DAEMON,
        &[
            OsStr::new("--data-dir"),
            data_dir.as_os_str(),
            OsStr::new("serve"),
            OsStr::new("--listen"),
            OsStr::new(plan::API_LISTEN),
            OsStr::new("--boot-interface"),
            OsStr::new(plan::BRIDGE),
            OsStr::new("--files-root"),
            record.files_root.as_os_str(),
        ],
    )?;
    Ok(Lab {
        name: name.clone(),
        dir: dir.to_path_buf(),
        vms,
        daemon_pid,
        vbmc_pid,
        data_dir,
        rack,
        ssh_key,
        api_url: format!("http://{}", plan::API_LISTEN),
        redfish_url: format!("http://{}", plan::REDFISH_LISTEN),
        bmc_password_file: dir.join(PASSWORD_FILE),
    })
}

/// Starts one service detached in the namespace, records its PID and waits until it serves.
pub(super) fn start(
    ns: &str,
    dir: &Path,
    kiln: &Path,
    service: &Service,
    args: &[&OsStr],
) -> Result<u32, LabError> {
    let log = dir.join(service.log);
    let mut child = host::spawn_detached(ns, kiln, args, &log)
        .map_err(host_error(format!("start {}", service.what)))?;
    let pid = child.id();
    write_file(&dir.join(service.pid), &format!("{pid}\n"), 0o644)?;
    host::wait_for_log(&mut child, &log, service.ready, READY_LIMIT).map_err(|reason| {
        LabError::NotReady {
            what: service.what,
            reason,
            log: log.display().to_string(),
            tail: host::tail(&log, 20),
        }
    })?;
    Ok(pid)
}

fn build_image(kiln: &Path, target: &'static str, files_root: &Path) -> Result<(), LabError> {
    // The recipes print their progress; keep this command's stdout for its own result.
    let stderr = std::io::stderr();
    let out = std::os::fd::AsFd::as_fd(&stderr)
        .try_clone_to_owned()
        .map_err(io("duplicate", Path::new("stderr")))?;
    let status = std::process::Command::new(kiln)
        .args(["image", "build", target, "--files-root"])
        .arg(files_root)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .status()
        .map_err(io("run", kiln))?;
    if status.success() {
        Ok(())
    } else {
        Err(LabError::ImageBuild {
            target,
            status: status.to_string(),
        })
    }
}

pub(super) fn random_password() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// An ed25519 key pair for the nodes' root account, if `ssh-keygen` is installed.
fn ssh_key(dir: &Path, name: &str) -> Result<Option<PathBuf>, LabError> {
    if host::on_path("ssh-keygen").is_none() {
        return Ok(None);
    }
    let key = dir.join(SSH_KEY);
    let key_dir = dir.join("ssh");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&key_dir)
        .map_err(io("create", &key_dir))?;
    let path = key.to_string_lossy();
    let comment = format!("kiln-lab@{name}");
    host::run(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-C", &comment, "-f", &path],
    )
    .map_err(host_error("generate the lab's SSH key"))?;
    Ok(Some(key))
}

pub(super) fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), LabError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io("create", path))?;
    file.write_all(text.as_bytes()).map_err(io("write", path))
}
