//! Pure decisions for `kiln deploy-servers` and `kiln reset`: what phase a node is in (for the
//! operator), which verb moves it on, when it is handed to the container deployer, and the rack
//! summary line. Table-tested; the loop in `drive.rs` only fetches and acts.

use crate::model::ProvisionState as S;
use crate::store::DeployStep;
use serde::Deserialize;
use std::collections::BTreeMap;

/// One node as `GET /v1/progress` reports it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub provision_state: S,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub waiting: Option<String>,
    #[serde(default)]
    pub bmc_error: Option<String>,
    #[serde(default)]
    pub deploy: Option<DeployView>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct DeployView {
    pub step: DeployStep,
    #[serde(default)]
    pub done: Option<u64>,
    #[serde(default)]
    pub total: Option<u64>,
    #[serde(default)]
    pub rate: Option<f64>,
}

/// What the operator sees per node.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    Enrolled,
    Verifying,
    Cleaning,
    Ready,
    /// Power-cycled into PXE; waiting for DHCP, the ramdisk and the agent.
    Booting,
    Imaging {
        percent: Option<u64>,
        rate_mb_s: f64,
    },
    /// Image written, rebooted from disk, waiting for the OS to answer.
    StartingOs,
    Active,
    Failed(String),
}

impl Phase {
    pub fn of(view: &NodeView) -> Phase {
        match view.provision_state {
            S::Enroll => match &view.last_error {
                Some(error) => Phase::Failed(error.clone()),
                None => Phase::Enrolled,
            },
            S::Verifying => Phase::Verifying,
            S::Manageable | S::Available => Phase::Ready,
            S::Cleaning | S::CleanWait | S::Deleting => Phase::Cleaning,
            S::Deploying | S::WaitCallback => match &view.deploy {
                Some(DeployView {
                    step: DeployStep::WriteImage,
                    done,
                    total,
                    rate,
                }) => Phase::Imaging {
                    percent: match (done, total) {
                        (Some(done), Some(total)) if *total > 0 => {
                            Some(done.saturating_mul(100) / total)
                        }
                        _ => None,
                    },
                    rate_mb_s: rate.unwrap_or(0.0) / 1e6,
                },
                Some(DeployView {
                    step: DeployStep::WaitOs,
                    ..
                }) => Phase::StartingOs,
                _ => Phase::Booting,
            },
            S::Active => Phase::Active,
            S::DeployFailed | S::CleanFailed | S::Error => Phase::Failed(
                view.last_error
                    .clone()
                    .unwrap_or_else(|| "failed (no reason recorded)".into()),
            ),
        }
    }

    /// Short word for the summary line.
    pub fn word(&self) -> &'static str {
        match self {
            Phase::Enrolled | Phase::Verifying => "verifying",
            Phase::Cleaning => "cleaning",
            Phase::Ready => "ready",
            Phase::Booting => "booting",
            Phase::Imaging { .. } => "imaging",
            Phase::StartingOs => "starting OS",
            Phase::Active => "active",
            Phase::Failed(_) => "failed",
        }
    }

    /// One line for this node, with why it waits when the daemon knows.
    pub fn describe(&self, view: &NodeView) -> String {
        let why = view
            .waiting
            .as_deref()
            .or(view.bmc_error.as_deref())
            .map(|w| format!(" — {w}"))
            .unwrap_or_default();
        match self {
            Phase::Imaging {
                percent: Some(p),
                rate_mb_s,
            } => format!("imaging {p}% ({rate_mb_s:.0} MB/s)"),
            Phase::Imaging { .. } => "imaging".into(),
            Phase::Failed(reason) => format!("FAILED: {reason}"),
            Phase::Booting => format!("booting the deploy ramdisk{why}"),
            Phase::StartingOs => format!("rebooted from disk, waiting for its OS{why}"),
            other => format!("{}{why}", other.word()),
        }
    }
}

/// What to do with a node next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Verb(&'static str),
    Wait,
    /// Active (and, for a reset, re-imaged): hand it to the container deployer.
    Done,
    GiveUp(String),
}

