//! The deploy workflow: PXE + power cycle → agent calls back → image written → boot from disk →
//! the OS answers → `active`. Cleaning with `--clean-erase-metadata` rides the same rails: PXE +
//! power cycle → agent calls back → wipe command → power off → `available` (Ironic's
//! `erase_devices_metadata` step, run on `provide` and after `undeploy`).
//!
//! [`decide`] is the whole policy as a pure function of the node's state, its stored deploy record
//! and the clock, tested step by step; [`DeployWorkflow::advance`] carries a decision out (BMC
//! calls, store writes) and answers the conductor with an [`Outcome`]. Every step is idempotent
//! and keyed on stored data, so a daemon restarted mid-deploy resumes where the record says.

use super::Outcome;
use crate::agent::protocol::{Action, DeployCommand};
use crate::bmc::registry::Registry;
use crate::bmc::{Bmc, BootDevice, PowerAction};
use crate::images::ImageCatalog;
use crate::model::{Node, ProvisionState};
use crate::store::{DeployStep, Deployment, Store, now_ms};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Limits of the deploy workflow (Ironic: `deploy_callback_timeout`, agent heartbeat timeout).
#[derive(Clone, Debug)]
pub struct DeployLimits {
    /// From power-on until the agent first calls back.
    pub callback_timeout: Duration,
    /// Longest silence from a working agent before the deploy fails.
    pub agent_silence: Duration,
    /// From the reboot to disk until the OS answers on one of `os_ports`.
    pub os_timeout: Duration,
    /// Deploys past `queued` at once.
    pub parallel: usize,
}

impl Default for DeployLimits {
    fn default() -> Self {
        Self {
            callback_timeout: Duration::from_secs(1800),
            agent_silence: Duration::from_secs(300),
            os_timeout: Duration::from_secs(1800),
            parallel: 64,
        }
    }
}

/// What to do for one node in one conductor pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No record: resolve the image and queue the deploy.
    Start,
    /// Queued and a slot is free: clear the old token, one-time PXE, power cycle.
    Launch,
    /// `deploying` with the ramdisk booting: move to `wait-callback`.
    EnterWait,
    /// The agent called back: offer the deploy command, back to `deploying`.
    SendDeploy,
    /// The agent called back during cleaning: offer the wipe command, back to `cleaning`.
    SendWipe,
    /// The wipe succeeded: power off, cleaning done.
    PowerOffDone,
    /// A record ahead of the state (a restart between the two writes): resume `deploying`.
    Resume,
    /// The agent reported success: boot device disk, reboot.
    BootDisk,
    /// Try connecting to the node's OS.
    ProbeOs,
    Wait(String),
    Fail(String),
}

fn secs(ms: i64) -> i64 {
    ms.max(0) / 1000
}

/// The deploy policy. `slot_free`: fewer than `limits.parallel` deploys hold a slot.
pub fn decide(
    state: ProvisionState,
    record: Option<&Deployment>,
    now: i64,
    limits: &DeployLimits,
    slot_free: bool,
) -> Decision {
    let Some(record) = record else {
        return Decision::Start;
    };
    let waiting = matches!(
        state,
        ProvisionState::WaitCallback | ProvisionState::CleanWait
    );
    let cleaning = matches!(state, ProvisionState::Cleaning | ProvisionState::CleanWait);
    let elapsed = now - record.step_started_at;
    let over = |limit: Duration| elapsed > limit.as_millis() as i64;
    match record.step {
        DeployStep::Queued if slot_free => Decision::Launch,
        DeployStep::Queued => Decision::Wait(format!(
            "queued: {} deploys are running (limit --deploy-parallel)",
            limits.parallel
        )),
        DeployStep::WaitAgent if !waiting => Decision::EnterWait,
        DeployStep::WaitAgent if record.agent_heard_since_step() && cleaning => Decision::SendWipe,
        DeployStep::WaitAgent if record.agent_heard_since_step() => Decision::SendDeploy,
        DeployStep::WaitAgent if over(limits.callback_timeout) => Decision::Fail(format!(
            "the deploy agent did not call back within {} s of power-on",
            limits.callback_timeout.as_secs()
        )),
        DeployStep::WaitAgent => Decision::Wait(format!(
            "waiting for the deploy agent to call back ({} s since power-on)",
            secs(elapsed)
        )),
        DeployStep::WriteImage | DeployStep::WaitOs | DeployStep::Wipe if waiting => {
            Decision::Resume
        }
        DeployStep::WriteImage | DeployStep::Wipe => match record.current_result() {
            Some(result) if result.ok && record.step == DeployStep::Wipe => Decision::PowerOffDone,
            Some(result) if result.ok => Decision::BootDisk,
            Some(result) => Decision::Fail(format!("agent: {}", result.detail)),
            None => {
                let last = record
                    .agent_seen_at
                    .unwrap_or(record.step_started_at)
                    .max(record.step_started_at);
                let silent = now - last;
                if silent > limits.agent_silence.as_millis() as i64 {
                    Decision::Fail(format!(
                        "the agent has been silent for {} s while running its {} command",
                        secs(silent),
                        record.step
                    ))
                } else if record.step == DeployStep::Wipe {
                    Decision::Wait("agent is erasing disk metadata".into())
                } else {
                    Decision::Wait(match &record.progress {
                        Some(p) => describe_progress(p.done, p.total, p.rate),
                        None => "agent is starting the image write".into(),
                    })
                }
            }
        },
        DeployStep::WaitOs if over(limits.os_timeout) => Decision::Fail(format!(
            "the deployed OS did not answer within {} s of the reboot",
            limits.os_timeout.as_secs()
        )),
        DeployStep::WaitOs => Decision::ProbeOs,
    }
}

