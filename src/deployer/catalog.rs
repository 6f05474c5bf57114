//! The service catalog as data: which containers make up each service, where they are placed,
//! what they depend on, their bootstrap containers and config templates. Kiln's OpenStack
//! catalog is embedded in the binary; `--catalog DIR` replaces it (or extends it, see
//! [`Catalog::load_dir`]).

use indexmap::IndexMap;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A validated catalog: services in file order, templates by name.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub services: IndexMap<String, Service>,
    pub templates: BTreeMap<String, String>,
}

/// One service as the catalog file writes it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Inventory groups whose hosts run this service (any one of them places it).
    #[serde(deserialize_with = "one_or_many")]
    pub group: Vec<String>,
    /// At most this many hosts of the group run the service (the first ones in inventory
    /// order): `1` for a single database server, as Kiln forms no Galera cluster.
    #[serde(default)]
    pub count: Option<usize>,
    /// Enabled unless globals say `enable_<name>: false` (or `true` for a service off by default).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Services that must be healthy on all their hosts before this one starts.
    #[serde(default)]
    pub after: Vec<String>,
    /// Rolling restart for clustered services: at most this share of hosts ("30%") or this
    /// many hosts ("1") change at once, each batch healthy before the next.
    #[serde(default)]
    pub serial: Option<String>,
    /// Keys of passwords.yaml this service's templates use; `kiln genpwd` fills them.
    #[serde(default)]
    pub passwords: Vec<String>,
    pub containers: Vec<ContainerTemplate>,
    /// One-shot containers run once per cluster (on the service's first host) before the
    /// service's containers start: database creation, schema sync, key setup.
    #[serde(default)]
    pub bootstrap: Vec<BootstrapTemplate>,
}

/// A container before rendering: every string may hold minijinja expressions.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerTemplate {
    pub name: String,
    pub image: String,
    /// Kolla image contract: the command and config files go into config.json for
    /// `kolla_start`. With `kolla: false` the command runs as the container's Cmd and config
    /// files are placed at their destinations directly.
    #[serde(default = "yes")]
    pub kolla: bool,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub environment: IndexMap<String, String>,
    #[serde(default)]
    pub volumes: Vec<String>,
    /// `host` (Kolla's default) or `bridge`.
    #[serde(default = "host_network")]
    pub network: String,
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub ulimits: BTreeMap<String, i64>,
    #[serde(default)]
    pub healthcheck: Option<HealthcheckTemplate>,
    #[serde(default = "unless_stopped")]
    pub restart: String,
    /// Seconds a stop waits for the container to exit before killing it (Kolla's
    /// `docker_graceful_timeout`; default 20).
    #[serde(default = "twenty")]
    pub stop_timeout: u64,
    /// TCP ports the container listens on (host networking); checked by `prechecks`.
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub config: Vec<ConfigFileTemplate>,
    /// Kolla's config.json `permissions`: ownership `kolla_set_configs` applies at start.
    #[serde(default)]
    pub permissions: Vec<Permission>,
}

