//! The reconciler's decisions end to end against in-memory engines (pure logic; the real-Docker
//! evidence is tests/services_dind.rs).

use super::catalog::Catalog;
use super::engine::Engine;
use super::engine::sim::SimEngine;
use super::globals::{Globals, Passwords};
use super::hosts::{Host, parse_hosts};
use super::render::render;
use super::run::{Filters, Operation, Outcome, run};
use std::collections::BTreeMap;
use std::sync::Arc;

const CATALOG: &str = r#"
services:
  db:
    group: control
    passwords: [db_password]
    containers:
      - name: db
        image: "{{ docker_registry }}/test/db:1"
        kolla: false
        command: "serve-db"
        volumes: ["dbdata:/data"]
        healthcheck: {test: "true"}
        config:
          - {content: "password={{ db_password }}\nsize={{ db_size | default('1') }}\n", dest: /etc/db.conf}
    bootstrap:
      - {name: db_bootstrap, container: db}
  api:
    group: control
    after: [db]
    serial: "1"
    containers:
      - name: api
        image: "{{ docker_registry }}/test/api:1"
        kolla: false
        command: "serve-api {{ api_interface_address }}"
        healthcheck: {test: "true"}
  agent:
    group: compute
    containers:
      - name: agent
        image: "{{ docker_registry }}/test/agent:{{ agent_tag | default('1') }}"
        kolla: false
"#;

struct Rig {
    catalog: Catalog,
    hosts: Vec<Host>,
    passwords: Passwords,
    sims: BTreeMap<String, Arc<SimEngine>>,
    _dir: tempfile::TempDir,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("catalog.yaml"), CATALOG).unwrap();
    let catalog = Catalog::load_dir(dir.path()).unwrap();
    let hosts = parse_hosts(
        "hosts:\n\
         - {name: n1, docker: 'tcp://10.0.0.1:2375', groups: [control]}\n\
         - {name: n2, docker: 'tcp://10.0.0.2:2375', groups: [control, compute]}\n\
         - {name: n3, docker: 'tcp://10.0.0.3:2375', groups: [control, compute]}\n",
    )
    .unwrap();
    let path = dir.path().join("passwords.yaml");
    Passwords::fill(&path, &catalog).unwrap();
    let passwords = Passwords::load(&path).unwrap();
    let sims = hosts
        .iter()
        .map(|h| (h.name.clone(), Arc::new(SimEngine::new(&h.name))))
        .collect();
    Rig {
        catalog,
        hosts,
        passwords,
        sims,
        _dir: dir,
    }
}

impl Rig {
    async fn run(&self, globals: &Globals, operation: Operation) -> Outcome {
        let rendered = render(&self.catalog, &self.hosts, globals, &self.passwords).unwrap();
        let engines = self.engines();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        run(rendered, engines, operation, &Filters::default(), tx).await
    }

    fn engines(&self) -> BTreeMap<String, Arc<dyn Engine>> {
        self.sims
            .iter()
            .map(|(h, s)| (h.clone(), s.clone() as Arc<dyn Engine>))
            .collect()
    }

    fn ids(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.sims
            .iter()
            .map(|(h, s)| (h.clone(), s.container_ids()))
            .collect()
    }

    /// Every mutating engine call so far, per host.
    fn mutations(&self) -> BTreeMap<String, Vec<String>> {
        self.sims
            .iter()
            .map(|(h, s)| (h.clone(), s.calls()))
            .collect()
    }

    /// Calls made since `before` (a `mutations()` snapshot), as "host: call".
    fn since(&self, before: &BTreeMap<String, Vec<String>>) -> Vec<String> {
        self.mutations()
            .into_iter()
            .flat_map(|(h, calls)| {
                let skip = before.get(&h).map_or(0, Vec::len);
                calls
                    .into_iter()
                    .skip(skip)
                    .map(move |c| format!("{h}: {c}"))
            })
            .collect()
    }
}

fn globals() -> Globals {
    Globals::load(None).unwrap()
}

#[tokio::test]
async fn deploy_places_by_group_and_a_second_deploy_changes_nothing() {
    let rig = rig();
    let first = rig.run(&globals(), Operation::Deploy).await;
    assert!(first.ok(), "{first:?}");
    let ids = rig.ids();
    assert_eq!(
        ids["n1"].keys().collect::<Vec<_>>(),
        ["api", "db", "db_bootstrap"]
    );
    assert_eq!(
        ids["n2"].keys().collect::<Vec<_>>(),
        ["agent", "api", "db"],
        "bootstrap only on the first host"
    );
    let before = rig.mutations();
    let second = rig.run(&globals(), Operation::Deploy).await;
    assert!(second.ok(), "{second:?}");
    assert_eq!(rig.ids(), ids, "same container IDs");
    assert_eq!(rig.since(&before), Vec::<String>::new());
    assert!(
        second
            .rows
            .iter()
            .all(|r| r.action == "unchanged" || r.action == "bootstrap")
    );
}

