//! One guarded driver per node's BMC, rebuilt when the node's BMC settings change, and the
//! power-state sync: a reconciler that reads every node's real power state with bounded
//! concurrency, records it (or the plain reason it could not) and logs drift.

use super::guard::{GuardPolicy, GuardedBmc};
use super::{Bmc, BmcError};
use crate::model::{BmcKind, BmcSpec, Node};
use crate::store::Store;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Builds a driver for a BMC spec: the real protocols, or a simulator in tests.
pub trait Connector: Send + Sync {
    fn connect(&self, spec: &BmcSpec) -> Result<Box<dyn Bmc>, BmcError>;
}

/// The real drivers: native IPMI lanplus and Redfish.
pub struct Drivers;

impl Connector for Drivers {
    fn connect(&self, spec: &BmcSpec) -> Result<Box<dyn Bmc>, BmcError> {
        Ok(match spec.kind {
            BmcKind::Ipmi => Box::new(super::ipmi::IpmiBmc::new(spec)?),
            BmcKind::Redfish => Box::new(super::redfish::RedfishBmc::new(spec)?),
        })
    }
}

/// A digest of everything that identifies a BMC connection (the password included, so a changed
/// password rebuilds the session), never the password itself.
fn fingerprint(spec: &BmcSpec) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [
        spec.endpoint_key().as_str(),
        spec.username.as_str(),
        spec.password.expose(),
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.update(
        format!(
            "{:?}{:?}{:?}",
            spec.kind, spec.cipher_suite, spec.tls_verify
        )
        .as_bytes(),
    );
    hash.finalize().into()
}

/// A node's guarded BMC and the fingerprint of the settings it was built from.
type Entry = ([u8; 32], Arc<GuardedBmc>);

pub struct Registry {
    connector: Arc<dyn Connector>,
    policy: GuardPolicy,
    by_node: Mutex<HashMap<Uuid, Entry>>,
}

impl Registry {
    pub fn new(connector: Arc<dyn Connector>, policy: GuardPolicy) -> Self {
        Self {
            connector,
            policy,
            by_node: Mutex::new(HashMap::new()),
        }
    }

    /// The node's guarded BMC, reusing the existing one (and its session) when nothing changed.
    pub async fn for_node(&self, node: &Node) -> Result<Arc<GuardedBmc>, BmcError> {
        let print = fingerprint(&node.spec.bmc);
        let mut map = self.by_node.lock().await;
        if let Some((existing, bmc)) = map.get(&node.uuid)
            && *existing == print
        {
            return Ok(Arc::clone(bmc));
        }
        let bmc = Arc::new(GuardedBmc::new(
            self.connector.connect(&node.spec.bmc)?,
            self.policy.clone(),
        ));
        map.insert(node.uuid, (print, Arc::clone(&bmc)));
        Ok(bmc)
    }
}

/// What one sync pass saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub checked: usize,
    pub unreachable: usize,
    pub drifted: Vec<String>,
}

/// Reads every node's power state, at most `concurrency` BMCs at a time.
pub async fn sync_power_once(
    store: &Store,
    registry: &Registry,
    concurrency: usize,
) -> Result<SyncReport, crate::store::StoreError> {
    let nodes = store.list_nodes().await?;
    let results: Vec<(Node, Result<super::PowerState, BmcError>)> = futures::stream::iter(nodes)
        .map(|node| async move {
            let observed = match registry.for_node(&node).await {
                Ok(bmc) => bmc.power_state().await,
                Err(err) => Err(err),
            };
            (node, observed)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut report = SyncReport::default();
    for (node, observed) in results {
        report.checked += 1;
        let recorded = match &observed {
            Ok(state) => {
                store
                    .record_power(node.uuid, Ok(&state.to_string()))
                    .await?
            }
            Err(err) => {
                report.unreachable += 1;
                if node.bmc_error.as_deref() != Some(&err.to_string()) {
                    tracing::warn!(node = %node.spec.name, reason = %err, "BMC unreachable");
                }
                store.record_power(node.uuid, Err(&err.to_string())).await?
            }
        };
        if let (Ok(now), Some(before)) = (&observed, recorded)
            && before != now.to_string()
        {
            tracing::info!(node = %node.spec.name, from = %before, to = %now, "power state drifted");
            report.drifted.push(node.spec.name.clone());
        }
    }
    Ok(report)
}

/// The background reconciler: a pass every `every` until `shutdown`.
pub async fn run_power_sync(
    store: Store,
    registry: Arc<Registry>,
    every: Duration,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    loop {
        if let Err(err) = sync_power_once(&store, &registry, concurrency).await {
            tracing::warn!(error = %err, "power sync pass failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
