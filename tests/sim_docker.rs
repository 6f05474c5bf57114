//! The rack simulator's Docker Engine face, driven by Kiln's real bollard engine on loopback:
//! over plain TCP and over mutual TLS with certificates from Kiln's CA, a whole container life
//! (pull, volumes, create with files, start, health, list, logs, stop, remove) answers as the
//! deployer expects; a client from another CA is refused.

use kiln::ca::CertificateAuthority;
use kiln::deployer::engine::Engine;
use kiln::deployer::engine::docker::DockerEngine;
use kiln::deployer::hosts::{Endpoint, TlsSource};
use kiln::deployer::plan::{Health, RunState};
use kiln::deployer::spec::{ContainerSpec, FileSpec, Healthcheck, Kind};
use kiln::sim::docker_api::{self, EngineTiming, SimDocker, TlsIdentity};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "kiln.local:5000/kolla/keystone:zed";
const HEALTH_DELAY: Duration = Duration::from_millis(600);

fn spec(name: &str, kind: Kind, healthcheck: bool) -> ContainerSpec {
    ContainerSpec {
        name: name.to_string(),
        service: "keystone".to_string(),
        kind,
        image: IMAGE.to_string(),
        cmd: None,
        environment: BTreeMap::from([("KOLLA_CONFIG_STRATEGY".into(), "COPY_ALWAYS".into())]),
        volumes: vec![
            format!("{name}_data:/var/lib/keystone"),
            "/etc/localtime:/etc/localtime:ro".into(),
        ],
        network_host: true,
        cap_add: Vec::new(),
        privileged: false,
        ulimits: BTreeMap::new(),
        healthcheck: healthcheck.then(|| Healthcheck {
            test: "healthcheck_curl http://127.0.0.1:5000".into(),
            interval_s: 5,
            timeout_s: 5,
            retries: 3,
            start_period_s: 0,
        }),
        restart: "unless-stopped".into(),
        stop_timeout_s: 10,
        ports: vec![5000],
        files: vec![FileSpec {
            path: "/etc/kolla/keystone/config.json".into(),
            content: "{\"command\": \"keystone-wsgi\"}".into(),
            mode: 0o600,
        }],
    }
}

async fn container_life(engine: &DockerEngine) {
    let info = engine.info().await.expect("info");
    assert_eq!(info.api_version, "1.41");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let skew = (info.system_time.expect("SystemTime parses") - now).abs();
    assert!(skew <= 2, "engine clock off by {skew}s");

    assert_eq!(engine.image_id(IMAGE).await.expect("inspect image"), None);
    let refused = engine.create(&spec("keystone", Kind::Service, true)).await;
    assert!(refused.is_err(), "create without the image must fail");
    engine.pull(IMAGE).await.expect("pull");
    let image_id = engine
        .image_id(IMAGE)
        .await
        .expect("inspect")
        .expect("pulled");
    assert!(image_id.starts_with("sha256:"));

    engine
        .create(&spec("keystone", Kind::Service, true))
        .await
        .expect("create");
    engine
        .create(&spec("keystone_bootstrap", Kind::Bootstrap, false))
        .await
        .expect("create bootstrap");
    let again = engine.create(&spec("keystone", Kind::Service, true)).await;
    assert!(
        again.is_err(),
        "a second container with the same name is a conflict"
    );

    let created = engine
        .inspect("keystone")
        .await
        .expect("inspect")
        .expect("exists");
    assert_eq!(created.state, RunState::Stopped(None));
    assert_eq!(created.image_id, image_id);
    assert_eq!(
        created.hash.as_deref(),
        Some(spec("keystone", Kind::Service, true).hash().as_str())
    );

    engine.start("keystone").await.expect("start");
    engine
        .start("keystone")
        .await
        .expect("start again is fine (304)");
    engine
        .start("keystone_bootstrap")
        .await
        .expect("start bootstrap");
    let starting = engine
        .inspect("keystone")
        .await
        .expect("inspect")
        .expect("exists");
    assert_eq!(
        (starting.state, starting.health),
        (RunState::Running, Health::Starting)
    );

    assert_eq!(
        engine
            .wait("keystone_bootstrap")
            .await
            .expect("bootstrap exits"),
        0
    );
    tokio::time::sleep(HEALTH_DELAY).await;
    let healthy = engine
        .inspect("keystone")
        .await
        .expect("inspect")
        .expect("exists");
    assert_eq!(healthy.health, Health::Healthy);
    assert!(healthy.health_output.is_some());

    let listed = engine.list_managed().await.expect("list");
    let mut names: Vec<_> = listed
        .iter()
        .map(|o| (o.name.as_str(), o.state, o.health))
        .collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(
        names,
        vec![
            ("keystone", RunState::Running, Health::Healthy),
            (
                "keystone_bootstrap",
                RunState::Stopped(Some(0)),
                Health::None
            ),
        ]
    );
    let logs = engine.logs_tail("keystone", 5).await.expect("logs");
    assert!(logs.iter().any(|l| l.contains("keystone")), "{logs:?}");

    engine.stop("keystone").await.expect("stop");
    engine
        .stop("keystone")
        .await
        .expect("stop again is fine (304)");
    let stopped = engine
        .inspect("keystone")
        .await
        .expect("inspect")
        .expect("exists");
    assert_eq!(stopped.state, RunState::Stopped(Some(0)));
    engine.remove("keystone").await.expect("remove");
    engine.remove("keystone_bootstrap").await.expect("remove");
    engine
        .remove("keystone")
        .await
        .expect("removing what is gone is fine");
    assert_eq!(engine.inspect("keystone").await.expect("inspect"), None);
    assert!(engine.list_managed().await.expect("list").is_empty());

    let mut volumes = engine.remove_managed_volumes().await.expect("volumes");
    volumes.sort();
    assert_eq!(volumes, vec!["keystone_bootstrap_data", "keystone_data"]);
    assert!(
        engine
            .remove_managed_volumes()
            .await
            .expect("volumes")
            .is_empty()
    );
}

