//! One active RMCP+ session on the BMC side: its keys, privilege, the inbound sequence-number
//! window that refuses replays, the outbound sequence, and the last answer, which a console's
//! retry gets again instead of running a power command twice.

use super::handshake::{Login, SUITE};
use crate::bmc::ipmi::crypto::SessionKeys;
use crate::bmc::ipmi::rmcp::{self, Protection, payload};
use std::net::SocketAddr;
use std::time::Instant;

/// Inbound sequence numbers seen: the highest, and which of the 16 below it arrived.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    highest: u32,
    seen: u16,
}

impl Window {
    /// Whether `seq` is new: above the highest, or within 16 below it and not seen yet (IPMI
    /// v2.0 §6.12.13 lets packets arrive out of order within such a window).
    fn accept(&mut self, seq: u32) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.highest {
            let shift = seq - self.highest;
            self.seen = if shift >= 16 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = seq;
            return true;
        }
        let back = self.highest - seq;
        if back >= 16 || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }
}

pub struct Active {
    pub peer: SocketAddr,
    pub console_id: u32,
    keys: SessionKeys,
    pub privilege: u8,
    pub max_privilege: u8,
    pub last_seen: Instant,
    /// The finished handshake, kept until the first packet inside the session so a RAKP 3
    /// resent after a lost RAKP 4 is answered again.
    pub login: Option<Login>,
    window: Window,
    next_seq: u32,
    /// The last request message and its response message.
    last: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Active")
            .field("peer", &self.peer)
            .field("console_id", &format_args!("{:#010x}", self.console_id))
            .field("privilege", &self.privilege)
            .finish_non_exhaustive()
    }
}

impl Active {
    /// A session starts at User level (or its limit, if lower); the console raises it with Set
    /// Session Privilege Level.
    pub fn new(login: Login, keys: SessionKeys, max_privilege: u8, now: Instant) -> Self {
        Self {
            peer: login.peer,
            console_id: login.console_id,
            keys,
            privilege: max_privilege.min(0x02),
            max_privilege,
            last_seen: now,
            login: Some(login),
            window: Window::default(),
            next_seq: 1,
            last: None,
        }
    }

    fn protection(&self) -> Protection<'_> {
        Protection {
            suite: SUITE,
            keys: &self.keys,
        }
    }

    /// Checks and opens a packet for this session: integrity, decryption, a fresh sequence
    /// number. Returns the IPMI message, or why it was dropped.
    pub fn open(&mut self, datagram: &[u8], now: Instant) -> Result<Vec<u8>, &'static str> {
        let packet = rmcp::decode(datagram, Some(self.protection())).map_err(|m| m.0)?;
        if packet.payload_type != payload::IPMI {
            return Err("payload type not served");
        }
        if !self.window.accept(packet.seq) {
            return Err("replayed or stale session sequence number");
        }
        self.last_seen = now;
        self.login = None;
        Ok(packet.payload)
    }

    /// The response given to `request` last time, if this is the same request again.
    pub fn repeat(&mut self, request: &[u8]) -> Option<Vec<u8>> {
        let response = match &self.last {
            Some((last, response)) if last == request => response.clone(),
            _ => return None,
        };
        Some(self.seal(&response))
    }

    /// Remembers `response` as the answer to `request` and seals it for the wire.
    pub fn answer(&mut self, request: Vec<u8>, response: Vec<u8>) -> Vec<u8> {
        let sealed = self.seal(&response);
        self.last = Some((request, response));
        sealed
    }

    fn seal(&mut self, message: &[u8]) -> Vec<u8> {
        let seq = self.next_seq;
        // Zero is reserved for packets outside a session.
        self.next_seq = self.next_seq.checked_add(1).unwrap_or(1);
        rmcp::encode(
            payload::IPMI,
            self.console_id,
            seq,
            message,
            Some(self.protection()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_refuses_replays_and_old_numbers() {
        let mut w = Window::default();
        assert!(!w.accept(0));
        assert!(w.accept(1) && !w.accept(1));
        assert!(w.accept(5) && w.accept(3) && !w.accept(3) && w.accept(4));
        assert!(w.accept(40) && !w.accept(24) && w.accept(25) && !w.accept(5));
        assert!(w.accept(u32::MAX) && !w.accept(u32::MAX));
    }

    #[test]
    fn debug_hides_the_keys() {
        let keys = SessionKeys {
            sik: vec![0xab; 20],
            k1: vec![0xcd; 20],
            aes: [0xef; 16],
        };
        let login = Login::new("127.0.0.1:1".parse().unwrap(), 7, Instant::now());
        let text = format!("{:?}", Active::new(login, keys, 4, Instant::now()));
        assert!(!text.contains("171") && !text.contains("ab, ab") && text.contains("0x00000007"));
    }
}
