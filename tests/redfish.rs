//! The Redfish driver against the real sushy-tools emulator (fake driver, htpasswd basic auth) on
//! loopback: power, boot override, system discovery, credentials, TLS, sessions, and failures
//! (a closed port, a BMC that never answers) that must not hold up a healthy BMC.

#[path = "peers/sushy.rs"]
mod sushy;

use kiln::bmc::redfish::{AuthMethod, RedfishBmc, RedfishOptions};
use kiln::bmc::{Bmc, BmcError, BootDevice, PowerAction, PowerState};
use kiln::model::{BmcKind, BmcSpec, Secret, TlsVerify};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use sushy::{PASSWORD, SYSTEM_A, SYSTEM_B, Sushy, SushyOptions, USER};

/// One emulator with both systems for the whole binary: power tests use A, boot tests use B.
fn shared() -> &'static Sushy {
    static SHARED: OnceLock<Sushy> = OnceLock::new();
    SHARED.get_or_init(|| Sushy::start(SushyOptions::default()))
}

fn spec(sushy: &Sushy, system_id: Option<&str>, password: &str) -> BmcSpec {
    BmcSpec {
        kind: BmcKind::Redfish,
        address: sushy.base_url.clone(),
        port: sushy.port,
        username: USER.into(),
        password: Secret::new(password),
        system_id: system_id.map(str::to_string),
        cipher_suite: None,
        tls_verify: TlsVerify::System,
    }
}

fn fast() -> RedfishOptions {
    RedfishOptions {
        poll_interval: Duration::from_millis(250),
        ..RedfishOptions::default()
    }
}

