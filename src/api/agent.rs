//! The agent callback API, served on the boot network beside the iPXE scripts: look-up,
//! heartbeat (which carries commands), inventory, progress and results (see
//! [`crate::agent::protocol`]).
//!
//! Every call must carry the node's current one-time token (issued with its deploy script) or it
//! gets 401. Handlers record only what the agent said; the conductor decides what it means.

use super::ApiError;
use crate::agent::protocol::{
    Action, CommandResult, Heartbeat, HeartbeatReply, Lookup, LookupReply, PREFIX, ProgressReport,
};
use crate::ca::CertificateAuthority;
use crate::conductor::Conductor;
use crate::conductor::config_drive::{self, NodeTls};
use crate::conductor::deploy::{describe_progress, node_address};
use crate::model::Node;
use crate::store::Store;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::routing::post;
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use uuid::Uuid;

#[derive(Clone)]
pub struct AgentApiState {
    pub conductor: Conductor,
    /// Issues each node's Docker server certificate for its config drive.
    pub ca: Option<Arc<CertificateAuthority>>,
    pub heartbeat_secs: u64,
}

impl AgentApiState {
    fn store(&self) -> &Store {
        self.conductor.store()
    }
}

/// Routes under [`PREFIX`]; the boot HTTP server must be served with `ConnectInfo<SocketAddr>`.
pub fn router(state: AgentApiState) -> Router {
    Router::new()
        .route(&format!("{PREFIX}/{{uuid}}/lookup"), post(lookup))
        .route(&format!("{PREFIX}/{{uuid}}/heartbeat"), post(heartbeat))
        .route(&format!("{PREFIX}/{{uuid}}/inventory"), post(inventory))
        .route(&format!("{PREFIX}/{{uuid}}/progress"), post(progress))
        .route(&format!("{PREFIX}/{{uuid}}/result"), post(result))
        .with_state(state)
}

/// A request whose bearer token is the path node's current agent token.
struct AuthorizedNode(Node);

impl FromRequestParts<AgentApiState> for AuthorizedNode {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AgentApiState,
    ) -> Result<Self, Self::Rejection> {
        let Path(uuid): Path<Uuid> = Path::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::Unauthorized)?;
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        if !state.store().check_agent_token(uuid, token.trim()).await? {
            tracing::warn!(node = %uuid, "agent call with a wrong or expired token refused");
            return Err(ApiError::Unauthorized);
        }
        let node = state
            .store()
            .node_by_uuid(uuid)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        Ok(Self(node))
    }
}

async fn lookup(
    State(state): State<AgentApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    AuthorizedNode(node): AuthorizedNode,
    Json(body): Json<Lookup>,
) -> Result<Json<LookupReply>, ApiError> {
    let store = state.store();
    store
        .record_agent_seen(node.uuid, &peer.ip().to_string())
        .await?;
    let mac = body
        .mac
        .map(|m| m.to_string())
        .unwrap_or_else(|| "?".into());
    store
        .record_event(
            node.uuid,
            "agent",
            &format!(
                "agent {} up at {} (MAC {mac})",
                body.agent_version,
                peer.ip()
            ),
        )
        .await?;
    tracing::info!(node = %node.spec.name, address = %peer.ip(), "deploy agent looked itself up");
    state.conductor.wake();
    Ok(Json(LookupReply {
        node: node.uuid,
        name: node.spec.name.clone(),
        heartbeat_secs: state.heartbeat_secs,
    }))
}

async fn heartbeat(
    State(state): State<AgentApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    AuthorizedNode(node): AuthorizedNode,
    Json(_body): Json<Heartbeat>,
) -> Result<Json<HeartbeatReply>, ApiError> {
    let store = state.store();
    store
        .record_agent_seen(node.uuid, &peer.ip().to_string())
        .await?;
    let record = store.deployment(node.uuid).await?;
    let command = match record {
        Some(record) if record.current_result().is_none() && record.command_id != 0 => {
            match record.command.clone() {
                Some(Action::Deploy(mut deploy)) => {
                    deploy.config_drive =
                        config_drive::files(&node, node_tls(&state, &node, &record)?.as_ref());
                    Some(crate::agent::protocol::Command {
                        id: record.command_id,
                        action: Action::Deploy(deploy),
                    })
                }
                Some(action) => Some(crate::agent::protocol::Command {
                    id: record.command_id,
                    action,
                }),
                None => None,
            }
        }
        _ => None,
    };
    Ok(Json(HeartbeatReply {
        command,
        heartbeat_secs: state.heartbeat_secs,
    }))
}

