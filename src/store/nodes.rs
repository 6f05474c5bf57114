//! Node rows: enrollment (all-or-nothing), lookups, state transitions with history.

use super::{Context, Store, StoreError, now_ms};
use crate::model::{
    Input, MacAddress, Node, NodeSpec, ProvisionState, Secret, ServicesStatus, Step,
};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

/// What an enrollment did (or, for a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollReport {
    pub created: Vec<String>,
    pub updated: Vec<NodeChange>,
    pub unchanged: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeChange {
    pub name: String,
    /// Names of the fields that changed (never their values: one may be a password).
    pub fields: Vec<String>,
}

/// One row of a node's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    pub at: i64,
    pub from: Option<String>,
    pub to: String,
    pub input: String,
    pub reason: String,
}

const NODE_COLUMNS: &str = "uuid, name, spec, bmc_password, provision_state, target_provision_state, services_status, last_error, created_at, updated_at, power_state, bmc_error, power_checked_at";

impl Store {
    /// Enrolls or updates every node in one transaction: either all of them land or none does.
    /// With `dry_run` the transaction is rolled back after computing the report.
    pub async fn enroll(
        &self,
        specs: &[NodeSpec],
        dry_run: bool,
    ) -> Result<EnrollReport, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("starting the enrollment transaction")?;
        let mut report = EnrollReport::default();
        let now = now_ms();
        for spec in specs {
            match fetch_by_name(&mut tx, &spec.name).await? {
                Some(existing) => {
                    if let Some(uuid) = spec.uuid.filter(|uuid| *uuid != existing.uuid) {
                        return Err(StoreError::Conflict(format!(
                            "node '{}' is enrolled with uuid {}, the inventory says {uuid}; a node's uuid cannot change",
                            spec.name, existing.uuid
                        )));
                    }
                    let mut stored = spec.clone();
                    stored.uuid = Some(existing.uuid);
                    let fields = existing.spec.changed_fields(&stored);
                    if fields.is_empty() {
                        report.unchanged.push(spec.name.clone());
                        continue;
                    }
                    check_macs_free(&mut tx, &stored, existing.uuid).await?;
                    sqlx::query("UPDATE nodes SET spec = $1, bmc_password = $2, updated_at = $3 WHERE uuid = $4")
                        .bind(spec_json(&stored)?)
                        .bind(stored.bmc.password.expose().to_string())
                        .bind(now)
                        .bind(existing.uuid.to_string())
                        .execute(&mut *tx)
                        .await
                        .context("updating a node")?;
                    replace_macs(&mut tx, &stored, existing.uuid).await?;
                    report.updated.push(NodeChange {
                        name: spec.name.clone(),
                        fields: fields.into_iter().map(String::from).collect(),
                    });
                }
                None => {
                    let uuid = spec.uuid.unwrap_or_else(Uuid::new_v4);
                    if fetch_by_uuid(&mut tx, uuid).await?.is_some() {
                        return Err(StoreError::Conflict(format!(
                            "uuid {uuid} of node '{}' belongs to another node",
                            spec.name
                        )));
                    }
                    let mut stored = spec.clone();
                    stored.uuid = Some(uuid);
                    check_macs_free(&mut tx, &stored, uuid).await?;
                    sqlx::query(
                        "INSERT INTO nodes (uuid, name, spec, bmc_password, provision_state, target_provision_state, services_status, last_error, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, NULL, $6, NULL, $7, $7)",
                    )
                    .bind(uuid.to_string())
                    .bind(spec.name.clone())
                    .bind(spec_json(&stored)?)
                    .bind(stored.bmc.password.expose().to_string())
                    .bind(ProvisionState::Enroll.as_str())
                    .bind(ServicesStatus::Pending.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .context("inserting a node")?;
                    replace_macs(&mut tx, &stored, uuid).await?;
                    insert_history(
                        &mut tx,
                        uuid,
                        now,
                        None,
                        ProvisionState::Enroll,
                        "enroll",
                        "enrolled from inventory",
                    )
                    .await?;
                    report.created.push(spec.name.clone());
                }
            }
        }
        if dry_run {
            tx.rollback().await.context("rolling back a dry run")?;
        } else {
            tx.commit().await.context("committing the enrollment")?;
        }
        Ok(report)
    }

