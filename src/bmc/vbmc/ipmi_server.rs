//! The IPMI face of `kiln vbmc`: an IPMI v2.0 RMCP+ ("lanplus") BMC for one VM on one UDP socket,
//! cipher suite 3, so `ipmitool -I lanplus -C 3` and Kiln's own IPMI driver can power a QEMU VM and
//! set its boot device. Datagrams go through [`Endpoint::handle`], a pure function of the
//! datagram, a snapshot of the VM and the time; VM changes come back as actions for [`run`].

mod commands;
#[cfg(test)]
mod console;
mod handshake;
mod login;
#[cfg(test)]
mod login_tests;
mod messages;
mod session;
#[cfg(test)]
mod tests;

pub use commands::{Snapshot, VmAction};

use super::machine::Machine;
use crate::bmc::BmcError;
use crate::bmc::ipmi::rmcp::{self, AUTH_RMCP_PLUS, payload};
use crate::model::Secret;
use commands::{BootParams, Decision, Privilege};
use handshake::{Credentials, Login};
use messages::{Request, cc};
use session::Active;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Sessions (half-open and active) one endpoint holds at once.
const MAX_SESSIONS: usize = 32;
/// A login must finish this fast; an active session idle this long is dropped (the spec's default).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Close Session's completion code for a session ID that does not exist.
const INVALID_SESSION_ID: u8 = 0x87;

/// What to do with one datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Malformed, hostile or unanswerable: drop it.
    Ignore,
    Reply(Vec<u8>),
    /// Perform the action on the VM, then send what [`Endpoint::finish`] returns.
    Act(VmAction, Deferred),
}

/// A response waiting for its VM action.
#[derive(Debug, PartialEq, Eq)]
pub struct Deferred {
    session: u32,
    message: Vec<u8>,
    request: Request,
}

enum Slot {
    Login(Login),
    Active(Box<Active>),
}

/// The BMC state behind one UDP endpoint. No `Debug`: nothing here should reach a log line.
pub struct Endpoint {
    user: Credentials,
    guid: [u8; 16],
    sessions: HashMap<u32, Slot>,
    boot: BootParams,
}

/// The receiver's session ID of an RMCP+ packet (0 outside a session).
fn session_id(datagram: &[u8]) -> u32 {
    match datagram.get(4..10) {
        Some([AUTH_RMCP_PLUS, _, a, b, c, d]) => u32::from_le_bytes([*a, *b, *c, *d]),
        _ => 0,
    }
}

impl Endpoint {
    pub fn new(username: String, password: Secret) -> Self {
        Self {
            user: Credentials {
                username: username.into_bytes(),
                password,
            },
            guid: rand::random(),
            sessions: HashMap::new(),
            boot: BootParams::default(),
        }
    }

    /// How many sessions (half-open or active) exist now.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Decides what one datagram from `peer` gets, given the VM as it is now.
    pub fn handle(
        &mut self,
        datagram: &[u8],
        peer: SocketAddr,
        vm: &Snapshot,
        now: Instant,
    ) -> Outcome {
        self.expire(now);
        if let Some(pong) = messages::asf_pong(datagram) {
            return Outcome::Reply(pong);
        }
        match session_id(datagram) {
            0 => self.outside_session(datagram, peer, now),
            id => self.in_session(id, datagram, vm, now),
        }
    }

    /// The response to a deferred request once its action ran; `None` if the session is gone.
    pub fn finish(&mut self, deferred: Deferred, result: Result<(), BmcError>) -> Option<Vec<u8>> {
        let Some(Slot::Active(session)) = self.sessions.get_mut(&deferred.session) else {
            return None;
        };
        let code = match result {
            Ok(()) => cc::OK,
            Err(e) => {
                tracing::warn!(error = %e, "IPMI request failed on the VM");
                cc::UNSPECIFIED
            }
        };
        let response = messages::encode_response(&deferred.request, code, &[]);
        Some(session.answer(deferred.message, response))
    }

    fn expire(&mut self, now: Instant) {
        self.sessions.retain(|id, slot| {
            let keep = match slot {
                Slot::Login(login) => now.saturating_duration_since(login.started) < LOGIN_TIMEOUT,
                Slot::Active(s) => now.saturating_duration_since(s.last_seen) < IDLE_TIMEOUT,
            };
            if !keep {
                tracing::debug!(
                    session = format_args!("{id:#010x}"),
                    "IPMI session timed out"
                );
            }
            keep
        });
    }

