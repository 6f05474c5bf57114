//! The endpoint driven without sockets by Kiln's own client pieces (framing, RAKP, commands):
//! logins and refusals, commands and their VM actions, retries, replays, concurrent sessions,
//! timeouts, and random or tampered datagrams.

use super::*;
use crate::bmc::ipmi::commands::{self as client, ChassisControl};
use crate::bmc::ipmi::crypto::{CipherSuite, Rakp, SessionKeys};
use crate::bmc::ipmi::rakp;
use crate::bmc::ipmi::rmcp::Protection;
use crate::bmc::{BootDevice, BootSetting, PowerState};

fn peer() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

fn endpoint() -> Endpoint {
    Endpoint::new("admin".into(), Secret::new("password"))
}

fn vm(power: PowerState, device: BootDevice, persistent: bool) -> Snapshot {
    let boot = BootSetting {
        device: Some(device),
        persistent,
        uefi: Some(false),
    };
    Snapshot { power, boot }
}

fn off() -> Snapshot {
    vm(PowerState::Off, BootDevice::Disk, true)
}

fn reply(outcome: Outcome) -> Vec<u8> {
    match outcome {
        Outcome::Reply(reply) => reply,
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// A remote console's side of one session.
struct Console {
    keys: SessionKeys,
    console_id: u32,
    bmc_id: u32,
    seq: u32,
    rq_seq: u8,
}

/// One handshake message and its answer, checked to be of the `want` payload type.
fn pre(
    ep: &mut Endpoint,
    now: Instant,
    kind: u8,
    body: &[u8],
    want: u8,
) -> Result<Vec<u8>, BmcError> {
    let answer = reply(ep.handle(&rmcp::encode(kind, 0, 0, body, None), peer(), &off(), now));
    let packet = rmcp::decode(&answer, None)?;
    assert_eq!((packet.payload_type, packet.session_id), (want, 0));
    Ok(packet.payload)
}

/// Capabilities, Open Session and RAKP 1→2 as Kiln's client does them; the BMC's proof is
/// checked by the client's own function.
fn begin(
    ep: &mut Endpoint,
    now: Instant,
    user: &'static str,
    password: &str,
    console_id: u32,
) -> Result<Rakp<'static>, BmcError> {
    let suite = CipherSuite::Three;
    let caps = client::encode_request(&client::get_channel_auth_caps(), 0);
    let answer = reply(ep.handle(&rmcp::encode_v15(&caps), peer(), &off(), now));
    let resp = client::decode_response(&rmcp::decode(&answer, None)?.payload)?;
    assert!(client::supports_v2(&client::check(resp, "caps")?)?);
    let open = rakp::open_session_request(1, console_id, suite);
    let p = pre(
        ep,
        now,
        payload::OPEN_SESSION_REQUEST,
        &open,
        payload::OPEN_SESSION_RESPONSE,
    )?;
    let bmc_id = rakp::open_session_response(&p, 1, console_id, suite)?.unwrap_or_default();
    let mut r = Rakp {
        suite,
        console_id,
        bmc_id,
        console_random: rand::random(),
        bmc_random: [0; 16],
        bmc_guid: [0; 16],
        role: rakp::ROLE_ADMIN_BY_NAME,
        username: user.as_bytes(),
    };
    let p = pre(ep, now, payload::RAKP1, &rakp::rakp1(2, &r), payload::RAKP2)?;
    assert!(rakp::rakp2(&p, 2, &mut r, password.as_bytes())?);
    Ok(r)
}

/// RAKP 3→4, checking the BMC's integrity check value.
fn complete(
    ep: &mut Endpoint,
    now: Instant,
    r: &Rakp<'_>,
    password: &str,
) -> Result<Console, BmcError> {
    let rakp3 = rakp::rakp3(3, 0, r, password.as_bytes());
    let keys = r.session_keys(password.as_bytes());
    let p = pre(ep, now, payload::RAKP3, &rakp3, payload::RAKP4)?;
    assert!(rakp::rakp4(&p, 3, r, &keys.sik)?);
    Ok(Console {
        keys,
        console_id: r.console_id,
        bmc_id: r.bmc_id,
        seq: 0,
        rq_seq: 0,
    })
}

fn login(
    ep: &mut Endpoint,
    now: Instant,
    user: &'static str,
    password: &str,
    console_id: u32,
) -> Result<Console, BmcError> {
    let r = begin(ep, now, user, password, console_id)?;
    complete(ep, now, &r, password)
}

impl Console {
    fn protection(&self) -> Protection<'_> {
        Protection {
            suite: CipherSuite::Three,
            keys: &self.keys,
        }
    }

    /// The next datagram for `req`; `retry` keeps the request sequence number, as a resend does.
    fn datagram(&mut self, req: &client::Request, retry: bool) -> Vec<u8> {
        if !retry {
            self.rq_seq = (self.rq_seq + 1) & 0x3f;
        }
        let msg = client::encode_request(req, self.rq_seq);
        self.seq += 1;
        rmcp::encode(
            payload::IPMI,
            self.bmc_id,
            self.seq,
            &msg,
            Some(self.protection()),
        )
    }

    fn read(&self, datagram: &[u8], req: &client::Request) -> client::Response {
        let packet = rmcp::decode(datagram, Some(self.protection())).unwrap();
        assert_eq!(packet.session_id, self.console_id);
        let resp = client::decode_response(&packet.payload).unwrap();
        assert!(resp.answers(req, self.rq_seq), "{resp:?}");
        resp
    }

    fn call(
        &mut self,
        ep: &mut Endpoint,
        req: &client::Request,
        vm: &Snapshot,
    ) -> client::Response {
        let d = self.datagram(req, false);
        let answer = reply(ep.handle(&d, peer(), vm, Instant::now()));
        self.read(&answer, req)
    }

    /// Sends `req`, expects `action`, completes it with `result` and returns the response.
    fn act(
        &mut self,
        ep: &mut Endpoint,
        req: &client::Request,
        want: VmAction,
        result: Result<(), BmcError>,
    ) -> client::Response {
        let d = self.datagram(req, false);
        let Outcome::Act(action, deferred) = ep.handle(&d, peer(), &off(), Instant::now()) else {
            panic!("no action for {req:?}")
        };
        assert_eq!(action, want);
        let answer = ep.finish(deferred, result).unwrap();
        self.read(&answer, req)
    }
}

