//! What a DHCP request says about its sender: the fields Kiln decides on, pulled out of the wire
//! message once, and the pure classification of the client's boot firmware.

use crate::model::MacAddress;
use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use std::net::Ipv4Addr;

/// The parts of a DHCPv4 request that matter to Kiln's decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub msg_type: MessageType,
    pub xid: u32,
    pub mac: MacAddress,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub broadcast: bool,
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    /// Option 60, raw.
    pub vendor_class: Option<Vec<u8>>,
    /// Option 77, raw.
    pub user_class: Option<Vec<u8>>,
    /// Option 93, the first architecture listed.
    pub arch: Option<u16>,
    /// Option 175 (iPXE encapsulated options) is present.
    pub ipxe_options: bool,
}

/// Why a datagram is not a request Kiln acts on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("not a BOOTREQUEST")]
    NotARequest,
    #[error("hardware address is not 6-byte Ethernet")]
    NotEthernet,
    #[error("no DHCP message type")]
    NoMessageType,
}

impl Request {
    pub fn from_message(msg: &v4::Message) -> Result<Request, Rejected> {
        if msg.opcode() != v4::Opcode::BootRequest {
            return Err(Rejected::NotARequest);
        }
        // Check hlen before touching chaddr: dhcproto's `chaddr()` slices by hlen and panics
        // when a hostile packet claims more than 16 bytes (found by the proptest below).
        if msg.htype() != v4::HType::Eth || msg.hlen() != 6 {
            return Err(Rejected::NotEthernet);
        }
        let chaddr = msg.chaddr();
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&chaddr[..6]);
        let opts = msg.opts();
        let msg_type = opts.msg_type().ok_or(Rejected::NoMessageType)?;
        let raw = |code: OptionCode| match opts.get(code) {
            Some(DhcpOption::ClassIdentifier(v)) | Some(DhcpOption::UserClass(v)) => {
                Some(v.clone())
            }
            _ => None,
        };
        Ok(Request {
            msg_type,
            xid: msg.xid(),
            mac: MacAddress(mac),
            ciaddr: msg.ciaddr(),
            giaddr: msg.giaddr(),
            broadcast: msg.flags().broadcast(),
            requested_ip: match opts.get(OptionCode::RequestedIpAddress) {
                Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
                _ => None,
            },
            server_id: match opts.get(OptionCode::ServerIdentifier) {
                Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
                _ => None,
            },
            vendor_class: raw(OptionCode::ClassIdentifier),
            user_class: raw(OptionCode::UserClass),
            arch: match opts.get(OptionCode::ClientSystemArchitecture) {
                Some(DhcpOption::ClientSystemArchitecture(arch)) => Some(arch.0),
                _ => None,
            },
            ipxe_options: opts.contains(OptionCode::Unknown(175)),
        })
    }

    fn vendor_class_starts_with(&self, prefix: &[u8]) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with(prefix))
    }
}

/// The boot firmware (or OS) behind a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// Legacy BIOS PXE ROM (arch 0).
    BiosPxe,
    /// UEFI firmware PXE for x86-64 (arch 7 or 9).
    UefiPxe,
    /// UEFI HTTP boot (vendor class `HTTPClient`).
    UefiHttp,
    /// iPXE itself (user class `iPXE` or option 175): hand it the node's script.
    Ipxe,
    /// A PXE client for an architecture Kiln has no binary for.
    UnsupportedPxe(u16),
    /// No PXE vendor class (an OS's DHCP client, such as the ramdisk's udhcpc): address only.
    Plain,
}

