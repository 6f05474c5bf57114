//! Which iPXE script a booting machine gets, and its text: a pure decision plus template rendering.
//!
//! The decision ([`script_for`]) depends only on the node's provision state, so it is tested over
//! every state. The scripts are minijinja templates under `ipxe/`, embedded at build time; their
//! kernel-argument contract with the ramdisk agent is documented in `ipxe/README.md`.

use crate::model::{BootMode, MacAddress, Node, ProvisionState};
use minijinja::{Environment, UndefinedBehavior, syntax::SyntaxConfig, value::Serde};
use serde::Serialize;
use uuid::Uuid;

const DEPLOY: &str = include_str!("../../ipxe/deploy.ipxe.j2");
const LOCALBOOT: &str = include_str!("../../ipxe/localboot.ipxe.j2");
const DISCOVERY: &str = include_str!("../../ipxe/discovery.ipxe.j2");
const NOTHING: &str = include_str!("../../ipxe/nothing.ipxe.j2");

/// What a machine should do when its firmware asks Kiln for a script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScriptKind {
    /// Boot the deploy ramdisk with a one-time agent token (deploy and cleaning).
    Deploy,
    /// Leave the network boot and start the OS on the local disk.
    LocalBoot,
    /// Boot the ramdisk in discovery mode for a machine Kiln does not know.
    Discovery,
    /// Boot nothing; say why, wait, and ask again.
    Nothing { reason: String },
}

impl ScriptKind {
    /// Short name, used in timeline events and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Deploy => "deploy",
            Self::LocalBoot => "localboot",
            Self::Discovery => "discovery",
            Self::Nothing { .. } => "nothing",
        }
    }
}

/// Decides the script for the node owning the requesting MAC (`None`: an unknown machine).
pub fn script_for(node: Option<&Node>, discovery_enabled: bool) -> ScriptKind {
    use ProvisionState as S;
    let Some(node) = node else {
        return if discovery_enabled {
            ScriptKind::Discovery
        } else {
            ScriptKind::Nothing {
                reason:
                    "this machine is not enrolled in Kiln and discovery is off; nothing to boot"
                        .into(),
            }
        };
    };
    match node.provision_state {
        S::Deploying | S::WaitCallback | S::Cleaning | S::CleanWait => ScriptKind::Deploy,
        S::Active => ScriptKind::LocalBoot,
        state @ (S::Enroll
        | S::Verifying
        | S::Manageable
        | S::Available
        | S::DeployFailed
        | S::CleanFailed
        | S::Deleting
        | S::Error) => ScriptKind::Nothing {
            reason: format!("node {} is {state}; nothing to boot", node.spec.name),
        },
    }
}

/// Where booting nodes find things, and how scripts behave. Part of the boot HTTP configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptSettings {
    /// Base URL nodes use to reach the boot HTTP server, e.g. `http://10.99.0.1:8080`.
    pub http_base: String,
    /// Kiln API URL the ramdisk agent calls back to.
    pub api_url: String,
    /// Deploy kernel and ramdisk, relative to the files root.
    pub deploy_kernel: String,
    pub deploy_ramdisk: String,
    /// Appended to the deploy/discovery kernel command line.
    pub extra_kernel_args: String,
    /// Whether unknown machines boot the ramdisk in discovery mode.
    pub discovery: bool,
    /// How long a waiting script sleeps before asking again.
    pub retry_secs: u32,
}

impl ScriptSettings {
    pub fn new(http_base: impl Into<String>, api_url: impl Into<String>) -> Self {
        Self {
            http_base: http_base.into().trim_end_matches('/').to_string(),
            api_url: api_url.into(),
            deploy_kernel: "deploy/vmlinuz".into(),
            deploy_ramdisk: "deploy/initramfs.gz".into(),
            extra_kernel_args: "console=ttyS0,115200n8".into(),
            discovery: false,
            retry_secs: 10,
        }
    }

    /// The URL of a machine's own script, which waiting scripts chain back to.
    pub fn script_url(&self, mac: MacAddress) -> String {
        format!("{}/boot/{mac}.ipxe", self.http_base)
    }

