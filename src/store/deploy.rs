//! Deploy-workflow records (deploys, and cleanings that boot the ramdisk): where each node stands, the agent's command and its answers,
//! and the hardware inventory the agent reported.
//!
//! The conductor owns `step` and the command; the agent API writes only what the agent said
//! (seen-at, address, progress, result, inventory). A daemon restart resumes from these rows.

use super::{Context, Store, StoreError, now_ms};
use crate::agent::protocol::{Action, CommandResult, ProgressReport};
use crate::model::ImageChecksum;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// Where a node's deploy stands inside the `deploying` / `wait-callback` states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeployStep {
    /// Waiting for a free deploy slot (`--deploy-parallel`).
    Queued,
    /// Boot device PXE and power cycle sent; the ramdisk is booting.
    WaitAgent,
    /// The deploy command is offered to the agent; image being written.
    WriteImage,
    /// Image written; boot device set to disk and the node rebooted; waiting for its OS.
    WaitOs,
    /// Cleaning: the wipe command is offered to the agent (disk metadata erase).
    Wipe,
}

impl DeployStep {
    pub const ALL: [DeployStep; 5] = [
        Self::Queued,
        Self::WaitAgent,
        Self::WriteImage,
        Self::WaitOs,
        Self::Wipe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::WaitAgent => "wait-agent",
            Self::WriteImage => "write-image",
            Self::WaitOs => "wait-os",
            Self::Wipe => "wipe",
        }
    }
}

impl fmt::Display for DeployStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeployStep {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|step| step.as_str() == s)
            .ok_or_else(|| format!("unknown deploy step '{s}'"))
    }
}

/// The image a deploy writes, resolved from the node's spec or the appliance default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployImage {
    pub url: String,
    pub checksum: Option<ImageChecksum>,
    pub raw_size: Option<u64>,
    /// Ports whose answer means the deployed OS is up; empty: the daemon's default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ready_ports: Vec<u16>,
}

/// One node's deploy record.
#[derive(Clone, Debug, PartialEq)]
pub struct Deployment {
    pub node_uuid: Uuid,
    pub step: DeployStep,
    pub step_started_at: i64,
    pub image: DeployImage,
    /// Id of the command offered to the agent (0: none).
    pub command_id: u64,
    pub command: Option<Action>,
    pub result: Option<CommandResult>,
    pub agent_address: Option<String>,
    pub agent_seen_at: Option<i64>,
    pub progress: Option<ProgressReport>,
    pub progress_at: Option<i64>,
}

impl Deployment {
    /// The agent's result for the current command, if it arrived.
    pub fn current_result(&self) -> Option<&CommandResult> {
        self.result
            .as_ref()
            .filter(|r| self.command_id != 0 && r.command_id == self.command_id)
    }

    /// True when the agent has been heard from since the current step began.
    pub fn agent_heard_since_step(&self) -> bool {
        self.agent_seen_at
            .is_some_and(|seen| seen >= self.step_started_at)
    }
}

/// What the agent reported about a node's hardware, and when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredInventory {
    pub collected_at: i64,
    pub data: serde_json::Value,
}

fn corrupt(uuid: &str, message: impl fmt::Display) -> StoreError {
    StoreError::Corrupt {
        name: uuid.to_string(),
        message: message.to_string(),
    }
}

impl Store {
    /// Starts a node's deploy record afresh (any earlier attempt's record is replaced).
    pub async fn start_deployment(
        &self,
        node_uuid: Uuid,
        step: DeployStep,
        image: &DeployImage,
    ) -> Result<(), StoreError> {
        let image = serde_json::to_string(image).map_err(|e| corrupt("image", e))?;
        let mut tx = self.pool.begin().await.context("starting a deployment")?;
        sqlx::query("DELETE FROM deployments WHERE node_uuid = $1")
            .bind(node_uuid.to_string())
            .execute(&mut *tx)
            .await
            .context("clearing an earlier deployment")?;
        sqlx::query(
            "INSERT INTO deployments (node_uuid, step, step_started_at, image) VALUES ($1, $2, $3, $4)",
        )
        .bind(node_uuid.to_string())
        .bind(step.as_str())
        .bind(now_ms())
        .bind(image)
        .execute(&mut *tx)
        .await
        .context("recording a deployment")?;
        tx.commit().await.context("committing a deployment")?;
        Ok(())
    }

