//! `kiln serve` deploy-workflow options: default image, parallelism and the workflow's timeouts.

use crate::conductor::deploy::DeployLimits;
use clap::Args;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct DeployOptions {
    /// Image (catalog name, see `kiln image list`) for nodes whose inventory names none.
    #[arg(long, env = "KILN_DEFAULT_IMAGE")]
    pub default_image: Option<String>,
    /// Deploys running at once (power-on to OS up); the rest wait queued.
    #[arg(long, env = "KILN_DEPLOY_PARALLEL", default_value_t = 64)]
    pub deploy_parallel: usize,
    /// Seconds from power-on until the deploy agent must call back (Ironic: deploy_callback_timeout).
    #[arg(long, env = "KILN_DEPLOY_CALLBACK_TIMEOUT", default_value_t = 1800)]
    pub deploy_callback_timeout: u64,
    /// Seconds a working agent may stay silent before its deploy fails.
    #[arg(long, env = "KILN_DEPLOY_AGENT_TIMEOUT", default_value_t = 300)]
    pub deploy_agent_timeout: u64,
    /// Seconds from the reboot to disk until the OS must answer (SSH or Docker TLS port).
    #[arg(long, env = "KILN_DEPLOY_OS_TIMEOUT", default_value_t = 1800)]
    pub deploy_os_timeout: u64,
    /// Cleaning (on `provide` and after `undeploy`) boots the ramdisk and erases every disk's
    /// partition tables and signatures, like Ironic's erase_devices_metadata; else no clean steps.
    #[arg(long, env = "KILN_CLEAN_ERASE_METADATA")]
    pub clean_erase_metadata: bool,
    /// How often agents heartbeat, in seconds.
    #[arg(long, env = "KILN_AGENT_HEARTBEAT", default_value_t = 5)]
    pub agent_heartbeat: u64,
}

impl DeployOptions {
    pub fn limits(&self) -> DeployLimits {
        DeployLimits {
            callback_timeout: Duration::from_secs(self.deploy_callback_timeout),
            agent_silence: Duration::from_secs(self.deploy_agent_timeout),
            os_timeout: Duration::from_secs(self.deploy_os_timeout),
            parallel: self.deploy_parallel.max(1),
        }
    }
}
