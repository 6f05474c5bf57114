//! The hosts the container deployer places services on, and how to reach each one's Docker
//! Engine. Read from a hosts file (`hosts:`, Kolla's multinode inventory in YAML) or from a rack
//! inventory (`nodes:`), whose nodes Kiln provisioned and reaches over mutual TLS with its CA.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    /// The address services bind to and peers use (Kolla's `api_interface_address`).
    pub address: IpAddr,
    pub groups: Vec<String>,
    pub endpoint: Endpoint,
}

/// How to reach a host's Docker Engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// Plain TCP (`tcp://host:2375`): only for labs.
    Tcp(String),
    /// Mutual TLS (`tcp://host:2376`).
    Tls {
        address: String,
        tls: TlsSource,
    },
    /// `ssh://[user@]host[:port]`: the system ssh client runs `docker system dial-stdio` on the
    /// host (engine/ssh_tunnel.rs); `key` is the private key to offer (`ssh_key:`), else ssh's
    /// own configuration decides.
    Ssh {
        url: String,
        key: Option<PathBuf>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSource {
    /// Kiln's CA and the deployer's client certificate in the data directory.
    Kiln,
    Files {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
}

impl Endpoint {
    /// For messages: never carries credentials.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Unix(path) => format!("unix://{}", path.display()),
            Endpoint::Tcp(address) => format!("tcp://{address}"),
            Endpoint::Tls { address, .. } => format!("tcp://{address} (TLS)"),
            Endpoint::Ssh { url, .. } => url.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct HostsError {
    pub file: String,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    hosts: Vec<HostWire>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostWire {
    name: String,
    #[serde(default)]
    address: Option<IpAddr>,
    docker: String,
    #[serde(default)]
    tls: Option<TlsWire>,
    /// Private key for an `ssh://` engine (Kolla's `ansible_ssh_private_key_file`).
    #[serde(default)]
    ssh_key: Option<PathBuf>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TlsWire {
    /// `tls: kiln`
    Named(String),
    Files {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
}

/// Reads a hosts file or a rack inventory (detected by its top-level key).
pub fn load(path: &Path) -> Result<Vec<Host>, HostsError> {
    let file = path.display().to_string();
    let err = |message: String| HostsError {
        file: file.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let is_hosts_file = text.lines().any(|line| line.trim_end() == "hosts:");
    let hosts = if is_hosts_file {
        parse_hosts(&text).map_err(err)?
    } else {
        let inventory = crate::inventory::parse(&file, &text).map_err(|errors| {
            err(errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"))
        })?;
        from_rack(&inventory.nodes).map_err(err)?
    };
    check_unique(&hosts).map_err(err)?;
    Ok(hosts)
}

pub fn parse_hosts(text: &str) -> Result<Vec<Host>, String> {
    let wire: HostsFile = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    if wire.hosts.is_empty() {
        return Err("hosts: the file lists no hosts".into());
    }
    wire.hosts
        .into_iter()
        .enumerate()
        .map(|(index, host)| {
            host_from_wire(host).map_err(|message| format!("hosts[{index}]: {message}"))
        })
        .collect()
}

fn host_from_wire(wire: HostWire) -> Result<Host, String> {
    let tls = match wire.tls {
        None => None,
        Some(TlsWire::Named(name)) if name == "kiln" => Some(TlsSource::Kiln),
        Some(TlsWire::Named(other)) => {
            return Err(format!(
                "tls: '{other}' is neither 'kiln' nor {{ca, cert, key}}"
            ));
        }
        Some(TlsWire::Files { ca, cert, key }) => Some(TlsSource::Files { ca, cert, key }),
    };
    let mut endpoint = parse_endpoint(&wire.docker, tls).map_err(|m| format!("docker: {m}"))?;
    match (&mut endpoint, wire.ssh_key) {
        (Endpoint::Ssh { key, .. }, Some(path)) => *key = Some(path),
        (_, Some(_)) => return Err("ssh_key: only an ssh:// docker URL uses a key".into()),
        (_, None) => {}
    }
    let address = match wire.address {
        Some(address) => address,
        None => endpoint_ip(&endpoint).ok_or_else(|| {
            "address: needed when the docker URL does not name the host by IP".to_string()
        })?,
    };
    Ok(Host {
        name: wire.name,
        address,
        groups: wire.groups,
        endpoint,
    })
}

pub fn parse_endpoint(url: &str, tls: Option<TlsSource>) -> Result<Endpoint, String> {
    if let Some(path) = url.strip_prefix("unix://") {
        if tls.is_some() {
            return Err("tls makes no sense on a unix socket".into());
        }
        return Ok(Endpoint::Unix(PathBuf::from(path)));
    }
    if url.starts_with("ssh://") {
        if tls.is_some() {
            return Err("tls makes no sense over ssh".into());
        }
        crate::deployer::engine::ssh_tunnel::parse_target(url)?;
        return Ok(Endpoint::Ssh {
            url: url.to_string(),
            key: None,
        });
    }
    let address = url
        .strip_prefix("tcp://")
        .ok_or_else(|| format!("'{url}' is not unix://, tcp:// or ssh://"))?;
    if address.is_empty() || !address.contains(':') {
        return Err(format!("'{url}' needs host:port"));
    }
    Ok(match tls {
        Some(tls) => Endpoint::Tls {
            address: address.to_string(),
            tls,
        },
        None => Endpoint::Tcp(address.to_string()),
    })
}

fn endpoint_ip(endpoint: &Endpoint) -> Option<IpAddr> {
    let address = match endpoint {
        Endpoint::Tcp(address) | Endpoint::Tls { address, .. } => address.as_str(),
        Endpoint::Unix(_) => return Some(IpAddr::from([127, 0, 0, 1])),
        Endpoint::Ssh { url, .. } => {
            let target = crate::deployer::engine::ssh_tunnel::parse_target(url).ok()?;
            return target.host.parse().ok();
        }
    };
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_matches(['[', ']']).parse().ok()
}

/// A provisioned rack: each node with a static address runs Docker on 2376 with Kiln's TLS.
pub fn from_rack(nodes: &[crate::model::NodeSpec]) -> Result<Vec<Host>, String> {
    nodes
        .iter()
        .map(|node| {
            let network = node.network.as_ref().ok_or_else(|| {
                format!(
                    "node {}: has no network.address, so the deployer cannot reach it",
                    node.name
                )
            })?;
            let mut groups: Vec<String> =
                node.roles.iter().map(|r| r.as_str().to_string()).collect();
            groups.extend(node.groups.iter().cloned());
            Ok(Host {
                name: node.name.clone(),
                address: IpAddr::V4(network.address),
                groups,
                endpoint: Endpoint::Tls {
                    address: format!("{}:2376", network.address),
                    tls: TlsSource::Kiln,
                },
            })
        })
        .collect()
}

fn check_unique(hosts: &[Host]) -> Result<(), String> {
    let mut seen = BTreeMap::new();
    for host in hosts {
        if seen.insert(host.name.as_str(), ()).is_some() {
            return Err(format!("host name '{}' appears twice", host.name));
        }
    }
    Ok(())
}

/// Group name → host names, Kolla style: every host is also in `all`.
pub fn groups(hosts: &[Host]) -> BTreeMap<String, Vec<String>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for host in hosts {
        groups
            .entry("all".into())
            .or_default()
            .push(host.name.clone());
        for group in &host.groups {
            groups
                .entry(group.clone())
                .or_default()
                .push(host.name.clone());
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_with_every_endpoint_kind() {
        let text = "hosts:\n\
          - {name: a, docker: 'unix:///run/docker.sock', groups: [control]}\n\
          - {name: b, docker: 'tcp://10.0.0.2:2375', groups: [compute]}\n\
          - {name: c, docker: 'tcp://10.0.0.3:2376', tls: kiln}\n\
          - {name: d, address: 10.0.0.4, docker: 'ssh://root@d.example'}\n\
          - {name: e, docker: 'ssh://ops@10.0.0.5:2222', ssh_key: /keys/ops}\n";
        let hosts = parse_hosts(text).expect("valid");
        assert_eq!(hosts[0].endpoint, Endpoint::Unix("/run/docker.sock".into()));
        assert_eq!(hosts[1].address.to_string(), "10.0.0.2");
        assert_eq!(
            hosts[2].endpoint,
            Endpoint::Tls {
                address: "10.0.0.3:2376".into(),
                tls: TlsSource::Kiln
            }
        );
        assert_eq!(hosts[3].address.to_string(), "10.0.0.4");
        assert_eq!(hosts[4].address.to_string(), "10.0.0.5", "from the ssh URL");
        assert_eq!(
            hosts[4].endpoint,
            Endpoint::Ssh {
                url: "ssh://ops@10.0.0.5:2222".into(),
                key: Some("/keys/ops".into())
            }
        );
        let groups = groups(&hosts);
        assert_eq!(groups["all"].len(), 5);
        assert_eq!(groups["compute"], vec!["b"]);
    }

    #[test]
    fn shipped_examples_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let hosts = load(&root.join("hosts.yaml")).expect("examples/hosts.yaml");
        assert_eq!(hosts.len(), 4);
        assert!(matches!(hosts[3].endpoint, Endpoint::Ssh { .. }));
        let rack = load(&root.join("rack.yaml")).expect("examples/rack.yaml as hosts");
        assert!(rack.iter().all(|h| matches!(
            &h.endpoint,
            Endpoint::Tls { address, tls: TlsSource::Kiln } if address.ends_with(":2376")
        )));
        assert!(rack[0].groups.contains(&"control".to_string()));
    }

    #[test]
    fn bad_hosts_are_named() {
        let err = parse_hosts("hosts:\n  - {name: a, docker: 'http://x:1'}\n").unwrap_err();
        assert!(err.contains("hosts[0]: docker:"), "{err}");
        let err = parse_hosts("hosts:\n  - {name: a, docker: 'ssh://root@a'}\n").unwrap_err();
        assert!(err.contains("address"), "{err}");
        let err = parse_hosts("hosts:\n  - {name: a, docker: 'ssh://a:99999'}\n").unwrap_err();
        assert!(
            err.contains("hosts[0]: docker:") && err.contains("port"),
            "{err}"
        );
        let err =
            parse_hosts("hosts:\n  - {name: a, docker: 'tcp://10.0.0.1:2375', ssh_key: /k}\n")
                .unwrap_err();
        assert!(err.contains("ssh_key"), "{err}");
        let err = parse_hosts("hosts:\n  - {name: a, dokcer: x}\n").unwrap_err();
        assert!(err.contains("dokcer"), "{err}");
    }
}
