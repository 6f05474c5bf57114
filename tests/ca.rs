//! The appliance CA against real peers: its files and modes, `openssl verify` and `x509 -text`
//! on what it issues, and a mutual-TLS request from reqwest (rustls) to `openssl s_server`.

use kiln::ca::{CertificateAuthority, IssuedCert};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const NODE: &str = "node1.lab";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl CLI is needed for these tests")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `cert` and its key as `dir/name.pem` and `dir/name-key.pem`; returns the two paths.
fn write_pair(dir: &Path, name: &str, cert: &IssuedCert) -> (String, String) {
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert_path, &cert.cert_pem).unwrap();
    std::fs::write(&key_path, cert.key_pem.expose()).unwrap();
    let s = |p: PathBuf| p.to_str().unwrap().to_string();
    (s(cert_path), s(key_path))
}

fn path_str(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_string()
}

#[test]
fn reload_gives_the_same_ca_with_private_file_modes() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("state").join("ca");
    let first = CertificateAuthority::load_or_create(&dir).unwrap();
    let second = CertificateAuthority::load_or_create(&dir).unwrap();
    assert_eq!(first.ca_pem(), second.ca_pem());
    assert_eq!(first.common_name(), second.common_name());
    assert!(first.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        first.ca_pem()
    );

    let deployer = first.deployer_client().unwrap();
    assert_eq!(
        second.deployer_client().unwrap().cert_pem,
        deployer.cert_pem
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("client-key.pem")).unwrap(),
        deployer.key_pem.expose()
    );

    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("ca-key.pem")), 0o600);
    assert_eq!(mode(&dir.join("client-key.pem")), 0o600);
    assert_eq!(mode(&dir.join("ca.pem")), 0o644);
    assert_eq!(mode(&dir.join("client.pem")), 0o644);
    // No temp file is left behind.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".lock",
            "ca-key.pem",
            "ca.pem",
            "client-key.pem",
            "client.pem"
        ]
    );
}

#[test]
fn two_appliances_get_different_cas() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = CertificateAuthority::load_or_create(a.path()).unwrap();
    let b = CertificateAuthority::load_or_create(b.path()).unwrap();
    assert_ne!(a.ca_pem(), b.ca_pem());
    assert_ne!(a.common_name(), b.common_name());
}

#[test]
fn concurrent_first_starts_agree_on_one_ca() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ca");
    let pems: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let ca = CertificateAuthority::load_or_create(&dir).unwrap();
                    let client = ca.deployer_client().unwrap();
                    format!("{}{}", ca.ca_pem(), client.cert_pem)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        pems.iter().all(|p| p == &pems[0]),
        "threads saw different CAs"
    );
}

#[test]
fn openssl_verifies_the_chain_purposes_and_names() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&tmp.path().join("ca")).unwrap();
    let other = CertificateAuthority::load_or_create(&tmp.path().join("other")).unwrap();
    let ca_file = path_str(&tmp.path().join("ca"), "ca.pem");
    let other_file = path_str(tmp.path(), "other-ca.pem");
    std::fs::write(&other_file, other.ca_pem()).unwrap();

    let ips = [
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
        "fd00::5".parse().unwrap(),
    ];
    let server = ca.issue_server(NODE, &ips).unwrap();
    let client = ca.issue_client("kiln-deployer").unwrap();
    let (server_pem, _) = write_pair(tmp.path(), "server", &server);
    let (client_pem, _) = write_pair(tmp.path(), "client", &client);

    for (cert, purpose) in [(&server_pem, "sslserver"), (&client_pem, "sslclient")] {
        let out = openssl(&["verify", "-purpose", purpose, "-CAfile", &ca_file, cert]);
        assert!(out.status.success(), "{cert}: {}", text(&out));
        assert!(text(&out).contains(": OK"), "{}", text(&out));

        let out = openssl(&["verify", "-purpose", purpose, "-CAfile", &other_file, cert]);
        assert!(!out.status.success(), "another CA verified {cert}");
        let why = text(&out);
        assert!(
            why.contains("unable to get local issuer certificate"),
            "{why}"
        );
    }
    // Each certificate is fit for its own purpose only.
    for (cert, purpose) in [(&server_pem, "sslclient"), (&client_pem, "sslserver")] {
        let out = openssl(&["verify", "-purpose", purpose, "-CAfile", &ca_file, cert]);
        assert!(!out.status.success(), "{cert} passed as {purpose}");
        let why = text(&out);
        assert!(why.contains("unsuitable certificate purpose"), "{why}");
    }

    let out = openssl(&["x509", "-noout", "-text", "-in", &server_pem]);
    let dump = text(&out);
    assert!(out.status.success(), "{dump}");
    assert!(dump.contains("DNS:node1.lab"), "{dump}");
    assert!(dump.contains("IP Address:10.0.0.5"), "{dump}");
    assert!(dump.contains("IP Address:FD00:0:0:0:0:0:0:5"), "{dump}");
    assert!(dump.contains("TLS Web Server Authentication"), "{dump}");
    assert!(!dump.contains("TLS Web Client Authentication"), "{dump}");
    assert!(dump.contains("Subject: CN = node1.lab"), "{dump}");
    assert!(dump.contains("CA:FALSE"), "{dump}");
    assert!(dump.contains("ecdsa-with-SHA256"), "{dump}");
    assert!(dump.contains("prime256v1"), "{dump}");
    let issuer = format!("Issuer: O = Kiln, CN = {}", ca.common_name());
    assert!(dump.contains(&issuer), "{dump}");

    let out = openssl(&["x509", "-noout", "-text", "-in", &client_pem]);
    let dump = text(&out);
    assert!(dump.contains("Subject: CN = kiln-deployer"), "{dump}");
    assert!(dump.contains("TLS Web Client Authentication"), "{dump}");
    assert!(!dump.contains("TLS Web Server Authentication"), "{dump}");

    let out = openssl(&["x509", "-noout", "-text", "-in", &ca_file]);
    let dump = text(&out);
    assert!(dump.contains("CA:TRUE, pathlen:0"), "{dump}");
    assert!(dump.contains("Certificate Sign, CRL Sign"), "{dump}");
    assert!(
        dump.contains("Subject: O = Kiln, CN = Kiln appliance CA "),
        "{dump}"
    );

    // Leaves last about ten years: valid 9 years from now, expired in 11.
    let year = 365 * 86_400;
    let checkend = |secs: u64| {
        let secs = secs.to_string();
        openssl(&["x509", "-noout", "-checkend", &secs, "-in", &server_pem])
            .status
            .success()
    };
    assert!(checkend(9 * year));
    assert!(!checkend(11 * year));

    // Serial numbers differ between certificates for the same subject.
    let serial = |pem: &str| text(&openssl(&["x509", "-noout", "-serial", "-in", pem]));
    let again = ca.issue_server(NODE, &ips).unwrap();
    let (again_pem, _) = write_pair(tmp.path(), "again", &again);
    assert_ne!(serial(&server_pem), serial(&again_pem));
}

