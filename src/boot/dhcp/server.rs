//! The DHCP socket loop: receive, decode (never panicking on hostile input), decide, reply, and
//! persist leases and timeline events in the store.

use super::answer::{self, Answer};
use super::client::{ClientKind, Request, classify};
use super::leases::LeaseTable;
use super::reply;
use super::{DhcpConfig, DhcpMode};
use crate::model::MacAddress;
use crate::store::{Lease, LeaseChange, Store, now_ms};
use dhcproto::v4::{self, MessageType};
use dhcproto::{Decodable, Decoder};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// How long an OFFERed address is held for the client's REQUEST.
const OFFER_HOLD_MS: i64 = 60_000;

/// Binds a UDP socket for DHCP on one interface only (SO_BINDTODEVICE), so Kiln never answers on
/// any other interface, with broadcast allowed. Returned as a non-blocking std socket so it can be
/// created on any thread (tests create it inside a network namespace) and handed to
/// `tokio::net::UdpSocket::from_std` on the runtime.
pub fn bind_socket(interface: &str, addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.bind_device(Some(interface.as_bytes()))?;
    socket.set_nonblocking(true)?;
    // A rack powering on at once sends hundreds of DISCOVERs in one burst; the default receive
    // buffer (~200 KiB, ~100 datagrams) would drop part of it. Root may exceed rmem_max.
    let buffer = 4 << 20;
    if nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBufForce, &buffer)
        .is_err()
    {
        socket.set_recv_buffer_size(buffer)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

pub struct DhcpServer {
    config: Arc<DhcpConfig>,
    store: Store,
    leases: Mutex<LeaseTable>,
    unknown_logged: Mutex<HashSet<MacAddress>>,
    /// Inventory addresses, re-read at most once per [`RESERVED_TTL_MS`]: a pool allocation must
    /// not hand out another node's address, and reading every node per packet would be O(nodes).
    reserved: tokio::sync::Mutex<(i64, Arc<HashSet<Ipv4Addr>>)>,
    /// Lease persistence and timeline events, written behind the reply by one task in order, so
    /// a client's DORA never waits for the disk.
    followups: tokio::sync::mpsc::UnboundedSender<Followup>,
    /// MAC → enrolled node (uuid, inventory address), cached for [`LOOKUP_TTL_MS`] so a DORA
    /// costs one store lookup, not four; a newly enrolled node is answered within that time.
    lookups: Mutex<HashMap<MacAddress, (i64, KnownNode)>>,
}

const LOOKUP_TTL_MS: i64 = 2000;

/// An enrolled node as DHCP needs it: uuid and inventory address; `None` for an unknown MAC.
type KnownNode = Option<(uuid::Uuid, Option<Ipv4Addr>)>;

/// A node timeline event: node, kind, detail.
type Event = (uuid::Uuid, &'static str, String);

/// What to persist after a reply went out.
struct Followup {
    request: Request,
    kind: ClientKind,
    answer: Answer,
    node: Option<uuid::Uuid>,
    lease_secs: u32,
}

const RESERVED_TTL_MS: i64 = 1000;

/// Datagrams handled at once per socket.
const MAX_IN_FLIGHT: usize = 256;

impl DhcpServer {
    /// Loads persisted leases so clients keep their addresses across restarts.
    pub async fn new(
        config: DhcpConfig,
        store: Store,
    ) -> Result<Arc<Self>, crate::store::StoreError> {
        let mut table = LeaseTable::default();
        for lease in store.leases().await? {
            table.hold(lease.ip, lease.mac, lease.expires_at);
        }
        let (followups, mut queue) = tokio::sync::mpsc::unbounded_channel::<Followup>();
        let server = Arc::new(Self {
            config: Arc::new(config),
            store,
            leases: Mutex::new(table),
            unknown_logged: Mutex::new(HashSet::new()),
            reserved: tokio::sync::Mutex::new((i64::MIN, Arc::new(HashSet::new()))),
            followups,
            lookups: Mutex::new(HashMap::new()),
        });
        // The writer holds a weak reference: it ends when the server is dropped.
        let weak = Arc::downgrade(&server);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while queue.recv_many(&mut batch, 512).await > 0 {
                let Some(server) = weak.upgrade() else { return };
                let (changes, events): (Vec<_>, Vec<_>) =
                    batch.drain(..).map(|work| server.followup(&work)).unzip();
                let changes: Vec<LeaseChange> = changes.into_iter().flatten().collect();
                let events: Vec<_> = events.into_iter().flatten().collect();
                if let Err(err) = server.store.apply_dhcp(&changes, &events).await {
                    tracing::warn!(error = %err, leases = changes.len(), "cannot persist DHCP leases and events");
                }
            }
        });
        Ok(server)
    }

    /// Serves one socket until `shutdown`. `proxy_port` marks the PXE port-4011 socket, whose
    /// replies go back to the sender.
    pub async fn run(
        self: Arc<Self>,
        socket: UdpSocket,
        proxy_port: bool,
        shutdown: CancellationToken,
    ) {
        let socket = Arc::new(socket);
        // Datagrams are handled concurrently (store lookups overlap); the lease table's lock keeps
        // address decisions consistent. The bound keeps a flood from exhausting memory.
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        let mut buf = vec![0u8; 1500];
        loop {
            let (len, source) = tokio::select! {
                _ = shutdown.cancelled() => return,
                received = socket.recv_from(&mut buf) => match received {
                    Ok(pair) => pair,
                    Err(err) => {
                        tracing::warn!(error = %err, "DHCP receive failed");
                        continue;
                    }
                },
            };
            let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                return;
            };
            let datagram = buf[..len].to_vec();
            let (server, socket) = (Arc::clone(&self), Arc::clone(&socket));
            tokio::spawn(async move {
                let _permit = permit;
                let Some((bytes, destination)) = server.handle(&datagram, source, proxy_port).await
                else {
                    return;
                };
                if let Err(err) = socket.send_to(&bytes, destination).await {
                    tracing::warn!(error = %err, %destination, "DHCP send failed");
                }
            });
        }
    }

    /// Decides the reply to one datagram, if any, and where to send it.
    pub async fn handle(
        &self,
        datagram: &[u8],
        source: SocketAddr,
        proxy_port: bool,
    ) -> Option<(Vec<u8>, SocketAddr)> {
        let message = match decode(datagram) {
            Some(message) => message,
            None => {
                tracing::debug!(%source, len = datagram.len(), "dropped malformed DHCP datagram");
                return None;
            }
        };
        let request = match Request::from_message(&message) {
            Ok(request) => request,
            Err(reason) => {
                tracing::debug!(%source, %reason, "dropped DHCP datagram");
                return None;
            }
        };
        let kind = classify(&request);
        let (answer, node_uuid, lease_secs) = match self.config.mode {
            DhcpMode::Proxy => {
                let node = self.known_node(request.mac).await?;
                (
                    answer::proxy(&request, kind, &self.config),
                    node.map(|n| n.0),
                    self.config.lease_secs,
                )
            }
            DhcpMode::Reservation => self.reservation(&request, kind).await?,
        };
        tracing::debug!(mac = %request.mac, msg = ?request.msg_type, ?kind, ?answer, "DHCP decision");
        let reply = reply::build(&message, kind, &answer, &self.config);
        let destination = destination(&request, &answer, source, proxy_port);
        // The lease is already held in memory; its persistence follows the reply.
        if answer == Answer::Release
            && let Ok(mut table) = self.leases.lock()
        {
            table.release(request.mac);
        }
        let _ = self.followups.send(Followup {
            request,
            kind,
            answer,
            node: node_uuid,
            lease_secs,
        });
        let reply = reply?;
        let bytes = match reply::encode(&reply) {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::warn!(error = %err, "cannot encode DHCP reply");
                return None;
            }
        };
        Some((bytes, destination))
    }

    /// The node owning `mac`: `Some(Some(..))` when enrolled, `Some(None)` for an unknown MAC
    /// with discovery on, `None` to stay silent.
    async fn known_node(&self, mac: MacAddress) -> Option<KnownNode> {
        let now = now_ms();
        let cached = self.lookups.lock().ok().and_then(|cache| {
            cache
                .get(&mac)
                .filter(|(at, _)| now - at < LOOKUP_TTL_MS)
                .map(|(_, found)| *found)
        });
        let found = match cached {
            Some(found) => Ok(found),
            None => {
                let found = self.store.node_by_mac(mac).await.map(|node| {
                    node.map(|n| (n.uuid, n.spec.network.as_ref().map(|net| net.address)))
                });
                if let (Ok(found), Ok(mut cache)) = (&found, self.lookups.lock()) {
                    cache.insert(mac, (now, *found));
                }
                found
            }
        };
        match found {
            Ok(Some(node)) => Some(Some(node)),
            Ok(None) if self.config.discovery => Some(None),
            Ok(None) => {
                if self
                    .unknown_logged
                    .lock()
                    .map(|mut seen| seen.insert(mac))
                    .unwrap_or(false)
                {
                    tracing::info!(%mac, "DHCP request from an unknown MAC ignored (discovery is off)");
                }
                None
            }
            Err(err) => {
                tracing::warn!(error = %err, %mac, "node lookup failed; not answering");
                None
            }
        }
    }

    async fn reservation(
        &self,
        request: &Request,
        kind: ClientKind,
    ) -> Option<(Answer, Option<uuid::Uuid>, u32)> {
        let node = self.known_node(request.mac).await?;
        let (uuid, reservation, pool, lease_secs) = match node {
            Some((uuid, reservation)) => (
                Some(uuid),
                reservation,
                self.config.pool,
                self.config.lease_secs,
            ),
            None => (
                None,
                None,
                self.config.discovery_pool,
                self.config.discovery_lease_secs,
            ),
        };
        let ip = match request.msg_type {
            MessageType::Discover | MessageType::Request => {
                let reserved = if reservation.is_none() {
                    self.reserved_addresses().await
                } else {
                    Arc::default()
                };
                let now = now_ms();
                let hold = if request.msg_type == MessageType::Discover {
                    OFFER_HOLD_MS
                } else {
                    i64::from(lease_secs) * 1000
                };
                let assigned = match self.leases.lock() {
                    Ok(mut table) => table.assign(
                        request.mac,
                        reservation,
                        pool.as_ref(),
                        &reserved,
                        now,
                        now + hold,
                    ),
                    Err(_) => return None,
                };
                match assigned {
                    Ok(ip) => Some(ip),
                    Err(err) => {
                        tracing::warn!(mac = %request.mac, error = %err, "no address for client");
                        None
                    }
                }
            }
            _ => self.leases.lock().ok()?.address_of(request.mac),
        };
        Some((
            answer::reservation(request, kind, ip, &self.config),
            uuid,
            lease_secs,
        ))
    }

    /// Inventory addresses of all nodes: never handed out from the pool to anyone else.
    async fn reserved_addresses(&self) -> Arc<HashSet<Ipv4Addr>> {
        let mut cached = self.reserved.lock().await;
        let now = now_ms();
        if now.saturating_sub(cached.0) >= RESERVED_TTL_MS {
            match self.store.list_nodes().await {
                Ok(nodes) => {
                    let set = nodes
                        .iter()
                        .filter_map(|n| n.spec.network.as_ref().map(|net| net.address))
                        .collect();
                    *cached = (now, Arc::new(set));
                }
                Err(err) => tracing::warn!(error = %err, "cannot read reserved addresses"),
            }
        }
        Arc::clone(&cached.1)
    }

    /// What the answer changes in the store (a lease written or released) and the node's
    /// timeline event, applied in batches by the writer task.
    fn followup(&self, work: &Followup) -> (Option<LeaseChange>, Option<Event>) {
        let change = match &work.answer {
            Answer::Ack { ip, .. } => Some(LeaseChange::Hold(Lease {
                ip: *ip,
                mac: work.request.mac,
                node_uuid: work.node,
                expires_at: now_ms() + i64::from(work.lease_secs) * 1000,
                discovered: work.node.is_none(),
            })),
            Answer::Release => Some(LeaseChange::Release(work.request.mac)),
            _ => None,
        };
        let kind = work.kind;
        let event = match &work.answer {
            Answer::Offer { ip, boot } => {
                Some(("dhcp-offer", format!("{ip} to {kind:?}, boot {boot:?}")))
            }
            Answer::Ack { ip, boot } => {
                Some(("dhcp-ack", format!("{ip} to {kind:?}, boot {boot:?}")))
            }
            Answer::BootOnly { msg_type, boot } => Some((
                "dhcp-boot-info",
                format!("{msg_type:?} to {kind:?}, boot {boot:?}"),
            )),
            Answer::Nak(reason) => Some(("dhcp-nak", (*reason).to_string())),
            _ => None,
        };
        (
            change,
            work.node
                .zip(event)
                .map(|(uuid, (kind, detail))| (uuid, kind, detail)),
        )
    }
}

