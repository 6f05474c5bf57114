//! The narrow interface the deployer needs from a container engine: list what Kiln manages,
//! create/start/stop/remove, pull, wait, probe, tail logs. `docker` implements it with bollard (unix,
//! TCP, mutual TLS, SSH); `sim` is an in-memory engine for tests and the rack simulator.

pub mod docker;
pub mod sim;
pub mod ssh_tunnel;

use super::plan::Observed;
use super::spec::ContainerSpec;
use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the Docker Engine at {endpoint}: {message}")]
    Unreachable { endpoint: String, message: String },
    #[error("{operation} {target}: {message}")]
    Failed {
        operation: &'static str,
        target: String,
        message: String,
    },
}

impl EngineError {
    pub fn failed(operation: &'static str, target: &str, err: impl std::fmt::Display) -> Self {
        EngineError::Failed {
            operation,
            target: target.to_string(),
            message: err.to_string(),
        }
    }
}

/// What prechecks want to know about an engine.
#[derive(Clone, Debug)]
pub struct EngineInfo {
    pub version: String,
    pub api_version: String,
    /// The engine's clock, seconds since the epoch (for the skew check).
    pub system_time: Option<i64>,
    pub containers_running: i64,
}

/// What one run of a healthcheck command inside a container gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    Passed,
    /// It exited with this non-zero code.
    Failed(i64),
    /// It was still running when the healthcheck's timeout ran out.
    TimedOut,
}

/// Free space under the engine's root directory (images, containers, volumes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskFree {
    /// The engine's `DockerRootDir`, as the engine names it.
    pub root: String,
    pub available_bytes: u64,
}

/// How `Engine::load_archive` got the image onto the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveLoad {
    /// The archive was streamed to the engine, which unpacked it.
    Streamed,
    /// The engine already had the archive's image (same content ID): only tagged.
    AlreadyPresent,
}

#[async_trait]
pub trait Engine: Send + Sync {
    /// For messages.
    fn endpoint(&self) -> String;
    async fn info(&self) -> Result<EngineInfo, EngineError>;
    /// Every container carrying Kiln's managed label, running or not.
    async fn list_managed(&self) -> Result<Vec<Observed>, EngineError>;
    async fn inspect(&self, name: &str) -> Result<Option<Observed>, EngineError>;
    /// The local image ID a reference resolves to, if the image is present.
    async fn image_id(&self, image: &str) -> Result<Option<String>, EngineError>;
    async fn pull(&self, image: &str) -> Result<(), EngineError>;
    /// Loads a `docker save` archive and tags its image as `image` (image distribution without a
    /// registry: the deployer streams the appliance's archive to the engine). An engine that
    /// already holds the archive's image, by content ID (an OS image built with it preloaded),
    /// only tags it.
    async fn load_archive(
        &self,
        archive: &std::path::Path,
        image: &str,
    ) -> Result<ArchiveLoad, EngineError>;
    /// Creates the container (and its labelled named volumes) and uploads its files; does not
    /// start it.
    async fn create(&self, spec: &ContainerSpec) -> Result<(), EngineError>;
    async fn start(&self, name: &str) -> Result<(), EngineError>;
    async fn stop(&self, name: &str) -> Result<(), EngineError>;
    /// Removes the container, killing it if it runs (call `stop` first for a graceful stop);
    /// absent is fine.
    async fn remove(&self, name: &str) -> Result<(), EngineError>;
    /// Waits for the container to exit; its exit code.
    async fn wait(&self, name: &str) -> Result<i64, EngineError>;
    /// Runs `command` (`/bin/sh -c`, as a `CMD-SHELL` healthcheck does) inside the running
    /// container, once: the deployer's startup probe while it waits for a fresh container.
    async fn probe(
        &self,
        name: &str,
        command: &str,
        timeout: std::time::Duration,
    ) -> Result<ProbeOutcome, EngineError>;
    async fn logs_tail(&self, name: &str, lines: usize) -> Result<Vec<String>, EngineError>;
    /// Free space under the engine's root directory, measured with one of `images` that is
    /// already present; `None` when it cannot be measured (no such image yet).
    async fn free_disk(&self, images: &[String]) -> Result<Option<DiskFree>, EngineError>;
    /// Removes every volume carrying Kiln's managed label; their names.
    async fn remove_managed_volumes(&self) -> Result<Vec<String>, EngineError>;
}
