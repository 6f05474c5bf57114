//! A YAML (or JSON) document as a tree whose every node and key remembers its line and column.
//!
//! Built from saphyr's parser events rather than its loader so that duplicate keys are caught and
//! every position is exact; the validators in this module walk this tree and never stop at the
//! first problem.

use super::InventoryError;
use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl From<Span> for Pos {
    fn from(span: Span) -> Self {
        Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A scalar's text and whether it was quoted (quoted text is always a string).
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

impl Node {
    /// A short name of the node's YAML type for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
            Value::Scalar { quoted: true, .. } => "a string",
            Value::Scalar {
                text,
                quoted: false,
            } => match plain_scalar_kind(text) {
                PlainKind::Null => "null",
                PlainKind::Bool(_) => "a boolean",
                PlainKind::Int(_) => "an integer",
                PlainKind::Float => "a number",
                PlainKind::Str => "a string",
            },
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, quoted: false } if plain_scalar_kind(text) == PlainKind::Null)
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// YAML 1.2 core-schema resolution of a plain (unquoted) scalar.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PlainKind {
    Null,
    Bool(bool),
    Int(i64),
    Float,
    Str,
}

pub fn plain_scalar_kind(text: &str) -> PlainKind {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return PlainKind::Null,
        "true" | "True" | "TRUE" => return PlainKind::Bool(true),
        "false" | "False" | "FALSE" => return PlainKind::Bool(false),
        _ => {}
    }
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(int) = text.parse::<i64>()
    {
        return PlainKind::Int(int);
    }
    if text.parse::<f64>().is_ok() && text.bytes().any(|b| b.is_ascii_digit()) {
        return PlainKind::Float;
    }
    PlainKind::Str
}

/// Parses one document. Syntax errors, duplicate keys, non-scalar keys and multiple documents
/// are reported with their position.
pub fn parse(file: &str, text: &str) -> Result<Node, Vec<InventoryError>> {
    let mut builder = Builder {
        file,
        anchors: HashMap::new(),
        errors: Vec::new(),
    };
    let mut events = Parser::new_from_str(text);
    let mut documents = Vec::new();
    loop {
        match events.next() {
            None => break,
            Some(Err(err)) => {
                let pos = Pos {
                    line: err.marker().line(),
                    column: err.marker().col() + 1,
                };
                return Err(vec![InventoryError::new(
                    file,
                    pos,
                    "",
                    format!("YAML syntax error: {}", err.info()),
                )]);
            }
            Some(Ok((
                Event::StreamStart
                | Event::StreamEnd
                | Event::DocumentStart(_)
                | Event::DocumentEnd
                | Event::Nothing,
                _,
            ))) => {}
            Some(Ok((event, span))) => match builder.node(event, span, &mut events) {
                Ok(node) => documents.push(node),
                Err(err) => return Err(vec![err]),
            },
        }
    }
    if !builder.errors.is_empty() {
        return Err(builder.errors);
    }
    match documents.len() {
        0 => Err(vec![InventoryError::new(
            file,
            Pos { line: 1, column: 1 },
            "",
            "the file is empty",
        )]),
        1 => Ok(documents.remove(0)),
        _ => Err(vec![InventoryError::new(
            file,
            documents[1].pos,
            "",
            "expected one YAML document, found several",
        )]),
    }
}

struct Builder<'f> {
    file: &'f str,
    anchors: HashMap<usize, Node>,
    errors: Vec<InventoryError>,
}

type Events<'a> = Parser<'a, saphyr_parser::StrInput<'a>>;

