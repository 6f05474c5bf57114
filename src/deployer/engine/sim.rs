//! An in-memory Docker Engine: containers are records, pulls and starts are instant, health is
//! whatever the test says. For the executor's unit tests and the rack simulator, never as the
//! evidence that deploying onto real Docker works (tests/services_*.rs use real dockerd).

use super::{ArchiveLoad, DiskFree, Engine, EngineError, EngineInfo, ProbeOutcome};
use crate::deployer::plan::{Health, Observed, RunState};
use crate::deployer::spec::{ContainerSpec, Kind};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

#[derive(Default)]
pub struct SimEngine {
    name: String,
    state: Mutex<SimState>,
}

#[derive(Default)]
struct SimState {
    containers: BTreeMap<String, SimContainer>,
    images: BTreeMap<String, String>,
    volumes: BTreeSet<String>,
    /// Containers (by name) whose healthcheck fails, and bootstraps that exit non-zero.
    failing: BTreeSet<String>,
    next_id: u64,
    /// Free bytes reported by `free_disk` (`None`: plenty, 100 GiB).
    free_disk: Option<u64>,
    /// Docker's own healthcheck has not run yet on a started container (health stays
    /// "starting", as with a long interval); only the deployer's probe can tell it is up.
    health_lags: bool,
    /// Every mutating call and every probe, in order: for assertions on what the executor did.
    calls: Vec<String>,
}

#[derive(Clone)]
struct SimContainer {
    observed: Observed,
    has_healthcheck: bool,
    kind: Kind,
}

