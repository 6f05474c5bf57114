//! A minimal IPv6 router-advertisement responder for the provisioning interface.
//!
//! iPXE waits about 13 s for a router advertisement before giving up on IPv6 (../shared/LAB.md).
//! Answering its router solicitations with an RA that offers nothing (router lifetime 0, no
//! prefixes, no managed/other flags) ends that wait at once without configuring any IPv6.

use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// The RA Kiln sends: no default router, no prefixes, the interface MAC as source link-layer
/// address. The kernel fills in the ICMPv6 checksum.
pub fn advertisement(mac: [u8; 6]) -> Vec<u8> {
    let mut packet = vec![
        ROUTER_ADVERTISEMENT,
        0,
        0,
        0, // type, code, checksum
        64,
        0,
        0,
        0, // cur hop limit, flags (M=0, O=0), router lifetime 0
        0,
        0,
        0,
        0, // reachable time
        0,
        0,
        0,
        0, // retrans timer
        1,
        1, // option: source link-layer address, length 1 (8 bytes)
    ];
    packet.extend_from_slice(&mac);
    packet
}

/// True for an ICMPv6 router solicitation.
pub fn is_router_solicitation(packet: &[u8]) -> bool {
    packet.first() == Some(&ROUTER_SOLICITATION) && packet.get(1) == Some(&0)
}

/// Opens the raw ICMPv6 socket on `interface` (joined to all-routers, hop limit 255 as ND needs).
pub fn bind(interface: &str, ifindex: u32) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    socket.bind_device(Some(interface.as_bytes()))?;
    socket.set_multicast_hops_v6(255)?;
    socket.set_unicast_hops_v6(255)?;
    socket.set_multicast_if_v6(ifindex)?;
    socket.join_multicast_v6(&ALL_ROUTERS, ifindex)?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    Ok(socket)
}

/// Answers router solicitations (and sends one unsolicited RA at start) until `shutdown`.
/// Runs on a blocking thread: raw sockets are few and this is not a hot path.
pub fn run(socket: Socket, ifindex: u32, mac: [u8; 6], shutdown: CancellationToken) {
    let ra = advertisement(mac);
    let all_nodes = SocketAddrV6::new(ALL_NODES, 0, 0, ifindex);
    if let Err(err) = socket.send_to(&ra, &all_nodes.into()) {
        tracing::warn!(error = %err, "cannot send router advertisement");
    }
    let mut buf = [0u8; 1500];
    while !shutdown.is_cancelled() {
        let Ok(len) = std::io::Read::read(&mut &socket, &mut buf) else {
            continue;
        };
        if is_router_solicitation(&buf[..len])
            && let Err(err) = socket.send_to(&ra, &all_nodes.into())
        {
            tracing::warn!(error = %err, "cannot send router advertisement");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_offers_nothing() {
        let ra = advertisement([0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(ra[0], ROUTER_ADVERTISEMENT);
        assert_eq!(ra[5], 0, "no managed/other flags");
        assert_eq!(
            &ra[6..8],
            &[0, 0],
            "router lifetime 0: not a default router"
        );
        assert_eq!(&ra[16..18], &[1, 1]);
        assert_eq!(&ra[18..], &[0x52, 0x54, 0, 1, 2, 3]);
        assert!(is_router_solicitation(&[133, 0, 0, 0]));
        assert!(!is_router_solicitation(&[134, 0]));
        assert!(!is_router_solicitation(&[]));
    }
}
