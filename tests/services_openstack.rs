//! Kiln's built-in OpenStack catalog on real Docker Engines (the test kit's dockerd, each test in
//! a namespace of its own), from the Kolla-contract images built on this machine (images/kolla),
//! with a real client (python3-openstackclient in the keystone image).
//!
//! - The all-in-one slice — mariadb, rabbitmq, memcached, keystone, glance: `openstack token
//!   issue`, `image create` and `image list` work; a second deploy changes nothing. Then the
//!   compute slice — placement and nova (api, conductor, scheduler, compute with nova's fake
//!   driver: no libvirt) — is added to the running cloud without recreating what runs, and
//!   `openstack compute service list` shows nova's services up and the host mapped as a
//!   hypervisor.
//! - haproxy and keepalived in front of keystone: keepalived takes the internal VIP on the
//!   namespace's interface and a token is issued through haproxy on the VIP.
//! - Two control hosts (docker-in-docker nodes, images from `docker save` archives): a token
//!   issued by one keystone is valid on the other (the same Fernet keys on both).

mod common;

use common::docker_lab::DockerLab;
use common::services_cli::ServicesCli;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// One all-in-one host (`aio`, address 127.0.0.1 in the lab's namespace) on the lab's engine.
struct Aio {
    lab: DockerLab,
    dir: tempfile::TempDir,
}

impl Aio {
    fn start() -> Aio {
        let aio = Aio {
            lab: DockerLab::start(0),
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(
            aio.path("hosts.yaml"),
            format!(
                "hosts:\n  - {{name: aio, docker: 'unix://{}', address: 127.0.0.1, groups: [control, network, compute]}}\n",
                aio.lab.socket().display()
            ),
        )
        .unwrap();
        aio.write_globals("");
        let passwords = aio.path("passwords.yaml");
        let (code, out, err) = aio.kiln(&["genpwd", "--passwords", &passwords]);
        assert_eq!(code, 0, "{out}{err}");
        aio
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Builds (or loads from the cache) images into the lab's engine: `build.sh ARGS`.
    fn build_images(&self, args: &[&str]) {
        let started = Instant::now();
        let status = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/images/kolla/build.sh"
            ))
            .args(args)
            .env(
                "DOCKER_HOST",
                format!("unix://{}", self.lab.socket().display()),
            )
            .status()
            .expect("images/kolla/build.sh");
        assert!(status.success(), "images/kolla/build.sh {args:?} failed");
        eprintln!(
            "kolla images {args:?} ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    /// Images as build.sh tags them (kolla/NAME:TAG): no registry in front.
    fn write_globals(&self, extra: &str) {
        std::fs::write(
            self.path("globals.yaml"),
            format!("docker_registry: \"\"\n{extra}"),
        )
        .unwrap();
    }

    fn cli(&self) -> ServicesCli<'_> {
        ServicesCli {
            lab: &self.lab,
            dir: self.dir.path(),
            catalog: None,
        }
    }

    fn kiln(&self, args: &[&str]) -> (i32, String, String) {
        self.cli().kiln(args)
    }

    fn services(&self, command: &str) -> (i32, String, String) {
        self.cli().services(command, &[])
    }

    /// A value from the generated passwords.yaml.
    fn secret(&self, key: &str) -> String {
        let passwords = std::fs::read_to_string(self.path("passwords.yaml")).unwrap();
        passwords
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("{key} not in passwords.yaml"))
    }

    /// `docker` arguments that run `openstack ARGS` as admin in the keystone container,
    /// against Keystone at `auth_url` (internal endpoints).
    fn openstack_exec(&self, auth_url: &str, args: &[&str]) -> Vec<String> {
        let mut full: Vec<String> = vec!["exec".into()];
        for env in [
            format!("OS_AUTH_URL={auth_url}"),
            "OS_IDENTITY_API_VERSION=3".into(),
            "OS_USERNAME=admin".into(),
            format!("OS_PASSWORD={}", self.secret("keystone_admin_password")),
            "OS_PROJECT_NAME=admin".into(),
            "OS_USER_DOMAIN_NAME=Default".into(),
            "OS_PROJECT_DOMAIN_NAME=Default".into(),
            "OS_INTERFACE=internal".into(),
        ] {
            full.push("-e".into());
            full.push(env);
        }
        full.extend(["keystone", "openstack"].map(String::from));
        full.extend(args.iter().map(|a| a.to_string()));
        full
    }

    /// `openstack ARGS` as admin, run in the keystone container on the outer engine, against
    /// Keystone at `auth_url`.
    fn try_openstack(&self, auth_url: &str, args: &[&str]) -> Output {
        let full = self.openstack_exec(auth_url, args);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        self.lab.outer_docker(&full)
    }

