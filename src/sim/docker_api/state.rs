//! The simulated engine's state and every decision about it, as pure functions of the state and
//! the time: which container a name means, what `start` on a running container answers, when a
//! healthcheck turns healthy and a bootstrap container exits, the status texts `docker ps` shows.

use sha2::Digest;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// The label that tells a one-shot bootstrap container (it exits 0 once its work is "done").
const LABEL_KIND: &str = crate::deployer::spec::LABEL_KIND;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateError {
    NoSuchContainer(String),
    NoSuchImage(String),
    NoSuchVolume(String),
    NoSuchExec(String),
    NameInUse(String),
    /// Removing a running container without `force`, or a volume a container uses.
    Conflict(String),
}

impl StateError {
    pub fn status(&self) -> u16 {
        match self {
            StateError::NoSuchContainer(_)
            | StateError::NoSuchImage(_)
            | StateError::NoSuchVolume(_)
            | StateError::NoSuchExec(_) => 404,
            StateError::NameInUse(_) | StateError::Conflict(_) => 409,
        }
    }

    /// The text Docker Engine puts in `{"message": …}`.
    pub fn message(&self) -> String {
        match self {
            StateError::NoSuchContainer(n) => format!("No such container: {n}"),
            StateError::NoSuchImage(n) => format!("No such image: {n}"),
            StateError::NoSuchVolume(n) => format!("get {n}: no such volume"),
            StateError::NoSuchExec(id) => format!("No such exec instance: {id}"),
            StateError::NameInUse(n) => {
                format!("Conflict. The container name \"/{n}\" is already in use")
            }
            StateError::Conflict(m) => m.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// The reference it was created from, and the image ID that resolved to then.
    pub image: String,
    pub image_id: String,
    pub labels: BTreeMap<String, String>,
    pub has_healthcheck: bool,
    pub bootstrap: bool,
    pub created: SystemTime,
    pub started: Option<SystemTime>,
    pub finished: Option<SystemTime>,
    pub running: bool,
    pub exit_code: i64,
    /// Paths uploaded into it (`PUT /containers/{name}/archive`).
    pub files: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Volume {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
}

/// What a `start`/`stop` did: Docker answers 304 when there was nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    Yes,
    AlreadyThere,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthNow {
    None,
    Starting,
    Healthy,
}

#[derive(Debug, Default)]
pub struct EngineState {
    containers: BTreeMap<String, Container>,
    /// Normalized reference → image ID.
    images: BTreeMap<String, String>,
    volumes: BTreeMap<String, Volume>,
    /// Exec ID → the container it runs in (the deployer's startup probes).
    execs: BTreeMap<String, String>,
    next_id: u64,
}

/// `name` → `name:latest`; a reference with a tag or digest stays as it is.
pub fn normalize_reference(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if last.contains(':') || last.contains('@') {
        reference.to_string()
    } else {
        format!("{reference}:latest")
    }
}

/// A stable image ID for a pulled reference (the same reference gets the same ID on every node,
/// as a registry's image would).
pub fn image_id_for(reference: &str) -> String {
    let digest = sha2::Sha256::digest(normalize_reference(reference).as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// `label` filters of the form `key=value` or `key` (Docker's `filters={"label":[…]}`).
pub fn labels_match(labels: &BTreeMap<String, String>, filters: &[String]) -> bool {
    filters.iter().all(|f| match f.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => labels.contains_key(f.as_str()),
    })
}

fn seconds_between(earlier: SystemTime, later: SystemTime) -> u64 {
    later
        .duration_since(earlier)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Docker's human durations as `docker ps` prints them ("3 seconds", "About a minute", …).
pub fn human_duration(secs: u64) -> String {
    match secs {
        0 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".to_string(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".to_string(),
        s => format!("{} hours", s / 3600),
    }
}

impl Container {
    pub fn health(&self, now: SystemTime, health_delay: Duration) -> HealthNow {
        if !self.has_healthcheck || !self.running {
            return HealthNow::None;
        }
        match self.started {
            Some(started) if now >= started + health_delay => HealthNow::Healthy,
            _ => HealthNow::Starting,
        }
    }

    /// `docker ps`'s STATUS column.
    pub fn status_text(&self, now: SystemTime, health_delay: Duration) -> String {
        if self.running {
            let up = human_duration(seconds_between(self.started.unwrap_or(now), now));
            match self.health(now, health_delay) {
                HealthNow::None => format!("Up {up}"),
                HealthNow::Starting => format!("Up {up} (health: starting)"),
                HealthNow::Healthy => format!("Up {up} (healthy)"),
            }
        } else if let Some(finished) = self.finished {
            let ago = human_duration(seconds_between(finished, now));
            format!("Exited ({}) {ago} ago", self.exit_code)
        } else {
            "Created".to_string()
        }
    }

    /// Docker's `State.Status`.
    pub fn state_word(&self) -> &'static str {
        if self.running {
            "running"
        } else if self.finished.is_some() {
            "exited"
        } else {
            "created"
        }
    }
}

impl EngineState {
    fn new_id(&mut self, seed: &str) -> String {
        self.next_id += 1;
        let digest = sha2::Sha256::digest(format!("{seed}/{}", self.next_id).as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Lets time act: bootstrap containers that have run for `health_delay` exit 0.
    pub fn settle(&mut self, now: SystemTime, health_delay: Duration) {
        for c in self.containers.values_mut() {
            if let (true, true, Some(started)) = (c.bootstrap, c.running, c.started)
                && now >= started + health_delay
            {
                c.running = false;
                c.exit_code = 0;
                c.finished = Some(started + health_delay);
            }
        }
    }

    /// A container by name (with or without the leading `/`), full ID or unique ID prefix.
    pub fn container(&self, key: &str) -> Result<&Container, StateError> {
        let key = key.trim_start_matches('/');
        if let Some(c) = self.containers.get(key) {
            return Ok(c);
        }
        let mut by_id = self
            .containers
            .values()
            .filter(|c| key.len() >= 4 && c.id.starts_with(key));
        match (by_id.next(), by_id.next()) {
            (Some(c), None) => Ok(c),
            _ => Err(StateError::NoSuchContainer(key.to_string())),
        }
    }

    fn container_mut(&mut self, key: &str) -> Result<&mut Container, StateError> {
        let name = self.container(key)?.name.clone();
        self.containers
            .get_mut(&name)
            .ok_or(StateError::NoSuchContainer(name))
    }

    pub fn containers(&self) -> impl Iterator<Item = &Container> {
        self.containers.values()
    }

    /// An exec in a running container (Docker answers 409 for a stopped one).
    pub fn create_exec(&mut self, key: &str) -> Result<String, StateError> {
        let container = self.container(key)?;
        if !container.running {
            return Err(StateError::Conflict(format!(
                "Container {} is not running",
                container.id
            )));
        }
        let name = container.name.clone();
        let id = self.new_id(&format!("exec/{name}"));
        self.execs.insert(id.clone(), name);
        Ok(id)
    }

    /// A probe's exit code, decided when it is asked for: 0 once the container is healthy (or
    /// runs without a healthcheck), 1 before; `NoSuchExec` for an unknown ID.
    pub fn exec_exit_code(
        &self,
        id: &str,
        now: SystemTime,
        health_delay: Duration,
    ) -> Result<i64, StateError> {
        let name = self
            .execs
            .get(id)
            .ok_or_else(|| StateError::NoSuchExec(id.to_string()))?;
        let container = self.container(name)?;
        Ok(match container.health(now, health_delay) {
            HealthNow::Healthy => 0,
            HealthNow::None if container.running => 0,
            HealthNow::None | HealthNow::Starting => 1,
        })
    }

    pub fn running_count(&self) -> usize {
        self.containers.values().filter(|c| c.running).count()
    }

    pub fn image_count(&self) -> usize {
        self.images.len()
    }

    /// An image by reference or by ID.
    pub fn image(&self, key: &str) -> Result<String, StateError> {
        if let Some(id) = self.images.get(&normalize_reference(key)) {
            return Ok(id.clone());
        }
        let bare = key.trim_start_matches("sha256:");
        self.images
            .values()
            .find(|id| bare.len() >= 12 && id.trim_start_matches("sha256:").starts_with(bare))
            .cloned()
            .ok_or_else(|| StateError::NoSuchImage(key.to_string()))
    }

    pub fn add_image(&mut self, reference: &str, id: &str) {
        self.images
            .insert(normalize_reference(reference), id.to_string());
    }

    pub fn tag(&mut self, source: &str, target: &str) -> Result<(), StateError> {
        let id = self.image(source)?;
        self.add_image(target, &id);
        Ok(())
    }

    pub fn create(&mut self, req: CreateRequest, now: SystemTime) -> Result<String, StateError> {
        if self.containers.contains_key(&req.name) {
            return Err(StateError::NameInUse(req.name));
        }
        let image_id = self.image(&req.image)?;
        let id = self.new_id(&req.name);
        let bootstrap = req.labels.get(LABEL_KIND).is_some_and(|k| k == "bootstrap");
        let container = Container {
            id: id.clone(),
            name: req.name.clone(),
            image: req.image,
            image_id,
            labels: req.labels,
            has_healthcheck: req.has_healthcheck,
            bootstrap,
            created: now,
            started: None,
            finished: None,
            running: false,
            exit_code: 0,
            files: Vec::new(),
        };
        self.containers.insert(req.name, container);
        Ok(id)
    }

    pub fn upload(&mut self, key: &str, paths: Vec<String>) -> Result<(), StateError> {
        self.container_mut(key)?.files.extend(paths);
        Ok(())
    }

    pub fn start(&mut self, key: &str, now: SystemTime) -> Result<Changed, StateError> {
        let c = self.container_mut(key)?;
        if c.running {
            return Ok(Changed::AlreadyThere);
        }
        c.running = true;
        c.started = Some(now);
        c.finished = None;
        c.exit_code = 0;
        Ok(Changed::Yes)
    }

    /// A graceful stop: the simulated process exits 0 on SIGTERM.
    pub fn stop(&mut self, key: &str, now: SystemTime) -> Result<Changed, StateError> {
        let c = self.container_mut(key)?;
        if !c.running {
            return Ok(Changed::AlreadyThere);
        }
        c.running = false;
        c.exit_code = 0;
        c.finished = Some(now);
        Ok(Changed::Yes)
    }

    pub fn remove(&mut self, key: &str, force: bool) -> Result<(), StateError> {
        let c = self.container(key)?;
        if c.running && !force {
            return Err(StateError::Conflict(format!(
                "You cannot remove a running container {}. Stop the container before \
                 attempting removal or force remove",
                c.id
            )));
        }
        let name = c.name.clone();
        self.containers.remove(&name);
        Ok(())
    }

    /// Creating an existing volume returns it unchanged, as Docker does.
    pub fn create_volume(
        &mut self,
        name: &str,
        labels: BTreeMap<String, String>,
        now: SystemTime,
    ) -> Volume {
        self.volumes
            .entry(name.to_string())
            .or_insert_with(|| Volume {
                name: name.to_string(),
                labels,
                created: now,
            })
            .clone()
    }

    pub fn volumes(&self) -> impl Iterator<Item = &Volume> {
        self.volumes.values()
    }

    /// Absent is an error (404), as in Docker.
    pub fn remove_volume(&mut self, name: &str) -> Result<(), StateError> {
        self.volumes
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| StateError::NoSuchVolume(name.to_string()))
    }
}

/// What `POST /containers/create` asks for, reduced to what the simulation keeps.
#[derive(Clone, Debug, Default)]
pub struct CreateRequest {
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub has_healthcheck: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_secs(2);

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn request(name: &str, kind: &str, healthcheck: bool) -> CreateRequest {
        CreateRequest {
            name: name.to_string(),
            image: "reg:5000/kolla/mariadb:zed".to_string(),
            labels: BTreeMap::from([(LABEL_KIND.to_string(), kind.to_string())]),
            has_healthcheck: healthcheck,
        }
    }

    fn engine_with_image() -> EngineState {
        let mut e = EngineState::default();
        e.add_image(
            "reg:5000/kolla/mariadb:zed",
            &image_id_for("reg:5000/kolla/mariadb:zed"),
        );
        e
    }

    #[test]
    fn references_normalize_to_latest_only_without_tag() {
        assert_eq!(normalize_reference("busybox"), "busybox:latest");
        assert_eq!(normalize_reference("reg:5000/a/b"), "reg:5000/a/b:latest");
        assert_eq!(normalize_reference("reg:5000/a/b:zed"), "reg:5000/a/b:zed");
        assert_eq!(normalize_reference("a/b@sha256:00"), "a/b@sha256:00");
        assert_eq!(image_id_for("busybox"), image_id_for("busybox:latest"));
        assert_ne!(image_id_for("busybox:1"), image_id_for("busybox:2"));
    }

    #[test]
    fn images_resolve_by_reference_id_and_id_prefix() {
        let e = engine_with_image();
        let id = e.image("reg:5000/kolla/mariadb:zed").expect("by reference");
        assert_eq!(e.image(&id).expect("by id"), id);
        assert_eq!(
            e.image(&id["sha256:".len()..][..12]).expect("by prefix"),
            id
        );
        assert_eq!(
            e.image("reg:5000/kolla/mariadb"),
            Err(StateError::NoSuchImage("reg:5000/kolla/mariadb".into()))
        );
        assert!(e.image("sha256:ab").is_err(), "short prefixes are not IDs");
    }

    #[test]
    fn tagging_shares_the_id_and_needs_the_source() {
        let mut e = engine_with_image();
        e.tag("reg:5000/kolla/mariadb:zed", "local/mariadb:x")
            .expect("tag");
        assert_eq!(
            e.image("local/mariadb:x"),
            e.image("reg:5000/kolla/mariadb:zed")
        );
        assert_eq!(e.tag("nope", "x").map_err(|e| e.status()), Err(404));
        assert_eq!(e.image_count(), 2);
    }

    #[test]
    fn create_needs_the_image_and_a_free_name() {
        let mut e = engine_with_image();
        let id = e
            .create(request("mariadb", "service", true), t(0))
            .expect("create");
        assert_eq!(e.container("mariadb").expect("by name").id, id);
        assert_eq!(e.container("/mariadb").expect("slash").id, id);
        assert_eq!(e.container(&id[..8]).expect("prefix").name, "mariadb");
        let again = e.create(request("mariadb", "service", true), t(1));
        assert_eq!(again.map_err(|e| e.status()), Err(409));
        let mut missing = request("x", "service", false);
        missing.image = "absent:1".into();
        assert_eq!(
            e.create(missing, t(1)),
            Err(StateError::NoSuchImage("absent:1".into()))
        );
        assert_eq!(e.containers().count(), 1);
    }

    #[test]
    fn start_and_stop_answer_already_there_the_second_time() {
        let mut e = engine_with_image();
        e.create(request("c", "service", false), t(0))
            .expect("create");
        assert_eq!(e.container("c").expect("c").state_word(), "created");
        assert_eq!(e.start("c", t(1)), Ok(Changed::Yes));
        assert_eq!(e.start("c", t(2)), Ok(Changed::AlreadyThere));
        assert_eq!(e.running_count(), 1);
        assert_eq!(e.stop("c", t(3)), Ok(Changed::Yes));
        assert_eq!(e.stop("c", t(4)), Ok(Changed::AlreadyThere));
        let c = e.container("c").expect("c");
        assert_eq!((c.state_word(), c.exit_code), ("exited", 0));
        assert_eq!(e.start("gone", t(5)).map_err(|e| e.status()), Err(404));
    }

    #[test]
    fn health_starts_then_turns_healthy_after_the_delay() {
        let mut e = engine_with_image();
        e.create(request("c", "service", true), t(0))
            .expect("create");
        e.create(request("plain", "service", false), t(0))
            .expect("create");
        e.start("c", t(10)).expect("start");
        e.start("plain", t(10)).expect("start");
        let c = e.container("c").expect("c");
        assert_eq!(c.health(t(11), DELAY), HealthNow::Starting);
        assert_eq!(
            c.status_text(t(11), DELAY),
            "Up 1 second (health: starting)"
        );
        assert_eq!(c.health(t(12), DELAY), HealthNow::Healthy);
        assert_eq!(c.status_text(t(15), DELAY), "Up 5 seconds (healthy)");
        let plain = e.container("plain").expect("plain");
        assert_eq!(plain.health(t(20), DELAY), HealthNow::None);
        assert_eq!(plain.status_text(t(100), DELAY), "Up About a minute");
    }

    #[test]
    fn a_probe_passes_once_the_container_is_healthy() {
        let mut e = engine_with_image();
        e.create(request("ks", "service", true), t(0))
            .expect("create");
        e.create(request("plain", "service", false), t(0))
            .expect("create");
        assert_eq!(e.create_exec("ks").map_err(|e| e.status()), Err(409));
        e.start("ks", t(10)).expect("start");
        e.start("plain", t(10)).expect("start");
        let probe = e.create_exec("ks").expect("exec in a running container");
        assert_eq!(e.exec_exit_code(&probe, t(11), DELAY), Ok(1));
        assert_eq!(e.exec_exit_code(&probe, t(12), DELAY), Ok(0));
        let plain = e.create_exec("plain").expect("exec");
        assert_eq!(e.exec_exit_code(&plain, t(10), DELAY), Ok(0));
        assert_eq!(
            e.exec_exit_code("nope", t(12), DELAY)
                .map_err(|e| e.status()),
            Err(404)
        );
        assert_eq!(e.create_exec("absent").map_err(|e| e.status()), Err(404));
    }

    #[test]
    fn bootstrap_containers_exit_zero_after_the_delay() {
        let mut e = engine_with_image();
        e.create(request("bootstrap", "bootstrap", false), t(0))
            .expect("create");
        e.start("bootstrap", t(10)).expect("start");
        e.settle(t(11), DELAY);
        assert!(e.container("bootstrap").expect("b").running);
        e.settle(t(13), DELAY);
        let b = e.container("bootstrap").expect("b");
        assert!(!b.running);
        assert_eq!(b.finished, Some(t(12)));
        assert_eq!(b.status_text(t(13), DELAY), "Exited (0) 1 second ago");
        assert_eq!(e.running_count(), 0);
    }

    #[test]
    fn status_texts_parse_back_as_the_real_engine_reads_them() {
        use crate::deployer::engine::docker::parse_status;
        use crate::deployer::plan::{Health, RunState};
        let mut e = engine_with_image();
        e.create(request("c", "service", true), t(0))
            .expect("create");
        let c = e.container("c").expect("c").clone();
        assert_eq!(
            parse_status(&c.status_text(t(0), DELAY)).0,
            RunState::Stopped(None)
        );
        e.start("c", t(0)).expect("start");
        let c = e.container("c").expect("c").clone();
        assert_eq!(
            parse_status(&c.status_text(t(0), DELAY)),
            (RunState::Running, Health::Starting)
        );
        assert_eq!(
            parse_status(&c.status_text(t(5), DELAY)),
            (RunState::Running, Health::Healthy)
        );
        e.stop("c", t(6)).expect("stop");
        let c = e.container("c").expect("c").clone();
        assert_eq!(
            parse_status(&c.status_text(t(7), DELAY)).0,
            RunState::Stopped(Some(0))
        );
    }

    #[test]
    fn removing_a_running_container_needs_force() {
        let mut e = engine_with_image();
        e.create(request("c", "service", false), t(0))
            .expect("create");
        e.start("c", t(0)).expect("start");
        assert_eq!(e.remove("c", false).map_err(|e| e.status()), Err(409));
        e.remove("c", true).expect("forced");
        assert_eq!(e.remove("c", true).map_err(|e| e.status()), Err(404));
    }

    #[test]
    fn volumes_are_idempotent_and_filterable() {
        let mut e = EngineState::default();
        let labels = BTreeMap::from([("org.kiln.managed".to_string(), "true".to_string())]);
        e.create_volume("mariadb", labels.clone(), t(0));
        let again = e.create_volume("mariadb", BTreeMap::new(), t(5));
        assert_eq!(again.created, t(0));
        assert!(labels_match(
            &again.labels,
            &["org.kiln.managed=true".into()]
        ));
        assert!(labels_match(&again.labels, &["org.kiln.managed".into()]));
        assert!(!labels_match(
            &again.labels,
            &["org.kiln.managed=false".into()]
        ));
        assert!(!labels_match(
            &BTreeMap::new(),
            &["org.kiln.managed".into()]
        ));
        assert!(labels_match(&BTreeMap::new(), &[]));
        e.remove_volume("mariadb").expect("remove");
        assert_eq!(e.remove_volume("mariadb").map_err(|e| e.status()), Err(404));
    }

    #[test]
    fn human_durations_follow_docker() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(59), "59 seconds");
        assert_eq!(human_duration(61), "About a minute");
        assert_eq!(human_duration(600), "10 minutes");
        assert_eq!(human_duration(4000), "About an hour");
        assert_eq!(human_duration(7200), "2 hours");
    }
}
