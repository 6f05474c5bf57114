//! Redfish client: [`RedfishBmc`] drives one ComputerSystem over HTTPS (power, one-time or
//! persistent boot override), hand-written on reqwest because no crate fits (see CRATES.md).
//! One attempt per call: retries and backoff belong to the guard in front of every BMC.

mod client;
mod errors;
mod plan;
mod transport;

pub use transport::AuthMethod;

use crate::bmc::{Bmc, BmcError, BootDevice, BootSetting, PowerAction, PowerState};
use crate::model::{BmcKind, BmcSpec};
use serde_json::{Value, json};
use std::fmt;
use std::time::Duration;
use tokio::time::Instant;
use tracing::info;
use transport::Transport;

/// Tunables of the Redfish driver; [`Default`] suits real BMCs and sushy-tools alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedfishOptions {
    /// Bound on each HTTP request, connecting included.
    pub request_timeout: Duration,
    /// How long [`Bmc::power`] waits for the system to reach the requested state.
    pub power_wait: Duration,
    /// Pause between power-state reads while waiting.
    pub poll_interval: Duration,
}

impl Default for RedfishOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            power_wait: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// A Redfish BMC and the one system on it that a node maps to.
pub struct RedfishBmc {
    http: Transport,
    /// The configured system (normalised), or `None` to use the only member of `Systems`.
    configured: Option<String>,
    system: tokio::sync::OnceCell<String>,
    options: RedfishOptions,
}

impl fmt::Debug for RedfishBmc {
    // By hand: the credentials and the session token stay out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedfishBmc")
            .field("base", &self.http.base().as_str())
            .field("system", &self.system.get().or(self.configured.as_ref()))
            .field("auth", &self.http.auth_method())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RedfishBmc {
    /// A driver with default [`RedfishOptions`]. No I/O happens until the first call.
    pub fn new(spec: &BmcSpec) -> Result<Self, BmcError> {
        Self::with_options(spec, RedfishOptions::default())
    }

    pub fn with_options(spec: &BmcSpec, options: RedfishOptions) -> Result<Self, BmcError> {
        if spec.kind != BmcKind::Redfish {
            return Err(BmcError::Unsupported(
                "Redfish: this node's BMC is configured as IPMI".to_string(),
            ));
        }
        let configured = spec
            .system_id
            .as_deref()
            .map(plan::system_path)
            .transpose()
            .map_err(BmcError::Protocol)?;
        let http = Transport::new(
            &spec.address,
            spec.port,
            &spec.username,
            spec.password.clone(),
            &spec.tls_verify,
            options.request_timeout,
        )?;
        Ok(Self {
            http,
            configured,
            system: tokio::sync::OnceCell::new(),
            options,
        })
    }

    /// Session or basic auth, once the first call has found out which the BMC offers.
    pub fn auth_method(&self) -> Option<AuthMethod> {
        self.http.auth_method()
    }

    /// The system's path on the BMC: the configured one, or the only member of `Systems`.
    pub async fn system_path(&self) -> Result<&str, BmcError> {
        self.system
            .get_or_try_init(|| async {
                match &self.configured {
                    Some(path) => Ok(path.clone()),
                    None => self.discover().await,
                }
            })
            .await
            .map(String::as_str)
    }

    /// Closes the Redfish session, if one is open. The next call logs in again.
    pub async fn logout(&self) -> Result<(), BmcError> {
        self.http.logout().await
    }

    async fn discover(&self) -> Result<String, BmcError> {
        let (root, _) = self.http.get_json("/redfish/v1/").await?;
        let collection = root
            .pointer("/Systems/@odata.id")
            .and_then(Value::as_str)
            .unwrap_or("/redfish/v1/Systems")
            .to_string();
        let (systems, _) = self.http.get_json(&collection).await?;
        let members: Vec<&str> = systems
            .get("Members")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|m| m.get("@odata.id").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        match members.as_slice() {
            [only] => Ok(only.trim_end_matches('/').to_string()),
            [] => Err(BmcError::Protocol(format!(
                "the BMC lists no systems under {collection}"
            ))),
            many => {
                let shown: Vec<&str> = many.iter().take(5).copied().collect();
                let more = if many.len() > 5 { ", …" } else { "" };
                Err(BmcError::Protocol(format!(
                    "the BMC manages {} systems ({}{more}); set the node's system_id to one of them",
                    many.len(),
                    shown.join(", ")
                )))
            }
        }
    }

    async fn system(&self) -> Result<(String, Value, Option<String>), BmcError> {
        let path = self.system_path().await?.to_string();
        let (value, etag) = self.http.get_json(&path).await?;
        Ok((path, value, etag))
    }

    /// Polls until the system reports `want` or `deadline` passes.
    async fn wait_for(
        &self,
        path: &str,
        want: PowerState,
        deadline: Instant,
        after: &str,
    ) -> Result<(), BmcError> {
        loop {
            let (system, _) = self.http.get_json(path).await?;
            let now = plan::power_state(&system).map_err(BmcError::Protocol)?;
            if now == want {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BmcError::Protocol(format!(
                    "power is still {now} {:?} after requesting {after}",
                    self.options.power_wait
                )));
            }
            tokio::time::sleep(left.min(self.options.poll_interval)).await;
        }
    }
}

#[async_trait::async_trait]
impl Bmc for RedfishBmc {
    async fn power_state(&self) -> Result<PowerState, BmcError> {
        let (_, system, _) = self.system().await?;
        plan::power_state(&system).map_err(BmcError::Protocol)
    }

    async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        let deadline = Instant::now() + self.options.power_wait;
        let (path, system, _) = self.system().await?;
        let current = plan::power_state(&system).map_err(BmcError::Protocol)?;
        let allowed = plan::allowed_reset_types(&system);
        let steps =
            plan::reset_plan(action, current, allowed.as_deref()).map_err(BmcError::Unsupported)?;
        let target = system
            .pointer("/Actions/#ComputerSystem.Reset/target")
            .and_then(Value::as_str)
            .map_or_else(
                || format!("{path}/Actions/ComputerSystem.Reset"),
                str::to_string,
            );
        for step in steps {
            info!(system = %path, reset_type = step.reset_type, "redfish power request");
            let body = json!({ "ResetType": step.reset_type });
            self.http.post(&target, &body).await?;
            self.wait_for(&path, step.until, deadline, step.reset_type)
                .await?;
        }
        Ok(())
    }

    async fn set_boot_device(
        &self,
        device: BootDevice,
        persistent: bool,
        uefi: bool,
    ) -> Result<(), BmcError> {
        let (path, system, etag) = self.system().await?;
        let target = plan::boot_target(device);
        let allowed = system
            .pointer("/Boot/BootSourceOverrideTarget@Redfish.AllowableValues")
            .and_then(Value::as_array);
        if let Some(allowed) = allowed
            && !allowed.iter().any(|v| v.as_str() == Some(target))
        {
            return Err(BmcError::Unsupported(format!(
                "boot override target {target}"
            )));
        }
        let has_mode = system.pointer("/Boot/BootSourceOverrideMode").is_some();
        let body = plan::boot_patch(device, persistent, uefi, has_mode);
        info!(system = %path, target, persistent, "redfish boot override");
        self.http.patch(&path, &body, etag.as_deref()).await
    }

    async fn boot_device(&self) -> Result<BootSetting, BmcError> {
        let (_, system, _) = self.system().await?;
        plan::boot_setting(&system).map_err(BmcError::Protocol)
    }
}
