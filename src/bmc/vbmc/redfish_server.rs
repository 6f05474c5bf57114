//! The Redfish face of `kiln vbmc`: service root, Systems, ComputerSystem.Reset and the boot
//! override PATCH, with HTTP basic auth — the subset Kiln's (and Ironic's) Redfish drivers use.

use super::Vbmc;
use crate::bmc::{BootDevice, PowerState};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::sync::Arc;

pub fn router(vbmc: Arc<Vbmc>) -> Router {
    Router::new()
        .route("/redfish/v1", get(root))
        .route("/redfish/v1/", get(root))
        .route("/redfish/v1/Systems", get(systems))
        .route("/redfish/v1/Systems/{id}", get(system).patch(patch_system))
        .route(
            "/redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset",
            post(reset),
        )
        .with_state(vbmc)
}

fn authorised(vbmc: &Vbmc, headers: &HeaderMap) -> bool {
    use base64_light::decode;
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return false;
    };
    let Some(decoded) = decode(encoded.trim()) else {
        return false;
    };
    decoded == format!("{}:{}", vbmc.username, vbmc.password.expose())
}

/// Minimal base64 decoding for the basic-auth header (no crate needed for 20 lines).
mod base64_light {
    pub fn decode(text: &str) -> Option<String> {
        let mut bits = 0u32;
        let mut count = 0;
        let mut out = Vec::new();
        for c in text.bytes().filter(|c| *c != b'=') {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return None,
            };
            bits = (bits << 6) | u32::from(v);
            count += 6;
            if count >= 8 {
                count -= 8;
                out.push((bits >> count) as u8);
                bits &= (1 << count) - 1;
            }
        }
        String::from_utf8(out).ok()
    }
}

fn unauthorised() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"kiln-vbmc\"")],
        "",
    )
        .into_response()
}

fn not_found(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": {"message": format!("no system {id}")}})),
    )
        .into_response()
}

async fn root(State(vbmc): State<Arc<Vbmc>>, headers: HeaderMap) -> Response {
    if !authorised(&vbmc, &headers) {
        return unauthorised();
    }
    Json(json!({
        "@odata.id": "/redfish/v1/",
        "@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot",
        "Id": "RootService",
        "Name": "Kiln virtual BMC",
        "RedfishVersion": "1.5.0",
        "Systems": {"@odata.id": "/redfish/v1/Systems"}
    }))
    .into_response()
}

async fn systems(State(vbmc): State<Arc<Vbmc>>, headers: HeaderMap) -> Response {
    if !authorised(&vbmc, &headers) {
        return unauthorised();
    }
    let members: Vec<Value> = vbmc
        .names()
        .iter()
        .map(|name| json!({"@odata.id": format!("/redfish/v1/Systems/{name}")}))
        .collect();
    Json(json!({
        "@odata.id": "/redfish/v1/Systems",
        "Name": "Computer System Collection",
        "Members@odata.count": members.len(),
        "Members": members
    }))
    .into_response()
}

async fn system(
    State(vbmc): State<Arc<Vbmc>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorised(&vbmc, &headers) {
        return unauthorised();
    }
    let Some(vm) = vbmc.vm(&id) else {
        return not_found(&id);
    };
    let power = match vm.power_state().await {
        PowerState::On => "On",
        PowerState::Off => "Off",
    };
    let boot = vm.boot_setting().await;
    let target = match boot.device {
        Some(BootDevice::Pxe) => "Pxe",
        _ => "Hdd",
    };
    Json(json!({
        "@odata.id": format!("/redfish/v1/Systems/{id}"),
        "@odata.type": "#ComputerSystem.v1_10_0.ComputerSystem",
        "Id": id,
        "Name": id,
        "PowerState": power,
        "Boot": {
            "BootSourceOverrideTarget": target,
            "BootSourceOverrideEnabled": if boot.persistent { "Continuous" } else { "Once" },
            "BootSourceOverrideMode": if vm.uefi() { "UEFI" } else { "Legacy" },
            "BootSourceOverrideTarget@Redfish.AllowableValues": ["Pxe", "Hdd"]
        },
        "Actions": {"#ComputerSystem.Reset": {
            "target": format!("/redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset"),
            "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "GracefulShutdown", "ForceRestart", "PowerCycle"]
        }}
    }))
    .into_response()
}

async fn reset(
    State(vbmc): State<Arc<Vbmc>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !authorised(&vbmc, &headers) {
        return unauthorised();
    }
    let Some(vm) = vbmc.vm(&id) else {
        return not_found(&id);
    };
    let result = match body["ResetType"].as_str() {
        Some("On") => vm.power_on().await,
        Some("ForceOff") => vm.power_off().await,
        Some("GracefulShutdown") => vm.soft_off().await,
        Some("ForceRestart" | "PowerCycle") => vm.reset().await,
        other => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"message": format!("unsupported ResetType {other:?}")}})),
            )
                .into_response();
        }
    };
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": err.to_string()}})),
        )
            .into_response(),
    }
}

async fn patch_system(
    State(vbmc): State<Arc<Vbmc>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !authorised(&vbmc, &headers) {
        return unauthorised();
    }
    let Some(vm) = vbmc.vm(&id) else {
        return not_found(&id);
    };
    let boot = &body["Boot"];
    let device = match boot["BootSourceOverrideTarget"].as_str() {
        Some("Pxe") => BootDevice::Pxe,
        Some("Hdd") => BootDevice::Disk,
        other => return (StatusCode::BAD_REQUEST, Json(json!({"error": {"message": format!("unsupported BootSourceOverrideTarget {other:?}")}}))).into_response(),
    };
    let persistent = boot["BootSourceOverrideEnabled"].as_str() == Some("Continuous");
    vm.set_boot(device, persistent).await;
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_basic_auth() {
        assert_eq!(
            super::base64_light::decode("YWRtaW46cGFzc3dvcmQ=").as_deref(),
            Some("admin:password")
        );
        assert_eq!(super::base64_light::decode("!!"), None);
    }
}
