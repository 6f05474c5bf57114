//! One RMCP+ session over UDP: the login (Get Channel Authentication Capabilities, Open Session,
//! RAKP 1–4, Set Session Privilege Level = Administrator), then authenticated, encrypted
//! requests. Each request waits a bounded time and resends the same request a few times, which
//! covers lost datagrams; retrying failed operations is the guard's business, not this file's.

use super::commands::{self, Request, Response};
use super::crypto::{CipherSuite, Rakp, SessionKeys};
use super::rakp;
use super::rmcp::{self, Malformed, Protection, payload};
use crate::bmc::BmcError;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// How long to wait for each reply and how many times to resend a request before giving up.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub timeout: Duration,
    pub retransmits: u32,
}

/// What a reply handler makes of one datagram.
enum Verdict<T> {
    Done(T),
    Fail(BmcError),
    /// A late reply to an earlier request: wait on.
    Stale,
    /// Garbage: wait on, but report it if nothing better arrives.
    Bad(Malformed),
}

fn io_error(e: &io::Error) -> BmcError {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => BmcError::Refused,
        _ => BmcError::Unreachable(e.to_string()),
    }
}

/// Sends `build(attempt)` up to `1 + retransmits` times and returns what `accept` makes of the
/// first reply it takes. ICMP "port unreachable" ends the exchange at once as `Refused`.
async fn exchange<T>(
    socket: &UdpSocket,
    timing: Timing,
    mut build: impl FnMut(u32) -> Vec<u8>,
    mut accept: impl FnMut(&[u8], u32) -> Verdict<T>,
) -> Result<T, BmcError> {
    let started = Instant::now();
    let mut buf = vec![0u8; 2048];
    let mut bad = None;
    for attempt in 0..=timing.retransmits {
        socket
            .send(&build(attempt))
            .await
            .map_err(|e| io_error(&e))?;
        let deadline = tokio::time::Instant::now() + timing.timeout;
        while let Ok(received) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            let len = received.map_err(|e| io_error(&e))?;
            match accept(&buf[..len], attempt) {
                Verdict::Done(value) => return Ok(value),
                Verdict::Fail(e) => return Err(e),
                Verdict::Stale => {}
                Verdict::Bad(why) => {
                    tracing::debug!(reason = why.0, "ignoring an unusable IPMI datagram");
                    bad = Some(why);
                }
            }
        }
    }
    match bad {
        Some(why) => Err(why.into()),
        None => Err(BmcError::Timeout(started.elapsed().as_millis() as u64)),
    }
}

/// An active, Administrator-level session. Dropping it sends Close Session without waiting.
pub struct Session {
    socket: UdpSocket,
    timing: Timing,
    suite: CipherSuite,
    keys: SessionKeys,
    console_id: u32,
    bmc_id: u32,
    next_seq: u32,
    highest_seen: u32,
    next_rq_seq: u8,
    last_used: Instant,
}

