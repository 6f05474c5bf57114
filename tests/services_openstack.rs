//! The all-in-one OpenStack slice — mariadb, rabbitmq, memcached, keystone, glance — from the
//! Kolla-contract images built on this machine (images/kolla), deployed by Kiln's built-in catalog
//! onto one real Docker Engine (the test kit's dockerd, in its own namespace), and a real client
//! at work: `openstack token issue`, `openstack image create` and `openstack image list`
//! (python3-openstackclient in the keystone image). A second deploy changes nothing. Then the
//! compute slice — placement and nova (api, conductor, scheduler, compute with nova's fake
//! driver: no libvirt) — is added to the running cloud without recreating what runs, and
//! `openstack compute service list` shows nova's services up and the host mapped as a
//! hypervisor.

mod common;

use common::docker_lab::DockerLab;
use std::process::Command;
use std::time::Instant;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

#[test]
fn openstack_slice_on_one_engine_answers_a_real_client() {
    let lab = DockerLab::start(0);
    // Build (or load from the cache) the slice's images into the lab's engine.
    let started = Instant::now();
    let status = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/images/kolla/build.sh"
        ))
        .env("DOCKER_HOST", format!("unix://{}", lab.socket().display()))
        .status()
        .expect("images/kolla/build.sh");
    assert!(status.success(), "images/kolla/build.sh failed");
    eprintln!(
        "kolla images ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(
        path("hosts.yaml"),
        format!(
            "hosts:\n  - {{name: aio, docker: 'unix://{}', address: 127.0.0.1, groups: [control, network, compute]}}\n",
            lab.socket().display()
        ),
    )
    .unwrap();
    // Images as build.sh tags them (kolla/NAME:TAG): no registry in front.
    std::fs::write(path("globals.yaml"), "docker_registry: \"\"\n").unwrap();
    let kiln = |args: &[&str]| {
        let mut full = vec![KILN, "--data-dir"];
        let data = path("data");
        full.push(&data);
        full.extend_from_slice(args);
        common::exit_and_text(&lab.exec_in_ns(&full))
    };
    let (code, out, err) = kiln(&["genpwd", "--passwords", &path("passwords.yaml")]);
    assert_eq!(code, 0, "{out}{err}");
    let services = |command: &str| {
        let started = Instant::now();
        let hosts = path("hosts.yaml");
        let globals = path("globals.yaml");
        let passwords = path("passwords.yaml");
        let result = kiln(&[
            "services",
            command,
            "-i",
            &hosts,
            "--globals",
            &globals,
            "--passwords",
            &passwords,
        ]);
        eprintln!(
            "kiln services {command}: exit {} in {:.1} s\n{}{}",
            result.0,
            started.elapsed().as_secs_f64(),
            result.1,
            result.2
        );
        result
    };

    let (code, out, err) = services("prechecks");
    assert_eq!(code, 0, "prechecks: {out}{err}");
    let (code, out, err) = services("deploy");
    assert_eq!(code, 0, "deploy failed: {out}{err}");
    for container in ["mariadb", "memcached", "rabbitmq", "keystone", "glance_api"] {
        assert!(out.contains(container), "{container} missing:\n{out}");
    }

    // The real client, from the keystone image.
    let passwords = std::fs::read_to_string(path("passwords.yaml")).unwrap();
    let admin = passwords
        .lines()
        .find_map(|l| l.strip_prefix("keystone_admin_password: "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("admin password");
    let try_openstack = |args: &[&str]| {
        let password = format!("OS_PASSWORD={admin}");
        let mut full = vec![
            "exec",
            "-e",
            "OS_AUTH_URL=http://127.0.0.1:5000/v3",
            "-e",
            "OS_IDENTITY_API_VERSION=3",
            "-e",
            "OS_USERNAME=admin",
            "-e",
            &password,
            "-e",
            "OS_PROJECT_NAME=admin",
            "-e",
            "OS_USER_DOMAIN_NAME=Default",
            "-e",
            "OS_PROJECT_DOMAIN_NAME=Default",
            "-e",
            "OS_INTERFACE=internal",
            "keystone",
            "openstack",
        ];
        full.extend_from_slice(args);
        lab.outer_docker(&full)
    };
    let openstack = |args: &[&str]| {
        let out = try_openstack(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "openstack {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
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
    let started = Instant::now();
    let status = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/images/kolla/build.sh"
        ))
        .args([
            "--only",
            "placement-api,nova-api,nova-conductor,nova-scheduler,nova-compute",
        ])
        .env("DOCKER_HOST", format!("unix://{}", lab.socket().display()))
        .status()
        .expect("images/kolla/build.sh");
    assert!(status.success(), "images/kolla/build.sh (compute) failed");
    eprintln!(
        "compute images ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let ids = |names: &[&str]| {
        let mut args = vec!["inspect", "-f", "{{.Id}}"];
        args.extend_from_slice(names);
        let out = lab.outer_docker(&args);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let slice = ["mariadb", "memcached", "rabbitmq", "keystone", "glance_api"];
    let before = ids(&slice);
    std::fs::write(
        path("globals.yaml"),
        "docker_registry: \"\"\nenable_placement: yes\nenable_nova: yes\n\
         nova_compute_driver: fake.SmallFakeDriver\n",
    )
    .unwrap();
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
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
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
        std::thread::sleep(std::time::Duration::from_secs(2));
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
