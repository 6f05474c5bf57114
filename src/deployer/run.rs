//! The reconciler: runs the rendered services against each host's engine as a dependency
//! graph. Every service is its own task that starts as soon as the services it needs are
//! healthy; within a service all hosts move at once (or in `serial` batches); nothing that is
//! already as desired is touched.

use super::engine::{ArchiveLoad, Engine, EngineError, ProbeOutcome};
use super::plan::{
    Action, BootstrapAction, Mode, Observed, Readiness, bootstrap_action, container_action,
    readiness,
};
use super::render::RenderedService;
use super::spec::ContainerSpec;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Create what is missing, recreate what changed, start what stopped.
    Deploy,
    /// Pull every image first; recreate containers whose image changed; rerun bootstraps.
    Upgrade,
    Pull,
    Stop,
    /// Remove every Kiln container and volume.
    Destroy,
}

#[derive(Clone, Debug, Default)]
pub struct Filters {
    /// `--limit`: only these hosts.
    pub hosts: Option<BTreeSet<String>>,
    /// `--tags`: only these services.
    pub services: Option<BTreeSet<String>>,
    /// A directory of `docker save` archives named after the image (`keystone.tar` for
    /// `…/kolla/keystone:tag`): a missing image is loaded from there instead of pulled.
    pub image_archives: Option<std::path::PathBuf>,
}

/// One line of live progress.
#[derive(Clone, Debug)]
pub struct Event {
    pub at: Duration,
    pub host: String,
    pub service: String,
    pub container: String,
    pub message: String,
}

/// The final summary: one row per container touched or checked.
#[derive(Clone, Debug)]
pub struct Row {
    pub host: String,
    pub service: String,
    pub container: String,
    pub action: String,
    pub result: String,
    pub seconds: f64,
    /// When the row was recorded, in seconds since the run started (deploy-servers: since the
    /// pipeline started, the clock its node phases use).
    pub finished_s: f64,
}

#[derive(Clone, Debug)]
pub struct Failure {
    pub host: String,
    pub service: String,
    pub container: String,
    pub reason: String,
    pub logs: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub rows: Vec<Row>,
    pub failures: Vec<Failure>,
    /// Services not run because something they need failed: (service, reason).
    pub skipped: Vec<(String, String)>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.skipped.is_empty()
    }
}

type Engines = BTreeMap<String, Arc<dyn Engine>>;

/// A host the deployer may not touch yet (deploy-servers: the node is still being imaged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    Waiting,
    Open,
    /// The host will never be ready (its provisioning failed): its services fail with this.
    Failed(String),
}

pub type Gates = HashMap<String, watch::Receiver<Gate>>;

type HostContainers = Arc<HashMap<String, Observed>>;

/// Held while one (host, image) is being pulled or loaded.
type FetchLock = Arc<tokio::sync::Mutex<()>>;

/// Shared by the service tasks.
struct Context {
    engines: Engines,
    /// Containers per host, from one list call each (upfront, or when a gated host opens).
    observed: std::sync::Mutex<BTreeMap<String, HostContainers>>,
    gates: Gates,
    operation: Operation,
    started: Instant,
    events: mpsc::UnboundedSender<Event>,
    /// Image IDs resolved by the upgrade pull, per host and image.
    pulled: BTreeMap<(String, String), String>,
    image_archives: Option<std::path::PathBuf>,
    /// One fetch per (host, image) at a time: services sharing an image wait for the first.
    fetching: std::sync::Mutex<HashMap<(String, String), FetchLock>>,
}