impl Session {
    /// Logs in to the BMC at `addr`. `password` is at most 20 bytes, `username` at most 16.
    pub async fn open(
        addr: SocketAddr,
        username: &str,
        password: &[u8],
        suite: CipherSuite,
        timing: Timing,
    ) -> Result<Session, BmcError> {
        let local: SocketAddr = if addr.is_ipv4() {
            ([0u8; 4], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = UdpSocket::bind(local).await.map_err(|e| io_error(&e))?;
        socket.connect(addr).await.map_err(|e| io_error(&e))?;

        // Pre-session: does this channel speak IPMI v2.0 at all?
        let caps = commands::get_channel_auth_caps();
        let caps_msg = commands::encode_request(&caps, 0);
        let data = exchange(
            &socket,
            timing,
            |_| rmcp::encode_v15(&caps_msg),
            |d, _| match rmcp::decode(d, None).and_then(|p| commands::decode_response(&p.payload)) {
                Ok(resp) if resp.answers(&caps, 0) => Verdict::Done(resp),
                Ok(_) => Verdict::Stale,
                Err(why) => Verdict::Bad(why),
            },
        )
        .await
        .and_then(|resp| commands::check(resp, "channel authentication capabilities"))?;
        if !commands::supports_v2(&data)? {
            return Err(BmcError::Unsupported(
                "IPMI v2.0 (RMCP+) on this channel".into(),
            ));
        }

        let console_id = rand::random::<u32>() | 1;
        let tag = |attempt: u32| attempt as u8;
        let bmc_id = exchange(
            &socket,
            timing,
            |a| {
                rmcp::encode(
                    payload::OPEN_SESSION_REQUEST,
                    0,
                    0,
                    &rakp::open_session_request(tag(a), console_id, suite),
                    None,
                )
            },
            |d, a| match pre_session(d, payload::OPEN_SESSION_RESPONSE) {
                Err(why) => Verdict::Bad(why),
                Ok(p) => match rakp::open_session_response(&p, tag(a), console_id, suite) {
                    Ok(Some(id)) => Verdict::Done(id),
                    Ok(None) => Verdict::Stale,
                    Err(e) => Verdict::Fail(e),
                },
            },
        )
        .await?;

        let mut r = Rakp {
            suite,
            console_id,
            bmc_id,
            console_random: rand::random(),
            bmc_random: [0; 16],
            bmc_guid: [0; 16],
            role: rakp::ROLE_ADMIN_BY_NAME,
            username: username.as_bytes(),
        };
        let rakp2 = exchange(
            &socket,
            timing,
            |a| rmcp::encode(payload::RAKP1, 0, 0, &rakp::rakp1(tag(a), &r), None),
            |d, a| match pre_session(d, payload::RAKP2) {
                Err(why) => Verdict::Bad(why),
                Ok(p) => {
                    let mut candidate = r.clone();
                    match rakp::rakp2(&p, tag(a), &mut candidate, password) {
                        Ok(true) => Verdict::Done((candidate.bmc_random, candidate.bmc_guid)),
                        Ok(false) => Verdict::Stale,
                        Err(e) => Verdict::Fail(e),
                    }
                }
            },
        )
        .await;
        match rakp2 {
            Ok((random, guid)) => (r.bmc_random, r.bmc_guid) = (random, guid),
            Err(e) => {
                if e == BmcError::WrongCredentials {
                    // Tell the BMC to drop the half-open session rather than let it time out.
                    let abort = rakp::rakp3(0, 0x0f, &r, password);
                    let _ = socket.try_send(&rmcp::encode(payload::RAKP3, 0, 0, &abort, None));
                }
                return Err(e);
            }
        }
        let keys = r.session_keys(password);

        exchange(
            &socket,
            timing,
            |a| {
                rmcp::encode(
                    payload::RAKP3,
                    0,
                    0,
                    &rakp::rakp3(tag(a), 0, &r, password),
                    None,
                )
            },
            |d, a| match pre_session(d, payload::RAKP4) {
                Err(why) => Verdict::Bad(why),
                Ok(p) => match rakp::rakp4(&p, tag(a), &r, &keys.sik) {
                    Ok(true) => Verdict::Done(()),
                    Ok(false) => Verdict::Stale,
                    Err(e) => Verdict::Fail(e),
                },
            },
        )
        .await?;

        let mut session = Session {
            socket,
            timing,
            suite,
            keys,
            console_id,
            bmc_id,
            next_seq: 1,
            highest_seen: 0,
            next_rq_seq: 1,
            last_used: Instant::now(),
        };
        // Sessions start at User level; chassis control needs Administrator (ipmi_sim: 0xD4).
        let resp = session
            .request(&commands::set_session_privilege(commands::PRIVILEGE_ADMIN))
            .await?;
        commands::check(resp, "the Administrator privilege level")?;
        Ok(session)
    }

    /// Sends one request in the session and waits for its reply (any completion code).
    pub async fn request(&mut self, req: &Request) -> Result<Response, BmcError> {
        let rq_seq = self.next_rq_seq;
        self.next_rq_seq = (rq_seq + 1) & 0x3f;
        let message = commands::encode_request(req, rq_seq);
        let Session {
            socket,
            timing,
            suite,
            keys,
            console_id,
            bmc_id,
            next_seq,
            highest_seen,
            ..
        } = self;
        let protect = Protection {
            suite: *suite,
            keys,
        };
        let (bmc_id, console_id) = (*bmc_id, *console_id);
        // A resend gets a new session sequence number (the BMC drops repeats) but keeps rq_seq.
        let build = |_| {
            rmcp::encode(
                payload::IPMI,
                bmc_id,
                take_seq(next_seq),
                &message,
                Some(protect),
            )
        };
        let accept = |d: &[u8], _| {
            let packet = match rmcp::decode(d, Some(protect)) {
                Ok(p) if p.payload_type == payload::IPMI && p.session_id == console_id => p,
                Ok(_) => return Verdict::Bad(Malformed("reply for another session or payload")),
                Err(why) => return Verdict::Bad(why),
            };
            // Refuse replays: sequence numbers only move forward (within the spec's window).
            if packet.seq == 0 || packet.seq.saturating_add(16) <= *highest_seen {
                return Verdict::Bad(Malformed("replayed or out-of-window sequence number"));
            }
            match commands::decode_response(&packet.payload) {
                Ok(resp) if resp.answers(req, rq_seq) => {
                    *highest_seen = (*highest_seen).max(packet.seq);
                    Verdict::Done(resp)
                }
                Ok(_) => Verdict::Stale,
                Err(why) => Verdict::Bad(why),
            }
        };
        let result = exchange(socket, *timing, build, accept).await;
        self.last_used = Instant::now();
        result
    }

    /// How long since the session last carried a request.
    pub fn idle(&self) -> Duration {
        self.last_used.elapsed()
    }

    /// Sends Close Session and waits for the answer (once, no resend).
    pub async fn close(mut self) {
        self.timing.retransmits = 0;
        let req = commands::close_session(self.bmc_id);
        if let Err(e) = self.request(&req).await {
            tracing::debug!(error = %e, "IPMI Close Session was not answered");
        }
        self.bmc_id = 0;
    }
}

impl Drop for Session {
    /// Best-effort Close Session so the BMC's session slot is freed before its idle timeout.
    fn drop(&mut self) {
        if self.bmc_id == 0 {
            return;
        }
        let message =
            commands::encode_request(&commands::close_session(self.bmc_id), self.next_rq_seq);
        let protect = Protection {
            suite: self.suite,
            keys: &self.keys,
        };
        let seq = take_seq(&mut self.next_seq);
        let _ = self.socket.try_send(&rmcp::encode(
            payload::IPMI,
            self.bmc_id,
            seq,
            &message,
            Some(protect),
        ));
    }
}

fn take_seq(next: &mut u32) -> u32 {
    let seq = *next;
    // Zero is reserved for packets outside a session.
    *next = next.checked_add(1).unwrap_or(1);
    seq
}

/// Decodes a handshake reply: an unprotected RMCP+ packet of the expected payload type.
fn pre_session(datagram: &[u8], want: u8) -> Result<Vec<u8>, Malformed> {
    let packet = rmcp::decode(datagram, None)?;
    if packet.payload_type != want {
        return Err(Malformed("unexpected payload type during login"));
    }
    Ok(packet.payload)
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("suite", &self.suite)
            .field("bmc_session_id", &format_args!("{:#010x}", self.bmc_id))
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}
