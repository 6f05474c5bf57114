//! Pure reconcile decisions: given the container a host should run and what its Docker Engine
//! reports, what to do. No I/O here, so every combination is tested in a table.

use super::spec::ContainerSpec;

/// A container as the engine reports it (only Kiln-labelled containers are listed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub name: String,
    pub id: String,
    /// `org.kiln.spec-hash` label, if any.
    pub hash: Option<String>,
    /// The image ID the container was created from.
    pub image_id: String,
    pub state: RunState,
    pub health: Health,
    /// The last healthcheck's output (inspect only), to say why a container is unhealthy.
    pub health_output: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Restarting,
    /// Created but never started, or exited: with the exit code when known.
    Stopped(Option<i64>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// The container has no healthcheck.
    None,
    Starting,
    Healthy,
    Unhealthy,
}

/// What to do with one service container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Running with the desired spec: nothing to do.
    Keep,
    /// Exists with the desired spec but is not running.
    Start,
    Create,
    /// Exists with another spec (or image, on upgrade): pull first, then replace.
    Recreate(String),
}

impl Action {
    pub fn changes(&self) -> bool {
        !matches!(self, Action::Keep)
    }

    pub fn verb(&self) -> &'static str {
        match self {
            Action::Keep => "unchanged",
            Action::Start => "started",
            Action::Create => "created",
            Action::Recreate(_) => "recreated",
        }
    }
}

/// How hard the command pushes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mode {
    /// `upgrade`: the image ID the tag resolves to now; a container made from another image is
    /// recreated even when its spec is unchanged.
    pub current_image_id: Option<String>,
}

pub fn container_action(
    desired: &ContainerSpec,
    observed: Option<&Observed>,
    mode: &Mode,
) -> Action {
    let Some(observed) = observed else {
        return Action::Create;
    };
    let desired_hash = desired.hash();
    if observed.hash.as_deref() != Some(desired_hash.as_str()) {
        return Action::Recreate(match &observed.hash {
            Some(_) => "configuration changed".to_string(),
            None => "not created by this Kiln spec".to_string(),
        });
    }
    if let Some(image_id) = &mode.current_image_id
        && *image_id != observed.image_id
    {
        return Action::Recreate("new image".to_string());
    }
    match observed.state {
        RunState::Running | RunState::Restarting => Action::Keep,
        RunState::Stopped(_) => Action::Start,
    }
}

/// Whether a one-shot bootstrap container must run (again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootstrapAction {
    /// It already ran to success with this exact spec.
    Skip,
    /// Never ran, ran with another spec, or failed: (remove the old one and) run it.
    Run,
    /// It is running right now (another deploy is in progress, or it hangs): wait for it.
    Wait,
}

pub fn bootstrap_action(
    desired: &ContainerSpec,
    observed: Option<&Observed>,
    force: bool,
) -> BootstrapAction {
    let Some(observed) = observed else {
        return BootstrapAction::Run;
    };
    let same = observed.hash.as_deref() == Some(desired.hash().as_str());
    match observed.state {
        RunState::Running | RunState::Restarting if same => BootstrapAction::Wait,
        RunState::Stopped(Some(0)) if same && !force => BootstrapAction::Skip,
        _ => BootstrapAction::Run,
    }
}

/// Whether a started container counts as ready for its dependents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotYet,
    Failed(String),
}

pub fn readiness(observed: &Observed) -> Readiness {
    match (observed.state, observed.health) {
        (RunState::Running, Health::Healthy | Health::None) => Readiness::Ready,
        (RunState::Running, Health::Starting) => Readiness::NotYet,
        (_, Health::Unhealthy) => Readiness::Failed(match &observed.health_output {
            Some(output) if !output.trim().is_empty() => {
                format!("its healthcheck fails: {}", last_line(output))
            }
            _ => "its healthcheck fails".to_string(),
        }),
        (RunState::Restarting, _) => Readiness::Failed("it keeps restarting".to_string()),
        (RunState::Stopped(code), _) => Readiness::Failed(match code {
            Some(code) => format!("it exited with code {code}"),
            None => "it is not running".to_string(),
        }),
    }
}

