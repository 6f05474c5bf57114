//! Rendering: catalog + hosts + globals + passwords → the exact containers (with their config
//! files) each host should run. Pure: nothing here talks to an engine, so `genconfig` and the
//! reconciler see the same result and the tests need no Docker.

use super::catalog::{Catalog, ConfigFileTemplate, ContainerTemplate, Serial, parse_serial};
use super::globals::{Globals, Passwords};
use super::hosts::{Host, groups};
use super::spec::{ContainerSpec, FileSpec, Healthcheck, KOLLA_CONFIG_DIR, Kind};
use minijinja::{Environment, UndefinedBehavior, Value};
use serde_json::json;
use std::collections::BTreeMap;

/// One service placed on its hosts.
#[derive(Clone, Debug)]
pub struct RenderedService {
    pub name: String,
    pub after: Vec<String>,
    pub serial: Option<Serial>,
    /// (host name, its containers) in inventory order.
    pub hosts: Vec<(String, Vec<ContainerSpec>)>,
    /// One-shot containers and the host they run on (the service's first host).
    pub bootstrap: Option<(String, Vec<ContainerSpec>)>,
}

#[derive(Debug, thiserror::Error)]
#[error("service {service}, host {host}, {what}: {message}")]
pub struct RenderError {
    pub service: String,
    pub host: String,
    pub what: String,
    pub message: String,
}

/// Renders every enabled service with at least one host in its groups, in dependency order.
pub fn render(
    catalog: &Catalog,
    hosts: &[Host],
    globals: &Globals,
    passwords: &Passwords,
) -> Result<Vec<RenderedService>, RenderError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
        .map_err(|e| RenderError {
            service: "-".into(),
            host: "-".into(),
            what: "template syntax".into(),
            message: e.to_string(),
        })?;
    env.set_syntax(syntax);
    env.add_filter("bool", |v: Value| v.is_true() || v.as_str() == Some("yes"));
    let groups = groups(hosts);
    let hostvars: BTreeMap<&str, serde_json::Value> = hosts
        .iter()
        .map(|h| {
            let vars = json!({"api_interface_address": h.address.to_string(), "groups": h.groups});
            (h.name.as_str(), vars)
        })
        .collect();
    let mut base = globals.values.clone();
    base.extend(passwords.as_json());
    base.insert("groups".into(), json!(groups));
    base.insert("hostvars".into(), json!(hostvars));
    if !base.contains_key("kolla_internal_vip_address") {
        let first_control = groups
            .get("control")
            .and_then(|names| names.first())
            .and_then(|name| hosts.iter().find(|h| &h.name == name))
            .or(hosts.first());
        if let Some(host) = first_control {
            base.insert(
                "kolla_internal_vip_address".into(),
                json!(host.address.to_string()),
            );
        }
    }

    // Where each enabled service runs, for templates that point at it
    // (`service_hosts['rabbitmq']` → [{name, address}]).
    let mut service_hosts = serde_json::Map::new();
    for (name, service) in &catalog.services {
        if globals.enabled(name, service.enabled) {
            let placed: Vec<serde_json::Value> = place(service, hosts)
                .iter()
                .map(|h| json!({"name": h.name, "address": h.address.to_string()}))
                .collect();
            service_hosts.insert(name.clone(), serde_json::Value::Array(placed));
        }
    }
    base.insert(
        "service_hosts".into(),
        serde_json::Value::Object(service_hosts),
    );

    let mut rendered = Vec::new();
    for name in catalog.ordered() {
        let service = &catalog.services[name];
        if !globals.enabled(name, service.enabled) {
            continue;
        }
        let placed = place(service, hosts);
        if placed.is_empty() {
            continue;
        }
        let mut per_host = Vec::new();
        for host in &placed {
            let mut context = base.clone();
            context.insert("inventory_hostname".into(), json!(host.name));
            context.insert(
                "api_interface_address".into(),
                json!(host.address.to_string()),
            );
            context.insert("service_name".into(), json!(name));
            let renderer = Renderer {
                env: &env,
                catalog,
                context: Value::from(minijinja::value::Serde(&context)),
                service: name,
                host: &host.name,
            };
            let containers = service
                .containers
                .iter()
                .map(|t| renderer.container(t, Kind::Service))
                .collect::<Result<Vec<_>, _>>()?;
            let bootstrap = service
                .bootstrap
                .iter()
                .map(|b| {
                    let base = service
                        .containers
                        .iter()
                        .find(|c| c.name == b.container)
                        .expect("validated: bootstrap names one of the service's containers");
                    let mut template = base.clone();
                    template.name = b.name.clone();
                    if let Some(image) = &b.image {
                        // Standalone: another image, its own command, nothing of the base's.
                        template.image = image.clone();
                        template.kolla = false;
                        template.volumes.clear();
                        template.config.clear();
                        template.permissions.clear();
                        template.cap_add.clear();
                        template.privileged = false;
                        template.environment = b.environment.clone();
                    } else {
                        template
                            .environment
                            .insert("KOLLA_BOOTSTRAP".into(), String::new());
                        template.environment.extend(b.environment.clone());
                    }
                    if b.command.is_some() {
                        template.command = b.command.clone();
                    }
                    template.healthcheck = None;
                    template.restart = "no".into();
                    renderer.container(&template, Kind::Bootstrap)
                })
                .collect::<Result<Vec<_>, _>>()?;
            per_host.push((host.name.clone(), containers, bootstrap));
        }
        let bootstrap = per_host
            .first()
            .filter(|(_, _, b)| !b.is_empty())
            .map(|(host, _, b)| (host.clone(), b.clone()));
        rendered.push(RenderedService {
            name: name.to_string(),
            after: service.after.clone(),
            serial: service.serial.as_deref().and_then(|s| parse_serial(s).ok()),
            hosts: per_host.into_iter().map(|(h, c, _)| (h, c)).collect(),
            bootstrap,
        });
    }
    Ok(rendered)
}

