//! IPMI over LAN (RMCP+ / "lanplus") client, spoken natively: no `ipmitool` process. One session
//! per BMC is kept and reused across calls, reopened transparently when it goes stale or the BMC
//! forgets it (a BMC reboot, an idle timeout), and closed on drop.

pub(crate) mod commands;
pub(crate) mod crypto;
pub(crate) mod rakp;
pub(crate) mod rmcp;
mod session;

pub use crypto::CipherSuite;

use super::{Bmc, BmcError, BootDevice, BootSetting, PowerAction, PowerState};
use crate::model::{BmcSpec, Secret};
use commands::{ChassisControl, Request, Response};
use session::{Session, Timing};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Tunables; the defaults suit real BMCs on a LAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpmiOptions {
    /// How long to wait for each reply before resending.
    pub timeout: Duration,
    /// How many times a request is resent when no reply comes (lost datagrams).
    pub retransmits: u32,
    /// How long a power command may take to show in the chassis status.
    pub power_wait: Duration,
    /// How often the chassis status is read while waiting.
    pub poll_interval: Duration,
    /// A session idle this long is replaced before use: BMCs drop idle sessions silently
    /// (ipmi_sim after 30 s, the spec's default is 60 s), which would cost a full timeout.
    pub idle_reopen: Duration,
}

impl Default for IpmiOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            retransmits: 2,
            power_wait: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            idle_reopen: Duration::from_secs(20),
        }
    }
}

/// A BMC reached over IPMI v2.0 lanplus. `Debug` never shows the password.
pub struct IpmiBmc {
    address: String,
    port: u16,
    username: String,
    password: Secret,
    suite: CipherSuite,
    options: IpmiOptions,
    session: Mutex<Option<Session>>,
    logins: AtomicU64,
}

impl fmt::Debug for IpmiBmc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpmiBmc")
            .field("address", &self.address)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("cipher_suite", &self.suite.id())
            .finish_non_exhaustive()
    }
}

impl IpmiBmc {
    /// A client for `spec` with default options; cipher suite 3 unless the spec names one.
    pub fn new(spec: &BmcSpec) -> Result<Self, BmcError> {
        Self::with_options(spec, IpmiOptions::default())
    }

    /// Checks what can be checked without the network: the cipher suite and credential lengths.
    pub fn with_options(spec: &BmcSpec, options: IpmiOptions) -> Result<Self, BmcError> {
        let id = spec.cipher_suite.unwrap_or(3);
        let suite = CipherSuite::from_id(id).ok_or_else(|| {
            BmcError::Unsupported(format!("IPMI cipher suite {id} (Kiln speaks 3 and 17)"))
        })?;
        if spec.username.len() > 16 {
            return Err(BmcError::Unsupported(
                "IPMI user names longer than 16 bytes".into(),
            ));
        }
        if spec.password.expose().len() > 20 {
            return Err(BmcError::Unsupported(
                "IPMI passwords longer than 20 bytes".into(),
            ));
        }
        Ok(Self {
            address: spec.address.clone(),
            port: spec.port,
            username: spec.username.clone(),
            password: spec.password.clone(),
            suite,
            options,
            session: Mutex::new(None),
            logins: AtomicU64::new(0),
        })
    }

