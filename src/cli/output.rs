//! How the CLI prints: tables for people, JSON for scripts.

use crate::inventory;
use crate::store::EnrollReport;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::Value;
use std::path::Path;
use std::process::ExitCode;

pub fn inventory_check(file: &Path, json: bool) -> ExitCode {
    match inventory::load(file) {
        Ok(inventory) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"valid": true, "format": inventory.format, "nodes": inventory.nodes.len()})
                );
            } else {
                println!(
                    "{}: valid {:?} inventory, {} node(s)",
                    file.display(),
                    inventory.format,
                    inventory.nodes.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            if json {
                println!("{}", serde_json::json!({"valid": false, "errors": errors}));
            } else {
                for error in &errors {
                    eprintln!("{error}");
                }
                eprintln!("{}: {} error(s)", file.display(), errors.len());
            }
            ExitCode::FAILURE
        }
    }
}

pub fn enroll_report(report: &EnrollReport, dry_run: bool, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
        return;
    }
    let verb = if dry_run { "would be " } else { "" };
    for name in &report.created {
        println!("{name}: {verb}enrolled");
    }
    for change in &report.updated {
        println!(
            "{}: {verb}updated ({})",
            change.name,
            change.fields.join(", ")
        );
    }
    for name in &report.unchanged {
        println!("{name}: unchanged");
    }
    println!(
        "{} created, {} updated, {} unchanged{}",
        report.created.len(),
        report.updated.len(),
        report.unchanged.len(),
        if dry_run {
            " (dry run: nothing was changed)"
        } else {
            ""
        }
    );
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn node_list(nodes: &[Value], json: bool) {
    let header = [
        "Name",
        "UUID",
        "BMC",
        "Power",
        "Provision state",
        "Target",
        "Services",
        "Last error",
    ];
    print_list(nodes, json, &header, |node| {
        let spec = &node["spec"];
        vec![
            text(&spec["name"]),
            text(&node["uuid"]),
            format!(
                "{} {}",
                text(&spec["bmc"]["kind"]),
                text(&spec["bmc"]["address"])
            ),
            match node["bmc_error"].as_str() {
                Some(reason) => format!("{} ({reason})", text(&node["power_state"])),
                None => text(&node["power_state"]),
            },
            text(&node["provision_state"]),
            text(&node["target_provision_state"]),
            text(&node["services_status"]),
            text(&node["last_error"]),
        ]
    });
}

pub fn node_show(node: &Value, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(node).unwrap_or_default());
        return;
    }
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_header(["Field", "Value"]);
    let spec = &node["spec"];
    let rows = [
        ("name", text(&spec["name"])),
        ("uuid", text(&node["uuid"])),
        ("provision_state", text(&node["provision_state"])),
        (
            "target_provision_state",
            text(&node["target_provision_state"]),
        ),
        ("services_status", text(&node["services_status"])),
        ("last_error", text(&node["last_error"])),
        ("power_state", text(&node["power_state"])),
        ("bmc_error", text(&node["bmc_error"])),
        ("bmc", text(&spec["bmc"])),
        ("nics", text(&spec["nics"])),
        ("boot_mode", text(&spec["boot_mode"])),
        ("properties", text(&spec["properties"])),
        ("network", text(&spec["network"])),
        ("image", text(&spec["image"])),
        ("roles", text(&spec["roles"])),
        ("groups", text(&spec["groups"])),
        ("waiting", text(&node["waiting"])),
    ];
    for (field, value) in rows {
        table.add_row([field.to_string(), value]);
    }
    let deploy = &node["deploy"];
    if deploy.is_object() {
        table.add_row(["deploy_step".to_string(), text(&deploy["step"])]);
        table.add_row(["deploy_image".to_string(), text(&deploy["image"])]);
        table.add_row(["deploy_progress".to_string(), text(&deploy["progress"])]);
        table.add_row(["agent_address".to_string(), text(&deploy["agent_address"])]);
        table.add_row(["agent_result".to_string(), text(&deploy["result"])]);
    }
    for (field, value) in inventory_rows(&node["inventory"]["data"]) {
        table.add_row([field, value]);
    }
    println!("{table}");
}

