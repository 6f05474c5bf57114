//! IPMI messages as carried in a session payload (request and response headers with their
//! checksums) and the few commands Kiln sends: channel capabilities, session privilege, chassis
//! status and control, and the boot-flags parameter of the system boot options.

use super::rmcp::Malformed;
use crate::bmc::{BmcError, BootDevice, BootSetting, PowerState};

/// The BMC's IPMB slave address.
pub(crate) const BMC_ADDR: u8 = 0x20;
/// Software ID of a remote console.
const CONSOLE_ADDR: u8 = 0x81;

pub const NETFN_CHASSIS: u8 = 0x00;
pub const NETFN_APP: u8 = 0x06;
pub const PRIVILEGE_ADMIN: u8 = 0x04;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub netfn: u8,
    pub cmd: u8,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub netfn: u8,
    pub cmd: u8,
    pub rq_seq: u8,
    pub completion: u8,
    pub data: Vec<u8>,
}

impl Response {
    /// Whether this is the reply to `req` sent with `rq_seq` (and not a late one to an earlier request).
    pub fn answers(&self, req: &Request, rq_seq: u8) -> bool {
        self.netfn == req.netfn | 1 && self.cmd == req.cmd && self.rq_seq == rq_seq
    }
}

/// Two's-complement checksum: the covered bytes plus the checksum sum to zero.
pub(crate) fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

pub fn encode_request(req: &Request, rq_seq: u8) -> Vec<u8> {
    let mut out = vec![BMC_ADDR, req.netfn << 2];
    out.push(checksum(&out));
    out.extend_from_slice(&[CONSOLE_ADDR, (rq_seq & 0x3f) << 2, req.cmd]);
    out.extend_from_slice(&req.data);
    out.push(checksum(&out[3..]));
    out
}

pub fn decode_response(msg: &[u8]) -> Result<Response, Malformed> {
    if msg.len() < 8 {
        return Err(Malformed("IPMI response too short"));
    }
    if checksum(&msg[..2]) != msg[2] || checksum(&msg[3..msg.len() - 1]) != msg[msg.len() - 1] {
        return Err(Malformed("IPMI response checksum mismatch"));
    }
    Ok(Response {
        netfn: msg[1] >> 2,
        cmd: msg[5],
        rq_seq: msg[4] >> 2,
        completion: msg[6],
        data: msg[7..msg.len() - 1].to_vec(),
    })
}

/// Get Channel Authentication Capabilities for this channel, asking for the IPMI v2.0 fields.
pub fn get_channel_auth_caps() -> Request {
    Request {
        netfn: NETFN_APP,
        cmd: 0x38,
        data: vec![0x8e, PRIVILEGE_ADMIN],
    }
}

/// Whether the channel speaks IPMI v2.0 (RMCP+), from the Get Channel Auth Caps reply data.
pub fn supports_v2(data: &[u8]) -> Result<bool, Malformed> {
    match data {
        [_channel, auth, _, ext, ..] => Ok(auth & 0x80 != 0 && ext & 0x02 != 0),
        _ => Err(Malformed("channel capabilities reply too short")),
    }
}

pub fn set_session_privilege(level: u8) -> Request {
    Request {
        netfn: NETFN_APP,
        cmd: 0x3b,
        data: vec![level],
    }
}

pub fn close_session(bmc_session_id: u32) -> Request {
    Request {
        netfn: NETFN_APP,
        cmd: 0x3c,
        data: bmc_session_id.to_le_bytes().to_vec(),
    }
}

pub fn get_chassis_status() -> Request {
    Request {
        netfn: NETFN_CHASSIS,
        cmd: 0x01,
        data: Vec::new(),
    }
}

