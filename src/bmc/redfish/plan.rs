//! Pure Redfish decisions: which `ResetType`s carry out a power action on this BMC, the boot
//! override PATCH body, how a configured system id becomes a path, and how replies read back.
//! No I/O here, so every rule is tested table-driven below.

use crate::bmc::{BootDevice, BootSetting, PowerAction, PowerState};
use serde_json::{Value, json};

/// One `ComputerSystem.Reset` request and the power state that shows it has taken effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetStep {
    pub reset_type: &'static str,
    pub until: PowerState,
}

const fn step(reset_type: &'static str, until: PowerState) -> ResetStep {
    ResetStep { reset_type, until }
}

/// The reset requests that carry out `action` on a system that is now `current`, using only
/// `ResetType`s the BMC lists in `ResetType@Redfish.AllowableValues` (`None`: it lists none, so
/// assume the standard names work). Empty when nothing needs doing (On when already on).
/// `Err` names what the BMC cannot do.
pub fn reset_plan(
    action: PowerAction,
    current: PowerState,
    allowed: Option<&[String]>,
) -> Result<Vec<ResetStep>, String> {
    let pick = |candidates: &[&'static str]| {
        candidates
            .iter()
            .copied()
            .find(|name| allowed.is_none_or(|list| list.iter().any(|a| a == name)))
    };
    let on = || {
        pick(&["On", "ForceOn"])
            .map(|t| step(t, PowerState::On))
            .ok_or_else(|| "powering on (neither On nor ForceOn is allowed)".to_string())
    };
    let force_off = || {
        pick(&["ForceOff"])
            .map(|t| step(t, PowerState::Off))
            .ok_or_else(|| "forced power off (ForceOff is not allowed)".to_string())
    };
    match (action, current) {
        (PowerAction::On, PowerState::On) => Ok(vec![]),
        (PowerAction::Off | PowerAction::SoftOff, PowerState::Off) => Ok(vec![]),
        // A node that is off is simply powered on, as Ironic's reboot does.
        (PowerAction::On | PowerAction::Reset | PowerAction::Cycle, PowerState::Off) => {
            Ok(vec![on()?])
        }
        (PowerAction::Off, PowerState::On) => Ok(vec![force_off()?]),
        (PowerAction::SoftOff, PowerState::On) => pick(&["GracefulShutdown"])
            .map(|t| vec![step(t, PowerState::Off)])
            .ok_or_else(|| "graceful shutdown (GracefulShutdown is not allowed)".to_string()),
        (PowerAction::Reset, PowerState::On) => match pick(&["ForceRestart", "PowerCycle"]) {
            Some(t) => Ok(vec![step(t, PowerState::On)]),
            None => Ok(vec![force_off()?, on()?]),
        },
        (PowerAction::Cycle, PowerState::On) => match pick(&["PowerCycle"]) {
            Some(t) => Ok(vec![step(t, PowerState::On)]),
            None => Ok(vec![force_off()?, on()?]),
        },
    }
}

/// Reads a system's `PowerState`; transitional states count as where they are heading.
pub fn power_state(system: &Value) -> Result<PowerState, String> {
    match system.get("PowerState").and_then(Value::as_str) {
        Some("On" | "PoweringOn" | "Paused") => Ok(PowerState::On),
        Some("Off" | "PoweringOff") => Ok(PowerState::Off),
        Some(other) => Err(format!("system reports an unknown PowerState '{other}'")),
        None => Err("system reports no PowerState".to_string()),
    }
}

/// The `Boot` PATCH body. `BootSourceOverrideMode` is sent only when the system reports one:
/// BMCs without the property reject a PATCH that names it.
pub fn boot_patch(device: BootDevice, persistent: bool, uefi: bool, has_mode: bool) -> Value {
    let mut boot = json!({
        "BootSourceOverrideTarget": boot_target(device),
        "BootSourceOverrideEnabled": if persistent { "Continuous" } else { "Once" },
    });
    if has_mode && let Some(map) = boot.as_object_mut() {
        let mode = if uefi { "UEFI" } else { "Legacy" };
        map.insert("BootSourceOverrideMode".into(), mode.into());
    }
    json!({ "Boot": boot })
}

pub fn boot_target(device: BootDevice) -> &'static str {
    match device {
        BootDevice::Pxe => "Pxe",
        BootDevice::Disk => "Hdd",
    }
}

/// What the system's `Boot` object says, in Kiln's terms.
pub fn boot_setting(system: &Value) -> Result<BootSetting, String> {
    let boot = system.get("Boot");
    let field = |name: &str| boot.and_then(|b| b.get(name)).and_then(Value::as_str);
    let uefi = field("BootSourceOverrideMode").map(|mode| mode == "UEFI");
    let enabled = field("BootSourceOverrideEnabled").unwrap_or("Disabled");
    let device = match (enabled, field("BootSourceOverrideTarget")) {
        ("Disabled", _) | (_, None | Some("None")) => None,
        (_, Some("Pxe")) => Some(BootDevice::Pxe),
        (_, Some("Hdd")) => Some(BootDevice::Disk),
        (_, Some(other)) => {
            return Err(format!(
                "boot override is set to '{other}', which Kiln does not manage"
            ));
        }
    };
    Ok(BootSetting {
        device,
        persistent: device.is_some() && enabled == "Continuous",
        uefi,
    })
}

