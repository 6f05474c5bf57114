//! The address book of the DHCP server: which MAC holds which address until when. Pure and
//! in memory; the server persists acknowledged leases to the store and reloads them at start.

use crate::model::MacAddress;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

/// An inclusive range of addresses Kiln may hand out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl Pool {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(ip))
    }

    /// Every address once, starting at `from` (wrapping), so allocation resumes where it left off.
    fn addresses_from(&self, from: u32) -> impl Iterator<Item = Ipv4Addr> {
        let (first, last) = (u32::from(self.first), u32::from(self.last));
        let start = if (first..=last).contains(&from) {
            from
        } else {
            first
        };
        (start..=last).chain(first..start).map(Ipv4Addr::from)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub mac: MacAddress,
    pub expires_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoAddress {
    #[error("reserved address {ip} is held by {holder} until its lease expires")]
    ReservedHeldByOther { ip: Ipv4Addr, holder: MacAddress },
    #[error("the pool is exhausted")]
    PoolExhausted,
    #[error("no reservation and no pool configured")]
    NoPool,
}

#[derive(Clone, Debug, Default)]
pub struct LeaseTable {
    by_ip: HashMap<Ipv4Addr, Held>,
    by_mac: HashMap<MacAddress, Ipv4Addr>,
    /// Where the next pool search starts: just after the last address handed out, which keeps
    /// allocation O(1) amortised instead of rescanning the taken part of a large pool.
    cursor: u32,
}

impl LeaseTable {
    pub fn holder(&self, ip: Ipv4Addr) -> Option<Held> {
        self.by_ip.get(&ip).copied()
    }

    pub fn address_of(&self, mac: MacAddress) -> Option<Ipv4Addr> {
        self.by_mac.get(&mac).copied()
    }

    /// Chooses the address for `mac` and holds it until `expires_at`:
    /// its inventory reservation if it has one; else the address it already holds (or held,
    /// if nobody took it since); else the first free address of `pool` that is neither leased
    /// to someone else nor reserved for another node. One address never goes to two MACs.
    pub fn assign(
        &mut self,
        mac: MacAddress,
        reservation: Option<Ipv4Addr>,
        pool: Option<&Pool>,
        reserved: &HashSet<Ipv4Addr>,
        now: i64,
        expires_at: i64,
    ) -> Result<Ipv4Addr, NoAddress> {
        let free_for = |table: &Self, ip: Ipv4Addr| match table.by_ip.get(&ip) {
            None => true,
            Some(held) => held.mac == mac || held.expires_at <= now,
        };
        let ip = match reservation {
            Some(ip) if free_for(self, ip) => ip,
            Some(ip) => {
                let holder = self.by_ip[&ip].mac;
                return Err(NoAddress::ReservedHeldByOther { ip, holder });
            }
            None => {
                let previous = self.by_mac.get(&mac).copied().filter(|ip| {
                    free_for(self, *ip)
                        && pool.is_some_and(|p| p.contains(*ip))
                        && !reserved.contains(ip)
                });
                match previous {
                    Some(ip) => ip,
                    None => {
                        let pool = pool.ok_or(NoAddress::NoPool)?;
                        let ip = pool
                            .addresses_from(self.cursor)
                            .find(|ip| !reserved.contains(ip) && free_for(self, *ip))
                            .ok_or(NoAddress::PoolExhausted)?;
                        self.cursor = u32::from(ip).wrapping_add(1);
                        ip
                    }
                }
            }
        };
        self.hold(ip, mac, expires_at);
        Ok(ip)
    }

    /// Records that `mac` holds `ip` (used when reloading persisted leases too).
    pub fn hold(&mut self, ip: Ipv4Addr, mac: MacAddress, expires_at: i64) {
        if let Some(old) = self.by_mac.insert(mac, ip)
            && old != ip
        {
            self.by_ip.remove(&old);
        }
        if let Some(previous) = self.by_ip.insert(ip, Held { mac, expires_at })
            && previous.mac != mac
        {
            self.by_mac.remove(&previous.mac);
        }
    }

    pub fn release(&mut self, mac: MacAddress) -> Option<Ipv4Addr> {
        let ip = self.by_mac.remove(&mac)?;
        self.by_ip.remove(&ip);
        Some(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mac(n: u8) -> MacAddress {
        MacAddress([0x52, 0x54, 0, 0, 0, n])
    }

    fn pool() -> Pool {
        Pool {
            first: Ipv4Addr::new(10, 0, 0, 100),
            last: Ipv4Addr::new(10, 0, 0, 102),
        }
    }

    #[test]
    fn reservation_wins_and_pool_skips_reserved_addresses() {
        let mut table = LeaseTable::default();
        let reserved = HashSet::from([Ipv4Addr::new(10, 0, 0, 100)]);
        let ip = table
            .assign(
                mac(1),
                Some(Ipv4Addr::new(10, 0, 0, 100)),
                Some(&pool()),
                &reserved,
                0,
                100,
            )
            .unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 0, 0, 100));
        let ip = table
            .assign(mac(2), None, Some(&pool()), &reserved, 0, 100)
            .unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 0, 0, 101));
        // The same client gets the same address back.
        assert_eq!(
            table
                .assign(mac(2), None, Some(&pool()), &reserved, 50, 150)
                .unwrap(),
            ip
        );
    }

    #[test]
    fn exhausted_pool_and_expiry() {
        let mut table = LeaseTable::default();
        let none = HashSet::new();
        for n in 1..=3 {
            table
                .assign(mac(n), None, Some(&pool()), &none, 0, 100)
                .unwrap();
        }
        assert_eq!(
            table.assign(mac(4), None, Some(&pool()), &none, 50, 150),
            Err(NoAddress::PoolExhausted)
        );
        // After expiry the address can move to a new client.
        let ip = table
            .assign(mac(4), None, Some(&pool()), &none, 100, 200)
            .unwrap();
        assert!(pool().contains(ip));
        assert_eq!(table.holder(ip).map(|h| h.mac), Some(mac(4)));
    }

    #[test]
    fn reservation_held_by_another_mac_is_refused() {
        let mut table = LeaseTable::default();
        let none = HashSet::new();
        let ip = table
            .assign(mac(1), None, Some(&pool()), &none, 0, 100)
            .unwrap();
        let err = table
            .assign(mac(2), Some(ip), None, &none, 10, 100)
            .unwrap_err();
        assert_eq!(err, NoAddress::ReservedHeldByOther { ip, holder: mac(1) });
    }

    proptest! {
        /// Whatever clients do, no address is ever held by two MACs at once.
        #[test]
        fn never_one_address_for_two_macs(ops in proptest::collection::vec((0u8..6, 0u8..3, any::<bool>(), 0i64..50), 1..80)) {
            let mut table = LeaseTable::default();
            let reserved = HashSet::from([Ipv4Addr::new(10, 0, 0, 101)]);
            let mut now = 0;
            for (client, action, reserve, advance) in ops {
                now += advance;
                match action {
                    0 | 1 => {
                        let reservation = (reserve && client == 0).then_some(Ipv4Addr::new(10, 0, 0, 101));
                        let _ = table.assign(mac(client), reservation, Some(&pool()), &reserved, now, now + 60);
                    }
                    _ => { table.release(mac(client)); }
                }
                let mut owners: HashMap<Ipv4Addr, MacAddress> = HashMap::new();
                for (mac, ip) in &table.by_mac {
                    prop_assert_eq!(table.by_ip.get(ip).map(|h| h.mac), Some(*mac));
                    prop_assert!(owners.insert(*ip, *mac).is_none());
                }
                prop_assert_eq!(table.by_ip.len(), table.by_mac.len());
            }
        }
    }
}