#[test]
fn formatting_never_shows_a_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
    let server = ca.issue_server(NODE, &[]).unwrap();
    let client = ca.deployer_client().unwrap();
    assert!(server.key_pem.expose().contains("PRIVATE KEY"));
    let rendered = [
        format!("{ca:?}"),
        format!("{ca:#?}"),
        format!("{server:?}"),
        format!("{client:#?}"),
        format!("{}", server.key_pem),
        format!("{:?}", server.identity_pem()),
        format!("{}", client.identity_pem()),
    ];
    for text in rendered {
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }
    assert!(
        client
            .identity_pem()
            .expose()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
}

/// `openssl s_server` requiring a client certificate from `ca_file`, killed on drop.
struct TlsServer {
    child: Child,
    addr: SocketAddr,
}

impl TlsServer {
    fn start(ca_file: &str, cert: &str, key: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new("openssl")
            .args(["s_server", "-Verify", "1", "-verify_return_error", "-www"])
            .args(["-CAfile", ca_file, "-cert", cert, "-key", key])
            .args(["-accept", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the openssl CLI is needed for these tests");
        let server = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "openssl s_server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn https_client(
    trust: &str,
    identity: Option<&IssuedCert>,
    resolve: Option<(&str, SocketAddr)>,
) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(trust.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10));
    if let Some(identity) = identity {
        let pem = identity.identity_pem();
        builder = builder.identity(reqwest::Identity::from_pem(pem.expose().as_bytes()).unwrap());
    }
    if let Some((name, addr)) = resolve {
        builder = builder.resolve(name, addr);
    }
    builder.build().unwrap()
}

/// The page, or the whole error chain as text so a test can tell why the request failed.
async fn get(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let reply = async {
        client
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    };
    reply.await.map_err(|err| {
        let mut chain = String::new();
        let mut cause: Option<&dyn std::error::Error> = Some(&err);
        while let Some(e) = cause {
            chain.push_str(&format!("{e}: "));
            cause = e.source();
        }
        chain
    })
}

async fn refused(client: &reqwest::Client, url: &str, reason: &str) {
    match get(client, url).await {
        Ok(page) => panic!("{url} answered although it should fail with {reason:?}: {page}"),
        Err(chain) => assert!(chain.contains(reason), "expected {reason:?} in {chain}"),
    }
}

#[tokio::test]
async fn mutual_tls_with_openssl_s_server() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&tmp.path().join("ca")).unwrap();
    let other = CertificateAuthority::load_or_create(&tmp.path().join("other")).unwrap();
    let ca_file = path_str(&tmp.path().join("ca"), "ca.pem");
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let server_cert = ca.issue_server(NODE, &[loopback]).unwrap();
    let (cert, key) = write_pair(tmp.path(), "server", &server_cert);
    let server = TlsServer::start(&ca_file, &cert, &key);
    let by_ip = format!("https://{}/", server.addr);
    let by_name = format!("https://{NODE}:{}/", server.addr.port());

    let deployer = ca.deployer_client().unwrap();
    let good = https_client(ca.ca_pem(), Some(&deployer), Some((NODE, server.addr)));
    let page = get(&good, &by_ip).await.expect("mutual TLS by IP SAN");
    // s_server -www reports the client certificate it verified.
    assert!(page.contains("kiln-deployer"), "{page}");
    get(&good, &by_name).await.expect("mutual TLS by DNS SAN");

    // A name the certificate does not carry is refused by the client.
    let wrong_name = format!("https://other.lab:{}/", server.addr.port());
    let misnamed = https_client(
        ca.ca_pem(),
        Some(&deployer),
        Some(("other.lab", server.addr)),
    );
    refused(&misnamed, &wrong_name, "not valid for name \"other.lab\"").await;

    // A client certificate from another CA, or none, is refused by the server.
    let foreign = other.issue_client("kiln-deployer").unwrap();
    let intruder = https_client(ca.ca_pem(), Some(&foreign), None);
    refused(&intruder, &by_ip, "UnknownCA").await;
    let anonymous = https_client(ca.ca_pem(), None, None);
    refused(&anonymous, &by_ip, "CertificateRequired").await;

    // A client that trusts only another CA refuses the server.
    let distrustful = https_client(other.ca_pem(), Some(&deployer), None);
    refused(&distrustful, &by_ip, "UnknownIssuer").await;

    // The server is still healthy after the refusals.
    get(&good, &by_ip).await.expect("mutual TLS after refusals");
}