/// Decodes a datagram; any decoder panic (dhcproto has debug assertions on hostile input) is
/// caught and treated as a malformed packet.
pub fn decode(datagram: &[u8]) -> Option<v4::Message> {
    std::panic::catch_unwind(|| v4::Message::decode(&mut Decoder::new(datagram)).ok())
        .ok()
        .flatten()
}

/// RFC 2131 §4.1: relay → relay port 67; the PXE 4011 port → back to the sender; a client that
/// already has an address and did not ask for broadcast → unicast; otherwise broadcast.
fn destination(
    request: &Request,
    answer: &Answer,
    source: SocketAddr,
    proxy_port: bool,
) -> SocketAddr {
    if !request.giaddr.is_unspecified() {
        return SocketAddr::V4(SocketAddrV4::new(request.giaddr, 67));
    }
    if proxy_port {
        return source;
    }
    if !matches!(answer, Answer::Nak(_)) && !request.ciaddr.is_unspecified() && !request.broadcast {
        return SocketAddr::V4(SocketAddrV4::new(request.ciaddr, 68));
    }
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes never panic the decode path.
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Some(message) = decode(&bytes) {
                let _ = Request::from_message(&message).map(|r| classify(&r));
            }
        }

        /// A valid header followed by random options never panics either.
        #[test]
        fn decoding_random_options_never_panics(options in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = vec![0u8; 236];
            bytes[0] = 1;
            bytes[1] = 1;
            bytes[2] = 6;
            bytes.extend_from_slice(&[99, 130, 83, 99]);
            bytes.extend_from_slice(&options);
            if let Some(message) = decode(&bytes) {
                let _ = Request::from_message(&message).map(|r| classify(&r));
            }
        }
    }
}
