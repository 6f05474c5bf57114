//! `kiln serve` boot-service options and their wiring: DHCP, TFTP, boot HTTP and router
//! advertisements, all bound to the one provisioning interface the operator names.

use crate::boot::dhcp::{DhcpConfig, DhcpMode, DhcpServer, Pool, bind_socket};
use crate::boot::http::{BootHttpConfig, BootHttpState};
use crate::boot::tftp::{TftpConfig, TftpFailure, TftpObserver};
use crate::boot::{files, ra};
use crate::store::Store;
use anyhow::{Context, Result, bail};
use axum::extract::{Path as UrlPath, Request};
use axum::routing::get;
use clap::{Args, ValueEnum};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DhcpModeArg {
    Reservation,
    Proxy,
    Off,
}

/// Boot services are off unless `--boot-interface` names the provisioning interface.
#[derive(Args, Debug, Clone)]
pub struct BootOptions {
    /// Provisioning interface; DHCP/TFTP/HTTP bind to it (and only it).
    #[arg(long, env = "KILN_BOOT_INTERFACE")]
    pub boot_interface: Option<String>,
    /// DHCP mode: reservation (Kiln hands out addresses), proxy (another server does), off.
    #[arg(
        long,
        env = "KILN_DHCP_MODE",
        value_enum,
        default_value = "reservation"
    )]
    pub dhcp_mode: DhcpModeArg,
    /// Pool for enrolled nodes without an inventory address, FIRST-LAST.
    #[arg(long, env = "KILN_DHCP_POOL")]
    pub dhcp_pool: Option<String>,
    /// Answer unknown MACs from this pool (short leases) and boot them into discovery.
    #[arg(long, env = "KILN_DISCOVERY_POOL")]
    pub discovery_pool: Option<String>,
    /// Router handed to nodes (default: none).
    #[arg(long, env = "KILN_DHCP_ROUTER")]
    pub dhcp_router: Option<Ipv4Addr>,
    /// Port of the boot HTTP server (iPXE scripts, kernels, images) on the interface address.
    #[arg(long, env = "KILN_BOOT_HTTP_PORT", default_value_t = 8080)]
    pub boot_http_port: u16,
    /// Directory of iPXE binaries served over TFTP (Debian's ipxe package).
    #[arg(long, env = "KILN_TFTP_ROOT", default_value = crate::boot::tftp::DEFAULT_ROOT)]
    pub tftp_root: PathBuf,
    /// Directory served under /files/ (deploy kernel, ramdisk, images). Default DATA_DIR/files.
    #[arg(long, env = "KILN_FILES_ROOT")]
    pub files_root: Option<PathBuf>,
    /// EFI binary for UEFI clients: snponly.efi (uses the firmware's NIC driver) or ipxe.efi.
    #[arg(long, env = "KILN_EFI_BINARY", default_value = "snponly.efi")]
    pub efi_binary: String,
    /// Do not answer IPv6 router solicitations (iPXE then waits ~13 s for one at every boot).
    #[arg(long, env = "KILN_NO_RA")]
    pub no_router_advertisements: bool,
}

fn parse_pool(text: &str) -> Result<Pool> {
    let (first, last) = text.split_once('-').context("a pool is FIRST-LAST")?;
    let pool = Pool {
        first: first.trim().parse().context("pool start")?,
        last: last.trim().parse().context("pool end")?,
    };
    if u32::from(pool.first) > u32::from(pool.last) {
        bail!("pool {text} ends before it starts");
    }
    Ok(pool)
}

/// The interface's first IPv4 address and prefix, its index and MAC.
fn interface_facts(name: &str) -> Result<(Ipv4Addr, u8, u32, [u8; 6])> {
    let mut found = None;
    let mut mac = [0u8; 6];
    for ifaddr in nix::ifaddrs::getifaddrs().context("cannot list interfaces")? {
        if ifaddr.interface_name != name {
            continue;
        }
        if let Some(link) = ifaddr
            .address
            .as_ref()
            .and_then(|a| a.as_link_addr())
            .and_then(|l| l.addr())
        {
            mac = link;
        }
        let (Some(addr), Some(mask)) = (
            ifaddr.address.as_ref().and_then(|a| a.as_sockaddr_in()),
            ifaddr.netmask.as_ref().and_then(|m| m.as_sockaddr_in()),
        ) else {
            continue;
        };
        found.get_or_insert((addr.ip(), u32::from(mask.ip()).leading_ones() as u8));
    }
    let (ip, prefix) = found.with_context(|| format!("interface {name} has no IPv4 address"))?;
    let index =
        nix::net::if_::if_nametoindex(name).with_context(|| format!("no interface {name}"))?;
    Ok((ip, prefix, index, mac))
}