/// "writing image 45% (1.2 GiB of 2.5 GiB, 80.1 MB/s)".
pub fn describe_progress(done: u64, total: Option<u64>, rate: f64) -> String {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    match total.filter(|t| *t > 0) {
        Some(total) => format!(
            "writing image {}% ({:.1} GiB of {:.1} GiB, {:.1} MB/s)",
            done.saturating_mul(100) / total,
            gib(done),
            gib(total),
            rate / 1e6
        ),
        None => format!(
            "writing image ({:.1} GiB, {:.1} MB/s)",
            gib(done),
            rate / 1e6
        ),
    }
}

/// Carries out [`decide`]'s decisions.
pub struct DeployWorkflow {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub images: ImageCatalog,
    pub limits: DeployLimits,
    /// Ports that prove the deployed OS is up (Docker TLS, SSH).
    pub os_ports: Vec<u16>,
    /// Cleaning boots the ramdisk and erases disk metadata (else cleaning has no steps).
    pub clean_erase_metadata: bool,
}

impl DeployWorkflow {
    pub async fn advance(&self, node: &Node) -> Outcome {
        match self.try_advance(node).await {
            Ok(outcome) => outcome,
            Err(reason) => Outcome::Failed { reason },
        }
    }

    async fn try_advance(&self, node: &Node) -> Result<Outcome, String> {
        let store_err = |e: crate::store::StoreError| e.to_string();
        let record = self.store.deployment(node.uuid).await.map_err(store_err)?;
        let slot_free = match record.as_ref().map(|r| r.step) {
            Some(DeployStep::Queued) => {
                self.store.running_deployments().await.map_err(store_err)? < self.limits.parallel
            }
            _ => true,
        };
        let decision = decide(
            node.provision_state,
            record.as_ref(),
            now_ms(),
            &self.limits,
            slot_free,
        );
        let uuid = node.uuid;
        let uefi = node.spec.boot_mode == crate::model::BootMode::Uefi;
        match decision {
            Decision::Start => {
                let cleaning = matches!(
                    node.provision_state,
                    ProvisionState::Cleaning | ProvisionState::CleanWait
                );
                let image = if cleaning {
                    // Cleaning writes no image: the record only tracks the agent.
                    crate::store::DeployImage {
                        url: String::new(),
                        checksum: None,
                        raw_size: None,
                        ready_ports: Vec::new(),
                    }
                } else {
                    self.images
                        .resolve(node.spec.image.as_ref())
                        .await
                        .map_err(|e| e.to_string())?
                };
                self.store
                    .start_deployment(uuid, DeployStep::Queued, &image)
                    .await
                    .map_err(store_err)?;
                Ok(Outcome::Wait {
                    reason: if cleaning {
                        "cleaning queued".into()
                    } else {
                        format!("deploy of {} queued", image.url)
                    },
                })
            }
            Decision::Launch => {
                // The previous agent (if any) must not act on this attempt.
                self.store
                    .clear_agent_token(uuid)
                    .await
                    .map_err(store_err)?;
                let bmc = self
                    .registry
                    .for_node(node)
                    .await
                    .map_err(|e| e.to_string())?;
                bmc.set_boot_device(BootDevice::Pxe, false, uefi)
                    .await
                    .map_err(|e| format!("cannot set boot device PXE: {e}"))?;
                bmc.power(PowerAction::Reset)
                    .await
                    .map_err(|e| format!("cannot power on: {e}"))?;
                let _ = self
                    .store
                    .record_event(
                        uuid,
                        "power",
                        "one-time PXE set; power on/reset to boot the deploy ramdisk",
                    )
                    .await;
                self.store
                    .set_deploy_step(uuid, DeployStep::WaitAgent, None)
                    .await
                    .map_err(store_err)?;
                Ok(Outcome::Waiting {
                    reason: "powered on into the deploy ramdisk".into(),
                })
            }
            Decision::EnterWait => Ok(Outcome::Waiting {
                reason: "the deploy ramdisk is booting".into(),
            }),
            Decision::SendDeploy => {
                let record = record.ok_or("deploy record vanished")?;
                let command = Action::Deploy(DeployCommand {
                    image_url: record.image.url.clone(),
                    checksum: record.image.checksum.clone(),
                    image_size: record.image.raw_size,
                    root_device: node.spec.properties.root_device.clone(),
                    config_drive: Vec::new(),
                });
                self.store
                    .set_deploy_step(uuid, DeployStep::WriteImage, Some(&command))
                    .await
                    .map_err(store_err)?;
                Ok(Outcome::Resumed {
                    reason: format!(
                        "agent called back; deploy command sent ({})",
                        record.image.url
                    ),
                })
            }
            Decision::SendWipe => {
                self.store
                    .set_deploy_step(uuid, DeployStep::Wipe, Some(&Action::Wipe))
                    .await
                    .map_err(store_err)?;
                Ok(Outcome::Resumed {
                    reason: "agent called back; erasing disk metadata".into(),
                })
            }
            Decision::PowerOffDone => {
                let bmc = self
                    .registry
                    .for_node(node)
                    .await
                    .map_err(|e| e.to_string())?;
                bmc.power(PowerAction::Off)
                    .await
                    .map_err(|e| format!("cannot power off: {e}"))?;
                self.store
                    .clear_agent_token(uuid)
                    .await
                    .map_err(store_err)?;
                self.store.clear_deployment(uuid).await.map_err(store_err)?;
                let _ = self
                    .store
                    .record_event(uuid, "power", "disk metadata erased; powered off")
                    .await;
                Ok(Outcome::Done {
                    reason: "disk metadata erased; powered off".into(),
                })
            }
            Decision::Resume => Ok(Outcome::Resumed {
                reason: "resuming the deploy".into(),
            }),
            Decision::BootDisk => {
                let bmc = self
                    .registry
                    .for_node(node)
                    .await
                    .map_err(|e| e.to_string())?;
                bmc.set_boot_device(BootDevice::Disk, true, uefi)
                    .await
                    .map_err(|e| format!("cannot set boot device disk: {e}"))?;
                bmc.power(PowerAction::Reset)
                    .await
                    .map_err(|e| format!("cannot reboot: {e}"))?;
                let _ = self
                    .store
                    .record_event(uuid, "power", "image written; boot device disk; rebooted")
                    .await;
                self.store
                    .set_deploy_step(uuid, DeployStep::WaitOs, None)
                    .await
                    .map_err(store_err)?;
                Ok(Outcome::Wait {
                    reason: "rebooting into the deployed OS".into(),
                })
            }
            Decision::ProbeOs => {
                let Some(ip) = node_address(node, record.as_ref()) else {
                    return Err(
                        "no address known for the node (no inventory address, no agent call)"
                            .into(),
                    );
                };
                let ports = match record.as_ref().map(|r| &r.image.ready_ports) {
                    Some(ports) if !ports.is_empty() => ports.clone(),
                    _ => self.os_ports.clone(),
                };
                match self.probe(ip, &ports).await {
                    Some(port) => {
                        self.store
                            .clear_agent_token(uuid)
                            .await
                            .map_err(store_err)?;
                        let _ = self
                            .store
                            .record_event(
                                uuid,
                                "os",
                                &format!("deployed OS answers on {ip}:{port}"),
                            )
                            .await;
                        Ok(Outcome::Done {
                            reason: format!("deployed OS answers on {ip}:{port}"),
                        })
                    }
                    None => Ok(Outcome::Wait {
                        reason: format!("waiting for the deployed OS at {ip}"),
                    }),
                }
            }
            Decision::Wait(reason) => Ok(Outcome::Wait { reason }),
            Decision::Fail(reason) => Err(reason),
        }
    }

