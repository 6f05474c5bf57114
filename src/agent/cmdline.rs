//! The agent's half of the kernel-argument contract in `ipxe/README.md`: `/proc/cmdline` text → [`AgentArgs`].

use crate::model::{MacAddress, Secret};
use std::fmt;
use url::Url;
use uuid::Uuid;

/// What the ramdisk was booted for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// An enrolled node: the agent asks the API, with its token, what to do.
    Deploy,
    /// An unknown machine: the agent reports its hardware, unauthenticated.
    Discover,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Deploy => "deploy",
            Mode::Discover => "discover",
        })
    }
}

/// The validated `kiln.*` arguments. `Debug` and `Display` mask the token (it is a [`Secret`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentArgs {
    pub api: Url,
    pub node: Option<Uuid>,
    pub token: Option<Secret>,
    pub mode: Mode,
    pub mac: Option<MacAddress>,
}

impl fmt::Display for AgentArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mode={} api={}", self.mode, self.api)?;
        if let Some(node) = self.node {
            write!(f, " node={node}")?;
        }
        if let Some(mac) = self.mac {
            write!(f, " mac={mac}")?;
        }
        if let Some(token) = &self.token {
            write!(f, " token={token}")?;
        }
        Ok(())
    }
}

/// Why the command line cannot be used. No variant holds the token's value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("the kernel command line has no {arg}= argument")]
    Missing { arg: &'static str },
    #[error("{arg} is given without a value")]
    Empty { arg: &'static str },
    #[error("{arg}={value} is not valid: {reason}")]
    Invalid {
        arg: &'static str,
        value: String,
        reason: String,
    },
    #[error("kiln.mode=deploy needs {arg}= as well")]
    DeployNeeds { arg: &'static str },
}

/// Longest argument value echoed back in an error; the command line is untrusted text.
const ECHO_LIMIT: usize = 80;

/// Parses `/proc/cmdline` text. Unknown arguments are ignored; the last of repeated `kiln.*`
/// arguments wins (the configured extra arguments come after Kiln's own, so an operator can
/// override one). Double quotes group words the way the kernel does and are dropped.
pub fn parse(text: &str) -> Result<AgentArgs, CmdlineError> {
    let mut api = None;
    let mut node = None;
    let mut token = None;
    let mut mode = None;
    let mut mac = None;
    for word in split_words(text) {
        let (key, value) = match word.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (word.as_str(), None),
        };
        let slot = match key {
            "kiln.api" => &mut api,
            "kiln.node" => &mut node,
            "kiln.token" => &mut token,
            "kiln.mode" => &mut mode,
            "kiln.mac" => &mut mac,
            _ => continue,
        };
        *slot = Some(value.unwrap_or_default().to_string());
    }

    let api = parse_api(required("kiln.api", api)?)?;
    let mode = match required("kiln.mode", mode)?.as_str() {
        "deploy" => Mode::Deploy,
        "discover" => Mode::Discover,
        other => return Err(invalid("kiln.mode", other, "expected deploy or discover")),
    };
    let node = match optional("kiln.node", node)? {
        Some(text) => {
            Some(Uuid::parse_str(&text).map_err(|e| invalid("kiln.node", &text, &e.to_string()))?)
        }
        None => None,
    };
    let mac = match optional("kiln.mac", mac)? {
        Some(text) => Some(text.parse::<MacAddress>().map_err(|_| {
            invalid(
                "kiln.mac",
                &text,
                "expected six hex pairs like 52:54:00:12:34:56",
            )
        })?),
        None => None,
    };
    let token = optional("kiln.token", token)?.map(Secret::new);
    if mode == Mode::Deploy {
        if node.is_none() {
            return Err(CmdlineError::DeployNeeds { arg: "kiln.node" });
        }
        if token.is_none() {
            return Err(CmdlineError::DeployNeeds { arg: "kiln.token" });
        }
    }
    Ok(AgentArgs {
        api,
        node,
        token,
        mode,
        mac,
    })
}

/// Splits on ASCII whitespace outside double quotes; the quote characters themselves are removed.
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_ascii_whitespace() && !quoted => {
                if started {
                    words.push(std::mem::take(&mut current));
                    started = false;
                }
            }
            c => {
                current.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(current);
    }
    words
}