/// What the boot services need to know about the provisioning interface, worked out before the
/// daemon starts anything (the deploy workflow needs the boot HTTP URL too).
#[derive(Clone, Debug)]
pub struct BootPlan {
    pub interface: String,
    pub server_ip: Ipv4Addr,
    pub prefix: u8,
    ifindex: u32,
    mac: [u8; 6],
    /// `http://SERVER_IP:PORT`: scripts, files, images and the agent API.
    pub http_base: String,
    pub files_root: PathBuf,
}

impl BootPlan {
    pub fn images_dir(&self) -> PathBuf {
        self.files_root.join("images")
    }
}

/// Reads the provisioning interface's facts; `None` when boot services are off.
pub fn plan(options: &BootOptions, data_dir: &std::path::Path) -> Result<Option<BootPlan>> {
    let Some(interface) = &options.boot_interface else {
        return Ok(None);
    };
    let (server_ip, prefix, ifindex, mac) = interface_facts(interface)?;
    let files_root = options
        .files_root
        .clone()
        .unwrap_or_else(|| data_dir.join("files"));
    std::fs::create_dir_all(&files_root)
        .with_context(|| format!("cannot create {}", files_root.display()))?;
    Ok(Some(BootPlan {
        interface: interface.clone(),
        server_ip,
        prefix,
        ifindex,
        mac,
        http_base: format!("http://{server_ip}:{}", options.boot_http_port),
        files_root,
    }))
}

/// Starts the boot services into `tasks`; `agent_api` (the agent callback routes) is served by
/// the boot HTTP server, where the ramdisk can reach it.
pub async fn start(
    plan: &BootPlan,
    options: &BootOptions,
    store: &Store,
    agent_api: axum::Router,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let BootPlan {
        interface,
        server_ip,
        prefix,
        ifindex,
        mac,
        http_base,
        files_root,
    } = plan.clone();
    let interface = &interface;
    // Agents call back through the boot HTTP server.
    let api_url = http_base.clone();

    // Boot HTTP: scripts, files, and the iPXE binaries for UEFI HTTP boot under /ipxe/.
    let mut http_config = BootHttpConfig::new(http_base.clone(), api_url, files_root);
    http_config.scripts.discovery = options.discovery_pool.is_some();
    let tftp_root = options.tftp_root.clone();
    let ipxe_root = tftp_root.clone();
    let app = crate::boot::http::router(BootHttpState::new(store.clone(), http_config))
        .merge(agent_api)
        .route(
            "/ipxe/{*path}",
            get(move |UrlPath(path): UrlPath<String>, request: Request| {
                let root = ipxe_root.clone();
                async move {
                    use axum::response::IntoResponse;
                    match files::serve(&root, &path, request.method(), request.headers()).await {
                        Ok(response) => response,
                        Err(err) => crate::boot::http::BootHttpError::File(err).into_response(),
                    }
                }
            }),
        );
    let http_addr = SocketAddr::from((server_ip, options.boot_http_port));
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("cannot listen on {http_addr}"))?;
    // Keep at most 128 KiB of not-yet-sent data queued per socket: with 134 slow readers the
    // kernel otherwise holds megabytes of copied image data per connection, which spills out of
    // cache and slows every download (docs/BENCHMARKS.md, image serving).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        let socket = socket2::SockRef::from(&*tcp);
        if let Err(err) = set_notsent_lowat(&socket, 128 * 1024) {
            tracing::debug!(error = %err, "TCP_NOTSENT_LOWAT not set");
        }
    });
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "boot HTTP server failed");
        }
    });
    tracing::info!(%interface, address = %http_addr, "boot HTTP listening");

    // TFTP on the interface address: each transfer answers from a new socket on that address.
    let tftp_socket =
        std::net::UdpSocket::bind((server_ip, 69)).context("cannot bind TFTP port 69")?;
    let tftp_config = TftpConfig {
        root: tftp_root,
        ..TftpConfig::default()
    };
    let observer = Arc::new(TimelineObserver {
        store: store.clone(),
    });
    let stop = shutdown.clone();
    tasks.spawn(async move {
        if let Err(err) = crate::boot::tftp::run(tftp_socket, tftp_config, observer, stop).await {
            tracing::error!(error = %err, "TFTP server failed");
        }
    });

    // DHCP.
    let mode = match options.dhcp_mode {
        DhcpModeArg::Off => None,
        DhcpModeArg::Reservation => Some(DhcpMode::Reservation),
        DhcpModeArg::Proxy => Some(DhcpMode::Proxy),
    };
    if let Some(mode) = mode {
        let mut config = DhcpConfig::new(mode, server_ip, prefix, http_base);
        config.router = options.dhcp_router;
        config.pool = options.dhcp_pool.as_deref().map(parse_pool).transpose()?;
        config.discovery_pool = options
            .discovery_pool
            .as_deref()
            .map(parse_pool)
            .transpose()?;
        config.discovery = config.discovery_pool.is_some();
        config.efi_binary = options.efi_binary.clone();
        let server = DhcpServer::new(config, store.clone())
            .await
            .context("cannot load DHCP leases")?;
        let socket = bind_socket(interface, SocketAddr::from(([0, 0, 0, 0], 67)))
            .context("cannot bind DHCP port 67")?;
        tasks.spawn(Arc::clone(&server).run(
            tokio::net::UdpSocket::from_std(socket)?,
            false,
            shutdown.clone(),
        ));
        if mode == DhcpMode::Proxy {
            let socket = bind_socket(interface, SocketAddr::from(([0, 0, 0, 0], 4011)))
                .context("cannot bind PXE port 4011")?;
            tasks.spawn(server.run(
                tokio::net::UdpSocket::from_std(socket)?,
                true,
                shutdown.clone(),
            ));
        }
        tracing::info!(%interface, %server_ip, ?mode, "DHCP serving");
    }

    if !options.no_router_advertisements {
        match ra::bind(interface, ifindex) {
            Ok(socket) => {
                let stop = shutdown.clone();
                tasks.spawn(async move {
                    let _ =
                        tokio::task::spawn_blocking(move || ra::run(socket, ifindex, mac, stop))
                            .await;
                });
            }
            Err(err) => tracing::warn!(error = %err, %interface, "router advertisements off"),
        }
    }
    Ok(())
}