#[tokio::test]
async fn a_config_change_recreates_exactly_the_affected_containers() {
    let rig = rig();
    assert!(rig.run(&globals(), Operation::Deploy).await.ok());
    let ids = rig.ids();
    let before = rig.mutations();
    let changed = globals().with("agent_tag", "2");
    let outcome = rig.run(&changed, Operation::Deploy).await;
    assert!(outcome.ok(), "{outcome:?}");
    let after = rig.ids();
    for host in ["n2", "n3"] {
        assert_ne!(after[host]["agent"], ids[host]["agent"]);
        assert_eq!(after[host]["db"], ids[host]["db"]);
        assert_eq!(after[host]["api"], ids[host]["api"]);
    }
    assert_eq!(after["n1"], ids["n1"]);
    let calls = rig.since(&before);
    assert!(
        calls
            .iter()
            .any(|c| c.contains("pull") && c.contains("agent:2")),
        "{calls:?}"
    );
    let recreated: Vec<_> = outcome
        .rows
        .iter()
        .filter(|r| r.action == "recreated")
        .collect();
    assert_eq!(recreated.len(), 2);
}

#[tokio::test]
async fn an_unhealthy_service_stops_its_dependents_and_is_named() {
    let rig = rig();
    rig.sims["n2"].fail("db");
    let outcome = rig.run(&globals(), Operation::Deploy).await;
    assert!(!outcome.ok());
    let failure = &outcome.failures[0];
    assert_eq!(
        (failure.host.as_str(), failure.service.as_str()),
        ("n2", "db")
    );
    assert!(failure.reason.contains("healthcheck"), "{}", failure.reason);
    assert!(!failure.logs.is_empty());
    assert!(
        outcome
            .skipped
            .iter()
            .any(|(s, r)| s == "api" && r.contains("needs db"))
    );
    assert!(
        rig.ids().values().all(|c| !c.contains_key("api")),
        "api never started"
    );
    // Independent services still ran.
    assert!(rig.ids()["n3"].contains_key("agent"));
}

#[tokio::test]
async fn a_failed_bootstrap_stops_the_service() {
    let rig = rig();
    rig.sims["n1"].fail("db_bootstrap");
    let outcome = rig.run(&globals(), Operation::Deploy).await;
    assert!(
        outcome
            .failures
            .iter()
            .any(|f| f.container == "db_bootstrap" && f.reason.contains("code 1"))
    );
    assert!(rig.ids().values().all(|c| !c.contains_key("db")));
}

#[tokio::test]
async fn serial_services_roll_one_batch_at_a_time_and_stop_on_failure() {
    let rig = rig();
    assert!(rig.run(&globals(), Operation::Deploy).await.ok());
    let ids = rig.ids();
    // Same spec, but n1's api turns unhealthy once recreated: the roll-out stops there.
    rig.sims["n1"].fail("api");
    let mut changed = globals();
    changed = changed.with("docker_registry", "other:5000");
    let outcome = rig.run(&changed, Operation::Deploy).await;
    assert!(!outcome.ok());
    let after = rig.ids();
    assert_ne!(
        after["n1"]["api"], ids["n1"]["api"],
        "first batch recreated"
    );
    assert_eq!(
        after["n2"]["api"], ids["n2"]["api"],
        "second batch never started"
    );
    assert_eq!(after["n3"]["api"], ids["n3"]["api"]);
}

#[tokio::test]
async fn destroy_leaves_nothing_and_stop_keeps_containers() {
    let rig = rig();
    assert!(rig.run(&globals(), Operation::Deploy).await.ok());
    assert!(rig.sims["n1"].volumes().contains("dbdata"));
    let stopped = rig.run(&globals(), Operation::Stop).await;
    assert!(stopped.ok());
    assert_eq!(rig.ids()["n1"].len(), 3);
    let destroyed = rig.run(&globals(), Operation::Destroy).await;
    assert!(destroyed.ok(), "{destroyed:?}");
    assert!(rig.ids().values().all(|c| c.is_empty()));
    assert!(rig.sims.values().all(|s| s.volumes().is_empty()));
}

