//! The multi-host Docker test kit (tests/common/docker_lab.rs) against itself: nodes pull from the
//! lab's registry, run host-network containers and reach each other; a TLS node answers only
//! with a client certificate from Kiln's CA; and nothing is left behind.

mod common;

use common::docker_lab::{BUSYBOX, DockerLab, LabOptions, TlsFiles};
use kiln::ca::{CertificateAuthority, IssuedCert};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// A one-shot busybox container on `node` with the node's network (`--network host`).
fn run_busybox(lab: &DockerLab, node: &str, script: &str) -> String {
    let image = format!("{}/{BUSYBOX}", lab.registry());
    let args = [
        "run",
        "--rm",
        "--network",
        "host",
        &image,
        "sh",
        "-c",
        script,
    ];
    lab.docker_ok(lab.node(node), &args)
}

/// `docker stats` of the outer daemon: "node1 52.3MiB" per line.
fn node_memory(lab: &DockerLab) -> String {
    let out = lab.outer_docker(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.MemUsage}}",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split(" / ").next().unwrap_or(l).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn three_nodes_pull_from_the_registry_and_reach_each_other() {
    let started = Instant::now();
    let lab = DockerLab::start(3);
    eprintln!("3-node lab up in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(lab.nodes().len(), 3);
    let node3 = lab.node("node3").clone();
    assert_eq!(node3.url, format!("tcp://{}:2375", node3.ip));

    // node2 pulls from the registry; host networking shows the node's own name and address.
    let out = run_busybox(
        &lab,
        "node2",
        "echo hello from $(hostname); ip -o -f inet addr",
    );
    assert_eq!(out.lines().next(), Some("hello from node2"));
    let node2_ip = format!("inet {}/24", lab.node("node2").ip);
    assert!(out.contains(&node2_ip), "{out}");

    // node1 reaches node3's Docker API and a listener in a host-network container on node3.
    let ping = run_busybox(
        &lab,
        "node1",
        &format!("wget -qO- http://{}:2375/_ping", node3.ip),
    );
    assert_eq!(ping, "OK");
    let image = format!("{}/{BUSYBOX}", lab.registry());
    let serve =
        "mkdir -p /www && echo served by $(hostname) > /www/index.html && httpd -f -p 8080 -h /www";
    let node3_args = [
        "run",
        "-d",
        "--network",
        "host",
        "--name",
        "web",
        &image,
        "sh",
        "-c",
        serve,
    ];
    lab.docker_ok(&node3, &node3_args);
    let fetch = format!(
        "for i in $(seq 50); do wget -qO- http://{}:8080/ && exit 0; sleep 0.2; done; exit 1",
        node3.ip
    );
    assert_eq!(run_busybox(&lab, "node1", &fetch).trim(), "served by node3");

    // The Kiln CLI will run in the namespace: any command does.
    let route = lab.exec_in_ns_ok(&["ip", "-4", "route", "show", "dev", "kilnlab0"]);
    assert!(route.contains(&format!("src {}", lab.gateway())), "{route}");

    eprintln!("per-node memory: {}", node_memory(&lab));
    let (ns, dir) = (lab.ns.clone(), lab.dir().to_path_buf());
    let stopping = Instant::now();
    drop(lab);
    eprintln!("lab stopped in {:.1} s", stopping.elapsed().as_secs_f64());
    assert_nothing_left(&ns, &dir);
}

/// Writes `cert` as `dir/NAME.pem` and its key as `dir/NAME-key.pem`.
fn write_pair(dir: &Path, name: &str, ca: &Path, cert: &IssuedCert) -> TlsFiles {
    let files = TlsFiles {
        ca: ca.to_path_buf(),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&files.cert, &cert.cert_pem).unwrap();
    std::fs::write(&files.key, cert.key_pem.expose()).unwrap();
    files
}

#[test]
fn a_tls_node_answers_only_with_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let ca_dir = certs.path().join("ca");
    let ca = CertificateAuthority::load_or_create(&ca_dir).unwrap();
    let ca_pem: PathBuf = ca_dir.join("ca.pem");
    let client = write_pair(
        certs.path(),
        "client",
        &ca_pem,
        &ca.deployer_client().unwrap(),
    );
    let dir = certs.path().to_path_buf();
    let server_tls = move |name: &str, ip| {
        let cert = ca.issue_server(name, &[IpAddr::V4(ip)]).unwrap();
        Some(write_pair(&dir, name, &dir.join("ca/ca.pem"), &cert))
    };
    let lab = DockerLab::start_with(LabOptions {
        nodes: 1,
        server_tls: Some(Box::new(server_tls)),
        client_tls: Some(client),
    });
    let node = lab.node("node1").clone();
    assert!(node.tls);
    assert_eq!(node.url, format!("tcp://{}:2376", node.ip));

    let version = lab.docker_ok(&node, &["version", "--format", "{{.Server.Version}}"]);
    assert!(version.starts_with("20.10"), "{version}");
    // Without a client certificate: refused. And no plain port.
    let url = node.url.clone();
    let bare = lab.exec_in_ns(&["/usr/bin/docker", "-H", &url, "--tls", "version"]);
    assert!(
        !bare.status.success(),
        "a client without a certificate got in"
    );
    let plain = format!("tcp://{}:2375", node.ip);
    let plain = lab.exec_in_ns(&["/usr/bin/docker", "-H", &plain, "version"]);
    assert!(!plain.status.success(), "the TLS node also listens on 2375");
}

/// No namespace, process or mount of the lab survives its drop.
fn assert_nothing_left(ns: &str, dir: &Path) {
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns
            .lines()
            .any(|l| l.split_whitespace().next() == Some(ns)),
        "{netns}"
    );
    let dir = dir.to_string_lossy();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(dir.as_ref()), "mounts left under {dir}");
    assert!(!Path::new(dir.as_ref()).exists(), "{dir} left behind");
    let ps = Command::new("ps")
        .args(["-eo", "pid,args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    let ours: Vec<&str> = ps.lines().filter(|l| l.contains(dir.as_ref())).collect();
    assert!(ours.is_empty(), "processes left: {ours:?}");
}
