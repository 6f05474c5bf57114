//! What to answer, decided as pure functions of the request, the client kind and the address
//! chosen for it: the reservation handler (addresses + boot info) and the proxyDHCP handler
//! (boot info only, for networks that already run a DHCP server).

use super::DhcpConfig;
use super::client::{ClientKind, Request};
use dhcproto::v4::MessageType;
use std::net::Ipv4Addr;

/// Where the client should fetch its next stage from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootFile {
    /// Address only (an OS's DHCP client, or an architecture Kiln has no binary for).
    None,
    /// A file on Kiln's TFTP server.
    Tftp(String),
    /// A full HTTP URL (iPXE scripts, UEFI HTTP boot).
    Http(String),
}

/// The boot file for a client kind (smee's `Bootfile`): BIOS → undionly.kpxe, UEFI x64 →
/// snponly.efi (configurable), UEFI HTTP → iPXE EFI over HTTP, iPXE → the node's script URL.
pub fn boot_file(kind: ClientKind, mac: crate::model::MacAddress, config: &DhcpConfig) -> BootFile {
    match kind {
        ClientKind::BiosPxe => BootFile::Tftp(config.bios_binary.clone()),
        ClientKind::UefiPxe => BootFile::Tftp(config.efi_binary.clone()),
        ClientKind::UefiHttp => {
            BootFile::Http(format!("{}/ipxe/{}", config.http_base, config.efi_binary))
        }
        ClientKind::Ipxe => BootFile::Http(format!("{}/boot/{mac}.ipxe", config.http_base)),
        ClientKind::UnsupportedPxe(_) | ClientKind::Plain => BootFile::None,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send nothing; the reason goes to the debug log.
    Ignore(&'static str),
    Offer {
        ip: Ipv4Addr,
        boot: BootFile,
    },
    Ack {
        ip: Ipv4Addr,
        boot: BootFile,
    },
    /// Boot information without an address (DHCPINFORM, proxyDHCP).
    BootOnly {
        msg_type: MessageType,
        boot: BootFile,
    },
    Nak(&'static str),
    Release,
}

/// Reservation mode: `ip` is the address chosen for this client (its reservation, its lease or
/// a pool address); `None` when it has none.
pub fn reservation(
    request: &Request,
    kind: ClientKind,
    ip: Option<Ipv4Addr>,
    config: &DhcpConfig,
) -> Answer {
    let boot = boot_file(kind, request.mac, config);
    match request.msg_type {
        MessageType::Discover => match ip {
            Some(ip) => Answer::Offer { ip, boot },
            None => Answer::Ignore("no address for this client"),
        },
        MessageType::Request => {
            if request.server_id.is_some_and(|id| id != config.server_ip) {
                return Answer::Ignore("the client chose another server");
            }
            let asked = request
                .requested_ip
                .or((!request.ciaddr.is_unspecified()).then_some(request.ciaddr));
            match (ip, asked) {
                (Some(ip), Some(asked)) if asked == ip => Answer::Ack { ip, boot },
                (Some(_), Some(_)) => Answer::Nak("requested address is not this client's"),
                (Some(_), None) => Answer::Nak("request names no address"),
                (None, _) => Answer::Ignore("no address for this client"),
            }
        }
        MessageType::Inform => Answer::BootOnly {
            msg_type: MessageType::Ack,
            boot,
        },
        MessageType::Release if request.server_id.is_none_or(|id| id == config.server_ip) => {
            Answer::Release
        }
        MessageType::Decline => Answer::Ignore("client declined (address conflict on the wire)"),
        _ => Answer::Ignore("message type Kiln does not answer"),
    }
}

/// proxyDHCP mode (PXE spec): only PXE/iPXE clients, never an address. DISCOVER on port 67 gets
/// an OFFER with boot info; REQUEST (on 4011, or on 67 naming this server) gets an ACK.
pub fn proxy(request: &Request, kind: ClientKind, config: &DhcpConfig) -> Answer {
    let boot = boot_file(kind, request.mac, config);
    if boot == BootFile::None {
        return Answer::Ignore("not a PXE client Kiln can boot");
    }
    match request.msg_type {
        MessageType::Discover => Answer::BootOnly {
            msg_type: MessageType::Offer,
            boot,
        },
        MessageType::Request | MessageType::Inform
            if request.server_id.is_none_or(|id| id == config.server_ip) =>
        {
            Answer::BootOnly {
                msg_type: MessageType::Ack,
                boot,
            }
        }
        _ => Answer::Ignore("message type the proxy does not answer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MacAddress;

    fn config() -> DhcpConfig {
        DhcpConfig::for_tests(Ipv4Addr::new(10, 0, 0, 1))
    }

    fn request(
        msg_type: MessageType,
        requested: Option<Ipv4Addr>,
        server_id: Option<Ipv4Addr>,
    ) -> Request {
        Request {
            msg_type,
            xid: 7,
            mac: MacAddress([0x52, 0x54, 0, 0, 0, 9]),
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            broadcast: true,
            requested_ip: requested,
            server_id,
            vendor_class: None,
            user_class: None,
            arch: None,
            ipxe_options: false,
        }
    }

    #[test]
    fn boot_files_by_client_kind() {
        let mac = MacAddress([0x52, 0x54, 0, 0, 0, 9]);
        let c = config();
        assert_eq!(
            boot_file(ClientKind::BiosPxe, mac, &c),
            BootFile::Tftp("undionly.kpxe".into())
        );
        assert_eq!(
            boot_file(ClientKind::UefiPxe, mac, &c),
            BootFile::Tftp("snponly.efi".into())
        );
        assert_eq!(
            boot_file(ClientKind::UefiHttp, mac, &c),
            BootFile::Http("http://10.0.0.1:8080/ipxe/snponly.efi".into())
        );
        assert_eq!(
            boot_file(ClientKind::Ipxe, mac, &c),
            BootFile::Http("http://10.0.0.1:8080/boot/52:54:00:00:00:09.ipxe".into())
        );
        assert_eq!(boot_file(ClientKind::Plain, mac, &c), BootFile::None);
        assert_eq!(
            boot_file(ClientKind::UnsupportedPxe(11), mac, &c),
            BootFile::None
        );
    }

    #[test]
    fn reservation_table() {
        let c = config();
        let me = Some(c.server_ip);
        let other = Some(Ipv4Addr::new(10, 0, 0, 2));
        let ip = Ipv4Addr::new(10, 0, 0, 50);
        let wrong = Ipv4Addr::new(10, 0, 0, 51);
        let cases = [
            (
                request(MessageType::Discover, None, None),
                Some(ip),
                "offer",
            ),
            (request(MessageType::Discover, None, None), None, "ignore"),
            (request(MessageType::Request, Some(ip), me), Some(ip), "ack"),
            (
                request(MessageType::Request, Some(ip), None),
                Some(ip),
                "ack",
            ),
            (
                request(MessageType::Request, Some(wrong), me),
                Some(ip),
                "nak",
            ),
            (request(MessageType::Request, None, me), Some(ip), "nak"),
            (
                request(MessageType::Request, Some(ip), other),
                Some(ip),
                "ignore",
            ),
            (request(MessageType::Request, Some(ip), me), None, "ignore"),
            (request(MessageType::Inform, None, None), Some(ip), "boot"),
            (request(MessageType::Release, None, me), Some(ip), "release"),
            (
                request(MessageType::Release, None, other),
                Some(ip),
                "ignore",
            ),
            (
                request(MessageType::Decline, Some(ip), me),
                Some(ip),
                "ignore",
            ),
        ];
        for (req, chosen, expected) in cases {
            let got = match reservation(&req, ClientKind::Plain, chosen, &c) {
                Answer::Offer { ip: got, .. } if Some(got) == chosen => "offer",
                Answer::Ack { ip: got, .. } if Some(got) == chosen => "ack",
                Answer::Nak(_) => "nak",
                Answer::Ignore(_) => "ignore",
                Answer::Release => "release",
                Answer::BootOnly {
                    msg_type: MessageType::Ack,
                    ..
                } => "boot",
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(got, expected, "{:?} with {chosen:?}", req.msg_type);
        }
    }

    #[test]
    fn proxy_only_answers_pxe_clients_and_never_with_an_address() {
        let c = config();
        let discover = request(MessageType::Discover, None, None);
        assert!(matches!(
            proxy(&discover, ClientKind::Plain, &c),
            Answer::Ignore(_)
        ));
        assert!(matches!(
            proxy(&discover, ClientKind::BiosPxe, &c),
            Answer::BootOnly {
                msg_type: MessageType::Offer,
                ..
            }
        ));
        let req = request(MessageType::Request, None, Some(c.server_ip));
        assert!(matches!(
            proxy(&req, ClientKind::UefiPxe, &c),
            Answer::BootOnly {
                msg_type: MessageType::Ack,
                ..
            }
        ));
        let foreign = request(MessageType::Request, None, Some(Ipv4Addr::new(10, 0, 0, 9)));
        assert!(matches!(
            proxy(&foreign, ClientKind::Ipxe, &c),
            Answer::Ignore(_)
        ));
    }
}
