//! Boot-path records: per-node timeline events, DHCP leases and one-time agent tokens.

use super::{Context, Store, StoreError, now_ms};
use crate::model::MacAddress;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::net::Ipv4Addr;
use uuid::Uuid;

/// Something that happened on a node's boot path (DHCP offer, TFTP transfer, script served, …).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEvent {
    pub at: i64,
    pub kind: String,
    pub detail: String,
}

/// An address handed out by Kiln's DHCP server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub mac: MacAddress,
    pub node_uuid: Option<Uuid>,
    pub expires_at: i64,
    pub discovered: bool,
}

/// A change to the lease table, as the DHCP server's writer applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    Hold(Lease),
    Release(MacAddress),
}

fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Store {
    pub async fn record_event(
        &self,
        node_uuid: Uuid,
        kind: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO node_events (node_uuid, at, kind, detail) VALUES ($1, $2, $3, $4)",
        )
        .bind(node_uuid.to_string())
        .bind(now_ms())
        .bind(kind.to_string())
        .bind(detail.to_string())
        .execute(&self.pool)
        .await
        .context("recording a node event")?;
        Ok(())
    }

    pub async fn events(&self, name: &str) -> Result<Vec<NodeEvent>, StoreError> {
        let node = self.node(name).await?;
        let rows = sqlx::query(
            "SELECT at, kind, detail FROM node_events WHERE node_uuid = $1 ORDER BY id",
        )
        .bind(node.uuid.to_string())
        .fetch_all(&self.pool)
        .await
        .context("reading node events")?;
        rows.iter()
            .map(|row| {
                Ok(NodeEvent {
                    at: row.try_get("at").context("decoding an event")?,
                    kind: row.try_get("kind").context("decoding an event")?,
                    detail: row.try_get("detail").context("decoding an event")?,
                })
            })
            .collect()
    }

    /// Issues a fresh agent token for a node (replacing any earlier one) and returns the plaintext,
    /// which goes on the deploy kernel's command line. Only its SHA-256 is stored.
    pub async fn issue_agent_token(&self, node_uuid: Uuid) -> Result<String, StoreError> {
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        sqlx::query("UPDATE nodes SET agent_token_hash = $1 WHERE uuid = $2")
            .bind(token_hash(&token))
            .bind(node_uuid.to_string())
            .execute(&self.pool)
            .await
            .context("storing an agent token")?;
        Ok(token)
    }

    /// True when `token` is the node's current agent token.
    pub async fn check_agent_token(
        &self,
        node_uuid: Uuid,
        token: &str,
    ) -> Result<bool, StoreError> {
        let stored: Option<Option<String>> =
            sqlx::query_scalar("SELECT agent_token_hash FROM nodes WHERE uuid = $1")
                .bind(node_uuid.to_string())
                .fetch_optional(&self.pool)
                .await
                .context("checking an agent token")?;
        Ok(matches!(stored, Some(Some(hash)) if hash == token_hash(token)))
    }

    pub async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let rows = sqlx::query(
            "SELECT ip, mac, node_uuid, expires_at, discovered FROM dhcp_leases ORDER BY ip",
        )
        .fetch_all(&self.pool)
        .await
        .context("reading leases")?;
        rows.iter().map(decode_lease).collect()
    }

    /// Applies a batch of lease changes and node events in one transaction (the DHCP server
    /// writes behind its replies; batching keeps a boot storm from queueing on the disk). A lease
    /// whose address another MAC holds is skipped with a warning: one address, one MAC.
    pub async fn apply_dhcp(
        &self,
        changes: &[LeaseChange],
        events: &[(Uuid, &str, String)],
    ) -> Result<(), StoreError> {
        if changes.is_empty() && events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.context("starting a DHCP batch")?;
        let now = now_ms();
        for change in changes {
            match change {
                LeaseChange::Hold(lease) => {
                    let holder: Option<String> =
                        sqlx::query_scalar("SELECT mac FROM dhcp_leases WHERE ip = $1")
                            .bind(lease.ip.to_string())
                            .fetch_optional(&mut *tx)
                            .await
                            .context("checking a lease")?;
                    if let Some(holder) = holder.filter(|h| *h != lease.mac.to_string()) {
                        tracing::warn!(ip = %lease.ip, %holder, mac = %lease.mac, "lease not stored: address held by another MAC");
                        continue;
                    }
                    sqlx::query("DELETE FROM dhcp_leases WHERE mac = $1")
                        .bind(lease.mac.to_string())
                        .execute(&mut *tx)
                        .await
                        .context("replacing a lease")?;
                    sqlx::query("INSERT INTO dhcp_leases (ip, mac, node_uuid, expires_at, discovered) VALUES ($1, $2, $3, $4, $5)")
                        .bind(lease.ip.to_string())
                        .bind(lease.mac.to_string())
                        .bind(lease.node_uuid.map(|u| u.to_string()))
                        .bind(lease.expires_at)
                        .bind(i64::from(lease.discovered))
                        .execute(&mut *tx)
                        .await
                        .context("writing a lease")?;
                }
                LeaseChange::Release(mac) => {
                    sqlx::query("DELETE FROM dhcp_leases WHERE mac = $1")
                        .bind(mac.to_string())
                        .execute(&mut *tx)
                        .await
                        .context("releasing a lease")?;
                }
            }
        }
        for (uuid, kind, detail) in events {
            sqlx::query(
                "INSERT INTO node_events (node_uuid, at, kind, detail) VALUES ($1, $2, $3, $4)",
            )
            .bind(uuid.to_string())
            .bind(now)
            .bind((*kind).to_string())
            .bind(detail.clone())
            .execute(&mut *tx)
            .await
            .context("recording a node event")?;
        }
        tx.commit().await.context("committing a DHCP batch")
    }
}

fn decode_lease(row: &sqlx::any::AnyRow) -> Result<Lease, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        name: "dhcp lease".into(),
        message,
    };
    let ip: String = row.try_get("ip").context("decoding a lease")?;
    let mac: String = row.try_get("mac").context("decoding a lease")?;
    let node: Option<String> = row.try_get("node_uuid").context("decoding a lease")?;
    let discovered: i64 = row.try_get("discovered").context("decoding a lease")?;
    Ok(Lease {
        ip: ip
            .parse()
            .map_err(|e: std::net::AddrParseError| corrupt(e.to_string()))?,
        mac: mac.parse().map_err(corrupt)?,
        node_uuid: node
            .map(|n| Uuid::parse_str(&n))
            .transpose()
            .map_err(|e| corrupt(e.to_string()))?,
        expires_at: row.try_get("expires_at").context("decoding a lease")?,
        discovered: discovered != 0,
    })
}
