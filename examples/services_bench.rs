//! Benchmark for the container deployer (`docs/BENCHMARKS.md`): a docker-in-docker lab of N real
//! Docker Engines (tests/common/docker_lab.rs), the test catalog (tests/catalog/dind) deployed
//! once, then `kiln services deploy` with nothing changed, timed R times.
//!
//! Usage: `cargo run --example services_bench -- HOSTS [REPEATS]` (after `cargo build --bins`;
//! root, Debian's docker.io and docker-registry). Prints one line per run and a summary:
//! `hosts=N first_deploy_s=… noop_median_s=… noop_min_s=… noop_max_s=…`.

// The parts of the test kit this benchmark needs (the rest refers to test-only variables);
// docker_lab reaches its helpers as `super::…`, i.e. here.
#[allow(dead_code)]
#[path = "../tests/common/docker_lab.rs"]
mod docker_lab;
#[allow(dead_code)]
#[path = "../tests/common/process.rs"]
mod process;
use process::{ChildGuard, exit_and_text};

use docker_lab::DockerLab;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn kiln_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/examples/services_bench → target/debug/kiln
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("kiln"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --bins` first",
        bin.display()
    );
    bin
}

fn main() {
    let mut args = std::env::args().skip(1);
    let hosts: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let repeats: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let catalog = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/catalog/dind");
    let kiln = kiln_binary();

    let started = Instant::now();
    let lab = DockerLab::start(hosts);
    eprintln!(
        "lab of {hosts} engines up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let mut inventory = String::from("hosts:\n");
    for (index, node) in lab.nodes().iter().enumerate() {
        let groups = if index < 3 {
            "[control, compute]"
        } else {
            "[compute]"
        };
        inventory.push_str(&format!(
            "  - {{name: {}, docker: '{}', groups: {groups}}}\n",
            node.name, node.url
        ));
    }
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(path("hosts.yaml"), inventory).expect("hosts");
    std::fs::write(
        path("globals.yaml"),
        format!("docker_registry: \"{}\"\n", lab.registry()),
    )
    .expect("globals");
    let kiln_args = |command: &str| -> Vec<String> {
        vec![
            kiln.display().to_string(),
            "--data-dir".into(),
            path("data"),
            "services".into(),
            command.into(),
            "-i".into(),
            path("hosts.yaml"),
            "--globals".into(),
            path("globals.yaml"),
            "--passwords".into(),
            path("passwords.yaml"),
            "--catalog".into(),
            catalog.into(),
        ]
    };
    let status = Command::new(&kiln)
        .args([
            "genpwd",
            "--passwords",
            &path("passwords.yaml"),
            "--catalog",
            catalog,
        ])
        .status()
        .expect("genpwd");
    assert!(status.success());

    let run = |label: &str| -> f64 {
        let args = kiln_args("deploy");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let out = lab.exec_in_ns(&args);
        let seconds = started.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{label}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary = stdout.lines().last().unwrap_or("").to_string();
        println!("{label}: {seconds:.3} s wall ({summary})");
        seconds
    };
    let first = run("first deploy");
    let mut noops: Vec<f64> = (1..=repeats)
        .map(|i| run(&format!("no-op deploy {i}")))
        .collect();
    noops.sort_by(f64::total_cmp);
    println!(
        "hosts={hosts} first_deploy_s={first:.2} noop_median_s={:.3} noop_min_s={:.3} noop_max_s={:.3}",
        noops[noops.len() / 2],
        noops[0],
        noops[noops.len() - 1]
    );
}
