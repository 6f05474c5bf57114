//! The boot HTTP server: per-MAC iPXE scripts and the files they load, for firmware that cannot
//! authenticate. Nothing here needs a bearer token, so nothing here may reveal a secret: scripts
//! carry only the node's name, uuid, MAC and (for a deploy) a fresh single-use agent token.
//!
//! Routes: `GET /boot/{mac}.ipxe` (colon or dash MAC, any case) and `GET|HEAD /files/{*path}`.
//! Every script served and every fetch of the deploy kernel or ramdisk lands on the node's
//! timeline (`Store::record_event`), so an operator can see how far a boot got.

use super::files::{self, FileError};
use super::ipxe::{self, IpxeError, ScriptKind, ScriptSettings};
use crate::model::MacAddress;
use crate::store::{Store, StoreError};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use uuid::Uuid;

/// How the boot HTTP server is set up; shared read-only by all requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootHttpConfig {
    /// Directory served under `/files/` (deploy kernel, ramdisk, OS images).
    pub files_root: PathBuf,
    /// URLs, file names, kernel arguments and discovery, as the scripts use them.
    pub scripts: ScriptSettings,
}

impl BootHttpConfig {
    /// `http_base` is this server as nodes reach it (e.g. `http://10.99.0.1:8080`); `api_url` is
    /// the Kiln API for the agent. Everything else starts at its default (see [`ScriptSettings`]).
    pub fn new(
        http_base: impl Into<String>,
        api_url: impl Into<String>,
        files_root: impl Into<PathBuf>,
    ) -> Self {
        Self {
            files_root: files_root.into(),
            scripts: ScriptSettings::new(http_base, api_url),
        }
    }
}

/// What every handler needs: the store and the configuration.
#[derive(Clone, Debug)]
pub struct BootHttpState {
    pub store: Store,
    pub config: Arc<BootHttpConfig>,
}

impl BootHttpState {
    pub fn new(store: Store, config: BootHttpConfig) -> Self {
        Self {
            store,
            config: Arc::new(config),
        }
    }
}

pub fn router(state: BootHttpState) -> Router {
    Router::new()
        // HEAD would otherwise run the GET handler, which rotates the agent token.
        .route("/boot/{script}", get(boot_script).head(not_allowed))
        .route("/files/{*path}", get(file).head(file))
        .with_state(state)
}

