//! Multi-host Docker labs for tests of Kiln's container deployer: an outer dockerd in a network
//! namespace of its own, a local registry, and N docker-in-docker "nodes" (images/dind) with fixed
//! addresses on one bridge. Nothing touches the host's network namespace; everything is stopped,
//! unmounted and deleted on drop.
//!
//! Addresses, with S the lab's subnet byte: the outer `docker0` is 10.88.S.1/24; the nodes' bridge
//! (`kilnlab0`) is 10.89.S.0/24 with the gateway, where the registry listens, on .1:5000 and the
//! nodes on .11, .12, …. Each lab has its own namespace, so S only keeps parallel labs' addresses
//! apart in logs; it does not have to be unique for correctness.
//!
//! A node's dockerd listens on plain tcp 2375, or, when the lab was given TLS files for it, on
//! tcp 2376 with `--tlsverify` only (dockerd applies TLS to every TCP host, so one daemon cannot
//! serve both).

use super::ChildGuard;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Debian's 20.10 client; another, newer `docker` sits earlier on PATH.
const DOCKER: &str = "/usr/bin/docker";
const NODE_IMAGE: &str = "kiln-test/dind:1";
/// The busybox image, also pushed to the lab's registry as `REGISTRY/kiln-test/busybox:1`.
pub const BUSYBOX: &str = "kiln-test/busybox:1";
const NETWORK: &str = "kilnlab";
const NODE_START: Duration = Duration::from_secs(90);
/// `sh -c` script run in the outer daemon's mount namespace; `$0` is the config file.
const DOCKERD_WITH_OWN_RUN: &str =
    "mount -t tmpfs -o mode=0755 kiln-lab-run /run && exec /usr/sbin/dockerd --config-file \"$0\"";
/// Host programs a lab runs, and the Debian package of each.
const TOOLS: [(&str, &str); 5] = [
    ("/usr/sbin/dockerd", "docker.io"),
    ("/usr/bin/docker", "docker.io"),
    ("/usr/bin/docker-registry", "docker-registry"),
    ("/usr/sbin/debootstrap", "debootstrap"),
    ("/usr/bin/nsenter", "util-linux"),
];

/// A CA certificate, a certificate and its key, PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Called with each node's name and address; `Some` makes that node's dockerd TLS-only on 2376.
pub type ServerTls = Box<dyn Fn(&str, Ipv4Addr) -> Option<TlsFiles>>;

#[derive(Default)]
pub struct LabOptions {
    pub nodes: usize,
    /// Server certificates per node (none: every node plain on 2375).
    pub server_tls: Option<ServerTls>,
    /// The client certificate [`DockerLab::docker`] presents to TLS nodes.
    pub client_tls: Option<TlsFiles>,
}

#[derive(Clone, Debug)]
pub struct DockerNode {
    pub name: String,
    pub ip: Ipv4Addr,
    /// `tcp://IP:2375`, or `tcp://IP:2376` for a TLS node.
    pub url: String,
    pub tls: bool,
}

pub struct DockerLab {
    /// The network namespace everything runs in.
    pub ns: String,
    subnet: u8,
    root: PathBuf,
    dir: Option<tempfile::TempDir>,
    ns_created: bool,
    dockerd: Option<Child>,
    registry: Option<ChildGuard>,
    nodes: Vec<DockerNode>,
    client_tls: Option<TlsFiles>,
}

impl DockerLab {
    /// A lab with `nodes` plain (tcp 2375) nodes named node1..nodeN.
    pub fn start(nodes: usize) -> DockerLab {
        Self::start_with(LabOptions {
            nodes,
            ..LabOptions::default()
        })
    }

    pub fn start_with(options: LabOptions) -> DockerLab {
        for (tool, package) in TOOLS {
            let found = Path::new(tool).exists();
            assert!(
                found,
                "docker lab: {tool} missing (apt-get install {package})"
            );
        }
        let mut phase = Phases::new();
        let images = build_images();
        phase.done("images");
        // From here on, a panic drops the half-built lab, which cleans up what exists.
        let mut lab = DockerLab::create();
        lab.client_tls = options.client_tls.clone();
        lab.start_dockerd();
        phase.done("outer dockerd");
        lab.outer_ok(&["load", "-i", path_str(&images)]);
        phase.done("docker load");
        lab.create_network();
        lab.start_registry();
        lab.push_busybox();
        phase.done("registry + push");
        lab.start_nodes(&options);
        lab.wait_for_nodes();
        phase.done(&format!("{} nodes", options.nodes));
        eprintln!("docker-lab {}: started in {}", lab.ns, phase.total());
        lab
    }

