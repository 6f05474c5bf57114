//! A fake remote console for the endpoint's tests, built from Kiln's own client pieces (framing,
//! RAKP, commands) so the BMC side is checked against the client's known-answer-tested code.

use super::*;
use crate::bmc::ipmi::commands as client;
use crate::bmc::ipmi::crypto::{CipherSuite, Rakp, SessionKeys};
use crate::bmc::ipmi::rakp;
use crate::bmc::ipmi::rmcp::Protection;
use crate::bmc::{BootDevice, BootSetting, PowerState};

pub(super) fn peer() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

pub(super) fn endpoint() -> Endpoint {
    Endpoint::new("admin".into(), Secret::new("password"))
}

pub(super) fn vm(power: PowerState, device: BootDevice, persistent: bool) -> Snapshot {
    let boot = BootSetting {
        device: Some(device),
        persistent,
        uefi: Some(false),
    };
    Snapshot { power, boot }
}

pub(super) fn off() -> Snapshot {
    vm(PowerState::Off, BootDevice::Disk, true)
}

pub(super) fn reply(outcome: Outcome) -> Vec<u8> {
    match outcome {
        Outcome::Reply(reply) => reply,
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// A remote console's side of one session.
pub(super) struct Console {
    pub(super) keys: SessionKeys,
    pub(super) console_id: u32,
    pub(super) bmc_id: u32,
    pub(super) seq: u32,
    pub(super) rq_seq: u8,
}

/// One handshake message and its answer, checked to be of the `want` payload type.
pub(super) fn pre(
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
pub(super) fn begin(
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
pub(super) fn complete(
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

pub(super) fn login(
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
    pub(super) fn protection(&self) -> Protection<'_> {
        Protection {
            suite: CipherSuite::Three,
            keys: &self.keys,
        }
    }

    /// The next datagram for `req`; `retry` keeps the request sequence number, as a resend does.
    pub(super) fn datagram(&mut self, req: &client::Request, retry: bool) -> Vec<u8> {
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

    pub(super) fn read(&self, datagram: &[u8], req: &client::Request) -> client::Response {
        let packet = rmcp::decode(datagram, Some(self.protection())).unwrap();
        assert_eq!(packet.session_id, self.console_id);
        let resp = client::decode_response(&packet.payload).unwrap();
        assert!(resp.answers(req, self.rq_seq), "{resp:?}");
        resp
    }

    pub(super) fn call(
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
    pub(super) fn act(
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

pub(super) fn admin(ep: &mut Endpoint) -> Console {
    let mut console = login(ep, Instant::now(), "admin", "password", 0xa0a2_a3a4).unwrap();
    let set = client::set_session_privilege(client::PRIVILEGE_ADMIN);
    assert_eq!(console.call(ep, &set, &off()).data, vec![4]);
    console
}
