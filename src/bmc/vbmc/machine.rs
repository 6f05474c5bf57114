//! What a virtual BMC controls: a machine with power and a boot device. `kiln vbmc` serves QEMU
//! VMs ([`super::vm::VirtualMachine`]) through it; the rack simulator (`kiln sim`) serves its
//! simulated servers through the same Redfish and IPMI faces.

use crate::bmc::{BmcError, BootDevice, BootSetting, PowerState};
use async_trait::async_trait;
use std::time::Duration;

#[async_trait]
pub trait Machine: Send + Sync {
    /// The Redfish system id and the name in logs.
    fn name(&self) -> &str;
    /// Reported as the boot override mode (UEFI or Legacy).
    fn uefi(&self) -> bool;
    async fn power_state(&self) -> PowerState;
    async fn boot_setting(&self) -> BootSetting;
    async fn set_boot(&self, device: BootDevice, persistent: bool);
    async fn power_on(&self) -> Result<(), BmcError>;
    /// Hard off.
    async fn power_off(&self) -> Result<(), BmcError>;
    /// ACPI power button; the guest decides.
    async fn soft_off(&self) -> Result<(), BmcError>;
    /// Warm reset: a changed boot device takes effect.
    async fn reset(&self) -> Result<(), BmcError>;
    /// At BMC shutdown: power off within `grace` and refuse later power-ons.
    async fn retire(&self, grace: Duration);
}
