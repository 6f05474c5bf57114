//! What each IPMI command inside a session does to the VM: a pure decision from the request, the
//! session's privilege and a snapshot of the VM. Changes to the VM come back as a [`VmAction`]
//! for the server loop to perform, so the protocol is testable without QEMU.

use super::messages::{self, Request, cc};
use crate::bmc::ipmi::commands::{
    DEVICE_DISK, DEVICE_MASK, DEVICE_PXE, FLAGS_PERSISTENT, FLAGS_VALID, NETFN_APP, NETFN_CHASSIS,
    PARAM_BOOT_FLAGS, PARAM_BOOT_INFO_ACK, PARAM_SET_IN_PROGRESS, boot_flags,
};
use crate::bmc::{BootDevice, BootSetting, PowerState};

const CALLBACK: u8 = 0x01;
const USER: u8 = 0x02;
const OPERATOR: u8 = 0x03;

/// Boot options parameter commands answer with: "parameter not supported".
const PARAM_NOT_SUPPORTED: u8 = 0x80;
/// Set Session Privilege Level: "requested level exceeds the session's limit".
const PRIVILEGE_OVER_LIMIT: u8 = 0x81;
const DEVICE_DISK_SAFE: u8 = 0x0c;

/// What the server knows of the VM when a request arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub power: PowerState,
    pub boot: BootSetting,
}

/// A change to the VM, performed by the server loop before the response is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmAction {
    PowerOn,
    PowerOff,
    SoftOff,
    Cycle,
    Reset,
    SetBoot {
        device: BootDevice,
        persistent: bool,
    },
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Reply(u8, Vec<u8>),
    /// Perform this, then reply with no data (completion code from the outcome).
    Act(VmAction),
    /// Close Session for this session ID (the caller knows which sessions exist).
    Close(u32),
}

/// Boot option parameters 0 and 4, kept per endpoint as a BMC keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootParams {
    pub set_in_progress: u8,
    pub info_ack: u8,
}

/// The session's side of a request: its privilege now and its limit.
pub struct Privilege<'a> {
    pub current: &'a mut u8,
    pub max: u8,
}

fn reply(code: u8) -> Decision {
    Decision::Reply(code, Vec::new())
}

/// The privilege a command needs; Kiln's and ipmitool's sessions raise theirs to Administrator.
fn required(netfn: u8, cmd: u8) -> u8 {
    match (netfn, cmd) {
        (NETFN_CHASSIS, 0x02 | 0x08) => OPERATOR,
        (NETFN_APP, 0x3b | 0x3c | 0x38 | 0x54) => CALLBACK,
        _ => USER,
    }
}

pub fn execute(
    req: &Request,
    privilege: Privilege<'_>,
    boot: &mut BootParams,
    vm: &Snapshot,
) -> Decision {
    if *privilege.current < required(req.netfn, req.cmd) {
        return reply(cc::INSUFFICIENT_PRIVILEGE);
    }
    let data = req.data.as_slice();
    match (req.netfn, req.cmd) {
        (NETFN_APP, 0x01) => Decision::Reply(cc::OK, device_id()),
        (NETFN_APP, 0x3b) => set_privilege(data, privilege),
        (NETFN_APP, 0x3c) => match *data {
            [a, b, c, d, ..] => Decision::Close(u32::from_le_bytes([a, b, c, d])),
            _ => reply(cc::LENGTH_INVALID),
        },
        (NETFN_APP, _) => match messages::presession(req) {
            Some((code, out)) => Decision::Reply(code, out),
            None => reply(cc::INVALID_COMMAND),
        },
        (NETFN_CHASSIS, 0x01) => {
            let on = u8::from(vm.power == PowerState::On);
            // Power restore policy "always off" (bits 6:5 = 0), nothing else to report.
            Decision::Reply(cc::OK, vec![on, 0, 0])
        }
        (NETFN_CHASSIS, 0x02) => chassis_control(data, vm.power),
        (NETFN_CHASSIS, 0x08) => set_boot_option(data, boot),
        (NETFN_CHASSIS, 0x09) => get_boot_option(data, boot, vm.boot),
        _ => reply(cc::INVALID_COMMAND),
    }
}

/// Get Device ID: device 20h rev 1, firmware 1.00, IPMI 2.0, a chassis device, no vendor.
fn device_id() -> Vec<u8> {
    vec![0x20, 0x01, 0x01, 0x00, 0x02, 0x80, 0, 0, 0, 0, 0]
}

fn set_privilege(data: &[u8], privilege: Privilege<'_>) -> Decision {
    let [level] = *data else {
        return reply(cc::LENGTH_INVALID);
    };
    match level & 0x0f {
        0 => {}
        level @ 1..=5 if level > privilege.max => return reply(PRIVILEGE_OVER_LIMIT),
        level @ 1..=4 => *privilege.current = level,
        _ => return reply(cc::INVALID_DATA),
    }
    Decision::Reply(cc::OK, vec![*privilege.current])
}