/// Classifies a client from its options. iPXE also says `PXEClient`, so it is checked first.
pub fn classify(request: &Request) -> ClientKind {
    let user_class_is_ipxe = request.user_class.as_deref().is_some_and(|uc| {
        // iPXE sends the bare string; RFC 3004 clients prefix each class with its length.
        uc == b"iPXE" || uc.get(1..).is_some_and(|rest| rest == b"iPXE")
    });
    if user_class_is_ipxe || request.ipxe_options {
        return ClientKind::Ipxe;
    }
    if request.vendor_class_starts_with(b"HTTPClient") {
        return ClientKind::UefiHttp;
    }
    if !request.vendor_class_starts_with(b"PXEClient") {
        return ClientKind::Plain;
    }
    let arch = request
        .arch
        .or_else(|| arch_from_vendor_class(request.vendor_class.as_deref().unwrap_or_default()));
    match arch {
        None | Some(0) => ClientKind::BiosPxe,
        Some(7 | 9) => ClientKind::UefiPxe,
        Some(16) => ClientKind::UefiHttp,
        Some(other) => ClientKind::UnsupportedPxe(other),
    }
}

/// `PXEClient:Arch:00007:UNDI:003000` → 7.
fn arch_from_vendor_class(vendor_class: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(vendor_class).ok()?;
    let rest = text.split("Arch:").nth(1)?;
    rest.get(..5)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        vendor: Option<&[u8]>,
        user: Option<&[u8]>,
        arch: Option<u16>,
        ipxe: bool,
    ) -> Request {
        Request {
            msg_type: MessageType::Discover,
            xid: 1,
            mac: MacAddress([0x52, 0x54, 0, 0, 0, 1]),
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: None,
            server_id: None,
            vendor_class: vendor.map(<[u8]>::to_vec),
            user_class: user.map(<[u8]>::to_vec),
            arch,
            ipxe_options: ipxe,
        }
    }

    /// Option sets captured from real clients (../shared/LAB.md) plus edge cases.
    #[test]
    fn classifies_captured_clients() {
        let cases: &[(&str, Request, ClientKind)] = &[
            (
                "QEMU BIOS iPXE ROM",
                request(
                    Some(b"PXEClient:Arch:00000:UNDI:002001"),
                    Some(b"iPXE"),
                    Some(0),
                    true,
                ),
                ClientKind::Ipxe,
            ),
            (
                "OVMF firmware PXE",
                request(
                    Some(b"PXEClient:Arch:00007:UNDI:003000"),
                    None,
                    Some(7),
                    false,
                ),
                ClientKind::UefiPxe,
            ),
            (
                "snponly.efi",
                request(
                    Some(b"PXEClient:Arch:00007:UNDI:003016"),
                    Some(b"iPXE"),
                    Some(7),
                    false,
                ),
                ClientKind::Ipxe,
            ),
            (
                "udhcpc in the ramdisk",
                request(Some(b"udhcp 1.35.0"), None, None, false),
                ClientKind::Plain,
            ),
            (
                "BIOS PXE ROM",
                request(
                    Some(b"PXEClient:Arch:00000:UNDI:002001"),
                    None,
                    Some(0),
                    false,
                ),
                ClientKind::BiosPxe,
            ),
            (
                "EFI BC",
                request(
                    Some(b"PXEClient:Arch:00009:UNDI:003000"),
                    None,
                    Some(9),
                    false,
                ),
                ClientKind::UefiPxe,
            ),
            (
                "UEFI HTTP boot",
                request(
                    Some(b"HTTPClient:Arch:00016:UNDI:003000"),
                    None,
                    Some(16),
                    false,
                ),
                ClientKind::UefiHttp,
            ),
            (
                "arch only in opt 60",
                request(Some(b"PXEClient:Arch:00007:UNDI:003000"), None, None, false),
                ClientKind::UefiPxe,
            ),
            (
                "ARM64 PXE",
                request(
                    Some(b"PXEClient:Arch:00011:UNDI:003000"),
                    None,
                    Some(11),
                    false,
                ),
                ClientKind::UnsupportedPxe(11),
            ),
            (
                "RFC 3004 user class",
                request(None, Some(b"\x04iPXE"), None, false),
                ClientKind::Ipxe,
            ),
            (
                "no options at all",
                request(None, None, None, false),
                ClientKind::Plain,
            ),
            (
                "truncated vendor class",
                request(Some(b"PXEClient:Arch:0"), None, None, false),
                ClientKind::BiosPxe,
            ),
        ];
        for (name, request, expected) in cases {
            assert_eq!(classify(request), *expected, "{name}");
        }
    }
}
