//! `kiln lab up|status|down`: flags and printing; building, asking and removing the lab is
//! `crate::lab`'s work.

use crate::lab::{self, DownReport, Lab, Status, UpOptions};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Build the lab and start its vbmc and daemon; they keep running after this command.
    /// Writes DIR/rack.yaml, the inventory to enroll.
    Up {
        #[command(flatten)]
        place: Place,
        /// Number of VMs (rack-01, rack-02, …).
        #[arg(long, default_value_t = 2)]
        nodes: u32,
        /// How many of the last VMs boot UEFI (default: half the nodes, rounded down).
        #[arg(long)]
        uefi: Option<u32>,
        /// Memory of each VM.
        #[arg(long, default_value_t = 1536, value_parser = clap::value_parser!(u32).range(256..=65536))]
        memory_mb: u32,
        /// Size of each VM's sparse disk.
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1024))]
        disk_gb: u32,
        /// Where the deploy ramdisk and the Debian image are (`kiln image build --files-root`).
        #[arg(long, env = "KILN_FILES_ROOT", default_value = lab::DEFAULT_FILES_ROOT)]
        files_root: PathBuf,
        /// The nodes' OS image, a catalog name in FILES_ROOT/images: `debian-12`, or one built
        /// with the services' container images preloaded (`kiln image build os --name
        /// debian-12-kolla --preload DIR`), which spares each node unpacking them.
        #[arg(long, default_value = lab::plan::IMAGE)]
        image: String,
        /// Run `kiln image build ramdisk` and `kiln image build os` first (cached; ~3 min the
        /// first time).
        #[arg(long)]
        build_images: bool,
        /// Simulated servers (`kiln sim`: Redfish/IPMI BMCs, real DHCP/TFTP/HTTP boot, Kiln's
        /// agent on simulated disks, simulated Docker Engines) instead of QEMU VMs; --nodes up
        /// to 10000, no images needed.
        #[arg(long)]
        sim: bool,
        /// The simulator's timing: `fast` (no delays) or `realistic`.
        #[arg(long, default_value = "fast")]
        sim_timing: String,
    },
    /// Show the namespace, the daemon and the vbmc, and each VM's power and node state
    /// (exit 1 unless the lab is up).
    Status {
        #[command(flatten)]
        place: Place,
    },
    /// The whole job on the virtual rack: `lab up` (unless up), `kiln deploy-servers` with a
    /// small OpenStack slice, then a check that the cloud answers (a keystone token from every
    /// control node). Leaves the lab up; `kiln reset --all` and `kiln lab down` follow.
    Demo {
        #[command(flatten)]
        place: Place,
        #[arg(long, default_value_t = 2)]
        nodes: u32,
        #[arg(long)]
        uefi: Option<u32>,
        #[arg(long, default_value_t = 1536, value_parser = clap::value_parser!(u32).range(256..=65536))]
        memory_mb: u32,
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1024))]
        disk_gb: u32,
        #[arg(long, env = "KILN_FILES_ROOT", default_value = lab::DEFAULT_FILES_ROOT)]
        files_root: PathBuf,
        /// The nodes' OS image (see `lab up --image`).
        #[arg(long, default_value = lab::plan::IMAGE)]
        image: String,
        #[arg(long)]
        build_images: bool,
        /// Services to deploy (comma-separated catalog names).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "mariadb,memcached,keystone"
        )]
        services: Vec<String>,
        /// A catalog directory instead of the built-in one.
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// Image archives (`images/kolla/build.sh --export DIR`).
        #[arg(
            long,
            env = "KILN_IMAGE_ARCHIVES",
            default_value = "/var/cache/kiln-images/kolla/export"
        )]
        image_archives: PathBuf,
    },
    /// Stop everything the lab runs (VMs included) and remove its namespace and directory. Safe
    /// to repeat and on a half-built lab.
    Down {
        #[command(flatten)]
        place: Place,
    },
}

#[derive(Args, Debug)]
pub struct Place {
    /// The lab's name, which is its network namespace (default: the name recorded in DIR, or
    /// kiln-lab).
    #[arg(long, env = "KILN_LAB_NAME")]
    name: Option<String>,
    /// The lab's directory: disks, generated configuration, logs, PID files, the daemon's data.
    #[arg(long, env = "KILN_LAB_DIR", default_value = lab::DEFAULT_DIR)]
    dir: PathBuf,
}

pub async fn run(command: LabCommand, json: bool) -> Result<ExitCode> {
    // The lab's work blocks (processes, waiting on logs); keep it off the async workers.
    tokio::task::spawn_blocking(move || run_blocking(command, json))
        .await
        .context("the lab command panicked")?
}