/// Captures every tracing event of this thread (the tests run on current-thread runtimes).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The whole power sequence on system A, in one test: sushy-tools' fake driver keeps each system
/// as one record that it reads and writes back whole, so two tests changing the same system at
/// once could undo each other's changes. Only this test changes A; only the boot test changes B.
#[tokio::test]
async fn power_on_cycle_reset_off_status_and_bounded_wait() {
    let sushy = shared();
    let bmc =
        RedfishBmc::with_options(&spec(sushy, Some(&SYSTEM_A.path()), PASSWORD), fast()).unwrap();
    assert_eq!(bmc.power_state().await, Ok(PowerState::Off));

    // Off and SoftOff when already off send nothing and succeed at once.
    let before = sushy.resets_accepted(&SYSTEM_A);
    bmc.power(PowerAction::Off).await.unwrap();
    bmc.power(PowerAction::SoftOff).await.unwrap();
    assert_eq!(sushy.resets_accepted(&SYSTEM_A), before);
    assert_eq!(bmc.auth_method(), Some(AuthMethod::Basic));

    let started = Instant::now();
    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(bmc.power_state().await, Ok(PowerState::On));
    assert_eq!(sushy.resets_accepted(&SYSTEM_A) - before, 1);
    eprintln!("power on: {:?}", started.elapsed());

    // sushy-tools does not list PowerCycle: the driver must fall back to ForceOff, then On.
    let before = sushy.resets_accepted(&SYSTEM_A);
    let started = Instant::now();
    bmc.power(PowerAction::Cycle).await.unwrap();
    assert_eq!(bmc.power_state().await, Ok(PowerState::On));
    let sent = sushy.resets_accepted(&SYSTEM_A) - before;
    assert_eq!(sent, 2, "{}", sushy.log());
    eprintln!("power cycle: {:?}", started.elapsed());

    let before = sushy.resets_accepted(&SYSTEM_A);
    let started = Instant::now();
    bmc.power(PowerAction::Reset).await.unwrap();
    assert_eq!(bmc.power_state().await, Ok(PowerState::On));
    assert_eq!(sushy.resets_accepted(&SYSTEM_A) - before, 1);
    eprintln!("power reset: {:?}", started.elapsed());

    // Already on: nothing to send.
    let before = sushy.resets_accepted(&SYSTEM_A);
    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(sushy.resets_accepted(&SYSTEM_A), before);

    let started = Instant::now();
    bmc.power(PowerAction::Off).await.unwrap();
    assert_eq!(bmc.power_state().await, Ok(PowerState::Off));
    eprintln!("power off: {:?}", started.elapsed());

    // The fake driver applies a change at `int(now) + randint(1, 11)`: at the next whole second
    // at the earliest. Starting early in a second leaves >= 0.5 s, so a zero wait must give up
    // with a plain reason after its one read. (A is left powering on; nothing else changes it.)
    let impatient = RedfishOptions {
        power_wait: Duration::ZERO,
        ..RedfishOptions::default()
    };
    let bmc =
        RedfishBmc::with_options(&spec(sushy, Some(SYSTEM_A.uuid), PASSWORD), impatient).unwrap();
    let into_second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_millis();
    if into_second > 400 {
        tokio::time::sleep(Duration::from_millis(u64::from(1000 - into_second))).await;
    }
    let before = sushy.resets_accepted(&SYSTEM_A);
    let started = Instant::now();
    let err = bmc.power(PowerAction::On).await.unwrap_err();
    assert!(
        matches!(&err, BmcError::Protocol(m) if m.contains("still off") && m.contains("On")),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(sushy.resets_accepted(&SYSTEM_A), before + 1);
}

#[tokio::test]
async fn one_time_pxe_boot_is_set_and_read_back() {
    let sushy = shared();
    // By name: sushy-tools answers with a 307 redirect to the UUID path, which must be followed.
    let bmc = RedfishBmc::new(&spec(sushy, Some(SYSTEM_B.name), PASSWORD)).unwrap();
    let initial = bmc.boot_device().await.unwrap();
    assert_eq!(
        initial.device,
        Some(BootDevice::Disk),
        "fake driver default is Hdd"
    );

    bmc.set_boot_device(BootDevice::Pxe, false, true)
        .await
        .unwrap();
    let setting = bmc.boot_device().await.unwrap();
    assert_eq!(setting.device, Some(BootDevice::Pxe));
    assert_eq!(setting.uefi, Some(true));
    // The fake driver reads Once back as Continuous: report what the BMC says.
    assert!(setting.persistent);

    bmc.set_boot_device(BootDevice::Disk, true, false)
        .await
        .unwrap();
    let setting = bmc.boot_device().await.unwrap();
    assert_eq!(setting.device, Some(BootDevice::Disk));
    assert_eq!(setting.uefi, Some(false), "Legacy mode was requested");

    bmc.set_boot_device(BootDevice::Pxe, false, true)
        .await
        .unwrap();
    assert_eq!(
        bmc.boot_device().await.unwrap().device,
        Some(BootDevice::Pxe)
    );
}

#[tokio::test]
async fn discovery_needs_a_system_id_when_there_are_two() {
    let sushy = shared();
    let bmc = RedfishBmc::new(&spec(sushy, None, PASSWORD)).unwrap();
    let err = bmc.power_state().await.unwrap_err();
    let BmcError::Protocol(message) = &err else {
        panic!("expected a protocol error, got {err:?}");
    };
    assert!(message.contains("2 systems"), "{message}");
    assert!(
        message.contains(SYSTEM_A.uuid) && message.contains(SYSTEM_B.uuid),
        "{message}"
    );
    assert!(message.contains("system_id"), "{message}");

    for id in [
        SYSTEM_A.path(),
        SYSTEM_A.uuid.to_string(),
        format!("{}/", SYSTEM_B.path()),
    ] {
        let bmc = RedfishBmc::new(&spec(sushy, Some(&id), PASSWORD)).unwrap();
        assert!(bmc.power_state().await.is_ok(), "{id}");
    }
    let missing = RedfishBmc::new(&spec(sushy, Some("no-such-system"), PASSWORD)).unwrap();
    let err = missing.power_state().await.unwrap_err();
    assert!(err.to_string().contains("no-such-system"), "{err}");
}

#[tokio::test]
async fn wrong_password_is_reported_without_leaking_it() {
    let sushy = shared();
    let wrong = "Wrong-Pa55word-for-kiln";
    let logs = Logs::default();
    let _guard = logs.install();
    let bmc = RedfishBmc::new(&spec(sushy, Some(SYSTEM_A.uuid), wrong)).unwrap();
    let err = bmc.power_state().await.unwrap_err();
    assert_eq!(err, BmcError::WrongCredentials);
    let err = bmc
        .set_boot_device(BootDevice::Pxe, false, true)
        .await
        .unwrap_err();
    assert_eq!(err, BmcError::WrongCredentials);
    for text in [
        err.to_string(),
        format!("{err:?}"),
        format!("{bmc:?}"),
        logs.text(),
    ] {
        assert!(!text.contains(wrong), "password leaked: {text}");
    }
    assert!(
        logs.text().contains("redfish request"),
        "nothing was logged"
    );
    assert!(logs.text().contains("status=401"), "{}", logs.text());
}

#[tokio::test]
async fn closed_port_is_refused_quickly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut spec = spec(shared(), None, PASSWORD);
    spec.address = format!("http://127.0.0.1:{port}");
    let bmc = RedfishBmc::new(&spec).unwrap();
    let started = Instant::now();
    assert_eq!(bmc.power_state().await, Err(BmcError::Refused));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn slow_bmc_times_out_without_holding_up_a_healthy_one() {
    // A "BMC" that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let healthy = RedfishBmc::new(&spec(shared(), Some(SYSTEM_B.uuid), PASSWORD)).unwrap();
    let mut slow_spec = spec(shared(), Some("1"), PASSWORD);
    slow_spec.address = format!("http://127.0.0.1:{port}");
    let options = RedfishOptions {
        request_timeout: Duration::from_millis(1500),
        ..RedfishOptions::default()
    };
    let slow = RedfishBmc::with_options(&slow_spec, options).unwrap();

    let started = Instant::now();
    let (slow_result, healthy_result) = tokio::join!(
        async { (slow.power_state().await, started.elapsed()) },
        async { (healthy.power_state().await, started.elapsed()) },
    );
    holder.abort();
    let (slow_result, slow_took) = slow_result;
    let (healthy_result, healthy_took) = healthy_result;
    eprintln!("slow: {slow_took:?}, healthy: {healthy_took:?}");
    assert_eq!(slow_result, Err(BmcError::Timeout(1500)));
    assert!(slow_took >= Duration::from_millis(1400) && slow_took < Duration::from_secs(4));
    assert!(healthy_result.is_ok(), "{healthy_result:?}");
    assert!(
        healthy_took < slow_took,
        "the healthy BMC waited for the slow one"
    );
}

#[tokio::test]
async fn tls_is_verified_unless_explicitly_disabled() {
    let sushy = Sushy::start(SushyOptions {
        tls: true,
        ..SushyOptions::default()
    });
    let ca = sushy.ca_file.clone().unwrap().display().to_string();
    let with = |tls: TlsVerify| {
        let mut spec = spec(&sushy, Some(SYSTEM_A.uuid), PASSWORD);
        spec.tls_verify = tls;
        RedfishBmc::new(&spec).unwrap()
    };
    assert_eq!(
        with(TlsVerify::CaFile(ca)).power_state().await,
        Ok(PowerState::Off)
    );
    let err = with(TlsVerify::System).power_state().await.unwrap_err();
    assert!(
        matches!(&err, BmcError::Protocol(m) if m.contains("TLS") && m.contains("certificate")),
        "{err:?}"
    );
    assert_eq!(
        with(TlsVerify::Insecure).power_state().await,
        Ok(PowerState::Off)
    );

    let mut missing = spec(&sushy, None, PASSWORD);
    missing.tls_verify = TlsVerify::CaFile("/nonexistent/kiln-ca.pem".into());
    let err = RedfishBmc::new(&missing).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/kiln-ca.pem"),
        "{err}"
    );
}

