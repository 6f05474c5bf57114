//! The REST API under `/v1` (axum): nodes, provision verbs, history, enrollment; bearer-token auth.

pub mod agent;
mod auth;
mod error;
mod power;

pub use auth::{TOKEN_FILE, load_or_create_token};
pub use error::ApiError;

use crate::bmc::registry::Registry;
use crate::conductor::Conductor;
use crate::inventory;
use crate::model::{Node, Verb};
use crate::store::{EnrollReport, HistoryEntry};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router, middleware};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Clone)]
pub struct ApiState {
    pub conductor: Conductor,
    pub token: Arc<str>,
    pub bmcs: Arc<Registry>,
}

/// Builds the router; the caller binds the listener (tests use port 0).
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/nodes", get(list_nodes))
        .route("/progress", get(rack_progress))
        .route("/nodes/{name}", get(show_node).delete(delete_node))
        .route("/nodes/{name}/history", get(node_history))
        .route("/nodes/{name}/events", get(node_events))
        .route("/nodes/{name}/states/provision", put(set_provision_state))
        .route(
            "/nodes/{name}/states/power",
            get(power::status).put(power::set),
        )
        .route(
            "/nodes/{name}/states/boot_device",
            get(power::boot_device).put(power::set_boot_device),
        )
        .route("/inventory", axum::routing::post(enroll))
        .route("/dhcp/leases", get(dhcp_leases))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(|| async { "ok" }))
        .layer(middleware::from_fn(auth::log_request))
        .with_state(state)
}

async fn list_nodes(State(state): State<ApiState>) -> Result<Json<Vec<Node>>, ApiError> {
    Ok(Json(state.conductor.store().list_nodes().await?))
}

/// The node, plus what only the daemon knows: why it waits, its deploy's step and progress, and
/// the hardware inventory its agent reported.
async fn show_node(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let store = state.conductor.store();
    let node = store.node(&name).await?;
    let mut body = serde_json::to_value(&node).map_err(|_| ApiError::Internal)?;
    body["waiting"] = serde_json::json!(state.conductor.waiting_reason(&node));
    if let Some(deploy) = store.deployment(node.uuid).await? {
        body["deploy"] = serde_json::json!({
            "step": deploy.step,
            "step_started_at": deploy.step_started_at,
            "image": deploy.image.url,
            "agent_address": deploy.agent_address,
            "agent_seen_at": deploy.agent_seen_at,
            "progress": deploy.progress.as_ref().map(|p| {
                crate::conductor::deploy::describe_progress(p.done, p.total, p.rate)
            }),
            "result": deploy.result.as_ref().map(|r| r.detail.clone()),
        });
    }
    if let Some(inventory) = store.inventory_of(node.uuid).await? {
        body["inventory"] = serde_json::json!({
            "collected_at": inventory.collected_at,
            "data": inventory.data,
        });
    }
    Ok(Json(body))
}

/// Every node's phase in one reply, for live progress (`kiln deploy-servers`): state, why it
/// waits, the deploy step and image progress, the last error. Secrets are never part of it.
async fn rack_progress(
    State(state): State<ApiState>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let store = state.conductor.store();
    let nodes = store.list_nodes().await?;
    let mut out = Vec::with_capacity(nodes.len());
    for node in nodes {
        let mut entry = serde_json::json!({
            "name": node.spec.name,
            "provision_state": node.provision_state,
            "target_provision_state": node.target_provision_state,
            "last_error": node.last_error,
            "waiting": state.conductor.waiting_reason(&node),
            "power_state": node.power_state,
            "bmc_error": node.bmc_error,
            "updated_at": node.updated_at,
        });
        if node.provision_state.is_transient()
            && let Some(deploy) = store.deployment(node.uuid).await?
        {
            entry["deploy"] = serde_json::json!({
                "step": deploy.step,
                "step_started_at": deploy.step_started_at,
                "agent_seen_at": deploy.agent_seen_at,
                "done": deploy.progress.as_ref().map(|p| p.done),
                "total": deploy.progress.as_ref().and_then(|p| p.total),
                "rate": deploy.progress.as_ref().map(|p| p.rate),
            });
        }
        out.push(entry);
    }
    Ok(Json(out))
}

async fn delete_node(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.conductor.store().delete_node(&name).await?;
    tracing::info!(node = %name, "node deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn node_history(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    Ok(Json(state.conductor.store().history(&name).await?))
}

async fn node_events(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<crate::store::NodeEvent>>, ApiError> {
    Ok(Json(state.conductor.store().events(&name).await?))
}

/// A DHCP lease as the operator sees it: which node (or an unknown, discovered machine) holds
/// which address until when.
#[derive(serde::Serialize)]
struct LeaseView {
    ip: String,
    mac: String,
    node: Option<String>,
    discovered: bool,
    expires_at: i64,
}

async fn dhcp_leases(State(state): State<ApiState>) -> Result<Json<Vec<LeaseView>>, ApiError> {
    let store = state.conductor.store();
    let names: std::collections::HashMap<uuid::Uuid, String> = store
        .list_nodes()
        .await?
        .into_iter()
        .map(|n| (n.uuid, n.spec.name))
        .collect();
    let leases = store.leases().await?;
    Ok(Json(
        leases
            .into_iter()
            .map(|lease| LeaseView {
                ip: lease.ip.to_string(),
                mac: lease.mac.to_string(),
                node: lease.node_uuid.and_then(|uuid| names.get(&uuid).cloned()),
                discovered: lease.discovered,
                expires_at: lease.expires_at,
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvisionRequest {
    target: String,
}

async fn set_provision_state(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Json(request): Json<ProvisionRequest>,
) -> Result<(StatusCode, Json<Node>), ApiError> {
    let verb: Verb = request.target.parse().map_err(ApiError::BadRequest)?;
    let node = state.conductor.request(&name, verb).await?;
    Ok((StatusCode::ACCEPTED, Json(node)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollRequest {
    /// The file name, used in error messages.
    file: String,
    content: String,
    #[serde(default)]
    dry_run: bool,
}

async fn enroll(
    State(state): State<ApiState>,
    Json(request): Json<EnrollRequest>,
) -> Result<Json<EnrollReport>, ApiError> {
    let inventory =
        inventory::parse(&request.file, &request.content).map_err(ApiError::InvalidInventory)?;
    let report = state
        .conductor
        .store()
        .enroll(&inventory.nodes, request.dry_run)
        .await?;
    tracing::info!(
        file = %request.file,
        dry_run = request.dry_run,
        created = report.created.len(),
        updated = report.updated.len(),
        unchanged = report.unchanged.len(),
        "inventory enrolled"
    );
    Ok(Json(report))
}