#[tokio::test]
async fn upgrade_pulls_and_reruns_bootstrap() {
    let rig = rig();
    assert!(rig.run(&globals(), Operation::Deploy).await.ok());
    let before = rig.mutations();
    let outcome = rig.run(&globals(), Operation::Upgrade).await;
    assert!(outcome.ok(), "{outcome:?}");
    let calls = rig.since(&before);
    assert!(
        calls.iter().any(|c| c == "n1: create db_bootstrap"),
        "{calls:?}"
    );
    assert!(
        calls.iter().filter(|c| c.contains(": pull ")).count() >= 7,
        "{calls:?}"
    );
}

#[tokio::test]
async fn gated_hosts_join_when_they_open_and_a_failed_gate_fails_their_services() {
    use super::run::{Gate, run_gated};
    let rig = rig();
    let rendered = render(&rig.catalog, &rig.hosts, &globals(), &rig.passwords).unwrap();
    let engines = rig.engines();
    let (open_n3, gate_n3) = tokio::sync::watch::channel(Gate::Waiting);
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel::<super::run::Event>();
    let gates = std::collections::HashMap::from([("n3".to_string(), gate_n3)]);
    let filters = Filters::default();
    let hand_over = async {
        // n1 and n2 proceed while n3 is still being imaged: n2's agent comes up first.
        loop {
            let event = events.recv().await.expect("events");
            if event.host == "n2" && event.container == "agent" && event.message == "running" {
                break;
            }
        }
        assert!(rig.ids()["n3"].is_empty(), "n3 untouched while gated");
        open_n3.send(Gate::Open).unwrap();
    };
    let (outcome, ()) = tokio::join!(
        run_gated(
            rendered.clone(),
            engines,
            Operation::Deploy,
            &filters,
            tx,
            gates
        ),
        hand_over
    );
    assert!(outcome.ok(), "{outcome:?}");
    assert_eq!(
        rig.ids()["n3"].keys().collect::<Vec<_>>(),
        ["agent", "api", "db"]
    );

    // A fresh rack where n3's provisioning fails: its services fail, their dependents skip.
    let rig = super::run_tests::rig();
    let engines = rig.engines();
    let (fail_n3, gate_n3) = tokio::sync::watch::channel(Gate::Waiting);
    fail_n3
        .send(Gate::Failed(
            "deploy-failed: image checksum mismatch".into(),
        ))
        .unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let gates = std::collections::HashMap::from([("n3".to_string(), gate_n3)]);
    let outcome = run_gated(
        rendered,
        engines,
        Operation::Deploy,
        &Filters::default(),
        tx,
        gates,
    )
    .await;
    assert!(
        outcome
            .failures
            .iter()
            .any(|f| f.host == "n3" && f.service == "db" && f.reason.contains("checksum mismatch"))
    );
    assert!(outcome.skipped.iter().any(|(s, _)| s == "api"));
    assert!(
        rig.ids()["n2"].contains_key("agent"),
        "independent hosts still served"
    );
}

#[tokio::test]
async fn images_missing_on_a_host_are_loaded_from_archives_when_present() {
    let rig = rig();
    let archives = tempfile::tempdir().unwrap();
    std::fs::write(archives.path().join("db.tar"), b"archive").unwrap();
    let rendered = render(&rig.catalog, &rig.hosts, &globals(), &rig.passwords).unwrap();
    let engines = rig.engines();
    let filters = Filters {
        image_archives: Some(archives.path().to_path_buf()),
        ..Filters::default()
    };
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let outcome = run(rendered, engines, Operation::Deploy, &filters, tx).await;
    assert!(outcome.ok(), "{outcome:?}");
    let calls = rig.sims["n1"].calls();
    assert!(
        calls.contains(&"load localhost:5000/test/db:1".to_string()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"pull localhost:5000/test/api:1".to_string()),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c == "pull localhost:5000/test/db:1"),
        "{calls:?}"
    );
}

#[tokio::test]
async fn each_host_prefetches_its_images_before_their_services_turn() {
    // db fails on n2, so api never starts anywhere; every host still fetched api's image the
    // moment it opened, while db was being brought up (on TCG VMs a load takes minutes).
    let rig = rig();
    rig.sims["n2"].fail("db");
    let outcome = rig.run(&globals(), Operation::Deploy).await;
    assert!(
        outcome.skipped.iter().any(|(s, _)| s == "api"),
        "{outcome:?}"
    );
    for host in ["n1", "n2", "n3"] {
        let calls = rig.sims[host].calls();
        let pulls: Vec<&str> = calls
            .iter()
            .filter_map(|c| c.strip_prefix("pull "))
            .collect();
        assert!(
            pulls.contains(&"localhost:5000/test/api:1"),
            "{host}: {calls:?}"
        );
        assert_eq!(
            pulls
                .iter()
                .filter(|i| **i == "localhost:5000/test/db:1")
                .count(),
            1,
            "{host}: one fetch per image, shared by prefetch and service: {calls:?}"
        );
    }
    // A second deploy on the healed rack fetches nothing.
    let rig = super::run_tests::rig();
    assert!(rig.run(&globals(), Operation::Deploy).await.ok());
    let before = rig.mutations();
    assert!(rig.run(&globals(), Operation::Deploy).await.ok());
    assert_eq!(rig.since(&before), Vec::<String>::new());
}