#[derive(Clone, Debug, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    pub path: String,
    pub owner: String,
    #[serde(default)]
    pub recurse: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthcheckTemplate {
    /// A shell command (run with `CMD-SHELL`).
    pub test: String,
    /// Seconds between Docker's checks of a running container (Kolla's default 30). The
    /// deployer's startup probe does not wait for them: while a container starts it runs `test`
    /// itself, from every 0.25 s to every 5 s, and the first pass ends the wait.
    #[serde(default = "thirty")]
    pub interval: u64,
    #[serde(default = "thirty")]
    pub timeout: u64,
    #[serde(default = "three")]
    pub retries: u64,
    /// Seconds in which failed checks do not count (Kolla's default 5).
    #[serde(default = "five")]
    pub start_period: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFileTemplate {
    /// Name of a template in the catalog's `templates/` directory...
    #[serde(default)]
    pub template: Option<String>,
    /// ...or the template text inline.
    #[serde(default)]
    pub content: Option<String>,
    pub dest: String,
    #[serde(default = "root")]
    pub owner: String,
    #[serde(default = "private")]
    pub perm: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapTemplate {
    pub name: String,
    /// The service container this one is based on (image, volumes, config, network).
    pub container: String,
    /// Added to the base container's environment (`KOLLA_BOOTSTRAP` is always set).
    #[serde(default)]
    pub environment: IndexMap<String, String>,
    /// Replaces the base container's command.
    #[serde(default)]
    pub command: Option<String>,
    /// A standalone one-shot from another image (e.g. the database client creating this
    /// service's database): only `image`, `environment` and `command` (run with `sh -c`) apply;
    /// the base container's volumes and files are not used.
    #[serde(default)]
    pub image: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    /// `builtin` keeps Kiln's catalog and adds or replaces services by name.
    #[serde(default)]
    extends: Option<String>,
    services: IndexMap<String, Service>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: service {service}: {message}")]
    Invalid {
        file: String,
        service: String,
        message: String,
    },
}

const BUILTIN_FILE: &str = "builtin/openstack.yaml";
const BUILTIN_YAML: &str = include_str!("builtin/openstack.yaml");
const BUILTIN_TEMPLATES: &[(&str, &str)] = &[
    (
        "mariadb.cnf.j2",
        include_str!("builtin/templates/mariadb.cnf.j2"),
    ),
    (
        "rabbitmq.conf.j2",
        include_str!("builtin/templates/rabbitmq.conf.j2"),
    ),
    (
        "rabbitmq-env.conf.j2",
        include_str!("builtin/templates/rabbitmq-env.conf.j2"),
    ),
    (
        "keystone.conf.j2",
        include_str!("builtin/templates/keystone.conf.j2"),
    ),
    (
        "keystone-uwsgi.ini.j2",
        include_str!("builtin/templates/keystone-uwsgi.ini.j2"),
    ),
    (
        "glance-api.conf.j2",
        include_str!("builtin/templates/glance-api.conf.j2"),
    ),
    (
        "erlang.cookie.j2",
        include_str!("builtin/templates/erlang.cookie.j2"),
    ),
    (
        "placement.conf.j2",
        include_str!("builtin/templates/placement.conf.j2"),
    ),
    (
        "placement-uwsgi.ini.j2",
        include_str!("builtin/templates/placement-uwsgi.ini.j2"),
    ),
    (
        "nova.conf.j2",
        include_str!("builtin/templates/nova.conf.j2"),
    ),
    (
        "nova-api-uwsgi.ini.j2",
        include_str!("builtin/templates/nova-api-uwsgi.ini.j2"),
    ),
    (
        "haproxy.cfg.j2",
        include_str!("builtin/templates/haproxy.cfg.j2"),
    ),
    (
        "keepalived.conf.j2",
        include_str!("builtin/templates/keepalived.conf.j2"),
    ),
];

impl Catalog {
    /// Kiln's embedded OpenStack catalog.
    pub fn builtin() -> Result<Catalog, CatalogError> {
        let mut catalog = Catalog::default();
        for (name, text) in BUILTIN_TEMPLATES {
            catalog.templates.insert(name.to_string(), text.to_string());
        }
        let file = parse(BUILTIN_FILE, BUILTIN_YAML)?;
        catalog.services = file.services;
        catalog.validate(BUILTIN_FILE)?;
        Ok(catalog)
    }

    /// Loads `DIR/catalog.yaml` and `DIR/templates/*`. The directory's catalog replaces the
    /// built-in one unless it says `extends: builtin`, in which case its services are added to
    /// (or replace, by name) the built-in ones.
    pub fn load_dir(dir: &Path) -> Result<Catalog, CatalogError> {
        let path = dir.join("catalog.yaml");
        let text = read(&path)?;
        let file_name = path.display().to_string();
        let file = parse(&file_name, &text)?;
        let mut catalog = match file.extends.as_deref() {
            None => Catalog::default(),
            Some("builtin") => Catalog::builtin()?,
            Some(other) => {
                return Err(CatalogError::Parse {
                    file: file_name,
                    message: format!("extends: '{other}' is unknown (only 'builtin')"),
                });
            }
        };
        let templates = dir.join("templates");
        if templates.is_dir() {
            let entries = std::fs::read_dir(&templates).map_err(|source| CatalogError::Read {
                path: templates.clone(),
                source,
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_file() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    catalog.templates.insert(name, read(&path)?);
                }
            }
        }
        for (name, service) in file.services {
            catalog.services.insert(name, service);
        }
        catalog.validate(&file_name)?;
        Ok(catalog)
    }

    /// Every `after` names a service, there is no cycle, names are unique and every template
    /// exists: checked once at load so a deploy never stops half-way on a catalog mistake.
    fn validate(&self, file: &str) -> Result<(), CatalogError> {
        let invalid = |service: &str, message: String| CatalogError::Invalid {
            file: file.to_string(),
            service: service.to_string(),
            message,
        };
        let mut container_names = BTreeSet::new();
        for (name, service) in &self.services {
            if service.group.is_empty() {
                return Err(invalid(name, "group lists no inventory group".into()));
            }
            if service.count == Some(0) {
                return Err(invalid(name, "count must be at least 1".into()));
            }
            if service.containers.is_empty() {
                return Err(invalid(name, "lists no containers".into()));
            }
            for dep in &service.after {
                if !self.services.contains_key(dep) {
                    return Err(invalid(name, format!("after: '{dep}' is not a service")));
                }
            }
            if let Some(serial) = &service.serial {
                parse_serial(serial).map_err(|m| invalid(name, m))?;
            }
            for container in &service.containers {
                if !container_names.insert(container.name.clone()) {
                    return Err(invalid(
                        name,
                        format!("container name '{}' is used twice", container.name),
                    ));
                }
                if container.network != "host" && container.network != "bridge" {
                    return Err(invalid(
                        name,
                        format!("{}: network must be host or bridge", container.name),
                    ));
                }
                for file in &container.config {
                    self.check_config_file(file)
                        .map_err(|m| invalid(name, format!("{}: {m}", container.name)))?;
                }
            }
            for bootstrap in &service.bootstrap {
                if !container_names.insert(bootstrap.name.clone()) {
                    return Err(invalid(
                        name,
                        format!("container name '{}' is used twice", bootstrap.name),
                    ));
                }
                if !service
                    .containers
                    .iter()
                    .any(|c| c.name == bootstrap.container)
                {
                    return Err(invalid(
                        name,
                        format!(
                            "bootstrap {}: container '{}' is not one of this service's",
                            bootstrap.name, bootstrap.container
                        ),
                    ));
                }
            }
        }
        if let Some(cycle) = find_cycle(&self.services) {
            return Err(invalid(
                &cycle[0],
                format!("dependency cycle: {}", cycle.join(" → ")),
            ));
        }
        Ok(())
    }

    fn check_config_file(&self, file: &ConfigFileTemplate) -> Result<(), String> {
        match (&file.template, &file.content) {
            (Some(name), None) if !self.templates.contains_key(name) => {
                Err(format!("template '{name}' does not exist"))
            }
            (Some(_), None) | (None, Some(_)) => {
                if !file.dest.starts_with('/') {
                    return Err(format!("dest '{}' is not an absolute path", file.dest));
                }
                u32::from_str_radix(&file.perm, 8)
                    .map(|_| ())
                    .map_err(|_| format!("perm '{}' is not an octal mode", file.perm))
            }
            _ => Err(format!(
                "{}: give exactly one of template or content",
                file.dest
            )),
        }
    }

    /// Services in an order where each comes after everything it needs (stable otherwise).
    pub fn ordered(&self) -> Vec<&str> {
        let mut done: Vec<&str> = Vec::new();
        while done.len() < self.services.len() {
            let before = done.len();
            for (name, service) in &self.services {
                if !done.contains(&name.as_str())
                    && service.after.iter().all(|d| done.contains(&d.as_str()))
                {
                    done.push(name);
                }
            }
            if done.len() == before {
                break; // validate() rejects cycles; never loop forever regardless
            }
        }
        done
    }

    /// Every password key any service names, sorted.
    pub fn password_keys(&self) -> BTreeSet<String> {
        self.services
            .values()
            .flat_map(|s| s.passwords.iter().cloned())
            .collect()
    }
}

/// "30%" → Share(30), "2" → Count(2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serial {
    Percent(u32),
    Count(usize),
}

pub fn parse_serial(text: &str) -> Result<Serial, String> {
    let bad = || format!("serial '{text}' is neither N% (1-100) nor a host count ≥ 1");
    if let Some(pct) = text.strip_suffix('%') {
        let pct: u32 = pct.trim().parse().map_err(|_| bad())?;
        if !(1..=100).contains(&pct) {
            return Err(bad());
        }
        Ok(Serial::Percent(pct))
    } else {
        let count: usize = text.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(bad());
        }
        Ok(Serial::Count(count))
    }
}

