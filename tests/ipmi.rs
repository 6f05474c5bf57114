//! The native IPMI lanplus driver against real OpenIPMI `ipmi_sim` BMCs on loopback: power and
//! boot device reach the chassis, credentials fail plainly, silent or closed ports fail fast
//! without stalling other BMCs, and a lost session is replaced transparently.

#[path = "peers/ipmi_sim.rs"]
mod ipmi_sim;

use ipmi_sim::{IpmiSim, PASSWORD, USER};
use kiln::bmc::ipmi::{IpmiBmc, IpmiOptions};
use kiln::bmc::{Bmc, BmcError, BootDevice, BootSetting, PowerAction, PowerState};
use kiln::model::BmcSpec;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn quick() -> IpmiOptions {
    IpmiOptions {
        timeout: Duration::from_millis(500),
        retransmits: 2,
        power_wait: Duration::from_secs(10),
        poll_interval: Duration::from_millis(100),
        ..IpmiOptions::default()
    }
}

fn client(spec: &BmcSpec, options: IpmiOptions) -> IpmiBmc {
    IpmiBmc::with_options(spec, options).expect("valid BMC spec")
}

fn loopback_spec(port: u16) -> BmcSpec {
    IpmiSim::spec_for_port(port)
}

fn new_calls(sim: &IpmiSim, before: usize) -> Vec<String> {
    sim.calls().split_off(before)
}

#[tokio::test]
async fn power_actions_reach_the_chassis_over_one_session() {
    let sim = IpmiSim::start();
    let bmc = client(&sim.spec(), quick());
    assert_eq!(bmc.power_state().await, Ok(PowerState::Off));

    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(sim.power().as_deref(), Some("1"));
    assert_eq!(bmc.power_state().await, Ok(PowerState::On));

    bmc.power(PowerAction::Off).await.unwrap();
    assert_eq!(sim.power().as_deref(), Some("0"));
    assert_eq!(bmc.power_state().await, Ok(PowerState::Off));

    // IPMI refuses to cycle a chassis that is off: Kiln powers it on instead.
    let before = sim.calls().len();
    bmc.power(PowerAction::Cycle).await.unwrap();
    let calls = new_calls(&sim, before);
    assert!(
        calls.contains(&"set power 1".into()) && !calls.contains(&"set power 0".into()),
        "{calls:?}"
    );
    assert_eq!(sim.power().as_deref(), Some("1"));

    // A real cycle: off now, ipmi_sim powers on again a second later; the call waits for it.
    let before = sim.calls().len();
    bmc.power(PowerAction::Cycle).await.unwrap();
    let calls = new_calls(&sim, before);
    let off = calls
        .iter()
        .position(|c| c == "set power 0")
        .expect("powered off");
    let on = calls
        .iter()
        .position(|c| c == "set power 1")
        .expect("powered on again");
    assert!(off < on, "{calls:?}");
    assert_eq!(bmc.power_state().await, Ok(PowerState::On));

    bmc.power(PowerAction::Reset).await.unwrap();
    assert_eq!(sim.resets(), 1);
    assert_eq!(sim.power().as_deref(), Some("1"));

    let before = sim.calls().len();
    bmc.power(PowerAction::SoftOff).await.unwrap();
    assert!(new_calls(&sim, before).contains(&"set shutdown 1".into()));
    assert_eq!(sim.power().as_deref(), Some("0"));
    // Soft-off of a node that is off, and reset of one that is off (powers it on).
    bmc.power(PowerAction::SoftOff).await.unwrap();
    bmc.power(PowerAction::Reset).await.unwrap();
    assert_eq!((sim.resets(), sim.power().as_deref()), (1, Some("1")));

    assert_eq!(bmc.logins(), 1, "every call reused the first session");
}