    pub async fn list_nodes(&self) -> Result<Vec<Node>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {NODE_COLUMNS} FROM nodes ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await
        .context("listing nodes")?;
        rows.iter().map(decode_node).collect()
    }

    pub async fn node(&self, name: &str) -> Result<Node, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .context("acquiring a connection")?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {NODE_COLUMNS} FROM nodes WHERE name = $1"
        )))
        .bind(name.to_string())
        .fetch_optional(&mut *conn)
        .await
        .context("reading a node")?;
        row.as_ref()
            .map(decode_node)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))
    }

    pub async fn node_by_uuid(&self, uuid: Uuid) -> Result<Option<Node>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {NODE_COLUMNS} FROM nodes WHERE uuid = $1"
        )))
        .bind(uuid.to_string())
        .fetch_optional(&self.pool)
        .await
        .context("reading a node")?;
        row.as_ref().map(decode_node).transpose()
    }

    /// The node that owns this MAC, if any (DHCP and iPXE lookups).
    pub async fn node_by_mac(&self, mac: MacAddress) -> Result<Option<Node>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM nodes n JOIN node_macs m ON m.node_uuid = n.uuid WHERE m.mac = $1",
            NODE_COLUMNS
                .split(", ")
                .map(|c| format!("n.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
        .bind(mac.to_string())
        .fetch_optional(&self.pool)
        .await
        .context("looking up a MAC")?;
        row.as_ref().map(decode_node).transpose()
    }

    /// Deletes the node record (and its MACs and history).
    pub async fn delete_node(&self, name: &str) -> Result<(), StoreError> {
        let node = self.node(name).await?;
        if !node.provision_state.allows_record_deletion() {
            return Err(StoreError::Conflict(format!(
                "node '{name}' is {}; undeploy or abort it before deleting",
                node.provision_state
            )));
        }
        let mut tx = self.pool.begin().await.context("starting a delete")?;
        for sql in [
            "DELETE FROM node_history WHERE node_uuid = $1",
            "DELETE FROM node_events WHERE node_uuid = $1",
            "DELETE FROM dhcp_leases WHERE node_uuid = $1",
            "DELETE FROM node_macs WHERE node_uuid = $1",
            "DELETE FROM nodes WHERE uuid = $1",
        ] {
            sqlx::query(sql)
                .bind(node.uuid.to_string())
                .execute(&mut *tx)
                .await
                .context("deleting a node")?;
        }
        tx.commit().await.context("committing a delete")
    }

    /// Moves a node from `from` along `step`, recording history. Fails with `StateChanged` if the
    /// node is no longer in `from` (someone else moved it first). Only the conductor calls this.
    pub async fn record_transition(
        &self,
        node: &Node,
        step: Step,
        input: Input,
        reason: &str,
        last_error: Option<&str>,
    ) -> Result<Node, StoreError> {
        let mut tx = self.pool.begin().await.context("starting a transition")?;
        let now = now_ms();
        let updated = sqlx::query(
            "UPDATE nodes SET provision_state = $1, target_provision_state = $2, last_error = $3, updated_at = $4 \
             WHERE uuid = $5 AND provision_state = $6",
        )
        .bind(step.to.as_str())
        .bind(step.target.map(|t| t.as_str()))
        .bind(last_error.map(str::to_string))
        .bind(now)
        .bind(node.uuid.to_string())
        .bind(node.provision_state.as_str())
        .execute(&mut *tx)
        .await
        .context("updating the provision state")?;
        if updated.rows_affected() != 1 {
            tx.rollback()
                .await
                .context("rolling back a stale transition")?;
            let actual = self.node(&node.spec.name).await?;
            return Err(StoreError::StateChanged {
                name: node.spec.name.clone(),
                expected: node.provision_state.to_string(),
                actual: actual.provision_state.to_string(),
            });
        }
        insert_history(
            &mut tx,
            node.uuid,
            now,
            Some(node.provision_state),
            step.to,
            &input.to_string(),
            reason,
        )
        .await?;
        tx.commit().await.context("committing a transition")?;
        self.node(&node.spec.name).await
    }

    /// Records what the BMC said about power (`Ok(state)`) or why it could not say (`Err(reason)`).
    /// Returns the previously recorded power state, so callers can report drift.
    pub async fn record_power(
        &self,
        uuid: Uuid,
        observed: Result<&str, &str>,
    ) -> Result<Option<String>, StoreError> {
        let previous: Option<Option<String>> =
            sqlx::query_scalar("SELECT power_state FROM nodes WHERE uuid = $1")
                .bind(uuid.to_string())
                .fetch_optional(&self.pool)
                .await
                .context("reading the power state")?;
        let (state, error) = match observed {
            Ok(state) => (Some(state.to_string()), None),
            Err(reason) => (None, Some(reason.to_string())),
        };
        // An unreadable BMC keeps the last known state; only the error changes.
        sqlx::query(
            "UPDATE nodes SET power_state = COALESCE($1, power_state), bmc_error = $2, power_checked_at = $3 WHERE uuid = $4",
        )
        .bind(state)
        .bind(error)
        .bind(now_ms())
        .bind(uuid.to_string())
        .execute(&self.pool)
        .await
        .context("recording the power state")?;
        Ok(previous.flatten())
    }

    pub async fn set_services_status(
        &self,
        name: &str,
        status: ServicesStatus,
    ) -> Result<(), StoreError> {
        let done =
            sqlx::query("UPDATE nodes SET services_status = $1, updated_at = $2 WHERE name = $3")
                .bind(status.as_str())
                .bind(now_ms())
                .bind(name.to_string())
                .execute(&self.pool)
                .await
                .context("updating services status")?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(name.to_string()));
        }
        Ok(())
    }

    pub async fn history(&self, name: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let node = self.node(name).await?;
        let rows = sqlx::query("SELECT at, from_state, to_state, input, reason FROM node_history WHERE node_uuid = $1 ORDER BY id")
            .bind(node.uuid.to_string())
            .fetch_all(&self.pool)
            .await
            .context("reading history")?;
        rows.iter()
            .map(|row| {
                Ok(HistoryEntry {
                    at: row.try_get("at").context("decoding history")?,
                    from: row.try_get("from_state").context("decoding history")?,
                    to: row.try_get("to_state").context("decoding history")?,
                    input: row.try_get("input").context("decoding history")?,
                    reason: row.try_get("reason").context("decoding history")?,
                })
            })
            .collect()
    }
}

