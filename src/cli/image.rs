//! `kiln image build|import|list`: the appliance's image catalog and deploy ramdisk, on this machine.
//!
//! These run locally (no daemon needed): the catalog is `FILES_ROOT/images/` and the ramdisk
//! `FILES_ROOT/deploy/`, which the daemon's boot HTTP server serves. Builds call the recipes in
//! `images/` (see images/README.md); they cache by input hash, so a second build is instant.

use crate::images::{self, ImageRecord};
use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BuildTarget {
    /// Deploy kernel + initramfs with kiln-agent → FILES_ROOT/deploy/{vmlinuz,initramfs.gz}.
    Ramdisk,
    /// Debian 12 OS image (raw+zstd) → FILES_ROOT/images/debian-12.*.
    Os,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Build the deploy ramdisk or the Debian OS image from Debian packages (cached).
    Build {
        target: BuildTarget,
        /// Directory holding the recipes (default: $KILN_RECIPES, ./images, or next to the binary).
        #[arg(long, env = "KILN_RECIPES")]
        recipes: Option<PathBuf>,
        /// kiln-agent binary for the ramdisk (default: the one next to this binary).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// OS image only: the catalog name (default debian-12; required with --preload).
        #[arg(long)]
        name: Option<String>,
        /// OS image only: load every `docker save` archive in DIR (the `--image-archives`
        /// directory) into the image's Docker Engine at build time, so nodes boot with them.
        #[arg(long, value_name = "DIR", requires = "name")]
        preload: Option<PathBuf>,
    },
    /// Convert a qcow2 or raw image into the catalog as NAME (qemu-img, zstd).
    Import {
        file: PathBuf,
        /// Catalog name (default: the file name without extensions).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the catalog.
    List,
}

pub fn run(command: ImageCommand, files_root: &Path, json: bool) -> Result<()> {
    let catalog = files_root.join("images");
    match command {
        ImageCommand::List => {
            let records = images::list(&catalog)?;
            print(&records, json);
            Ok(())
        }
        ImageCommand::Import { file, name } => {
            let name = match name {
                Some(name) => name,
                None => default_name(&file)?,
            };
            let record = images::import(&catalog, &file, &name)?;
            print(&[record], json);
            Ok(())
        }
        ImageCommand::Build {
            target,
            recipes,
            agent,
            name,
            preload,
        } => {
            if target == BuildTarget::Ramdisk && (name.is_some() || preload.is_some()) {
                bail!("--name and --preload are for `kiln image build os`");
            }
            let recipes = find_recipes(recipes)?;
            let status = match target {
                BuildTarget::Ramdisk => {
                    let agent = match agent {
                        Some(agent) => agent,
                        None => sibling("kiln-agent")?,
                    };
                    Command::new("bash")
                        .arg(recipes.join("ramdisk/build.sh"))
                        .arg(files_root.join("deploy"))
                        .arg(agent)
                        .status()
                }
                BuildTarget::Os => {
                    let mut command = Command::new("bash");
                    command.arg(recipes.join("os/build.sh")).arg(&catalog);
                    if let Some(name) = &name {
                        command.arg("--name").arg(name);
                    }
                    if let Some(dir) = &preload {
                        command.arg("--preload").arg(dir);
                    }
                    command.status()
                }
            }
            .context("cannot run the image recipe")?;
            if !status.success() {
                bail!("the {target:?} recipe failed ({status})");
            }
            if target == BuildTarget::Os {
                print(&images::list(&catalog)?, json);
            }
            Ok(())
        }
    }
}

fn default_name(file: &Path) -> Result<String> {
    let base = file
        .file_name()
        .and_then(|n| n.to_str())
        .context("the image file has no name")?;
    let name = base.split('.').next().unwrap_or(base);
    Ok(name.to_string())
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!("{} not found; pass --agent", path.display());
    }
    Ok(path)
}

fn find_recipes(given: Option<PathBuf>) -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = given.into_iter().collect();
    candidates.push(PathBuf::from("images"));
    if let Ok(exe) = std::env::current_exe() {
        // target/debug/kiln → the source tree's images/; /usr/bin/kiln → /usr/share/kiln/images.
        for up in exe.ancestors().skip(1).take(3) {
            candidates.push(up.join("images"));
        }
    }
    candidates.push(PathBuf::from("/usr/share/kiln/images"));
    candidates
        .into_iter()
        .find(|dir| dir.join("ramdisk/build.sh").exists())
        .context("image recipes not found: pass --recipes DIR (the repository's images/)")
}

fn print(records: &[ImageRecord], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(records).unwrap_or_default()
        );
        return;
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(["Name", "Format", "Disk size", "Stored", "SHA-256"]);
    for r in records {
        table.add_row([
            r.name.clone(),
            r.format.clone(),
            format!("{:.1} GiB", r.raw_size as f64 / (1u64 << 30) as f64),
            format!("{:.0} MiB", r.size as f64 / (1u64 << 20) as f64),
            r.sha256.clone(),
        ]);
    }
    println!("{table}");
}
