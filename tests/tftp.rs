//! The TFTP server against the real `curl` client on loopback: byte-exact transfers, observer
//! events, confinement to the root, refused writes, and Debian's own undionly.kpxe; a raw UDP
//! client for what curl cannot do (windowsize, block-number rollover, duplicate ACKs and RRQs,
//! client ERRORs, garbage, a client that stops acknowledging, shutdown mid-transfer).
//! Needs the Debian packages `curl` and `ipxe`.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln::boot::tftp::{self, TftpConfig, TftpFailure, TftpObserver};
use rand::RngCore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Started(String),
    Finished {
        file: String,
        bytes: u64,
        block_size: Option<u16>,
    },
    Failed {
        file: String,
        reason: TftpFailure,
    },
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl Recorder {
    fn push(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }

    /// Waits for the first event matching `pred`; transfer-end events follow the client's exit.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.0.lock().unwrap().iter().find(|e| pred(e)) {
                return e.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {what} event; saw {:?}",
                self.0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl TftpObserver for Recorder {
    fn transfer_started(&self, _peer: SocketAddr, file: &str) {
        self.push(Event::Started(file.into()));
    }
    fn transfer_finished(
        &self,
        _peer: SocketAddr,
        file: &str,
        bytes: u64,
        block_size: Option<u16>,
    ) {
        self.push(Event::Finished {
            file: file.into(),
            bytes,
            block_size,
        });
    }
    fn transfer_failed(&self, _peer: SocketAddr, file: &str, reason: &TftpFailure) {
        self.push(Event::Failed {
            file: file.into(),
            reason: reason.clone(),
        });
    }
}

struct Server {
    addr: SocketAddr,
    events: Arc<Recorder>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), tftp::TftpError>>,
}

fn start(root: &Path) -> Server {
    let config = TftpConfig {
        root: root.to_path_buf(),
        ..TftpConfig::default()
    };
    start_with(config)
}

fn start_with(config: TftpConfig) -> Server {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let events = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(tftp::run(socket, config, events.clone(), shutdown.clone()));
    Server {
        addr,
        events,
        shutdown,
        task,
    }
}

impl Server {
    /// `curl` fetching `path` (sent as-is, so `..` reaches the server) into `out`.
    async fn fetch(&self, path: &str, out: &Path, extra: &[&str]) -> bool {
        let url = format!("tftp://{}/{path}", self.addr);
        let status = tokio::process::Command::new("curl")
            .args(["-s", "--path-as-is", "--max-time", "20", "-o"])
            .arg(out)
            .args(extra)
            .arg(&url)
            .status()
            .await
            .expect("curl is not installed (Debian package curl)");
        status.success()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        result.expect("server did not stop").unwrap().unwrap();
    }
}

