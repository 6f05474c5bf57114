//! Baseboard management controllers: one [`Bmc`] trait, a driver per protocol (IPMI lanplus,
//! Redfish), and the guard every call goes through (timeouts, retries, per-BMC serialization,
//! circuit breaker) so a slow or broken BMC never stalls other nodes.

pub mod guard;
pub mod ipmi;
pub mod redfish;
pub mod registry;
pub mod vbmc;

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    On,
    Off,
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::On => "on",
            Self::Off => "off",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    On,
    /// Ask the OS to shut down (ACPI soft-off / GracefulShutdown).
    SoftOff,
    /// Cut power now (ForceOff).
    Off,
    /// Hard reset (ForceRestart); a node that is off is powered on.
    Reset,
    /// Power off then on (IPMI power cycle / Redfish PowerCycle).
    Cycle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    Pxe,
    Disk,
}

/// A boot-device setting as read back from the BMC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSetting {
    /// `None` when no override is set (the firmware's own order applies).
    pub device: Option<BootDevice>,
    pub persistent: bool,
    pub uefi: Option<bool>,
}

/// Why a BMC call failed, in words an operator can act on. Never contains a password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BmcError {
    #[error("wrong BMC credentials")]
    WrongCredentials,
    #[error("BMC did not answer within {0} ms")]
    Timeout(u64),
    #[error("BMC refused the connection")]
    Refused,
    #[error("BMC unreachable: {0}")]
    Unreachable(String),
    #[error("BMC protocol error: {0}")]
    Protocol(String),
    #[error("BMC does not support {0}")]
    Unsupported(String),
    #[error("BMC marked unreachable after repeated failures (last: {0}); retrying later")]
    CircuitOpen(String),
}

/// What Kiln needs from any BMC. Implementations do one attempt per call; the guard adds
/// timeouts, retries, serialization and the circuit breaker.
#[async_trait::async_trait]
pub trait Bmc: Send + Sync {
    async fn power_state(&self) -> Result<PowerState, BmcError>;
    async fn power(&self, action: PowerAction) -> Result<(), BmcError>;
    async fn set_boot_device(
        &self,
        device: BootDevice,
        persistent: bool,
        uefi: bool,
    ) -> Result<(), BmcError>;
    async fn boot_device(&self) -> Result<BootSetting, BmcError>;
}