fn spec_json(spec: &NodeSpec) -> Result<String, StoreError> {
    serde_json::to_string(spec).map_err(|err| StoreError::Corrupt {
        name: spec.name.clone(),
        message: err.to_string(),
    })
}

async fn fetch_by_name(
    tx: &mut Transaction<'_, Any>,
    name: &str,
) -> Result<Option<Node>, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {NODE_COLUMNS} FROM nodes WHERE name = $1"
    )))
    .bind(name.to_string())
    .fetch_optional(&mut **tx)
    .await
    .context("reading a node")?;
    row.as_ref().map(decode_node).transpose()
}

async fn fetch_by_uuid(
    tx: &mut Transaction<'_, Any>,
    uuid: Uuid,
) -> Result<Option<Node>, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {NODE_COLUMNS} FROM nodes WHERE uuid = $1"
    )))
    .bind(uuid.to_string())
    .fetch_optional(&mut **tx)
    .await
    .context("reading a node")?;
    row.as_ref().map(decode_node).transpose()
}

/// A MAC may belong to one node only; enrolled nodes outside this inventory count too.
async fn check_macs_free(
    tx: &mut Transaction<'_, Any>,
    spec: &NodeSpec,
    uuid: Uuid,
) -> Result<(), StoreError> {
    for nic in &spec.nics {
        let owner: Option<String> = sqlx::query_scalar(
            "SELECT n.name FROM node_macs m JOIN nodes n ON n.uuid = m.node_uuid WHERE m.mac = $1 AND m.node_uuid <> $2",
        )
        .bind(nic.mac.to_string())
        .bind(uuid.to_string())
        .fetch_optional(&mut **tx)
        .await
        .context("checking MAC ownership")?;
        if let Some(owner) = owner {
            return Err(StoreError::Conflict(format!(
                "MAC {} of node '{}' already belongs to enrolled node '{owner}'",
                nic.mac, spec.name
            )));
        }
    }
    Ok(())
}

