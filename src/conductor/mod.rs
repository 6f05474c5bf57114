//! The conductor: the one place that writes a node's provision state.
//!
//! Operators' verbs arrive through [`Conductor::request`]; the background loop ([`Conductor::run`])
//! advances nodes in transient states by asking a [`Provisioner`] what happened and feeding the
//! answer to the pure state machine. Both paths write through `Store::record_transition`, which
//! refuses a move if the node changed underneath, and every move lands in the history table.

mod provisioner;

pub use provisioner::{BasicProvisioner, BmcProvisioner, Outcome, Provisioner};

use crate::model::{Event, Input, InvalidTransition, Node, Verb, next};
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
}

impl Conductor {
    pub fn new(store: Store, provisioner: Arc<dyn Provisioner>) -> Self {
        Self {
            store,
            provisioner,
            wake: Arc::new(Notify::new()),
            tick: Duration::from_secs(1),
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
        let reason = format!("operator requested {verb}");
        let node = self
            .store
            .record_transition(&node, step, input, &reason, None)
            .await?;
        tracing::info!(node = %node.spec.name, from = %from, to = %step.to, %verb, "provision state changed");
        self.wake.notify_one();
        Ok(node)
    }

    /// Advances every node in a transient state once. Returns how many nodes moved.
    pub async fn reconcile_once(&self) -> Result<usize, ConductorError> {
        let mut moved = 0;
        for node in self.store.list_nodes().await? {
            if !node.provision_state.is_transient() {
                continue;
            }
            let outcome = self.provisioner.advance(&node).await;
            let (event, reason, error) = match outcome {
                Outcome::Wait { reason } => {
                    tracing::debug!(node = %node.spec.name, state = %node.provision_state, %reason, "waiting");
                    continue;
                }
                Outcome::Done { reason } => (Event::Done, reason, None),
                Outcome::Waiting { reason } => (Event::Wait, reason, None),
                Outcome::Resumed { reason } => (Event::Resume, reason, None),
                Outcome::Failed { reason } => (Event::Fail, reason.clone(), Some(reason)),
            };
            let input = Input::Event(event);
            let step = next(node.provision_state, node.target_provision_state, input)?;
            match self
                .store
                .record_transition(&node, step, input, &reason, error.as_deref())
                .await
            {
                Ok(_) => {
                    tracing::info!(node = %node.spec.name, from = %node.provision_state, to = %step.to, %reason, "provision state changed");
                    moved += 1;
                }
                // An operator (abort) got there first; the next pass sees the new state.
                Err(StoreError::StateChanged { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(moved)
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
