//! The real daemon and CLI end to end: auth, enrollment (all or nothing), verbs, errors, secrets.

mod common;

use common::Daemon;
use serde_json::{Value, json};

const PASSWORD: &str = "Sup3r-Secret-BMC-pw";

/// The example rack with its BMCs moved to closed loopback ports: the daemon really talks to them
/// (and must report them unreachable), and no packet leaves this machine.
fn rack(dir: &std::path::Path) -> std::path::PathBuf {
    let closed_udp = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed_tcp = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string("examples/rack.yaml")
        .unwrap()
        .replace("change-me", PASSWORD)
        .replace("address: 10.99.1.11", "address: 127.0.0.1")
        .replace("port: 623 ", &format!("port: {closed_udp} "))
        .replace(
            "https://10.99.1.12:8000",
            &format!("https://127.0.0.1:{closed_tcp}"),
        );
    assert!(
        text.contains(&format!("port: {closed_udp}")),
        "the example still has 'port: 623'"
    );
    let path = dir.join("rack.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

#[tokio::test]
async fn requests_without_the_token_get_401() {
    let daemon = Daemon::start();
    let client = http();
    let url = format!("{}/v1/nodes", daemon.url);
    let no_token = client.get(&url).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    let body: Value = no_token.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let wrong = client
        .get(&url)
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let put = client
        .put(format!("{url}/x/states/provision"))
        .json(&json!({"target": "manage"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 401);
    let right = client
        .get(&url)
        .bearer_auth(&daemon.token)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(
        client
            .get(format!("{}/healthz", daemon.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The token file is private to the daemon's user.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(daemon.data_dir().join("api-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn invalid_inventory_leaves_the_database_untouched() {
    let daemon = Daemon::start();
    let good = rack(daemon.dir.path());
    let (code, _, _) = daemon.cli(&["enroll", good.to_str().unwrap()]);
    assert_eq!(code, 0);
    let before = daemon.cli(&["--json", "node", "list"]).1;

    // One new valid node plus one broken one: nothing may be enrolled, every error reported.
    let bad = daemon.dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(&good)
        .unwrap()
        .replace("cpus: 8", "cpus: eight")
        + "  - name: new-01\n    bmc: {kind: ipmi, address: 10.99.1.50}\n    nics: [{mac: '52:54:00:99:00:50'}]\n";
    std::fs::write(&bad, text).unwrap();
    let (code, stdout, stderr) = daemon.cli(&["enroll", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("bad.yaml:"), "{stderr}");
    assert!(
        stderr.contains("nodes[1].properties.cpus: expected a whole number"),
        "{stderr}"
    );
    assert_eq!(daemon.cli(&["--json", "node", "list"]).1, before);

    // A conflict found only in the database (a MAC owned by an enrolled node) also rolls back.
    let steal = daemon.dir.path().join("steal.yaml");
    std::fs::write(&steal, "nodes:\n  - name: new-02\n    bmc: {kind: ipmi, address: 10.99.1.51, username: a, password: b}\n    nics: [{mac: '52:54:00:99:00:60'}]\n  - name: new-03\n    bmc: {kind: ipmi, address: 10.99.1.52, username: a, password: b}\n    nics: [{mac: '52:54:00:99:00:11'}]\n").unwrap();
    let (code, _, stderr) = daemon.cli(&["enroll", steal.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("already belongs to enrolled node 'ctl-01'"),
        "{stderr}"
    );
    assert_eq!(daemon.cli(&["--json", "node", "list"]).1, before);
}

#[tokio::test]
async fn enroll_drive_and_inspect_nodes_without_leaking_the_password() {
    let daemon = Daemon::start_with(&["--bmc-attempts", "1", "--bmc-breaker-threshold", "5"]);
    let file = rack(daemon.dir.path());
    let file = file.to_str().unwrap();
    let mut seen = String::new();
    let mut cli = |args: &[&str]| {
        let (code, stdout, stderr) = daemon.cli(args);
        seen.push_str(&stdout);
        seen.push_str(&stderr);
        (code, stdout, stderr)
    };

    let (code, stdout, _) = cli(&["enroll", file, "--dry-run"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("2 created") && stdout.contains("dry run"),
        "{stdout}"
    );
    assert!(
        cli(&["--json", "node", "list"]).1.trim() == "[]",
        "dry run changed nothing"
    );
    assert!(
        cli(&["enroll", file])
            .1
            .contains("2 created, 0 updated, 0 unchanged")
    );
    assert!(
        cli(&["enroll", file])
            .1
            .contains("0 created, 0 updated, 2 unchanged")
    );
    let changed = std::fs::read_to_string(file)
        .unwrap()
        .replace(PASSWORD, "another-pw")
        .replace("cpus: 8", "cpus: 12");
    std::fs::write(file, changed).unwrap();
    let (_, stdout, _) = cli(&["enroll", file]);
    assert!(
        stdout.contains("ctl-01: updated (bmc.password)"),
        "{stdout}"
    );
    assert!(stdout.contains("cmp-01: updated (properties)"), "{stdout}");
    assert!(!stdout.contains("another-pw"));
    std::fs::write(
        file,
        std::fs::read_to_string(file)
            .unwrap()
            .replace("another-pw", PASSWORD),
    )
    .unwrap();
    cli(&["enroll", file]);

    let (code, stdout, _) = cli(&["node", "manage", "ctl-01", "cmp-01"]);
    assert_eq!(code, 0, "{stdout}");
    // The conductor verifies through the BMC in the background; these BMCs do not answer, so
    // verification fails back to enroll with a plain reason.
    let mut node = Value::Null;
    for _ in 0..600 {
        node = serde_json::from_str(&cli(&["--json", "node", "show", "ctl-01"]).1).unwrap();
        if node["provision_state"] == "enroll" && node["last_error"].is_string() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(node["provision_state"], "enroll", "{node}");
    let reason = node["last_error"].as_str().unwrap();
    assert!(reason.starts_with("BMC "), "plain reason: {reason}");
    let (code, _, stderr) = cli(&["node", "deploy", "ctl-01"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot deploy a node in state enroll"),
        "{stderr}"
    );
    let (_, stdout, _) = cli(&["node", "history", "ctl-01"]);
    assert!(
        stdout.contains("operator requested manage")
            && stdout.contains("verifying")
            && stdout.contains(reason),
        "{stdout}"
    );
    let (_, stdout, _) = cli(&["node", "list"]);
    assert!(
        stdout.contains("ctl-01") && stdout.contains("enroll"),
        "{stdout}"
    );

    // API: JSON errors with stable codes.
    let client = http();
    let api = |path: &str| format!("{}/v1{path}", daemon.url);
    let reply = client
        .put(api("/nodes/ctl-01/states/provision"))
        .bearer_auth(&daemon.token)
        .json(&json!({"target": "fly"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 400);
    assert_eq!(
        reply.json::<Value>().await.unwrap()["error"]["code"],
        "bad_request"
    );
    let reply = client
        .get(api("/nodes/nope"))
        .bearer_auth(&daemon.token)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 404);
    assert_eq!(
        reply.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
    let reply = client
        .put(api("/nodes/ctl-01/states/provision"))
        .bearer_auth(&daemon.token)
        .json(&json!({"target": "undeploy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 409);
    assert_eq!(
        reply.json::<Value>().await.unwrap()["error"]["code"],
        "conflict"
    );
    let reply = client
        .put(api("/nodes/ctl-01/states/provision"))
        .bearer_auth(&daemon.token)
        .json(&json!({"target": "provide"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 409, "provide needs a manageable node");
    let reply = client
        .get(api("/nodes/cmp-01/states/power"))
        .bearer_auth(&daemon.token)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 502);
    let body: Value = reply.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bmc_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("node 'cmp-01': BMC "), "{message}");
    assert!(!message.contains(PASSWORD));
    let reply = client
        .post(api("/inventory"))
        .bearer_auth(&daemon.token)
        .json(&json!({"file": "x.yaml", "content": "nodes: 3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 422);
    let body: Value = reply.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_inventory");
    assert_eq!(body["error"]["errors"][0]["field"], "nodes");
    assert_eq!(body["error"]["errors"][0]["line"], 1);

    // Every API reply, CLI output and log line: no password anywhere.
    for path in [
        "/nodes",
        "/nodes/ctl-01",
        "/nodes/cmp-01",
        "/nodes/ctl-01/history",
    ] {
        let body = client
            .get(api(path))
            .bearer_auth(&daemon.token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            body.contains("ctl-01") || body.contains("cmp-01") || body.contains("enroll"),
            "{body}"
        );
        assert!(
            !body.contains(PASSWORD) && !body.contains("password"),
            "{path} leaks: {body}"
        );
    }
    let enroll_reply = client
        .post(api("/inventory"))
        .bearer_auth(&daemon.token)
        .json(&json!({"file": "r.yaml", "content": std::fs::read_to_string(file).unwrap()}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!enroll_reply.contains(PASSWORD), "{enroll_reply}");
    cli(&["--json", "node", "show", "cmp-01"]);
    assert!(!seen.contains(PASSWORD), "CLI output leaks the password");
    let log = daemon.log();
    assert!(
        log.contains("inventory enrolled") && log.contains("DEBUG"),
        "debug logging was on: {log}"
    );
    assert!(!log.contains(PASSWORD), "daemon log leaks the password");
}

#[test]
fn inventory_check_runs_offline_with_exit_codes() {
    let kiln = env!("CARGO_BIN_EXE_kiln");
    for example in [
        "examples/rack.yaml",
        "examples/bifrost-inventory.json",
        "examples/bifrost-inventory.yaml",
    ] {
        let out = std::process::Command::new(kiln)
            .args(["inventory", "check", example])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{example}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "nodes:\n  - name: x\n    bmc: {kind: ipmi, address: 1.2.3.4, username: u}\n    nics: [{mac: nope}]\n").unwrap();
    let out = std::process::Command::new(kiln)
        .args(["inventory", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:3:10: nodes[0].bmc.password: missing required field",
            bad.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:4:18: nodes[0].nics[0].mac:", bad.display())),
        "{stderr}"
    );
    assert!(stderr.contains("2 error(s)"), "{stderr}");
    let out = std::process::Command::new(kiln)
        .args(["--json", "inventory", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["errors"].as_array().unwrap().len(), 2);
}

#[test]
fn config_file_and_env_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kiln.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {}\nlisten: 127.0.0.1:0\nlog_format: json\n",
            dir.path().join("d").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url_file = dir.path().join("d/api-url");
    for _ in 0..200 {
        if url_file.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(url_file.exists(), "daemon used the config's data_dir");
    // The CLI finds the daemon through the same config file; KILN_TOKEN overrides the token file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--config")
        .arg(&config)
        .args(["node", "list"])
        .env("KILN_TOKEN", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing or invalid bearer token"));
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let first_line = String::from_utf8_lossy(&output.stderr)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        serde_json::from_str::<Value>(&first_line).is_ok(),
        "json logs: {first_line}"
    );
}