fn random_file(path: &Path, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(path, &data).unwrap();
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_files_byte_for_byte_and_reports_completion() {
    let dir = tempfile::tempdir().unwrap();
    let image = random_file(&dir.path().join("undionly.kpxe"), 100 * 1024 + 123);
    // A multiple of the block size ends with an empty block: still a complete transfer.
    let exact = random_file(&dir.path().join("exact.bin"), 512 * 8);
    std::os::unix::fs::symlink("undionly.kpxe", dir.path().join("alias.kpxe")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let server = start(dir.path());

    let got = out.path().join("a");
    assert!(
        server
            .fetch("undionly.kpxe", &got, &["--tftp-blksize", "1468"])
            .await
    );
    assert!(
        std::fs::read(&got).unwrap() == image,
        "undionly.kpxe differs"
    );
    let done = server
        .events
        .wait_for("finished", |e| matches!(e, Event::Finished { .. }))
        .await;
    let want = Event::Finished {
        file: "undionly.kpxe".into(),
        bytes: image.len() as u64,
        block_size: Some(1468),
    };
    assert_eq!(done, want);
    assert_eq!(
        server.events.0.lock().unwrap()[0],
        Event::Started("undionly.kpxe".into())
    );

    let got = out.path().join("b");
    assert!(server.fetch("exact.bin", &got, &[]).await);
    assert!(std::fs::read(&got).unwrap() == exact, "exact.bin differs");
    let done = server
        .events
        .wait_for(
            "finished exact.bin",
            |e| matches!(e, Event::Finished { file, .. } if file == "exact.bin"),
        )
        .await;
    assert_eq!(
        done,
        Event::Finished {
            file: "exact.bin".into(),
            bytes: exact.len() as u64,
            block_size: Some(512)
        }
    );

    // A symlink that stays inside the root is served.
    let got = out.path().join("c");
    assert!(
        server
            .fetch("alias.kpxe", &got, &["--tftp-blksize", "1024"])
            .await
    );
    assert!(std::fs::read(&got).unwrap() == image, "alias.kpxe differs");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_outside_the_root_is_served() {
    let top = tempfile::tempdir().unwrap();
    let root = top.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(root.join("efi")).unwrap();
    let marker = "kiln-secret-outside-root";
    std::fs::write(top.path().join("secret.txt"), marker).unwrap();
    std::os::unix::fs::symlink(top.path().join("secret.txt"), root.join("link-out")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let server = start(&root);

    let cases: &[(&str, TftpFailure)] = &[
        ("../secret.txt", TftpFailure::BadPath),
        ("../../etc/passwd", TftpFailure::BadPath),
        ("efi/../../secret.txt", TftpFailure::BadPath),
        ("link-out", TftpFailure::OutsideRoot),
        ("etc-link/passwd", TftpFailure::OutsideRoot),
        ("/etc/passwd", TftpFailure::NotFound), // a leading '/' means the root
        ("missing.kpxe", TftpFailure::NotFound),
        ("efi", TftpFailure::NotAFile),
    ];
    for (i, (path, reason)) in cases.iter().enumerate() {
        let got = out.path().join(i.to_string());
        assert!(!server.fetch(path, &got, &[]).await, "{path} was served");
        let leaked = std::fs::read(&got).unwrap_or_default();
        assert!(
            leaked.is_empty(),
            "{path}: curl wrote {} bytes",
            leaked.len()
        );
        let want = Event::Failed {
            file: (*path).into(),
            reason: reason.clone(),
        };
        server.events.wait_for(path, |e| *e == want).await;
    }
    let events = server.events.0.lock().unwrap().clone();
    assert!(
        events.iter().all(|e| matches!(e, Event::Failed { .. })),
        "{events:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_requests_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    random_file(&src.path().join("upload.bin"), 4096);
    let server = start(root.path());
    let url = format!("tftp://{}/upload.bin", server.addr);
    let status = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "20", "-T"])
        .arg(src.path().join("upload.bin"))
        .arg(&url)
        .status()
        .await
        .unwrap();
    assert!(!status.success(), "upload accepted");
    assert!(!root.path().join("upload.bin").exists());
    let want = Event::Failed {
        file: "upload.bin".into(),
        reason: TftpFailure::WriteRefused,
    };
    server
        .events
        .wait_for("write refused", |e| *e == want)
        .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_debian_ipxe_undionly() {
    let root = PathBuf::from(tftp::DEFAULT_ROOT);
    let original = std::fs::read(root.join("undionly.kpxe"))
        .expect("/usr/lib/ipxe/undionly.kpxe missing: install the Debian package ipxe");
    let out = tempfile::tempdir().unwrap();
    let server = start(&root);
    let got = out.path().join("undionly.kpxe");
    assert!(
        server
            .fetch("undionly.kpxe", &got, &["--tftp-blksize", "1468"])
            .await
    );
    assert!(
        std::fs::read(&got).unwrap() == original,
        "Debian's undionly.kpxe differs"
    );
    let want = Event::Finished {
        file: "undionly.kpxe".into(),
        bytes: original.len() as u64,
        block_size: Some(1468),
    };
    server.events.wait_for("finished", |e| *e == want).await;
    server.stop().await;
}

#[tokio::test]
async fn unusable_root_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = TftpConfig {
        root: dir.path().join("absent"),
        ..TftpConfig::default()
    };
    let result = tftp::run(
        socket,
        config,
        Arc::new(Recorder::default()),
        CancellationToken::new(),
    )
    .await;
    assert!(
        matches!(result, Err(tftp::TftpError::Root { .. })),
        "{result:?}"
    );
}

/// Speaks TFTP by hand, for what curl cannot do: windowsize, duplicate or missing ACKs,
/// ERROR packets, garbage.
struct Raw {
    socket: tokio::net::UdpSocket,
    listener: SocketAddr,
}

impl Raw {
    async fn new(listener: SocketAddr) -> Self {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        Self { socket, listener }
    }

    /// An RRQ for `file` in octet mode with `options` (name, value, name, value, ...).
    async fn read(&self, file: &str, options: &[&str]) {
        let mut rrq = vec![0, 1];
        for field in [file, "octet"].iter().chain(options) {
            rrq.extend_from_slice(field.as_bytes());
            rrq.push(0);
        }
        self.socket.send_to(&rrq, self.listener).await.unwrap();
    }

    async fn recv(&self) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; 70_000];
        let got = tokio::time::timeout(Duration::from_secs(5), self.socket.recv_from(&mut buf));
        let (n, from) = got.await.expect("no reply").unwrap();
        buf.truncate(n);
        (buf, from)
    }

    /// True if nothing arrives for `wait`.
    async fn quiet(&self, wait: Duration) -> bool {
        let mut buf = [0u8; 2048];
        tokio::time::timeout(wait, self.socket.recv_from(&mut buf))
            .await
            .is_err()
    }

    async fn ack(&self, block: u16, to: SocketAddr) {
        let [hi, lo] = block.to_be_bytes();
        self.socket.send_to(&[0, 4, hi, lo], to).await.unwrap();
    }
}

/// The options of an OACK, names lower-cased.
fn oack_options(packet: &[u8]) -> HashMap<String, String> {
    assert_eq!(&packet[..2], &[0, 6], "expected OACK, got {packet:?}");
    let fields: Vec<String> = packet[2..]
        .split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| String::from_utf8_lossy(f).to_lowercase())
        .collect();
    fields
        .chunks(2)
        .map(|kv| (kv[0].clone(), kv[1].clone()))
        .collect()
}

