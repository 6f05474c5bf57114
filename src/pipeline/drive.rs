//! The provisioning half of the pipeline: polls the daemon for every node's phase, sends the verb
//! that moves each one on (manage → provide → deploy, rebuild for a reset, bounded retries),
//! opens a node's gate for the container deployer as soon as it is active, and reports progress
//! as it goes. Restartable: an interrupted run picks every node up from the state it is in.

use super::phase::{Attempts, NodeView, Phase, Step, eta, human_duration, next_step, summary};
use crate::deployer::run::Gate;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What the pipeline needs from the daemon.
#[async_trait]
pub trait RackApi: Send + Sync {
    async fn progress(&self) -> Result<Vec<NodeView>, String>;
    async fn verb(&self, node: &str, verb: &str) -> Result<(), String>;
}

pub struct DriveOptions {
    /// The inventory's nodes: only these are driven.
    pub nodes: BTreeSet<String>,
    /// Nodes to image again even if active (`kiln reset`).
    pub reimage: BTreeSet<String>,
    pub poll: Duration,
    pub timeout: Duration,
    pub json: bool,
}

/// When each node reached each milestone (seconds since the start) and how it ended.
#[derive(Clone, Debug, Default)]
pub struct NodeTimes {
    pub verified_s: Option<f64>,
    pub imaging_s: Option<f64>,
    pub active_s: Option<f64>,
    pub failed: Option<String>,
    /// It was already active and not re-imaged: handed over at once.
    pub already_active: bool,
}