    /// Forgets a node's deploy record (a new `deploy` verb starts from scratch).
    pub async fn clear_deployment(&self, node_uuid: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM deployments WHERE node_uuid = $1")
            .bind(node_uuid.to_string())
            .execute(&self.pool)
            .await
            .context("clearing a deployment")?;
        Ok(())
    }

    /// Moves a deploy to `step`, optionally offering the agent a new command.
    pub async fn set_deploy_step(
        &self,
        node_uuid: Uuid,
        step: DeployStep,
        command: Option<&Action>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        match command {
            Some(action) => {
                let json = serde_json::to_string(action).map_err(|e| corrupt("command", e))?;
                sqlx::query(
                    "UPDATE deployments SET step = $1, step_started_at = $2, command = $3, \
                     command_id = command_id + 1 WHERE node_uuid = $4",
                )
                .bind(step.as_str())
                .bind(now)
                .bind(json)
                .bind(node_uuid.to_string())
                .execute(&self.pool)
                .await
                .context("offering an agent command")?;
            }
            None => {
                sqlx::query(
                    "UPDATE deployments SET step = $1, step_started_at = $2, command = NULL \
                     WHERE node_uuid = $3",
                )
                .bind(step.as_str())
                .bind(now)
                .bind(node_uuid.to_string())
                .execute(&self.pool)
                .await
                .context("moving a deploy step")?;
            }
        }
        Ok(())
    }

    pub async fn deployment(&self, node_uuid: Uuid) -> Result<Option<Deployment>, StoreError> {
        let row = sqlx::query(
            "SELECT node_uuid, step, step_started_at, image, command_id, command, result_id, \
             result_ok, result_detail, agent_address, agent_seen_at, written, total, rate, progress_at \
             FROM deployments WHERE node_uuid = $1",
        )
        .bind(node_uuid.to_string())
        .fetch_optional(&self.pool)
        .await
        .context("reading a deployment")?;
        row.map(|row| decode_deployment(&row)).transpose()
    }

    /// Number of deploys holding a slot (past `queued`), for the parallelism limit.
    pub async fn running_deployments(&self) -> Result<usize, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deployments d JOIN nodes n ON n.uuid = d.node_uuid \
             WHERE d.step <> 'queued' AND n.provision_state IN ('deploying', 'wait-callback')",
        )
        .fetch_one(&self.pool)
        .await
        .context("counting deployments")?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// The agent called: remember when and from where.
    pub async fn record_agent_seen(
        &self,
        node_uuid: Uuid,
        address: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE deployments SET agent_seen_at = $1, agent_address = $2 WHERE node_uuid = $3",
        )
        .bind(now_ms())
        .bind(address.to_string())
        .bind(node_uuid.to_string())
        .execute(&self.pool)
        .await
        .context("recording an agent heartbeat")?;
        Ok(())
    }

    pub async fn record_agent_progress(
        &self,
        node_uuid: Uuid,
        report: &ProgressReport,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE deployments SET written = $1, total = $2, rate = $3, progress_at = $4, agent_seen_at = $4 \
             WHERE node_uuid = $5 AND command_id = $6",
        )
        .bind(i64::try_from(report.done).unwrap_or(i64::MAX))
        .bind(i64::try_from(report.total.unwrap_or(0)).unwrap_or(i64::MAX))
        .bind(report.rate as i64)
        .bind(now_ms())
        .bind(node_uuid.to_string())
        .bind(i64::try_from(report.command_id).unwrap_or(-1))
        .execute(&self.pool)
        .await
        .context("recording agent progress")?;
        Ok(())
    }

    /// Stores the agent's result if it answers the current command; returns whether it did.
    pub async fn record_agent_result(
        &self,
        node_uuid: Uuid,
        result: &CommandResult,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE deployments SET result_id = $1, result_ok = $2, result_detail = $3, agent_seen_at = $4 \
             WHERE node_uuid = $5 AND command_id = $1",
        )
        .bind(i64::try_from(result.command_id).unwrap_or(-1))
        .bind(i64::from(result.ok))
        .bind(result.detail.clone())
        .bind(now_ms())
        .bind(node_uuid.to_string())
        .execute(&self.pool)
        .await
        .context("recording an agent result")?;
        Ok(updated.rows_affected() == 1)
    }

    pub async fn save_inventory(
        &self,
        node_uuid: Uuid,
        data: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let json = data.to_string();
        let mut tx = self.pool.begin().await.context("saving an inventory")?;
        sqlx::query("DELETE FROM node_inventory WHERE node_uuid = $1")
            .bind(node_uuid.to_string())
            .execute(&mut *tx)
            .await
            .context("replacing an inventory")?;
        sqlx::query(
            "INSERT INTO node_inventory (node_uuid, collected_at, data) VALUES ($1, $2, $3)",
        )
        .bind(node_uuid.to_string())
        .bind(now_ms())
        .bind(json)
        .execute(&mut *tx)
        .await
        .context("saving an inventory")?;
        tx.commit().await.context("committing an inventory")?;
        Ok(())
    }

    pub async fn inventory_of(
        &self,
        node_uuid: Uuid,
    ) -> Result<Option<StoredInventory>, StoreError> {
        let row = sqlx::query("SELECT collected_at, data FROM node_inventory WHERE node_uuid = $1")
            .bind(node_uuid.to_string())
            .fetch_optional(&self.pool)
            .await
            .context("reading an inventory")?;
        let Some(row) = row else { return Ok(None) };
        let collected_at: i64 = row
            .try_get("collected_at")
            .context("decoding an inventory")?;
        let data: String = row.try_get("data").context("decoding an inventory")?;
        let data = serde_json::from_str(&data).map_err(|e| corrupt(&node_uuid.to_string(), e))?;
        Ok(Some(StoredInventory { collected_at, data }))
    }

    /// Forgets a node's agent token (a finished or restarted deploy: the old agent gets 401).
    pub async fn clear_agent_token(&self, node_uuid: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE nodes SET agent_token_hash = NULL WHERE uuid = $1")
            .bind(node_uuid.to_string())
            .execute(&self.pool)
            .await
            .context("clearing an agent token")?;
        Ok(())
    }
}