fn options(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Negotiate blksize 1024, windowsize 4 and tsize, take the first window, then stop
/// acknowledging like a client that died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_transfer_then_silent_client_is_reported_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let image = random_file(&dir.path().join("snponly.efi"), 10_000);
    let server = start_with(TftpConfig {
        root: dir.path().to_path_buf(),
        timeout: Duration::from_millis(200),
        max_send_retries: 1,
        ..TftpConfig::default()
    });
    let client = Raw::new(server.addr).await;
    let asked = ["blksize", "1024", "windowsize", "4", "tsize", "0"];
    client.read("snponly.efi", &asked).await;
    let (oack, transfer) = client.recv().await;
    let want = options(&[("blksize", "1024"), ("windowsize", "4"), ("tsize", "10000")]);
    assert_eq!(oack_options(&oack), want);
    assert_eq!(
        transfer.ip(),
        server.addr.ip(),
        "transfer socket must use the listen IP"
    );
    assert_ne!(
        transfer.port(),
        server.addr.port(),
        "transfers come from a new port"
    );

    client.ack(0, transfer).await;
    for block in 1..=4u16 {
        let (data, _) = client.recv().await;
        assert_eq!(&data[..4], &[0, 3, 0, block as u8], "DATA {block}");
        let start = (usize::from(block) - 1) * 1024;
        assert!(
            data[4..] == image[start..start + 1024],
            "block {block} content"
        );
    }
    // No ACK: after the retries the server gives up and reports how far it had sent.
    let want = Event::Failed {
        file: "snponly.efi".into(),
        reason: TftpFailure::Interrupted { bytes: 4096 },
    };
    server.events.wait_for("interrupted", |e| *e == want).await;
    server.stop().await;
}

/// 70,001 blocks of 8 bytes: block numbers wrap from 65535 to 0 and the file still arrives
/// whole. Windows of 64 keep it quick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_numbers_roll_over_past_65535() {
    let dir = tempfile::tempdir().unwrap();
    let image = random_file(&dir.path().join("big.bin"), 8 * 70_000 + 5);
    let server = start(dir.path());
    let client = Raw::new(server.addr).await;
    client
        .read("big.bin", &["blksize", "8", "windowsize", "64"])
        .await;
    let (oack, transfer) = client.recv().await;
    assert_eq!(
        oack_options(&oack),
        options(&[("blksize", "8"), ("windowsize", "64")])
    );
    client.ack(0, transfer).await;
    let mut got = Vec::with_capacity(image.len());
    let mut block = 0u64;
    loop {
        let (data, _) = client.recv().await;
        block += 1;
        let wire = (block % 65536) as u16;
        assert_eq!(
            &data[..4],
            &[0, 3, (wire >> 8) as u8, wire as u8],
            "DATA {block}"
        );
        got.extend_from_slice(&data[4..]);
        let last = data.len() < 4 + 8;
        if last || block.is_multiple_of(64) {
            client.ack(wire, transfer).await;
        }
        if last {
            break;
        }
    }
    assert_eq!(block, 70_001);
    assert!(got == image, "rolled-over file differs");
    let want = Event::Finished {
        file: "big.bin".into(),
        bytes: image.len() as u64,
        block_size: Some(8),
    };
    server.events.wait_for("finished", |e| *e == want).await;
    server.stop().await;
}