    fn outside_session(&mut self, datagram: &[u8], peer: SocketAddr, now: Instant) -> Outcome {
        let packet = match rmcp::decode(datagram, None) {
            Ok(p) if p.session_id == 0 => p,
            Ok(_) => return Outcome::Ignore,
            Err(why) => {
                tracing::debug!(%peer, reason = why.0, "dropping an IPMI datagram");
                return Outcome::Ignore;
            }
        };
        let pre_session =
            |kind: u8, body: Vec<u8>| Outcome::Reply(rmcp::encode(kind, 0, 0, &body, None));
        match packet.payload_type {
            payload::IPMI => {
                let Some(req) = messages::decode_request(&packet.payload) else {
                    return Outcome::Ignore;
                };
                let Some((code, data)) = messages::presession(&req) else {
                    return Outcome::Ignore;
                };
                let msg = messages::encode_response(&req, code, &data);
                Outcome::Reply(match datagram.get(4) {
                    Some(&AUTH_RMCP_PLUS) => rmcp::encode(payload::IPMI, 0, 0, &msg, None),
                    _ => rmcp::encode_v15(&msg),
                })
            }
            payload::OPEN_SESSION_REQUEST => match self.open_session(&packet.payload, peer, now) {
                Some(body) => pre_session(payload::OPEN_SESSION_RESPONSE, body),
                None => Outcome::Ignore,
            },
            payload::RAKP1 => match self.rakp1(&packet.payload, peer) {
                Some(body) => pre_session(payload::RAKP2, body),
                None => Outcome::Ignore,
            },
            payload::RAKP3 => match self.rakp3(&packet.payload, peer, now) {
                Some(body) => pre_session(payload::RAKP4, body),
                None => Outcome::Ignore,
            },
            _ => Outcome::Ignore,
        }
    }

    fn in_session(&mut self, id: u32, datagram: &[u8], vm: &Snapshot, now: Instant) -> Outcome {
        let Endpoint { sessions, boot, .. } = self;
        let Some(Slot::Active(session)) = sessions.get_mut(&id) else {
            return Outcome::Ignore;
        };
        let message = match session.open(datagram, now) {
            Ok(message) => message,
            Err(reason) => {
                tracing::debug!(
                    session = format_args!("{id:#010x}"),
                    reason,
                    "dropping an IPMI packet"
                );
                return Outcome::Ignore;
            }
        };
        let Some(req) = messages::decode_request(&message) else {
            return Outcome::Ignore;
        };
        if let Some(again) = session.repeat(&message) {
            return Outcome::Reply(again);
        }
        let admin = session.privilege >= handshake::ADMIN;
        let privilege = Privilege {
            current: &mut session.privilege,
            max: session.max_privilege,
        };
        let (code, data) = match commands::execute(&req, privilege, boot, vm) {
            Decision::Reply(code, data) => (code, data),
            Decision::Act(action) => {
                tracing::info!(
                    session = format_args!("{id:#010x}"),
                    ?action,
                    "IPMI request for the VM"
                );
                let deferred = Deferred {
                    session: id,
                    message,
                    request: req,
                };
                return Outcome::Act(action, deferred);
            }
            Decision::Close(target) => return self.close(id, target, admin, message, &req),
        };
        let response = messages::encode_response(&req, code, &data);
        Outcome::Reply(session.answer(message, response))
    }

    /// Close Session: a session may close itself; closing another takes an Administrator.
    fn close(
        &mut self,
        id: u32,
        target: u32,
        admin: bool,
        message: Vec<u8>,
        req: &Request,
    ) -> Outcome {
        let code = if !self.sessions.contains_key(&target) {
            INVALID_SESSION_ID
        } else if target == id || admin {
            cc::OK
        } else {
            cc::INSUFFICIENT_PRIVILEGE
        };
        let Some(Slot::Active(session)) = self.sessions.get_mut(&id) else {
            return Outcome::Ignore;
        };
        let reply = session.answer(message, messages::encode_response(req, code, &[]));
        if code == cc::OK {
            self.sessions.remove(&target);
            tracing::info!(
                session = format_args!("{target:#010x}"),
                "IPMI session closed"
            );
        }
        Outcome::Reply(reply)
    }
}

async fn perform(vm: &dyn Machine, action: VmAction) -> Result<(), BmcError> {
    match action {
        VmAction::PowerOn => vm.power_on().await,
        VmAction::PowerOff => vm.power_off().await,
        VmAction::SoftOff => vm.soft_off().await,
        VmAction::Cycle | VmAction::Reset => vm.reset().await,
        VmAction::SetBoot { device, persistent } => {
            vm.set_boot(device, persistent).await;
            Ok(())
        }
    }
}

/// Serves one VM's BMC on `socket` until `shutdown`. Datagrams are handled one at a time, VM
/// actions included, so a power command has taken effect before its response is sent (a
/// following `power status` sees it) and two consoles' commands never interleave.
pub async fn run(
    socket: UdpSocket,
    vm: Arc<dyn Machine>,
    username: String,
    password: Secret,
    shutdown: CancellationToken,
) {
    let mut endpoint = Endpoint::new(username, password);
    let mut buf = vec![0u8; 2048];
    loop {
        let (len, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(e) => {
                    tracing::debug!(error = %e, "IPMI receive failed");
                    continue;
                }
            },
        };
        let snapshot = Snapshot {
            power: vm.power_state().await,
            boot: vm.boot_setting().await,
        };
        let reply = match endpoint.handle(&buf[..len], peer, &snapshot, Instant::now()) {
            Outcome::Ignore => None,
            Outcome::Reply(reply) => Some(reply),
            Outcome::Act(action, deferred) => {
                let result = perform(vm.as_ref(), action).await;
                endpoint.finish(deferred, result)
            }
        };
        if let Some(reply) = reply
            && let Err(e) = socket.send_to(&reply, peer).await
        {
            tracing::debug!(%peer, error = %e, "IPMI send failed");
        }
    }
    tracing::debug!(machine = %vm.name(), "vbmc IPMI endpoint stopped");
}
