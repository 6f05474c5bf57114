//! Kiln's DHCP server against busybox udhcpc, inside network namespaces the test builds itself.

mod common;

use common::netns::{Lab, udhcpc};
use kiln::boot::dhcp::{DhcpConfig, DhcpMode, DhcpServer, Pool, bind_socket};
use kiln::store::Store;
use std::net::Ipv4Addr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

const MAC_A: &str = "52:54:00:77:00:01";
const MAC_B: &str = "52:54:00:77:00:02";
const MAC_C: &str = "52:54:00:77:00:03";
const MAC_UNKNOWN: &str = "52:54:00:77:00:99";

fn inventory(lab: &Lab) -> String {
    format!(
        "defaults:\n  bmc: {{kind: ipmi, username: u, password: p}}\nnodes:\n\
         - name: a\n    bmc: {{address: 10.1.0.1}}\n    nics: [{{mac: '{MAC_A}'}}]\n    network: {{address: {}, prefix: 24}}\n\
         - name: b\n    bmc: {{address: 10.1.0.2}}\n    nics: [{{mac: '{MAC_B}'}}]\n\
         - name: c\n    bmc: {{address: 10.1.0.3}}\n    nics: [{{mac: '{MAC_C}'}}]\n",
        lab.addr(50)
    )
    .replace("\n- name", "\n  - name")
}

fn config(lab: &Lab, discovery: bool) -> DhcpConfig {
    let server: Ipv4Addr = lab.server_ip().parse().unwrap();
    let mut config = DhcpConfig::new(
        DhcpMode::Reservation,
        server,
        24,
        format!("http://{server}:8080"),
    );
    config.router = Some(server);
    config.pool = Some(Pool {
        first: lab.addr(100).parse().unwrap(),
        last: lab.addr(110).parse().unwrap(),
    });
    config.discovery = discovery;
    config.discovery_pool = Some(Pool {
        first: lab.addr(200).parse().unwrap(),
        last: lab.addr(210).parse().unwrap(),
    });
    config
}

async fn start(lab: &Lab, store: &Store, discovery: bool) -> CancellationToken {
    let server = DhcpServer::new(config(lab, discovery), store.clone())
        .await
        .unwrap();
    let socket = lab.in_server_ns(|| bind_socket("br0", "0.0.0.0:67".parse().unwrap()).unwrap());
    let socket = tokio::net::UdpSocket::from_std(socket).unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(Arc::clone(&server).run(socket, false, shutdown.clone()));
    shutdown
}

/// Leases are persisted just behind the reply: poll until `count` are stored.
async fn stored_leases(store: &Store, count: usize) -> Vec<kiln::store::Lease> {
    for _ in 0..100 {
        let leases = store.leases().await.unwrap();
        if leases.len() >= count {
            return leases;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store.leases().await.unwrap()
}

async fn lease_for(ns: &str, tries: u32) -> Option<String> {
    let ns = ns.to_string();
    tokio::task::spawn_blocking(move || udhcpc(&ns, tries))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn reservations_pool_unknown_macs_and_restart() {
    let mut lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    let nodes = kiln::inventory::parse("rack.yaml", &inventory(&lab))
        .unwrap()
        .nodes;
    store.enroll(&nodes, false).await.unwrap();
    let (a, b, c, unknown) = (
        lab.add_client(MAC_A),
        lab.add_client(MAC_B),
        lab.add_client(MAC_C),
        lab.add_client(MAC_UNKNOWN),
    );
    let shutdown = start(&lab, &store, false).await;

    assert_eq!(
        lease_for(&a, 3).await.as_deref(),
        Some(lab.addr(50).as_str()),
        "inventory reservation"
    );
    let ip_b = lease_for(&b, 3).await.expect("pool address for b");
    let ip_c = lease_for(&c, 3).await.expect("pool address for c");
    assert_ne!(ip_b, ip_c, "two clients never share an address");
    for ip in [&ip_b, &ip_c] {
        let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
        assert!((100..=110).contains(&last), "{ip} from the pool");
    }
    assert_eq!(
        lease_for(&unknown, 2).await,
        None,
        "unknown MAC gets no answer"
    );

    let leases = stored_leases(&store, 3).await;
    assert_eq!(leases.len(), 3);
    let events = store.events("a").await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert!(
        kinds.contains(&"dhcp-offer") && kinds.contains(&"dhcp-ack"),
        "{kinds:?}"
    );

    // Restart: a new server on the same store hands b the same address.
    shutdown.cancel();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let shutdown = start(&lab, &store, false).await;
    assert_eq!(lease_for(&c, 3).await.as_deref(), Some(ip_c.as_str()));
    assert_eq!(lease_for(&b, 3).await.as_deref(), Some(ip_b.as_str()));
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_gives_unknown_macs_a_short_lease() {
    let mut lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    let unknown = lab.add_client(MAC_UNKNOWN);
    let shutdown = start(&lab, &store, true).await;
    let ip = lease_for(&unknown, 3).await.expect("discovery lease");
    assert_eq!(ip, lab.addr(200));
    let leases = stored_leases(&store, 1).await;
    assert_eq!(leases.len(), 1);
    assert!(leases[0].discovered && leases[0].node_uuid.is_none());
    shutdown.cancel();
}
