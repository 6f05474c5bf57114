//! The node provisioning state machine, modelled on Ironic's core states, as one pure function.
//!
//! Operators drive it with [`Verb`]s (through the API/CLI); the conductor drives it with [`Event`]s
//! as work completes or fails. [`next`] decides every move; nothing else may invent a state.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a node is in its life. Names and meanings follow Ironic's provision states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum ProvisionState {
    /// Known to Kiln, BMC not yet verified.
    Enroll,
    /// The conductor is checking the BMC credentials and reachability.
    Verifying,
    /// BMC verified; the node is under operator control but not offered for deployment.
    Manageable,
    /// Clean and ready to deploy.
    Available,
    /// The conductor is preparing the node (boot device, power) for the deploy ramdisk.
    Deploying,
    /// Waiting for the deploy agent in the ramdisk to call back.
    WaitCallback,
    /// Running its OS image from local disk.
    Active,
    /// A deploy failed; `deploy`/`rebuild` retries, `undeploy` tears down.
    DeployFailed,
    /// Cleaning steps are running (automated clean on `provide`, or manual `clean`).
    Cleaning,
    /// Waiting for the agent during cleaning.
    CleanWait,
    /// Cleaning failed; `manage` takes the node back to manageable.
    CleanFailed,
    /// Tearing down a deployment (`undeploy`); continues into cleaning.
    Deleting,
    /// Tear-down failed; `undeploy` retries.
    Error,
}

impl ProvisionState {
    pub const ALL: [ProvisionState; 13] = [
        Self::Enroll,
        Self::Verifying,
        Self::Manageable,
        Self::Available,
        Self::Deploying,
        Self::WaitCallback,
        Self::Active,
        Self::DeployFailed,
        Self::Cleaning,
        Self::CleanWait,
        Self::CleanFailed,
        Self::Deleting,
        Self::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enroll => "enroll",
            Self::Verifying => "verifying",
            Self::Manageable => "manageable",
            Self::Available => "available",
            Self::Deploying => "deploying",
            Self::WaitCallback => "wait-callback",
            Self::Active => "active",
            Self::DeployFailed => "deploy-failed",
            Self::Cleaning => "cleaning",
            Self::CleanWait => "clean-wait",
            Self::CleanFailed => "clean-failed",
            Self::Deleting => "deleting",
            Self::Error => "error",
        }
    }

    /// States in which the conductor has work to do (or is waiting on someone).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Verifying
                | Self::Deploying
                | Self::WaitCallback
                | Self::Cleaning
                | Self::CleanWait
                | Self::Deleting
        )
    }

    /// States from which the node record itself may be deleted (Ironic allows the same set plus
    /// `clean-failed` and `error`, where nothing runs on the node).
    pub fn allows_record_deletion(self) -> bool {
        matches!(
            self,
            Self::Enroll | Self::Manageable | Self::Available | Self::CleanFailed | Self::Error
        )
    }
}

impl fmt::Display for ProvisionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProvisionState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown provision state '{s}'"))
    }
}

/// What an operator asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verb {
    Manage,
    Provide,
    Deploy,
    Rebuild,
    Undeploy,
    Abort,
    Clean,
}

impl Verb {
    pub const ALL: [Verb; 7] = [
        Self::Manage,
        Self::Provide,
        Self::Deploy,
        Self::Rebuild,
        Self::Undeploy,
        Self::Abort,
        Self::Clean,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manage => "manage",
            Self::Provide => "provide",
            Self::Deploy => "deploy",
            Self::Rebuild => "rebuild",
            Self::Undeploy => "undeploy",
            Self::Abort => "abort",
            Self::Clean => "clean",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verb {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|verb| verb.as_str() == s)
            .ok_or_else(|| format!("unknown verb '{s}'"))
    }
}

/// What the conductor reports about work in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// The current step finished successfully.
    Done,
    /// The current step failed.
    Fail,
    /// The step now waits for the agent (deploying → wait-callback, cleaning → clean-wait).
    Wait,
    /// The agent called back; the step continues.
    Resume,
}

impl Event {
    pub const ALL: [Event; 4] = [Self::Done, Self::Fail, Self::Wait, Self::Resume];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Fail => "fail",
            Self::Wait => "wait",
            Self::Resume => "resume",
        }
    }
}

/// Either kind of input to the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    Verb(Verb),
    Event(Event),
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Verb(verb) => f.write_str(verb.as_str()),
            Self::Event(event) => f.write_str(event.as_str()),
        }
    }
}

