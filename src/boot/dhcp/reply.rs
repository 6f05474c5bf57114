//! Builds the reply datagram for an [`Answer`]: the options a PXE client, iPXE or an OS's DHCP
//! client needs, padded to the 300-byte BOOTP minimum that some PXE ROMs insist on.

use super::DhcpConfig;
use super::answer::{Answer, BootFile};
use super::client::ClientKind;
use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode, UnknownOption};
use dhcproto::{Encodable, Encoder};
use std::net::Ipv4Addr;

/// Smallest BOOTP message; shorter replies are ignored by some PXE ROMs.
pub const MIN_REPLY_LEN: usize = 300;

/// The reply message for `answer`, or `None` when nothing is sent.
pub fn build(
    request: &v4::Message,
    kind: ClientKind,
    answer: &Answer,
    config: &DhcpConfig,
) -> Option<v4::Message> {
    let (msg_type, yiaddr, boot, with_lease) = match answer {
        Answer::Ignore(_) | Answer::Release => return None,
        Answer::Offer { ip, boot } => (MessageType::Offer, *ip, Some(boot), true),
        Answer::Ack { ip, boot } => (MessageType::Ack, *ip, Some(boot), true),
        Answer::BootOnly { msg_type, boot } => {
            (*msg_type, Ipv4Addr::UNSPECIFIED, Some(boot), false)
        }
        Answer::Nak(_) => (MessageType::Nak, Ipv4Addr::UNSPECIFIED, None, false),
    };
    let mut reply = v4::Message::new_with_id(
        request.xid(),
        Ipv4Addr::UNSPECIFIED,
        yiaddr,
        Ipv4Addr::UNSPECIFIED,
        request.giaddr(),
        request.chaddr(),
    );
    reply
        .set_opcode(v4::Opcode::BootReply)
        .set_flags(request.flags());
    if msg_type == MessageType::Ack && !request.ciaddr().is_unspecified() {
        reply.set_ciaddr(request.ciaddr());
    }
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(msg_type));
    opts.insert(DhcpOption::ServerIdentifier(config.server_ip));
    if msg_type != MessageType::Nak {
        if with_lease {
            opts.insert(DhcpOption::AddressLeaseTime(config.lease_secs));
            opts.insert(DhcpOption::Renewal(config.lease_secs / 2));
            opts.insert(DhcpOption::Rebinding(config.lease_secs / 8 * 7));
            opts.insert(DhcpOption::SubnetMask(prefix_mask(config.prefix)));
            if let Some(router) = config.router {
                opts.insert(DhcpOption::Router(vec![router]));
            }
            if !config.dns.is_empty() {
                opts.insert(DhcpOption::DomainNameServer(config.dns.clone()));
            }
            if let Some(domain) = &config.domain {
                opts.insert(DhcpOption::DomainName(domain.clone()));
            }
        }
    } else if let Answer::Nak(reason) = answer {
        opts.insert(DhcpOption::Message((*reason).to_string()));
    }
    // Relay agents need their option 82 back (RFC 3046).
    if let Some(relay) = request.opts().get(OptionCode::RelayAgentInformation) {
        reply.opts_mut().insert(relay.clone());
    }
    if let Some(boot) = boot {
        add_boot_options(&mut reply, kind, boot, config);
    }
    Some(reply)
}

fn add_boot_options(
    reply: &mut v4::Message,
    kind: ClientKind,
    boot: &BootFile,
    config: &DhcpConfig,
) {
    let file = match boot {
        BootFile::None => return,
        BootFile::Tftp(name) => name.clone(),
        BootFile::Http(url) => url.clone(),
    };
    reply.set_siaddr(config.server_ip);
    reply.set_fname_str(&file);
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::BootfileName(file.into_bytes()));
    match kind {
        // UEFI HTTP boot only accepts offers that say HTTPClient.
        ClientKind::UefiHttp => {
            opts.insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
        }
        _ => {
            opts.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
            // PXE vendor options: discovery control 8 = boot from the file given, no menus.
            opts.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
        }
    }
    if kind == ClientKind::Ipxe {
        // iPXE option 175, sub-option 176 (no-pxedhcp) = 1: do not wait ~3 s for proxyDHCP.
        opts.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![176, 1, 1],
        )));
    }
}

fn prefix_mask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(
        u32::MAX
            .checked_shl(32 - u32::from(prefix.min(32)))
            .unwrap_or(0),
    )
}