impl Serial {
    /// How many of `hosts` hosts change at once (at least one).
    pub fn batch_size(self, hosts: usize) -> usize {
        match self {
            Serial::Percent(pct) => (hosts * pct as usize).div_ceil(100).max(1),
            Serial::Count(count) => count.max(1),
        }
    }
}

fn find_cycle(services: &IndexMap<String, Service>) -> Option<Vec<String>> {
    fn visit(
        name: &str,
        services: &IndexMap<String, Service>,
        stack: &mut Vec<String>,
        finished: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = stack.iter().position(|s| s == name) {
            let mut cycle = stack[start..].to_vec();
            cycle.push(name.to_string());
            return Some(cycle);
        }
        if finished.contains(name) {
            return None;
        }
        stack.push(name.to_string());
        for dep in services
            .get(name)
            .map(|s| s.after.as_slice())
            .unwrap_or(&[])
        {
            if let Some(cycle) = visit(dep, services, stack, finished) {
                return Some(cycle);
            }
        }
        stack.pop();
        finished.insert(name.to_string());
        None
    }
    let mut finished = BTreeSet::new();
    services
        .keys()
        .find_map(|name| visit(name, services, &mut Vec::new(), &mut finished))
}

fn parse(file: &str, text: &str) -> Result<CatalogFile, CatalogError> {
    serde_saphyr::from_str(text).map_err(|err| CatalogError::Parse {
        file: file.to_string(),
        message: err.to_string(),
    })
}

