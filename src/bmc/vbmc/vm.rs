//! One QEMU virtual machine as a virtual BMC sees it: power is the QEMU process, the boot device
//! becomes QEMU's boot order at the next start, power-off/reset signal the process and the ACPI
//! power button goes through QMP. Every QEMU is tracked until it is reaped, and none outlives the
//! vbmc (see `launcher`).

use super::launcher;
use crate::bmc::{BmcError, BootDevice, BootSetting, PowerState};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

/// How to start one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    pub name: String,
    pub mac: String,
    /// Tap device the VM's NIC uses (created by whoever built the lab).
    pub tap: String,
    pub disk: Option<PathBuf>,
    pub memory_mb: u32,
    pub uefi: bool,
    /// Run QEMU inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Directory for the QMP socket, serial log and UEFI variables.
    pub state_dir: PathBuf,
    /// Where this VM's IPMI lanplus BMC listens, if it has one.
    pub ipmi_listen: Option<std::net::SocketAddr>,
}

struct VmState {
    /// The running QEMU, spawned with `kill_on_drop` by the [`launcher`] thread.
    child: Option<Child>,
    boot: BootDevice,
    persistent: bool,
    /// Set at vbmc shutdown, after which the VM stays off.
    retired: bool,
}

impl VmState {
    fn power(&mut self) -> PowerState {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => PowerState::On,
            _ => {
                // Exited (already reaped by `try_wait`) or unknowable: dropping it kills and
                // reaps whatever is left.
                self.child = None;
                PowerState::Off
            }
        }
    }
}

/// Ends one QEMU and reaps it: SIGTERM (QEMU exits cleanly, like QMP `quit`), SIGKILL after
/// `grace`.
async fn stop(name: &str, mut child: Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(vm = %name, ?grace, "QEMU ignored SIGTERM; killing it");
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

pub struct VirtualMachine {
    pub spec: VmSpec,
    state: Mutex<VmState>,
}

/// QEMU's `-boot` argument: one-time PXE boots the network once then the disk (`once=n`).
pub fn boot_order(device: BootDevice, persistent: bool) -> &'static str {
    match (device, persistent) {
        (BootDevice::Pxe, false) => "order=c,once=n",
        (BootDevice::Pxe, true) => "order=n",
        (BootDevice::Disk, _) => "order=c",
    }
}

impl VirtualMachine {
    pub fn new(spec: VmSpec) -> Self {
        Self {
            spec,
            state: Mutex::new(VmState {
                child: None,
                boot: BootDevice::Disk,
                persistent: true,
                retired: false,
            }),
        }
    }

    pub fn qmp_path(&self) -> PathBuf {
        self.spec.state_dir.join(format!("{}.qmp", self.spec.name))
    }

    pub fn serial_path(&self) -> PathBuf {
        self.spec
            .state_dir
            .join(format!("{}.serial.log", self.spec.name))
    }

