//! The real engine: Docker Engine's API through bollard, over a unix socket, plain TCP, mutual
//! TLS (Kiln's CA) or SSH. Speaks API 1.41 (Docker 20.10, Debian bookworm's `docker.io`), which
//! newer engines still accept.

mod disk_probe;

use super::ssh_tunnel::SshTunnel;
use super::{ArchiveLoad, DiskFree, Engine, EngineError, EngineInfo, ProbeOutcome};
use crate::deployer::hosts::{Endpoint, TlsSource};
use crate::deployer::plan::{Health, Observed, RunState};
use crate::deployer::spec::{ContainerSpec, LABEL_MANAGED};
use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ExecConfig, HealthConfig, HostConfig, ResourcesUlimits, RestartPolicy,
    RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, ListVolumesOptions,
    LogsOptions, RemoveContainerOptions, RemoveVolumeOptions, StopContainerOptions,
    UploadToContainerOptions,
};
use futures::StreamExt;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

const API_VERSION: &bollard::ClientVersion = &bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};
/// Per-request timeout (seconds). One request carries a whole image load (`POST /images/load`),
/// which on a slow node (TCG VMs: ~1.5 MB/s of layer extraction) takes many minutes.
const REQUEST_TIMEOUT_S: u64 = 1800;

pub struct DockerEngine {
    docker: Docker,
    endpoint: String,
    /// Carries bollard's connections to an `ssh://` host; `None` for the other endpoints.
    tunnel: Option<SshTunnel>,
}

impl DockerEngine {
    /// Connects lazily (bollard opens connections per request); `data_dir` holds Kiln's CA for
    /// `tls: kiln` hosts.
    pub fn connect(endpoint: &Endpoint, data_dir: &Path) -> Result<DockerEngine, EngineError> {
        let described = endpoint.describe();
        let unreachable = |err: bollard::errors::Error| EngineError::Unreachable {
            endpoint: described.clone(),
            message: err.to_string(),
        };
        let mut tunnel = None;
        let docker = match endpoint {
            Endpoint::Unix(path) => {
                Docker::connect_with_unix(&path.to_string_lossy(), REQUEST_TIMEOUT_S, API_VERSION)
            }
            Endpoint::Tcp(address) => Docker::connect_with_http(
                &format!("http://{address}"),
                REQUEST_TIMEOUT_S,
                API_VERSION,
            ),
            Endpoint::Tls { address, tls } => {
                let (ca, cert, key) = match tls {
                    TlsSource::Kiln => {
                        let dir = data_dir.join("ca");
                        ensure_deployer_client(&dir).map_err(|message| {
                            EngineError::Unreachable {
                                endpoint: described.clone(),
                                message,
                            }
                        })?;
                        (
                            dir.join(crate::ca::CA_CERT_FILE),
                            dir.join(crate::ca::CLIENT_CERT_FILE),
                            dir.join(crate::ca::CLIENT_KEY_FILE),
                        )
                    }
                    TlsSource::Files { ca, cert, key } => (ca.clone(), cert.clone(), key.clone()),
                };
                for file in [&ca, &cert, &key] {
                    if !file.exists() {
                        return Err(EngineError::Unreachable {
                            endpoint: described,
                            message: format!("TLS file {} does not exist", file.display()),
                        });
                    }
                }
                Docker::connect_with_ssl(
                    &format!("https://{address}"),
                    &key,
                    &cert,
                    &ca,
                    REQUEST_TIMEOUT_S,
                    API_VERSION,
                )
            }
            Endpoint::Ssh { url, key } => {
                let opened = SshTunnel::open(url, key.as_deref(), data_dir).map_err(|message| {
                    EngineError::Unreachable {
                        endpoint: described.clone(),
                        message,
                    }
                })?;
                let socket = opened.socket().to_string_lossy().into_owned();
                tunnel = Some(opened);
                Docker::connect_with_unix(&socket, REQUEST_TIMEOUT_S, API_VERSION)
            }
        }
        .map_err(unreachable)?;
        Ok(DockerEngine {
            docker,
            endpoint: endpoint.describe(),
            tunnel,
        })
    }

