//! What the conductor asks of the hardware side for each transient state.

use crate::model::{Node, ProvisionState};

/// The answer for one node in one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to report yet; stay in the current state. The reason is shown to the operator.
    Wait { reason: String },
    /// The current step finished.
    Done { reason: String },
    /// The step now waits for the agent (→ wait-callback / clean-wait).
    Waiting { reason: String },
    /// The agent called back; the step continues.
    Resumed { reason: String },
    /// The step failed, with a plain reason.
    Failed { reason: String },
}

/// Hardware-facing work behind each transient state. The real drivers (BMC, boot, agent) plug in
/// here; tests use the same trait.
#[async_trait::async_trait]
pub trait Provisioner: Send + Sync {
    async fn advance(&self, node: &Node) -> Outcome;
}

/// The provisioner used until BMC and deploy drivers are configured: verification checks that the
/// inventory gave complete BMC credentials, cleaning has no steps (like Ironic with automated
/// cleaning disabled), and deploys wait with a reason saying why.
pub struct BasicProvisioner;

#[async_trait::async_trait]
impl Provisioner for BasicProvisioner {
    async fn advance(&self, node: &Node) -> Outcome {
        match node.provision_state {
            ProvisionState::Verifying => {
                if node.spec.bmc.username.is_empty() || node.spec.bmc.password.is_empty() {
                    Outcome::Failed {
                        reason: "BMC credentials are incomplete".into(),
                    }
                } else {
                    Outcome::Done {
                        reason: "BMC credentials present".into(),
                    }
                }
            }
            ProvisionState::Cleaning => Outcome::Done {
                reason: "no clean steps configured".into(),
            },
            ProvisionState::Deleting => Outcome::Done {
                reason: "nothing deployed to tear down".into(),
            },
            ProvisionState::Deploying | ProvisionState::WaitCallback => Outcome::Wait {
                reason: "no deploy driver configured on this conductor".into(),
            },
            _ => Outcome::Wait {
                reason: "nothing to do".into(),
            },
        }
    }
}

/// The provisioner with real BMCs: verification reads the power state through the node's BMC
/// (so wrong credentials or an unreachable BMC fail `manage` with a plain reason, as in Ironic),
/// tear-down powers the node off, cleaning has no steps yet, and deploys run the deploy workflow
/// ([`super::deploy`]) when the boot services are configured.
pub struct BmcProvisioner {
    pub registry: std::sync::Arc<crate::bmc::registry::Registry>,
    /// The deploy workflow; without it deploys wait with a reason (no boot services configured).
    pub deploy: Option<std::sync::Arc<super::deploy::DeployWorkflow>>,
}

#[async_trait::async_trait]
impl Provisioner for BmcProvisioner {
    async fn advance(&self, node: &Node) -> Outcome {
        use crate::bmc::{Bmc, PowerAction};
        if let Some(deploy) = &self.deploy {
            let runs_agent = match node.provision_state {
                ProvisionState::Deploying | ProvisionState::WaitCallback => true,
                ProvisionState::Cleaning | ProvisionState::CleanWait => deploy.clean_erase_metadata,
                _ => false,
            };
            if runs_agent {
                return deploy.advance(node).await;
            }
        }
        let bmc = match self.registry.for_node(node).await {
            Ok(bmc) => bmc,
            Err(err) => {
                return Outcome::Failed {
                    reason: err.to_string(),
                };
            }
        };
        match node.provision_state {
            ProvisionState::Verifying => match bmc.power_state().await {
                Ok(state) => Outcome::Done {
                    reason: format!("BMC answered: power {state}"),
                },
                Err(err) => Outcome::Failed {
                    reason: err.to_string(),
                },
            },
            ProvisionState::Deleting => match bmc.power(PowerAction::Off).await {
                Ok(()) => Outcome::Done {
                    reason: "powered off".into(),
                },
                Err(err) => Outcome::Failed {
                    reason: format!("cannot power off: {err}"),
                },
            },
            _ => BasicProvisioner.advance(node).await,
        }
    }
}
