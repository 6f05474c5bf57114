//! The simulated servers' DHCP client: one socket on the simulator's interface (port 68, bound to
//! the device) shared by every server, replies dispatched by transaction id. Each server speaks
//! as its firmware would — BIOS PXE, UEFI PXE or iPXE, from its own MAC — so Kiln's DHCP server
//! sees exactly what real hardware sends (the captured options in shared/LAB.md).

use crate::model::MacAddress;
use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode, UnknownOption};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Who is asking: decides the vendor class, architecture and user class sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asker {
    BiosPxe,
    UefiPxe,
    /// iPXE (after the PXE ROM chainloaded it), arch 0 or 7.
    Ipxe {
        uefi: bool,
    },
}

/// What a finished DORA gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub server: Ipv4Addr,
    pub next_server: Ipv4Addr,
    pub filename: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("no DHCPOFFER within {0:?}")]
    NoOffer(Duration),
    #[error("no DHCPACK within {0:?}")]
    NoAck(Duration),
    #[error("the server sent DHCPNAK")]
    Nak,
    #[error("DHCP socket")]
    Io(#[source] std::io::Error),
    #[error("cannot encode the DHCP message: {0}")]
    Encode(String),
}

type Waiters = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<v4::Message>>>>;

/// Replies (broadcast) arrive on a UDP socket owned by the receive loop.
pub struct DhcpLink {
    /// Sends requests as whole Ethernet frames, as firmware does: from the server's own MAC and
    /// from 0.0.0.0 (a UDP socket would pick a source address of the namespace, which the
    /// receiving side drops as a martian when it is its own).
    raw: socket2::Socket,
    broadcast: socket2::SockAddr,
    waiters: Waiters,
}

/// A send-only AF_PACKET socket on `interface` and its broadcast link address.
fn packet_socket(interface: &str) -> std::io::Result<(socket2::Socket, socket2::SockAddr)> {
    use nix::libc;
    let index = nix::net::if_::if_nametoindex(interface).map_err(std::io::Error::from)?;
    // Protocol 0: the socket receives nothing; replies come to the UDP socket.
    let raw = socket2::Socket::new(socket2::Domain::PACKET, socket2::Type::RAW, None)?;
    let mut storage = socket2::SockAddrStorage::zeroed();
    // SAFETY: sockaddr_ll is a sockaddr type of this platform (it fits the storage), and the
    // length given is its size.
    let address = unsafe {
        let link = storage.view_as::<libc::sockaddr_ll>();
        link.sll_family = libc::AF_PACKET as u16;
        link.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        link.sll_ifindex = index as i32;
        link.sll_halen = 6;
        link.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        socket2::SockAddr::new(storage, std::mem::size_of::<libc::sockaddr_ll>() as u32)
    };
    Ok((raw, address))
}

/// The Internet checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet (broadcast, from `mac`) + IPv4 (0.0.0.0 → 255.255.255.255) + UDP (68 → 67) around a
/// DHCP message, as a PXE ROM sends it.
pub fn frame(mac: MacAddress, dhcp: &[u8]) -> Vec<u8> {
    let udp_len = 8 + dhcp.len();
    let ip_len = 20 + udp_len;
    let mut out = Vec::with_capacity(14 + ip_len);
    out.extend_from_slice(&[0xff; 6]);
    out.extend_from_slice(&mac.0);
    out.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[16..20].copy_from_slice(&[255; 4]);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    out.extend_from_slice(&ip);
    out.extend_from_slice(&68u16.to_be_bytes());
    out.extend_from_slice(&67u16.to_be_bytes());
    out.extend_from_slice(&(udp_len as u16).to_be_bytes());
    // UDP checksum 0: none (allowed over IPv4).
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(dhcp);
    out
}