#[tokio::test]
async fn one_time_pxe_boot_is_set_and_read_back() {
    let sim = IpmiSim::start();
    let bmc = client(&sim.spec(), quick());
    assert_eq!(
        bmc.boot_device().await.unwrap().device,
        None,
        "no override yet"
    );

    bmc.set_boot_device(BootDevice::Pxe, false, false)
        .await
        .unwrap();
    assert!(
        sim.calls().contains(&"set boot pxe".into()),
        "{:?}",
        sim.calls()
    );
    assert_eq!(sim.boot().as_deref(), Some("pxe"));
    let read = bmc.boot_device().await.unwrap();
    assert_eq!(
        read,
        BootSetting {
            device: Some(BootDevice::Pxe),
            persistent: false,
            uefi: Some(false)
        }
    );

    // ipmi_sim keeps only the device (it calls the disk "default"), not persistence or EFI.
    bmc.set_boot_device(BootDevice::Disk, true, true)
        .await
        .unwrap();
    assert_eq!(sim.boot().as_deref(), Some("default"));
    assert_eq!(
        bmc.boot_device().await.unwrap().device,
        Some(BootDevice::Disk)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_bmcs_are_driven_at_once() {
    let sims: Vec<IpmiSim> = (0..4).map(|_| IpmiSim::start()).collect();
    let bmcs: Vec<IpmiBmc> = sims
        .iter()
        .map(|sim| client(&sim.spec(), quick()))
        .collect();
    let started = Instant::now();
    let results = futures::future::join_all(bmcs.iter().enumerate().map(|(i, bmc)| async move {
        if i % 2 == 1 {
            bmc.set_boot_device(BootDevice::Pxe, false, true).await?;
        }
        bmc.power(PowerAction::On).await?;
        bmc.power_state().await
    }))
    .await;
    assert!(
        results.iter().all(|r| *r == Ok(PowerState::On)),
        "{results:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    for (i, sim) in sims.iter().enumerate() {
        assert_eq!(sim.power().as_deref(), Some("1"), "BMC {i}");
        let want = if i % 2 == 1 { Some("pxe") } else { None };
        assert_eq!(
            sim.boot().as_deref(),
            want,
            "BMC {i} got only its own boot setting"
        );
    }
}

/// Collects every log line the driver writes, to check that no secret reaches the logs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn wrong_credentials_are_reported_plainly_and_never_shown() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sim = IpmiSim::start();
    let secret = "Not-The-Pass-4x9";
    let bmc = client(&sim.spec_with(USER, secret), quick());
    let started = Instant::now();
    let err = bmc.power_state().await.unwrap_err();
    assert_eq!(err, BmcError::WrongCredentials);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no waiting on a wrong password"
    );
    for text in [err.to_string(), format!("{err:?}"), format!("{bmc:?}")] {
        assert!(!text.contains(secret), "{text}");
    }

    let unknown = client(&sim.spec_with("nobody", PASSWORD), quick());
    assert_eq!(unknown.power_state().await, Err(BmcError::WrongCredentials));

    // The failed logins left the BMC usable, and a good login is logged (so capture works).
    let good = client(&sim.spec(), quick());
    assert_eq!(good.power_state().await, Ok(PowerState::Off));
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("IPMI session opened"), "{logs}");
    assert!(!logs.contains(secret) && !logs.contains(PASSWORD), "{logs}");
}

#[tokio::test]
async fn a_closed_port_fails_fast() {
    let port = ipmi_sim::free_udp_port();
    let bmc = client(&loopback_spec(port), quick());
    let started = Instant::now();
    let err = bmc.power_state().await.unwrap_err();
    assert!(
        matches!(err, BmcError::Refused | BmcError::Timeout(_)),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_silent_bmc_times_out_while_a_healthy_one_keeps_answering() {
    let sim = IpmiSim::start();
    // Receives every datagram, answers none.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let options = IpmiOptions {
        timeout: Duration::from_millis(300),
        retransmits: 2,
        ..quick()
    };
    let slow = client(&loopback_spec(silent.local_addr().unwrap().port()), options);
    let healthy = client(&sim.spec(), quick());

    let started = Instant::now();
    let (slow_result, healthy_done) = tokio::join!(
        async { (slow.power_state().await, started.elapsed()) },
        async {
            for _ in 0..5 {
                assert_eq!(healthy.power_state().await, Ok(PowerState::Off));
            }
            started.elapsed()
        }
    );
    let (result, slow_done) = slow_result;
    assert!(
        matches!(result, Err(BmcError::Timeout(ms)) if (900..2000).contains(&ms)),
        "{result:?}"
    );
    assert!(
        slow_done >= Duration::from_millis(900),
        "three sends of 300 ms each: {slow_done:?}"
    );
    assert!(
        healthy_done < Duration::from_millis(800),
        "the healthy BMC did not wait: {healthy_done:?}"
    );
}

#[tokio::test]
async fn a_lost_session_is_replaced_transparently() {
    let mut sim = IpmiSim::start();
    let bmc = client(&sim.spec(), quick());
    bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(bmc.logins(), 1);

    // A BMC reboot forgets every session; the driver notices and logs in again.
    sim.restart();
    let started = Instant::now();
    assert_eq!(bmc.power_state().await, Ok(PowerState::On));
    assert_eq!(bmc.logins(), 2);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "one request's resends, no more: {:?}",
        started.elapsed()
    );

    // An explicit close, then a call: a new session.
    bmc.close().await;
    assert_eq!(bmc.power_state().await, Ok(PowerState::On));
    assert_eq!(bmc.logins(), 3);

    // A session idle past `idle_reopen` is replaced before use instead of timing out.
    let eager = client(
        &sim.spec(),
        IpmiOptions {
            idle_reopen: Duration::from_millis(200),
            ..quick()
        },
    );
    assert_eq!(eager.power_state().await, Ok(PowerState::On));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    assert_eq!(eager.power_state().await, Ok(PowerState::On));
    assert_eq!(eager.logins(), 2);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn cipher_suite_17_refused_by_ipmi_sim_reads_as_unsupported() {
    let sim = IpmiSim::start();
    let mut spec = sim.spec();
    spec.cipher_suite = Some(17);
    let bmc = client(&spec, quick());
    assert_eq!(
        bmc.power_state().await,
        Err(BmcError::Unsupported("IPMI cipher suite 17".into()))
    );
    spec.cipher_suite = Some(2);
    assert!(matches!(IpmiBmc::new(&spec), Err(BmcError::Unsupported(_))));
}