impl SimEngine {
    pub fn new(name: &str) -> SimEngine {
        SimEngine {
            name: name.to_string(),
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the named container unhealthy (service) or exit 1 (bootstrap).
    pub fn fail(&self, container: &str) {
        self.lock().failing.insert(container.to_string());
    }

    /// From now on, started services stay "health: starting" (see `SimState::health_lags`).
    pub fn lag_health(&self) {
        self.lock().health_lags = true;
    }

    /// What `free_disk` reports from now on.
    pub fn set_free_disk(&self, bytes: u64) {
        self.lock().free_disk = Some(bytes);
    }

    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    pub fn container_ids(&self) -> BTreeMap<String, String> {
        self.lock()
            .containers
            .iter()
            .map(|(name, c)| (name.clone(), c.observed.id.clone()))
            .collect()
    }

    pub fn volumes(&self) -> BTreeSet<String> {
        self.lock().volumes.clone()
    }
}

#[async_trait]
impl Engine for SimEngine {
    fn endpoint(&self) -> String {
        format!("sim://{}", self.name)
    }

    async fn info(&self) -> Result<EngineInfo, EngineError> {
        let running = self
            .lock()
            .containers
            .values()
            .filter(|c| c.observed.state == RunState::Running)
            .count();
        Ok(EngineInfo {
            version: "20.10.24-sim".into(),
            api_version: "1.41".into(),
            system_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs() as i64),
            containers_running: running as i64,
        })
    }

    async fn list_managed(&self) -> Result<Vec<Observed>, EngineError> {
        Ok(self
            .lock()
            .containers
            .values()
            .map(|c| c.observed.clone())
            .collect())
    }

    async fn inspect(&self, name: &str) -> Result<Option<Observed>, EngineError> {
        Ok(self.lock().containers.get(name).map(|c| c.observed.clone()))
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, EngineError> {
        Ok(self.lock().images.get(image).cloned())
    }

    async fn pull(&self, image: &str) -> Result<(), EngineError> {
        let mut state = self.lock();
        state.calls.push(format!("pull {image}"));
        let id = format!("sha256:{}", crate::deployer::spec::short_digest(image));
        state.images.insert(image.to_string(), id);
        Ok(())
    }

    async fn load_archive(
        &self,
        archive: &std::path::Path,
        image: &str,
    ) -> Result<ArchiveLoad, EngineError> {
        if !archive.exists() {
            return Err(EngineError::failed("load", image, "no such archive"));
        }
        let mut state = self.lock();
        state.calls.push(format!("load {image}"));
        let id = format!("sha256:{}", crate::deployer::spec::short_digest(image));
        state.images.insert(image.to_string(), id);
        Ok(ArchiveLoad::Streamed)
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<(), EngineError> {
        let mut state = self.lock();
        if state.containers.contains_key(&spec.name) {
            return Err(EngineError::failed("create", &spec.name, "name in use"));
        }
        let Some(image_id) = state.images.get(&spec.image).cloned() else {
            return Err(EngineError::failed("create", &spec.name, "no such image"));
        };
        state.next_id += 1;
        let id = format!("{:012x}", state.next_id);
        for volume in spec.named_volumes() {
            state.volumes.insert(volume);
        }
        state.calls.push(format!("create {}", spec.name));
        state.containers.insert(
            spec.name.clone(),
            SimContainer {
                observed: Observed {
                    name: spec.name.clone(),
                    id,
                    hash: Some(spec.hash()),
                    image_id,
                    state: RunState::Stopped(None),
                    health: Health::None,
                    health_output: None,
                },
                has_healthcheck: spec.healthcheck.is_some(),
                kind: spec.kind,
            },
        );
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), EngineError> {
        let mut state = self.lock();
        let failing = state.failing.contains(name);
        let lags = state.health_lags;
        state.calls.push(format!("start {name}"));
        let container = state
            .containers
            .get_mut(name)
            .ok_or_else(|| EngineError::failed("start", name, "no such container"))?;
        match container.kind {
            Kind::Bootstrap => {
                container.observed.state = RunState::Stopped(Some(if failing { 1 } else { 0 }));
            }
            Kind::Service => {
                container.observed.state = RunState::Running;
                container.observed.health = match (container.has_healthcheck, failing, lags) {
                    (false, _, _) => Health::None,
                    (true, _, true) => Health::Starting,
                    (true, false, false) => Health::Healthy,
                    (true, true, false) => Health::Unhealthy,
                };
            }
        }
        Ok(())
    }

    async fn stop(&self, name: &str) -> Result<(), EngineError> {
        let mut state = self.lock();
        state.calls.push(format!("stop {name}"));
        if let Some(container) = state.containers.get_mut(name)
            && container.observed.state == RunState::Running
        {
            container.observed.state = RunState::Stopped(Some(0));
        }
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<(), EngineError> {
        let mut state = self.lock();
        state.calls.push(format!("remove {name}"));
        state.containers.remove(name);
        Ok(())
    }

    async fn wait(&self, name: &str) -> Result<i64, EngineError> {
        match self.lock().containers.get(name).map(|c| c.observed.state) {
            Some(RunState::Stopped(Some(code))) => Ok(code),
            Some(_) => Ok(0),
            None => Err(EngineError::failed("wait for", name, "no such container")),
        }
    }

    /// Passes on a running container unless it was told to fail.
    async fn probe(
        &self,
        name: &str,
        _command: &str,
        _timeout: std::time::Duration,
    ) -> Result<ProbeOutcome, EngineError> {
        let mut state = self.lock();
        state.calls.push(format!("probe {name}"));
        match state.containers.get(name).map(|c| c.observed.state) {
            Some(RunState::Running) if state.failing.contains(name) => Ok(ProbeOutcome::Failed(1)),
            Some(RunState::Running) => Ok(ProbeOutcome::Passed),
            Some(_) => Err(EngineError::failed(
                "probe",
                name,
                "the container is not running",
            )),
            None => Err(EngineError::failed("probe", name, "no such container")),
        }
    }

    async fn logs_tail(&self, name: &str, _lines: usize) -> Result<Vec<String>, EngineError> {
        let failing = self.lock().failing.contains(name);
        Ok(if failing {
            vec![format!("{name}: simulated failure")]
        } else {
            Vec::new()
        })
    }

    /// Like the real engine, measurable only once one of the images is present.
    async fn free_disk(&self, images: &[String]) -> Result<Option<DiskFree>, EngineError> {
        let state = self.lock();
        if !images.iter().any(|i| state.images.contains_key(i)) {
            return Ok(None);
        }
        Ok(Some(DiskFree {
            root: "/var/lib/docker".into(),
            available_bytes: state.free_disk.unwrap_or(100 << 30),
        }))
    }

    async fn remove_managed_volumes(&self) -> Result<Vec<String>, EngineError> {
        let mut state = self.lock();
        let volumes = std::mem::take(&mut state.volumes);
        Ok(volumes.into_iter().collect())
    }
}