impl DhcpLink {
    /// Binds 0.0.0.0:68 on `interface` and starts the receive loop (it ends with the link).
    pub fn bind(interface: &str) -> std::io::Result<Arc<DhcpLink>> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        socket.set_broadcast(true)?;
        socket.bind_device(Some(interface.as_bytes()))?;
        socket.set_recv_buffer_size(4 << 20)?;
        socket.set_nonblocking(true)?;
        socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())?;
        let socket = Arc::new(UdpSocket::from_std(socket.into())?);
        let waiters: Waiters = Arc::default();
        let (raw, broadcast) = packet_socket(interface)?;
        let link = Arc::new(DhcpLink {
            raw,
            broadcast,
            waiters: Arc::clone(&waiters),
        });
        let weak = Arc::downgrade(&link);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                if weak.strong_count() == 0 {
                    break;
                }
                let Some(message) = decode(&buf[..len]) else {
                    tracing::debug!(%from, len, "malformed DHCP datagram dropped");
                    continue;
                };
                if message.opcode() != v4::Opcode::BootReply {
                    continue;
                }
                let sender = waiters
                    .lock()
                    .ok()
                    .and_then(|w| w.get(&message.xid()).cloned());
                if let Some(sender) = sender {
                    let _ = sender.send(message);
                }
            }
        });
        Ok(link)
    }

    /// DISCOVER → OFFER → REQUEST → ACK for `mac`, each step waiting up to `wait`.
    pub async fn lease(
        &self,
        mac: MacAddress,
        asker: Asker,
        wait: Duration,
    ) -> Result<Lease, DhcpError> {
        let xid = rand::random::<u32>();
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.insert(xid, tx);
        }
        let result = self.exchange(xid, mac, asker, wait, &mut rx).await;
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.remove(&xid);
        }
        result
    }

    async fn exchange(
        &self,
        xid: u32,
        mac: MacAddress,
        asker: Asker,
        wait: Duration,
        rx: &mut mpsc::UnboundedReceiver<v4::Message>,
    ) -> Result<Lease, DhcpError> {
        self.send(mac, &request_message(xid, mac, asker, None))?;
        let offer = receive(rx, wait, MessageType::Offer)
            .await
            .ok_or(DhcpError::NoOffer(wait))?;
        let server = server_id(&offer).unwrap_or(offer.siaddr());
        self.send(
            mac,
            &request_message(xid, mac, asker, Some((offer.yiaddr(), server))),
        )?;
        let ack = receive_ack(rx, wait).await?;
        Ok(lease_from(&ack, server))
    }

    /// One small frame on a packet socket: the send does not block for long.
    fn send(&self, mac: MacAddress, message: &v4::Message) -> Result<(), DhcpError> {
        let mut bytes = Vec::new();
        message
            .encode(&mut Encoder::new(&mut bytes))
            .map_err(|e| DhcpError::Encode(e.to_string()))?;
        self.raw
            .send_to(&frame(mac, &bytes), &self.broadcast)
            .map(drop)
            .map_err(DhcpError::Io)
    }
}

fn decode(datagram: &[u8]) -> Option<v4::Message> {
    // dhcproto can hit debug assertions on hostile input (shared/CRATES.md).
    std::panic::catch_unwind(|| v4::Message::decode(&mut Decoder::new(datagram)).ok())
        .ok()
        .flatten()
}

async fn receive(
    rx: &mut mpsc::UnboundedReceiver<v4::Message>,
    wait: Duration,
    wanted: MessageType,
) -> Option<v4::Message> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let message = tokio::time::timeout_at(deadline, rx.recv()).await.ok()??;
        if message.opts().msg_type() == Some(wanted) {
            return Some(message);
        }
    }
}

async fn receive_ack(
    rx: &mut mpsc::UnboundedReceiver<v4::Message>,
    wait: Duration,
) -> Result<v4::Message, DhcpError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let message = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .ok()
            .flatten()
            .ok_or(DhcpError::NoAck(wait))?;
        match message.opts().msg_type() {
            Some(MessageType::Ack) => return Ok(message),
            Some(MessageType::Nak) => return Err(DhcpError::Nak),
            _ => {}
        }
    }
}

fn server_id(message: &v4::Message) -> Option<Ipv4Addr> {
    match message.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

/// The DISCOVER (no `selected`) or REQUEST a firmware of kind `asker` sends.
pub fn request_message(
    xid: u32,
    mac: MacAddress,
    asker: Asker,
    selected: Option<(Ipv4Addr, Ipv4Addr)>,
) -> v4::Message {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut message = v4::Message::new_with_id(
        xid,
        unspecified,
        unspecified,
        unspecified,
        unspecified,
        &mac.0,
    );
    message.set_flags(v4::Flags::default().set_broadcast());
    let opts = message.opts_mut();
    match selected {
        None => {
            opts.insert(DhcpOption::MessageType(MessageType::Discover));
        }
        Some((address, server)) => {
            opts.insert(DhcpOption::MessageType(MessageType::Request));
            opts.insert(DhcpOption::RequestedIpAddress(address));
            opts.insert(DhcpOption::ServerIdentifier(server));
        }
    }
    opts.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::BootfileName,
        OptionCode::TFTPServerName,
    ]));
    let (vendor, arch): (&[u8], u16) = match asker {
        Asker::BiosPxe | Asker::Ipxe { uefi: false } => (b"PXEClient:Arch:00000:UNDI:002001", 0),
        Asker::UefiPxe | Asker::Ipxe { uefi: true } => (b"PXEClient:Arch:00007:UNDI:003000", 7),
    };
    opts.insert(DhcpOption::ClassIdentifier(vendor.to_vec()));
    opts.insert(DhcpOption::ClientSystemArchitecture(arch.into()));
    if let Asker::Ipxe { .. } = asker {
        opts.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        // iPXE's encapsulated options (175): bus id / feature flags; presence is what matters.
        opts.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![0xb1, 0x05, 0x01, 0x10, 0xec, 0x81, 0x39],
        )));
    }
    message
}

