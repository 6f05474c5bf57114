//! A simulated Docker Engine on a node's address: the subset of the Engine API (v1.41) that
//! Kiln's deployer calls through bollard — version/info, containers, images (pull, load, tag),
//! volumes, archive upload, logs, exec (the startup probe) — over plain TCP or mutual TLS with
//! the node's certificate.
//! Containers run nothing: a healthchecked container is "starting" for `health_delay` and then
//! "healthy"; a bootstrap container (label `org.kiln.kind=bootstrap`) exits 0 after it; a pull
//! takes `pull`. State lives in memory and is lost when the node is re-imaged.

mod archive;
mod routes;
mod state;
mod tls;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use routes::Route;
use serde_json::{Value, json};
use state::{Changed, CreateRequest, EngineState, HealthNow, StateError};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

pub use tls::TlsIdentity;

/// How long the simulated engine's work takes.
#[derive(Clone, Debug, Default)]
pub struct EngineTiming {
    /// One image pull.
    pub pull: Duration,
    /// From start to healthy (healthchecked containers) or to exit 0 (bootstrap containers).
    pub health_delay: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SimDockerError {
    #[error("TLS identity: {0}")]
    Tls(String),
    #[error("serving the Docker API: {0}")]
    Serve(#[from] std::io::Error),
}

pub struct SimDocker {
    hostname: String,
    timing: EngineTiming,
    state: Mutex<EngineState>,
}

impl SimDocker {
    pub fn new(hostname: &str, timing: EngineTiming) -> Arc<SimDocker> {
        Arc::new(SimDocker {
            hostname: hostname.to_string(),
            timing,
            state: Mutex::default(),
        })
    }

    /// Runs `f` on the state after letting time act on it.
    fn with_state<R>(&self, f: impl FnOnce(&mut EngineState, SystemTime) -> R) -> R {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = SystemTime::now();
        state.settle(now, self.timing.health_delay);
        f(&mut state, now)
    }

    /// (name, running, healthy) of every container: for the simulator's own reports.
    pub fn containers(&self) -> Vec<(String, bool, bool)> {
        let delay = self.timing.health_delay;
        self.with_state(|state, now| {
            state
                .containers()
                .map(|c| {
                    let healthy = c.health(now, delay) == HealthNow::Healthy;
                    (c.name.clone(), c.running, healthy)
                })
                .collect()
        })
    }
}

/// Serves the API over plain TCP until `shutdown`.
pub async fn serve_plain(
    listener: tokio::net::TcpListener,
    engine: Arc<SimDocker>,
    shutdown: CancellationToken,
) -> Result<(), SimDockerError> {
    axum::serve(listener, app(engine))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// Serves the API over TLS, requiring a client certificate from `identity.ca_pem`'s CA.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    engine: Arc<SimDocker>,
    identity: TlsIdentity,
    shutdown: CancellationToken,
) -> Result<(), SimDockerError> {
    let listener = tls::TlsListener::new(listener, &identity)?;
    axum::serve(listener, app(engine))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

fn app(engine: Arc<SimDocker>) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(engine)
}

fn error(status: u16, message: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(json!({ "message": message.into() }))).into_response()
}

fn state_error(err: StateError) -> Response {
    error(err.status(), err.message())
}

fn json_status(status: StatusCode, value: Value) -> Response {
    (status, axum::Json(value)).into_response()
}

fn empty(status: StatusCode) -> Response {
    status.into_response()
}

fn query(request: &Request) -> HashMap<String, String> {
    request
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

/// `filters={"label":["k=v"]}` → the label filters.
fn label_filters(query: &HashMap<String, String>) -> Vec<String> {
    query
        .get("filters")
        .and_then(|f| serde_json::from_str::<Value>(f).ok())
        .and_then(|f| f.get("label").cloned())
        .map(|labels| match labels {
            Value::Array(items) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            // The older map form: {"label": {"k=v": true}}.
            Value::Object(map) => map.keys().cloned().collect(),
            _ => Vec::new(),
        })
        .unwrap_or_default()
}

fn rfc3339(time: Option<SystemTime>) -> String {
    match time {
        Some(time) => {
            let since = time
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            crate::sim::docker_api::civil::format(since.as_secs() as i64, since.subsec_nanos())
        }
        None => "0001-01-01T00:00:00Z".to_string(),
    }
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

async fn body_json(request: Request) -> Result<Value, Response> {
    let bytes = axum::body::to_bytes(request.into_body(), 16 << 20)
        .await
        .map_err(|e| error(400, format!("reading the body: {e}")))?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| error(400, format!("invalid JSON: {e}")))
}

/// Streams a tar body through the scanner, keeping only `keep`.
async fn scan_tar(request: Request, keep: &[&str]) -> Result<archive::TarScanner, Response> {
    let mut scanner = archive::TarScanner::new(keep);
    let mut stream = request.into_body().into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| error(400, format!("reading the archive: {e}")))?;
        scanner
            .feed(&chunk)
            .map_err(|e| error(400, e.to_string()))?;
    }
    scanner.finish().map_err(|e| error(400, e.to_string()))?;
    Ok(scanner)
}

