//! The container deployer reaching a Docker Engine over SSH (`docker: ssh://…`): a real OpenSSH
//! server on the lab namespace's loopback whose sessions reach a docker-in-docker node, driven by
//! the system ssh client through Kiln's tunnel. Proves prechecks, deploy (config files uploaded,
//! healthcheck passing), a no-op redeploy and destroy over SSH, and plain-words refusals for a
//! key the server does not accept and for a host key that changed since first use.

mod common;

use common::ChildGuard;
use common::docker_lab::{DockerLab, DockerNode};
use common::services_cli::ServicesCli;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CATALOG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/catalog/dind");
const SSH_PORT: u16 = 2222;

/// Fields drop in order: sshd before the lab's namespace goes.
struct Rig {
    sshd: Option<ChildGuard>,
    lab: DockerLab,
    dir: tempfile::TempDir,
}

impl Rig {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn node(&self) -> &DockerNode {
        &self.lab.nodes()[0]
    }

    /// (Re)starts sshd on 127.0.0.1:2222 in the lab's namespace with `host_key`; its sessions
    /// talk to the node's dockerd.
    fn start_sshd(&mut self, host_key: &Path) {
        self.sshd = None;
        let config = self.path("sshd_config");
        // UsePAM: without PAM, sshd refuses key logins to an account whose password is locked
        // ("!" in /etc/shadow), which root's is on many machines.
        std::fs::write(
            &config,
            format!(
                "Port {SSH_PORT}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 StrictModes no\nUsePAM yes\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPidFile {}\n\
                 SetEnv DOCKER_HOST={}\nLogLevel VERBOSE\n",
                host_key.display(),
                self.path("authorized_keys").display(),
                self.path("sshd.pid").display(),
                self.node().url
            ),
        )
        .unwrap();
        // sshd's privilege-separation directory (normally made by its systemd unit).
        std::fs::create_dir_all("/run/sshd").unwrap();
        let log = std::fs::File::create(self.path("sshd.log")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.lab.ns,
                "/usr/sbin/sshd",
                "-D",
                "-e",
                "-f",
            ])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sshd (openssh-server) runs");
        self.sshd = Some(ChildGuard(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .lab
            .in_ns(|| std::net::TcpStream::connect(("127.0.0.1", SSH_PORT)).is_ok())
        {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen: {}",
                std::fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn write_hosts(&self, key: &Path) {
        let hosts = format!(
            "hosts:\n- {{name: far, address: {}, docker: 'ssh://root@127.0.0.1:{SSH_PORT}', \
             ssh_key: {}, groups: [control]}}\n",
            self.node().ip,
            key.display()
        );
        std::fs::write(self.path("hosts.yaml"), hosts).unwrap();
    }

    fn cli(&self) -> ServicesCli<'_> {
        ServicesCli {
            lab: &self.lab,
            dir: self.dir.path(),
            catalog: Some(CATALOG),
        }
    }

    fn kiln(&self, args: &[&str]) -> (i32, String, String) {
        self.cli().kiln(args)
    }

    fn services(&self, command: &str, extra: &[&str]) -> (i32, String, String) {
        self.cli().services(command, extra)
    }

    /// Container name → ID of Kiln's containers on the node, asked directly (not over SSH).
    fn containers(&self) -> BTreeMap<String, String> {
        self.lab.managed_containers(self.node())
    }
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
}

fn start() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let lab = DockerLab::start(1);
    let mut rig = Rig {
        lab,
        dir,
        sshd: None,
    };
    for key in ["client", "stranger", "host_a", "host_b"] {
        keygen(&rig.path(key));
    }
    std::fs::copy(rig.path("client.pub"), rig.path("authorized_keys")).unwrap();
    rig.start_sshd(&rig.path("host_a"));
    rig.write_hosts(&rig.path("client"));
    std::fs::write(
        rig.path("globals.yaml"),
        format!("docker_registry: \"{}\"\n", rig.lab.registry()),
    )
    .unwrap();
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
fn deploy_over_ssh_and_refuse_wrong_keys() {
    let mut rig = start();
    let target = format!("ssh://root@127.0.0.1:{SSH_PORT}");

    let (code, out, err) = rig.services("prechecks", &["--tags", "store"]);
    assert_eq!(code, 0, "prechecks over ssh: {out}{err}");
    assert!(
        out.contains(&target),
        "the engine column names the URL: {out}"
    );
    assert!(out.contains("prechecks passed on 1 hosts"), "{out}");
    let known = std::fs::read_to_string(rig.path("data/ssh/known_hosts")).unwrap_or_default();
    let host_key = std::fs::read_to_string(rig.path("host_a.pub")).unwrap();
    let host_key = host_key.split_whitespace().nth(1).unwrap();
    assert!(
        known.contains(host_key),
        "the host key was recorded in Kiln's known_hosts: {known:?}"
    );

    let (code, out, err) = rig.services("deploy", &["--tags", "store"]);
    assert_eq!(code, 0, "deploy over ssh: {out}{err}");
    let first = rig.containers();
    assert_eq!(
        first.keys().cloned().collect::<Vec<_>>(),
        ["store", "store_bootstrap"]
    );
    // The rendered config file travelled over SSH and the service answers on the node.
    let page = rig.lab.exec_in_ns_ok(&[
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://{}:8101/index.html", rig.node().ip),
    ]);
    assert!(page.starts_with("store on far"), "{page}");

    let (code, out, err) = rig.services("deploy", &["--tags", "store"]);
    assert_eq!(code, 0, "second deploy: {out}{err}");
    assert_eq!(
        rig.containers(),
        first,
        "nothing changed, nothing recreated"
    );

    // A key the server does not accept: refused, in ssh's words, naming the host.
    rig.write_hosts(&rig.path("stranger"));
    let (code, out, err) = rig.services("prechecks", &["--tags", "store"]);
    assert_ne!(code, 0, "prechecks with a stranger's key passed: {out}");
    assert!(
        err.contains("host far") && err.contains("Permission denied"),
        "{out}{err}"
    );

    // The host's key changed since first use: refused.
    rig.write_hosts(&rig.path("client"));
    rig.start_sshd(&rig.path("host_b"));
    let (code, out, err) = rig.services("prechecks", &["--tags", "store"]);
    assert_ne!(
        code, 0,
        "prechecks against a changed host key passed: {out}"
    );
    assert!(err.contains("Host key verification failed"), "{out}{err}");

    // Back to the known key: destroy over SSH leaves nothing behind.
    rig.start_sshd(&rig.path("host_a"));
    let (code, out, err) = rig.services("destroy", &["--yes-i-really-really-mean-it"]);
    assert_eq!(code, 0, "destroy over ssh: {out}{err}");
    assert!(rig.containers().is_empty(), "{:?}", rig.containers());
    let volumes = rig.lab.docker_ok(rig.node(), &["volume", "ls", "-q"]);
    assert!(volumes.trim().is_empty(), "volumes left: {volumes}");
}