async fn not_allowed() -> Response {
    (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET")]).into_response()
}

/// Everything that can go wrong on the boot HTTP path; [`IntoResponse`] is the one status mapping.
#[derive(Debug, thiserror::Error)]
pub enum BootHttpError {
    #[error("'{0}' is not a boot script name (expected e.g. 52:54:00:12:34:56.ipxe)")]
    BadScriptName(String),
    #[error("serving a file")]
    File(#[from] FileError),
    #[error("looking up the booting node")]
    Store(#[from] StoreError),
    #[error("building the boot script")]
    Ipxe(#[from] IpxeError),
}

impl IntoResponse for BootHttpError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::BadScriptName(_) => StatusCode::NOT_FOUND,
            Self::File(FileError::BadPath(_)) => StatusCode::BAD_REQUEST,
            Self::File(FileError::NotFound(_)) => StatusCode::NOT_FOUND,
            Self::File(FileError::Unsatisfiable { .. }) => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::File(FileError::Io { .. }) | Self::Store(_) | Self::Ipxe(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let message = if status.is_server_error() {
            tracing::error!(error = %chain(&self), "boot HTTP request failed");
            "internal error; see the Kiln log".to_string()
        } else {
            tracing::debug!(error = %chain(&self), %status, "boot HTTP request refused");
            chain(&self)
        };
        let mut response = (status, format!("{message}\n")).into_response();
        if let Self::File(FileError::Unsatisfiable { size }) = self
            && let Ok(value) = format!("bytes */{size}").parse()
        {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
        response
    }
}

/// The error and all its sources, for one log line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn boot_script(
    State(state): State<BootHttpState>,
    Path(script): Path<String>,
) -> Result<Response, BootHttpError> {
    let bad = || BootHttpError::BadScriptName(script.clone());
    let mac: MacAddress = script
        .strip_suffix(".ipxe")
        .ok_or_else(bad)?
        .parse()
        .map_err(|_| bad())?;
    let settings = &state.config.scripts;
    let node = state.store.node_by_mac(mac).await?;
    let mut kind = ipxe::script_for(node.as_ref(), settings.discovery);
    if let (ScriptKind::Deploy, Some(node)) = (&kind, &node) {
        // Past the image write, a deploying node boots its disk even if it PXE-boots again.
        let step = state.store.deployment(node.uuid).await?.map(|d| d.step);
        if step == Some(crate::store::DeployStep::WaitOs) {
            kind = ScriptKind::LocalBoot;
        }
    }
    let token = match (&kind, &node) {
        (ScriptKind::Deploy, Some(node)) => Some(state.store.issue_agent_token(node.uuid).await?),
        _ => None,
    };
    let script = ipxe::render(&kind, mac, node.as_ref(), token.as_deref(), settings)?;
    match &node {
        Some(node) => {
            tracing::info!(
                node = %node.spec.name,
                %mac,
                state = %node.provision_state,
                script = kind.as_str(),
                "served iPXE script"
            );
            record(&state.store, node.uuid, "script-served", kind.as_str()).await;
        }
        None => tracing::info!(%mac, script = kind.as_str(), "served iPXE script to a stranger"),
    }
    let headers = [
        (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        // Each fetch decides afresh (and may issue a new token): never let anything cache it.
        (header::CACHE_CONTROL, "no-store"),
    ];
    Ok((headers, script).into_response())
}

async fn file(
    State(state): State<BootHttpState>,
    method: Method,
    Path(path): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, BootHttpError> {
    let config = &state.config;
    let response = files::serve(&config.files_root, &path, &method, &headers).await?;
    tracing::debug!(%path, %method, status = %response.status(), "served file");
    // A download counts once: a ranged resume or a HEAD is not a new fetch.
    let from_start = match response.status() {
        StatusCode::OK => true,
        StatusCode::PARTIAL_CONTENT => response
            .headers()
            .get(header::CONTENT_RANGE)
            .is_some_and(|range| range.as_bytes().starts_with(b"bytes 0-")),
        _ => false,
    };
    let node = query.get("node").and_then(|n| Uuid::parse_str(n).ok());
    if method == Method::GET
        && from_start
        && let (Some(kind), Some(uuid)) = (boot_file_event(config, &path), node)
    {
        match state.store.node_by_uuid(uuid).await {
            Ok(found) => match found {
                Some(node) => {
                    tracing::info!(node = %node.spec.name, %path, event = kind, "boot file fetched");
                    record(&state.store, uuid, kind, &path).await;
                }
                None => tracing::debug!(%uuid, %path, "boot file fetched for an unknown node"),
            },
            Err(err) => tracing::warn!(error = %chain(&err), "could not look up the fetching node"),
        }
    }
    Ok(response)
}

/// Which timeline event a fetch of `path` is, if it is the configured deploy kernel or ramdisk.
fn boot_file_event(config: &BootHttpConfig, path: &str) -> Option<&'static str> {
    let requested = files::relative_path(path).ok()?;
    let is = |configured: &str| files::relative_path(configured).ok().as_ref() == Some(&requested);
    if is(&config.scripts.deploy_kernel) {
        Some("kernel-fetched")
    } else if is(&config.scripts.deploy_ramdisk) {
        Some("ramdisk-fetched")
    } else {
        None
    }
}

/// Timeline events are for the operator; failing to write one must not stop a node booting.
async fn record(store: &Store, uuid: Uuid, kind: &str, detail: &str) {
    if let Err(err) = store.record_event(uuid, kind, detail).await {
        tracing::warn!(%uuid, kind, error = %chain(&err), "could not record a boot event");
    }
}
