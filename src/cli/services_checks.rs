//! `kiln services prechecks` per host: the engine answers and is recent enough, its clock agrees
//! with ours, and the ports the host's services will listen on are free (or already held by
//! Kiln's own running containers).

use crate::deployer::engine::Engine;
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
) -> HostCheck {
    let mut check = HostCheck {
        host: host.name.clone(),
        endpoint: host.endpoint.describe(),
        version: "-".into(),
        skew: "-".into(),
        ports: "-".into(),
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
    use super::version_at_least;

    #[test]
    fn engine_versions() {
        assert!(version_at_least("20.10.24+dfsg1", (20, 10)));
        assert!(version_at_least("27.3.1", (20, 10)));
        assert!(!version_at_least("19.03.15", (20, 10)));
        assert!(!version_at_least("garbage", (20, 10)));
    }
}