    /// How many sessions this client has opened so far (one per login).
    pub fn logins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }

    /// Closes the session, if one is open; the next call opens a new one.
    pub async fn close(&self) {
        if let Some(session) = self.session.lock().await.take() {
            session.close().await;
        }
    }

    fn timing(&self) -> Timing {
        Timing {
            timeout: self.options.timeout,
            retransmits: self.options.retransmits,
        }
    }

    async fn login(&self) -> Result<Session, BmcError> {
        let addr = resolve(&self.address, self.port).await?;
        let session = Session::open(
            addr,
            &self.username,
            self.password.expose().as_bytes(),
            self.suite,
            self.timing(),
        )
        .await?;
        self.logins.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(bmc = %self.address, port = self.port, "IPMI session opened");
        Ok(session)
    }

    /// Sends one request over the shared session, logging in first when needed. A reused session
    /// that fails is assumed lost and replaced once; a fresh one that fails reports the error.
    async fn call(&self, req: &Request) -> Result<Response, BmcError> {
        let mut slot = self.session.lock().await;
        if slot
            .as_ref()
            .is_some_and(|s| s.idle() > self.options.idle_reopen)
        {
            *slot = None;
        }
        loop {
            let reused = slot.is_some();
            let session = match slot.as_mut() {
                Some(session) => session,
                None => slot.insert(self.login().await?),
            };
            match session.request(req).await {
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    *slot = None;
                    if !reused {
                        return Err(e);
                    }
                    tracing::debug!(bmc = %self.address, error = %e, "IPMI session lost; logging in again");
                }
            }
        }
    }

    /// [`Self::call`], then the completion code checked; `what` names the action in errors.
    async fn command(&self, req: Request, what: &str) -> Result<Vec<u8>, BmcError> {
        commands::check(self.call(&req).await?, what)
    }

    /// Reads the chassis status until it shows `want`, for at most `power_wait`.
    async fn wait_for(&self, want: PowerState) -> Result<(), BmcError> {
        let started = Instant::now();
        loop {
            if self.power_state().await? == want {
                return Ok(());
            }
            if started.elapsed() >= self.options.power_wait {
                tracing::warn!(bmc = %self.address, %want, "power state did not change in time");
                return Err(BmcError::Timeout(started.elapsed().as_millis() as u64));
            }
            tokio::time::sleep(self.options.poll_interval).await;
        }
    }
}

async fn resolve(address: &str, port: u16) -> Result<SocketAddr, BmcError> {
    let mut addrs = tokio::net::lookup_host((address, port))
        .await
        .map_err(|e| BmcError::Unreachable(format!("cannot resolve {address}: {e}")))?;
    addrs
        .next()
        .ok_or_else(|| BmcError::Unreachable(format!("{address} has no address")))
}

/// The chassis command for `action` given the current state, and the state to wait for; `None`
/// when there is nothing to do. Reset and cycle of a node that is off power it on: IPMI refuses
/// to cycle a powered-off chassis.
fn plan(action: PowerAction, now: PowerState) -> Option<(ChassisControl, PowerState)> {
    use PowerState::{Off, On};
    match (action, now) {
        (PowerAction::On, On) | (PowerAction::Off | PowerAction::SoftOff, Off) => None,
        (PowerAction::On | PowerAction::Reset | PowerAction::Cycle, Off) => {
            Some((ChassisControl::PowerUp, On))
        }
        (PowerAction::Off, On) => Some((ChassisControl::PowerDown, Off)),
        (PowerAction::SoftOff, On) => Some((ChassisControl::SoftShutdown, Off)),
        (PowerAction::Reset, On) => Some((ChassisControl::HardReset, On)),
        (PowerAction::Cycle, On) => Some((ChassisControl::PowerCycle, On)),
    }
}

#[async_trait::async_trait]
impl Bmc for IpmiBmc {
    async fn power_state(&self) -> Result<PowerState, BmcError> {
        let data = self
            .command(commands::get_chassis_status(), "chassis status")
            .await?;
        Ok(commands::power_state(&data)?)
    }