pub async fn drive(
    api: &dyn RackApi,
    options: &DriveOptions,
    gates: &BTreeMap<String, watch::Sender<Gate>>,
) -> BTreeMap<String, NodeTimes> {
    let started = Instant::now();
    let mut attempts = Attempts::default();
    let mut times: BTreeMap<String, NodeTimes> = BTreeMap::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut reimage_sent: BTreeSet<String> = BTreeSet::new();
    // Reset nodes seen out of `active` since their rebuild: only then does `active` mean done.
    let mut left_active: BTreeSet<String> = BTreeSet::new();
    let mut last_line: BTreeMap<String, String> = BTreeMap::new();
    let mut last_sent: BTreeMap<String, (String, &'static str)> = BTreeMap::new();
    let mut last_summary = Instant::now() - Duration::from_secs(60);
    let mut first_pass = true;

    while finished.len() < options.nodes.len() {
        if started.elapsed() > options.timeout {
            for node in options.nodes.difference(&finished) {
                let reason = format!(
                    "timed out after {}",
                    human_duration(options.timeout.as_secs())
                );
                times.entry(node.clone()).or_default().failed = Some(reason.clone());
                open(gates, node, Gate::Failed(reason));
            }
            break;
        }
        let views: Vec<NodeView> = match api.progress().await {
            Ok(views) => views
                .into_iter()
                .filter(|v| options.nodes.contains(&v.name))
                .collect(),
            Err(err) => {
                report_line(
                    options.json,
                    started,
                    "-",
                    "daemon",
                    &format!("cannot read progress: {err}"),
                );
                tokio::time::sleep(options.poll).await;
                continue;
            }
        };
        let at = started.elapsed().as_secs_f64();
        let mut changed = false;
        for view in &views {
            if finished.contains(&view.name) {
                continue;
            }
            let phase = Phase::of(view);
            let entry = times.entry(view.name.clone()).or_default();
            // A node about to be re-imaged has not reached anything of this run yet.
            let awaiting_reimage =
                options.reimage.contains(&view.name) && !left_active.contains(&view.name);
            if !awaiting_reimage {
                note_milestones(entry, &phase, at);
            }
            let line = phase.describe(view);
            let key = line_key(&phase, &line);
            if last_line.get(&view.name) != Some(&key) {
                report_line(options.json, started, &view.name, phase.word(), &line);
                last_line.insert(view.name.clone(), key);
                changed = true;
            }
            let reimage =
                options.reimage.contains(&view.name) && !reimage_sent.contains(&view.name);
            let is_active = view.provision_state == crate::model::ProvisionState::Active;
            if reimage_sent.contains(&view.name) && !is_active {
                left_active.insert(view.name.clone());
            }
            let step = match next_step(view, &attempts, reimage) {
                Step::Done
                    if reimage_sent.contains(&view.name) && !left_active.contains(&view.name) =>
                {
                    Step::Wait
                }
                step => step,
            };
            match step {
                Step::Wait => {}
                Step::Done => {
                    if first_pass && !options.reimage.contains(&view.name) {
                        entry.already_active = true;
                    }
                    entry.active_s.get_or_insert(at);
                    finished.insert(view.name.clone());
                    open(gates, &view.name, Gate::Open);
                    changed = true;
                }
                Step::GiveUp(reason) => {
                    report_line(
                        options.json,
                        started,
                        &view.name,
                        "failed",
                        &format!("giving up: {reason}"),
                    );
                    entry.failed = Some(reason.clone());
                    finished.insert(view.name.clone());
                    open(gates, &view.name, Gate::Failed(reason));
                    changed = true;
                }
                Step::Verb(verb) => {
                    let state = format!("{:?}", view.provision_state);
                    // Once per state: the daemon applies a verb at once, so the same verb for the
                    // same state means the reply was lost or the conductor has not moved yet.
                    if last_sent.get(&view.name) == Some(&(state.clone(), verb)) {
                        continue;
                    }
                    attempts.record(&view.name, verb);
                    last_sent.insert(view.name.clone(), (state, verb));
                    // Any (re)deploy of a reset node counts as its re-imaging.
                    if verb == "rebuild" || verb == "deploy" {
                        reimage_sent.insert(view.name.clone());
                    }
                    match api.verb(&view.name, verb).await {
                        // The daemon applies a verb before it replies: from here on, `active`
                        // can only mean this run's imaging is done, however fast it was (a
                        // simulated node can go deploying → active between two polls).
                        Ok(()) if verb == "rebuild" || verb == "deploy" => {
                            left_active.insert(view.name.clone());
                        }
                        Ok(()) => {}
                        Err(err) => report_line(
                            options.json,
                            started,
                            &view.name,
                            "daemon",
                            &format!("{verb} refused: {err}"),
                        ),
                    }
                }
            }
        }
        for node in &options.nodes {
            if !views.iter().any(|v| &v.name == node) && !finished.contains(node) {
                let reason = "not enrolled in the daemon".to_string();
                times.entry(node.clone()).or_default().failed = Some(reason.clone());
                finished.insert(node.clone());
                open(gates, node, Gate::Failed(reason));
            }
        }
        if changed && last_summary.elapsed() > Duration::from_secs(2)
            || last_summary.elapsed() > Duration::from_secs(15)
        {
            let active: Vec<u64> = times
                .values()
                .filter(|t| !t.already_active)
                .filter_map(|t| t.active_s.map(|s| s as u64))
                .collect();
            let remaining = options.nodes.len() - finished.len();
            let eta_s = eta(at as u64, &active, remaining);
            if options.json {
                let line = serde_json::json!({"event": "rack", "at_s": at, "summary": summary(&views, eta_s)});
                println!("{line}");
            } else {
                eprintln!("{:>7.1}s  == {}", at, summary(&views, eta_s));
            }
            last_summary = Instant::now();
        }
        first_pass = false;
        if finished.len() < options.nodes.len() {
            tokio::time::sleep(options.poll).await;
        }
    }
    times
}

/// What must change for a node's line to be printed again: its phase, every 10 % of imaging,
/// or the reason it waits (ignoring the counters in it), so 134 nodes do not print every second.
fn line_key(phase: &Phase, line: &str) -> String {
    match phase {
        Phase::Imaging {
            percent: Some(p), ..
        } => format!("imaging {}", p / 10),
        _ => line.chars().filter(|c| !c.is_ascii_digit()).collect(),
    }
}

fn note_milestones(entry: &mut NodeTimes, phase: &Phase, at: f64) {
    match phase {
        Phase::Ready | Phase::Cleaning | Phase::Booting => {
            entry.verified_s.get_or_insert(at);
        }
        Phase::Imaging { .. } | Phase::StartingOs => {
            entry.verified_s.get_or_insert(at);
            entry.imaging_s.get_or_insert(at);
        }
        Phase::Active => {
            entry.verified_s.get_or_insert(at);
            entry.active_s.get_or_insert(at);
        }
        _ => {}
    }
}

fn open(gates: &BTreeMap<String, watch::Sender<Gate>>, node: &str, gate: Gate) {
    if let Some(sender) = gates.get(node) {
        let _ = sender.send(gate);
    }
}

fn report_line(json: bool, started: Instant, node: &str, phase: &str, detail: &str) {
    let at = started.elapsed().as_secs_f64();
    if json {
        let line = serde_json::json!({"event": "node", "at_s": at, "node": node, "phase": phase, "detail": detail});
        println!("{line}");
    } else {
        eprintln!("{at:>7.1}s  {node:<12} {detail}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProvisionState as S;
    use std::sync::Mutex;

    /// A daemon whose nodes finish imaging before the next poll: `deploy` and `rebuild` take a
    /// node straight to `active`.
    struct InstantRack(Mutex<BTreeMap<String, S>>);

    #[async_trait]
    impl RackApi for InstantRack {
        async fn progress(&self) -> Result<Vec<NodeView>, String> {
            let nodes = self.0.lock().map_err(|e| e.to_string())?;
            Ok(nodes
                .iter()
                .map(|(name, state)| NodeView {
                    name: name.clone(),
                    provision_state: *state,
                    last_error: None,
                    waiting: None,
                    bmc_error: None,
                    deploy: None,
                })
                .collect())
        }
        async fn verb(&self, node: &str, verb: &str) -> Result<(), String> {
            let mut nodes = self.0.lock().map_err(|e| e.to_string())?;
            let next = match verb {
                "manage" => S::Manageable,
                "provide" => S::Available,
                "deploy" | "rebuild" => S::Active,
                other => return Err(format!("unexpected verb {other}")),
            };
            nodes.insert(node.to_string(), next);
            Ok(())
        }
    }

    #[tokio::test]
    async fn imaging_faster_than_a_poll_still_opens_the_gate() {
        let rack = InstantRack(Mutex::new(BTreeMap::from([
            ("fresh".to_string(), S::Enroll),
            ("reset".to_string(), S::Active),
        ])));
        let options = DriveOptions {
            nodes: ["fresh", "reset"].map(String::from).into(),
            reimage: ["reset".to_string()].into(),
            poll: Duration::from_millis(5),
            timeout: Duration::from_secs(5),
            json: true,
        };
        let (fresh_tx, fresh_rx) = watch::channel(Gate::Waiting);
        let (reset_tx, reset_rx) = watch::channel(Gate::Waiting);
        let gates = BTreeMap::from([
            ("fresh".to_string(), fresh_tx),
            ("reset".to_string(), reset_tx),
        ]);
        let times = drive(&rack, &options, &gates).await;
        assert_eq!(*fresh_rx.borrow(), Gate::Open);
        assert_eq!(*reset_rx.borrow(), Gate::Open);
        for node in ["fresh", "reset"] {
            assert!(times[node].failed.is_none(), "{node}: {:?}", times[node]);
            assert!(!times[node].already_active, "{node} was imaged by this run");
        }
    }
}
