//! The boot HTTP server end to end: a real SQLite store, the router on 127.0.0.1:0, and an HTTP
//! client fetching scripts and files as iPXE would; plus golden files for every script kind.

use kiln::boot::http::{BootHttpConfig, BootHttpState, router};
use kiln::boot::ipxe::{self, ScriptKind, ScriptSettings};
use kiln::conductor::{BasicProvisioner, Conductor};
use kiln::model::{Event, Input, MacAddress, Node, ProvisionState, Step, Verb};
use kiln::store::Store;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_NONE_MATCH, RANGE};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const RACK: &str = "nodes:
  - name: ctl-01
    bmc: {kind: ipmi, address: 10.0.0.1, username: admin, password: pw-ctl-01-secret}
    nics: [{mac: '52:54:00:00:00:01'}]
  - name: cmp-01
    boot_mode: bios
    bmc: {kind: ipmi, address: 10.0.0.2, username: admin, password: pw-cmp-01-secret}
    nics: [{mac: '52:54:00:00:00:02'}]
  - name: cmp-02
    bmc: {kind: ipmi, address: 10.0.0.3, username: admin, password: pw-cmp-02-secret}
    nics: [{mac: '52:54:00:00:00:03'}]
  - name: stg-01
    bmc: {kind: ipmi, address: 10.0.0.4, username: admin, password: pw-stg-01-secret}
    nics: [{mac: '52:54:00:00:00:04'}]
  - name: vm-01
    boot_mode: bios
    bmc: {kind: ipmi, address: 10.0.0.5, username: admin, password: pw-vm-01-secret}
    nics: [{mac: '52:54:00:00:00:05'}]
";

const KERNEL: &[u8] = b"not really a kernel, but 40 bytes long..";

/// A store with ctl-01 deploying, cmp-01 and stg-01 active, cmp-02 manageable, and a files root
/// holding a deploy kernel, a ramdisk and an image, with a secret file just outside it.
struct Lab {
    dir: tempfile::TempDir,
    store: Store,
}

impl Lab {
    async fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await.unwrap();
        let specs = kiln::inventory::parse("rack.yaml", RACK).unwrap().nodes;
        store.enroll(&specs, false).await.unwrap();
        let conductor = Conductor::new(store.clone(), Arc::new(BasicProvisioner));
        for name in ["ctl-01", "cmp-01", "cmp-02", "stg-01", "vm-01"] {
            conductor.request(name, Verb::Manage).await.unwrap();
        }
        conductor.reconcile_once().await.unwrap();
        for name in ["ctl-01", "cmp-01", "stg-01", "vm-01"] {
            conductor.request(name, Verb::Provide).await.unwrap();
        }
        conductor.reconcile_once().await.unwrap();
        for name in ["ctl-01", "cmp-01", "stg-01", "vm-01"] {
            conductor.request(name, Verb::Deploy).await.unwrap();
        }
        for name in ["cmp-01", "stg-01"] {
            let node = store.node(name).await.unwrap();
            let step = Step {
                to: ProvisionState::Active,
                target: None,
            };
            let input = Input::Event(Event::Done);
            store
                .record_transition(&node, step, input, "test: deployed", None)
                .await
                .unwrap();
        }
        let files = dir.path().join("files");
        std::fs::create_dir_all(files.join("deploy")).unwrap();
        std::fs::create_dir_all(files.join("images")).unwrap();
        std::fs::write(files.join("deploy/vmlinuz"), KERNEL).unwrap();
        std::fs::write(files.join("deploy/initramfs.gz"), b"ramdisk").unwrap();
        std::fs::write(files.join("images/disk.raw"), image()).unwrap();
        std::fs::write(dir.path().join("secret.txt"), b"outside the root").unwrap();
        Lab { dir, store }
    }

    fn files(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    /// Starts the boot HTTP server on loopback; returns its address (`http://127.0.0.1:PORT`).
    async fn serve(&self, discovery: bool) -> String {
        self.serve_with(|config| config.scripts.discovery = discovery)
            .await
    }

    /// Like [`Lab::serve`], with the configuration adjusted by `tweak` (the base URL in scripts
    /// defaults to the listening address).
    async fn serve_with(&self, tweak: impl FnOnce(&mut BootHttpConfig)) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut config = BootHttpConfig::new(&base, "http://127.0.0.1:6385", self.files());
        tweak(&mut config);
        let app = router(BootHttpState::new(self.store.clone(), config));
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    async fn event_kinds(&self, name: &str) -> Vec<(String, String)> {
        let events = self.store.events(name).await.unwrap();
        events.into_iter().map(|e| (e.kind, e.detail)).collect()
    }
}