pub fn power_state(data: &[u8]) -> Result<PowerState, Malformed> {
    match data.first() {
        Some(b) if b & 0x01 != 0 => Ok(PowerState::On),
        Some(_) => Ok(PowerState::Off),
        None => Err(Malformed("chassis status reply is empty")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChassisControl {
    PowerDown = 0x00,
    PowerUp = 0x01,
    PowerCycle = 0x02,
    HardReset = 0x03,
    /// ACPI soft shutdown, emulated by the BMC as an over-temperature event.
    SoftShutdown = 0x05,
}

pub fn chassis_control(action: ChassisControl) -> Request {
    Request {
        netfn: NETFN_CHASSIS,
        cmd: 0x02,
        data: vec![action as u8],
    }
}

/// Boot option parameters Kiln writes.
pub const PARAM_SET_IN_PROGRESS: u8 = 0x00;
pub const PARAM_BOOT_INFO_ACK: u8 = 0x04;
pub const PARAM_BOOT_FLAGS: u8 = 0x05;

pub fn set_boot_option(param: u8, value: &[u8]) -> Request {
    let mut data = vec![param & 0x7f];
    data.extend_from_slice(value);
    Request {
        netfn: NETFN_CHASSIS,
        cmd: 0x08,
        data,
    }
}

pub fn get_boot_flags() -> Request {
    Request {
        netfn: NETFN_CHASSIS,
        cmd: 0x09,
        data: vec![PARAM_BOOT_FLAGS, 0, 0],
    }
}

pub(crate) const FLAGS_VALID: u8 = 0x80;
pub(crate) const FLAGS_PERSISTENT: u8 = 0x40;
pub(crate) const FLAGS_EFI: u8 = 0x20;
pub(crate) const DEVICE_PXE: u8 = 0x04;
pub(crate) const DEVICE_DISK: u8 = 0x08;
pub(crate) const DEVICE_MASK: u8 = 0x3c;

/// Boot flags (parameter 5): valid; persistent or next boot only; EFI or legacy; the device.
pub fn boot_flags(device: BootDevice, persistent: bool, uefi: bool) -> [u8; 5] {
    let mut first = FLAGS_VALID;
    if persistent {
        first |= FLAGS_PERSISTENT;
    }
    if uefi {
        first |= FLAGS_EFI;
    }
    let device = match device {
        BootDevice::Pxe => DEVICE_PXE,
        BootDevice::Disk => DEVICE_DISK,
    };
    [first, device, 0, 0, 0]
}

/// Reads the Get System Boot Options reply for parameter 5.
///
/// The device selector is reported even when the "valid" bit is clear, as Ironic's ipmitool
/// driver does: ipmi_sim never sets that bit, and BMCs clear it once a one-time boot is used.
/// Selectors Kiln has no name for (CD, BIOS setup, ...) read as "no override".
pub fn parse_boot_flags(data: &[u8]) -> Result<BootSetting, Malformed> {
    let [_version, param, first, second, ..] = data else {
        return Err(Malformed("boot flags reply too short"));
    };
    if param & 0x7f != PARAM_BOOT_FLAGS || data.len() < 7 {
        return Err(Malformed("boot options reply is not the boot flags"));
    }
    let device = match second & DEVICE_MASK {
        DEVICE_PXE => Some(BootDevice::Pxe),
        DEVICE_DISK => Some(BootDevice::Disk),
        _ => None,
    };
    Ok(BootSetting {
        device,
        persistent: first & FLAGS_PERSISTENT != 0,
        uefi: Some(first & FLAGS_EFI != 0),
    })
}

/// What a completion code means, in the words of the IPMI specification.
pub fn completion_meaning(cc: u8) -> &'static str {
    match cc {
        0xc0 => "node busy",
        0xc1 => "command not supported",
        0xc2 => "command invalid for this LUN",
        0xc3 => "timeout while processing",
        0xc4 => "out of space",
        0xc5 => "reservation cancelled",
        0xc6 => "request data truncated",
        0xc7 => "request data length invalid",
        0xc8 => "request data too long",
        0xc9 => "parameter out of range",
        0xca => "cannot return the requested number of bytes",
        0xcb => "requested data not present",
        0xcc => "invalid data field in request",
        0xcd => "command illegal for this sensor or record",
        0xce => "response could not be provided",
        0xcf => "duplicated request",
        0xd0 => "SDR repository in update mode",
        0xd1 => "firmware update in progress",
        0xd2 => "BMC initialization in progress",
        0xd3 => "destination unavailable",
        0xd4 => "insufficient privilege level",
        0xd5 => "not supported in the present state",
        0xd6 => "sub-function disabled or unavailable",
        0x80..=0xbe => "command-specific error",
        _ => "unspecified error",
    }
}

/// Turns a reply into its data, or a plain error naming `what` was refused and why.
pub fn check(resp: Response, what: &str) -> Result<Vec<u8>, BmcError> {
    match resp.completion {
        0x00 => Ok(resp.data),
        0xc1 | 0xd6 => Err(BmcError::Unsupported(what.to_string())),
        cc => Err(BmcError::Protocol(format!(
            "BMC refused {what}: {} (completion code 0x{cc:02x})",
            completion_meaning(cc)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_encode_with_checksums() {
        // Hand-checked bytes: header checksum, console address 81h, sequence in the top six bits.
        let cases: [(Request, u8, &[u8]); 3] = [
            (
                get_channel_auth_caps(),
                0,
                &[0x20, 0x18, 0xc8, 0x81, 0x00, 0x38, 0x8e, 0x04, 0xb5],
            ),
            (
                chassis_control(ChassisControl::PowerUp),
                3,
                &[0x20, 0x00, 0xe0, 0x81, 0x0c, 0x02, 0x01, 0x70],
            ),
            (
                get_chassis_status(),
                0x3f,
                &[0x20, 0x00, 0xe0, 0x81, 0xfc, 0x01, 0x82],
            ),
        ];
        for (req, seq, want) in cases {
            assert_eq!(encode_request(&req, seq), want, "{req:?}");
        }
    }

    #[test]
    fn responses_decode_and_match_their_request() {
        let req = get_chassis_status();
        let mut msg = vec![0x81, 0x04, 0x00, 0x20, 5 << 2, 0x01, 0x00, 0x01, 0x00, 0x00];
        msg[2] = checksum(&msg[..2]);
        msg.push(checksum(&msg[3..]));
        let resp = decode_response(&msg).unwrap();
        assert!(resp.answers(&req, 5) && !resp.answers(&req, 6));
        assert!(!resp.answers(&get_boot_flags(), 5));
        assert_eq!(power_state(&check(resp, "x").unwrap()), Ok(PowerState::On));
        let mut bad = msg.clone();
        bad[7] ^= 1;
        assert_eq!(
            decode_response(&bad),
            Err(Malformed("IPMI response checksum mismatch"))
        );
    }

    #[test]
    fn boot_flag_bytes() {
        let cases = [
            (BootDevice::Pxe, false, false, [0x80, 0x04, 0, 0, 0]),
            (BootDevice::Pxe, true, true, [0xe0, 0x04, 0, 0, 0]),
            (BootDevice::Disk, false, true, [0xa0, 0x08, 0, 0, 0]),
            (BootDevice::Disk, true, false, [0xc0, 0x08, 0, 0, 0]),
        ];
        for (device, persistent, uefi, want) in cases {
            let bytes = boot_flags(device, persistent, uefi);
            assert_eq!(bytes, want);
            let read = parse_boot_flags(&[1, 5, bytes[0], bytes[1], 0, 0, 0]).unwrap();
            assert_eq!(
                read,
                BootSetting {
                    device: Some(device),
                    persistent,
                    uefi: Some(uefi)
                }
            );
        }
        // ipmi_sim's reply after `bootdev pxe`: valid bit clear, device PXE.
        let sim = parse_boot_flags(&[1, 5, 0x00, 0x04, 0, 0, 0]).unwrap();
        assert_eq!(
            sim,
            BootSetting {
                device: Some(BootDevice::Pxe),
                persistent: false,
                uefi: Some(false)
            }
        );
        assert_eq!(
            parse_boot_flags(&[1, 5, 0x80, 0x14, 0, 0, 0])
                .unwrap()
                .device,
            None,
            "CD/DVD"
        );
        assert_eq!(
            parse_boot_flags(&[1, 5, 0x80, 0x00, 0, 0, 0])
                .unwrap()
                .device,
            None
        );
        assert!(parse_boot_flags(&[1, 4, 0x80, 0x04, 0, 0, 0]).is_err());
        assert!(parse_boot_flags(&[1, 5, 0x80]).is_err());
    }

    #[test]
    fn completion_codes_become_plain_errors() {
        let resp = |completion| Response {
            netfn: 1,
            cmd: 2,
            rq_seq: 0,
            completion,
            data: vec![],
        };
        assert_eq!(check(resp(0), "power on"), Ok(vec![]));
        assert_eq!(
            check(resp(0xc1), "power on"),
            Err(BmcError::Unsupported("power on".into()))
        );
        let cases = [
            (0xd4, "insufficient privilege level"),
            (0xc0, "node busy"),
            (0x80, "command-specific error"),
            (0xff, "unspecified error"),
        ];
        for (cc, words) in cases {
            let Err(BmcError::Protocol(text)) = check(resp(cc), "power on") else {
                panic!("0x{cc:02x}")
            };
            assert!(
                text.contains(words)
                    && text.contains("power on")
                    && text.contains(&format!("0x{cc:02x}")),
                "{text}"
            );
        }
    }

    #[test]
    fn capabilities_and_status_replies() {
        assert_eq!(supports_v2(&[1, 0x97, 0x04, 0x03, 0, 0, 0, 0]), Ok(true));
        assert_eq!(supports_v2(&[1, 0x17, 0x04, 0x01, 0, 0, 0, 0]), Ok(false));
        assert!(supports_v2(&[1]).is_err());
        assert_eq!(power_state(&[0x00, 0, 0]), Ok(PowerState::Off));
        assert!(power_state(&[]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn reply_parsers_never_panic(data in proptest::collection::vec(0u8.., 0..40)) {
            if let Ok(resp) = decode_response(&data) {
                let _ = check(resp, "anything");
            }
            let _ = parse_boot_flags(&data);
            let _ = power_state(&data);
            let _ = supports_v2(&data);
        }
    }
}