    /// URL of a file under the files root, tagged with the node so its fetch lands on its timeline.
    pub fn file_url(&self, file: &str, node: Option<Uuid>) -> String {
        let file = file.trim_start_matches('/');
        match node {
            Some(uuid) => format!("{}/files/{file}?node={uuid}", self.http_base),
            None => format!("{}/files/{file}", self.http_base),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IpxeError {
    #[error("a {0} script needs an enrolled node")]
    NoNode(&'static str),
    #[error("a deploy script needs an agent token")]
    NoToken,
    #[error("rendering the {kind} iPXE script")]
    Template {
        kind: &'static str,
        #[source]
        source: minijinja::Error,
    },
}

/// Everything the templates see. Never holds anything from the BMC section of the spec.
#[derive(Serialize)]
struct Vars<'a> {
    name: String,
    mac: MacAddress,
    uuid: Option<Uuid>,
    boot_mode: Option<BootMode>,
    token: Option<&'a str>,
    reason: Option<&'a str>,
    api_url: &'a str,
    script_url: String,
    kernel_url: String,
    initrd_url: String,
    initrd_name: &'a str,
    extra_kernel_args: &'a str,
    retry_secs: u32,
}

/// Renders the script of `kind` for the machine with `mac` (and its node, if enrolled). A deploy
/// script needs the freshly issued agent `token`.
pub fn render(
    kind: &ScriptKind,
    mac: MacAddress,
    node: Option<&Node>,
    token: Option<&str>,
    settings: &ScriptSettings,
) -> Result<String, IpxeError> {
    let (template, reason) = match kind {
        ScriptKind::Deploy => (DEPLOY, None),
        ScriptKind::LocalBoot => (LOCALBOOT, None),
        ScriptKind::Discovery => (DISCOVERY, None),
        ScriptKind::Nothing { reason } => (NOTHING, Some(reason.as_str())),
    };
    if matches!(kind, ScriptKind::Deploy | ScriptKind::LocalBoot) && node.is_none() {
        return Err(IpxeError::NoNode(kind.as_str()));
    }
    if *kind == ScriptKind::Deploy && token.is_none() {
        return Err(IpxeError::NoToken);
    }
    let uuid = node.map(|n| n.uuid);
    let ramdisk = settings.deploy_ramdisk.as_str();
    let vars = Vars {
        name: node.map_or_else(|| mac.to_string(), |n| n.spec.name.clone()),
        mac,
        uuid,
        boot_mode: node.map(|n| n.spec.boot_mode),
        token: token.filter(|_| *kind == ScriptKind::Deploy),
        reason,
        api_url: &settings.api_url,
        script_url: settings.script_url(mac),
        kernel_url: settings.file_url(&settings.deploy_kernel, uuid),
        initrd_url: settings.file_url(ramdisk, uuid),
        initrd_name: ramdisk.rsplit('/').next().unwrap_or(ramdisk),
        extra_kernel_args: settings.extra_kernel_args.trim(),
        retry_secs: settings.retry_secs.max(1),
    };
    let failed = |source| IpxeError::Template {
        kind: kind.as_str(),
        source,
    };
    let env = environment().map_err(failed)?;
    env.render_named_str(kind.as_str(), template, Serde(&vars))
        .map_err(failed)
}

fn environment() -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(true)
            .build()?,
    );
    env.add_filter("echo", echo_safe);
    Ok(env)
}

/// Makes free text safe inside an iPXE `echo`: iPXE expands `${…}` everywhere and treats a token
/// starting with `#` as a comment and `||`, `&&`, `;` tokens as operators. So only plain
/// characters pass, and a word starting with `;` is replaced (`;` ending a word is just text).
fn echo_safe(text: String) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || " .,:;-_/()'=".contains(c);
    let text: String = text
        .chars()
        .map(|c| if plain(c) { c } else { '_' })
        .collect();
    let words: Vec<&str> = text
        .split(' ')
        .map(|word| if word.starts_with(';') { "_" } else { word })
        .collect();
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(state: ProvisionState) -> Node {
        let text = "nodes:
  - name: ctl-01
    bmc: {kind: ipmi, address: 10.0.0.1, username: admin, password: bmc-secret-pw}
    nics: [{mac: '52:54:00:aa:bb:cc'}]
";
        let spec = crate::inventory::parse("rack.yaml", text)
            .map(|inv| inv.nodes.into_iter().next())
            .ok()
            .flatten()
            .expect("test inventory parses");
        Node::fresh(Uuid::nil(), spec, state)
    }

    #[test]
    fn script_for_every_state() {
        use ProvisionState as S;
        let deploy = [S::Deploying, S::WaitCallback, S::Cleaning, S::CleanWait];
        for state in ProvisionState::ALL {
            let got = script_for(Some(&node(state)), true);
            let want = if deploy.contains(&state) {
                ScriptKind::Deploy
            } else if state == S::Active {
                ScriptKind::LocalBoot
            } else {
                ScriptKind::Nothing {
                    reason: format!("node ctl-01 is {state}; nothing to boot"),
                }
            };
            assert_eq!(got, want, "{state}");
            // Discovery only concerns unknown machines.
            assert_eq!(script_for(Some(&node(state)), false), want, "{state}");
        }
    }

    #[test]
    fn unknown_machines() {
        assert_eq!(script_for(None, true), ScriptKind::Discovery);
        assert!(matches!(
            script_for(None, false),
            ScriptKind::Nothing { reason } if reason.contains("not enrolled")
        ));
    }

    #[test]
    fn echo_text_is_defanged() {
        for (input, want) in [
            (
                "node ctl-01 is manageable; nothing",
                "node ctl-01 is manageable; nothing",
            ),
            ("${net0/mac}", "__net0/mac_"),
            ("a || b && #c", "a __ b __ _c"),
            ("a ; b ;c", "a _ b _"),
        ] {
            assert_eq!(echo_safe(input.into()), want);
        }
    }

    #[test]
    fn deploy_needs_node_and_token() {
        let settings = ScriptSettings::new("http://10.99.0.1:8080/", "http://10.99.0.1:6385");
        let mac: MacAddress = "52:54:00:aa:bb:cc".parse().expect("valid MAC");
        let n = node(ProvisionState::Deploying);
        assert!(matches!(
            render(&ScriptKind::Deploy, mac, Some(&n), None, &settings),
            Err(IpxeError::NoToken)
        ));
        assert!(matches!(
            render(&ScriptKind::LocalBoot, mac, None, None, &settings),
            Err(IpxeError::NoNode("localboot"))
        ));
        let script =
            render(&ScriptKind::Deploy, mac, Some(&n), Some("tok"), &settings).expect("renders");
        assert!(script.starts_with("#!ipxe\n"));
        assert!(script.contains("http://10.99.0.1:8080/files/deploy/vmlinuz?node="));
        assert!(
            !script.contains("bmc-secret-pw"),
            "no BMC password in scripts"
        );
    }
}