/// The outcome of a legal transition: the new state and the stable state it is heading for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub to: ProvisionState,
    pub target: Option<ProvisionState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot {input} a node in state {from}")]
pub struct InvalidTransition {
    pub from: ProvisionState,
    pub input: Input,
}

/// Decides the next state. `target` is the stable state the node was heading for when it entered
/// the current transient state (cleaning ends in `available` after `provide`, in `manageable`
/// after a manual `clean`).
pub fn next(
    from: ProvisionState,
    target: Option<ProvisionState>,
    input: Input,
) -> Result<Step, InvalidTransition> {
    use Event::*;
    use ProvisionState as S;
    use Verb::*;

    let go = |to: ProvisionState, target: Option<ProvisionState>| Ok(Step { to, target });
    let heading = |to: ProvisionState, target: ProvisionState| {
        Ok(Step {
            to,
            target: Some(target),
        })
    };
    let rest = |to: ProvisionState| Ok(Step { to, target: None });

    match (from, input) {
        // Operator verbs.
        (S::Enroll, Input::Verb(Manage)) => heading(S::Verifying, S::Manageable),
        (S::Available | S::CleanFailed, Input::Verb(Manage)) => rest(S::Manageable),
        (S::Manageable, Input::Verb(Provide)) => heading(S::Cleaning, S::Available),
        (S::Manageable, Input::Verb(Clean)) => heading(S::Cleaning, S::Manageable),
        (S::Available | S::DeployFailed, Input::Verb(Deploy)) => heading(S::Deploying, S::Active),
        (S::Active | S::DeployFailed, Input::Verb(Rebuild)) => heading(S::Deploying, S::Active),
        (S::Active | S::DeployFailed | S::Error, Input::Verb(Undeploy)) => {
            heading(S::Deleting, S::Available)
        }
        (S::Verifying, Input::Verb(Abort)) => rest(S::Enroll),
        (S::Deploying | S::WaitCallback, Input::Verb(Abort)) => rest(S::DeployFailed),
        (S::Cleaning | S::CleanWait, Input::Verb(Abort)) => rest(S::CleanFailed),

        // Conductor events.
        (S::Verifying, Input::Event(Done)) => rest(S::Manageable),
        (S::Verifying, Input::Event(Fail)) => rest(S::Enroll),
        (S::Deploying, Input::Event(Wait)) => go(S::WaitCallback, target),
        (S::WaitCallback, Input::Event(Resume)) => go(S::Deploying, target),
        (S::Deploying, Input::Event(Done)) => rest(S::Active),
        (S::Deploying | S::WaitCallback, Input::Event(Fail)) => rest(S::DeployFailed),
        (S::Cleaning, Input::Event(Wait)) => go(S::CleanWait, target),
        (S::CleanWait, Input::Event(Resume)) => go(S::Cleaning, target),
        (S::Cleaning, Input::Event(Done)) => match target {
            Some(S::Manageable) => rest(S::Manageable),
            _ => rest(S::Available),
        },
        (S::Cleaning | S::CleanWait, Input::Event(Fail)) => rest(S::CleanFailed),
        // Tear-down continues into cleaning, as in Ironic, so a node is clean when available.
        (S::Deleting, Input::Event(Done)) => heading(S::Cleaning, S::Available),
        (S::Deleting, Input::Event(Fail)) => rest(S::Error),

        (from, input) => Err(InvalidTransition { from, input }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProvisionState as S;
    use std::collections::{HashMap, HashSet, VecDeque};

    /// Every legal move, written out independently of `next`: (from, input, to).
    fn legal_moves() -> Vec<(S, Input, S)> {
        use Event::*;
        use Verb::*;
        let v = Input::Verb;
        let e = Input::Event;
        vec![
            (S::Enroll, v(Manage), S::Verifying),
            (S::Available, v(Manage), S::Manageable),
            (S::CleanFailed, v(Manage), S::Manageable),
            (S::Manageable, v(Provide), S::Cleaning),
            (S::Manageable, v(Clean), S::Cleaning),
            (S::Available, v(Deploy), S::Deploying),
            (S::DeployFailed, v(Deploy), S::Deploying),
            (S::Active, v(Rebuild), S::Deploying),
            (S::DeployFailed, v(Rebuild), S::Deploying),
            (S::Active, v(Undeploy), S::Deleting),
            (S::DeployFailed, v(Undeploy), S::Deleting),
            (S::Error, v(Undeploy), S::Deleting),
            (S::Verifying, v(Abort), S::Enroll),
            (S::Deploying, v(Abort), S::DeployFailed),
            (S::WaitCallback, v(Abort), S::DeployFailed),
            (S::Cleaning, v(Abort), S::CleanFailed),
            (S::CleanWait, v(Abort), S::CleanFailed),
            (S::Verifying, e(Done), S::Manageable),
            (S::Verifying, e(Fail), S::Enroll),
            (S::Deploying, e(Wait), S::WaitCallback),
            (S::WaitCallback, e(Resume), S::Deploying),
            (S::Deploying, e(Done), S::Active),
            (S::Deploying, e(Fail), S::DeployFailed),
            (S::WaitCallback, e(Fail), S::DeployFailed),
            (S::Cleaning, e(Wait), S::CleanWait),
            (S::CleanWait, e(Resume), S::Cleaning),
            (S::Cleaning, e(Done), S::Available),
            (S::Cleaning, e(Fail), S::CleanFailed),
            (S::CleanWait, e(Fail), S::CleanFailed),
            (S::Deleting, e(Done), S::Cleaning),
            (S::Deleting, e(Fail), S::Error),
        ]
    }

    fn all_inputs() -> Vec<Input> {
        Verb::ALL
            .into_iter()
            .map(Input::Verb)
            .chain(Event::ALL.into_iter().map(Input::Event))
            .collect()
    }

    #[test]
    fn every_state_and_input_pair_matches_the_table() {
        let table: HashMap<(S, Input), S> = legal_moves()
            .into_iter()
            .map(|(f, i, t)| ((f, i), t))
            .collect();
        let mut checked = 0;
        for from in S::ALL {
            for input in all_inputs() {
                // Cleaning's destination depends on the target; the table lists the provide path.
                let target = from.is_transient().then_some(S::Available);
                let got = next(from, target, input);
                match table.get(&(from, input)) {
                    Some(to) => assert_eq!(got.map(|s| s.to), Ok(*to), "{from} + {input}"),
                    None => assert_eq!(
                        got,
                        Err(InvalidTransition { from, input }),
                        "{from} + {input} must be refused"
                    ),
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 13 * 11);
    }

    #[test]
    fn manual_clean_returns_to_manageable_and_provide_to_available() {
        let clean = next(S::Manageable, None, Input::Verb(Verb::Clean)).unwrap();
        assert_eq!(clean.target, Some(S::Manageable));
        let waited = next(clean.to, clean.target, Input::Event(Event::Wait)).unwrap();
        let resumed = next(waited.to, waited.target, Input::Event(Event::Resume)).unwrap();
        let done = next(resumed.to, resumed.target, Input::Event(Event::Done)).unwrap();
        assert_eq!(done.to, S::Manageable);

        let provide = next(S::Manageable, None, Input::Verb(Verb::Provide)).unwrap();
        let done = next(provide.to, provide.target, Input::Event(Event::Done)).unwrap();
        assert_eq!(done.to, S::Available);
    }

    #[test]
    fn every_state_is_reachable_from_enroll_and_every_state_can_reach_active() {
        let edges = legal_moves();
        let reach = |start: S, forward: bool| {
            let mut seen = HashSet::from([start]);
            let mut queue = VecDeque::from([start]);
            while let Some(state) = queue.pop_front() {
                for (f, _, t) in &edges {
                    let (a, b) = if forward { (*f, *t) } else { (*t, *f) };
                    if a == state && seen.insert(b) {
                        queue.push_back(b);
                    }
                }
            }
            seen
        };
        assert_eq!(reach(S::Enroll, true).len(), S::ALL.len());
        assert_eq!(reach(S::Active, false).len(), S::ALL.len());
    }

    #[test]
    fn abort_leaves_every_waiting_state() {
        for state in [
            S::Verifying,
            S::Deploying,
            S::WaitCallback,
            S::Cleaning,
            S::CleanWait,
        ] {
            let step = next(state, Some(S::Active), Input::Verb(Verb::Abort)).unwrap();
            assert!(!step.to.is_transient(), "{state} aborted into {}", step.to);
        }
    }

    #[test]
    fn names_round_trip() {
        for state in S::ALL {
            assert_eq!(state.as_str().parse::<S>(), Ok(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        for verb in Verb::ALL {
            assert_eq!(verb.as_str().parse::<Verb>(), Ok(verb));
        }
    }
}