    /// The full command line that starts this VM with the given boot device.
    pub fn command_line(&self, device: BootDevice, persistent: bool) -> Vec<String> {
        let spec = &self.spec;
        let mut args: Vec<String> = Vec::new();
        if let Some(ns) = &spec.netns {
            args.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        args.push("qemu-system-x86_64".into());
        args.extend(["-accel", "tcg", "-m"].map(String::from));
        args.push(spec.memory_mb.to_string());
        args.extend(["-nodefaults", "-display", "none", "-vga", "none", "-name"].map(String::from));
        args.push(spec.name.clone());
        // NIC and disk boot priority (OVMF honours bootindex, SeaBIOS the -boot order too).
        let (nic_index, disk_index) = match device {
            BootDevice::Pxe => (1, 2),
            BootDevice::Disk => (2, 1),
        };
        if spec.uefi {
            args.extend(
                [
                    "-machine",
                    "q35",
                    "-drive",
                    "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                    "-drive",
                ]
                .map(String::from),
            );
            args.push(format!(
                "if=pflash,format=raw,file={}",
                spec.state_dir
                    .join(format!("{}.vars.fd", spec.name))
                    .display()
            ));
        } else {
            args.extend(["-machine", "pc,graphics=off", "-boot"].map(String::from));
            args.push(boot_order(device, persistent).into());
        }
        args.push("-netdev".into());
        args.push(format!(
            "tap,id=n0,ifname={},script=no,downscript=no",
            spec.tap
        ));
        args.push("-device".into());
        args.push(format!(
            "virtio-net-pci,netdev=n0,mac={},bootindex={nic_index}",
            spec.mac
        ));
        if let Some(disk) = &spec.disk {
            args.push("-drive".into());
            args.push(format!(
                "if=none,id=d0,file={},format=raw,cache=unsafe",
                disk.display()
            ));
            args.push("-device".into());
            args.push(format!("virtio-blk-pci,drive=d0,bootindex={disk_index}"));
        }
        args.push("-serial".into());
        args.push(format!("file:{}", self.serial_path().display()));
        args.push("-qmp".into());
        args.push(format!(
            "unix:{},server=on,wait=off",
            self.qmp_path().display()
        ));
        args
    }

    pub async fn power_state(&self) -> PowerState {
        let mut state = self.state.lock().await;
        state.power()
    }

    pub async fn boot_setting(&self) -> BootSetting {
        let state = self.state.lock().await;
        BootSetting {
            device: Some(state.boot),
            persistent: state.persistent,
            uefi: Some(self.spec.uefi),
        }
    }

    pub async fn set_boot(&self, device: BootDevice, persistent: bool) {
        let mut state = self.state.lock().await;
        state.boot = device;
        state.persistent = persistent;
    }

    /// Starts QEMU. The state lock is held throughout, so two requests cannot both start one, and
    /// the child is recorded before any await that could be cancelled: a QEMU is never untracked.
    pub async fn power_on(&self) -> Result<(), BmcError> {
        let mut state = self.state.lock().await;
        if state.power() == PowerState::On {
            return Ok(());
        }
        if state.retired {
            return Err(BmcError::Protocol("the vbmc is shutting down".into()));
        }
        if self.spec.uefi {
            let vars = self
                .spec
                .state_dir
                .join(format!("{}.vars.fd", self.spec.name));
            if !vars.exists() {
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).map_err(|e| {
                    BmcError::Protocol(format!("cannot create UEFI variables: {e}"))
                })?;
            }
        }
        let _ = std::fs::remove_file(self.qmp_path());
        let (boot, persistent) = (state.boot, state.persistent);
        let args = self.command_line(boot, persistent);
        let log_path = self
            .spec
            .state_dir
            .join(format!("{}.qemu.log", self.spec.name));
        let log = std::fs::File::create(&log_path).map_err(|e| {
            BmcError::Protocol(format!("cannot create {}: {e}", log_path.display()))
        })?;
        let mut command = Command::new(&args[0]);
        command
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let child = launcher::spawn(command)
            .await
            .map_err(|e| BmcError::Protocol(format!("cannot start QEMU: {e}")))?;
        state.child = Some(child);
        // A one-time boot device is consumed by this start.
        if !persistent {
            state.boot = BootDevice::Disk;
            state.persistent = true;
        }
        // A QEMU that cannot start (tap busy, bad disk) exits at once: say so instead of "on".
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if let Some(child) = state.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                state.child = None;
                (state.boot, state.persistent) = (boot, persistent);
                let output = std::fs::read_to_string(&log_path).unwrap_or_default();
                let last = output.lines().last().unwrap_or("no output").to_string();
                return Err(BmcError::Protocol(format!(
                    "QEMU exited at start ({status}): {last}"
                )));
            }
        }
        tracing::info!(vm = %self.spec.name, ?boot, persistent, "VM powered on");
        Ok(())
    }

    /// Hard off: QEMU exits as with QMP `quit` on SIGTERM; SIGKILL if it has not gone in 5 s.
    /// Signals need no QMP socket, so this works even when the state directory is gone.
    pub async fn power_off(&self) -> Result<(), BmcError> {
        let mut state = self.state.lock().await;
        if let Some(child) = state.child.take() {
            stop(&self.spec.name, child, Duration::from_secs(5)).await;
            tracing::info!(vm = %self.spec.name, "VM powered off");
        }
        Ok(())
    }

    /// At vbmc shutdown: stops and reaps QEMU within `grace` (plus the SIGKILL), and refuses any
    /// later power-on, so a request still in flight cannot start a VM nobody will stop.
    pub async fn retire(&self, grace: Duration) {
        let mut state = self.state.lock().await;
        state.retired = true;
        if let Some(child) = state.child.take() {
            stop(&self.spec.name, child, grace).await;
            tracing::info!(vm = %self.spec.name, "VM stopped at vbmc shutdown");
        }
    }

    /// ACPI power button; the guest decides.
    pub async fn soft_off(&self) -> Result<(), BmcError> {
        self.qmp("system_powerdown").await
    }

    /// Reset honours a changed boot device: QEMU restarts with the new boot order.
    pub async fn reset(&self) -> Result<(), BmcError> {
        self.power_off().await?;
        self.power_on().await
    }

    /// Sends one QMP command (after the capabilities handshake); gives up after 5 s, so a QEMU
    /// that accepts the connection but never answers cannot hold a request forever.
    async fn qmp(&self, command: &str) -> Result<(), BmcError> {
        tokio::time::timeout(Duration::from_secs(5), self.qmp_exchange(command))
            .await
            .map_err(|_| BmcError::Protocol(format!("QMP: no answer to {command}")))?
    }

    async fn qmp_exchange(&self, command: &str) -> Result<(), BmcError> {
        let stream = UnixStream::connect(self.qmp_path())
            .await
            .map_err(|e| BmcError::Protocol(format!("QMP: {e}")))?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let mut next = async || {
            lines
                .next_line()
                .await
                .map_err(|e| BmcError::Protocol(format!("QMP: {e}")))
        };
        next().await?; // greeting
        write
            .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
            .await
            .map_err(|e| BmcError::Protocol(format!("QMP: {e}")))?;
        next().await?;
        write
            .write_all(format!("{{\"execute\":\"{command}\"}}\n").as_bytes())
            .await
            .map_err(|e| BmcError::Protocol(format!("QMP: {e}")))?;
        let _ = tokio::time::timeout(Duration::from_secs(2), next()).await;
        Ok(())
    }
}

