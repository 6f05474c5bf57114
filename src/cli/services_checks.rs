//! `kiln services prechecks` per host: the engine answers and is recent enough, its clock agrees
//! with ours, the ports the host's services will listen on are free (or already held by Kiln's
//! own running containers), and its root directory has room (measured once one of the host's
//! images is present: after `kiln services pull`, or on a redeploy).

use crate::deployer::engine::{DiskFree, Engine};
use crate::deployer::hosts::Host;
use crate::deployer::plan::RunState;
use crate::deployer::render::RenderedService;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Oldest engine Kiln drives (Debian bookworm's docker.io, API 1.41).
const MIN_ENGINE: (u32, u32) = (20, 10);
const MAX_SKEW_S: i64 = 10;

pub struct HostCheck {
    pub host: String,
    endpoint: String,
    version: String,
    skew: String,
    ports: String,
    disk: String,
    pub problems: Vec<String>,
}

impl HostCheck {
    pub fn row(&self) -> Vec<String> {
        vec![
            self.host.clone(),
            self.endpoint.clone(),
            self.version.clone(),
            self.skew.clone(),
            self.ports.clone(),
            self.disk.clone(),
            if self.problems.is_empty() {
                "ok"
            } else {
                "FAILED"
            }
            .to_string(),
        ]
    }
}

pub async fn check_host(
    host: &Host,
    engine: Option<Arc<dyn Engine>>,
    rendered: &[RenderedService],
    min_free_bytes: u64,
) -> HostCheck {
    let mut check = HostCheck {
        host: host.name.clone(),
        endpoint: host.endpoint.describe(),
        version: "-".into(),
        skew: "-".into(),
        ports: "-".into(),
        disk: "-".into(),
        problems: Vec::new(),
    };
    let Some(engine) = engine else {
        check.problems.push("no engine configured".into());
        return check;
    };
    let info = match engine.info().await {
        Ok(info) => info,
        Err(err) => {
            check.problems.push(err.to_string());
            return check;
        }
    };
    check.version = info.version.clone();
    if !version_at_least(&info.version, MIN_ENGINE) {
        check.problems.push(format!(
            "Docker Engine {} is older than {}.{}",
            info.version, MIN_ENGINE.0, MIN_ENGINE.1
        ));
    }
    if let Some(remote) = info.system_time {
        let local = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let skew = remote - local;
        check.skew = format!("{skew:+} s");
        if skew.abs() > MAX_SKEW_S {
            check.problems.push(format!(
                "clock differs from this machine's by {skew:+} s (more than {MAX_SKEW_S} s breaks tokens and clustering)"
            ));
        }
    }
    // Ports held by Kiln's own running containers are expected to answer.
    let ours: BTreeSet<u16> = match engine.list_managed().await {
        Ok(list) => {
            let running: BTreeSet<String> = list
                .into_iter()
                .filter(|o| o.state == RunState::Running)
                .map(|o| o.name)
                .collect();
            containers_on(host, rendered)
                .filter(|c| running.contains(&c.name))
                .flat_map(|c| c.ports.iter().copied())
                .collect()
        }
        Err(_) => BTreeSet::new(),
    };
    let wanted: BTreeSet<u16> = containers_on(host, rendered)
        .flat_map(|c| c.ports.iter().copied())
        .collect();
    let mut busy = Vec::new();
    for port in wanted.difference(&ours) {
        if port_answers(host, *port).await {
            busy.push(*port);
        }
    }
    let images: BTreeSet<String> = containers_on(host, rendered)
        .map(|c| c.image.clone())
        .collect();
    let images: Vec<String> = images.into_iter().collect();
    match engine.free_disk(&images).await {
        Ok(free) => {
            let (text, problem) = disk_verdict(free.as_ref(), min_free_bytes);
            check.disk = text;
            check.problems.extend(problem);
        }
        Err(err) => check.problems.push(format!("measuring free disk: {err}")),
    }
    check.ports = format!("{} needed, {} busy", wanted.len(), busy.len());
    for port in busy {
        check.problems.push(format!(
            "port {port} on {} is already in use by something that is not Kiln's",
            host.address
        ));
    }
    check
}

fn containers_on<'a>(
    host: &'a Host,
    rendered: &'a [RenderedService],
) -> impl Iterator<Item = &'a crate::deployer::spec::ContainerSpec> {
    rendered
        .iter()
        .flat_map(|s| s.hosts.iter())
        .filter(move |(h, _)| *h == host.name)
        .flat_map(|(_, containers)| containers.iter())
}

async fn port_answers(host: &Host, port: u16) -> bool {
    let address = std::net::SocketAddr::new(host.address, port);
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(address)
        )
        .await,
        Ok(Ok(_))
    )
}

/// The DISK column and, below the minimum, the problem in plain words.
fn disk_verdict(free: Option<&DiskFree>, min_free_bytes: u64) -> (String, Option<String>) {
    let Some(free) = free else {
        return ("unknown (no image yet)".into(), None);
    };
    let text = format!("{} free", gib(free.available_bytes));
    let problem = (free.available_bytes < min_free_bytes).then(|| {
        format!(
            "only {} free under {} (prechecks want {}: globals precheck_min_free_gb)",
            gib(free.available_bytes),
            free.root,
            gib(min_free_bytes)
        )
    });
    (text, problem)
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn version_at_least(version: &str, min: (u32, u32)) -> bool {
    let mut parts = version
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= min
}

#[cfg(test)]
mod tests {
    use super::{DiskFree, disk_verdict, version_at_least};

    #[test]
    fn disk_room() {
        let free = |gib: u64| DiskFree {
            root: "/var/lib/docker".into(),
            available_bytes: gib << 30,
        };
        assert_eq!(
            disk_verdict(None, 2 << 30),
            ("unknown (no image yet)".to_string(), None)
        );
        let (text, problem) = disk_verdict(Some(&free(40)), 2 << 30);
        assert_eq!((text.as_str(), problem), ("40.0 GiB free", None));
        let (_, problem) = disk_verdict(Some(&free(2)), 2 << 30);
        assert_eq!(problem, None, "exactly the minimum is enough");
        let (text, problem) = disk_verdict(Some(&free(1)), 2 << 30);
        assert_eq!(text, "1.0 GiB free");
        let problem = problem.expect("below the minimum");
        assert!(
            problem.contains("only 1.0 GiB free under /var/lib/docker")
                && problem.contains("2.0 GiB")
                && problem.contains("precheck_min_free_gb"),
            "{problem}"
        );
    }

    #[test]
    fn engine_versions() {
        assert!(version_at_least("20.10.24+dfsg1", (20, 10)));
        assert!(version_at_least("27.3.1", (20, 10)));
        assert!(!version_at_least("19.03.15", (20, 10)));
        assert!(!version_at_least("garbage", (20, 10)));
    }
}