/// The hosts of the service's groups (or every host for `all`), at most `count` of them.
fn place<'h>(service: &super::catalog::Service, hosts: &'h [Host]) -> Vec<&'h Host> {
    hosts
        .iter()
        .filter(|h| {
            service.group.iter().any(|g| g == "all")
                || h.groups.iter().any(|g| service.group.contains(g))
        })
        .take(service.count.unwrap_or(usize::MAX))
        .collect()
}

struct Renderer<'a> {
    env: &'a Environment<'a>,
    catalog: &'a Catalog,
    context: Value,
    service: &'a str,
    host: &'a str,
}

impl Renderer<'_> {
    fn error(&self, what: String, err: impl std::fmt::Display) -> RenderError {
        RenderError {
            service: self.service.to_string(),
            host: self.host.to_string(),
            what,
            message: err.to_string(),
        }
    }

    fn text(&self, what: &str, template: &str) -> Result<String, RenderError> {
        if !template.contains("{{") && !template.contains("{%") {
            return Ok(template.to_string());
        }
        self.env
            .render_str(template, &self.context)
            .map_err(|e| self.error(what.to_string(), e))
    }

    fn container(&self, t: &ContainerTemplate, kind: Kind) -> Result<ContainerSpec, RenderError> {
        let at = |field: &str| format!("container {} {field}", t.name);
        let image = self.text(&at("image"), &t.image)?;
        let command = t
            .command
            .as_deref()
            .map(|c| self.text(&at("command"), c))
            .transpose()?;
        let mut environment = BTreeMap::new();
        for (key, value) in &t.environment {
            environment.insert(key.clone(), self.text(&at(key), value)?);
        }
        // A volume that renders empty is left out (mounts only some configurations need).
        let mut volumes = Vec::new();
        for volume in &t.volumes {
            let text = self.text(&at("volumes"), volume)?;
            if !text.trim().is_empty() {
                volumes.push(text);
            }
        }
        let ports = t
            .ports
            .iter()
            .map(|p| {
                let text = self.text(&at("ports"), p)?;
                text.trim()
                    .parse::<u16>()
                    .map_err(|_| self.error(at("ports"), format!("'{text}' is not a port")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let healthcheck = t
            .healthcheck
            .as_ref()
            .map(|h| {
                Ok::<_, RenderError>(Healthcheck {
                    test: self.text(&at("healthcheck"), &h.test)?,
                    interval_s: h.interval,
                    timeout_s: h.timeout,
                    retries: h.retries,
                    start_period_s: h.start_period,
                })
            })
            .transpose()?;
        let rendered_files = t
            .config
            .iter()
            .map(|f| Ok((f, self.config_file(&t.name, f)?)))
            .collect::<Result<Vec<_>, RenderError>>()?;
        let (cmd, files) = if t.kolla {
            environment.insert("KOLLA_CONFIG_STRATEGY".into(), "COPY_ALWAYS".into());
            environment.insert("KOLLA_SERVICE_NAME".into(), self.service.to_string());
            (
                None,
                kolla_files(command.as_deref(), &rendered_files, &t.permissions),
            )
        } else {
            let cmd = command.map(|c| vec!["/bin/sh".to_string(), "-c".to_string(), c]);
            let files = rendered_files
                .iter()
                .map(|(f, content)| FileSpec {
                    path: f.dest.clone(),
                    content: content.clone(),
                    mode: u32::from_str_radix(&f.perm, 8).unwrap_or(0o600),
                })
                .collect();
            (cmd, files)
        };
        Ok(ContainerSpec {
            name: t.name.clone(),
            service: self.service.to_string(),
            kind,
            image,
            cmd,
            environment,
            volumes,
            network_host: t.network == "host",
            cap_add: t.cap_add.clone(),
            privileged: t.privileged,
            ulimits: t.ulimits.clone(),
            healthcheck,
            restart: t.restart.clone(),
            stop_timeout_s: t.stop_timeout,
            ports,
            files,
        })
    }

    fn config_file(&self, container: &str, f: &ConfigFileTemplate) -> Result<String, RenderError> {
        let what = format!("container {container} file {}", f.dest);
        let source = match (&f.template, &f.content) {
            (Some(name), _) => self
                .catalog
                .templates
                .get(name)
                .cloned()
                .unwrap_or_default(),
            (None, Some(content)) => content.clone(),
            (None, None) => String::new(),
        };
        self.env
            .render_str(&source, &self.context)
            .map_err(|e| self.error(what, e))
    }
}

/// Kolla's contract: files under /var/lib/kolla/config_files plus a config.json telling
/// `kolla_set_configs` where each goes, its owner and mode, and the command to exec.
fn kolla_files(
    command: Option<&str>,
    files: &[(&ConfigFileTemplate, String)],
    permissions: &[super::catalog::Permission],
) -> Vec<FileSpec> {
    let mut out = Vec::new();
    let mut entries = Vec::new();
    for (index, (template, content)) in files.iter().enumerate() {
        let base = template.dest.rsplit('/').next().unwrap_or("file");
        let source = format!("{KOLLA_CONFIG_DIR}/{index:02}-{base}");
        entries.push(json!({
            "source": source,
            "dest": template.dest,
            "owner": template.owner,
            "perm": template.perm,
        }));
        out.push(FileSpec {
            path: source,
            content: content.clone(),
            mode: 0o600,
        });
    }
    let config = json!({
        "command": command.unwrap_or(""),
        "config_files": entries,
        "permissions": permissions,
    });
    out.push(FileSpec {
        path: format!("{KOLLA_CONFIG_DIR}/config.json"),
        content: serde_json::to_string_pretty(&config).unwrap_or_default(),
        mode: 0o600,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployer::hosts::parse_hosts;

    fn setup() -> (Catalog, Vec<Host>, Globals, Passwords) {
        let catalog = Catalog::builtin().unwrap();
        let hosts = parse_hosts(
            "hosts:\n  - {name: c1, docker: 'tcp://10.0.0.1:2375', groups: [control]}\n  - {name: c2, docker: 'tcp://10.0.0.2:2375', groups: [control, compute]}\n",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        Passwords::fill(&path, &catalog).unwrap();
        let passwords = Passwords::load(&path).unwrap();
        (catalog, hosts, Globals::load(None).unwrap(), passwords)
    }

    #[test]
    fn builtin_renders_per_host_with_kolla_contract() {
        let (catalog, hosts, globals, passwords) = setup();
        let rendered = render(&catalog, &hosts, &globals, &passwords).unwrap();
        let keystone = rendered.iter().find(|s| s.name == "keystone").unwrap();
        assert_eq!(keystone.hosts.len(), 2);
        let (host, containers) = &keystone.hosts[1];
        assert_eq!(host, "c2");
        let c = &containers[0];
        assert_eq!(c.image, "localhost:5000/kolla/keystone:zed-debian-bookworm");
        let config = c
            .files
            .iter()
            .find(|f| f.path.ends_with("config.json"))
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(&config.content).unwrap();
        assert!(json["command"].as_str().unwrap().contains("uwsgi"));
        let conf = c
            .files
            .iter()
            .find(|f| f.path.ends_with("keystone.conf"))
            .unwrap();
        assert!(
            conf.content.contains("10.0.0.2"),
            "binds to the host's own address"
        );
        assert!(
            conf.content
                .contains(passwords.get("keystone_database_password").unwrap())
        );
        // Bootstrap runs once, on the first host.
        assert_eq!(keystone.bootstrap.as_ref().unwrap().0, "c1");
        // One database server and one broker, on the first control host.
        let mariadb = rendered.iter().find(|s| s.name == "mariadb").unwrap();
        assert_eq!(
            mariadb
                .hosts
                .iter()
                .map(|(h, _)| h.as_str())
                .collect::<Vec<_>>(),
            ["c1"]
        );
        // Compute services only land on compute hosts.
        if let Some(nova) = rendered.iter().find(|s| s.name == "nova-compute") {
            assert_eq!(nova.hosts.len(), 1);
        }
    }

    #[test]
    fn every_keystone_and_its_bootstrap_get_the_same_fernet_and_credential_keys() {
        let (catalog, hosts, globals, passwords) = setup();
        let rendered = render(&catalog, &hosts, &globals, &passwords).unwrap();
        let keystone = rendered.iter().find(|s| s.name == "keystone").unwrap();
        let (_, bootstrap) = keystone.bootstrap.as_ref().unwrap();
        let containers: Vec<&ContainerSpec> = keystone
            .hosts
            .iter()
            .map(|(_, c)| &c[0])
            .chain(bootstrap.iter().filter(|c| c.name == "bootstrap_keystone"))
            .collect();
        assert_eq!(containers.len(), 3, "two keystones and the bootstrap");
        for (key, dest) in [
            ("keystone_fernet_key_0", "/etc/keystone/fernet-keys/0"),
            ("keystone_fernet_key_1", "/etc/keystone/fernet-keys/1"),
            (
                "keystone_credential_fernet_key_0",
                "/etc/keystone/credential-keys/0",
            ),
            (
                "keystone_credential_fernet_key_1",
                "/etc/keystone/credential-keys/1",
            ),
        ] {
            let value = passwords.get(key).unwrap();
            assert_eq!(value.len(), 44, "{key} is a Fernet key");
            for c in &containers {
                assert!(
                    c.files.iter().any(|f| f.content == value),
                    "{}: {key} missing",
                    c.name
                );
                let config = c
                    .files
                    .iter()
                    .find(|f| f.path.ends_with("config.json"))
                    .unwrap();
                assert!(config.content.contains(dest), "{}: {dest}", c.name);
            }
        }
    }

    #[test]
    fn an_empty_registry_gives_local_image_names() {
        let (catalog, hosts, globals, passwords) = setup();
        let local = globals.with("docker_registry", "");
        let rendered = render(&catalog, &hosts, &local, &passwords).unwrap();
        let keystone = rendered.iter().find(|s| s.name == "keystone").unwrap();
        assert_eq!(
            keystone.hosts[0].1[0].image,
            "kolla/keystone:zed-debian-bookworm"
        );
    }

    #[test]
    fn disabled_services_and_changes_are_visible() {
        let (catalog, hosts, globals, passwords) = setup();
        let off = globals.clone().with("enable_glance", false);
        let rendered = render(&catalog, &hosts, &off, &passwords).unwrap();
        assert!(!rendered.iter().any(|s| s.name == "glance"));
        let a = render(&catalog, &hosts, &globals, &passwords).unwrap();
        let b = render(
            &catalog,
            &hosts,
            &globals.clone().with("openstack_tag", "new"),
            &passwords,
        )
        .unwrap();
        let hash = |r: &[RenderedService], s: &str| {
            r.iter().find(|x| x.name == s).unwrap().hosts[0].1[0].hash()
        };
        assert_ne!(hash(&a, "keystone"), hash(&b, "keystone"));
        assert_eq!(
            hash(&a, "keystone"),
            hash(
                &render(&catalog, &hosts, &globals, &passwords).unwrap(),
                "keystone"
            )
        );
    }

    #[test]
    fn undefined_variables_are_errors_naming_the_place() {
        let (mut catalog, hosts, globals, passwords) = setup();
        catalog.templates.insert(
            "keystone.conf.j2".into(),
            "x = {{ no_such_variable }}".into(),
        );
        let err = render(&catalog, &hosts, &globals, &passwords)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("service keystone") && err.contains("keystone.conf"),
            "{err}"
        );
    }
}