#[async_trait::async_trait]
impl super::machine::Machine for VirtualMachine {
    fn name(&self) -> &str {
        &self.spec.name
    }
    fn uefi(&self) -> bool {
        self.spec.uefi
    }
    async fn power_state(&self) -> PowerState {
        VirtualMachine::power_state(self).await
    }
    async fn boot_setting(&self) -> BootSetting {
        VirtualMachine::boot_setting(self).await
    }
    async fn set_boot(&self, device: BootDevice, persistent: bool) {
        VirtualMachine::set_boot(self, device, persistent).await
    }
    async fn power_on(&self) -> Result<(), BmcError> {
        VirtualMachine::power_on(self).await
    }
    async fn power_off(&self) -> Result<(), BmcError> {
        VirtualMachine::power_off(self).await
    }
    async fn soft_off(&self) -> Result<(), BmcError> {
        VirtualMachine::soft_off(self).await
    }
    async fn reset(&self) -> Result<(), BmcError> {
        VirtualMachine::reset(self).await
    }
    async fn retire(&self, grace: Duration) {
        VirtualMachine::retire(self, grace).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_orders() {
        assert_eq!(boot_order(BootDevice::Pxe, false), "order=c,once=n");
        assert_eq!(boot_order(BootDevice::Pxe, true), "order=n");
        assert_eq!(boot_order(BootDevice::Disk, false), "order=c");
    }

    #[test]
    fn command_line_puts_the_boot_device_first() {
        let vm = VirtualMachine::new(VmSpec {
            name: "vm1".into(),
            mac: "52:54:00:00:00:01".into(),
            tap: "tap1".into(),
            disk: Some("/tmp/vm1.raw".into()),
            memory_mb: 512,
            uefi: false,
            netns: Some("lab".into()),
            state_dir: "/tmp/s".into(),
            ipmi_listen: None,
        });
        let line = vm.command_line(BootDevice::Pxe, false).join(" ");
        assert!(
            line.starts_with("ip netns exec lab qemu-system-x86_64 -accel tcg"),
            "{line}"
        );
        assert!(line.contains("-boot order=c,once=n"));
        assert!(line.contains("mac=52:54:00:00:00:01,bootindex=1"));
        assert!(line.contains("virtio-blk-pci,drive=d0,bootindex=2"));
        assert!(line.contains("-qmp unix:/tmp/s/vm1.qmp,server=on,wait=off"));
        let line = vm.command_line(BootDevice::Disk, true).join(" ");
        assert!(line.contains("bootindex=2") && line.contains("drive=d0,bootindex=1"));
    }
}