fn admin(ep: &mut Endpoint) -> Console {
    let mut console = login(ep, Instant::now(), "admin", "password", 0xa0a2_a3a4).unwrap();
    let set = client::set_session_privilege(client::PRIVILEGE_ADMIN);
    assert_eq!(console.call(ep, &set, &off()).data, vec![4]);
    console
}

#[test]
fn a_session_powers_the_vm_and_sets_its_boot_device() {
    let mut ep = endpoint();
    let mut c = login(&mut ep, Instant::now(), "admin", "password", 0xa0a2_a3a4).unwrap();
    let on = client::chassis_control(ChassisControl::PowerUp);
    assert_eq!(
        c.call(&mut ep, &on, &off()).completion,
        0xd4,
        "User level until raised"
    );
    let set = client::set_session_privilege(client::PRIVILEGE_ADMIN);
    assert_eq!(c.call(&mut ep, &set, &off()).completion, 0);

    let status = client::get_chassis_status();
    let read = |c: &mut Console, ep: &mut Endpoint, vm: &Snapshot| {
        client::power_state(&c.call(ep, &status, vm).data)
    };
    assert_eq!(read(&mut c, &mut ep, &off()), Ok(PowerState::Off));
    assert_eq!(c.act(&mut ep, &on, VmAction::PowerOn, Ok(())).completion, 0);
    let running = vm(PowerState::On, BootDevice::Disk, true);
    assert_eq!(read(&mut c, &mut ep, &running), Ok(PowerState::On));
    let failed = Err(BmcError::Protocol("cannot start QEMU".into()));
    assert_eq!(
        c.act(&mut ep, &on, VmAction::PowerOn, failed).completion,
        0xff
    );

    // Kiln's set_boot_device sequence: in progress, ack, flags, complete.
    use client::{PARAM_BOOT_FLAGS, PARAM_BOOT_INFO_ACK, PARAM_SET_IN_PROGRESS, set_boot_option};
    assert_eq!(
        c.call(
            &mut ep,
            &set_boot_option(PARAM_SET_IN_PROGRESS, &[1]),
            &off()
        )
        .completion,
        0
    );
    assert_eq!(
        c.call(
            &mut ep,
            &set_boot_option(PARAM_BOOT_INFO_ACK, &[1, 1]),
            &off()
        )
        .completion,
        0
    );
    let flags = set_boot_option(
        PARAM_BOOT_FLAGS,
        &client::boot_flags(BootDevice::Pxe, false, false),
    );
    let pxe_once = VmAction::SetBoot {
        device: BootDevice::Pxe,
        persistent: false,
    };
    assert_eq!(c.act(&mut ep, &flags, pxe_once, Ok(())).completion, 0);
    assert_eq!(
        c.call(
            &mut ep,
            &set_boot_option(PARAM_SET_IN_PROGRESS, &[0]),
            &off()
        )
        .completion,
        0
    );
    let pxe = vm(PowerState::Off, BootDevice::Pxe, false);
    let got = c.call(&mut ep, &client::get_boot_flags(), &pxe);
    assert_eq!(
        client::parse_boot_flags(&client::check(got, "boot").unwrap()),
        Ok(pxe.boot)
    );

    let unknown = client::Request {
        netfn: 0x0a,
        cmd: 0x10,
        data: vec![],
    };
    assert_eq!(c.call(&mut ep, &unknown, &off()).completion, 0xc1);
}