fn run_blocking(command: LabCommand, json: bool) -> Result<ExitCode> {
    match command {
        LabCommand::Up {
            place,
            nodes,
            uefi,
            memory_mb,
            disk_gb,
            files_root,
            image,
            build_images,
            sim,
            sim_timing,
        } => {
            let options = UpOptions {
                name: place.name.unwrap_or_else(|| lab::DEFAULT_NAME.into()),
                dir: place.dir,
                nodes,
                uefi,
                memory_mb,
                disk_gb,
                files_root,
                image,
                build_images,
                kiln: std::env::current_exe().context("cannot find this binary")?,
                sim,
                sim_timing,
            };
            let lab = lab::up(&options, &mut |step| eprintln!("lab: {step}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&lab)?);
            } else {
                print_up(&lab);
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Demo {
            place,
            nodes,
            uefi,
            memory_mb,
            disk_gb,
            files_root,
            image,
            build_images,
            services,
            catalog,
            image_archives,
        } => {
            let options = lab::demo::DemoOptions {
                up: UpOptions {
                    name: place.name.unwrap_or_else(|| lab::DEFAULT_NAME.into()),
                    dir: place.dir,
                    nodes,
                    uefi,
                    memory_mb,
                    disk_gb,
                    files_root,
                    image,
                    build_images,
                    kiln: std::env::current_exe().context("cannot find this binary")?,
                    sim: false,
                    sim_timing: "fast".into(),
                },
                services,
                catalog,
                image_archives,
            };
            let report = lab::demo::demo(&options, &mut |step| eprintln!("lab demo: {step}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for (address, result) in &report.checks {
                    match result {
                        Ok(text) => println!("check {address}: {text}"),
                        Err(text) => println!("check {address}: FAILED: {text}"),
                    }
                }
                println!(
                    "lab demo {}: deploy-servers took {:.0} s",
                    if report.ok() { "passed" } else { "FAILED" },
                    report.deploy_seconds
                );
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        LabCommand::Status { place } => {
            let status = lab::status(place.name.as_deref(), &place.dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(if status.healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        LabCommand::Down { place } => {
            let report = lab::down(place.name.as_deref(), &place.dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_down(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// How to call this binary in the printed commands: `kiln` when that is what PATH finds.
fn kiln_command() -> String {
    let exe = std::env::current_exe().ok();
    match (&exe, lab::host::on_path("kiln")) {
        (Some(exe), Some(found)) if same_file(exe, &found) => "kiln".into(),
        (Some(exe), _) => exe.display().to_string(),
        (None, _) => "kiln".into(),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

fn print_up(lab: &Lab) {
    let kiln = kiln_command();
    let dir = lab.dir.display();
    let ns = format!("ip netns exec {}", lab.name);
    let client = format!("{ns} {kiln} --data-dir {}", lab.data_dir.display());
    let names: Vec<&str> = lab.vms.iter().map(|vm| vm.name.as_str()).collect();
    println!(
        "lab {} is up: {} VMs in network namespace {}, directory {dir}",
        lab.name,
        lab.vms.len(),
        lab.name
    );
    for vm in &lab.vms {
        println!(
            "  {}  {}  {}  {}  [{}]",
            vm.name,
            if vm.uefi { "uefi" } else { "bios" },
            vm.mac,
            vm.address,
            vm.roles.join(", ")
        );
    }
    println!(
        "  daemon  pid {}, API {} (in the namespace), log {dir}/daemon.log",
        lab.daemon_pid, lab.api_url
    );
    println!(
        "  vbmc    pid {}, Redfish {} (user admin, password in {}), log {dir}/vbmc.log",
        lab.vbmc_pid,
        lab.redfish_url,
        lab.bmc_password_file.display()
    );
    println!();
    println!("Use it (the daemon and the BMCs are reachable only inside the namespace):");
    println!("  {client} enroll {}", lab.rack.display());
    println!("  {client} node manage {}", names.join(" "));
    println!("  {client} node provide {}", names.join(" "));
    println!("  {client} node deploy {}", names.join(" "));
    println!("  {client} node list");
    if let (Some(key), Some(vm)) = (&lab.ssh_key, lab.vms.first()) {
        println!("  {ns} ssh -i {} root@{}", key.display(), vm.address);
    }
    let place = format!("--name {} --dir {dir}", lab.name);
    println!("  {kiln} lab status {place}");
    println!("  {kiln} lab down {place}");
}

fn print_status(status: &Status) {
    let dir = status.dir.display();
    if !status.exists && !status.namespace {
        println!("no lab {} (no {dir}/lab.json, no namespace)", status.name);
        return;
    }
    let yes_no = |ok: bool, yes: &str, no: &str| if ok { yes } else { no }.to_string();
    let process = |p: &crate::lab::status::ProcessStatus| match (p.pid, p.alive) {
        (Some(pid), true) => format!("running (pid {pid})"),
        (Some(pid), false) => format!("not running (pid {pid} gone)"),
        (None, _) => "not running".into(),
    };
    println!("lab {}  {dir}", status.name);
    println!(
        "  namespace  {}",
        yes_no(status.namespace, "present", "missing")
    );
    println!("  daemon     {}", process(&status.daemon));
    println!("  vbmc       {}", process(&status.vbmc));
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(["VM", "Boot", "MAC", "Address", "Power", "Provision state"]);
    for vm in &status.vms {
        table.add_row([
            vm.name.clone(),
            vm.boot_mode.to_string(),
            vm.mac.clone(),
            vm.address.clone(),
            vm.power.clone().unwrap_or_else(|| "?".into()),
            vm.provision_state.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("{table}");
    if let Some(reason) = &status.vbmc_error {
        println!("vbmc did not answer: {reason}");
    }
    if let Some(reason) = &status.daemon_error {
        println!("daemon did not answer: {reason}");
    }
}

fn print_down(report: &DownReport) {
    let mut done = Vec::new();
    if !report.stopped.is_empty() {
        done.push(format!("stopped {} processes", report.stopped.len()));
    }
    if !report.killed.is_empty() {
        done.push(format!("{} of them with SIGKILL", report.killed.len()));
    }
    if report.namespace_deleted {
        done.push(format!("deleted namespace {}", report.name));
    }
    if report.dir_removed {
        done.push(format!("removed {}", report.dir.display()));
    }
    if done.is_empty() {
        println!("lab {}: nothing to remove", report.name);
    } else {
        println!("lab {} is down: {}", report.name, done.join(", "));
    }
    for line in &report.left {
        eprintln!("warning: still running, not started by the lab: {line}");
    }
}
