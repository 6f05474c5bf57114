//! The `kiln-agent` binary that runs in the deploy ramdisk: reads its kernel arguments and its hardware.
//!
//! - `kiln-agent` (in the ramdisk): parses the kernel command line (`/proc/cmdline`, or
//!   `--cmdline FILE`) and, in `kiln.mode=deploy`, calls Kiln back (look-up, inventory,
//!   heartbeats) and runs the commands it is given until the machine reboots
//!   ([`kiln::agent::runner`]); in `kiln.mode=discover` it prints the inventory it would report.
//! - `kiln-agent --inventory` prints the hardware inventory as JSON (no kernel arguments needed);
//! - `kiln-agent --dry-run` prints the root disk it would write (`--hints-json`, `--image-size`).
//! - `--target FILE` writes images there instead of the chosen disk (tests).
//!
//! Exit codes: 0 done, 1 error (one plain line on stderr). The agent token is never printed.

use anyhow::Context;
use clap::Parser;
use kiln::agent::cmdline::{self, Mode};
use kiln::agent::disks;
use kiln::agent::inventory::{self, Roots};
use kiln::agent::runner::{self, AgentEnv};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "kiln-agent", version, about = "Kiln's deploy ramdisk agent")]
struct Args {
    /// Kernel command line to read the `kiln.*` arguments from.
    #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    /// Print the hardware inventory as JSON and exit; the command line is not read.
    #[arg(long)]
    inventory: bool,
    /// Root device hints for deploy mode, as Ironic takes them, e.g. '{"size_gb": 40}'.
    #[arg(long, value_name = "JSON")]
    hints_json: Option<String>,
    /// Size of the image to write in bytes; without hints the smallest disk at least this big is chosen.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    image_size: u64,
    /// Print the root disk deploy mode would write, and exit (no network calls).
    #[arg(long)]
    dry_run: bool,
    /// Write images to this file or device instead of the chosen disk (tests).
    #[arg(long, value_name = "PATH")]
    target: Option<PathBuf>,
    /// Where block devices are listed (a fake tree in tests).
    #[arg(long, value_name = "DIR", default_value = disks::SYS_BLOCK)]
    sys_block: PathBuf,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            // --help and --version are not errors; every real error exits 1, as documented.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let roots = Roots {
        sys_block: args.sys_block.clone(),
        ..Roots::default()
    };
    if args.inventory {
        return print_inventory(&roots);
    }
    let text = std::fs::read_to_string(&args.cmdline)
        .with_context(|| format!("cannot read {}", args.cmdline.display()))?;
    let agent = cmdline::parse(&text).with_context(|| args.cmdline.display().to_string())?;
    eprintln!("kiln-agent: {agent}");
    match agent.mode {
        Mode::Discover => print_inventory(&roots),
        Mode::Deploy if !args.dry_run => {
            let env = AgentEnv {
                roots,
                target_override: args.target.clone(),
                write_rate: None,
            };
            let _ = rustls::crypto::ring::default_provider().install_default();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(runner::run(agent, env))?;
            Ok(())
        }
        Mode::Deploy => {
            let hints = match &args.hints_json {
                Some(json) => disks::parse_hints(json).context("--hints-json")?,
                None => Default::default(),
            };
            let found = disks::read_disks(&roots.sys_block)?;
            let disk = disks::choose_root_disk(&found, &hints, args.image_size)?;
            println!("root disk: {} ({disk})", disk.path().display());
            Ok(())
        }
    }
}

fn print_inventory(roots: &Roots) -> anyhow::Result<()> {
    let inventory = inventory::gather(roots)?;
    println!("{}", serde_json::to_string_pretty(&inventory)?);
    Ok(())
}