async fn handle(State(engine): State<Arc<SimDocker>>, request: Request) -> Response {
    let Some(route) = routes::route(request.method(), request.uri().path()) else {
        return error(
            404,
            format!(
                "page not found (the simulated engine does not implement {} {})",
                request.method(),
                request.uri().path()
            ),
        );
    };
    let query = query(&request);
    let delay = engine.timing.health_delay;
    match route {
        Route::Ping => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            if request.method() == Method::HEAD { "" } else { "OK" },
        )
            .into_response(),
        Route::Version => json_status(StatusCode::OK, version_body()),
        Route::Info => {
            let (total, running, images) = engine.with_state(|s, _| {
                (s.containers().count(), s.running_count(), s.image_count())
            });
            json_status(
                StatusCode::OK,
                json!({
                    "ID": format!("kiln-sim-{}", engine.hostname),
                    "Name": engine.hostname,
                    "Containers": total,
                    "ContainersRunning": running,
                    "ContainersPaused": 0,
                    "ContainersStopped": total - running,
                    "Images": images,
                    "ServerVersion": SERVER_VERSION,
                    "OperatingSystem": "Kiln rack simulator",
                    "OSType": "linux",
                    "Architecture": "x86_64",
                    "NCPU": 2,
                    "MemTotal": 4_294_967_296_i64,
                    "SystemTime": rfc3339(Some(SystemTime::now())),
                }),
            )
        }
        Route::ListContainers => {
            let all = query.get("all").is_some_and(|v| v == "1" || v == "true");
            let filters = label_filters(&query);
            let list = engine.with_state(|s, now| {
                s.containers()
                    .filter(|c| all || c.running)
                    .filter(|c| state::labels_match(&c.labels, &filters))
                    .map(|c| {
                        json!({
                            "Id": c.id,
                            "Names": [format!("/{}", c.name)],
                            "Image": c.image,
                            "ImageID": c.image_id,
                            "Command": "kolla_start",
                            "Created": c.created.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                            "Labels": c.labels,
                            "State": c.state_word(),
                            "Status": c.status_text(now, delay),
                        })
                    })
                    .collect::<Vec<_>>()
            });
            json_status(StatusCode::OK, Value::Array(list))
        }
        Route::InspectContainer(name) => engine.with_state(|s, now| match s.container(&name) {
            Ok(c) => json_status(StatusCode::OK, inspect_body(c, now, delay)),
            Err(e) => state_error(e),
        }),
        Route::CreateContainer => {
            let Some(name) = query.get("name").cloned() else {
                return error(400, "the simulated engine needs a container name");
            };
            let body = match body_json(request).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            let has_healthcheck = body["Healthcheck"]["Test"]
                .as_array()
                .is_some_and(|t| !t.is_empty() && t[0] != "NONE");
            let create = CreateRequest {
                name,
                image: body["Image"].as_str().unwrap_or_default().to_string(),
                labels: string_map(&body["Labels"]),
                has_healthcheck,
            };
            match engine.with_state(|s, now| s.create(create, now)) {
                Ok(id) => json_status(StatusCode::CREATED, json!({"Id": id, "Warnings": []})),
                Err(e) => state_error(e),
            }
        }
        Route::StartContainer(name) => changed(engine.with_state(|s, now| s.start(&name, now))),
        Route::StopContainer(name) => changed(engine.with_state(|s, now| s.stop(&name, now))),
        Route::RemoveContainer(name) => {
            let force = query.get("force").is_some_and(|v| v == "1" || v == "true");
            match engine.with_state(|s, _| s.remove(&name, force)) {
                Ok(()) => empty(StatusCode::NO_CONTENT),
                Err(e) => state_error(e),
            }
        }
        Route::UploadArchive(name) => {
            if let Err(e) = engine.with_state(|s, _| s.container(&name).map(|_| ())) {
                return state_error(e);
            }
            let scanner = match scan_tar(request, &[]).await {
                Ok(scanner) => scanner,
                Err(response) => return response,
            };
            match engine.with_state(|s, _| s.upload(&name, scanner.names)) {
                Ok(()) => empty(StatusCode::OK),
                Err(e) => state_error(e),
            }
        }
        Route::CreateExec(name) => match engine.with_state(|s, _| s.create_exec(&name)) {
            Ok(id) => json_status(StatusCode::CREATED, json!({"Id": id})),
            Err(e) => state_error(e),
        },
        // Detached starts only (what the probe sends): the exit code is decided at inspect.
        Route::StartExec(id) => match engine.with_state(|s, now| s.exec_exit_code(&id, now, delay)) {
            Ok(_) => empty(StatusCode::OK),
            Err(e) => state_error(e),
        },
        Route::InspectExec(id) => match engine.with_state(|s, now| s.exec_exit_code(&id, now, delay)) {
            Ok(code) => json_status(
                StatusCode::OK,
                json!({"ID": id, "Running": false, "ExitCode": code}),
            ),
            Err(e) => state_error(e),
        },
        Route::ContainerLogs(name) => engine.with_state(|s, now| match s.container(&name) {
            Ok(c) => {
                let text = format!(
                    "simulated container {} ({}) on {}: {}\n",
                    c.name,
                    c.image,
                    engine.hostname,
                    c.status_text(now, delay)
                );
                (
                    [(header::CONTENT_TYPE, "application/vnd.docker.multiplexed-stream")],
                    stdout_frame(text.as_bytes()),
                )
                    .into_response()
            }
            Err(e) => state_error(e),
        }),
        Route::InspectImage(reference) => engine.with_state(|s, _| match s.image(&reference) {
            Ok(id) => json_status(
                StatusCode::OK,
                json!({"Id": id, "RepoTags": [state::normalize_reference(&reference)], "Os": "linux", "Architecture": "amd64", "Size": 0}),
            ),
            Err(e) => state_error(e),
        }),
        Route::PullImage => {
            let Some(from) = query.get("fromImage").filter(|f| !f.is_empty()) else {
                return error(400, "fromImage is required");
            };
            let reference = match query.get("tag").filter(|t| !t.is_empty()) {
                Some(tag) => format!("{from}:{tag}"),
                None => from.clone(),
            };
            tokio::time::sleep(engine.timing.pull).await;
            let id = state::image_id_for(&reference);
            engine.with_state(|s, _| s.add_image(&reference, &id));
            let lines = format!(
                "{}\n{}\n",
                json!({"status": format!("Pulling from {from}")}),
                json!({"status": format!("Status: Downloaded newer image for {reference}")})
            );
            ([(header::CONTENT_TYPE, "application/json")], lines).into_response()
        }
        Route::LoadImage => {
            let scanner = match scan_tar(request, &["manifest.json"]).await {
                Ok(scanner) => scanner,
                Err(response) => return response,
            };
            let tags = scanner
                .kept("manifest.json")
                .map(archive::manifest_tags)
                .unwrap_or_default();
            if tags.is_empty() {
                return error(400, "the archive has no manifest.json with RepoTags");
            }
            engine.with_state(|s, _| {
                for (tag, id) in &tags {
                    s.add_image(tag, id);
                }
            });
            let lines: String = tags
                .iter()
                .map(|(tag, _)| format!("{}\n", json!({"stream": format!("Loaded image: {tag}\n")})))
                .collect();
            ([(header::CONTENT_TYPE, "application/json")], lines).into_response()
        }
        Route::TagImage(source) => {
            let Some(repo) = query.get("repo").filter(|r| !r.is_empty()) else {
                return error(400, "repo is required");
            };
            let target = match query.get("tag").filter(|t| !t.is_empty()) {
                Some(tag) => format!("{repo}:{tag}"),
                None => repo.clone(),
            };
            match engine.with_state(|s, _| s.tag(&source, &target)) {
                Ok(()) => empty(StatusCode::CREATED),
                Err(e) => state_error(e),
            }
        }
        Route::CreateVolume => {
            let body = match body_json(request).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            let Some(name) = body["Name"].as_str().map(str::to_string) else {
                return error(400, "the simulated engine needs a volume name");
            };
            let labels = string_map(&body["Labels"]);
            let volume = engine.with_state(|s, now| s.create_volume(&name, labels, now));
            json_status(StatusCode::CREATED, volume_body(&volume))
        }
        Route::ListVolumes => {
            let filters = label_filters(&query);
            let volumes = engine.with_state(|s, _| {
                s.volumes()
                    .filter(|v| state::labels_match(&v.labels, &filters))
                    .map(volume_body)
                    .collect::<Vec<_>>()
            });
            json_status(StatusCode::OK, json!({"Volumes": volumes, "Warnings": []}))
        }
        Route::RemoveVolume(name) => match engine.with_state(|s, _| s.remove_volume(&name)) {
            Ok(()) => empty(StatusCode::NO_CONTENT),
            Err(e) => state_error(e),
        },
    }
}