/// The lease an ACK describes (`server` from the OFFER when the ACK omits option 54).
pub fn lease_from(ack: &v4::Message, server: Ipv4Addr) -> Lease {
    let opts = ack.opts();
    let prefix = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => u32::from(*mask).count_ones() as u8,
        _ => 24,
    };
    let filename = match opts.get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(name)) => Some(name.clone()),
        _ => None,
    }
    .or_else(|| Some(ack.fname().unwrap_or_default().to_vec()))
    .map(|bytes| {
        String::from_utf8_lossy(&bytes)
            .trim_end_matches('\0')
            .to_string()
    })
    .filter(|name| !name.is_empty());
    Lease {
        address: ack.yiaddr(),
        prefix,
        server: server_id(ack).unwrap_or(server),
        next_server: ack.siaddr(),
        filename,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::dhcp::client::{ClientKind, Request, classify};

    const MAC: MacAddress = MacAddress([0x52, 0x54, 0, 0x5e, 0, 7]);

    #[test]
    fn kiln_classifies_each_asker_as_the_firmware_it_imitates() {
        for (asker, kind) in [
            (Asker::BiosPxe, ClientKind::BiosPxe),
            (Asker::UefiPxe, ClientKind::UefiPxe),
            (Asker::Ipxe { uefi: false }, ClientKind::Ipxe),
            (Asker::Ipxe { uefi: true }, ClientKind::Ipxe),
        ] {
            let message = request_message(9, MAC, asker, None);
            let mut bytes = Vec::new();
            message.encode(&mut Encoder::new(&mut bytes)).unwrap();
            let request = Request::from_message(&decode(&bytes).unwrap()).unwrap();
            assert_eq!(classify(&request), kind, "{asker:?}");
            assert_eq!(request.mac, MAC);
            assert!(
                request.broadcast,
                "replies must be broadcast to the shared socket"
            );
            assert_eq!(request.msg_type, MessageType::Discover);
        }
        let selected = (Ipv4Addr::new(10, 66, 1, 7), Ipv4Addr::new(10, 66, 0, 1));
        let request = request_message(9, MAC, Asker::BiosPxe, Some(selected));
        let parsed = Request::from_message(&request).unwrap();
        assert_eq!(parsed.msg_type, MessageType::Request);
        assert_eq!(parsed.requested_ip, Some(selected.0));
        assert_eq!(parsed.server_id, Some(selected.1));
    }

    #[test]
    fn a_lease_reads_address_mask_server_and_boot_file() {
        let unspecified = Ipv4Addr::UNSPECIFIED;
        let mut ack = v4::Message::new_with_id(
            1,
            unspecified,
            Ipv4Addr::new(10, 66, 1, 7),
            Ipv4Addr::new(10, 66, 0, 1),
            unspecified,
            &MAC.0,
        );
        ack.set_opcode(v4::Opcode::BootReply);
        ack.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Ack));
        ack.opts_mut()
            .insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 0, 0)));
        ack.opts_mut()
            .insert(DhcpOption::BootfileName(b"undionly.kpxe".to_vec()));
        let lease = lease_from(&ack, Ipv4Addr::new(10, 66, 0, 1));
        assert_eq!(lease.address, Ipv4Addr::new(10, 66, 1, 7));
        assert_eq!(lease.prefix, 16);
        assert_eq!(lease.next_server, Ipv4Addr::new(10, 66, 0, 1));
        assert_eq!(lease.filename.as_deref(), Some("undionly.kpxe"));
        // No file at all: none.
        ack.opts_mut().remove(OptionCode::BootfileName);
        assert_eq!(lease_from(&ack, Ipv4Addr::LOCALHOST).filename, None);
    }

    #[test]
    fn frames_carry_the_macs_addresses_and_a_valid_ip_checksum() {
        let frame = frame(MAC, &[1, 2, 3]);
        assert_eq!(&frame[..6], &[0xff; 6]);
        assert_eq!(&frame[6..12], &MAC.0);
        let ip = &frame[14..34];
        assert_eq!(checksum(ip), 0, "a header with its checksum sums to zero");
        assert_eq!(&ip[12..16], &[0; 4]);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 20 + 8 + 3);
        assert_eq!(&frame[34..38], &[0, 68, 0, 67]);
        assert_eq!(&frame[42..], &[1, 2, 3]);
    }

    #[test]
    fn garbage_is_dropped_not_a_panic() {
        assert!(decode(&[0xff; 7]).is_none());
        assert!(decode(&[]).is_none());
    }
}
