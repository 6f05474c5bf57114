//! Rack inventories: Kiln's own YAML format and Bifrost's (YAML or JSON), detected automatically,
//! validated completely (every error with file:line:column and field path) into [`NodeSpec`]s.

mod bifrost;
mod fields;
mod kiln_format;
pub(crate) mod reader;
pub(crate) mod tree;
mod unique;

use crate::model::NodeSpec;
use serde::Serialize;
use std::fmt;
use std::path::Path;
pub use tree::Pos;

/// One problem in an inventory file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InventoryError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted field path, e.g. `nodes[2].bmc.address`; empty for file-level problems.
    pub field: String,
    pub message: String,
}

impl InventoryError {
    pub fn new(file: &str, pos: Pos, field: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_string(),
            line: pos.line,
            column: pos.column,
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Which inventory dialect a file is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Kiln,
    Bifrost,
}

#[derive(Clone, Debug)]
pub struct Inventory {
    pub format: Format,
    pub nodes: Vec<NodeSpec>,
}

/// Parses and validates an inventory. `file` is only used to name the file in errors.
pub fn parse(file: &str, text: &str) -> Result<Inventory, Vec<InventoryError>> {
    let root = tree::parse(file, text)?;
    let format = detect(&root);
    let mut reader = reader::Reader::new(file);
    let nodes = match format {
        Format::Kiln => kiln_format::read(&mut reader, &root),
        Format::Bifrost => bifrost::read(&mut reader, &root),
    };
    if reader.errors.is_empty() {
        Ok(Inventory { format, nodes })
    } else {
        let mut errors = reader.errors;
        errors.sort_by_key(|e| (e.line, e.column));
        Err(errors)
    }
}

/// Reads and parses a file from disk; an unreadable file is reported like any other error.
pub fn load(path: &Path) -> Result<Inventory, Vec<InventoryError>> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&name, &text),
        Err(err) => Err(vec![InventoryError::new(
            &name,
            Pos::default(),
            "",
            format!("cannot read file: {err}"),
        )]),
    }
}

/// Kiln files have a top-level `nodes` list; Bifrost files are a mapping of node name to node.
fn detect(root: &tree::Node) -> Format {
    match &root.value {
        tree::Value::Map(entries)
            if entries
                .iter()
                .any(|(k, _)| k.name == "nodes" || k.name == "defaults" || k.name == "version") =>
        {
            Format::Kiln
        }
        tree::Value::Map(entries) if !entries.is_empty() => Format::Bifrost,
        _ => Format::Kiln,
    }
}
