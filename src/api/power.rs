//! Power and boot-device endpoints: live calls through the node's guarded BMC; the result (or the
//! plain reason it failed) is also recorded on the node.

use super::{ApiError, ApiState};
use crate::bmc::{Bmc, BmcError, BootDevice, BootSetting, PowerAction};
use crate::model::BootMode;
use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
pub struct PowerReply {
    pub power_state: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerRequest {
    /// on, off (hard), soft-off, reset, cycle
    target: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootDeviceRequest {
    device: BootDevice,
    #[serde(default)]
    persistent: bool,
}

fn action(target: &str) -> Result<PowerAction, ApiError> {
    Ok(match target {
        "on" => PowerAction::On,
        "off" => PowerAction::Off,
        "soft-off" => PowerAction::SoftOff,
        "reset" | "reboot" => PowerAction::Reset,
        "cycle" => PowerAction::Cycle,
        other => {
            return Err(ApiError::BadRequest(format!(
                "unknown power target '{other}' (on, off, soft-off, reset, cycle)"
            )));
        }
    })
}

async fn bmc_of(
    state: &ApiState,
    name: &str,
) -> Result<
    (
        crate::model::Node,
        std::sync::Arc<crate::bmc::guard::GuardedBmc>,
    ),
    ApiError,
> {
    let node = state.conductor.store().node(name).await?;
    let bmc = state
        .bmcs
        .for_node(&node)
        .await
        .map_err(|err| ApiError::Bmc(format!("node '{name}': {err}")))?;
    Ok((node, bmc))
}

/// Records a BMC failure on the node and turns it into the API error.
async fn failed(state: &ApiState, node: &crate::model::Node, err: BmcError) -> ApiError {
    let _ = state
        .conductor
        .store()
        .record_power(node.uuid, Err(&err.to_string()))
        .await;
    ApiError::Bmc(format!("node '{}': {err}", node.spec.name))
}

/// Reads the power state now, records it (or the failure) on the node, and replies with it.
async fn read_and_record(
    state: &ApiState,
    node: &crate::model::Node,
    bmc: &crate::bmc::guard::GuardedBmc,
) -> Result<Json<PowerReply>, ApiError> {
    match bmc.power_state().await {
        Ok(power) => {
            let power_state = power.to_string();
            state
                .conductor
                .store()
                .record_power(node.uuid, Ok(&power_state))
                .await?;
            Ok(Json(PowerReply { power_state }))
        }
        Err(err) => Err(failed(state, node, err).await),
    }
}

pub async fn status(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<PowerReply>, ApiError> {
    let (node, bmc) = bmc_of(&state, &name).await?;
    read_and_record(&state, &node, &bmc).await
}

pub async fn set(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Json(request): Json<PowerRequest>,
) -> Result<Json<PowerReply>, ApiError> {
    let action = action(&request.target)?;
    let (node, bmc) = bmc_of(&state, &name).await?;
    if let Err(err) = bmc.power(action).await {
        return Err(failed(&state, &node, err).await);
    }
    tracing::info!(node = %name, ?action, "power changed");
    read_and_record(&state, &node, &bmc).await
}

pub async fn boot_device(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<BootSetting>, ApiError> {
    let (node, bmc) = bmc_of(&state, &name).await?;
    match bmc.boot_device().await {
        Ok(setting) => Ok(Json(setting)),
        Err(err) => Err(failed(&state, &node, err).await),
    }
}

pub async fn set_boot_device(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Json(request): Json<BootDeviceRequest>,
) -> Result<Json<BootSetting>, ApiError> {
    let (node, bmc) = bmc_of(&state, &name).await?;
    let uefi = node.spec.boot_mode == BootMode::Uefi;
    if let Err(err) = bmc
        .set_boot_device(request.device, request.persistent, uefi)
        .await
    {
        return Err(failed(&state, &node, err).await);
    }
    tracing::info!(node = %name, device = ?request.device, persistent = request.persistent, "boot device set");
    Ok(Json(BootSetting {
        device: Some(request.device),
        persistent: request.persistent,
        uefi: Some(uefi),
    }))
}