    /// Tags `source` (a reference or an image ID) as `image`.
    async fn tag(&self, source: &str, image: &str) -> Result<(), EngineError> {
        let (repo, tag) = split_tag(image);
        let options = bollard::query_parameters::TagImageOptions {
            repo: Some(repo.to_string()),
            tag: Some(tag.to_string()),
        };
        self.docker
            .tag_image(source, Some(options))
            .await
            .map_err(|e| self.unreachable_or("tag", image, e))
    }

    fn unreachable_or(
        &self,
        operation: &'static str,
        target: &str,
        err: bollard::errors::Error,
    ) -> EngineError {
        match err {
            bollard::errors::Error::HyperResponseError { .. }
            | bollard::errors::Error::HyperLegacyError { .. }
            | bollard::errors::Error::IOError { .. }
            | bollard::errors::Error::RequestTimeoutError => EngineError::Unreachable {
                endpoint: self.endpoint.clone(),
                message: self.with_ssh_reason(err.to_string()),
            },
            other => EngineError::failed(operation, target, other),
        }
    }
}

impl DockerEngine {
    /// An SSH host's failures surface to bollard as a closed connection; ssh's own words say why.
    fn with_ssh_reason(&self, message: String) -> String {
        match self.tunnel.as_ref().and_then(SshTunnel::last_error) {
            Some(reason) => format!("{reason} ({message})"),
            None => message,
        }
    }
}

/// Kiln's CA must exist (it issued the nodes' server certificates); the deployer's client
/// certificate is (re)issued from it when absent or near expiry.
fn ensure_deployer_client(dir: &Path) -> Result<(), String> {
    if !dir.join(crate::ca::CA_CERT_FILE).exists() {
        return Err(format!(
            "Kiln's CA is not in {} (set --data-dir to the appliance's data directory)",
            dir.display()
        ));
    }
    crate::ca::CertificateAuthority::load_or_create(dir)
        .and_then(|ca| ca.deployer_client())
        .map(|_| ())
        .map_err(|err| format!("Kiln's CA in {}: {err}", dir.display()))
}

/// What a `docker save` archive's manifest.json says about its (first) image.
#[derive(Debug, Default, PartialEq)]
struct ArchiveManifest {
    /// The image's content ID ("sha256:…"), from its config blob's name.
    image_id: Option<String>,
    tags: Vec<String>,
}

fn archive_manifest(archive: &Path) -> std::io::Result<ArchiveManifest> {
    let file = std::fs::File::open(archive)?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    for entry in tar.entries()? {
        let mut entry = entry?;
        if entry.path()?.to_str() == Some("manifest.json") {
            let manifest: Vec<serde_json::Value> = serde_json::from_reader(&mut entry)?;
            return Ok(ArchiveManifest {
                image_id: manifest
                    .first()
                    .and_then(|m| m["Config"].as_str())
                    .and_then(image_id_of_config),
                tags: manifest
                    .iter()
                    .flat_map(|m| m["RepoTags"].as_array().cloned().unwrap_or_default())
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect(),
            });
        }
    }
    Ok(ArchiveManifest::default())
}

/// A manifest's `Config` ("HEX.json" from Docker 20.10, "blobs/sha256/HEX" from newer engines)
/// → the image ID "sha256:HEX".
fn image_id_of_config(config: &str) -> Option<String> {
    let name = config.rsplit('/').next()?;
    let hex = name.strip_suffix(".json").unwrap_or(name);
    let is_digest = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    is_digest.then(|| format!("sha256:{hex}"))
}

/// "reg:5000/kolla/keystone:tag" → "kolla/keystone:tag" (the part after the registry host).
fn image_path(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => rest,
        _ => image,
    }
}

/// "reg:5000/kolla/keystone:tag" → ("reg:5000/kolla/keystone", "tag").
fn split_tag(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

fn managed_filter() -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![format!("{LABEL_MANAGED}=true")])])
}

fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

