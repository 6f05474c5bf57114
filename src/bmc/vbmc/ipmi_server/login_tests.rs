//! The endpoint's logins driven without sockets by a fake console: refusals, timeouts, a lost
//! RAKP 4, pre-session requests, and random or tampered datagrams.

use super::console::*;
use super::*;
use crate::bmc::ipmi::commands as client;
use crate::bmc::ipmi::crypto::{CipherSuite, Rakp};
use crate::bmc::ipmi::rakp;

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

#[test]
fn a_full_table_evicts_the_oldest_half_open_login_but_never_an_active_session() {
    let mut ep = endpoint();
    let start = Instant::now();
    let open = |console_id| rakp::open_session_request(0, console_id, CipherSuite::Three);
    for console_id in 1..=32u32 {
        let at = start + Duration::from_millis(u64::from(console_id));
        let p = pre(
            &mut ep,
            at,
            payload::OPEN_SESSION_REQUEST,
            &open(console_id),
            payload::OPEN_SESSION_RESPONSE,
        )
        .unwrap();
        assert_eq!(p[1], 0);
    }
    let late = start + Duration::from_secs(1);
    let mut c = login(&mut ep, late, "admin", "password", 100).unwrap();
    assert_eq!(ep.sessions(), 32, "the oldest half-open login made room");
    let status = client::get_chassis_status();
    assert_eq!(c.call(&mut ep, &status, &off()).completion, 0);

    let mut ep = endpoint();
    for console_id in 1..=32u32 {
        login(&mut ep, start, "admin", "password", console_id).unwrap();
    }
    let p = pre(
        &mut ep,
        start,
        payload::OPEN_SESSION_REQUEST,
        &open(33),
        payload::OPEN_SESSION_RESPONSE,
    )
    .unwrap();
    assert_eq!(p[1], 0x01, "insufficient resources");
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
            // A well-formed RMCP+ header (consistent length) for each payload type: in the live
            // session for IPMI, outside any session for the handshake messages.
            0..=3 if d.len() >= 16 => {
                let len = (d.len() - 16) as u16;
                d[..4].copy_from_slice(&[6, 0, 0xff, 7]);
                d[4] = AUTH_RMCP_PLUS;
                d[5] = [0x00, 0x10, 0x12, 0x14][usize::from(shape)] | (d[5] & 0xc0);
                let session = if shape == 0 { c.bmc_id } else { 0 };
                d[6..10].copy_from_slice(&session.to_le_bytes());
                d[14..16].copy_from_slice(&len.to_le_bytes());
                if shape == 2 && d.len() >= 24 {
                    // RAKP 1 naming the live session.
                    d[20..24].copy_from_slice(&c.bmc_id.to_le_bytes());
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