/// Chassis Control. Cycle and reset need a running VM (the spec's advice for a chassis that is
/// off); the others are no-ops when the VM is already there.
fn chassis_control(data: &[u8], power: PowerState) -> Decision {
    let [control] = *data else {
        return reply(cc::LENGTH_INVALID);
    };
    let on = power == PowerState::On;
    match control & 0x0f {
        0x00 if on => Decision::Act(VmAction::PowerOff),
        0x01 if !on => Decision::Act(VmAction::PowerOn),
        0x02 if on => Decision::Act(VmAction::Cycle),
        0x03 if on => Decision::Act(VmAction::Reset),
        0x05 if on => Decision::Act(VmAction::SoftOff),
        0x00 | 0x01 | 0x05 => reply(cc::OK),
        0x02 | 0x03 => reply(cc::NOT_IN_PRESENT_STATE),
        _ => reply(cc::INVALID_DATA),
    }
}

fn set_boot_option(data: &[u8], boot: &mut BootParams) -> Decision {
    let Some((param, value)) = data.split_first() else {
        return reply(cc::LENGTH_INVALID);
    };
    match (param & 0x7f, value) {
        (PARAM_SET_IN_PROGRESS, [state]) if state & 0x03 != 0x03 => {
            // Accepted in any state: a console that died mid-set must not lock others out.
            boot.set_in_progress = state & 0x03;
            reply(cc::OK)
        }
        (PARAM_BOOT_INFO_ACK, [mask, ack]) => {
            boot.info_ack = (boot.info_ack & !mask) | (ack & mask);
            reply(cc::OK)
        }
        (PARAM_BOOT_FLAGS, [first, second, _, _, _]) => match boot_request(*first, *second) {
            Some(action) => Decision::Act(action),
            None => reply(cc::INVALID_DATA),
        },
        (PARAM_SET_IN_PROGRESS, [_]) => reply(cc::INVALID_DATA),
        (PARAM_SET_IN_PROGRESS | PARAM_BOOT_INFO_ACK | PARAM_BOOT_FLAGS, _) => {
            reply(cc::LENGTH_INVALID)
        }
        _ => reply(PARAM_NOT_SUPPORTED),
    }
}

/// Boot flags → the VM's boot device. "No override" (flags not valid, or selector 0) is the
/// VM's default, the disk; selectors a VM has no device for (CD, floppy, BIOS setup) are refused.
/// The EFI bit is not stored: a VM boots the firmware its spec names.
pub fn boot_request(first: u8, second: u8) -> Option<VmAction> {
    let persistent = first & FLAGS_PERSISTENT != 0;
    let default = VmAction::SetBoot {
        device: BootDevice::Disk,
        persistent: true,
    };
    if first & FLAGS_VALID == 0 {
        return Some(default);
    }
    let device = match second & DEVICE_MASK {
        0 => return Some(default),
        DEVICE_PXE => BootDevice::Pxe,
        DEVICE_DISK | DEVICE_DISK_SAFE => BootDevice::Disk,
        _ => return None,
    };
    Some(VmAction::SetBoot { device, persistent })
}

fn get_boot_option(data: &[u8], boot: &BootParams, vm: BootSetting) -> Decision {
    let Some(param) = data.first().map(|p| p & 0x7f) else {
        return reply(cc::LENGTH_INVALID);
    };
    let value = match param {
        PARAM_SET_IN_PROGRESS => vec![boot.set_in_progress],
        PARAM_BOOT_INFO_ACK => vec![0x00, boot.info_ack],
        PARAM_BOOT_FLAGS => match vm.device {
            Some(device) => boot_flags(device, vm.persistent, vm.uefi == Some(true)).to_vec(),
            None => vec![0; 5],
        },
        _ => return reply(PARAM_NOT_SUPPORTED),
    };
    let mut out = vec![0x01, param];
    out.extend_from_slice(&value);
    Decision::Reply(cc::OK, out)
}

#[cfg(test)]
mod tests {
    use super::super::handshake::ADMIN;
    use super::*;
    use crate::bmc::ipmi::commands::parse_boot_flags;

    fn snapshot(power: PowerState, device: BootDevice, persistent: bool) -> Snapshot {
        let boot = BootSetting {
            device: Some(device),
            persistent,
            uefi: Some(false),
        };
        Snapshot { power, boot }
    }

    fn run_at(netfn: u8, cmd: u8, data: &[u8], level: &mut u8, vm: &Snapshot) -> Decision {
        let req = Request {
            netfn,
            rs_lun: 0,
            rq_addr: 0x81,
            rq_seq: 1,
            rq_lun: 0,
            cmd,
            data: data.to_vec(),
        };
        let privilege = Privilege {
            current: level,
            max: ADMIN,
        };
        execute(&req, privilege, &mut BootParams::default(), vm)
    }

    fn run(netfn: u8, cmd: u8, data: &[u8], mut level: u8, vm: &Snapshot) -> Decision {
        run_at(netfn, cmd, data, &mut level, vm)
    }

