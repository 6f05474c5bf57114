//! Network boot services Kiln serves itself (no dnsmasq): DHCPv4, TFTP, and HTTP iPXE scripts and
//! boot files. Each server has the same shape: the caller binds the socket, `run` serves until the
//! shutdown token fires.

pub mod dhcp;
pub mod files;
pub mod http;
pub mod ipxe;
pub mod ra;
pub mod tftp;