/// 3 MiB of non-repeating bytes, so a wrong offset cannot go unnoticed.
fn image() -> Vec<u8> {
    (0..3u32 << 20)
        .map(|i| (i ^ (i >> 8) ^ (i >> 16)) as u8)
        .collect()
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn script(base: &str, mac: &str) -> String {
    let reply = http()
        .get(format!("{base}/boot/{mac}.ipxe"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK, "{mac}");
    let content_type = reply.headers()["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = reply.text().await.unwrap();
    assert!(text.starts_with("#!ipxe\n"), "{text}");
    assert!(!text.contains("secret"), "a BMC password leaked:\n{text}");
    text
}

fn token_in(script: &str) -> String {
    let start = script.find("kiln.token=").expect("a token") + "kiln.token=".len();
    script[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn scripts_follow_the_provision_state() {
    let lab = Lab::new().await;
    let base = lab.serve(false).await;
    let ctl = lab.store.node("ctl-01").await.unwrap();
    assert_eq!(ctl.provision_state, ProvisionState::Deploying);

    let first = script(&base, "52:54:00:00:00:01").await;
    let kernel_url = format!("{base}/files/deploy/vmlinuz?node={}", ctl.uuid);
    assert!(first.contains(&format!("kernel {kernel_url} ")), "{first}");
    assert!(
        first.contains(&format!("kiln.node={}", ctl.uuid)),
        "{first}"
    );
    assert!(first.contains("kiln.api=http://127.0.0.1:6385 "), "{first}");
    assert!(
        first.contains(" initrd=initramfs.gz "),
        "UEFI needs initrd=:\n{first}"
    );
    assert!(first.contains("echo Kiln: ctl-01: "), "{first}");
    let token = token_in(&first);
    assert!(lab.store.check_agent_token(ctl.uuid, &token).await.unwrap());
    // iPXE sends `${mac}` with colons, but people type dashes and capitals.
    let second = script(&base, "52-54-00-00-00-01").await;
    let new_token = token_in(&second);
    assert_ne!(token, new_token);
    assert!(!lab.store.check_agent_token(ctl.uuid, &token).await.unwrap());
    assert!(
        lab.store
            .check_agent_token(ctl.uuid, &new_token)
            .await
            .unwrap()
    );

    // A HEAD (a monitoring probe, say) must not rotate the token of a booting ramdisk.
    let head = http()
        .head(format!("{base}/boot/52:54:00:00:00:01.ipxe"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        lab.store
            .check_agent_token(ctl.uuid, &new_token)
            .await
            .unwrap()
    );

    let bios = script(&base, "52:54:00:00:00:02").await;
    assert!(
        bios.contains("\nsanboot --no-describe --drive 0x80 "),
        "{bios}"
    );
    assert!(bios.contains("cmp-01"), "{bios}");
    let uefi = script(&base, "52:54:00:00:00:04").await;
    assert!(
        uefi.contains("\nexit\n") && uefi.contains("stg-01"),
        "{uefi}"
    );

    let waiting = script(&base, "52:54:00:00:00:03").await;
    assert!(waiting.contains("node cmp-02 is manageable; nothing to boot"));
    assert!(waiting.contains(&format!(
        "chain --replace --autofree {base}/boot/52:54:00:00:00:03.ipxe || goto retry"
    )));
    assert!(waiting.contains("\nsleep "), "{waiting}");

    let unknown = script(&base, "52:54:00:99:99:99").await;
    assert!(unknown.contains("not enrolled in Kiln and discovery is off"));
    assert!(unknown.contains("52:54:00:99:99:99"), "{unknown}");

    for bad in [
        "nonsense.ipxe",
        "52:54:00:00:00:01",
        "52:54:00:00:00:01.txt",
    ] {
        let reply = http()
            .get(format!("{base}/boot/{bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::NOT_FOUND, "{bad}");
    }

    let served = |kind: &str| ("script-served".to_string(), kind.to_string());
    assert_eq!(
        lab.event_kinds("ctl-01").await,
        [served("deploy"), served("deploy")]
    );
    assert_eq!(lab.event_kinds("cmp-01").await, [served("localboot")]);
    assert_eq!(lab.event_kinds("cmp-02").await, [served("nothing")]);
}

#[tokio::test]
async fn discovery_boots_unknown_machines_without_a_token() {
    let lab = Lab::new().await;
    let base = lab.serve(true).await;
    let text = script(&base, "52:54:00:99:99:99").await;
    assert!(text.contains("kiln.mode=discover"), "{text}");
    assert!(text.contains("kiln.mac=52:54:00:99:99:99"), "{text}");
    assert!(text.contains(&format!("kernel {base}/files/deploy/vmlinuz ")));
    assert!(
        !text.contains("kiln.token") && !text.contains("kiln.node"),
        "{text}"
    );
    // Enrolled nodes are unaffected by discovery.
    assert!(
        script(&base, "52:54:00:00:00:03")
            .await
            .contains("manageable")
    );
}

#[tokio::test]
async fn fetching_the_deploy_kernel_and_ramdisk_lands_on_the_timeline() {
    let lab = Lab::new().await;
    let base = lab.serve(false).await;
    let uuid = lab.store.node("ctl-01").await.unwrap().uuid;
    let get = |path: String| async move { http().get(path).send().await.unwrap() };

    let kernel = get(format!("{base}/files/deploy/vmlinuz?node={uuid}")).await;
    assert_eq!(kernel.bytes().await.unwrap(), KERNEL);
    get(format!("{base}/files/deploy/initramfs.gz?node={uuid}")).await;
    // Not the boot files, no node, an unknown node, a HEAD: none of these is an event.
    get(format!("{base}/files/images/disk.raw?node={uuid}")).await;
    get(format!("{base}/files/deploy/vmlinuz")).await;
    get(format!(
        "{base}/files/deploy/vmlinuz?node={}",
        Uuid::new_v4()
    ))
    .await;
    get(format!("{base}/files/deploy/vmlinuz?node=garbage")).await;
    http()
        .head(format!("{base}/files/deploy/vmlinuz?node={uuid}"))
        .send()
        .await
        .unwrap();

    let kinds = lab.event_kinds("ctl-01").await;
    assert_eq!(
        kinds,
        [
            ("kernel-fetched".into(), "deploy/vmlinuz".into()),
            ("ramdisk-fetched".into(), "deploy/initramfs.gz".into())
        ]
    );
}

#[tokio::test]
async fn files_support_head_ranges_and_etags() {
    let lab = Lab::new().await;
    let base = lab.serve(false).await;
    let url = format!("{base}/files/images/disk.raw");
    let image = image();
    let size = image.len();

    let full = http().get(&url).send().await.unwrap();
    assert_eq!(full.status(), StatusCode::OK);
    assert_eq!(full.headers()[CONTENT_LENGTH], size.to_string().as_str());
    assert_eq!(full.headers()[ACCEPT_RANGES], "bytes");
    let etag = full.headers()[ETAG].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert!(full.bytes().await.unwrap() == image, "full body differs");

    let head = http().head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()[CONTENT_LENGTH], size.to_string().as_str());
    assert_eq!(head.headers()[ETAG], etag.as_str());
    assert!(head.bytes().await.unwrap().is_empty());

    for (range, start, end) in [
        ("bytes=1000-1999", 1000, 1999),
        ("bytes=-100", size - 100, size - 1),
        ("bytes=3145000-", 3145000, size - 1),
        ("bytes=0-0", 0, 0),
    ] {
        let reply = http().get(&url).header(RANGE, range).send().await.unwrap();
        assert_eq!(reply.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        let want_range = format!("bytes {start}-{end}/{size}");
        assert_eq!(reply.headers()[CONTENT_RANGE], want_range.as_str());
        let want_len = (end - start + 1).to_string();
        assert_eq!(reply.headers()[CONTENT_LENGTH], want_len.as_str());
        assert_eq!(reply.bytes().await.unwrap(), &image[start..=end], "{range}");
    }

    let resume = |if_range: &str| {
        http()
            .get(&url)
            .header(RANGE, "bytes=10-19")
            .header("if-range", if_range)
            .send()
    };
    assert_eq!(
        resume(&etag).await.unwrap().status(),
        StatusCode::PARTIAL_CONTENT
    );
    let changed = resume("\"0-0\"").await.unwrap();
    assert_eq!(
        changed.status(),
        StatusCode::OK,
        "a changed file is sent whole"
    );

    let beyond = format!("bytes={size}-");
    let reply = http().get(&url).header(RANGE, beyond).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let want_range = format!("bytes */{size}");
    assert_eq!(reply.headers()[CONTENT_RANGE], want_range.as_str());

    let cached = http()
        .get(&url)
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(cached.headers()[ETAG], etag.as_str());
    let stale = http()
        .get(&url)
        .header(IF_NONE_MATCH, "\"0-0\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);

    for missing in ["images/none.raw", "images", "images/"] {
        let reply = http()
            .get(format!("{base}/files/{missing}"))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::NOT_FOUND, "{missing}");
    }
}

/// Sends a request line exactly as written (HTTP clients normalise `..` away before sending).
async fn raw_get(base: &str, target: &str) -> String {
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    reply
}

#[tokio::test]
async fn files_never_leave_the_root() {
    let lab = Lab::new().await;
    let base = lab.serve(false).await;
    let ok = raw_get(&base, "/files/deploy/vmlinuz").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    for target in [
        "/files/../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/%2E%2E%2Fsecret.txt",
        "/files/deploy/../../secret.txt",
        "/files/..%2fsecret.txt",
        "/files//etc/passwd",
        "/files/%2fetc%2fpasswd",
        "/files/../Cargo.toml",
    ] {
        let reply = raw_get(&base, target).await;
        assert!(reply.starts_with("HTTP/1.1 400 "), "{target}: {reply}");
        assert!(!reply.contains("outside the root"), "{target}: {reply}");
        assert!(!reply.contains("root:"), "{target}: {reply}");
    }
    // Through a normalising client the same attempts simply miss.
    for path in ["/files/../secret.txt", "/files/%2e%2e/secret.txt"] {
        let reply = http().get(format!("{base}{path}")).send().await.unwrap();
        assert_ne!(reply.status(), StatusCode::OK, "{path}");
    }
}

/// Renders every script kind for fixed inputs and compares it with `tests/golden/<name>.ipxe`;
/// `UPDATE_GOLDEN=1` rewrites the files instead.
#[test]
fn golden_scripts() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let settings = ScriptSettings::new("http://10.99.0.1:8080", "http://10.99.0.1:6385");
    let specs = kiln::inventory::parse("rack.yaml", RACK).unwrap().nodes;
    let node = |index: usize, state| {
        Node::fresh(
            Uuid::from_u128(0x6b3e0a1e_0000_4000_8000_000000000001 + index as u128),
            specs[index].clone(),
            state,
        )
    };
    let mac = |index: usize| specs[index].nics[0].mac;
    let unknown: MacAddress = "52:54:00:99:99:99".parse().unwrap();
    let token = "0123456789abcdef0123456789abcdef0123456789abcdef";
    let (uefi, bios) = (0, 1);
    let cases = [
        ("deploy-uefi", uefi, ProvisionState::Deploying),
        ("deploy-bios", bios, ProvisionState::CleanWait),
        ("localboot-uefi", uefi, ProvisionState::Active),
        ("localboot-bios", bios, ProvisionState::Active),
        ("nothing-manageable", 2, ProvisionState::Manageable),
    ];
    let mut rendered = Vec::new();
    for (name, index, state) in cases {
        let node = node(index, state);
        let kind = ipxe::script_for(Some(&node), false);
        let text = ipxe::render(&kind, mac(index), Some(&node), Some(token), &settings).unwrap();
        rendered.push((name, text));
    }
    for (name, discovery) in [("discovery", true), ("nothing-unknown", false)] {
        let kind = ipxe::script_for(None, discovery);
        rendered.push((
            name,
            ipxe::render(&kind, unknown, None, None, &settings).unwrap(),
        ));
    }
    assert!(matches!(
        ipxe::script_for(None, true),
        ScriptKind::Discovery
    ));

    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (name, text) in rendered {
        let path = golden.join(format!("{name}.ipxe"));
        if update {
            std::fs::create_dir_all(&golden).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            eprintln!("--- {} differs; rendered:\n{text}", path.display());
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "golden scripts differ: {stale:?} (UPDATE_GOLDEN=1 cargo test --test boot_http rewrites them)"
    );
}

/// A QEMU VM (TCG; SeaBIOS, or OVMF if `uefi`) network-booting with `mac` through the NIC's own
/// iPXE ROM from the server on 127.0.0.1:`port`. Its only
/// network is QEMU's user-mode stack with `restrict=on`; its one way out is a `guestfwd` of
/// 10.0.2.100:80 to that port, so nothing leaves loopback. Killed on drop.
fn start_vm(dir: &Path, port: &str, mac: &str, uefi: bool) -> (tokio::process::Child, PathBuf) {
    let log = dir.join(format!("serial-{}.log", mac.replace(':', "")));
    let netdev = format!(
        "user,id=n0,restrict=on,bootfile=http://10.0.2.100/boot/{mac}.ipxe,\
         guestfwd=tcp:10.0.2.100:80-cmd:busybox nc 127.0.0.1 {port}"
    );
    let mut vm = tokio::process::Command::new("qemu-system-x86_64");
    if uefi {
        vm.args([
            "-machine",
            "q35",
            "-bios",
            "/usr/share/qemu/OVMF.fd",
            "-m",
            "256",
        ]);
    } else {
        vm.args(["-machine", "pc,graphics=off", "-m", "128"]);
    }
    let vm = vm
        .args(["-accel", "tcg"])
        .args(["-display", "none", "-vga", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .args(["-no-reboot", "-boot", "n", "-netdev", &netdev])
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={mac}"))
        .kill_on_drop(true)
        .spawn()
        .expect("qemu-system-x86_64 runs");
    (vm, log)
}

/// Real iPXE (QEMU's NIC ROMs) runs each kind of script: deploy (fetches kernel and ramdisk, boots,
/// falls through to its retry loop), BIOS local boot (no disk, so `sanboot` fails and it retries),
/// UEFI local boot (`exit`), nothing (says why and retries) and discovery. Needs
/// `qemu-system-x86_64`, OVMF and busybox. Six VMs at once, about 30 s.
#[tokio::test]
async fn ipxe_in_vms_runs_every_script() {
    let lab = Lab::new().await;
    let base = lab
        .serve_with(|config| {
            config.scripts.http_base = "http://10.0.2.100".into();
            config.scripts.retry_secs = 1;
            config.scripts.discovery = true;
        })
        .await;
    // No kernel here: an iPXE script stands in for it, so `kernel`, `initrd` and `boot` all run
    // for real and the script then falls through to its retry loop.
    let fake_kernel = "#!ipxe\necho Kiln test: the stand-in kernel ran\n";
    std::fs::write(lab.files().join("deploy/vmlinuz"), fake_kernel).unwrap();
    let port = base.rsplit(':').next().unwrap();
    // (MAC, UEFI?, lines the serial log must show, how often each at least)
    let cases: [(&str, bool, &[&str], usize); 6] = [
        (
            "52:54:00:00:00:05",
            false,
            &[
                "Kiln: vm-01: booting the deploy ramdisk",
                "Kiln test: the stand-in kernel ran",
                "Kiln: vm-01: could not boot the deploy ramdisk; asking Kiln again in 1 s",
            ],
            2,
        ),
        (
            "52:54:00:00:00:01",
            true,
            &[
                "Kiln: ctl-01: booting the deploy ramdisk",
                "Kiln test: the stand-in kernel ran",
                "Kiln: ctl-01: could not boot the deploy ramdisk; asking Kiln again in 1 s",
            ],
            2,
        ),
        (
            "52:54:00:00:00:04",
            true,
            &["Kiln: stg-01: leaving iPXE so the UEFI firmware boots the local disk"],
            1,
        ),
        (
            "52:54:00:00:00:02",
            false,
            &[
                "Kiln: cmp-01: booting from local disk (BIOS drive 0x80)",
                "Kiln: cmp-01: local disk boot failed; asking Kiln again in 1 s",
            ],
            2,
        ),
        (
            "52:54:00:00:00:03",
            false,
            &["Kiln: cmp-02: node cmp-02 is manageable; nothing to boot"],
            2,
        ),
        (
            "52:54:00:99:99:99",
            false,
            &[
                "Kiln: 52:54:00:99:99:99: unknown machine; booting the ramdisk in discovery mode",
                "Kiln test: the stand-in kernel ran",
                "Kiln: 52:54:00:99:99:99: could not boot the discovery ramdisk",
            ],
            2,
        ),
    ];
    let vms: Vec<_> = cases
        .iter()
        .map(|(mac, uefi, _, _)| start_vm(lab.dir.path(), port, mac, *uefi))
        .collect();

    // Done when every log shows its lines often enough: a retry loop must have gone round.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(180);
    let count = |log: &Path, line: &str| {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.matches(line).count()
    };
    loop {
        let pending: Vec<&str> = cases
            .iter()
            .zip(&vms)
            .filter(|((_, _, lines, times), (_, log))| {
                lines.iter().any(|line| count(log, line) < *times)
            })
            .map(|((mac, ..), _)| *mac)
            .collect();
        if pending.is_empty() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let logs: Vec<String> = vms
                .iter()
                .map(|(_, log)| std::fs::read_to_string(log).unwrap_or_default())
                .collect();
            panic!("no progress for {pending:?}:\n{}", logs.join("\n-----\n"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    drop(vms);

    let deploy_boot = ["script-served", "kernel-fetched", "ramdisk-fetched"];
    for name in ["vm-01", "ctl-01"] {
        let kinds: Vec<String> = lab
            .event_kinds(name)
            .await
            .into_iter()
            .map(|(kind, _)| kind)
            .collect();
        assert_eq!(
            kinds[..6],
            [deploy_boot, deploy_boot].concat(),
            "{name}: {kinds:?}"
        );
    }
    let served = lab.event_kinds("cmp-02").await;
    assert!(
        served.len() >= 2
            && served
                .iter()
                .all(|(k, d)| k == "script-served" && d == "nothing")
    );
}