/// A fresh Docker server certificate for the node (its name and provisioning address).
fn node_tls(
    state: &AgentApiState,
    node: &Node,
    record: &crate::store::Deployment,
) -> Result<Option<NodeTls>, ApiError> {
    let Some(ca) = &state.ca else { return Ok(None) };
    let ips: Vec<std::net::IpAddr> = node_address(node, Some(record)).into_iter().collect();
    let issued = ca.issue_server(&node.spec.name, &ips).map_err(|err| {
        tracing::error!(node = %node.spec.name, error = %err, "cannot issue the node's Docker certificate");
        ApiError::Internal
    })?;
    Ok(Some(NodeTls {
        ca_pem: ca.ca_pem().to_string(),
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem.expose().to_string(),
    }))
}

async fn inventory(
    State(state): State<AgentApiState>,
    AuthorizedNode(node): AuthorizedNode,
    Json(body): Json<serde_json::Value>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let parsed: crate::agent::inventory::HardwareInventory =
        serde_json::from_value(body.clone())
            .map_err(|e| ApiError::BadRequest(format!("inventory: {e}")))?;
    let store = state.store();
    store.save_inventory(node.uuid, &body).await?;
    let disks: Vec<String> = parsed
        .disks
        .iter()
        .map(|d| format!("{} {} GiB", d.name, d.size_gib()))
        .collect();
    store
        .record_event(
            node.uuid,
            "inventory",
            &format!(
                "{} CPUs, {} MiB RAM, disks: {}, NICs: {}",
                parsed.cpus,
                parsed.memory_bytes >> 20,
                if disks.is_empty() {
                    "none".into()
                } else {
                    disks.join(", ")
                },
                parsed
                    .nics
                    .iter()
                    .filter_map(|n| n.mac.map(|m| m.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .await?;
    Ok(Json(serde_json::json!({"stored": true})))
}

async fn progress(
    State(state): State<AgentApiState>,
    AuthorizedNode(node): AuthorizedNode,
    Json(report): Json<ProgressReport>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let store = state.store();
    let before = store.deployment(node.uuid).await?;
    store.record_agent_progress(node.uuid, &report).await?;
    // One timeline event per 10 % (or the first report), not one per report.
    let decile = |done: u64, total: Option<u64>| {
        total
            .filter(|t| *t > 0)
            .map(|t| done.saturating_mul(10) / t)
    };
    let previous = before
        .and_then(|r| r.progress)
        .filter(|p| p.command_id == report.command_id)
        .map(|p| decile(p.done, p.total));
    if previous != Some(decile(report.done, report.total)) {
        store
            .record_event(
                node.uuid,
                "image",
                &describe_progress(report.done, report.total, report.rate),
            )
            .await?;
    }
    Ok(Json(serde_json::json!({"stored": true})))
}

async fn result(
    State(state): State<AgentApiState>,
    AuthorizedNode(node): AuthorizedNode,
    Json(result): Json<CommandResult>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let store = state.store();
    let current = store.record_agent_result(node.uuid, &result).await?;
    if current {
        let detail = if result.ok {
            format!(
                "agent finished command {}: {}",
                result.command_id, result.detail
            )
        } else {
            format!(
                "agent failed command {}: {}",
                result.command_id, result.detail
            )
        };
        store.record_event(node.uuid, "agent", &detail).await?;
        tracing::info!(node = %node.spec.name, ok = result.ok, detail = %result.detail, "agent result");
        state.conductor.wake();
    }
    Ok(Json(serde_json::json!({"current": current})))
}
