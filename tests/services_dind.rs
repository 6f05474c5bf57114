//! The container deployer against real Docker Engines: three docker-in-docker nodes (two plain,
//! one mutual TLS with Kiln's CA) and a test catalog (tests/catalog/dind) placed by group.
//! Proves: placement by role, a no-op second deploy (same container IDs), a config change that
//! recreates exactly the affected containers, a failing healthcheck that stops its dependents
//! and is named in plain words, and `destroy` leaving no container or volume.

mod common;

use common::docker_lab::{DockerLab, LabOptions, TlsFiles};
use common::services_cli::ServicesCli;
use kiln::ca::CertificateAuthority;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

const CATALOG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/catalog/dind");

struct Rig {
    lab: DockerLab,
    dir: tempfile::TempDir,
}

impl Rig {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cli(&self) -> ServicesCli<'_> {
        ServicesCli {
            lab: &self.lab,
            dir: self.dir.path(),
            catalog: Some(CATALOG),
        }
    }

    /// Any kiln command inside the lab's namespace.
    fn kiln(&self, args: &[&str]) -> (i32, String, String) {
        self.cli().kiln(args)
    }

    fn services(&self, command: &str, extra: &[&str]) -> (i32, String, String) {
        self.cli().services(command, extra)
    }

    /// Container name → ID of Kiln's containers on a node (running or not).
    fn containers(&self, node: &str) -> BTreeMap<String, String> {
        self.lab.managed_containers(self.lab.node(node))
    }

    fn volumes(&self, node: &str) -> Vec<String> {
        let out = self
            .lab
            .docker_ok(self.lab.node(node), &["volume", "ls", "-q"]);
        out.lines().map(str::to_string).collect()
    }

    fn write_globals(&self, extra: &str) {
        let text = format!("docker_registry: \"{}\"\n{extra}", self.lab.registry());
        std::fs::write(self.path("globals.yaml"), text).unwrap();
    }
}

fn write_server_cert(
    ca: &CertificateAuthority,
    dir: &Path,
    name: &str,
    ip: std::net::Ipv4Addr,
) -> TlsFiles {
    let issued = ca
        .issue_server(name, &[ip.into()])
        .expect("server certificate");
    let dir = dir.join("servers").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.ca, ca.ca_pem()).unwrap();
    std::fs::write(&files.cert, &issued.cert_pem).unwrap();
    std::fs::write(&files.key, issued.key_pem.expose()).unwrap();
    files
}