/// A duplicate ACK gets no second DATA (Sorcerer's Apprentice), a retransmitted RRQ no second
/// transfer, and the client's ERROR ends the transfer at once, not after the retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_ignored_and_client_errors_abort() {
    let dir = tempfile::tempdir().unwrap();
    random_file(&dir.path().join("ipxe.efi"), 5000);
    let server = start(dir.path()); // 3 s timeout, 5 retries: 18 s before giving up
    let client = Raw::new(server.addr).await;
    client.read("ipxe.efi", &["blksize", "1000"]).await;
    client.read("ipxe.efi", &["blksize", "1000"]).await;
    let (oack, transfer) = client.recv().await;
    assert_eq!(oack_options(&oack), options(&[("blksize", "1000")]));
    client.ack(0, transfer).await;
    let (data, _) = client.recv().await;
    assert_eq!(&data[..4], &[0, 3, 0, 1]);
    client.ack(1, transfer).await;
    client.ack(1, transfer).await;
    let (data, _) = client.recv().await;
    assert_eq!(&data[..4], &[0, 3, 0, 2]);
    assert!(
        client.quiet(Duration::from_millis(300)).await,
        "a second OACK or DATA 2 arrived"
    );
    let started = Instant::now();
    client
        .socket
        .send_to(b"\x00\x05\x00\x00user abort\x00", transfer)
        .await
        .unwrap();
    let want = Event::Failed {
        file: "ipxe.efi".into(),
        reason: TftpFailure::Interrupted { bytes: 2000 },
    };
    server.events.wait_for("aborted", |e| *e == want).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "ERROR not acted on"
    );
    let events = server.events.0.lock().unwrap().clone();
    assert_eq!(events.len(), 2, "one transfer only: {events:?}");
    server.stop().await;
}

/// Garbage on the listening port never stops the server; a bad mode is answered with an ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let image = random_file(&dir.path().join("undionly.kpxe"), 3000);
    let server = start_with(TftpConfig {
        root: dir.path().to_path_buf(),
        block_size_limit: Some(1024),
        ..TftpConfig::default()
    });
    let client = Raw::new(server.addr).await;
    let garbage: &[&[u8]] = &[
        b"",
        b"\x00",
        b"\x00\x01",
        b"\x00\x01abc",
        b"\x00\x04\x00\x01",
        b"\xff\xff\xff",
    ];
    for datagram in garbage {
        client.socket.send_to(datagram, server.addr).await.unwrap();
    }
    let mode = Raw::new(server.addr).await;
    mode.socket
        .send_to(b"\x00\x01undionly.kpxe\x00mail\x00", server.addr)
        .await
        .unwrap();
    let (error, _) = mode.recv().await;
    assert_eq!(&error[..4], &[0, 5, 0, 4], "illegal operation: {error:?}");
    assert!(String::from_utf8_lossy(&error).contains("mail"));

    // Still serving, with blksize capped at the configured limit.
    let out = tempfile::tempdir().unwrap();
    let got = out.path().join("a");
    assert!(
        server
            .fetch("undionly.kpxe", &got, &["--tftp-blksize", "1468"])
            .await
    );
    assert!(std::fs::read(&got).unwrap() == image);
    let want = Event::Finished {
        file: "undionly.kpxe".into(),
        bytes: 3000,
        block_size: Some(1024),
    };
    server.events.wait_for("finished", |e| *e == want).await;
    server.stop().await;
}

/// Shutting down mid-transfer reports the transfer as interrupted before `run` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_running_transfers() {
    let dir = tempfile::tempdir().unwrap();
    random_file(&dir.path().join("ipxe.pxe"), 2000);
    let server = start(dir.path());
    let client = Raw::new(server.addr).await;
    client.read("ipxe.pxe", &[]).await;
    let (data, _) = client.recv().await;
    assert_eq!(&data[..4], &[0, 3, 0, 1], "no options: DATA 1 answers");
    assert_eq!(data.len(), 4 + 512);
    let events = Arc::clone(&server.events);
    server.stop().await;
    let want = Event::Failed {
        file: "ipxe.pxe".into(),
        reason: TftpFailure::Interrupted { bytes: 512 },
    };
    assert_eq!(events.0.lock().unwrap().last(), Some(&want));
}