    /// [`Self::try_openstack`] that must succeed; its stdout.
    fn openstack_at(&self, auth_url: &str, args: &[&str]) -> String {
        let out = self.try_openstack(auth_url, args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "openstack {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }
}

const KEYSTONE: &str = "http://127.0.0.1:5000/v3";

#[test]
fn openstack_slice_on_one_engine_answers_a_real_client() {
    let aio = Aio::start();
    aio.build_images(&[]);
    let lab = &aio.lab;
    let services = |command: &str| aio.services(command);
    let openstack = |args: &[&str]| aio.openstack_at(KEYSTONE, args);
    let try_openstack = |args: &[&str]| aio.try_openstack(KEYSTONE, args);

    let (code, out, err) = services("prechecks");
    assert_eq!(code, 0, "prechecks: {out}{err}");
    let (code, out, err) = services("deploy");
    assert_eq!(code, 0, "deploy failed: {out}{err}");
    for container in ["mariadb", "memcached", "rabbitmq", "keystone", "glance_api"] {
        assert!(out.contains(container), "{container} missing:\n{out}");
    }

    let token = openstack(&["token", "issue", "-f", "value", "-c", "id"]);
    assert!(token.trim().len() > 20, "token: {token}");
    let out = lab.outer_docker(&[
        "exec",
        "keystone",
        "sh",
        "-c",
        "head -c 1048576 /dev/urandom > /tmp/kiln-test.img",
    ]);
    assert!(out.status.success());
    openstack(&[
        "image",
        "create",
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "--file",
        "/tmp/kiln-test.img",
        "kiln-test",
    ]);
    let images = openstack(&["image", "list", "-f", "value", "-c", "Name", "-c", "Status"]);
    assert!(images.contains("kiln-test active"), "image list: {images}");

    // Nothing changed: nothing recreated.
    let (code, out, err) = services("deploy");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(" 0 changed"), "{out}");

    // The compute slice, added to the running cloud.
    aio.build_images(&[
        "--only",
        "placement-api,nova-api,nova-conductor,nova-scheduler,nova-compute",
    ]);
    let ids = |names: &[&str]| {
        let mut args = vec!["inspect", "-f", "{{.Id}}"];
        args.extend_from_slice(names);
        let out = lab.outer_docker(&args);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let slice = ["mariadb", "memcached", "rabbitmq", "keystone", "glance_api"];
    let before = ids(&slice);
    aio.write_globals(
        "enable_placement: yes\nenable_nova: yes\nnova_compute_driver: fake.SmallFakeDriver\n",
    );
    let (code, out, err) = services("deploy");
    assert_eq!(code, 0, "compute deploy failed: {out}{err}");
    for container in [
        "placement_api",
        "nova_api",
        "nova_conductor",
        "nova_scheduler",
        "nova_compute",
    ] {
        assert!(out.contains(container), "{container} missing:\n{out}");
    }
    assert_eq!(ids(&slice), before, "the running slice was not recreated");
    // nova-compute registers itself; the scheduler maps it as a hypervisor within its discovery
    // interval (10 s).
    let deadline = Instant::now() + Duration::from_secs(120);
    let (services_up, hypervisors) = loop {
        let list = try_openstack(&[
            "compute", "service", "list", "-f", "value", "-c", "Binary", "-c", "Host", "-c",
            "State",
        ]);
        let hypervisors = try_openstack(&[
            "hypervisor",
            "list",
            "-f",
            "value",
            "-c",
            "Hypervisor Hostname",
        ]);
        let list = String::from_utf8_lossy(&list.stdout).into_owned();
        let hypervisors = String::from_utf8_lossy(&hypervisors.stdout).into_owned();
        let all_up = ["nova-conductor", "nova-scheduler", "nova-compute"]
            .iter()
            .all(|b| list.lines().any(|l| l.trim() == format!("{b} aio up")));
        if (all_up && !hypervisors.trim().is_empty()) || Instant::now() > deadline {
            break (list, hypervisors);
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    for binary in ["nova-conductor", "nova-scheduler", "nova-compute"] {
        assert!(
            services_up
                .lines()
                .any(|l| l.trim() == format!("{binary} aio up")),
            "{binary} not up: {services_up}"
        );
    }
    assert!(
        !hypervisors.trim().is_empty(),
        "no hypervisor mapped: {hypervisors}"
    );
    let endpoints = openstack(&["endpoint", "list", "-f", "value", "-c", "Service Type"]);
    for kind in ["placement", "compute"] {
        assert!(endpoints.lines().any(|l| l.trim() == kind), "{endpoints}");
    }
}

/// The VIP's interface in the lab's namespace (a bridge: keepalived's VRRP needs multicast).
const VIP_INTERFACE: &str = "kilnvip";
const VIP: &str = "10.123.0.100";

#[test]
fn haproxy_and_keepalived_put_keystone_on_the_vip() {
    let aio = Aio::start();
    aio.build_images(&[
        "--only",
        "base,mariadb-server,memcached,keystone,haproxy,keepalived",
    ]);
    // What Kolla's bootstrap-servers does on a network host: an interface on the VIP's subnet
    // and non-local binds, so haproxy binds the VIP before keepalived holds it.
    for args in [
        vec!["ip", "link", "add", VIP_INTERFACE, "type", "bridge"],
        vec!["ip", "addr", "add", "10.123.0.1/24", "dev", VIP_INTERFACE],
        vec!["ip", "link", "set", VIP_INTERFACE, "up"],
        vec!["sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"],
    ] {
        aio.lab.exec_in_ns_ok(&args);
    }
    aio.write_globals(&format!(
        "enable_rabbitmq: no\nenable_glance: no\nenable_haproxy: yes\n\
         kolla_internal_vip_address: {VIP}\nnetwork_interface: {VIP_INTERFACE}\n"
    ));
    let (code, out, err) = aio.services("deploy");
    assert_eq!(code, 0, "deploy with haproxy and keepalived: {out}{err}");
    for container in ["haproxy", "keepalived", "keystone"] {
        assert!(out.contains(container), "{container} missing:\n{out}");
    }
    // keepalived, alone in its VRRP group, becomes master and puts the VIP on the interface.
    let deadline = Instant::now() + Duration::from_secs(30);
    let vip_held = loop {
        let addresses =
            aio.lab
                .exec_in_ns_ok(&["ip", "-o", "-4", "addr", "show", "dev", VIP_INTERFACE]);
        if addresses.contains(&format!("{VIP}/32")) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let logs = aio
        .lab
        .outer_docker(&["logs", "--tail", "20", "keepalived"]);
    assert!(
        vip_held,
        "keepalived did not take {VIP}: {}",
        String::from_utf8_lossy(&logs.stderr)
    );
    // A token through haproxy on the VIP, and Keystone's catalog names the VIP.
    let vip_keystone = format!("http://{VIP}:5000/v3");
    // haproxy's check marks Keystone up about a second after Kiln saw it healthy.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !aio
        .try_openstack(&vip_keystone, &["token", "issue"])
        .status
        .success()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    let token = aio.openstack_at(
        &vip_keystone,
        &["token", "issue", "-f", "value", "-c", "id"],
    );
    assert!(token.trim().len() > 20, "token: {token}");
    let endpoints = aio.openstack_at(
        &vip_keystone,
        &["endpoint", "list", "-f", "value", "-c", "URL"],
    );
    assert!(
        endpoints.contains(&format!("http://{VIP}:5000")),
        "{endpoints}"
    );
}

/// Two control hosts (two docker-in-docker nodes): mariadb on the first, memcached and keystone
/// on both, images streamed from `docker save` archives. A token issued by the first keystone
/// is valid on the second: both hold the same Fernet keys, and the same credential keys.
#[test]
fn a_token_from_one_keystone_is_valid_on_the_other() {
    let aio = Aio {
        lab: DockerLab::start(2),
        dir: tempfile::tempdir().unwrap(),
    };
    aio.build_images(&["--only", "base,mariadb-server,memcached,keystone"]);
    let archives = aio.path("archives");
    std::fs::create_dir_all(&archives).unwrap();
    for name in ["mariadb-server", "memcached", "keystone"] {
        let out = aio.lab.outer_docker(&[
            "save",
            "-o",
            &format!("{archives}/{name}.tar"),
            &format!("kolla/{name}:zed-debian-bookworm"),
        ]);
        assert!(out.status.success(), "docker save {name}: {out:?}");
    }
    let nodes = aio.lab.nodes();
    let hosts: String = nodes
        .iter()
        .map(|n| {
            format!(
                "  - {{name: {}, docker: '{}', address: {}, groups: [control]}}\n",
                n.name, n.url, n.ip
            )
        })
        .collect();
    std::fs::write(aio.path("hosts.yaml"), format!("hosts:\n{hosts}")).unwrap();
    aio.write_globals("enable_rabbitmq: no\nenable_glance: no\n");
    let passwords = aio.path("passwords.yaml");
    let (code, out, err) = aio.kiln(&["genpwd", "--passwords", &passwords]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = aio
        .cli()
        .services("deploy", &["--image-archives", &archives]);
    assert_eq!(code, 0, "deploy on two control hosts: {out}{err}");

    let (first, second) = (&nodes[0], &nodes[1]);
    for (file, key) in [
        ("/etc/keystone/fernet-keys/0", "keystone_fernet_key_0"),
        (
            "/etc/keystone/credential-keys/1",
            "keystone_credential_fernet_key_1",
        ),
    ] {
        let want = aio.secret(key);
        for node in [first, second] {
            let have = aio.lab.docker_ok(node, &["exec", "keystone", "cat", file]);
            assert_eq!(have.trim(), want, "{}: {file}", node.name);
        }
    }
    let issue = aio.openstack_exec(
        &format!("http://{}:5000/v3", first.ip),
        &["token", "issue", "-f", "value", "-c", "id"],
    );
    let issue: Vec<&str> = issue.iter().map(String::as_str).collect();
    let token = aio.lab.docker_ok(first, &issue);
    let token = token.trim();
    assert!(token.len() > 20, "token: {token}");
    let validate = |node: &common::docker_lab::DockerNode| {
        aio.lab.exec_in_ns_ok(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("X-Auth-Token: {token}"),
            "-H",
            &format!("X-Subject-Token: {token}"),
            &format!("http://{}:5000/v3/auth/tokens", node.ip),
        ])
    };
    assert_eq!(validate(first), "200", "the issuing keystone");
    assert_eq!(validate(second), "200", "the other keystone");
}