fn required(arg: &'static str, value: Option<String>) -> Result<String, CmdlineError> {
    optional(arg, value)?.ok_or(CmdlineError::Missing { arg })
}

/// `None` when absent; an error when present but empty (`kiln.node=` is a broken script, not "no node").
fn optional(arg: &'static str, value: Option<String>) -> Result<Option<String>, CmdlineError> {
    match value {
        Some(v) if v.is_empty() => Err(CmdlineError::Empty { arg }),
        other => Ok(other),
    }
}

fn parse_api(text: String) -> Result<Url, CmdlineError> {
    let url = Url::parse(&text).map_err(|e| invalid("kiln.api", &text, &e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(
            "kiln.api",
            &text,
            "expected an http:// or https:// URL",
        ));
    }
    Ok(url)
}

fn invalid(arg: &'static str, value: &str, reason: &str) -> CmdlineError {
    let mut shown: String = value.chars().take(ECHO_LIMIT).collect();
    if shown.len() < value.len() {
        shown.push('…');
    }
    CmdlineError::Invalid {
        arg,
        value: format!("{shown:?}"),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";
    const NODE: &str = "6f1c2a4e-9a3b-4c1d-8e2f-0a1b2c3d4e5f";

    fn deploy_line() -> String {
        format!(
            "BOOT_IMAGE=vmlinuz kiln.api=http://10.99.0.1:6385 kiln.node={NODE} \
             kiln.token={TOKEN} kiln.mode=deploy kiln.mac=52:54:00:AB:CD:EF initrd=initramfs.gz \
             console=ttyS0,115200n8"
        )
    }

    #[test]
    fn deploy_line_from_the_ipxe_script() -> Result<(), CmdlineError> {
        let args = parse(&deploy_line())?;
        assert_eq!(args.api.as_str(), "http://10.99.0.1:6385/");
        assert_eq!(args.node.map(|n| n.to_string()).as_deref(), Some(NODE));
        assert_eq!(args.token.as_ref().map(Secret::expose), Some(TOKEN));
        assert_eq!(args.mode, Mode::Deploy);
        assert_eq!(
            args.mac.map(|m| m.to_string()).as_deref(),
            Some("52:54:00:ab:cd:ef")
        );
        Ok(())
    }

    #[test]
    fn discover_line_needs_no_node_or_token() -> Result<(), CmdlineError> {
        let args = parse(
            "kiln.api=https://kiln.example kiln.mode=discover kiln.mac=52-54-00-00-00-01 initrd=x\n",
        )?;
        assert_eq!(args.mode, Mode::Discover);
        assert_eq!((args.node, args.token), (None, None));
        Ok(())
    }

    #[test]
    fn quoting_unknown_args_and_repeats() -> Result<(), CmdlineError> {
        let args = parse(
            "quiet \"kiln.api=http://h:1/a b\" foo=\"x y\" kiln.mode=\"discover\" kiln.mode=deploy \
             kiln.node=\"6F1C2A4E-9A3B-4C1D-8E2F-0A1B2C3D4E5F\" kiln.token=t\tkiln.unknown=1",
        )?;
        assert_eq!(args.api.as_str(), "http://h:1/a%20b");
        assert_eq!(args.mode, Mode::Deploy, "the last repeat wins");
        assert_eq!(args.node.map(|n| n.to_string()).as_deref(), Some(NODE));
        Ok(())
    }

    #[test]
    fn errors_name_the_argument() {
        use CmdlineError::*;
        let base = "kiln.api=http://h kiln.mode=discover";
        let cases: Vec<(String, CmdlineError)> = vec![
            (String::new(), Missing { arg: "kiln.api" }),
            ("kiln.api=http://h".into(), Missing { arg: "kiln.mode" }),
            (
                "kiln.api= kiln.mode=deploy".into(),
                Empty { arg: "kiln.api" },
            ),
            (format!("{base} kiln.node"), Empty { arg: "kiln.node" }),
            (format!("{base} kiln.mac="), Empty { arg: "kiln.mac" }),
            (format!("{base} kiln.token="), Empty { arg: "kiln.token" }),
            (
                "kiln.api=http://h kiln.mode=deploy".into(),
                DeployNeeds { arg: "kiln.node" },
            ),
            (
                format!("kiln.api=http://h kiln.mode=deploy kiln.node={NODE}"),
                DeployNeeds { arg: "kiln.token" },
            ),
            (
                format!("kiln.api=http://h kiln.mode=deploy kiln.token={TOKEN}"),
                DeployNeeds { arg: "kiln.node" },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse(&line), Err(want), "{line:?}");
        }
        let invalid = [
            ("kiln.api=ftp://h kiln.mode=discover", "kiln.api"),
            ("kiln.api=not-a-url kiln.mode=discover", "kiln.api"),
            ("kiln.api=http:// kiln.mode=discover", "kiln.api"),
            ("kiln.api=http://h kiln.mode=install", "kiln.mode"),
            ("kiln.api=http://h kiln.mode=Deploy", "kiln.mode"),
            (
                "kiln.api=http://h kiln.mode=discover kiln.node=42",
                "kiln.node",
            ),
            (
                "kiln.api=http://h kiln.mode=discover kiln.mac=52:54:00",
                "kiln.mac",
            ),
        ];
        for (line, arg) in invalid {
            match parse(line) {
                Err(e @ Invalid { .. }) => {
                    assert!(e.to_string().starts_with(&format!("{arg}=")), "{e}")
                }
                other => panic!("{line:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn token_never_printed() -> Result<(), CmdlineError> {
        let args = parse(&deploy_line())?;
        assert!(!format!("{args:?}").contains(TOKEN));
        assert!(!args.to_string().contains(TOKEN));
        assert!(args.to_string().contains("token=********"));
        let broken = deploy_line().replace("kiln.mac=52:54:00:AB:CD:EF", "kiln.mac=zz");
        assert!(
            !parse(&broken)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
                .contains(TOKEN)
        );
        Ok(())
    }

    #[test]
    fn long_values_are_cut_in_errors() {
        let line = format!("kiln.api=http://h kiln.mode={}", "x".repeat(5000));
        let message = parse(&line)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.len() < 200 && message.contains('…'), "{message}");
    }

    proptest! {
        #[test]
        fn never_panics(text in ".{0,400}") {
            let _ = parse(&text);
        }

        #[test]
        fn never_panics_on_kiln_shaped_noise(
            words in proptest::collection::vec(
                ("kiln\\.(api|node|token|mode|mac)", "[=\"]?", "[ -~\\u{80}-\\u{10ffff}]{0,40}"),
                0..8,
            )
        ) {
            let line: Vec<String> = words.into_iter().map(|(k, eq, v)| format!("{k}{eq}{v}")).collect();
            let _ = parse(&line.join(" "));
        }

        #[test]
        fn token_absent_from_every_error(token in "[0-9a-f]{48}", mac in "[ -~]{0,20}", node in "[ -~]{0,40}") {
            let line = format!("kiln.api=http://h kiln.mode=deploy kiln.token={token} kiln.mac={mac} kiln.node={node}");
            if let Err(e) = parse(&line) {
                prop_assume!(!mac.contains(&token) && !node.contains(&token));
                prop_assert!(!e.to_string().contains(&token));
                let debug = format!("{e:?}");
                prop_assert!(!debug.contains(&token));
            }
        }
    }
}
