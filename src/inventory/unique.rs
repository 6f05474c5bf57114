//! Detects values that must be unique across a rack (names, MACs, BMC endpoints, IPs).

use super::reader::Reader;
use super::tree::Pos;
use std::collections::HashMap;

/// Remembers where each value was first seen so a duplicate's error names both places.
#[derive(Default)]
pub struct Unique {
    seen: HashMap<(&'static str, String), (String, usize)>,
}

impl Unique {
    /// Records `value` of `kind`; reports an error at `pos` if another field already used it.
    pub fn claim(
        &mut self,
        reader: &mut Reader,
        kind: &'static str,
        value: String,
        pos: Pos,
        path: &str,
    ) {
        match self.seen.get(&(kind, value.clone())) {
            Some((first_path, first_line)) => reader.error(
                pos,
                path,
                format!(
                    "duplicate {kind} '{value}' (already used by {first_path} on line {first_line})"
                ),
            ),
            None => {
                self.seen
                    .insert((kind, value), (path.to_string(), pos.line));
            }
        }
    }
}