/// The agent-reported hardware, one row per fact (in-band inspection).
fn inventory_rows(data: &Value) -> Vec<(String, String)> {
    if !data.is_object() {
        return Vec::new();
    }
    let mut rows = vec![
        (
            "inventory_cpus".to_string(),
            format!("{} × {}", text(&data["cpus"]), text(&data["cpu_model"])),
        ),
        (
            "inventory_memory".to_string(),
            format!("{} MiB", data["memory_bytes"].as_u64().unwrap_or(0) >> 20),
        ),
    ];
    for disk in data["disks"].as_array().into_iter().flatten() {
        rows.push((
            format!("inventory_disk_{}", text(&disk["name"])),
            format!(
                "{} bytes ({} GiB), model {}, serial {}, rotational {}",
                disk["size_bytes"].as_u64().unwrap_or(0),
                disk["size_bytes"].as_u64().unwrap_or(0) >> 30,
                text(&disk["model"]),
                text(&disk["serial"]),
                text(&disk["rotational"])
            ),
        ));
    }
    for nic in data["nics"].as_array().into_iter().flatten() {
        rows.push((
            format!("inventory_nic_{}", text(&nic["name"])),
            format!(
                "MAC {}, carrier {}, {}",
                text(&nic["mac"]),
                text(&nic["carrier"]),
                text(&nic["operstate"])
            ),
        ));
    }
    rows
}

pub fn power(name: &str, reply: &Value, json: bool) {
    if json {
        println!("{reply}");
    } else {
        println!("{name}: power {}", text(&reply["power_state"]));
    }
}

pub fn leases(leases: &[Value], json: bool) {
    print_list(
        leases,
        json,
        &["IP", "MAC", "Node", "Expires (UTC)"],
        |lease| {
            let node = match lease["node"].as_str() {
                Some(name) => name.to_string(),
                None if lease["discovered"] == true => "(discovered)".to_string(),
                None => "-".to_string(),
            };
            vec![
                text(&lease["ip"]),
                text(&lease["mac"]),
                node,
                format_ms(lease["expires_at"].as_i64().unwrap_or_default()),
            ]
        },
    );
}

pub fn events(entries: &[Value], json: bool) {
    print_list(entries, json, &["Time (UTC)", "Event", "Detail"], |entry| {
        vec![
            format_ms(entry["at"].as_i64().unwrap_or_default()),
            text(&entry["kind"]),
            text(&entry["detail"]),
        ]
    });
}

/// A node's timeline: provision-state transitions and boot/deploy events (power, DHCP, script,
/// agent, inventory, image %, reboot, OS up) merged in time order.
pub fn timeline(transitions: &[Value], events: &[Value], json: bool) {
    let mut items: Vec<Value> = transitions
        .iter()
        .map(|t| {
            let mut t = t.clone();
            t["type"] = "transition".into();
            t
        })
        .chain(events.iter().map(|e| {
            let mut e = e.clone();
            e["type"] = "event".into();
            e
        }))
        .collect();
    // Stable: a transition and an event in the same millisecond keep their own order.
    items.sort_by_key(|item| item["at"].as_i64().unwrap_or_default());
    let header = ["Time (UTC)", "What", "Detail"];
    print_list(&items, json, &header, |item| {
        let at = format_ms(item["at"].as_i64().unwrap_or_default());
        if item["type"] == "transition" {
            vec![
                at,
                format!("{} → {}", text(&item["from"]), text(&item["to"])),
                format!("{}: {}", text(&item["input"]), text(&item["reason"])),
            ]
        } else {
            vec![at, text(&item["kind"]), text(&item["detail"])]
        }
    });
}

/// A list as pretty JSON for scripts, or as a table with one row per item for people.
fn print_list(items: &[Value], json: bool, header: &[&str], row: impl Fn(&Value) -> Vec<String>) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(items).unwrap_or_default()
        );
        return;
    }
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_header(header.to_vec());
    for item in items {
        table.add_row(row(item));
    }
    println!("{table}");
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS.mmm` (UTC), without a date crate.
fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = crate::civil::from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_times() {
        assert_eq!(super::format_ms(0), "1970-01-01 00:00:00.000");
        assert_eq!(
            super::format_ms(1_795_000_000_123),
            "2026-11-18 11:06:40.123"
        );
    }
}