fn timing() -> EngineTiming {
    EngineTiming {
        pull: Duration::from_millis(50),
        health_delay: HEALTH_DELAY,
    }
}

#[tokio::test]
async fn plain_tcp_engine_serves_a_container_life() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let token = CancellationToken::new();
    let served = tokio::spawn(docker_api::serve_plain(
        listener,
        SimDocker::new("node-a", timing()),
        token.clone(),
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let engine =
        DockerEngine::connect(&Endpoint::Tcp(address.to_string()), dir.path()).expect("connect");
    container_life(&engine).await;
    token.cancel();
    served.await.expect("join").expect("served cleanly");
}

#[tokio::test]
async fn mutual_tls_engine_takes_kilns_client_and_refuses_others() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = tempfile::tempdir().expect("tempdir");
    let ca = CertificateAuthority::load_or_create(&data.path().join("ca")).expect("CA");
    let server = ca
        .issue_server("node-b", &["127.0.0.1".parse().expect("ip")])
        .expect("server cert");
    let identity = TlsIdentity {
        cert_pem: server.cert_pem.clone(),
        key_pem: server.key_pem.expose().to_string(),
        ca_pem: ca.ca_pem().to_string(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let token = CancellationToken::new();
    let served = tokio::spawn(docker_api::serve_tls(
        listener,
        SimDocker::new("node-b", timing()),
        identity,
        token.clone(),
    ));
    let endpoint = Endpoint::Tls {
        address: address.clone(),
        tls: TlsSource::Kiln,
    };
    let engine = DockerEngine::connect(&endpoint, data.path()).expect("connect");
    container_life(&engine).await;

    // A client whose certificate comes from another CA is refused at the handshake.
    let other = tempfile::tempdir().expect("tempdir");
    let other_ca = CertificateAuthority::load_or_create(&other.path().join("ca")).expect("CA");
    other_ca
        .deployer_client()
        .expect("foreign client certificate");
    let files = |dir: &std::path::Path, name: &str| dir.join("ca").join(name);
    let stranger = DockerEngine::connect(
        &Endpoint::Tls {
            address,
            tls: TlsSource::Files {
                ca: files(data.path(), kiln::ca::CA_CERT_FILE),
                cert: files(other.path(), kiln::ca::CLIENT_CERT_FILE),
                key: files(other.path(), kiln::ca::CLIENT_KEY_FILE),
            },
        },
        other.path(),
    )
    .expect("connect");
    assert!(
        stranger.info().await.is_err(),
        "a foreign client must be refused"
    );

    token.cancel();
    served.await.expect("join").expect("served cleanly");
}