#[test]
fn wrong_credentials_and_other_suites_are_refused_in_the_handshake() {
    let mut ep = endpoint();
    let now = Instant::now();
    assert_eq!(
        login(&mut ep, now, "admin", "wrong", 1).err(),
        Some(BmcError::WrongCredentials)
    );
    assert_eq!(
        ep.sessions(),
        1,
        "a wrong password waits for RAKP 3 (an abort) or a timeout"
    );
    let later = now + Duration::from_secs(31);
    assert_eq!(ep.handle(&[], peer(), &off(), later), Outcome::Ignore);
    assert_eq!(ep.sessions(), 0);
    assert_eq!(
        login(&mut ep, now, "root", "password", 2).err(),
        Some(BmcError::WrongCredentials)
    );

    // A console that skips the RAKP 2 check still fails: its RAKP 3 proof is refused (0Fh).
    let open = rakp::open_session_request(0, 3, CipherSuite::Three);
    let d = rmcp::encode(payload::OPEN_SESSION_REQUEST, 0, 0, &open, None);
    let p = rmcp::decode(&reply(ep.handle(&d, peer(), &off(), now)), None).unwrap();
    let bmc_id = rakp::open_session_response(&p.payload, 0, 3, CipherSuite::Three)
        .unwrap()
        .unwrap();
    let r = Rakp {
        suite: CipherSuite::Three,
        console_id: 3,
        bmc_id,
        console_random: [1; 16],
        bmc_random: [0; 16],
        bmc_guid: [0; 16],
        role: rakp::ROLE_ADMIN_BY_NAME,
        username: b"admin",
    };
    let d = rmcp::encode(payload::RAKP1, 0, 0, &rakp::rakp1(0, &r), None);
    assert!(matches!(
        ep.handle(&d, peer(), &off(), now),
        Outcome::Reply(_)
    ));
    let d = rmcp::encode(payload::RAKP3, 0, 0, &rakp::rakp3(0, 0, &r, b"guess"), None);
    let p = rmcp::decode(&reply(ep.handle(&d, peer(), &off(), now)), None).unwrap();
    assert_eq!(
        rakp::rakp4(&p.payload, 0, &r, &[0; 20]),
        Err(BmcError::WrongCredentials)
    );
    assert_eq!(ep.sessions(), 0, "refused logins leave nothing behind");

    let open = rakp::open_session_request(0, 4, CipherSuite::Seventeen);
    let d = rmcp::encode(payload::OPEN_SESSION_REQUEST, 0, 0, &open, None);
    let p = rmcp::decode(&reply(ep.handle(&d, peer(), &off(), now)), None).unwrap();
    assert_eq!(
        rakp::open_session_response(&p.payload, 0, 4, CipherSuite::Seventeen),
        Err(BmcError::Unsupported("IPMI cipher suite 17".into()))
    );
    assert!(
        login(&mut ep, now, "admin", "password", 5).is_ok(),
        "still serving"
    );
}