fn start() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("data/ca");
    let ca = CertificateAuthority::load_or_create(&ca_dir).expect("Kiln CA");
    ca.deployer_client().expect("deployer client certificate");
    let client = TlsFiles {
        ca: ca_dir.join("ca.pem"),
        cert: ca_dir.join("client.pem"),
        key: ca_dir.join("client-key.pem"),
    };
    let server_dir = dir.path().to_path_buf();
    let lab = DockerLab::start_with(LabOptions {
        nodes: 3,
        server_tls: Some(Box::new(move |name, ip| {
            (name == "node3").then(|| {
                let ca = CertificateAuthority::load_or_create(&server_dir.join("data/ca"))
                    .expect("Kiln CA");
                write_server_cert(&ca, &server_dir, name, ip)
            })
        })),
        client_tls: Some(client),
    });
    let node = |n: &str| lab.node(n).clone();
    let hosts = format!(
        "hosts:\n\
         - {{name: node1, docker: '{}', groups: [control]}}\n\
         - {{name: node2, docker: '{}', groups: [control, compute]}}\n\
         - {{name: node3, docker: '{}', tls: kiln, groups: [compute]}}\n",
        node("node1").url,
        node("node2").url,
        node("node3").url
    );
    assert!(node("node3").url.ends_with(":2376"), "node3 speaks TLS");
    std::fs::write(dir.path().join("hosts.yaml"), hosts).unwrap();
    let rig = Rig { lab, dir };
    rig.write_globals("");
    let passwords = rig.path("passwords.yaml");
    let (code, out, err) = rig.kiln(&[
        "genpwd",
        "--passwords",
        passwords.to_str().unwrap(),
        "--catalog",
        CATALOG,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    rig
}

#[test]
fn deploy_reconcile_fail_and_destroy_on_three_engines() {
    let rig = start();

    let (code, out, err) = rig.services("prechecks", &[]);
    assert_eq!(code, 0, "prechecks: {out}{err}");
    assert!(out.contains("prechecks passed on 3 hosts"), "{out}");

    // First deploy: placement by group.
    let (code, out, err) = rig.services("deploy", &[]);
    assert_eq!(code, 0, "first deploy failed: {out}{err}");
    let first: BTreeMap<&str, BTreeMap<String, String>> = ["node1", "node2", "node3"]
        .into_iter()
        .map(|n| (n, rig.containers(n)))
        .collect();
    let names = |n: &str| first[n].keys().cloned().collect::<Vec<_>>();
    assert_eq!(names("node1"), ["store", "store_bootstrap", "web"]);
    assert_eq!(names("node2"), ["store", "web", "worker"]);
    assert_eq!(
        names("node3"),
        ["worker"],
        "TLS node got its compute service"
    );
    // The config file reached the container and the service answers on the node's address.
    let node2 = rig.lab.node("node2").ip;
    let page = rig.lab.exec_in_ns_ok(&[
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://{node2}:8102/index.html"),
    ]);
    assert!(page.starts_with("hello from node2"), "{page}");
    assert!(
        page.contains(&format!("{}:8101", rig.lab.node("node1").ip)),
        "{page}"
    );
    // The bootstrap ran once, on the first control host, into the named volume.
    let marker = rig.lab.docker_ok(
        rig.lab.node("node1"),
        &[
            "run",
            "--rm",
            "-v",
            "store_data:/data",
            &format!("{}/kiln-test/busybox:1", rig.lab.registry()),
            "cat",
            "/data/initialised",
        ],
    );
    assert!(!marker.trim().is_empty());

    // Second deploy with nothing changed: no container touched.
    let started = Instant::now();
    let (code, out, err) = rig.services("deploy", &[]);
    let noop = started.elapsed();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(" 0 changed"), "{out}");
    for node in ["node1", "node2", "node3"] {
        assert_eq!(
            rig.containers(node),
            first[node],
            "{node}: same container IDs"
        );
    }
    eprintln!(
        "no-op redeploy of 3 hosts: {:.2} s (including process start)",
        noop.as_secs_f64()
    );

    // With the images present, prechecks measure each engine's free disk (a throwaway `df`
    // container); an impossible minimum fails in plain words; no probe container stays.
    let (code, out, err) = rig.services("prechecks", &[]);
    assert_eq!(code, 0, "prechecks after deploy: {out}{err}");
    assert_eq!(out.matches(" GiB free").count(), 3, "{out}");
    rig.write_globals("precheck_min_free_gb: 1000000\n");
    let (code, out, err) = rig.services("prechecks", &[]);
    assert_ne!(code, 0, "a 1 PB minimum passed: {out}");
    assert!(
        err.contains("host node3: only ") && err.contains("precheck_min_free_gb"),
        "{err}"
    );
    rig.write_globals("");
    for node in ["node1", "node2", "node3"] {
        let probes = rig.lab.docker_ok(
            rig.lab.node(node),
            &["ps", "-aq", "--filter", "name=kiln-disk-probe"],
        );
        assert!(probes.trim().is_empty(), "{node}: probe left: {probes}");
    }

    // One config value changes: exactly the web containers are recreated.
    rig.write_globals("greeting: bonjour\n");
    let (code, out, err) = rig.services("reconfigure", &[]);
    assert_eq!(code, 0, "{out}{err}");
    for node in ["node1", "node2"] {
        let now = rig.containers(node);
        assert_ne!(now["web"], first[node]["web"], "{node}: web recreated");
        for other in now.keys().filter(|n| *n != "web") {
            assert_eq!(now[other], first[node][other], "{node}: {other} untouched");
        }
    }
    assert_eq!(rig.containers("node3"), first["node3"]);
    let page = rig.lab.exec_in_ns_ok(&[
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://{node2}:8102/index.html"),
    ]);
    assert!(page.starts_with("bonjour from node2"), "{page}");

    // A service whose healthcheck fails: non-zero exit naming host, service, container and its
    // last log lines; its dependent never starts.
    rig.write_globals("greeting: bonjour\nenable_broken: yes\nenable_after_broken: yes\n");
    let (code, out, err) = rig.services("deploy", &[]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("FAILED: host node2, service broken, container broken: its healthcheck fails: database connection refused")
            || err.contains(
                "FAILED: host node3, service broken, container broken: its healthcheck fails"
            ),
        "{err}"
    );
    assert!(
        err.contains("starting broken service"),
        "last log lines shown: {err}"
    );
    assert!(
        err.contains("SKIPPED: service after_broken: not started: it needs broken, which failed"),
        "{err}"
    );
    for node in ["node2", "node3"] {
        assert!(!rig.containers(node).contains_key("after_broken"));
    }

    // destroy: nothing left, volumes included.
    let (code, out, err) = rig.services("destroy", &[]);
    assert_ne!(
        code, 0,
        "destroy without the confirmation flag must refuse: {out}"
    );
    assert!(err.contains("--yes-i-really-really-mean-it"), "{err}");
    let (code, out, err) = rig.services("destroy", &["--yes-i-really-really-mean-it"]);
    assert_eq!(code, 0, "{out}{err}");
    for node in ["node1", "node2", "node3"] {
        assert!(rig.containers(node).is_empty(), "{node}: containers left");
        assert!(
            rig.volumes(node).is_empty(),
            "{node}: volumes left: {:?}",
            rig.volumes(node)
        );
    }
}
