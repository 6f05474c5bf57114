//! The power-state sync reconciler against real OpenIPMI `ipmi_sim` BMCs: it records every node's
//! real power state, a plain reason for BMCs it cannot read, and reports drift.

#[path = "peers/ipmi_sim.rs"]
mod ipmi_sim;

use ipmi_sim::IpmiSim;
use kiln::bmc::guard::GuardPolicy;
use kiln::bmc::registry::{Drivers, Registry, sync_power_once};
use kiln::bmc::{Bmc, PowerAction};
use kiln::store::Store;
use std::sync::Arc;
use std::time::Duration;

fn node(name: &str, n: u8, port: u16, user: &str, password: &str) -> String {
    format!(
        "  - name: {name}\n    bmc: {{kind: ipmi, address: 127.0.0.1, port: {port}, username: {user}, password: '{password}', cipher_suite: 3}}\n    nics: [{{mac: '52:54:00:78:00:0{n}'}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_records_power_unreachable_reasons_and_drift() {
    let (a, b, c) = (IpmiSim::start(), IpmiSim::start(), IpmiSim::start());
    let spec = a.spec();
    let (user, password) = (spec.username.clone(), spec.password.expose().to_string());
    let closed = ipmi_sim::free_udp_port();
    let inventory = format!(
        "nodes:\n{}{}{}{}",
        node("a", 1, a.port, &user, &password),
        node("b", 2, b.port, &user, &password),
        node("gone", 3, closed, &user, &password),
        node("badpw", 4, c.port, &user, "Wrong-Pw-123"),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    store
        .enroll(
            &kiln::inventory::parse("rack.yaml", &inventory)
                .unwrap()
                .nodes,
            false,
        )
        .await
        .unwrap();
    let policy = GuardPolicy {
        attempts: 1,
        timeout: Duration::from_secs(10),
        ..GuardPolicy::default()
    };
    let registry = Registry::new(Arc::new(Drivers), policy);

    let report = sync_power_once(&store, &registry, 4).await.unwrap();
    assert_eq!((report.checked, report.unreachable), (4, 2), "{report:?}");
    for name in ["a", "b"] {
        let n = store.node(name).await.unwrap();
        assert_eq!(n.power_state.as_deref(), Some("off"), "{name}: {n:?}");
        assert_eq!(n.bmc_error, None);
    }
    let gone = store.node("gone").await.unwrap();
    assert_eq!(gone.power_state, None);
    assert!(
        gone.bmc_error
            .as_deref()
            .is_some_and(|e| e.starts_with("BMC ")),
        "{:?}",
        gone.bmc_error
    );
    let badpw = store.node("badpw").await.unwrap();
    assert_eq!(badpw.bmc_error.as_deref(), Some("wrong BMC credentials"));

    // Someone powers `a` on behind Kiln's back: the next pass records it and reports drift.
    let bmc = registry
        .for_node(&store.node("a").await.unwrap())
        .await
        .unwrap();
    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(
        a.power().as_deref(),
        Some("1"),
        "ipmi_sim's chassis really is on"
    );
    let report = sync_power_once(&store, &registry, 4).await.unwrap();
    assert_eq!(report.drifted, vec!["a".to_string()]);
    assert_eq!(
        store.node("a").await.unwrap().power_state.as_deref(),
        Some("on")
    );
    assert_eq!(
        store.node("b").await.unwrap().power_state.as_deref(),
        Some("off")
    );

    // Nothing of the password reaches the stored reasons.
    for name in ["a", "b", "gone", "badpw"] {
        let n = store.node(name).await.unwrap();
        let reason = n.bmc_error.unwrap_or_default();
        assert!(
            !reason.contains(&password) && !reason.contains("Wrong-Pw-123"),
            "{reason}"
        );
    }
}
