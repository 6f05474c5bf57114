//! Store behaviour, run as one suite against SQLite and against a real PostgreSQL server.

mod common;

use kiln::conductor::{BasicProvisioner, Conductor};
use kiln::inventory;
use kiln::model::{ProvisionState, ServicesStatus, Verb};
use kiln::store::{Store, StoreError};
use std::sync::Arc;

const RACK: &str = "nodes:
  - name: n1
    bmc: {kind: ipmi, address: 10.0.0.1, username: admin, password: pw-one}
    nics: [{mac: '52:54:00:00:00:01'}]
  - name: n2
    bmc: {kind: redfish, address: 'http://10.0.0.2:8000', username: admin, password: pw-two}
    nics: [{mac: '52:54:00:00:00:02'}, {mac: '52:54:00:00:01:02', pxe: true}]
";

fn specs(text: &str) -> Vec<kiln::model::NodeSpec> {
    inventory::parse("rack.yaml", text).unwrap().nodes
}

async fn enroll_is_idempotent_and_reports_changes(store: Store) {
    let report = store.enroll(&specs(RACK), false).await.unwrap();
    assert_eq!(report.created, ["n1", "n2"]);
    let again = store.enroll(&specs(RACK), false).await.unwrap();
    assert_eq!(
        (
            again.created.len(),
            again.updated.len(),
            again.unchanged.len()
        ),
        (0, 0, 2)
    );

    let changed = RACK
        .replace("pw-one", "pw-new")
        .replace("52:54:00:00:01:02", "52:54:00:00:01:03");
    let report = store.enroll(&specs(&changed), false).await.unwrap();
    assert_eq!(report.updated.len(), 2);
    assert_eq!(report.updated[0].fields, ["bmc.password"]);
    assert_eq!(report.updated[1].fields, ["nics"]);
    let n1 = store.node("n1").await.unwrap();
    assert_eq!(n1.spec.bmc.password.expose(), "pw-new");
    assert_eq!(n1.provision_state, ProvisionState::Enroll);
    let by_new_mac = store
        .node_by_mac("52:54:00:00:01:03".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(by_new_mac.map(|n| n.spec.name), Some("n2".to_string()));
    assert!(
        store
            .node_by_mac("52:54:00:00:01:02".parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

async fn dry_run_changes_nothing(store: Store) {
    let report = store.enroll(&specs(RACK), true).await.unwrap();
    assert_eq!(report.created, ["n1", "n2"]);
    assert!(store.list_nodes().await.unwrap().is_empty());
}

async fn enrollment_is_all_or_nothing(store: Store) {
    store.enroll(&specs(RACK), false).await.unwrap();
    let before = store.list_nodes().await.unwrap();
    // n3 is new and valid; n4 steals n1's MAC: nothing of this file may land.
    let conflicting = "nodes:
  - name: n3
    bmc: {kind: ipmi, address: 10.0.0.3, username: a, password: b}
    nics: [{mac: '52:54:00:00:00:03'}]
  - name: n4
    bmc: {kind: ipmi, address: 10.0.0.4, username: a, password: b}
    nics: [{mac: '52:54:00:00:00:01'}]
";
    let err = store.enroll(&specs(conflicting), false).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("already belongs to enrolled node 'n1'")),
        "{err}"
    );
    assert_eq!(store.list_nodes().await.unwrap(), before);
    assert!(matches!(
        store.node("n3").await,
        Err(StoreError::NotFound(_))
    ));
}

async fn uuid_cannot_change(store: Store) {
    let with_uuid = RACK.replace(
        "  - name: n1\n",
        "  - name: n1\n    uuid: 11111111-2222-3333-4444-555555555555\n",
    );
    store.enroll(&specs(&with_uuid), false).await.unwrap();
    assert_eq!(
        store.node("n1").await.unwrap().uuid.to_string(),
        "11111111-2222-3333-4444-555555555555"
    );
    let other = with_uuid.replace("11111111", "99999999");
    let err = store.enroll(&specs(&other), false).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
}

async fn transitions_are_recorded_in_history(store: Store) {
    store.enroll(&specs(RACK), false).await.unwrap();
    let conductor = Conductor::new(store.clone(), Arc::new(BasicProvisioner));
    conductor.request("n1", Verb::Manage).await.unwrap();
    conductor.reconcile_once().await.unwrap();
    conductor.request("n1", Verb::Provide).await.unwrap();
    conductor.reconcile_once().await.unwrap();
    conductor.request("n1", Verb::Deploy).await.unwrap();
    conductor.reconcile_once().await.unwrap();
    let n1 = store.node("n1").await.unwrap();
    assert_eq!(n1.provision_state, ProvisionState::Deploying);
    assert_eq!(n1.target_provision_state, Some(ProvisionState::Active));
    conductor.request("n1", Verb::Abort).await.unwrap();
    let history = store.history("n1").await.unwrap();
    let moves: Vec<(Option<&str>, &str)> = history
        .iter()
        .map(|h| (h.from.as_deref(), h.to.as_str()))
        .collect();
    assert_eq!(
        moves,
        [
            (None, "enroll"),
            (Some("enroll"), "verifying"),
            (Some("verifying"), "manageable"),
            (Some("manageable"), "cleaning"),
            (Some("cleaning"), "available"),
            (Some("available"), "deploying"),
            (Some("deploying"), "deploy-failed"),
        ]
    );
    assert!(history.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(history[6].reason, "operator requested abort");
    // An illegal verb is refused and leaves no trace.
    assert!(conductor.request("n1", Verb::Provide).await.is_err());
    assert_eq!(store.history("n1").await.unwrap().len(), 7);
}

async fn stale_transition_is_refused(store: Store) {
    store.enroll(&specs(RACK), false).await.unwrap();
    let node = store.node("n1").await.unwrap();
    let step = kiln::model::next(
        node.provision_state,
        None,
        kiln::model::Input::Verb(Verb::Manage),
    )
    .unwrap();
    store
        .record_transition(
            &node,
            step,
            kiln::model::Input::Verb(Verb::Manage),
            "first",
            None,
        )
        .await
        .unwrap();
    // Same stale snapshot again: the node is no longer in `enroll`.
    let err = store
        .record_transition(
            &node,
            step,
            kiln::model::Input::Verb(Verb::Manage),
            "second",
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StateChanged { .. }), "{err}");
}

async fn delete_respects_state_and_removes_everything(store: Store) {
    store.enroll(&specs(RACK), false).await.unwrap();
    store
        .set_services_status("n2", ServicesStatus::Healthy)
        .await
        .unwrap();
    assert_eq!(
        store.node("n2").await.unwrap().services_status,
        ServicesStatus::Healthy
    );
    let conductor = Conductor::new(store.clone(), Arc::new(BasicProvisioner));
    conductor.request("n1", Verb::Manage).await.unwrap();
    assert!(
        matches!(store.delete_node("n1").await, Err(StoreError::Conflict(_))),
        "verifying nodes are busy"
    );
    store.delete_node("n2").await.unwrap();
    assert!(matches!(
        store.node("n2").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        store
            .node_by_mac("52:54:00:00:00:02".parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );
    // The MAC is free again.
    store.enroll(&specs(RACK), false).await.unwrap();
}

macro_rules! suite {
    ($open:expr) => {{
        let open = $open;
        enroll_is_idempotent_and_reports_changes(open().await).await;
        dry_run_changes_nothing(open().await).await;
        enrollment_is_all_or_nothing(open().await).await;
        uuid_cannot_change(open().await).await;
        transitions_are_recorded_in_history(open().await).await;
        stale_transition_is_refused(open().await).await;
        delete_respects_state_and_removes_everything(open().await).await;
    }};
}

#[tokio::test]
async fn store_suite_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicU32::new(0);
    suite!(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = dir.path().join(format!("db{n}"));
        async move {
            std::fs::create_dir_all(&path).unwrap();
            Store::open_in(&path).await.unwrap()
        }
    });
}

#[tokio::test]
async fn store_suite_on_postgres() {
    let pg = common::Postgres::start();
    suite!(|| {
        let url = pg.fresh_database();
        async move {
            let store = Store::connect(&url).await.unwrap();
            assert_eq!(store.dialect(), kiln::store::Dialect::Postgres);
            store
        }
    });
}

#[tokio::test]
async fn store_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).await.unwrap();
    store.enroll(&specs(RACK), false).await.unwrap();
    store.close().await;
    let reopened = Store::open_in(dir.path()).await.unwrap();
    assert_eq!(reopened.list_nodes().await.unwrap().len(), 2);
    assert_eq!(
        reopened
            .node("n2")
            .await
            .unwrap()
            .spec
            .bmc
            .password
            .expose(),
        "pw-two"
    );
}