#[tokio::test]
async fn sessions_are_reused_and_renewed_after_expiry() {
    let sushy = Sushy::start(SushyOptions {
        sessions: true,
        single_system: true,
        ..SushyOptions::default()
    });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let stats = || async {
        let url = format!("{}/kiln-test/stats", sushy.base_url);
        let reply = client.get(url).send().await.unwrap();
        reply.json::<serde_json::Value>().await.unwrap()
    };
    let logs = Logs::default();
    let _guard = logs.install();

    // No system_id: the only system is discovered.
    let bmc = RedfishBmc::with_options(&spec(&sushy, None, PASSWORD), fast()).unwrap();
    assert_eq!(bmc.power_state().await, Ok(PowerState::Off));
    assert_eq!(bmc.auth_method(), Some(AuthMethod::Session));
    assert_eq!(bmc.system_path().await.unwrap(), SYSTEM_A.path());
    bmc.set_boot_device(BootDevice::Pxe, false, true)
        .await
        .unwrap();
    assert_eq!(
        bmc.boot_device().await.unwrap().device,
        Some(BootDevice::Pxe)
    );
    let seen = stats().await;
    assert_eq!(seen["logins"], 1, "one login for several calls: {seen}");
    let first_token = seen["tokens"][0].as_str().unwrap().to_string();

    // The BMC forgets every session: the next call logs in again once and succeeds.
    client
        .post(format!("{}/kiln-test/expire", sushy.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(bmc.power_state().await, Ok(PowerState::Off));
    let seen = stats().await;
    assert_eq!(seen["logins"], 2, "{seen}");
    let second_token = seen["tokens"][0].as_str().unwrap().to_string();

    for text in [format!("{bmc:?}"), logs.text()] {
        for secret in [PASSWORD, &first_token, &second_token] {
            assert!(!text.contains(secret), "secret leaked: {text}");
        }
    }

    bmc.logout().await.unwrap();
    assert_eq!(stats().await["tokens"].as_array().map(Vec::len), Some(0));

    let wrong = RedfishBmc::new(&spec(&sushy, None, "not-the-password")).unwrap();
    assert_eq!(wrong.power_state().await, Err(BmcError::WrongCredentials));
    assert!(!logs.text().contains("not-the-password"));
}

#[test]
fn bad_configuration_is_rejected_before_any_io() {
    let base = BmcSpec {
        kind: BmcKind::Redfish,
        address: "https://127.0.0.1:1".into(),
        port: 443,
        username: USER.into(),
        password: Secret::new(PASSWORD),
        system_id: None,
        cipher_suite: None,
        tls_verify: TlsVerify::System,
    };
    type Change = fn(&mut BmcSpec);
    let cases: Vec<(Change, &str)> = vec![
        (|s| s.kind = BmcKind::Ipmi, "IPMI"),
        (|s| s.address = "ftp://127.0.0.1".into(), "https://"),
        (
            |s| s.address = format!("https://admin:{PASSWORD}@127.0.0.1"),
            "must not contain",
        ),
        (|s| s.system_id = Some("Systems/1".into()), "bare id"),
    ];
    for (change, word) in cases {
        let mut spec = base.clone();
        change(&mut spec);
        let err = RedfishBmc::new(&spec).unwrap_err();
        assert!(err.to_string().contains(word), "{err}");
        assert!(!format!("{err:?}").contains(PASSWORD));
    }
    let ok = RedfishBmc::new(&base).unwrap();
    assert!(!format!("{ok:?}").contains(PASSWORD));
}