#[test]
fn a_retry_gets_the_same_answer_without_acting_twice_and_replays_are_dropped() {
    let mut ep = endpoint();
    let mut c = admin(&mut ep);
    let on = client::chassis_control(ChassisControl::PowerUp);
    let first = c.datagram(&on, false);
    let Outcome::Act(VmAction::PowerOn, deferred) =
        ep.handle(&first, peer(), &off(), Instant::now())
    else {
        panic!("power on")
    };
    let answer = ep.finish(deferred, Ok(())).unwrap();
    assert_eq!(c.read(&answer, &on).completion, 0);
    let retry = c.datagram(&on, true);
    let again = reply(ep.handle(&retry, peer(), &off(), Instant::now()));
    assert_eq!(c.read(&again, &on).completion, 0);
    assert_eq!(
        ep.handle(&first, peer(), &off(), Instant::now()),
        Outcome::Ignore,
        "replay"
    );
    let mut tampered = c.datagram(&on, false);
    let at = tampered.len() - 20;
    tampered[at] ^= 0x40;
    assert_eq!(
        ep.handle(&tampered, peer(), &off(), Instant::now()),
        Outcome::Ignore
    );
}

#[test]
fn sessions_are_independent_and_close_one_at_a_time() {
    let mut ep = endpoint();
    let mut a = admin(&mut ep);
    let mut b = login(&mut ep, Instant::now(), "admin", "password", 0x0102_0304).unwrap();
    assert_ne!(a.bmc_id, b.bmc_id);
    let status = client::get_chassis_status();
    assert_eq!(b.call(&mut ep, &status, &off()).completion, 0);
    assert_eq!(
        b.call(&mut ep, &client::close_session(a.bmc_id), &off())
            .completion,
        0xd4,
        "User may not close others"
    );
    assert_eq!(
        a.call(&mut ep, &client::close_session(0x5555), &off())
            .completion,
        0x87
    );
    assert_eq!(
        a.call(&mut ep, &client::close_session(a.bmc_id), &off())
            .completion,
        0
    );
    let d = a.datagram(&status, false);
    assert_eq!(
        ep.handle(&d, peer(), &off(), Instant::now()),
        Outcome::Ignore,
        "closed"
    );
    assert_eq!(b.call(&mut ep, &status, &off()).completion, 0);
    assert_eq!(ep.sessions(), 1);
}

#[test]
fn idle_sessions_and_stale_logins_expire() {
    let mut ep = endpoint();
    let start = Instant::now();
    let mut c = login(&mut ep, start, "admin", "password", 9).unwrap();
    let status = client::get_chassis_status();
    let d = c.datagram(&status, false);
    assert_eq!(
        ep.handle(&d, peer(), &off(), start + Duration::from_secs(61)),
        Outcome::Ignore
    );
    assert_eq!(ep.sessions(), 0);

    let open = rakp::open_session_request(0, 10, CipherSuite::Three);
    let first = pre(
        &mut ep,
        start,
        payload::OPEN_SESSION_REQUEST,
        &open,
        payload::OPEN_SESSION_RESPONSE,
    )
    .unwrap();
    let again = pre(
        &mut ep,
        start,
        payload::OPEN_SESSION_REQUEST,
        &open,
        payload::OPEN_SESSION_RESPONSE,
    )
    .unwrap();
    assert_eq!(first, again, "a restarted login keeps its session");
    assert_eq!(ep.sessions(), 1);
    let bmc_id = rakp::open_session_response(&first, 0, 10, CipherSuite::Three)
        .unwrap()
        .unwrap();
    let r = Rakp {
        suite: CipherSuite::Three,
        console_id: 10,
        bmc_id,
        console_random: [1; 16],
        bmc_random: [0; 16],
        bmc_guid: [0; 16],
        role: rakp::ROLE_ADMIN_BY_NAME,
        username: b"admin",
    };
    let late = start + Duration::from_secs(31);
    let p = pre(
        &mut ep,
        late,
        payload::RAKP1,
        &rakp::rakp1(0, &r),
        payload::RAKP2,
    )
    .unwrap();
    assert_eq!(p[1], 0x02, "the login timed out");
    assert_eq!(ep.sessions(), 0);
}

