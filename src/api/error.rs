//! The one place API errors become HTTP statuses and stable JSON `{"error": {code, message}}`.

use crate::conductor::ConductorError;
use crate::inventory::InventoryError;
use crate::store::StoreError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the inventory has {} error(s)", .0.len())]
    InvalidInventory(Vec<InventoryError>),
    #[error("{0}")]
    NotImplemented(String),
    /// The node's BMC failed; the message is the plain reason (never credentials).
    #[error("{0}")]
    Bmc(String),
    #[error("internal error; see the daemon log")]
    Internal,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::InvalidInventory(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_inventory"),
            Self::NotImplemented(_) => (StatusCode::NOT_IMPLEMENTED, "not_implemented"),
            Self::Bmc(_) => (StatusCode::BAD_GATEWAY, "bmc_error"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(name) => Self::NotFound(format!("node '{name}' not found")),
            StoreError::Conflict(message) => Self::Conflict(message),
            err @ StoreError::StateChanged { .. } => Self::Conflict(err.to_string()),
            err => {
                tracing::error!(error = ?anyhow::Error::from(err), "store failure");
                Self::Internal
            }
        }
    }
}

impl From<ConductorError> for ApiError {
    fn from(err: ConductorError) -> Self {
        match err {
            ConductorError::Store(err) => err.into(),
            ConductorError::InvalidTransition(err) => Self::Conflict(err.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut body = json!({"error": {"code": code, "message": self.to_string()}});
        if let Self::InvalidInventory(errors) = &self {
            body["error"]["details"] =
                json!(errors.iter().map(ToString::to_string).collect::<Vec<_>>());
            body["error"]["errors"] = json!(errors);
        }
        (status, Json(body)).into_response()
    }
}