impl Context {
    fn observed(&self, host: &str) -> HostContainers {
        self.observed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits for the host's gate (if any), then its containers (listed once).
    async fn open_host(&self, host: &str) -> Result<HostContainers, String> {
        if let Some(gate) = self.gates.get(host) {
            let mut gate = gate.clone();
            let state = gate
                .wait_for(|g| *g != Gate::Waiting)
                .await
                .map(|g| g.clone())
                .unwrap_or(Gate::Failed("the host never became ready".into()));
            if let Gate::Failed(reason) = state {
                return Err(reason);
            }
        }
        if let Some(known) = self
            .observed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
        {
            return Ok(known.clone());
        }
        let engine = self
            .engines
            .get(host)
            .ok_or_else(|| "no engine configured for this host".to_string())?;
        let list = engine.list_managed().await.map_err(|e| e.to_string())?;
        let containers: HostContainers =
            Arc::new(list.into_iter().map(|o| (o.name.clone(), o)).collect());
        self.observed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_string(), containers.clone());
        Ok(containers)
    }

    /// Seconds since the run started: `Row::finished_s`.
    fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn event(&self, host: &str, service: &str, container: &str, message: impl Into<String>) {
        let _ = self.events.send(Event {
            at: self.started.elapsed(),
            host: host.to_string(),
            service: service.to_string(),
            container: container.to_string(),
            message: message.into(),
        });
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    Ready,
    Failed(String),
}

pub async fn run(
    services: Vec<RenderedService>,
    engines: Engines,
    operation: Operation,
    filters: &Filters,
    events: mpsc::UnboundedSender<Event>,
) -> Outcome {
    run_gated(services, engines, operation, filters, events, Gates::new()).await
}

/// [`run`] where some hosts open later: their services wait for the gate (deploy-servers hands
/// each node over as soon as it is active; nothing waits for the whole rack).
pub async fn run_gated(
    services: Vec<RenderedService>,
    engines: Engines,
    operation: Operation,
    filters: &Filters,
    events: mpsc::UnboundedSender<Event>,
    gates: Gates,
) -> Outcome {
    let started = Instant::now();
    let services = apply_filters(services, filters);
    let mut outcome = Outcome::default();

    // One list call per host, all open hosts at once: the whole observed state.
    let hosts: BTreeSet<String> = services
        .iter()
        .flat_map(|s| s.hosts.iter().map(|(h, _)| h.clone()))
        .chain(filtered_hosts(&engines, filters))
        .filter(|h| !gates.contains_key(h))
        .collect();
    let observations = futures::future::join_all(hosts.iter().map(|host| {
        let engine = engines.get(host).cloned();
        async move {
            match engine {
                Some(engine) => (host.clone(), engine.list_managed().await),
                None => (
                    host.clone(),
                    Err(EngineError::Unreachable {
                        endpoint: host.clone(),
                        message: "no engine configured for this host".into(),
                    }),
                ),
            }
        }
    }))
    .await;
    let mut observed = BTreeMap::new();
    let mut unreachable = BTreeMap::new();
    for (host, result) in observations {
        match result {
            Ok(list) => {
                observed.insert(
                    host,
                    list.into_iter().map(|o| (o.name.clone(), o)).collect(),
                );
            }
            Err(err) => {
                unreachable.insert(host.clone(), err.to_string());
                outcome.failures.push(Failure {
                    host,
                    service: "-".into(),
                    container: "-".into(),
                    reason: err.to_string(),
                    logs: Vec::new(),
                });
            }
        }
    }
    let mut context = Context {
        engines,
        observed: std::sync::Mutex::new(
            observed
                .into_iter()
                .map(|(h, o): (String, HashMap<String, Observed>)| (h, Arc::new(o)))
                .collect(),
        ),
        gates,
        image_archives: filters.image_archives.clone(),
        fetching: std::sync::Mutex::default(),
        operation,
        started,
        events,
        pulled: BTreeMap::new(),
    };
    match operation {
        Operation::Stop | Operation::Destroy => {
            teardown(&context, &services, filters, &unreachable, &mut outcome).await;
            return outcome;
        }
        Operation::Pull | Operation::Upgrade => {
            pull_all(&mut context, &services, &unreachable, &mut outcome).await;
            if operation == Operation::Pull || !outcome.failures.is_empty() {
                return outcome;
            }
        }
        Operation::Deploy => {}
    }
    converge(Arc::new(context), services, &unreachable, &mut outcome).await;
    outcome
}

fn apply_filters(services: Vec<RenderedService>, filters: &Filters) -> Vec<RenderedService> {
    services
        .into_iter()
        .filter(|s| {
            filters
                .services
                .as_ref()
                .is_none_or(|tags| tags.contains(&s.name))
        })
        .map(|mut s| {
            if let Some(limit) = &filters.hosts {
                s.hosts.retain(|(h, _)| limit.contains(h));
                if s.bootstrap
                    .as_ref()
                    .is_some_and(|(h, _)| !limit.contains(h))
                {
                    s.bootstrap = None;
                }
            }
            s
        })
        .filter(|s| !s.hosts.is_empty())
        .collect()
}

fn filtered_hosts(engines: &Engines, filters: &Filters) -> Vec<String> {
    engines
        .keys()
        .filter(|h| filters.hosts.as_ref().is_none_or(|l| l.contains(*h)))
        .cloned()
        .collect()
}

/// Each service a task; each waits on the watch channels of the services it needs.
async fn converge(
    context: Arc<Context>,
    services: Vec<RenderedService>,
    unreachable: &BTreeMap<String, String>,
    outcome: &mut Outcome,
) {
    let mut senders = HashMap::new();
    let mut receivers = HashMap::new();
    for service in &services {
        let (tx, rx) = watch::channel(Status::Pending);
        senders.insert(service.name.clone(), tx);
        receivers.insert(service.name.clone(), rx);
    }
    // Deploy: every host fetches its images from the moment it opens, one at a time in
    // dependency order, instead of when each service's turn comes. A host whose next service
    // waits on another host's bootstrap would otherwise sit idle; a TCG VM needs minutes to
    // load a Kolla image. A failed prefetch is retried by the service itself, which reports it.
    let mut prefetches = tokio::task::JoinSet::new();
    if context.operation == Operation::Deploy {
        for (host, candidates) in prefetch_plan(&services) {
            prefetches.spawn(prefetch_host(context.clone(), host, candidates));
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for service in services {
        let needs: Vec<(String, watch::Receiver<Status>)> = service
            .after
            .iter()
            .filter_map(|dep| receivers.get(dep).map(|rx| (dep.clone(), rx.clone())))
            .collect();
        let Some(done) = senders.remove(&service.name) else {
            continue;
        };
        let context = context.clone();
        let down: Vec<String> = service
            .hosts
            .iter()
            .filter_map(|(h, _)| unreachable.get(h).map(|e| format!("{h}: {e}")))
            .collect();
        tasks.spawn(async move {
            let mut result = ServiceResult {
                service: service.name.clone(),
                ..ServiceResult::default()
            };
            for (dep, mut rx) in needs {
                let status = rx
                    .wait_for(|s| *s != Status::Pending)
                    .await
                    .map(|s| s.clone())
                    .unwrap_or(Status::Failed("its task ended".into()));
                if let Status::Failed(_) = status {
                    let reason = format!("not started: it needs {dep}, which failed");
                    context.event("-", &service.name, "-", reason.clone());
                    result.skipped = Some(reason.clone());
                    let _ = done.send(Status::Failed(reason));
                    return result;
                }
            }
            if !down.is_empty() {
                let reason = format!("host unreachable ({})", down.join("; "));
                result.skipped = Some(reason.clone());
                let _ = done.send(Status::Failed(reason));
                return result;
            }
            converge_service(&context, &service, &mut result).await;
            let status = match result.failures.first() {
                Some(f) => Status::Failed(f.reason.clone()),
                None => Status::Ready,
            };
            let _ = done.send(status);
            result
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => {
                outcome.rows.extend(result.rows);
                outcome.failures.extend(result.failures);
                if let Some(reason) = result.skipped {
                    outcome.skipped.push((result.service, reason));
                }
            }
            Err(err) => outcome.failures.push(Failure {
                host: "-".into(),
                service: "-".into(),
                container: "-".into(),
                reason: format!("a service task crashed: {err}"),
                logs: Vec::new(),
            }),
        }
    }
    // Images nothing is left to use (a service was skipped) are not waited for.
    prefetches.abort_all();
    outcome
        .rows
        .sort_by(|a, b| (&a.host, &a.service).cmp(&(&b.host, &b.service)));
}

/// A container a host may have to fetch an image for, in dependency order; `bootstrap` for a
/// service's one-shot containers (decided by [`bootstrap_action`], not [`container_action`]).
#[derive(Clone, Debug)]
pub(super) struct Candidate {
    pub spec: ContainerSpec,
    pub bootstrap: bool,
}

/// Per host, every container it runs, in dependency order (a service's bootstrap containers
/// before its own): what the host may prefetch once it opens.
pub(super) fn prefetch_plan(services: &[RenderedService]) -> BTreeMap<String, Vec<Candidate>> {
    let mut plan: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    for service in services {
        let bootstrap = service.bootstrap.iter().map(|hc| (hc, true));
        for ((host, containers), bootstrap) in
            bootstrap.chain(service.hosts.iter().map(|hc| (hc, false)))
        {
            for spec in containers {
                plan.entry(host.clone()).or_default().push(Candidate {
                    spec: spec.clone(),
                    bootstrap,
                });
            }
        }
    }
    plan
}

/// The first container of each image that the observed state says will be created (or
/// recreated, or a bootstrap run): nothing for a host whose containers are all in place, so a
/// redeploy that changes nothing asks no engine about images.
pub(super) fn images_to_fetch<'a>(
    candidates: &'a [Candidate],
    observed: &HashMap<String, Observed>,
) -> Vec<&'a ContainerSpec> {
    let mut seen = BTreeSet::new();
    candidates
        .iter()
        .filter(|c| {
            let current = observed.get(&c.spec.name);
            if c.bootstrap {
                bootstrap_action(&c.spec, current, false) == BootstrapAction::Run
            } else {
                matches!(
                    container_action(&c.spec, current, &Mode::default()),
                    Action::Create | Action::Recreate(_)
                )
            }
        })
        .map(|c| &c.spec)
        .filter(|spec| seen.insert(spec.image.clone()))
        .collect()
}

/// Fetches one host's images (see [`images_to_fetch`]) once its gate opens.
async fn prefetch_host(context: Arc<Context>, host: String, candidates: Vec<Candidate>) {
    let Ok(observed) = context.open_host(&host).await else {
        return; // its services report the host
    };
    let Some(engine) = context.engines.get(&host).cloned() else {
        return;
    };
    for spec in images_to_fetch(&candidates, &observed) {
        if let Err(err) = ensure_image(&context, engine.as_ref(), &host, spec).await {
            context.event(
                &host,
                &spec.service,
                &spec.name,
                format!("fetching {} ahead of its turn failed: {err}", spec.image),
            );
        }
    }
}

#[derive(Default)]
struct ServiceResult {
    service: String,
    rows: Vec<Row>,
    failures: Vec<Failure>,
    skipped: Option<String>,
}

async fn converge_service(
    context: &Context,
    service: &RenderedService,
    result: &mut ServiceResult,
) {
    if let Some((host, containers)) = &service.bootstrap {
        for spec in containers {
            if let Err(failure) = run_bootstrap(context, host, spec, result).await {
                result.failures.push(failure);
                return;
            }
        }
    }
    let batch = service
        .serial
        .map_or(service.hosts.len(), |s| s.batch_size(service.hosts.len()));
    for chunk in service.hosts.chunks(batch.max(1)) {
        let outcomes = futures::future::join_all(
            chunk
                .iter()
                .map(|(host, containers)| converge_host(context, host, containers)),
        )
        .await;
        for (rows, failure) in outcomes {
            result.rows.extend(rows);
            if let Some(failure) = failure {
                result.failures.push(failure);
            }
        }
        if !result.failures.is_empty() {
            return; // a failed batch stops the roll-out, as Kolla's serial plays do
        }
    }
}

/// Brings one host's containers of one service to the desired state, then waits until they
/// are ready. Rows for the summary, and the first failure.
async fn converge_host(
    context: &Context,
    host: &str,
    containers: &[ContainerSpec],
) -> (Vec<Row>, Option<Failure>) {
    let mut rows = Vec::new();
    let Some(engine) = context.engines.get(host) else {
        return (rows, None);
    };
    let observed = match context.open_host(host).await {
        Ok(observed) => observed,
        Err(reason) => {
            let service = containers
                .first()
                .map(|c| c.service.clone())
                .unwrap_or_default();
            context.event(
                host,
                &service,
                "-",
                format!("FAILED: host not ready: {reason}"),
            );
            return (
                rows,
                Some(Failure {
                    host: host.to_string(),
                    service,
                    container: "-".into(),
                    reason: format!("host not ready: {reason}"),
                    logs: Vec::new(),
                }),
            );
        }
    };
    for spec in containers {
        let started = Instant::now();
        let mode = Mode {
            current_image_id: context
                .pulled
                .get(&(host.to_string(), spec.image.clone()))
                .cloned(),
        };
        let action = container_action(spec, observed.get(&spec.name), &mode);
        let applied = apply(context, engine.as_ref(), host, spec, &action).await;
        let ready = match applied {
            Ok(()) => {
                wait_ready(
                    context,
                    engine.as_ref(),
                    host,
                    spec,
                    observed.get(&spec.name),
                    &action,
                )
                .await
            }
            Err(err) => Err(err.to_string()),
        };
        let seconds = started.elapsed().as_secs_f64();
        match ready {
            Ok(result) => rows.push(Row {
                host: host.to_string(),
                service: spec.service.clone(),
                container: spec.name.clone(),
                action: action.verb().to_string(),
                result,
                seconds,
                finished_s: context.elapsed_s(),
            }),
            Err(reason) => {
                context.event(host, &spec.service, &spec.name, format!("FAILED: {reason}"));
                rows.push(Row {
                    host: host.to_string(),
                    service: spec.service.clone(),
                    container: spec.name.clone(),
                    action: action.verb().to_string(),
                    result: "failed".into(),
                    seconds,
                    finished_s: context.elapsed_s(),
                });
                let logs = engine.logs_tail(&spec.name, 15).await.unwrap_or_default();
                return (
                    rows,
                    Some(Failure {
                        host: host.to_string(),
                        service: spec.service.clone(),
                        container: spec.name.clone(),
                        reason,
                        logs,
                    }),
                );
            }
        }
    }
    (rows, None)
}

async fn apply(
    context: &Context,
    engine: &dyn Engine,
    host: &str,
    spec: &ContainerSpec,
    action: &Action,
) -> Result<(), EngineError> {
    let event = |message: String| context.event(host, &spec.service, &spec.name, message);
    match action {
        Action::Keep => Ok(()),
        Action::Start => {
            event("starting (stopped, spec unchanged)".into());
            engine.start(&spec.name).await
        }
        Action::Create | Action::Recreate(_) => {
            // The image is in place before the old container stops: a pull failure leaves the
            // running service alone.
            ensure_image(context, engine, host, spec).await?;
            if let Action::Recreate(reason) = action {
                event(format!("recreating ({reason})"));
                engine.stop(&spec.name).await?;
                engine.remove(&spec.name).await?;
            } else {
                event("creating".into());
            }
            engine.create(spec).await?;
            engine.start(&spec.name).await
        }
    }
}

async fn ensure_image(
    context: &Context,
    engine: &dyn Engine,
    host: &str,
    spec: &ContainerSpec,
) -> Result<(), EngineError> {
    if engine.image_id(&spec.image).await?.is_some() {
        return Ok(());
    }
    let key = (host.to_string(), spec.image.clone());
    let lock = context
        .fetching
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_default()
        .clone();
    let _fetching = lock.lock().await;
    if engine.image_id(&spec.image).await?.is_some() {
        return Ok(()); // another service on this host fetched it meanwhile
    }
    if let Some(archive) = archive_for(context.image_archives.as_deref(), &spec.image) {
        context.event(
            host,
            &spec.service,
            &spec.name,
            format!("loading {}", archive.display()),
        );
        if engine.load_archive(&archive, &spec.image).await? == ArchiveLoad::AlreadyPresent {
            context.event(
                host,
                &spec.service,
                &spec.name,
                format!(
                    "{} already on the engine (preloaded, same content ID): tagged, not loaded",
                    archive.display()
                ),
            );
        }
        return Ok(());
    }
    context.event(
        host,
        &spec.service,
        &spec.name,
        format!("pulling {}", spec.image),
    );
    engine.pull(&spec.image).await
}

/// `DIR/NAME.tar` for `…/NAME:tag`, if it exists.
fn archive_for(dir: Option<&std::path::Path>, image: &str) -> Option<std::path::PathBuf> {
    let repo = image
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map_or(image, |(r, _)| r);
    let name = repo.rsplit('/').next()?;
    let path = dir?.join(format!("{name}.tar"));
    path.exists().then_some(path)
}

/// Ok(result word) once ready; Err(plain-words reason) otherwise.
async fn wait_ready(
    context: &Context,
    engine: &dyn Engine,
    host: &str,
    spec: &ContainerSpec,
    before: Option<&Observed>,
    action: &Action,
) -> Result<String, String> {
    // Unchanged and ready: answer from the list call alone (the no-op fast path).
    if let (Action::Keep, Some(observed)) = (action, before) {
        match readiness(observed) {
            Readiness::Ready => return Ok(ready_word(spec).into()),
            Readiness::Failed(reason) => return Err(reason),
            Readiness::NotYet => {}
        }
    }
    let patience = Duration::from_secs(spec.healthcheck.as_ref().map_or(15, |h| h.patience_s()));
    let deadline = Instant::now() + patience;
    let mut last = String::from("it never reported its state");
    let mut attempt = 0;
    while Instant::now() < deadline {
        match engine.inspect(&spec.name).await {
            Ok(Some(observed)) => match readiness(&observed) {
                Readiness::Ready => return Ok(became_ready(context, host, spec, action)),
                Readiness::Failed(reason) => return Err(reason),
                Readiness::NotYet => {
                    // Docker runs its healthcheck every `interval` (Kolla's 30 s); the deployer
                    // does not wait for that: it runs the same command itself until it passes.
                    if let Some(check) = &spec.healthcheck {
                        let timeout = Duration::from_secs(check.timeout_s.max(1));
                        match engine.probe(&spec.name, &check.test, timeout).await {
                            Ok(ProbeOutcome::Passed) => {
                                return Ok(became_ready(context, host, spec, action));
                            }
                            Ok(ProbeOutcome::Failed(code)) => {
                                last = format!("its healthcheck has not passed yet (exit {code})")
                            }
                            Ok(ProbeOutcome::TimedOut) => {
                                last = format!(
                                    "its healthcheck did not finish within {} s",
                                    timeout.as_secs()
                                )
                            }
                            Err(err) => last = err.to_string(),
                        }
                    } else {
                        last = "it has not started yet".into();
                    }
                }
            },
            Ok(None) => return Err("the container disappeared".into()),
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(probe_pause(attempt)).await;
        attempt += 1;
    }
    Err(format!(
        "not healthy after {} s: {last}",
        patience.as_secs()
    ))
}

fn became_ready(context: &Context, host: &str, spec: &ContainerSpec, action: &Action) -> String {
    if action.changes() {
        context.event(host, &spec.service, &spec.name, ready_word(spec));
    }
    ready_word(spec).into()
}

/// The pause before the deployer looks at a starting container again: 0.25 s, growing by half
/// each time to 5 s, so a fast service is seen at once and a slow one (Keystone under TCG) is
/// not probed every second for minutes (each probe is a process in the container).
pub fn probe_pause(attempt: u32) -> Duration {
    let millis = 250.0 * 1.5f64.powi(attempt.min(16) as i32);
    Duration::from_millis(millis.min(5000.0) as u64)
}

fn ready_word(spec: &ContainerSpec) -> &'static str {
    if spec.healthcheck.is_some() {
        "healthy"
    } else {
        "running"
    }
}

async fn run_bootstrap(
    context: &Context,
    host: &str,
    spec: &ContainerSpec,
    result: &mut ServiceResult,
) -> Result<(), Failure> {
    let failure = |reason: String, logs: Vec<String>| Failure {
        host: host.to_string(),
        service: spec.service.clone(),
        container: spec.name.clone(),
        reason,
        logs,
    };
    let Some(engine) = context.engines.get(host) else {
        return Err(failure("no engine for this host".into(), Vec::new()));
    };
    let containers = context
        .open_host(host)
        .await
        .map_err(|reason| failure(format!("host not ready: {reason}"), Vec::new()))?;
    let observed = containers.get(&spec.name);
    let force = context.operation == Operation::Upgrade;
    let started = Instant::now();
    let action = bootstrap_action(spec, observed, force);
    if action == BootstrapAction::Skip {
        result.rows.push(row(
            context,
            host,
            spec,
            "bootstrap",
            "done before",
            started,
        ));
        return Ok(());
    }
    let run = async {
        if action == BootstrapAction::Run {
            ensure_image(context, engine.as_ref(), host, spec).await?;
            engine.remove(&spec.name).await?;
            context.event(host, &spec.service, &spec.name, "bootstrap running");
            engine.create(spec).await?;
            engine.start(&spec.name).await?;
        }
        engine.wait(&spec.name).await
    };
    match run.await {
        Ok(0) => {
            context.event(host, &spec.service, &spec.name, "bootstrap done");
            result
                .rows
                .push(row(context, host, spec, "bootstrap", "exited 0", started));
            Ok(())
        }
        Ok(code) => {
            let logs = engine.logs_tail(&spec.name, 15).await.unwrap_or_default();
            result
                .rows
                .push(row(context, host, spec, "bootstrap", "failed", started));
            Err(failure(format!("bootstrap exited with code {code}"), logs))
        }
        Err(err) => Err(failure(err.to_string(), Vec::new())),
    }
}

fn row(
    context: &Context,
    host: &str,
    spec: &ContainerSpec,
    action: &str,
    result: &str,
    started: Instant,
) -> Row {
    Row {
        host: host.to_string(),
        service: spec.service.clone(),
        container: spec.name.clone(),
        action: action.to_string(),
        result: result.to_string(),
        seconds: started.elapsed().as_secs_f64(),
        finished_s: context.elapsed_s(),
    }
}

/// `pull` and the first half of `upgrade`: every image on every host, all in parallel.
async fn pull_all(
    context: &mut Context,
    services: &[RenderedService],
    unreachable: &BTreeMap<String, String>,
    outcome: &mut Outcome,
) {
    let mut wanted: BTreeSet<(String, String, String)> = BTreeSet::new();
    for service in services {
        for (host, containers) in &service.hosts {
            for spec in containers {
                if !unreachable.contains_key(host) {
                    wanted.insert((host.clone(), spec.image.clone(), service.name.clone()));
                }
            }
        }
    }
    let ctx: &Context = context;
    let pulls = futures::future::join_all(wanted.iter().map(|(host, image, service)| async move {
        let started = Instant::now();
        let Some(engine) = ctx.engines.get(host) else {
            return (host, image, service, Err("no engine".to_string()), started);
        };
        ctx.event(host, service, "-", format!("pulling {image}"));
        let result = match engine.pull(image).await {
            Ok(()) => engine.image_id(image).await.map_err(|e| e.to_string()),
            Err(err) => Err(err.to_string()),
        };
        (host, image, service, result, started)
    }))
    .await;
    let mut pulled = BTreeMap::new();
    for (host, image, service, result, started) in pulls {
        match result {
            Ok(id) => {
                outcome.rows.push(Row {
                    host: host.clone(),
                    service: service.clone(),
                    container: image.clone(),
                    action: "pull".into(),
                    result: "pulled".into(),
                    seconds: started.elapsed().as_secs_f64(),
                    finished_s: context.elapsed_s(),
                });
                if let Some(id) = id {
                    pulled.insert((host.clone(), image.clone()), id);
                }
            }
            Err(reason) => outcome.failures.push(Failure {
                host: host.clone(),
                service: service.clone(),
                container: image.clone(),
                reason: format!("pull failed: {reason}"),
                logs: Vec::new(),
            }),
        }
    }
    context.pulled = pulled;
}

/// `stop` and `destroy`: per host in parallel, services in reverse dependency order.
async fn teardown(
    context: &Context,
    services: &[RenderedService],
    filters: &Filters,
    unreachable: &BTreeMap<String, String>,
    outcome: &mut Outcome,
) {
    let destroy = context.operation == Operation::Destroy;
    let hosts = filtered_hosts(&context.engines, filters);
    let results =
        futures::future::join_all(hosts.iter().filter(|h| !unreachable.contains_key(*h)).map(
            |host| async move {
                let mut rows = Vec::new();
                let mut failures = Vec::new();
                let Some(engine) = context.engines.get(host) else {
                    return (rows, failures);
                };
                let observed = context.observed(host);
                // Catalog containers in reverse order first, then anything else Kiln labelled (only
                // destroy removes those: stop touches only what the catalog names).
                let mut names: Vec<(String, String)> = services
                    .iter()
                    .rev()
                    .flat_map(|s| {
                        let bootstrap = s.bootstrap.iter().flat_map(|(_, c)| c.iter());
                        s.hosts
                            .iter()
                            .filter(|(h, _)| h == host)
                            .flat_map(|(_, c)| c.iter())
                            .chain(bootstrap)
                            .map(|c| (c.service.clone(), c.name.clone()))
                            .collect::<Vec<_>>()
                    })
                    .filter(|(_, name)| observed.contains_key(name))
                    .collect();
                if destroy {
                    for name in observed.keys() {
                        if !names.iter().any(|(_, n)| n == name) {
                            names.push(("-".into(), name.clone()));
                        }
                    }
                }
                for (service, name) in names {
                    let started = Instant::now();
                    let result = if destroy {
                        engine.remove(&name).await
                    } else {
                        engine.stop(&name).await
                    };
                    let verb = if destroy { "removed" } else { "stopped" };
                    match result {
                        Ok(()) => {
                            context.event(host, &service, &name, verb);
                            rows.push(Row {
                                host: host.clone(),
                                service,
                                container: name,
                                action: if destroy { "destroy" } else { "stop" }.into(),
                                result: verb.into(),
                                seconds: started.elapsed().as_secs_f64(),
                                finished_s: context.elapsed_s(),
                            });
                        }
                        Err(err) => failures.push(Failure {
                            host: host.clone(),
                            service,
                            container: name,
                            reason: err.to_string(),
                            logs: Vec::new(),
                        }),
                    }
                }
                if destroy {
                    match engine.remove_managed_volumes().await {
                        Ok(volumes) => {
                            for volume in volumes {
                                rows.push(Row {
                                    host: host.clone(),
                                    service: "-".into(),
                                    container: format!("volume {volume}"),
                                    action: "destroy".into(),
                                    result: "removed".into(),
                                    seconds: 0.0,
                                    finished_s: context.elapsed_s(),
                                });
                            }
                        }
                        Err(err) => failures.push(Failure {
                            host: host.clone(),
                            service: "-".into(),
                            container: "volumes".into(),
                            reason: err.to_string(),
                            logs: Vec::new(),
                        }),
                    }
                }
                (rows, failures)
            },
        ))
        .await;
    for (rows, failures) in results {
        outcome.rows.extend(rows);
        outcome.failures.extend(failures);
    }
}
