//! The daemon/CLI configuration file (YAML, see `examples/kiln.yaml`), read with the same
//! positioned reader as inventories so mistakes are reported as file:line:column.

use crate::inventory::reader::Reader;
use crate::inventory::{InventoryError, tree};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Values from the file; flags and `KILN_*` variables override each of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub listen: Option<SocketAddr>,
    pub api_url: Option<String>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
}

const KEYS: &[&str] = &[
    "data_dir",
    "database_url",
    "listen",
    "api_url",
    "log_format",
    "log_level",
];

pub fn load(path: &Path) -> Result<ConfigFile, Vec<InventoryError>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| {
        vec![InventoryError::new(
            &name,
            Default::default(),
            "",
            format!("cannot read file: {err}"),
        )]
    })?;
    parse(&name, &text)
}

pub fn parse(file: &str, text: &str) -> Result<ConfigFile, Vec<InventoryError>> {
    let root = tree::parse(file, text)?;
    let mut reader = Reader::new(file);
    let mut config = ConfigFile::default();
    if let Some(map) = reader.map(&root, "", KEYS) {
        let mut text_of = |key: &str| map.get(key).and_then(|n| reader.text(n, key));
        config.data_dir = text_of("data_dir").map(PathBuf::from);
        config.database_url = text_of("database_url");
        config.api_url = text_of("api_url");
        config.log_format = text_of("log_format");
        config.log_level = text_of("log_level");
        if let Some(node) = map.get("listen")
            && let Some(text) = reader.text(node, "listen")
        {
            match text.parse() {
                Ok(addr) => config.listen = Some(addr),
                Err(_) => reader.error(
                    node.pos,
                    "listen",
                    format!("'{text}' is not an address:port"),
                ),
            }
        }
        if let (Some(format), Some(node)) = (&config.log_format, map.get("log_format"))
            && format != "text"
            && format != "json"
        {
            reader.error(node.pos, "log_format", "use text or json");
        }
    }
    if reader.errors.is_empty() {
        Ok(config)
    } else {
        Err(reader.errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_parses() {
        let config = load(Path::new("examples/kiln.yaml")).unwrap();
        assert_eq!(config.listen, Some("127.0.0.1:6385".parse().unwrap()));
        assert_eq!(config.log_format.as_deref(), Some("text"));
    }

    #[test]
    fn mistakes_are_positioned() {
        let errors = parse("k.yaml", "listen: nowhere\nlog_fromat: json\n").unwrap_err();
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(
            shown.iter().any(|e| e.starts_with("k.yaml:1:9: listen:")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|e| e.starts_with("k.yaml:2:1: log_fromat:")),
            "{shown:?}"
        );
    }
}