fn read(path: &Path) -> Result<String, CatalogError> {
    std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

fn yes() -> bool {
    true
}
fn host_network() -> String {
    "host".into()
}
fn unless_stopped() -> String {
    "unless-stopped".into()
}
fn five() -> u64 {
    5
}
fn twenty() -> u64 {
    20
}
fn thirty() -> u64 {
    30
}
fn three() -> u64 {
    3
}
fn root() -> String {
    "root".into()
}
fn private() -> String {
    "0600".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(yaml: &str) -> Result<Catalog, CatalogError> {
        let file = parse("test.yaml", yaml)?;
        let catalog = Catalog {
            services: file.services,
            templates: BTreeMap::from([("t.j2".to_string(), "x".to_string())]),
        };
        catalog.validate("test.yaml")?;
        Ok(catalog)
    }

    const BASE: &str =
        "services:\n  db:\n    group: control\n    containers:\n      - {name: db, image: i}\n";

    #[test]
    fn builtin_catalog_is_valid_and_ordered() {
        let catalog = Catalog::builtin().expect("builtin catalog");
        let order = catalog.ordered();
        assert_eq!(order.len(), catalog.services.len());
        let pos = |n: &str| order.iter().position(|s| *s == n).expect(n);
        assert!(pos("mariadb") < pos("keystone"));
        assert!(pos("keystone") < pos("glance"));
        assert!(catalog.password_keys().contains("database_password"));
    }

    #[test]
    fn unknown_dependency_is_named() {
        let yaml = format!("{BASE}    after: [nope]\n");
        let err = catalog(&yaml).unwrap_err().to_string();
        assert!(
            err.contains("service db") && err.contains("'nope'"),
            "{err}"
        );
    }

    #[test]
    fn cycles_are_rejected_with_the_path() {
        let yaml = "services:\n  a:\n    group: g\n    after: [b]\n    containers: [{name: a, image: i}]\n  b:\n    group: g\n    after: [a]\n    containers: [{name: b, image: i}]\n";
        let err = catalog(yaml).unwrap_err().to_string();
        assert!(err.contains("a → b → a"), "{err}");
    }

    #[test]
    fn unknown_fields_and_missing_templates_are_errors() {
        let err = catalog(&BASE.replace("image: i", "image: i, imgae: j"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("imgae"), "{err}");
        let yaml = BASE.replace(
            "image: i",
            "image: i, config: [{template: missing.j2, dest: /x}]",
        );
        let err = catalog(&yaml).unwrap_err().to_string();
        assert!(err.contains("missing.j2"), "{err}");
        let yaml = BASE.replace(
            "image: i",
            "image: i, config: [{template: t.j2, dest: /x, perm: '9'}]",
        );
        assert!(catalog(&yaml).unwrap_err().to_string().contains("octal"));
    }

    #[test]
    fn serial_batches() {
        assert_eq!(parse_serial("30%").unwrap().batch_size(10), 3);
        assert_eq!(parse_serial("30%").unwrap().batch_size(1), 1);
        assert_eq!(parse_serial("50%").unwrap().batch_size(3), 2);
        assert_eq!(parse_serial("2").unwrap().batch_size(5), 2);
        assert!(parse_serial("0").is_err());
        assert!(parse_serial("101%").is_err());
        assert!(parse_serial("x").is_err());
    }

    #[test]
    fn group_accepts_one_or_many() {
        let c = catalog(BASE).unwrap();
        assert_eq!(c.services["db"].group, vec!["control"]);
        let c = catalog(&BASE.replace("group: control", "group: [control, compute]")).unwrap();
        assert_eq!(c.services["db"].group, vec!["control", "compute"]);
    }
}