    #[test]
    fn chassis_control_maps_to_vm_actions() {
        use PowerState::{Off, On};
        use VmAction::*;
        let act = Decision::Act;
        let cases = [
            (0, On, act(PowerOff)),
            (0, Off, reply(0)),
            (1, Off, act(PowerOn)),
            (1, On, reply(0)),
            (2, On, act(Cycle)),
            (2, Off, reply(0xd5)),
            (3, On, act(Reset)),
            (3, Off, reply(0xd5)),
            (5, On, act(SoftOff)),
            (5, Off, reply(0)),
            (4, On, reply(0xcc)),
        ];
        for (control, power, want) in cases {
            let vm = snapshot(power, BootDevice::Disk, true);
            assert_eq!(run(0, 2, &[control], ADMIN, &vm), want, "{control} {power}");
        }
        let vm = snapshot(Off, BootDevice::Disk, true);
        assert_eq!(run(0, 2, &[1], USER, &vm), reply(0xd4), "User level");
        assert_eq!(run(0, 2, &[], ADMIN, &vm), reply(0xc7));
        assert_eq!(run(0, 1, &[], USER, &vm), Decision::Reply(0, vec![0, 0, 0]));
        assert_eq!(run(0x2c, 0, &[0], ADMIN, &vm), reply(0xc1), "PICMG");
    }

    #[test]
    fn boot_flags_from_ipmitool_bootdev() {
        use BootDevice::{Disk, Pxe};
        let set = |device, persistent| Some(VmAction::SetBoot { device, persistent });
        let cases = [
            ((0x80, 0x04), set(Pxe, false)),  // bootdev pxe
            ((0xc0, 0x04), set(Pxe, true)),   // options=persistent
            ((0xe0, 0x08), set(Disk, true)),  // options=persistent,efiboot
            ((0x80, 0x0c), set(Disk, false)), // safe
            ((0x80, 0x00), set(Disk, true)),  // none
            ((0x00, 0x04), set(Disk, true)),  // flags not valid
            ((0x80, 0x14), None),             // cdrom
            ((0x80, 0x18), None),             // bios
        ];
        for ((first, second), want) in cases {
            assert_eq!(boot_request(first, second), want, "{first:#x} {second:#x}");
        }
    }

    #[test]
    fn boot_options_parameters() {
        let vm = snapshot(PowerState::Off, BootDevice::Pxe, false);
        let mut level = ADMIN;
        let mut boot = BootParams::default();
        let mut set = |data: &[u8]| {
            let req = Request {
                netfn: 0,
                rs_lun: 0,
                rq_addr: 0x81,
                rq_seq: 1,
                rq_lun: 0,
                cmd: 8,
                data: data.to_vec(),
            };
            let privilege = Privilege {
                current: &mut level,
                max: ADMIN,
            };
            execute(&req, privilege, &mut boot, &vm)
        };
        assert_eq!(set(&[0, 1]), reply(0));
        assert_eq!(set(&[0, 2]), reply(0), "commit write");
        assert_eq!(set(&[0, 3]), reply(0xcc));
        assert_eq!(set(&[4, 1, 1]), reply(0));
        assert_eq!(set(&[4, 1]), reply(0xc7));
        assert_eq!(set(&[3, 0x1f]), reply(0x80));
        assert_eq!(
            set(&[5, 0x80, 0x04, 0, 0, 0]),
            Decision::Act(VmAction::SetBoot {
                device: BootDevice::Pxe,
                persistent: false
            })
        );
        assert_eq!(
            boot,
            BootParams {
                set_in_progress: 2,
                info_ack: 1
            }
        );

        let Decision::Reply(0, data) = run(0, 9, &[5, 0, 0], USER, &vm) else {
            panic!("get boot flags")
        };
        let read = parse_boot_flags(&data).unwrap();
        assert_eq!(read, vm.boot);
        assert_eq!(&data[..4], &[1, 5, 0x80, 0x04]);
        assert_eq!(run(0, 9, &[7, 0, 0], USER, &vm), reply(0x80));
        assert_eq!(
            run(0, 9, &[0, 0, 0], USER, &vm),
            Decision::Reply(0, vec![1, 0, 0])
        );
    }

    #[test]
    fn session_privilege_and_device_id() {
        let vm = snapshot(PowerState::Off, BootDevice::Disk, true);
        let mut level = USER;
        assert_eq!(
            run_at(6, 0x3b, &[4], &mut level, &vm),
            Decision::Reply(0, vec![4])
        );
        assert_eq!(level, ADMIN);
        assert_eq!(
            run_at(6, 0x3b, &[0], &mut level, &vm),
            Decision::Reply(0, vec![4])
        );
        assert_eq!(run(6, 0x3b, &[5], level, &vm), reply(0x81));
        assert_eq!(run(6, 0x3b, &[9], level, &vm), reply(0xcc));
        assert_eq!(
            run(6, 0x3c, &[1, 2, 3, 4], level, &vm),
            Decision::Close(0x0403_0201)
        );
        let Decision::Reply(0, id) = run(6, 0x01, &[], level, &vm) else {
            panic!("device id")
        };
        assert_eq!((id.len(), id[4]), (11, 0x02), "IPMI 2.0");
        assert_eq!(run(6, 0x99, &[], level, &vm), reply(0xc1));
    }
}