/// Verbs already sent per node, so a node that keeps failing is given up instead of retried
/// forever.
#[derive(Clone, Debug, Default)]
pub struct Attempts {
    pub sent: BTreeMap<(String, &'static str), u32>,
}

impl Attempts {
    pub fn count(&self, node: &str, verb: &'static str) -> u32 {
        self.sent
            .get(&(node.to_string(), verb))
            .copied()
            .unwrap_or(0)
    }
    pub fn record(&mut self, node: &str, verb: &'static str) {
        *self.sent.entry((node.to_string(), verb)).or_default() += 1;
    }
}

const MAX_VERIFY: u32 = 3;
const MAX_DEPLOY: u32 = 2;

/// `reimage`: the node must be imaged again even if it is active (kiln reset) and has not been
/// sent back to deploying yet.
pub fn next_step(view: &NodeView, attempts: &Attempts, reimage: bool) -> Step {
    let node = view.name.as_str();
    let error = || {
        view.last_error
            .clone()
            .unwrap_or_else(|| "no reason recorded".into())
    };
    match view.provision_state {
        S::Enroll if attempts.count(node, "manage") >= MAX_VERIFY => Step::GiveUp(format!(
            "BMC verification failed {MAX_VERIFY} times: {}",
            error()
        )),
        S::Enroll => Step::Verb("manage"),
        S::Manageable => Step::Verb("provide"),
        S::Available => Step::Verb("deploy"),
        S::Active if reimage => Step::Verb("rebuild"),
        S::Active => Step::Done,
        S::DeployFailed
            if attempts.count(node, "deploy") + attempts.count(node, "rebuild") >= MAX_DEPLOY =>
        {
            Step::GiveUp(format!("deploy failed {MAX_DEPLOY} times: {}", error()))
        }
        S::DeployFailed => Step::Verb("deploy"),
        S::CleanFailed | S::Error => Step::GiveUp(error()),
        S::Verifying
        | S::Cleaning
        | S::CleanWait
        | S::Deploying
        | S::WaitCallback
        | S::Deleting => Step::Wait,
    }
}

/// "3 nodes: 1 active · 1 imaging 63% · 1 booting — ETA 1 min 20 s"
pub fn summary(views: &[NodeView], eta_s: Option<u64>) -> String {
    let mut counts: BTreeMap<&'static str, (usize, Vec<u64>)> = BTreeMap::new();
    for view in views {
        let phase = Phase::of(view);
        let entry = counts.entry(phase.word()).or_default();
        entry.0 += 1;
        if let Phase::Imaging {
            percent: Some(p), ..
        } = phase
        {
            entry.1.push(p);
        }
    }
    let order = [
        "active",
        "starting OS",
        "imaging",
        "booting",
        "ready",
        "cleaning",
        "verifying",
        "failed",
    ];
    let parts: Vec<String> = order
        .iter()
        .filter_map(|word| {
            let (count, percents) = counts.get(word)?;
            Some(if percents.is_empty() {
                format!("{count} {word}")
            } else {
                let mean = percents.iter().sum::<u64>() / percents.len() as u64;
                format!("{count} {word} {mean}%")
            })
        })
        .collect();
    let eta = eta_s
        .map(|s| format!(" — ETA {}", human_duration(s)))
        .unwrap_or_default();
    format!("{} nodes: {}{eta}", views.len(), parts.join(" · "))
}

pub fn human_duration(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        s => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// Remaining time from the nodes already active: the mean time they took, minus how long the
/// rest have been going. None until one node is active.
pub fn eta(started_s: u64, active_durations_s: &[u64], remaining: usize) -> Option<u64> {
    if remaining == 0 || active_durations_s.is_empty() {
        return None;
    }
    let mean = active_durations_s.iter().sum::<u64>() / active_durations_s.len() as u64;
    // Past the mean, the rest are late: no honest estimate, so none.
    mean.checked_sub(started_s).filter(|left| *left > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: S) -> NodeView {
        NodeView {
            name: "n1".into(),
            provision_state: state,
            last_error: None,
            waiting: None,
            bmc_error: None,
            deploy: None,
        }
    }

    #[test]
    fn next_steps_per_state() {
        let none = Attempts::default();
        let cases = [
            (S::Enroll, false, Step::Verb("manage")),
            (S::Verifying, false, Step::Wait),
            (S::Manageable, false, Step::Verb("provide")),
            (S::Cleaning, false, Step::Wait),
            (S::Available, false, Step::Verb("deploy")),
            (S::Deploying, false, Step::Wait),
            (S::WaitCallback, true, Step::Wait),
            (S::Active, false, Step::Done),
            (S::Active, true, Step::Verb("rebuild")),
            (S::DeployFailed, false, Step::Verb("deploy")),
        ];
        for (state, reimage, expected) in cases {
            assert_eq!(
                next_step(&view(state), &none, reimage),
                expected,
                "{state:?}"
            );
        }
        assert!(matches!(
            next_step(&view(S::CleanFailed), &none, false),
            Step::GiveUp(_)
        ));
    }

    #[test]
    fn retries_are_bounded() {
        let mut attempts = Attempts::default();
        let mut failed = view(S::DeployFailed);
        failed.last_error = Some("image checksum mismatch".into());
        attempts.record("n1", "deploy");
        assert_eq!(next_step(&failed, &attempts, false), Step::Verb("deploy"));
        attempts.record("n1", "deploy");
        match next_step(&failed, &attempts, false) {
            Step::GiveUp(reason) => assert!(reason.contains("checksum mismatch"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let mut enroll = view(S::Enroll);
        enroll.last_error = Some("BMC unreachable".into());
        for _ in 0..3 {
            attempts.record("n1", "manage");
        }
        assert!(
            matches!(next_step(&enroll, &attempts, false), Step::GiveUp(r) if r.contains("BMC unreachable"))
        );
    }

    #[test]
    fn phases_and_summary() {
        let mut imaging = view(S::WaitCallback);
        imaging.deploy = Some(DeployView {
            step: DeployStep::WriteImage,
            done: Some(63),
            total: Some(100),
            rate: Some(25e6),
        });
        assert_eq!(
            Phase::of(&imaging).describe(&imaging),
            "imaging 63% (25 MB/s)"
        );
        let mut booting = view(S::WaitCallback);
        booting.name = "n2".into();
        booting.waiting = Some("no DHCP request seen from 52:54:00:66:00:02 yet".into());
        assert!(
            Phase::of(&booting)
                .describe(&booting)
                .contains("no DHCP request")
        );
        let active = view(S::Active);
        let line = summary(&[active, imaging, booting], Some(80));
        assert_eq!(
            line,
            "3 nodes: 1 active · 1 imaging 63% · 1 booting — ETA 1 min 20 s"
        );
    }

    #[test]
    fn eta_from_finished_nodes() {
        assert_eq!(eta(30, &[100, 140], 2), Some(90));
        assert_eq!(eta(30, &[], 2), None);
        assert_eq!(eta(300, &[100], 1), None);
        assert_eq!(eta(30, &[100], 0), None);
    }
}