const SERVER_VERSION: &str = "20.10.24-kiln-sim";

fn version_body() -> Value {
    json!({
        "Version": SERVER_VERSION,
        "ApiVersion": "1.41",
        "MinAPIVersion": "1.12",
        "GitCommit": "kiln-sim",
        "GoVersion": "none",
        "Os": "linux",
        "Arch": "amd64",
        "KernelVersion": "simulated",
        "Components": [{"Name": "Engine", "Version": SERVER_VERSION, "Details": {}}],
    })
}

fn changed(result: Result<Changed, StateError>) -> Response {
    match result {
        Ok(Changed::Yes) => empty(StatusCode::NO_CONTENT),
        Ok(Changed::AlreadyThere) => empty(StatusCode::NOT_MODIFIED),
        Err(e) => state_error(e),
    }
}

fn inspect_body(c: &state::Container, now: SystemTime, delay: Duration) -> Value {
    let health = match c.health(now, delay) {
        HealthNow::None if !c.has_healthcheck => Value::Null,
        HealthNow::None => json!({"Status": "unhealthy", "FailingStreak": 0, "Log": []}),
        HealthNow::Starting => json!({"Status": "starting", "FailingStreak": 0, "Log": []}),
        HealthNow::Healthy => json!({
            "Status": "healthy",
            "FailingStreak": 0,
            "Log": [{"ExitCode": 0, "Output": "simulated healthcheck passed\n"}],
        }),
    };
    let mut state = json!({
        "Status": c.state_word(),
        "Running": c.running,
        "Paused": false,
        "Restarting": false,
        "OOMKilled": false,
        "Dead": false,
        "Pid": if c.running { 4242 } else { 0 },
        "ExitCode": c.exit_code,
        "Error": "",
        "StartedAt": rfc3339(c.started),
        "FinishedAt": rfc3339(c.finished),
    });
    // A stopped container's Health is left out rather than "unhealthy": Docker keeps the last
    // status, which the deployer does not read for stopped containers.
    if !health.is_null() && c.running {
        state["Health"] = health;
    }
    json!({
        "Id": c.id,
        "Name": format!("/{}", c.name),
        "Image": c.image_id,
        "Created": rfc3339(Some(c.created)),
        "State": state,
        "Config": {"Image": c.image, "Labels": c.labels, "Hostname": c.name},
        "Mounts": [],
    })
}