/// Encodes and pads to [`MIN_REPLY_LEN`].
pub fn encode(message: &v4::Message) -> Result<Vec<u8>, dhcproto::error::EncodeError> {
    let mut bytes = Vec::with_capacity(MIN_REPLY_LEN);
    message.encode(&mut Encoder::new(&mut bytes))?;
    if bytes.len() < MIN_REPLY_LEN {
        bytes.resize(MIN_REPLY_LEN, 0);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::{Decodable, Decoder};

    fn discover(vendor: &[u8], user: Option<&[u8]>) -> v4::Message {
        let mut msg = v4::Message::new_with_id(
            0x1234,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 1, 0, 1),
            &[0x52, 0x54, 0, 0, 0, 9],
        );
        msg.set_flags(v4::Flags::default().set_broadcast());
        msg.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        msg.opts_mut()
            .insert(DhcpOption::ClassIdentifier(vendor.to_vec()));
        if let Some(user) = user {
            msg.opts_mut().insert(DhcpOption::UserClass(user.to_vec()));
        }
        msg.opts_mut()
            .insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(82),
                vec![1, 3, b'p', b'o', b'r'],
            )));
        msg
    }

    fn roundtrip(msg: &v4::Message) -> (Vec<u8>, v4::Message) {
        let bytes = encode(msg).unwrap();
        let decoded = v4::Message::decode(&mut Decoder::new(&bytes)).unwrap();
        (bytes, decoded)
    }

    #[test]
    fn ipxe_offer_carries_everything_and_is_padded() {
        let config = DhcpConfig::for_tests(Ipv4Addr::new(10, 0, 0, 1));
        let request = discover(b"PXEClient:Arch:00000:UNDI:002001", Some(b"iPXE"));
        let answer = Answer::Offer {
            ip: Ipv4Addr::new(10, 0, 0, 50),
            boot: BootFile::Http("http://10.0.0.1:8080/boot/x.ipxe".into()),
        };
        let reply = build(&request, ClientKind::Ipxe, &answer, &config).unwrap();
        let (bytes, decoded) = roundtrip(&reply);
        assert!(bytes.len() >= MIN_REPLY_LEN);
        assert_eq!(decoded.opcode(), v4::Opcode::BootReply);
        assert_eq!(decoded.xid(), 0x1234);
        assert_eq!(decoded.yiaddr(), Ipv4Addr::new(10, 0, 0, 50));
        assert_eq!(decoded.siaddr(), config.server_ip);
        assert_eq!(
            decoded.giaddr(),
            Ipv4Addr::new(10, 1, 0, 1),
            "relay address kept"
        );
        assert!(decoded.flags().broadcast());
        assert_eq!(
            decoded.fname_str().unwrap().unwrap().trim_end_matches('\0'),
            "http://10.0.0.1:8080/boot/x.ipxe"
        );
        let opts = decoded.opts();
        assert_eq!(opts.msg_type(), Some(MessageType::Offer));
        assert_eq!(
            opts.get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(config.server_ip))
        );
        assert_eq!(
            opts.get(OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            opts.get(OptionCode::Router),
            Some(&DhcpOption::Router(vec![config.server_ip]))
        );
        assert_eq!(
            opts.get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(config.lease_secs))
        );
        assert!(opts.get(OptionCode::DomainNameServer).is_some());
        assert!(opts.get(OptionCode::DomainName).is_some());
        assert_eq!(
            opts.get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(
                b"http://10.0.0.1:8080/boot/x.ipxe".to_vec()
            ))
        );
        match opts.get(OptionCode::Unknown(175)) {
            Some(DhcpOption::Unknown(o)) => assert_eq!(o.data(), &[176, 1, 1]),
            other => panic!("option 175 missing: {other:?}"),
        }
        assert!(
            opts.get(OptionCode::RelayAgentInformation).is_some(),
            "option 82 echoed"
        );
    }

    #[test]
    fn plain_client_gets_no_boot_file_and_nak_has_no_lease() {
        let config = DhcpConfig::for_tests(Ipv4Addr::new(10, 0, 0, 1));
        let request = discover(b"udhcp 1.35.0", None);
        let answer = Answer::Ack {
            ip: Ipv4Addr::new(10, 0, 0, 50),
            boot: BootFile::None,
        };
        let (_, decoded) =
            roundtrip(&build(&request, ClientKind::Plain, &answer, &config).unwrap());
        assert!(decoded.opts().get(OptionCode::BootfileName).is_none());
        assert!(decoded.fname().is_none_or(|f| f.iter().all(|b| *b == 0)));
        let nak = build(&request, ClientKind::Plain, &Answer::Nak("no"), &config).unwrap();
        let (_, decoded) = roundtrip(&nak);
        assert_eq!(decoded.opts().msg_type(), Some(MessageType::Nak));
        assert!(decoded.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert_eq!(decoded.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(build(&request, ClientKind::Plain, &Answer::Ignore("x"), &config).is_none());
    }

    #[test]
    fn proxy_offer_has_no_address_but_pxe_vendor_class() {
        let config = DhcpConfig::for_tests(Ipv4Addr::new(10, 0, 0, 1));
        let request = discover(b"PXEClient:Arch:00007:UNDI:003000", None);
        let answer = Answer::BootOnly {
            msg_type: MessageType::Offer,
            boot: BootFile::Tftp("snponly.efi".into()),
        };
        let (_, decoded) =
            roundtrip(&build(&request, ClientKind::UefiPxe, &answer, &config).unwrap());
        assert_eq!(decoded.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(decoded.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert_eq!(
            decoded.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
        assert_eq!(
            decoded.fname_str().unwrap().unwrap().trim_end_matches('\0'),
            "snponly.efi"
        );
    }
}