#[test]
fn a_lost_rakp4_is_sent_again_until_the_session_is_used() {
    let mut ep = endpoint();
    let now = Instant::now();
    let r = begin(&mut ep, now, "admin", "password", 12).unwrap();
    let mut c = complete(&mut ep, now, &r, "password").unwrap();
    let again = complete(&mut ep, now, &r, "password").unwrap();
    assert_eq!(again.keys.k1, c.keys.k1);
    let status = client::get_chassis_status();
    assert_eq!(c.call(&mut ep, &status, &off()).completion, 0);
    let rakp3 = rakp::rakp3(3, 0, &r, b"password");
    let d = rmcp::encode(payload::RAKP3, 0, 0, &rakp3, None);
    assert_eq!(ep.handle(&d, peer(), &off(), now), Outcome::Ignore);
    let abort = rmcp::encode(payload::RAKP3, 0, 0, &rakp::rakp3(0, 0x0f, &r, b""), None);
    assert_eq!(ep.handle(&abort, peer(), &off(), now), Outcome::Ignore);
    assert_eq!(
        c.call(&mut ep, &status, &off()).completion,
        0,
        "an abort does not end a live session"
    );
}

#[test]
fn asf_ping_and_rmcp_plus_presession_requests_are_answered() {
    let mut ep = endpoint();
    let ping = [6, 0, 0xff, 6, 0, 0, 0x11, 0xbe, 0x80, 7, 0, 0];
    assert_eq!(
        reply(ep.handle(&ping, peer(), &off(), Instant::now()))[8..10],
        [0x40, 7]
    );
    let caps = client::encode_request(&client::get_channel_auth_caps(), 3);
    let d = rmcp::encode(payload::IPMI, 0, 0, &caps, None);
    let answer = reply(ep.handle(&d, peer(), &off(), Instant::now()));
    assert_eq!(answer[4], AUTH_RMCP_PLUS);
    let resp = client::decode_response(&rmcp::decode(&answer, None).unwrap().payload).unwrap();
    assert!(resp.answers(&client::get_channel_auth_caps(), 3));
}

proptest::proptest! {
    #[test]
    fn random_and_mangled_datagrams_never_panic(
        data in proptest::collection::vec(0u8.., 0..96),
        shape in 0u8..6,
        flip in 0usize..256,
    ) {
        let mut ep = endpoint();
        let mut c = admin(&mut ep);
        let mut d = data.clone();
        match shape {
            // An RMCP+ header with each payload type and the live session ID.
            0..=3 if d.len() >= 16 => {
                d[..4].copy_from_slice(&[6, 0, 0xff, 7]);
                d[4] = AUTH_RMCP_PLUS;
                d[5] = [0x00, 0x10, 0x12, 0x14][usize::from(shape)] | (d[5] & 0xc0);
                if shape == 0 {
                    d[6..10].copy_from_slice(&c.bmc_id.to_le_bytes());
                }
            }
            4 => {
                // A real session packet with one bit flipped.
                d = c.datagram(&client::get_chassis_status(), false);
                let at = flip % d.len();
                d[at] ^= 1 << (flip % 8);
            }
            _ => {}
        }
        let _ = ep.handle(&d, peer(), &off(), Instant::now());
        // The session still works afterwards.
        let resp = c.call(&mut ep, &client::get_chassis_status(), &off());
        proptest::prop_assert_eq!(resp.completion, 0);
    }
}
