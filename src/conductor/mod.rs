//! The conductor: the one place that writes a node's provision state.
//!
//! Operators' verbs arrive through [`Conductor::request`]; the background loop ([`Conductor::run`])
//! advances nodes in transient states by asking a [`Provisioner`] what happened and feeding the
//! answer to the pure state machine. Both paths write through `Store::record_transition`, which
//! refuses a move if the node changed underneath, and every move lands in the history table.

pub mod config_drive;
pub mod deploy;
mod provisioner;

pub use provisioner::{BasicProvisioner, BmcProvisioner, Outcome, Provisioner};

use crate::model::{Event, Input, InvalidTransition, Node, ProvisionState, Verb, next};
use crate::store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ConductorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
}

#[derive(Clone)]
pub struct Conductor {
    store: Store,
    provisioner: Arc<dyn Provisioner>,
    wake: Arc<Notify>,
    tick: Duration,
    waiting: Arc<std::sync::Mutex<std::collections::HashMap<uuid::Uuid, String>>>,
}

/// Entering `deploying` or `cleaning` other than back from its wait state begins a new job whose
/// deploy record must start empty (an old record could otherwise finish it at once).
fn starts_agent_job(from: ProvisionState, to: ProvisionState) -> bool {
    matches!(
        (from, to),
        (f, ProvisionState::Deploying) if f != ProvisionState::WaitCallback
    ) || matches!(
        (from, to),
        (f, ProvisionState::Cleaning) if f != ProvisionState::CleanWait
    )
}

/// Nodes advanced at once in one pass.
const PARALLEL_ADVANCES: usize = 64;

impl Conductor {
    pub fn new(store: Store, provisioner: Arc<dyn Provisioner>) -> Self {
        Self {
            store,
            provisioner,
            wake: Arc::new(Notify::new()),
            tick: Duration::from_secs(1),
            waiting: Arc::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Applies an operator's verb to a node and wakes the loop to act on it.
    pub async fn request(&self, name: &str, verb: Verb) -> Result<Node, ConductorError> {
        let node = self.store.node(name).await?;
        let from = node.provision_state;
        let input = Input::Verb(verb);
        let step = next(node.provision_state, node.target_provision_state, input)?;
        if starts_agent_job(from, step.to) {
            // A new attempt starts from scratch: power cycle, fresh token, new command.
            self.store.clear_deployment(node.uuid).await?;
        }
        let reason = format!("operator requested {verb}");
        let node = self
            .store
            .record_transition(&node, step, input, &reason, None)
            .await?;
        tracing::info!(node = %node.spec.name, from = %from, to = %step.to, %verb, "provision state changed");
        self.wake.notify_one();
        Ok(node)
    }

    /// Advances every node in a transient state once, up to `PARALLEL_ADVANCES` nodes at a time
    /// (BMC calls and OS probes take seconds; nodes must not wait for each other). Returns how
    /// many nodes moved. A node whose step fails is logged and retried on the next pass.
    pub async fn reconcile_once(&self) -> Result<usize, ConductorError> {
        use futures::StreamExt;
        let nodes: Vec<Node> = self
            .store
            .list_nodes()
            .await?
            .into_iter()
            .filter(|node| node.provision_state.is_transient())
            .collect();
        let moved = futures::stream::iter(nodes)
            .map(|node| async move {
                match self.advance(&node).await {
                    Ok(moved) => moved,
                    Err(err) => {
                        tracing::warn!(node = %node.spec.name, error = %err, "conductor step failed");
                        false
                    }
                }
            })
            .buffer_unordered(PARALLEL_ADVANCES)
            .filter(|moved| std::future::ready(*moved))
            .count()
            .await;
        Ok(moved)
    }

    async fn advance(&self, node: &Node) -> Result<bool, ConductorError> {
        let outcome = self.provisioner.advance(node).await;
        let (event, reason, error) = match outcome {
            Outcome::Wait { reason } => {
                tracing::debug!(node = %node.spec.name, state = %node.provision_state, %reason, "waiting");
                self.note_waiting(node, reason);
                return Ok(false);
            }
            Outcome::Done { reason } => (Event::Done, reason, None),
            Outcome::Waiting { reason } => (Event::Wait, reason, None),
            Outcome::Resumed { reason } => (Event::Resume, reason, None),
            Outcome::Failed { reason } => (Event::Fail, reason.clone(), Some(reason)),
        };
        let input = Input::Event(event);
        let step = next(node.provision_state, node.target_provision_state, input)?;
        if starts_agent_job(node.provision_state, step.to) {
            self.store.clear_deployment(node.uuid).await?;
        }
        match self
            .store
            .record_transition(node, step, input, &reason, error.as_deref())
            .await
        {
            Ok(_) => {
                tracing::info!(node = %node.spec.name, from = %node.provision_state, to = %step.to, %reason, "provision state changed");
                self.waiting.lock().map(|mut w| w.remove(&node.uuid)).ok();
                Ok(true)
            }
            // An operator (abort) got there first; the next pass sees the new state.
            Err(StoreError::StateChanged { .. }) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// Remembers why a node is waiting, for `kiln node show` (not stored: it changes every pass).
    fn note_waiting(&self, node: &Node, reason: String) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert(node.uuid, reason);
        }
    }

    /// Why a node in a transient state is waiting, as of the last pass.
    pub fn waiting_reason(&self, node: &Node) -> Option<String> {
        if !node.provision_state.is_transient() {
            return None;
        }
        self.waiting.lock().ok()?.get(&node.uuid).cloned()
    }

    /// Wakes the loop now (an agent called back, a verb arrived).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs until `shutdown`: a pass on every tick and whenever a verb wakes it.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            loop {
                match self.reconcile_once().await {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(err) => {
                        tracing::warn!(error = %err, "conductor pass failed");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.tick) => {}
            }
        }
    }
}