#[test]
fn the_prefetch_plan_is_each_hosts_images_once_in_dependency_order() {
    let rig = rig();
    let rendered = render(&rig.catalog, &rig.hosts, &globals(), &rig.passwords).unwrap();
    let plan = super::run::prefetch_plan(&rendered);
    let nothing_yet = std::collections::HashMap::new();
    let images = |host: &str| -> Vec<String> {
        super::run::images_to_fetch(&plan[host], &nothing_yet)
            .iter()
            .map(|s| format!("{} {}", s.name, s.image))
            .collect()
    };
    // db's bootstrap runs on the service's first host (n1) from db's image: fetched once.
    assert_eq!(
        images("n1"),
        [
            "db_bootstrap localhost:5000/test/db:1",
            "api localhost:5000/test/api:1"
        ]
    );
    assert_eq!(
        images("n3"),
        [
            "db localhost:5000/test/db:1",
            "api localhost:5000/test/api:1",
            "agent localhost:5000/test/agent:1"
        ]
    );
}

#[tokio::test]
async fn a_host_whose_containers_are_in_place_prefetches_nothing() {
    let rig = rig();
    assert!(rig.run(&globals(), Operation::Deploy).await.ok());
    let rendered = render(&rig.catalog, &rig.hosts, &globals(), &rig.passwords).unwrap();
    let plan = super::run::prefetch_plan(&rendered);
    for (host, sim) in &rig.sims {
        let observed: std::collections::HashMap<_, _> = sim
            .list_managed()
            .await
            .unwrap()
            .into_iter()
            .map(|o| (o.name.clone(), o))
            .collect();
        let fetch = super::run::images_to_fetch(&plan[host], &observed);
        assert!(fetch.is_empty(), "{host}: {fetch:?}");
    }
    // A changed config recreates db: its image is wanted again (once per host).
    let changed = globals().with("db_size", "2");
    let rendered = render(&rig.catalog, &rig.hosts, &changed, &rig.passwords).unwrap();
    let plan = super::run::prefetch_plan(&rendered);
    let observed: std::collections::HashMap<_, _> = rig.sims["n2"]
        .list_managed()
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.name.clone(), o))
        .collect();
    let fetch: Vec<&str> = super::run::images_to_fetch(&plan["n2"], &observed)
        .iter()
        .map(|s| s.image.as_str())
        .collect();
    assert_eq!(fetch, ["localhost:5000/test/db:1"]);
}

#[tokio::test]
async fn a_starting_container_is_ready_as_soon_as_the_deployers_probe_passes() {
    // Docker's own check (Kolla's 30 s interval) has not run on any container yet: every gate
    // opens on the deployer's probe, and api still waits for db.
    let rig = rig();
    for sim in rig.sims.values() {
        sim.lag_health();
    }
    let outcome = rig.run(&globals(), Operation::Deploy).await;
    assert!(outcome.ok(), "{outcome:?}");
    let calls = rig.since(&BTreeMap::new());
    let at = |call: &str| calls.iter().position(|c| c == call);
    for host in ["n1", "n2", "n3"] {
        let db_probe = at(&format!("{host}: probe db")).expect("db probed");
        let api_probe = at(&format!("{host}: probe api")).expect("api probed");
        assert!(db_probe < api_probe, "{calls:?}");
    }
    assert!(
        !calls.iter().any(|c| c.ends_with("probe agent")),
        "no healthcheck, no probe: {calls:?}"
    );
}

#[test]
fn probes_start_quick_and_slow_down_to_five_seconds() {
    use super::run::probe_pause;
    use std::time::Duration;
    assert_eq!(probe_pause(0), Duration::from_millis(250));
    assert_eq!(probe_pause(1), Duration::from_millis(375));
    let pauses: Vec<Duration> = (0..40).map(probe_pause).collect();
    assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
    assert_eq!(pauses[39], Duration::from_secs(5));
    assert_eq!(probe_pause(u32::MAX), Duration::from_secs(5));
    // Within the first minute of a slow start: about 20 probes, not 240.
    let mut elapsed = Duration::ZERO;
    let mut probes = 0;
    while elapsed < Duration::from_secs(60) {
        elapsed += probe_pause(probes);
        probes += 1;
    }
    assert!((15..=22).contains(&probes), "{probes}");
}