fn decode_deployment(row: &sqlx::any::AnyRow) -> Result<Deployment, StoreError> {
    let uuid: String = row.try_get("node_uuid").context("decoding a deployment")?;
    let get_i64 = |name: &str| -> Result<i64, StoreError> {
        row.try_get::<i64, _>(name).context("decoding a deployment")
    };
    let get_opt_i64 = |name: &str| -> Result<Option<i64>, StoreError> {
        row.try_get::<Option<i64>, _>(name)
            .context("decoding a deployment")
    };
    let get_opt_text = |name: &str| -> Result<Option<String>, StoreError> {
        row.try_get::<Option<String>, _>(name)
            .context("decoding a deployment")
    };
    let step: String = row.try_get("step").context("decoding a deployment")?;
    let image: String = row.try_get("image").context("decoding a deployment")?;
    let command_id = u64::try_from(get_i64("command_id")?).unwrap_or(0);
    let result_id = u64::try_from(get_i64("result_id")?).unwrap_or(0);
    let command = get_opt_text("command")?
        .map(|json| serde_json::from_str::<Action>(&json))
        .transpose()
        .map_err(|e| corrupt(&uuid, e))?;
    let result = (result_id != 0).then(|| CommandResult {
        command_id: result_id,
        ok: get_i64("result_ok").unwrap_or(0) != 0,
        detail: get_opt_text("result_detail")
            .ok()
            .flatten()
            .unwrap_or_default(),
    });
    let progress_at = get_opt_i64("progress_at")?;
    let progress = match progress_at {
        Some(_) => {
            let total = u64::try_from(get_i64("total")?).unwrap_or(0);
            Some(ProgressReport {
                command_id,
                done: u64::try_from(get_i64("written")?).unwrap_or(0),
                total: (total > 0).then_some(total),
                rate: get_i64("rate")? as f64,
            })
        }
        None => None,
    };
    Ok(Deployment {
        node_uuid: uuid.parse().map_err(|e| corrupt(&uuid, e))?,
        step: step.parse().map_err(|e: String| corrupt(&uuid, e))?,
        step_started_at: get_i64("step_started_at")?,
        image: serde_json::from_str(&image).map_err(|e| corrupt(&uuid, e))?,
        command_id,
        command,
        result,
        agent_address: get_opt_text("agent_address")?,
        agent_seen_at: get_opt_i64("agent_seen_at")?,
        progress,
        progress_at,
    })
}