#[async_trait]
impl Engine for DockerEngine {
    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    async fn info(&self) -> Result<EngineInfo, EngineError> {
        let version = self
            .docker
            .version()
            .await
            .map_err(|e| self.unreachable_or("version", "engine", e))?;
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| self.unreachable_or("info", "engine", e))?;
        let system_time = info.system_time.as_deref().and_then(chrono_like_epoch);
        Ok(EngineInfo {
            version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            system_time,
            containers_running: info.containers_running.unwrap_or(0),
        })
    }

    async fn list_managed(&self) -> Result<Vec<Observed>, EngineError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(managed_filter()),
            ..Default::default()
        };
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.unreachable_or("list containers", "engine", e))?;
        Ok(list
            .into_iter()
            .map(|c| {
                let name = c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string();
                let (state, health) = parse_status(c.status.as_deref().unwrap_or(""));
                Observed {
                    name,
                    id: c.id.unwrap_or_default(),
                    hash: c
                        .labels
                        .and_then(|l| l.get(crate::deployer::spec::LABEL_HASH).cloned()),
                    image_id: c.image_id.unwrap_or_default(),
                    state,
                    health,
                    health_output: None,
                }
            })
            .collect())
    }

    async fn inspect(&self, name: &str) -> Result<Option<Observed>, EngineError> {
        let inspect = match self.docker.inspect_container(name, None).await {
            Ok(inspect) => inspect,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.unreachable_or("inspect", name, e)),
        };
        let state = inspect.state.unwrap_or_default();
        let run_state = if state.restarting == Some(true) {
            RunState::Restarting
        } else if state.running == Some(true) {
            RunState::Running
        } else {
            let started = state
                .started_at
                .as_deref()
                .is_some_and(|s| !s.starts_with("0001"));
            RunState::Stopped(if started { state.exit_code } else { None })
        };
        use bollard::models::HealthStatusEnum as H;
        let health_output = state
            .health
            .as_ref()
            .and_then(|h| h.log.as_ref())
            .and_then(|log| log.last())
            .and_then(|entry| entry.output.clone());
        let health = match state.health.and_then(|h| h.status) {
            Some(H::HEALTHY) => Health::Healthy,
            Some(H::UNHEALTHY) => Health::Unhealthy,
            Some(H::STARTING) => Health::Starting,
            _ => Health::None,
        };
        Ok(Some(Observed {
            name: name.to_string(),
            id: inspect.id.unwrap_or_default(),
            hash: inspect
                .config
                .and_then(|c| c.labels)
                .and_then(|l| l.get(crate::deployer::spec::LABEL_HASH).cloned()),
            image_id: inspect.image.unwrap_or_default(),
            state: run_state,
            health,
            health_output,
        }))
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(inspect) => Ok(inspect.id),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.unreachable_or("inspect image", image, e)),
        }
    }

    async fn pull(&self, image: &str) -> Result<(), EngineError> {
        let options = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(options), None, None);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| self.unreachable_or("pull", image, e))?;
            if let Some(error) = info.error_detail.and_then(|d| d.message) {
                return Err(EngineError::failed("pull", image, error));
            }
        }
        Ok(())
    }

    async fn load_archive(&self, archive: &Path, image: &str) -> Result<ArchiveLoad, EngineError> {
        let manifest =
            archive_manifest(archive).map_err(|e| EngineError::failed("read archive", image, e))?;
        if let Some(id) = &manifest.image_id
            && self.image_id(id).await?.is_some()
        {
            self.tag(id, image).await?;
            return Ok(ArchiveLoad::AlreadyPresent);
        }
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| EngineError::failed("open archive", image, e))?;
        let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
        let options = bollard::query_parameters::ImportImageOptions {
            quiet: true,
            ..Default::default()
        };
        let mut stream = self.docker.import_image_stream(options, body, None);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| self.unreachable_or("load", image, e))?;
            if let Some(error) = info.error_detail.and_then(|d| d.message) {
                return Err(EngineError::failed("load", image, error));
            }
        }
        if self.image_id(image).await?.is_some() {
            return Ok(ArchiveLoad::Streamed);
        }
        // The archive names the image without our registry: tag the one whose path matches.
        let wanted = image_path(image);
        let source = manifest
            .tags
            .iter()
            .find(|t| image_path(t) == wanted)
            .or(manifest.tags.first())
            .or(manifest.image_id.as_ref())
            .ok_or_else(|| EngineError::failed("load", image, "the archive has no tagged image"))?;
        self.tag(source, image).await?;
        Ok(ArchiveLoad::Streamed)
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<(), EngineError> {
        for volume in spec.named_volumes() {
            let request = VolumeCreateRequest {
                name: Some(volume.clone()),
                labels: Some(HashMap::from([(
                    LABEL_MANAGED.to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            };
            self.docker
                .create_volume(request)
                .await
                .map_err(|e| self.unreachable_or("create volume", &volume, e))?;
        }
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        self.docker
            .create_container(Some(options), container_body(spec))
            .await
            .map_err(|e| self.unreachable_or("create", &spec.name, e))?;
        if !spec.files.is_empty() {
            let tar = files_tar(spec).map_err(|e| EngineError::failed("archive", &spec.name, e))?;
            let options = UploadToContainerOptions {
                path: "/".to_string(),
                ..Default::default()
            };
            self.docker
                .upload_to_container(&spec.name, Some(options), bollard::body_full(tar.into()))
                .await
                .map_err(|e| self.unreachable_or("upload config to", &spec.name, e))?;
        }
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), EngineError> {
        self.docker
            .start_container(name, None)
            .await
            .map_err(|e| self.unreachable_or("start", name, e))
    }

    async fn stop(&self, name: &str) -> Result<(), EngineError> {
        // No `t`: the container's own StopTimeout (the catalog's stop_timeout) applies.
        let options = StopContainerOptions::default();
        match self.docker.stop_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.unreachable_or("stop", name, e)),
        }
    }

    async fn remove(&self, name: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.unreachable_or("remove", name, e)),
        }
    }

    async fn wait(&self, name: &str) -> Result<i64, EngineError> {
        loop {
            match self.inspect(name).await? {
                None => {
                    return Err(EngineError::failed(
                        "wait for",
                        name,
                        "the container vanished",
                    ));
                }
                Some(Observed {
                    state: RunState::Stopped(Some(code)),
                    ..
                }) => return Ok(code),
                Some(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }

    async fn probe(
        &self,
        name: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<ProbeOutcome, EngineError> {
        // Detached, then polled: the outcome is the exit code, the output is not needed (a
        // failing service's reason comes from Docker's own healthcheck log).
        let config = ExecConfig {
            cmd: Some(vec!["/bin/sh".into(), "-c".into(), command.into()]),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(name, config)
            .await
            .map_err(|e| self.unreachable_or("probe", name, e))?;
        let start = bollard::exec::StartExecOptions {
            detach: true,
            ..Default::default()
        };
        self.docker
            .start_exec(&exec.id, Some(start))
            .await
            .map_err(|e| self.unreachable_or("probe", name, e))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let inspect = self
                .docker
                .inspect_exec(&exec.id)
                .await
                .map_err(|e| self.unreachable_or("probe", name, e))?;
            // No exit code while it runs, or before the engine has started it.
            match (inspect.running, inspect.exit_code) {
                (Some(true), _) | (_, None) => {}
                (_, Some(0)) => return Ok(ProbeOutcome::Passed),
                (_, Some(code)) => return Ok(ProbeOutcome::Failed(code)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(ProbeOutcome::TimedOut);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn logs_tail(&self, name: &str, lines: usize) -> Result<Vec<String>, EngineError> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let mut stream = self.docker.logs(name, Some(options));
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => out.extend(
                    String::from_utf8_lossy(&chunk.into_bytes())
                        .lines()
                        .map(str::to_string),
                ),
                Err(e) => return Err(self.unreachable_or("logs of", name, e)),
            }
        }
        let skip = out.len().saturating_sub(lines);
        Ok(out.split_off(skip))
    }

    async fn free_disk(&self, images: &[String]) -> Result<Option<DiskFree>, EngineError> {
        self.probe_free_disk(images).await
    }

    async fn remove_managed_volumes(&self) -> Result<Vec<String>, EngineError> {
        let options = ListVolumesOptions {
            filters: Some(managed_filter()),
        };
        let list = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(|e| self.unreachable_or("list volumes", "engine", e))?;
        let mut removed = Vec::new();
        for volume in list.volumes.unwrap_or_default() {
            let options = RemoveVolumeOptions { force: true };
            self.docker
                .remove_volume(&volume.name, Some(options))
                .await
                .map_err(|e| self.unreachable_or("remove volume", &volume.name, e))?;
            removed.push(volume.name);
        }
        Ok(removed)
    }
}

fn container_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let healthcheck = spec.healthcheck.as_ref().map(|h| HealthConfig {
        test: Some(vec!["CMD-SHELL".to_string(), h.test.clone()]),
        interval: Some(secs_to_ns(h.interval_s)),
        timeout: Some(secs_to_ns(h.timeout_s)),
        retries: Some(h.retries as i64),
        start_period: Some(secs_to_ns(h.start_period_s)),
        ..Default::default()
    });
    let restart = match spec.restart.as_str() {
        "always" => RestartPolicyNameEnum::ALWAYS,
        "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
        "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
        _ => RestartPolicyNameEnum::NO,
    };
    let ulimits = spec
        .ulimits
        .iter()
        .map(|(name, value)| ResourcesUlimits {
            name: Some(name.clone()),
            soft: Some(*value),
            hard: Some(*value),
        })
        .collect::<Vec<_>>();
    let host_config = HostConfig {
        binds: Some(spec.volumes.clone()),
        network_mode: Some(if spec.network_host { "host" } else { "bridge" }.to_string()),
        cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
        privileged: Some(spec.privileged),
        ulimits: (!ulimits.is_empty()).then_some(ulimits),
        restart_policy: Some(RestartPolicy {
            name: Some(restart),
            maximum_retry_count: None,
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.cmd.clone(),
        env: Some(
            spec.environment
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
        labels: Some(spec.labels().into_iter().collect()),
        healthcheck,
        stop_timeout: Some(spec.stop_timeout_s as i64),
        host_config: Some(host_config),
        ..Default::default()
    }
}

fn secs_to_ns(secs: u64) -> i64 {
    (secs as i64).saturating_mul(1_000_000_000)
}

/// The container's files as one tar (paths relative to `/`), root-owned with their modes.
pub fn files_tar(spec: &ContainerSpec) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for file in &spec.files {
        let mut header = tar::Header::new_gnu();
        header.set_size(file.content.len() as u64);
        header.set_mode(file.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(
            &mut header,
            file.path.trim_start_matches('/'),
            file.content.as_bytes(),
        )?;
    }
    builder.into_inner()
}

/// `docker ps` status text → state and health ("Up 3 minutes (healthy)", "Exited (1) 2 s ago").
pub fn parse_status(status: &str) -> (RunState, Health) {
    let health = if status.contains("(healthy)") {
        Health::Healthy
    } else if status.contains("(unhealthy)") {
        Health::Unhealthy
    } else if status.contains("(health: starting)") {
        Health::Starting
    } else {
        Health::None
    };
    let state = if status.starts_with("Up") {
        RunState::Running
    } else if status.starts_with("Restarting") {
        RunState::Restarting
    } else if let Some(rest) = status.strip_prefix("Exited (") {
        RunState::Stopped(rest.split(')').next().and_then(|c| c.parse().ok()))
    } else {
        RunState::Stopped(None)
    };
    (state, health)
}

/// RFC 3339 → seconds since the epoch, without pulling in a date crate: only the fields the
/// skew check needs (UTC "Z" or an offset; fractions ignored).
fn chrono_like_epoch(text: &str) -> Option<i64> {
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let clock = &time[..8.min(time.len())];
    let mut t = clock.split(':').map(|p| p.parse::<i64>());
    let (h, min, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let rest = &time[8.min(time.len())..];
    let offset = rest
        .find(['+', '-'])
        .map(|i| {
            let sign = if rest[i..].starts_with('-') { -1 } else { 1 };
            let mut parts = rest[i + 1..]
                .split(':')
                .map(|p| p.parse::<i64>().unwrap_or(0));
            sign * (parts.next().unwrap_or(0) * 3600 + parts.next().unwrap_or(0) * 60)
        })
        .unwrap_or(0);
    let days = crate::civil::to_days(y, m, day);
    Some(days * 86400 + h * 3600 + min * 60 + s - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_strings() {
        assert_eq!(
            parse_status("Up 3 minutes (healthy)"),
            (RunState::Running, Health::Healthy)
        );
        assert_eq!(
            parse_status("Up 1 second (health: starting)"),
            (RunState::Running, Health::Starting)
        );
        assert_eq!(
            parse_status("Up 2 hours (unhealthy)"),
            (RunState::Running, Health::Unhealthy)
        );
        assert_eq!(
            parse_status("Up 2 hours"),
            (RunState::Running, Health::None)
        );
        assert_eq!(
            parse_status("Exited (137) 5 seconds ago"),
            (RunState::Stopped(Some(137)), Health::None)
        );
        assert_eq!(
            parse_status("Created"),
            (RunState::Stopped(None), Health::None)
        );
        assert_eq!(
            parse_status("Restarting (1) 2 seconds ago").0,
            RunState::Restarting
        );
    }

    #[test]
    fn image_ids_come_from_the_config_blob_name() {
        let hex = "717e5be68bd3c2de023b7674ee1daf31c464165637165d2c4ba661abba9ea96e";
        let id = Some(format!("sha256:{hex}"));
        assert_eq!(image_id_of_config(&format!("{hex}.json")), id);
        assert_eq!(image_id_of_config(&format!("blobs/sha256/{hex}")), id);
        assert_eq!(image_id_of_config("config.json"), None);
        assert_eq!(image_id_of_config(&format!("{}.json", &hex[1..])), None);
        assert_eq!(
            image_id_of_config(&format!("{}.json", hex.to_uppercase())),
            None
        );
        assert_eq!(image_id_of_config(""), None);
    }

    #[test]
    fn an_archive_manifest_gives_the_image_id_and_tags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memcached.tar");
        let hex = "ab".repeat(32);
        let manifest = format!(
            r#"[{{"Config":"{hex}.json","RepoTags":["kolla/memcached:zed"],"Layers":["l/layer.tar"]}}]"#
        );
        let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_size(manifest.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "manifest.json", manifest.as_bytes())
            .unwrap();
        builder.finish().unwrap();
        assert_eq!(
            archive_manifest(&path).unwrap(),
            ArchiveManifest {
                image_id: Some(format!("sha256:{hex}")),
                tags: vec!["kolla/memcached:zed".to_string()],
            }
        );
    }

    #[test]
    fn image_names() {
        assert_eq!(
            image_path("10.0.0.1:5000/kolla/keystone:z"),
            "kolla/keystone:z"
        );
        assert_eq!(image_path("localhost/kolla/keystone:z"), "kolla/keystone:z");
        assert_eq!(image_path("kolla/keystone:z"), "kolla/keystone:z");
        assert_eq!(
            split_tag("10.0.0.1:5000/kolla/keystone:z"),
            ("10.0.0.1:5000/kolla/keystone", "z")
        );
        assert_eq!(
            split_tag("10.0.0.1:5000/kolla/keystone"),
            ("10.0.0.1:5000/kolla/keystone", "latest")
        );
    }

    #[test]
    fn epoch_parsing() {
        assert_eq!(chrono_like_epoch("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            chrono_like_epoch("2026-11-25T07:00:00.123456789Z"),
            Some(1795590000)
        );
        assert_eq!(
            chrono_like_epoch("2026-11-25T08:00:00+01:00"),
            Some(1795590000)
        );
        assert_eq!(chrono_like_epoch("garbage"), None);
    }

    #[test]
    fn tar_holds_files_with_modes() {
        let spec = crate::deployer::spec::sample("c");
        let bytes = files_tar(&spec).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("etc/a.conf"));
        assert_eq!(entry.header().mode().unwrap(), 0o600);
    }
}
