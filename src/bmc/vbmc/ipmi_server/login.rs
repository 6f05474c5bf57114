//! The login half of the endpoint: Open Session, RAKP 1 and RAKP 3 against the session table.
//! Half-open sessions belong to the console (peer address and console session ID) that opened
//! them; refused logins are removed at once, abandoned ones by the endpoint's timeout.

use super::handshake::{self, Login, status};
use super::session::Active;
use super::{Endpoint, MAX_SESSIONS, Slot};
use std::net::SocketAddr;
use std::time::Instant;

impl Endpoint {
    pub(super) fn open_session(
        &mut self,
        p: &[u8],
        peer: SocketAddr,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let req = match handshake::parse_open(p)? {
            Ok(req) => req,
            Err((tag, refused, console_id)) => {
                tracing::info!(%peer, status = refused, "IPMI open session refused");
                return Some(handshake::open_response(tag, refused, 0, console_id, 0));
            }
        };
        // A console restarting its login (ipmitool does on a timeout) gets the same session.
        let same = self.sessions.iter().find_map(|(id, slot)| match slot {
            Slot::Login(l) if l.peer == peer && l.console_id == req.console_id => Some(*id),
            _ => None,
        });
        if same.is_none() && self.sessions.len() >= MAX_SESSIONS {
            // Make room by dropping the oldest half-open login, so a flood of Open Session
            // requests cannot lock consoles out for the whole login timeout.
            let oldest = self
                .sessions
                .iter()
                .filter_map(|(id, slot)| match slot {
                    Slot::Login(l) => Some((l.started, *id)),
                    Slot::Active(_) => None,
                })
                .min();
            let Some((_, evicted)) = oldest else {
                tracing::warn!(%peer, "IPMI open session refused: no free sessions");
                let (tag, console_id) = (req.tag, req.console_id);
                return Some(handshake::open_response(
                    tag,
                    status::NO_RESOURCES,
                    0,
                    console_id,
                    0,
                ));
            };
            self.sessions.remove(&evicted);
        }
        let id = same.unwrap_or_else(|| {
            loop {
                let id = rand::random::<u32>();
                if id != 0 && !self.sessions.contains_key(&id) {
                    break id;
                }
            }
        });
        self.sessions
            .insert(id, Slot::Login(Login::new(peer, req.console_id, now)));
        Some(handshake::open_response(
            req.tag,
            status::OK,
            req.privilege,
            req.console_id,
            id,
        ))
    }

    pub(super) fn rakp1(&mut self, p: &[u8], peer: SocketAddr) -> Option<Vec<u8>> {
        let msg = handshake::parse_rakp1(p)?;
        let login = match self.sessions.get_mut(&msg.bmc_id) {
            Some(Slot::Login(login)) if login.peer == peer => login,
            _ => {
                return Some(handshake::rakp_error(
                    msg.tag,
                    status::INVALID_SESSION_ID,
                    0,
                ));
            }
        };
        match login.rakp1(&msg, &self.user, self.guid, rand::random()) {
            Ok(reply) => Some(reply),
            Err(refused) => {
                let console_id = login.console_id;
                self.sessions.remove(&msg.bmc_id);
                tracing::info!(%peer, status = refused, "IPMI login refused in RAKP 1");
                Some(handshake::rakp_error(msg.tag, refused, console_id))
            }
        }
    }

    pub(super) fn rakp3(&mut self, p: &[u8], peer: SocketAddr, now: Instant) -> Option<Vec<u8>> {
        let msg = handshake::parse_rakp3(p)?;
        let (login, half_open) = match self.sessions.get(&msg.bmc_id) {
            Some(Slot::Login(l)) if l.peer == peer => (l, true),
            // A RAKP 3 resent after a lost RAKP 4 gets its RAKP 4 again; nothing changes.
            Some(Slot::Active(s)) if s.peer == peer => (s.login.as_ref()?, false),
            _ if msg.status != status::OK => return None,
            _ => {
                return Some(handshake::rakp_error(
                    msg.tag,
                    status::INVALID_SESSION_ID,
                    0,
                ));
            }
        };
        if msg.status != status::OK {
            // The console gave up (it saw a wrong password in RAKP 2) and waits for nothing.
            if half_open {
                tracing::info!(%peer, status = msg.status, "IPMI console aborted its login");
                self.sessions.remove(&msg.bmc_id);
            }
            return None;
        }
        let result = login.rakp3(&msg, &self.user, self.guid);
        let console_id = login.console_id;
        if !half_open {
            return result.ok().map(|accepted| accepted.reply);
        }
        let Some(Slot::Login(login)) = self.sessions.remove(&msg.bmc_id) else {
            return None;
        };
        match result {
            Ok(accepted) => {
                tracing::info!(%peer, session = format_args!("{:#010x}", msg.bmc_id), "IPMI session opened");
                let active = Active::new(login, accepted.keys, accepted.max_privilege, now);
                let slot = Slot::Active(Box::new(active));
                self.sessions.insert(msg.bmc_id, slot);
                Some(accepted.reply)
            }
            Err(refused) => {
                tracing::info!(%peer, status = refused, "IPMI login refused in RAKP 3 (wrong password?)");
                Some(handshake::rakp_error(msg.tag, refused, console_id))
            }
        }
    }
}
