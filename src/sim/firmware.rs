//! A simulated server's network boot, as its firmware and iPXE would do it: PXE DHCP, TFTP of
//! the iPXE binary, iPXE's own DHCP, the node's script over HTTP, then what the script says —
//! fetch the kernel and ramdisk (the ramdisk's agent then runs), boot the local disk, or wait and
//! ask again. [`interpret`] (what a script means) is pure and tested on Kiln's golden scripts.

use super::dhcp::{Asker, DhcpError, Lease};
use super::node::NodeContext;
use super::tftp::{self, TftpError};
use std::net::SocketAddr;
use std::time::Duration;

/// What an iPXE script tells the machine to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScriptAction {
    /// `kernel URL ARGS` + `initrd URL` + `boot`.
    Ramdisk {
        kernel: String,
        args: String,
        initrd: String,
    },
    /// `sanboot --drive 0x80` (BIOS) or `exit` (UEFI: the firmware tries the disk next).
    LocalDisk,
    /// Nothing to boot yet: `sleep N` and `chain` the script again.
    Retry { after: Duration, script: String },
    /// Anything else: iPXE would fail; the firmware falls through to the disk.
    Unknown,
}

/// The command part of a script line, without `|| goto ...`.
fn command(line: &str) -> &str {
    line.split(" || ").next().unwrap_or("").trim()
}

pub fn interpret(script: &str) -> ScriptAction {
    let mut kernel = None;
    let mut initrd = None;
    let mut sleep = None;
    let mut chain = None;
    let mut local = false;
    for line in script.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(':') {
            continue;
        }
        let words: Vec<&str> = command(line).split_whitespace().collect();
        match words.as_slice() {
            ["kernel", url, args @ ..] if kernel.is_none() => {
                kernel = Some((url.to_string(), args.join(" ")));
            }
            ["initrd", .., url] if initrd.is_none() && !url.starts_with("--") => {
                initrd = Some(url.to_string());
            }
            ["sanboot", ..] | ["exit", ..] => local = true,
            ["sleep", secs] if sleep.is_none() => sleep = secs.parse::<u64>().ok(),
            ["chain", .., url] if chain.is_none() => chain = Some(url.to_string()),
            _ => {}
        }
    }
    match (kernel, initrd) {
        (Some((kernel, args)), Some(initrd)) => ScriptAction::Ramdisk {
            kernel,
            args,
            initrd,
        },
        _ if local => ScriptAction::LocalDisk,
        _ => match (sleep, chain) {
            (Some(secs), Some(script)) => ScriptAction::Retry {
                after: Duration::from_secs(secs),
                script,
            },
            _ => ScriptAction::Unknown,
        },
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("DHCP")]
    Dhcp(#[from] DhcpError),
    #[error("TFTP")]
    Tftp(#[from] TftpError),
    #[error("the PXE offer named no boot file")]
    NoBootFile,
    #[error("GET {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("cannot add {address} to {interface}: {message}")]
    Address {
        address: String,
        interface: String,
        message: String,
    },
}

/// Where a network boot ended.
pub enum Booted {
    /// The deploy ramdisk: its kernel command line.
    Ramdisk(String),
    LocalDisk,
}

const DHCP_WAIT: Duration = Duration::from_secs(4);

/// PXE → iPXE → script → the kernel and ramdisk (or the disk). Retries as firmware does: a PXE
/// ROM that gets no offer tries again; an iPXE script that says "nothing yet" is asked again.
pub async fn network_boot(ctx: &NodeContext) -> Result<Booted, BootError> {
    let uefi = ctx.node.uefi;
    let pxe = ctx
        .dhcp_lease(
            if uefi { Asker::UefiPxe } else { Asker::BiosPxe },
            DHCP_WAIT,
        )
        .await?;
    ctx.add_address(&pxe).await?;
    let file = pxe.filename.clone().ok_or(BootError::NoBootFile)?;
    let mut script_url = if file.starts_with("http://") || file.starts_with("https://") {
        // UEFI HTTP boot or a proxy setup that hands iPXE a URL straight away.
        file
    } else {
        let server = SocketAddr::new(pxe.next_server.into(), 69);
        let bytes = tftp::fetch(pxe.address.into(), server, &file, Duration::from_secs(2)).await?;
        ctx.say(format!("TFTP {file}: {bytes} bytes"));
        let ipxe: Lease = ctx.dhcp_lease(Asker::Ipxe { uefi }, DHCP_WAIT).await?;
        ipxe.filename.clone().ok_or(BootError::NoBootFile)?
    };
    loop {
        let script = ctx.get_text(&script_url).await?;
        match interpret(&script) {
            ScriptAction::Ramdisk {
                kernel,
                args,
                initrd,
            } => {
                let kernel_bytes = ctx.get_count(&kernel).await?;
                let initrd_bytes = ctx.get_count(&initrd).await?;
                ctx.say(format!(
                    "kernel {kernel_bytes} bytes, ramdisk {initrd_bytes} bytes"
                ));
                return Ok(Booted::Ramdisk(args));
            }
            ScriptAction::LocalDisk | ScriptAction::Unknown => return Ok(Booted::LocalDisk),
            ScriptAction::Retry { after, script } => {
                ctx.say(format!("nothing to boot yet; asking again in {after:?}"));
                tokio::time::sleep(after).await;
                script_url = script;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str) -> String {
        let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap()
    }

    #[test]
    fn kilns_scripts_mean_what_they_say() {
        let ScriptAction::Ramdisk {
            kernel,
            args,
            initrd,
        } = interpret(&golden("deploy-bios.ipxe"))
        else {
            panic!("deploy script not understood");
        };
        assert!(
            kernel.ends_with("/files/deploy/vmlinuz?node=6b3e0a1e-0000-4000-8000-000000000002")
        );
        assert!(
            initrd
                .ends_with("/files/deploy/initramfs.gz?node=6b3e0a1e-0000-4000-8000-000000000002")
        );
        let parsed = crate::agent::cmdline::parse(&args).unwrap();
        assert_eq!(parsed.mode, crate::agent::cmdline::Mode::Deploy);
        assert!(parsed.token.is_some() && parsed.node.is_some());
        assert!(matches!(
            interpret(&golden("deploy-uefi.ipxe")),
            ScriptAction::Ramdisk { .. }
        ));
        assert!(matches!(
            interpret(&golden("discovery.ipxe")),
            ScriptAction::Ramdisk { .. }
        ));
        assert_eq!(
            interpret(&golden("localboot-bios.ipxe")),
            ScriptAction::LocalDisk
        );
        assert_eq!(
            interpret(&golden("localboot-uefi.ipxe")),
            ScriptAction::LocalDisk
        );
        for name in ["nothing-manageable.ipxe", "nothing-unknown.ipxe"] {
            let ScriptAction::Retry { after, script } = interpret(&golden(name)) else {
                panic!("{name} not understood");
            };
            assert!(after > Duration::ZERO);
            assert!(
                script.starts_with("http://") && script.ends_with(".ipxe"),
                "{script}"
            );
        }
        assert_eq!(interpret("#!ipxe\necho hello\n"), ScriptAction::Unknown);
        assert_eq!(interpret(""), ScriptAction::Unknown);
    }
}