    async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        let Some((control, want)) = plan(action, self.power_state().await?) else {
            return Ok(());
        };
        self.command(commands::chassis_control(control), "the power command")
            .await?;
        self.wait_for(want).await
    }

    /// Follows ipmitool's `chassis bootdev`: mark "set in progress" when the BMC supports it,
    /// acknowledge the boot info, write the flags, then mark the set complete.
    async fn set_boot_device(
        &self,
        device: BootDevice,
        persistent: bool,
        uefi: bool,
    ) -> Result<(), BmcError> {
        use commands::{
            PARAM_BOOT_FLAGS, PARAM_BOOT_INFO_ACK, PARAM_SET_IN_PROGRESS, set_boot_option,
        };
        let begin = self
            .call(&set_boot_option(PARAM_SET_IN_PROGRESS, &[0x01]))
            .await?;
        let in_progress = begin.completion == 0;
        if !in_progress {
            // ipmi_sim and some BMCs do not implement parameter 0; the write works without it.
            tracing::debug!(
                completion = begin.completion,
                "BMC skipped boot options set-in-progress"
            );
        }
        let ack = self
            .call(&set_boot_option(PARAM_BOOT_INFO_ACK, &[0x01, 0x01]))
            .await?;
        if ack.completion != 0 {
            tracing::debug!(
                completion = ack.completion,
                "BMC refused boot info acknowledge"
            );
        }
        let flags = commands::boot_flags(device, persistent, uefi);
        let written = self
            .command(
                set_boot_option(PARAM_BOOT_FLAGS, &flags),
                "setting the boot device",
            )
            .await;
        // Mark the set complete even when the write failed, so the BMC does not stay locked;
        // the write's own error is the one to report.
        let completed = if in_progress {
            let done = set_boot_option(PARAM_SET_IN_PROGRESS, &[0x00]);
            self.call(&done).await.map(drop)
        } else {
            Ok(())
        };
        written?;
        completed
    }

    async fn boot_device(&self) -> Result<BootSetting, BmcError> {
        let data = self
            .command(commands::get_boot_flags(), "reading the boot device")
            .await?;
        Ok(commands::parse_boot_flags(&data)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BmcKind;

    fn spec(suite: Option<u8>, username: &str, password: &str) -> BmcSpec {
        BmcSpec {
            kind: BmcKind::Ipmi,
            address: "127.0.0.1".into(),
            port: 623,
            username: username.into(),
            password: Secret::new(password),
            system_id: None,
            cipher_suite: suite,
            tls_verify: Default::default(),
        }
    }

    #[test]
    fn power_actions_map_to_chassis_commands() {
        use ChassisControl::*;
        use PowerState::{Off, On};
        let cases = [
            (PowerAction::On, Off, Some((PowerUp, On))),
            (PowerAction::On, On, None),
            (PowerAction::Off, On, Some((PowerDown, Off))),
            (PowerAction::Off, Off, None),
            (PowerAction::SoftOff, On, Some((SoftShutdown, Off))),
            (PowerAction::SoftOff, Off, None),
            (PowerAction::Reset, On, Some((HardReset, On))),
            (PowerAction::Reset, Off, Some((PowerUp, On))),
            (PowerAction::Cycle, On, Some((PowerCycle, On))),
            (PowerAction::Cycle, Off, Some((PowerUp, On))),
        ];
        for (action, now, want) in cases {
            assert_eq!(plan(action, now), want, "{action:?} when {now}");
        }
    }

    #[test]
    fn construction_checks_suite_and_lengths_and_hides_the_password() {
        let bmc = IpmiBmc::new(&spec(None, "admin", "s3cret-pw")).unwrap();
        assert_eq!(bmc.suite, CipherSuite::Three);
        assert!(!format!("{bmc:?}").contains("s3cret-pw"));
        assert_eq!(
            IpmiBmc::new(&spec(Some(17), "admin", "pw")).unwrap().suite,
            CipherSuite::Seventeen
        );
        let cases = [
            (
                spec(Some(1), "admin", "pw"),
                "IPMI cipher suite 1 (Kiln speaks 3 and 17)",
            ),
            (
                spec(None, &"u".repeat(17), "pw"),
                "IPMI user names longer than 16 bytes",
            ),
            (
                spec(None, "admin", &"p".repeat(21)),
                "IPMI passwords longer than 20 bytes",
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(
                IpmiBmc::new(&spec).unwrap_err(),
                BmcError::Unsupported(want.into())
            );
        }
    }
}