/// Turns TFTP transfers into node timeline events (node found by the peer's leased address).
struct TimelineObserver {
    store: Store,
}

impl TimelineObserver {
    fn record(&self, peer: SocketAddr, kind: &'static str, detail: String) {
        let store = self.store.clone();
        tokio::spawn(async move {
            let SocketAddr::V4(peer) = peer else { return };
            let Ok(leases) = store.leases().await else {
                return;
            };
            let Some(uuid) = leases
                .iter()
                .find(|l| l.ip == *peer.ip())
                .and_then(|l| l.node_uuid)
            else {
                return;
            };
            if let Err(err) = store.record_event(uuid, kind, &detail).await {
                tracing::warn!(error = %err, "cannot record TFTP event");
            }
        });
    }
}

impl TftpObserver for TimelineObserver {
    fn transfer_started(&self, peer: SocketAddr, file: &str) {
        tracing::debug!(%peer, file, "TFTP transfer started");
    }

    fn transfer_finished(&self, peer: SocketAddr, file: &str, bytes: u64, block_size: Option<u16>) {
        tracing::info!(%peer, file, bytes, ?block_size, "TFTP transfer done");
        self.record(
            peer,
            "tftp-done",
            format!("{file}: {bytes} bytes, blksize {block_size:?}"),
        );
    }

    fn transfer_failed(&self, peer: SocketAddr, file: &str, reason: &TftpFailure) {
        tracing::info!(%peer, file, ?reason, "TFTP transfer failed");
        self.record(peer, "tftp-failed", format!("{file}: {reason:?}"));
    }
}

/// `TCP_NOTSENT_LOWAT` (Linux 3.12+): socket2 has no wrapper for it.
fn set_notsent_lowat(socket: &socket2::SockRef<'_>, bytes: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = bytes as nix::libc::c_int;
    // SAFETY: a valid socket fd, a c_int option value and its exact size.
    let rc = unsafe {
        nix::libc::setsockopt(
            socket.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_NOTSENT_LOWAT,
            (&value as *const nix::libc::c_int).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