fn last_line(text: &str) -> &str {
    text.trim().lines().last().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::super::spec::sample;
    use super::*;

    fn observed(hash: Option<String>, state: RunState, health: Health) -> Observed {
        Observed {
            name: "c".into(),
            id: "id".into(),
            hash,
            image_id: "sha256:old".into(),
            state,
            health,
            health_output: Some("connection refused\n".into()),
        }
    }

    #[test]
    fn container_actions_table() {
        let spec = sample("c");
        let same = Some(spec.hash());
        let other = Some("0123".to_string());
        let none = Mode::default();
        let upgrade_same = Mode {
            current_image_id: Some("sha256:old".into()),
        };
        let upgrade_new = Mode {
            current_image_id: Some("sha256:new".into()),
        };
        let cases: Vec<(Option<Observed>, &Mode, Action)> = vec![
            (None, &none, Action::Create),
            (
                Some(observed(same.clone(), RunState::Running, Health::Healthy)),
                &none,
                Action::Keep,
            ),
            (
                Some(observed(same.clone(), RunState::Running, Health::Unhealthy)),
                &none,
                Action::Keep,
            ),
            (
                Some(observed(
                    same.clone(),
                    RunState::Stopped(Some(137)),
                    Health::None,
                )),
                &none,
                Action::Start,
            ),
            (
                Some(observed(other.clone(), RunState::Running, Health::Healthy)),
                &none,
                Action::Recreate("configuration changed".into()),
            ),
            (
                Some(observed(None, RunState::Running, Health::None)),
                &none,
                Action::Recreate("not created by this Kiln spec".into()),
            ),
            (
                Some(observed(same.clone(), RunState::Running, Health::Healthy)),
                &upgrade_same,
                Action::Keep,
            ),
            (
                Some(observed(same.clone(), RunState::Running, Health::Healthy)),
                &upgrade_new,
                Action::Recreate("new image".into()),
            ),
        ];
        for (observed, mode, expected) in cases {
            assert_eq!(
                container_action(&spec, observed.as_ref(), mode),
                expected,
                "{observed:?} {mode:?}"
            );
        }
    }

    #[test]
    fn bootstrap_runs_once_per_spec() {
        let spec = sample("b");
        let same = Some(spec.hash());
        let ok = observed(same.clone(), RunState::Stopped(Some(0)), Health::None);
        let failed = observed(same.clone(), RunState::Stopped(Some(1)), Health::None);
        let running = observed(same.clone(), RunState::Running, Health::None);
        let stale = observed(Some("x".into()), RunState::Stopped(Some(0)), Health::None);
        assert_eq!(bootstrap_action(&spec, None, false), BootstrapAction::Run);
        assert_eq!(
            bootstrap_action(&spec, Some(&ok), false),
            BootstrapAction::Skip
        );
        assert_eq!(
            bootstrap_action(&spec, Some(&ok), true),
            BootstrapAction::Run
        );
        assert_eq!(
            bootstrap_action(&spec, Some(&failed), false),
            BootstrapAction::Run
        );
        assert_eq!(
            bootstrap_action(&spec, Some(&running), false),
            BootstrapAction::Wait
        );
        assert_eq!(
            bootstrap_action(&spec, Some(&stale), false),
            BootstrapAction::Run
        );
    }

    #[test]
    fn readiness_table() {
        use RunState::{Restarting, Running, Stopped};
        let r = |s, h| readiness(&observed(None, s, h));
        assert_eq!(r(Running, Health::Healthy), Readiness::Ready);
        assert_eq!(r(Running, Health::None), Readiness::Ready);
        assert_eq!(r(Running, Health::Starting), Readiness::NotYet);
        assert!(
            matches!(r(Running, Health::Unhealthy), Readiness::Failed(m) if m == "its healthcheck fails: connection refused")
        );
        assert!(
            matches!(r(Stopped(Some(3)), Health::None), Readiness::Failed(m) if m.contains("code 3"))
        );
        assert!(matches!(r(Restarting, Health::None), Readiness::Failed(_)));
    }
}