impl Builder<'_> {
    fn next_event<'a>(&self, events: &mut Events<'a>) -> Result<(Event<'a>, Span), InventoryError> {
        match events.next() {
            Some(Ok(pair)) => Ok(pair),
            Some(Err(err)) => {
                let pos = Pos {
                    line: err.marker().line(),
                    column: err.marker().col() + 1,
                };
                Err(InventoryError::new(
                    self.file,
                    pos,
                    "",
                    format!("YAML syntax error: {}", err.info()),
                ))
            }
            None => Err(InventoryError::new(
                self.file,
                Pos::default(),
                "",
                "YAML syntax error: unexpected end of input",
            )),
        }
    }

    fn remember(&mut self, anchor: usize, node: &Node) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
    }

    fn node<'a>(
        &mut self,
        event: Event<'a>,
        span: Span,
        events: &mut Events<'a>,
    ) -> Result<Node, InventoryError> {
        let pos = Pos::from(span);
        match event {
            Event::Scalar(text, style, anchor, _tag) => {
                let node = Node {
                    pos,
                    value: Value::Scalar {
                        text: text.into_owned(),
                        quoted: style != ScalarStyle::Plain,
                    },
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::Alias(anchor) => match self.anchors.get(&anchor) {
                Some(node) => Ok(Node {
                    pos,
                    value: node.value.clone(),
                }),
                None => Err(InventoryError::new(
                    self.file,
                    pos,
                    "",
                    "YAML alias refers to an unknown anchor",
                )),
            },
            Event::SequenceStart(anchor, _tag) => {
                let mut items = Vec::new();
                loop {
                    let (event, span) = self.next_event(events)?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(event, span, events)?);
                }
                let node = Node {
                    pos,
                    value: Value::Seq(items),
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::MappingStart(anchor, _tag) => {
                let mut entries: Vec<(Key, Node)> = Vec::new();
                loop {
                    let (event, span) = self.next_event(events)?;
                    if matches!(event, Event::MappingEnd) {
                        break;
                    }
                    let key_node = self.node(event, span, events)?;
                    let (value_event, value_span) = self.next_event(events)?;
                    let value = self.node(value_event, value_span, events)?;
                    let name = match key_node.value {
                        Value::Scalar { text, .. } => text,
                        _ => {
                            self.errors.push(InventoryError::new(
                                self.file,
                                key_node.pos,
                                "",
                                "mapping keys must be plain names",
                            ));
                            continue;
                        }
                    };
                    if entries.iter().any(|(k, _)| k.name == name) {
                        self.errors.push(InventoryError::new(
                            self.file,
                            key_node.pos,
                            &name,
                            format!("duplicate key '{name}'"),
                        ));
                        continue;
                    }
                    entries.push((
                        Key {
                            name,
                            pos: key_node.pos,
                        },
                        value,
                    ));
                }
                let node = Node {
                    pos,
                    value: Value::Map(entries),
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            other => Err(InventoryError::new(
                self.file,
                pos,
                "",
                format!("unexpected YAML event {other:?}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_line_and_column() {
        let node = parse("t.yaml", "a: 1\nb:\n  c: [x, 'y']\n").unwrap();
        let b = node.get("b").unwrap();
        let c = b.get("c").unwrap();
        assert_eq!(c.pos.line, 3);
        let Value::Seq(items) = &c.value else {
            panic!("list")
        };
        assert_eq!(
            items[1].pos,
            Pos {
                line: 3,
                column: 10
            }
        );
        assert_eq!(items[1].kind(), "a string");
        assert_eq!(node.get("a").unwrap().kind(), "an integer");
    }

    #[test]
    fn duplicate_keys_and_syntax_errors_are_reported_with_position() {
        let errors = parse("t.yaml", "a: 1\na: 2\n").unwrap_err();
        assert_eq!((errors[0].line, errors[0].column), (2, 1));
        let errors = parse("t.yaml", "a: [1, 2\nb: 3\n").unwrap_err();
        assert!(errors[0].message.contains("syntax"), "{}", errors[0]);
        assert!(errors[0].line >= 1);
    }

    #[test]
    fn json_parses_as_yaml() {
        let node = parse(
            "t.json",
            "{\"n1\": {\"driver\": \"ipmi\", \"nics\": [{\"mac\": \"52:54:00:00:00:01\"}]}}",
        )
        .unwrap();
        assert_eq!(
            node.get("n1").unwrap().get("driver").unwrap().kind(),
            "a string"
        );
    }

    #[test]
    fn plain_scalars_resolve_like_yaml_1_2() {
        assert_eq!(plain_scalar_kind("52:54:00:12:34:56"), PlainKind::Str);
        assert_eq!(plain_scalar_kind("623"), PlainKind::Int(623));
        assert_eq!(plain_scalar_kind("yes"), PlainKind::Str);
        assert_eq!(plain_scalar_kind("1.5"), PlainKind::Float);
        assert_eq!(plain_scalar_kind("~"), PlainKind::Null);
    }
}