/// Turns a configured system id into a path on the BMC: a full `/redfish/v1/...` path is kept
/// (without a trailing slash), a bare id becomes `/redfish/v1/Systems/<id>`.
pub fn system_path(system_id: &str) -> Result<String, String> {
    let id = system_id.trim();
    if id.is_empty() {
        return Err("system id is empty".to_string());
    }
    if id.starts_with('/') {
        let path = id.trim_end_matches('/');
        let rest = path.strip_prefix("/redfish/v1/").unwrap_or_default();
        if rest.is_empty() || path.contains("//") {
            return Err(format!(
                "system id '{id}' is neither a bare id nor a /redfish/v1/Systems/<id> path"
            ));
        }
        return Ok(path.to_string());
    }
    if id.contains('/') {
        return Err(format!(
            "system id '{id}' is neither a bare id nor a /redfish/v1/Systems/<id> path"
        ));
    }
    Ok(format!("/redfish/v1/Systems/{}", encode_segment(id)))
}

/// Percent-encodes one path segment (RFC 3986 `pchar` stays as it is).
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `ResetType@Redfish.AllowableValues` of a system, when it lists them.
pub fn allowed_reset_types(system: &Value) -> Option<Vec<String>> {
    let list = system
        .pointer("/Actions/#ComputerSystem.Reset/ResetType@Redfish.AllowableValues")?
        .as_array()?;
    Some(
        list.iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use PowerAction::*;
    use PowerState::{Off as IsOff, On as IsOn};

    /// Action, current state, allowable values, expected (ResetType, state waited for) steps.
    type Case<'a> = (
        PowerAction,
        PowerState,
        Option<&'a [String]>,
        Vec<(&'a str, PowerState)>,
    );

    fn names(steps: &[ResetStep]) -> Vec<(&str, PowerState)> {
        steps.iter().map(|s| (s.reset_type, s.until)).collect()
    }

    #[test]
    fn reset_plans_follow_allowable_values() {
        let standard: Vec<String> = ["On", "ForceOff", "GracefulShutdown", "ForceRestart"]
            .map(String::from)
            .to_vec();
        // sushy-tools lists these (no PowerCycle).
        let sushy: Vec<String> = [
            "On",
            "ForceOff",
            "GracefulShutdown",
            "GracefulRestart",
            "ForceRestart",
            "Nmi",
            "ForceOn",
        ]
        .map(String::from)
        .to_vec();
        let force_on_only: Vec<String> = ["ForceOn", "ForceOff"].map(String::from).to_vec();
        let cycle_only: Vec<String> = ["On", "ForceOff", "PowerCycle"].map(String::from).to_vec();
        let cases: Vec<Case> = vec![
            (On, IsOff, None, vec![("On", IsOn)]),
            (On, IsOn, None, vec![]),
            (On, IsOff, Some(&force_on_only), vec![("ForceOn", IsOn)]),
            (Off, IsOn, None, vec![("ForceOff", IsOff)]),
            (Off, IsOff, Some(&sushy), vec![]),
            (
                SoftOff,
                IsOn,
                Some(&sushy),
                vec![("GracefulShutdown", IsOff)],
            ),
            (SoftOff, IsOff, None, vec![]),
            (Reset, IsOn, Some(&sushy), vec![("ForceRestart", IsOn)]),
            (Reset, IsOff, Some(&sushy), vec![("On", IsOn)]),
            (Reset, IsOn, Some(&cycle_only), vec![("PowerCycle", IsOn)]),
            (
                Reset,
                IsOn,
                Some(&force_on_only),
                vec![("ForceOff", IsOff), ("ForceOn", IsOn)],
            ),
            (Cycle, IsOn, None, vec![("PowerCycle", IsOn)]),
            (Cycle, IsOn, Some(&cycle_only), vec![("PowerCycle", IsOn)]),
            (
                Cycle,
                IsOn,
                Some(&sushy),
                vec![("ForceOff", IsOff), ("On", IsOn)],
            ),
            (
                Cycle,
                IsOn,
                Some(&standard),
                vec![("ForceOff", IsOff), ("On", IsOn)],
            ),
            (Cycle, IsOff, Some(&sushy), vec![("On", IsOn)]),
        ];
        for (action, current, allowed, want) in cases {
            let plan = reset_plan(action, current, allowed)
                .unwrap_or_else(|e| panic!("{action:?} from {current:?}: {e}"));
            assert_eq!(
                names(&plan),
                want,
                "{action:?} from {current:?} with {allowed:?}"
            );
        }
    }

    #[test]
    fn reset_plans_name_what_is_missing() {
        let off_only: Vec<String> = vec!["ForceOff".into()];
        let on_only: Vec<String> = vec!["On".into()];
        let cases: Vec<(PowerAction, PowerState, &[String], &str)> = vec![
            (On, IsOff, &off_only, "powering on"),
            (SoftOff, IsOn, &off_only, "GracefulShutdown"),
            (Off, IsOn, &on_only, "ForceOff"),
            (Cycle, IsOn, &on_only, "ForceOff"),
            (Reset, IsOn, &off_only, "powering on"),
        ];
        for (action, current, allowed, word) in cases {
            let err = reset_plan(action, current, Some(allowed)).unwrap_err();
            assert!(err.contains(word), "{action:?}: {err}");
        }
    }

    #[test]
    fn power_states_read_transitional_values() {
        let cases = [
            (json!({"PowerState": "On"}), Ok(IsOn)),
            (json!({"PowerState": "PoweringOn"}), Ok(IsOn)),
            (json!({"PowerState": "Off"}), Ok(IsOff)),
            (json!({"PowerState": "PoweringOff"}), Ok(IsOff)),
        ];
        for (system, want) in cases {
            assert_eq!(power_state(&system), want, "{system}");
        }
        assert!(power_state(&json!({"PowerState": "Exploded"})).is_err());
        assert!(power_state(&json!({})).is_err());
    }

    #[test]
    fn boot_patch_bodies() {
        let cases = [
            (
                BootDevice::Pxe,
                false,
                true,
                true,
                json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once", "BootSourceOverrideMode": "UEFI"}}),
            ),
            (
                BootDevice::Pxe,
                false,
                true,
                false,
                json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}),
            ),
            (
                BootDevice::Disk,
                true,
                false,
                true,
                json!({"Boot": {"BootSourceOverrideTarget": "Hdd", "BootSourceOverrideEnabled": "Continuous", "BootSourceOverrideMode": "Legacy"}}),
            ),
            (
                BootDevice::Disk,
                true,
                false,
                false,
                json!({"Boot": {"BootSourceOverrideTarget": "Hdd", "BootSourceOverrideEnabled": "Continuous"}}),
            ),
        ];
        for (device, persistent, uefi, has_mode, want) in cases {
            assert_eq!(boot_patch(device, persistent, uefi, has_mode), want);
        }
    }

    #[test]
    fn boot_settings_read_back() {
        let boot = |b: Value| json!({ "Boot": b });
        let setting = |device, persistent, uefi| BootSetting {
            device,
            persistent,
            uefi,
        };
        let cases = [
            (
                boot(
                    json!({"BootSourceOverrideEnabled": "Continuous", "BootSourceOverrideTarget": "Pxe", "BootSourceOverrideMode": "UEFI"}),
                ),
                setting(Some(BootDevice::Pxe), true, Some(true)),
            ),
            (
                boot(
                    json!({"BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": "Hdd", "BootSourceOverrideMode": "Legacy"}),
                ),
                setting(Some(BootDevice::Disk), false, Some(false)),
            ),
            (
                boot(
                    json!({"BootSourceOverrideEnabled": "Disabled", "BootSourceOverrideTarget": "Pxe"}),
                ),
                setting(None, false, None),
            ),
            (
                boot(
                    json!({"BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": "None"}),
                ),
                setting(None, false, None),
            ),
            (json!({}), setting(None, false, None)),
        ];
        for (system, want) in cases {
            assert_eq!(boot_setting(&system), Ok(want), "{system}");
        }
        let cd =
            boot(json!({"BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": "Cd"}));
        assert!(boot_setting(&cd).unwrap_err().contains("'Cd'"));
    }

    #[test]
    fn system_ids_become_paths() {
        let cases = [
            ("1", Ok("/redfish/v1/Systems/1")),
            (
                "System.Embedded.1",
                Ok("/redfish/v1/Systems/System.Embedded.1"),
            ),
            ("node a", Ok("/redfish/v1/Systems/node%20a")),
            ("/redfish/v1/Systems/abc", Ok("/redfish/v1/Systems/abc")),
            ("/redfish/v1/Systems/abc/", Ok("/redfish/v1/Systems/abc")),
            (" 7 ", Ok("/redfish/v1/Systems/7")),
            ("", Err(())),
            ("/redfish/v1/", Err(())),
            ("/other/Systems/1", Err(())),
            ("Systems/1", Err(())),
            ("/redfish/v1//Systems", Err(())),
        ];
        for (id, want) in cases {
            let got = system_path(id).map_err(|_| ());
            assert_eq!(got.as_deref().map_err(|_| ()), want, "{id:?}");
        }
    }

    #[test]
    fn allowable_reset_types_are_read() {
        let system = json!({"Actions": {"#ComputerSystem.Reset": {
            "target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
            "ResetType@Redfish.AllowableValues": ["On", "ForceOff"]}}});
        assert_eq!(
            allowed_reset_types(&system),
            Some(vec!["On".into(), "ForceOff".into()])
        );
        assert_eq!(allowed_reset_types(&json!({"Actions": {}})), None);
    }
}