async fn replace_macs(
    tx: &mut Transaction<'_, Any>,
    spec: &NodeSpec,
    uuid: Uuid,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM node_macs WHERE node_uuid = $1")
        .bind(uuid.to_string())
        .execute(&mut **tx)
        .await
        .context("replacing MACs")?;
    for nic in &spec.nics {
        sqlx::query("INSERT INTO node_macs (mac, node_uuid) VALUES ($1, $2)")
            .bind(nic.mac.to_string())
            .bind(uuid.to_string())
            .execute(&mut **tx)
            .await
            .context("recording a MAC")?;
    }
    Ok(())
}

async fn insert_history(
    tx: &mut Transaction<'_, Any>,
    uuid: Uuid,
    at: i64,
    from: Option<ProvisionState>,
    to: ProvisionState,
    input: &str,
    reason: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO node_history (node_uuid, at, from_state, to_state, input, reason) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(uuid.to_string())
        .bind(at)
        .bind(from.map(|s| s.as_str()))
        .bind(to.as_str())
        .bind(input.to_string())
        .bind(reason.to_string())
        .execute(&mut **tx)
        .await
        .context("recording history")?;
    Ok(())
}

fn decode_node(row: &AnyRow) -> Result<Node, StoreError> {
    let name: String = row.try_get("name").context("decoding a node")?;
    let corrupt = |message: String| StoreError::Corrupt {
        name: name.clone(),
        message,
    };
    let uuid: String = row.try_get("uuid").context("decoding a node")?;
    let spec: String = row.try_get("spec").context("decoding a node")?;
    let password: String = row.try_get("bmc_password").context("decoding a node")?;
    let state: String = row.try_get("provision_state").context("decoding a node")?;
    let target: Option<String> = row
        .try_get("target_provision_state")
        .context("decoding a node")?;
    let services: String = row.try_get("services_status").context("decoding a node")?;
    let mut spec: NodeSpec = serde_json::from_str(&spec).map_err(|e| corrupt(e.to_string()))?;
    spec.bmc.password = Secret::new(password);
    Ok(Node {
        uuid: Uuid::parse_str(&uuid).map_err(|e| corrupt(e.to_string()))?,
        spec,
        provision_state: state.parse().map_err(corrupt)?,
        target_provision_state: target.map(|t| t.parse()).transpose().map_err(corrupt)?,
        services_status: services.parse().map_err(corrupt)?,
        last_error: row.try_get("last_error").context("decoding a node")?,
        power_state: row.try_get("power_state").context("decoding a node")?,
        bmc_error: row.try_get("bmc_error").context("decoding a node")?,
        power_checked_at: row.try_get("power_checked_at").context("decoding a node")?,
        created_at: row.try_get("created_at").context("decoding a node")?,
        updated_at: row.try_get("updated_at").context("decoding a node")?,
    })
}