    fn create() -> DockerLab {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let subnet = (pid.wrapping_mul(7).wrapping_add(n * 13) % 250 + 1) as u8;
        let ns = format!("kdl{pid}n{n}");
        let dir = tempfile::Builder::new()
            .prefix("kiln-dlab-")
            .tempdir()
            .expect("docker lab: cannot create a temp dir");
        let mut lab = DockerLab {
            ns,
            subnet,
            root: dir.path().to_path_buf(),
            dir: Some(dir),
            ns_created: false,
            dockerd: None,
            registry: None,
            nodes: Vec::new(),
            client_tls: None,
        };
        ok(
            Command::new("ip").args(["netns", "add", &lab.ns]),
            "ip netns add",
        );
        lab.ns_created = true;
        lab.exec_in_ns_ok(&["ip", "link", "set", "lo", "up"]);
        lab
    }

    /// The outer daemon's unix socket (reachable from the host namespace too).
    pub fn socket(&self) -> PathBuf {
        self.root.join("docker.sock")
    }

    /// The registry as `IP:5000` (plain HTTP; every daemon in the lab trusts it).
    pub fn registry(&self) -> String {
        format!("{}:5000", self.gateway())
    }

    /// The nodes' bridge address, which the registry listens on.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 89, self.subnet, 1)
    }

    pub fn nodes(&self) -> &[DockerNode] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> &DockerNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("docker lab {}: no node {name}", self.ns))
    }

    /// The lab's temp dir (logs: `dockerd.log`, `registry.log`).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Runs `args` inside the namespace (`ip netns exec NS ARGS…`), e.g. the Kiln CLI.
    pub fn exec_in_ns(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).args(args);
        self.client_env(&mut cmd);
        output(&mut cmd, args[0])
    }

    /// [`Self::exec_in_ns`] that panics unless the command succeeds; returns its stdout.
    pub fn exec_in_ns_ok(&self, args: &[&str]) -> String {
        checked(self.exec_in_ns(args), &format!("in {}: {args:?}", self.ns))
    }

    /// `docker -H NODE_URL ARGS…` inside the namespace, with the client certificate for a TLS
    /// node; returns (exit code, stdout, stderr).
    pub fn docker(&self, node: &DockerNode, args: &[&str]) -> (i32, String, String) {
        let mut full = vec![DOCKER, "-H", &node.url];
        let tls = self.client_tls.as_ref().filter(|_| node.tls);
        if let Some(tls) = tls {
            full.extend(["--tlsverify", "--tlscacert", path_str(&tls.ca)]);
            full.extend([
                "--tlscert",
                path_str(&tls.cert),
                "--tlskey",
                path_str(&tls.key),
            ]);
        }
        full.extend_from_slice(args);
        super::exit_and_text(&self.exec_in_ns(&full))
    }

    /// [`Self::docker`] that panics unless it succeeds; returns stdout.
    pub fn docker_ok(&self, node: &DockerNode, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.docker(node, args);
        assert_eq!(code, 0, "docker on {}: {args:?}: {stderr}", node.name);
        stdout
    }

    /// Container name → ID of Kiln's containers (running or not) on a node, asked with the
    /// docker CLI.
    pub fn managed_containers(
        &self,
        node: &DockerNode,
    ) -> std::collections::BTreeMap<String, String> {
        let out = self.docker_ok(
            node,
            &[
                "ps",
                "-a",
                "--filter",
                "label=org.kiln.managed=true",
                "--format",
                "{{.Names}} {{.ID}}",
            ],
        );
        out.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, id)| (n.to_string(), id.to_string()))
            .collect()
    }

    /// The outer daemon's client: `docker -H unix://SOCKET ARGS…`.
    pub fn outer_docker(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(DOCKER);
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args);
        self.client_env(&mut cmd);
        output(&mut cmd, DOCKER)
    }

    fn outer_ok(&self, args: &[&str]) -> String {
        checked(self.outer_docker(args), &format!("outer docker {args:?}"))
    }

    /// Runs `f` on a thread inside the namespace: sockets it opens live there.
    pub fn in_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.ns, f)
    }

    /// The docker CLI reads no user config or `DOCKER_*` variables of the caller.
    fn client_env(&self, cmd: &mut Command) {
        cmd.env("DOCKER_CONFIG", self.root.join("client"));
        for var in [
            "DOCKER_HOST",
            "DOCKER_CONTEXT",
            "DOCKER_TLS_VERIFY",
            "DOCKER_CERT_PATH",
        ] {
            cmd.env_remove(var);
        }
    }

    fn start_dockerd(&mut self) {
        let config = serde_json::json!({
            "data-root": self.root.join("data"),
            "exec-root": self.root.join("exec"),
            "pidfile": self.root.join("dockerd.pid"),
            "hosts": [format!("unix://{}", self.socket().display())],
            "bip": format!("10.88.{}.1/24", self.subnet),
            "insecure-registries": [self.registry()],
            // Node cgroups under a per-lab parent, removed on drop; the trust key not in /etc.
            "cgroup-parent": format!("/{}", self.cgroup_parent()),
            "deprecated-key-path": self.root.join("key.json"),
            "userland-proxy": false,
        });
        let config_path = self.root.join("daemon.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = std::fs::File::create(self.root.join("dockerd.log")).unwrap();
        // nsenter, not `ip netns exec`: that one remounts /sys, which breaks dockerd's cgroups.
        // A private mount namespace with its own /run: the overlay, netns and volume mounts, and
        // the paths containerd and dockerd hard-code (/run/containerd/s, /run/docker/plugins),
        // stay out of the host's and vanish with the daemon's last process, even after SIGKILL.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(DOCKERD_WITH_OWN_RUN)
            .arg(&config_path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker lab: cannot run nsenter");
        self.dockerd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ping_unix(&self.socket()) {
            let exited = self.dockerd.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "docker lab {}: outer dockerd did not start ({exited:?}):\n{}",
                self.ns,
                self.log_tail("dockerd.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cgroup_parent(&self) -> String {
        format!("kiln-lab-{}", self.ns)
    }

    fn create_network(&self) {
        let subnet = format!("10.89.{}.0/24", self.subnet);
        let gateway = self.gateway().to_string();
        self.outer_ok(&[
            "network",
            "create",
            "--subnet",
            &subnet,
            "--gateway",
            &gateway,
            "-o",
            "com.docker.network.bridge.name=kilnlab0",
            NETWORK,
        ]);
    }

    fn start_registry(&mut self) {
        let config = self.root.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: {}\n  secret: kiln-docker-lab\n",
                self.root.join("registry").display(),
                self.registry()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.root.join("registry.log")).unwrap();
        // Kiln's own `kiln services registry` when this build has the binary (tests); the plain
        // Debian registry otherwise (benchmarks built as examples).
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns]);
        match option_env!("CARGO_BIN_EXE_kiln") {
            Some(kiln) => command
                .args([
                    kiln,
                    "services",
                    "registry",
                    "--listen",
                    &self.registry(),
                    "--root",
                ])
                .arg(self.root.join("registry")),
            None => command.args(["docker-registry", "serve"]).arg(&config),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker lab: cannot run ip netns exec docker-registry");
        self.registry = Some(ChildGuard(child));
        let addr: SocketAddr = self.registry().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.in_ns(move || http_get(addr, "/v2/").is_some_and(|r| r.contains(" 200 "))) {
            assert!(
                Instant::now() < deadline,
                "docker lab {}: the registry did not answer on {addr}:\n{}",
                self.ns,
                self.log_tail("registry.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn push_busybox(&self) {
        let remote = format!("{}/{BUSYBOX}", self.registry());
        self.outer_ok(&["tag", BUSYBOX, &remote]);
        self.outer_ok(&["push", &remote]);
    }

    fn start_nodes(&mut self, options: &LabOptions) {
        assert!(
            options.nodes <= 200,
            "docker lab: at most 200 nodes (.11–.210)"
        );
        for i in 0..options.nodes {
            let name = format!("node{}", i + 1);
            let ip = Ipv4Addr::new(10, 89, self.subnet, 11 + i as u8);
            let tls = options.server_tls.as_ref().and_then(|f| f(&name, ip));
            let tls_dir = tls.map(|files| self.install_server_tls(&name, &files));
            self.run_node(&name, ip, tls_dir.as_deref());
            let port = if tls_dir.is_some() { 2376 } else { 2375 };
            self.nodes.push(DockerNode {
                url: format!("tcp://{ip}:{port}"),
                name,
                ip,
                tls: tls_dir.is_some(),
            });
        }
    }

    /// Copies a node's server files to `tls/NODE/{ca,cert,key}.pem`, the names entry.sh expects.
    fn install_server_tls(&self, name: &str, files: &TlsFiles) -> PathBuf {
        let dir = self.root.join("tls").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (from, to) in [
            (&files.ca, "ca.pem"),
            (&files.cert, "cert.pem"),
            (&files.key, "key.pem"),
        ] {
            std::fs::copy(from, dir.join(to))
                .unwrap_or_else(|e| panic!("docker lab: TLS file {}: {e}", from.display()));
        }
        dir
    }

    fn run_node(&self, name: &str, ip: Ipv4Addr, tls_dir: Option<&Path>) {
        let ip = ip.to_string();
        let registry = format!("KILN_REGISTRY={}", self.registry());
        let mut args = vec!["run", "-d", "--name", name, "--hostname", name];
        args.extend(["--network", NETWORK, "--ip", &ip]);
        // What docker-in-docker needs here (LAB.md): --privileged fails without CAP_SYS_RESOURCE.
        args.extend(["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE"]);
        args.extend(["--security-opt", "seccomp=unconfined"]);
        args.extend(["--security-opt", "systempaths=unconfined"]);
        args.extend(["--device-cgroup-rule", "a *:* rwm", "--cgroupns", "private"]);
        args.extend(["-e", &registry]);
        let volume = tls_dir.map(|d| format!("{}:/etc/kiln-tls:ro", d.display()));
        if let Some(volume) = &volume {
            args.extend(["-v", volume]);
        }
        args.push(NODE_IMAGE);
        self.outer_ok(&args);
    }

    /// Waits for every node's dockerd at once: plain nodes until `GET /_ping` on 2375 answers
    /// from inside the namespace; TLS nodes until the unix socket inside answers and 2376 accepts.
    fn wait_for_nodes(&self) {
        let deadline = Instant::now() + NODE_START;
        let mut waiting: Vec<&DockerNode> = self.nodes.iter().collect();
        while !waiting.is_empty() {
            waiting.retain(|node| !self.node_ready(node));
            for node in &waiting {
                self.assert_node_running(node, deadline);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn node_ready(&self, node: &DockerNode) -> bool {
        let port = if node.tls { 2376 } else { 2375 };
        let addr = SocketAddr::from((node.ip, port));
        if !node.tls {
            return self.in_ns(move || http_get(addr, "/_ping").is_some_and(|r| r.ends_with("OK")));
        }
        let inside = self.outer_docker(&["exec", &node.name, DOCKER, "version"]);
        inside.status.success()
            && self.in_ns(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
    }

    fn assert_node_running(&self, node: &DockerNode, deadline: Instant) {
        let state = self.outer_docker(&["inspect", "-f", "{{.State.Running}}", &node.name]);
        let running = String::from_utf8_lossy(&state.stdout).trim() == "true";
        if running && Instant::now() < deadline {
            return;
        }
        let logs = self.outer_docker(&["logs", "--tail", "40", &node.name]);
        panic!(
            "docker lab {}: {} ({}) {} :\n{}{}",
            self.ns,
            node.name,
            node.url,
            if running {
                "did not answer in time"
            } else {
                "exited"
            },
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr)
        );
    }

    fn log_tail(&self, file: &str) -> String {
        let text = std::fs::read_to_string(self.root.join(file)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Removes every container of the outer daemon (nodes and their volumes), then stops it.
    fn stop_dockerd(&mut self) {
        let Some(child) = self.dockerd.take() else {
            return;
        };
        let ps = self.outer_docker(&["ps", "-aq"]);
        let ids = String::from_utf8_lossy(&ps.stdout).into_owned();
        if !ids.trim().is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids.split_whitespace());
            let _ = self.outer_docker(&args);
        }
        terminate(child, Duration::from_secs(20));
    }

    /// dockerd's own children (containerd, shims) outlive a killed dockerd: end every process
    /// whose command line names this lab's directory.
    fn kill_strays(&self) {
        let root = format!("{}/", self.root.display());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = pids_mentioning(&root);
            if pids.is_empty() || Instant::now() > deadline {
                return;
            }
            for pid in pids {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Removes the per-lab cgroup parent from every hierarchy (runc removes only the leaves).
    fn remove_cgroups(&self) {
        let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for hierarchy in hierarchies.flatten() {
            let dir = hierarchy.path().join(self.cgroup_parent());
            if dir.is_dir() {
                rmdir_tree(&dir);
            }
        }
    }
}

impl Drop for DockerLab {
    fn drop(&mut self) {
        self.stop_dockerd();
        drop(self.registry.take());
        self.kill_strays();
        let left = unmount_under(&self.root);
        self.remove_cgroups();
        if self.ns_created {
            let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        }
        if let Some(dir) = self.dir.take() {
            if left.is_empty() {
                drop(dir);
            } else {
                // Never delete through a mount point.
                let kept = dir.keep();
                eprintln!(
                    "docker lab: {left:?} still mounted; keeping {}",
                    kept.display()
                );
            }
        }
    }
}

/// Runs images/dind/build.sh (a no-op when its cache is current; parallel callers wait on its
/// lock) and returns the `docker save` tarball holding the node and busybox images.
fn build_images() -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/images/dind/build.sh");
    let out = output(Command::new(script).stdin(Stdio::null()), script);
    eprint!("{}", String::from_utf8_lossy(&out.stderr)); // its phases and timings
    let stdout = checked(out, script);
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default());
    assert!(path.is_file(), "{script} printed no tarball: {stdout:?}");
    path
}

/// Timings of the lab's start-up phases, printed to stderr as they finish.
struct Phases {
    start: Instant,
    last: Instant,
}

impl Phases {
    fn new() -> Phases {
        let now = Instant::now();
        Phases {
            start: now,
            last: now,
        }
    }

    fn done(&mut self, what: &str) {
        eprintln!(
            "docker-lab: {what}: {:.1} s",
            self.last.elapsed().as_secs_f64()
        );
        self.last = Instant::now();
    }

    fn total(&self) -> String {
        format!("{:.1} s", self.start.elapsed().as_secs_f64())
    }
}

fn output(cmd: &mut Command, program: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("docker lab: cannot run {program}: {e}"))
}

fn ok(cmd: &mut Command, what: &str) -> String {
    checked(output(cmd, what), what)
}

/// stdout of a command that must have succeeded; panics with `what` and its stderr otherwise.
fn checked(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "docker lab: {what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("docker lab: non-UTF-8 path")
}

fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// An HTTP/1.0 GET; the whole response (status line, headers, body), or None if unreachable.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    request(&mut stream, path)
}

/// `GET /_ping` on dockerd's unix socket answered `OK`.
fn ping_unix(socket: &Path) -> bool {
    UnixStream::connect(socket)
        .ok()
        .and_then(|mut s| request(&mut s, "/_ping"))
        .is_some_and(|r| r.starts_with("HTTP/1.") && r.ends_with("OK"))
}

fn request<S: Read + Write>(stream: &mut S, path: &str) -> Option<String> {
    write!(stream, "GET {path} HTTP/1.0\r\nHost: lab\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// SIGTERM, then SIGKILL after `grace`; always reaps.
fn terminate(mut child: Child, grace: Duration) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Processes (other than this one) whose command line contains `needle`.
fn pids_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// Unmounts (lazily, deepest first) every mount at or below `root`; returns those that remain.
fn unmount_under(root: &Path) -> Vec<String> {
    let mounts = || -> Vec<String> {
        let prefix = root.to_string_lossy().into_owned();
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut found: Vec<String> = table
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| p.replace("\\040", " "))
            .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
            .collect();
        found.sort_by_key(|p| std::cmp::Reverse(p.len()));
        found
    };
    for target in mounts() {
        let _ = Command::new("umount").args(["-l", &target]).output();
    }
    mounts()
}

fn rmdir_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
