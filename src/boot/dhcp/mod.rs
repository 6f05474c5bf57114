//! Kiln's DHCPv4 server: reservation mode (addresses for enrolled nodes, optional discovery pool)
//! and proxyDHCP mode (boot information only, beside an existing DHCP server).
//!
//! `client` pulls the facts out of a request, `answer` decides (pure), `reply` encodes, `leases`
//! keeps the address book and `server` does the socket and store I/O.

pub mod answer;
pub mod client;
pub mod leases;
pub mod reply;
mod server;

pub use leases::Pool;
pub use server::{DhcpServer, bind_socket, decode};

use std::net::Ipv4Addr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DhcpMode {
    /// Kiln owns the provisioning network's addresses.
    Reservation,
    /// Another server hands out addresses; Kiln only adds boot information (ports 67 and 4011).
    Proxy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpConfig {
    pub mode: DhcpMode,
    /// Kiln's own address on the provisioning network (server identifier, next-server).
    pub server_ip: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_secs: u32,
    /// Addresses for enrolled nodes that have no static address in the inventory.
    pub pool: Option<Pool>,
    /// Answer unknown MACs with a short lease from `discovery_pool` (Ironic-style discovery).
    pub discovery: bool,
    pub discovery_pool: Option<Pool>,
    pub discovery_lease_secs: u32,
    /// Base URL of Kiln's boot HTTP server as nodes reach it, e.g. `http://10.99.0.1:8080`.
    pub http_base: String,
    /// Served over TFTP to BIOS PXE ROMs.
    pub bios_binary: String,
    /// Served over TFTP to UEFI PXE firmware (and over HTTP to UEFI HTTP boot).
    pub efi_binary: String,
}

impl DhcpConfig {
    /// Defaults around `server_ip` on a /24: itself as router and DNS, one-hour leases.
    pub fn new(mode: DhcpMode, server_ip: Ipv4Addr, prefix: u8, http_base: String) -> Self {
        Self {
            mode,
            server_ip,
            prefix,
            router: None,
            dns: Vec::new(),
            domain: None,
            lease_secs: 3600,
            pool: None,
            discovery: false,
            discovery_pool: None,
            discovery_lease_secs: 300,
            http_base,
            bios_binary: "undionly.kpxe".into(),
            efi_binary: "snponly.efi".into(),
        }
    }

    #[cfg(test)]
    pub fn for_tests(server_ip: Ipv4Addr) -> Self {
        Self {
            router: Some(server_ip),
            dns: vec![server_ip],
            domain: Some("kiln.test".into()),
            ..Self::new(
                DhcpMode::Reservation,
                server_ip,
                24,
                format!("http://{server_ip}:8080"),
            )
        }
    }
}