fn volume_body(v: &state::Volume) -> Value {
    json!({
        "Name": v.name,
        "Driver": "local",
        "Mountpoint": format!("/var/lib/docker/volumes/{}/_data", v.name),
        "CreatedAt": rfc3339(Some(v.created)),
        "Labels": v.labels,
        "Scope": "local",
        "Options": {},
    })
}

/// One stdout frame of Docker's multiplexed log stream: stream 1, three zero bytes, length.
fn stdout_frame(payload: &[u8]) -> Body {
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&[1, 0, 0, 0]);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    Body::from(frame)
}

mod civil {
    //! Seconds since the epoch → RFC 3339 UTC.

    pub fn format(epoch_secs: i64, nanos: u32) -> String {
        let days = epoch_secs.div_euclid(86_400);
        let secs = epoch_secs.rem_euclid(86_400);
        let (year, month, day) = crate::civil::from_days(days);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
            secs / 3600,
            secs % 3600 / 60,
            secs % 60
        )
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn known_instants() {
            assert_eq!(super::format(0, 0), "1970-01-01T00:00:00.000000000Z");
            assert_eq!(
                super::format(951_782_400, 5),
                "2000-02-29T00:00:00.000000005Z"
            );
            assert_eq!(
                super::format(1_796_601_599, 0),
                "2026-12-06T23:59:59.000000000Z"
            );
        }
    }
}