    /// The first of `ports` accepting a TCP connection within a second.
    async fn probe(&self, ip: IpAddr, ports: &[u16]) -> Option<u16> {
        for port in ports {
            let addr = SocketAddr::new(ip, *port);
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                    .await
            {
                return Some(*port);
            }
        }
        None
    }
}

/// The node's address on the provisioning network: the inventory's, else where its agent called from.
pub fn node_address(node: &Node, record: Option<&Deployment>) -> Option<IpAddr> {
    node.spec
        .network
        .as_ref()
        .map(|n| IpAddr::V4(n.address))
        .or_else(|| record?.agent_address.as_deref()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::protocol::{CommandResult, ProgressReport};
    use crate::store::DeployImage;
    use ProvisionState::{Deploying, WaitCallback};

    fn record(step: DeployStep) -> Deployment {
        Deployment {
            node_uuid: uuid::Uuid::nil(),
            step,
            step_started_at: 1_000_000,
            image: DeployImage {
                url: "http://k/i.raw.zst".into(),
                checksum: None,
                raw_size: None,
                ready_ports: Vec::new(),
            },
            command_id: 0,
            command: None,
            result: None,
            agent_address: None,
            agent_seen_at: None,
            progress: None,
            progress_at: None,
        }
    }

    fn limits() -> DeployLimits {
        DeployLimits {
            callback_timeout: Duration::from_secs(60),
            agent_silence: Duration::from_secs(30),
            os_timeout: Duration::from_secs(120),
            parallel: 2,
        }
    }

    const T0: i64 = 1_000_000;

    #[test]
    fn no_record_starts_in_either_state() {
        for state in [Deploying, WaitCallback] {
            assert_eq!(decide(state, None, T0, &limits(), true), Decision::Start);
        }
    }

    #[test]
    fn queued_waits_for_a_slot() {
        let r = record(DeployStep::Queued);
        assert_eq!(
            decide(Deploying, Some(&r), T0, &limits(), true),
            Decision::Launch
        );
        assert!(matches!(
            decide(Deploying, Some(&r), T0, &limits(), false),
            Decision::Wait(reason) if reason.contains("queued")
        ));
    }

    #[test]
    fn waiting_for_the_agent() {
        let mut r = record(DeployStep::WaitAgent);
        assert_eq!(
            decide(Deploying, Some(&r), T0, &limits(), true),
            Decision::EnterWait
        );
        assert!(matches!(
            decide(WaitCallback, Some(&r), T0 + 5_000, &limits(), true),
            Decision::Wait(_)
        ));
        assert!(matches!(
            decide(WaitCallback, Some(&r), T0 + 61_000, &limits(), true),
            Decision::Fail(reason) if reason.contains("did not call back within 60 s")
        ));
        // A heartbeat from before this step (the previous attempt's agent) does not count.
        r.agent_seen_at = Some(T0 - 1);
        assert!(matches!(
            decide(WaitCallback, Some(&r), T0 + 5_000, &limits(), true),
            Decision::Wait(_)
        ));
        r.agent_seen_at = Some(T0 + 4_000);
        assert_eq!(
            decide(WaitCallback, Some(&r), T0 + 5_000, &limits(), true),
            Decision::SendDeploy
        );
        // Even past the timeout, a callback wins.
        assert_eq!(
            decide(WaitCallback, Some(&r), T0 + 99_000, &limits(), true),
            Decision::SendDeploy
        );
    }

    #[test]
    fn writing_the_image() {
        let mut r = record(DeployStep::WriteImage);
        r.command_id = 3;
        assert_eq!(
            decide(WaitCallback, Some(&r), T0, &limits(), true),
            Decision::Resume
        );
        assert!(matches!(
            decide(Deploying, Some(&r), T0 + 1_000, &limits(), true),
            Decision::Wait(_)
        ));
        r.progress = Some(ProgressReport {
            command_id: 3,
            done: 1 << 30,
            total: Some(4 << 30),
            rate: 80e6,
        });
        r.agent_seen_at = Some(T0 + 20_000);
        assert!(matches!(
            decide(Deploying, Some(&r), T0 + 40_000, &limits(), true),
            Decision::Wait(reason) if reason.contains("25%")
        ));
        assert!(matches!(
            decide(Deploying, Some(&r), T0 + 51_000, &limits(), true),
            Decision::Fail(reason) if reason.contains("silent for 31 s")
        ));
        // A result for an older command is ignored; the current one decides.
        r.agent_seen_at = Some(T0 + 50_000);
        r.result = Some(CommandResult {
            command_id: 2,
            ok: true,
            detail: String::new(),
        });
        assert!(matches!(
            decide(Deploying, Some(&r), T0 + 51_000, &limits(), true),
            Decision::Wait(_)
        ));
        r.result = Some(CommandResult {
            command_id: 3,
            ok: false,
            detail: "checksum mismatch: expected sha256:aa, got sha256:bb".into(),
        });
        assert!(matches!(
            decide(Deploying, Some(&r), T0 + 51_000, &limits(), true),
            Decision::Fail(reason) if reason == "agent: checksum mismatch: expected sha256:aa, got sha256:bb"
        ));
        r.result = Some(CommandResult {
            command_id: 3,
            ok: true,
            detail: "written".into(),
        });
        assert_eq!(
            decide(Deploying, Some(&r), T0 + 51_000, &limits(), true),
            Decision::BootDisk
        );
    }

    #[test]
    fn waiting_for_the_os() {
        let r = record(DeployStep::WaitOs);
        assert_eq!(
            decide(WaitCallback, Some(&r), T0, &limits(), true),
            Decision::Resume
        );
        assert_eq!(
            decide(Deploying, Some(&r), T0 + 119_000, &limits(), true),
            Decision::ProbeOs
        );
        assert!(matches!(
            decide(Deploying, Some(&r), T0 + 121_000, &limits(), true),
            Decision::Fail(reason) if reason.contains("did not answer within 120 s")
        ));
    }

    #[test]
    fn every_step_and_state_has_a_decision_that_fits_the_state_machine() {
        // Outcomes only the state allows: `deploying` may wait/finish, `wait-callback` may resume.
        for step in DeployStep::ALL {
            for state in [
                Deploying,
                WaitCallback,
                ProvisionState::Cleaning,
                ProvisionState::CleanWait,
            ] {
                for now in [T0, T0 + 10_000_000] {
                    for slot in [false, true] {
                        let d = decide(state, Some(&record(step)), now, &limits(), slot);
                        match (&d, state) {
                            (
                                Decision::EnterWait | Decision::BootDisk | Decision::ProbeOs,
                                WaitCallback,
                            ) => {
                                panic!("{d:?} from wait-callback at {step}")
                            }
                            (
                                Decision::SendDeploy | Decision::SendWipe | Decision::Resume,
                                Deploying,
                            ) => {
                                panic!("{d:?} from deploying at {step}")
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn cleaning_wipes_then_powers_off() {
        use ProvisionState::{CleanWait, Cleaning};
        let mut r = record(DeployStep::WaitAgent);
        assert_eq!(
            decide(Cleaning, Some(&r), T0, &limits(), true),
            Decision::EnterWait
        );
        r.agent_seen_at = Some(T0 + 1);
        assert_eq!(
            decide(CleanWait, Some(&r), T0 + 2, &limits(), true),
            Decision::SendWipe
        );
        // The same record while deploying sends the image instead.
        assert_eq!(
            decide(WaitCallback, Some(&r), T0 + 2, &limits(), true),
            Decision::SendDeploy
        );
        let mut r = record(DeployStep::Wipe);
        r.command_id = 1;
        r.agent_seen_at = Some(T0);
        assert_eq!(
            decide(CleanWait, Some(&r), T0, &limits(), true),
            Decision::Resume
        );
        assert!(matches!(
            decide(Cleaning, Some(&r), T0 + 1_000, &limits(), true),
            Decision::Wait(reason) if reason.contains("erasing")
        ));
        r.result = Some(CommandResult {
            command_id: 1,
            ok: true,
            detail: "erased".into(),
        });
        assert_eq!(
            decide(Cleaning, Some(&r), T0 + 1_000, &limits(), true),
            Decision::PowerOffDone
        );
        r.result = Some(CommandResult {
            command_id: 1,
            ok: false,
            detail: "cannot open /dev/vda".into(),
        });
        assert!(matches!(
            decide(Cleaning, Some(&r), T0 + 1_000, &limits(), true),
            Decision::Fail(reason) if reason == "agent: cannot open /dev/vda"
        ));
    }

    #[test]
    fn progress_text() {
        assert_eq!(
            describe_progress(1 << 30, Some(2 << 30), 123.4e6),
            "writing image 50% (1.0 GiB of 2.0 GiB, 123.4 MB/s)"
        );
        assert_eq!(
            describe_progress(0, None, 0.0),
            "writing image (0.0 GiB, 0.0 MB/s)"
        );
    }
}
