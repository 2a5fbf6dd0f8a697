//! Parses YAML text (with saphyr) into a small tree that keeps each node's position and,
//! for scalars, the text exactly as written.
//!
//! Aliases (`*name`) are expanded by saphyr (within its node budget, against
//! billion-laughs input); YAML merge keys (`<<: *defaults`, `<<: [*a, *b]`) are applied
//! here, since saphyr leaves them as ordinary `<<` keys. Merged values keep the position
//! where they were written (the anchor), so a problem inside one points at its text.

use saphyr::{LoadableYamlNode, MarkedYamlOwned, ScalarOwned, ScanError, YamlDataOwned};

/// A YAML node with its 1-based position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub line: usize,
    pub col: usize,
    pub value: Value,
    /// Position of the key this node is the value of, if any: where a problem about the
    /// node as a whole (e.g. a key missing from it) is best shown, since a block
    /// mapping's own position is that of its first key.
    pub key_at: Option<(usize, usize)>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    /// The integer and the text as written (e.g. `0x1F`, `007`).
    Int(i64, String),
    Float(f64, String),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
    /// A scalar that its tag could not make sense of (e.g. `!!int abc`).
    Invalid(String),
}

/// One `key: value` pair; keys keep their own position for "unknown key" reports.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub key: Node,
    pub value: Node,
}

impl Entry {
    /// The key as text (non-scalar keys give an empty string).
    pub fn name(&self) -> &str {
        self.key.scalar_text().unwrap_or("")
    }
}

impl Node {
    /// The text of a scalar as the user wrote it; `None` for collections and null.
    pub fn scalar_text(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) | Value::Int(_, s) | Value::Float(_, s) | Value::Invalid(s) => Some(s),
            Value::Bool(true) => Some("true"),
            Value::Bool(false) => Some("false"),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }

    /// "a string", "a mapping", ... for "expected X, found Y" messages.
    pub fn kind_name(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(..) => "an integer",
            Value::Float(..) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
            Value::Invalid(_) => "an invalid value",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// Where to report a problem about this node as a whole: its key, else itself.
    pub fn whole_at(&self) -> (usize, usize) {
        self.key_at.unwrap_or((self.line, self.col))
    }
}

/// Why the text could not be turned into a tree: one message at one position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Parses one YAML document. An empty file gives `None`.
pub(crate) fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let docs = MarkedYamlOwned::load_from_str(text).map_err(|e| syntax_error(text, &e))?;
    let source = Source::new(text);
    if let Some(second) = docs.get(1) {
        return Err(SyntaxError {
            line: second.span.start.line(),
            col: second.span.start.col() + 1,
            message: format!(
                "expected one YAML document, found {}; remove the `---` separators",
                docs.len()
            ),
        });
    }
    Ok(docs.first().map(|doc| source.convert(doc)))
}

fn syntax_error(text: &str, e: &ScanError) -> SyntaxError {
    let marker = e.marker();
    let message = if e.info().contains("duplicated key") {
        match key_at(text, marker.index()) {
            Some(key) => format!("duplicate key `{key}` (each key may appear once in a mapping)"),
            None => "duplicate key (each key may appear once in a mapping)".to_string(),
        }
    } else {
        format!("YAML syntax error: {}", e.info())
    };
    SyntaxError {
        line: marker.line(),
        col: marker.col() + 1,
        message,
    }
}

/// The key text starting at a character index, for naming a duplicated key.
fn key_at(text: &str, char_index: usize) -> Option<String> {
    let rest: String = text
        .chars()
        .skip(char_index)
        .take_while(|c| *c != ':' && *c != '\n')
        .collect();
    let key = rest.trim().trim_matches(|c| c == '"' || c == '\'');
    (!key.is_empty()).then(|| key.to_string())
}

/// The source text, indexed by character, for recovering scalars as written.
struct Source<'a> {
    text: &'a str,
    /// Byte offset of each character, plus the end.
    offsets: Vec<usize>,
}

impl<'a> Source<'a> {
    fn new(text: &'a str) -> Self {
        let offsets = text
            .char_indices()
            .map(|(b, _)| b)
            .chain(std::iter::once(text.len()))
            .collect();
        Source { text, offsets }
    }

    fn slice(&self, node: &MarkedYamlOwned) -> Option<&'a str> {
        let start = *self.offsets.get(node.span.start.index())?;
        let end = *self.offsets.get(node.span.end.index())?;
        self.text.get(start..end).map(str::trim)
    }

    fn convert(&self, node: &MarkedYamlOwned) -> Node {
        let value = match &node.data {
            YamlDataOwned::Value(scalar) => self.scalar(node, scalar),
            YamlDataOwned::Representation(text, ..) => Value::Str(text.clone()),
            YamlDataOwned::Sequence(items) => {
                Value::Seq(items.iter().map(|n| self.convert(n)).collect())
            }
            YamlDataOwned::Mapping(map) => Value::Map(self.mapping(map)),
            YamlDataOwned::Tagged(_, inner) => return self.convert(inner),
            YamlDataOwned::Alias(_) | YamlDataOwned::BadValue => {
                Value::Invalid(self.slice(node).unwrap_or("").to_string())
            }
        };
        Node {
            line: node.span.start.line(),
            col: node.span.start.col() + 1,
            value,
            key_at: None,
        }
    }

    /// A mapping's entries with its merge keys applied: each `<<` entry whose value is a
    /// mapping (or a list of mappings) is replaced, in place, by the entries of those
    /// mappings that the mapping does not set itself (explicit keys win wherever they are
    /// written; in a list, an earlier mapping wins over a later one). A `<<` with any
    /// other value is kept as an entry, for the walk to report.
    fn mapping(&self, map: &saphyr::AnnotatedMappingOwned<MarkedYamlOwned>) -> Vec<Entry> {
        let mut converted: Vec<(bool, Entry)> = Vec::with_capacity(map.len());
        for (k, v) in map.iter() {
            let key = self.convert(k);
            let mut value = self.convert(v);
            value.key_at = Some((key.line, key.col));
            let merge = self.slice(k) == Some("<<") && merge_sources(&value).is_some();
            converted.push((merge, Entry { key, value }));
        }
        if !converted.iter().any(|(merge, _)| *merge) {
            return converted.into_iter().map(|(_, e)| e).collect();
        }
        let mut taken: Vec<String> = converted
            .iter()
            .filter(|(merge, _)| !merge)
            .map(|(_, e)| e.name().to_string())
            .collect();
        let mut out = Vec::new();
        for (merge, entry) in converted {
            if !merge {
                out.push(entry);
                continue;
            }
            for source in merge_sources(&entry.value).unwrap_or_default() {
                for e in source {
                    if !taken.iter().any(|t| t == e.name()) {
                        taken.push(e.name().to_string());
                        out.push(e.clone());
                    }
                }
            }
        }
        out
    }

    fn scalar(&self, node: &MarkedYamlOwned, scalar: &ScalarOwned) -> Value {
        // The text as written, without an anchor or tag in front of it (`&port 80`,
        // `!!int 80`); an alias (`*port`) has no text of its own here, so the value's.
        let written = |fallback: String| {
            let text = self.slice(node).unwrap_or("");
            let mut rest = text;
            while rest.starts_with(['&', '!']) {
                rest = rest
                    .split_once(char::is_whitespace)
                    .map_or("", |(_, r)| r.trim_start());
            }
            if rest.is_empty() || rest.starts_with('*') {
                fallback
            } else {
                rest.to_string()
            }
        };
        match scalar {
            ScalarOwned::Null => Value::Null,
            ScalarOwned::Boolean(b) => Value::Bool(*b),
            ScalarOwned::Integer(i) => Value::Int(*i, written(i.to_string())),
            ScalarOwned::FloatingPoint(f) => Value::Float(f.0, written(f.0.to_string())),
            ScalarOwned::String(s) => Value::Str(s.clone()),
        }
    }
}

/// The mappings a merge key's value brings in: one mapping, or a list of mappings.
fn merge_sources(value: &Node) -> Option<Vec<&[Entry]>> {
    match &value.value {
        Value::Map(entries) => Some(vec![entries.as_slice()]),
        Value::Seq(items) => items
            .iter()
            .map(|item| match &item.value {
                Value::Map(entries) => Some(entries.as_slice()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_scalars_keep_their_text() {
        let doc = parse("a:\n  v: 1.10\n  n: 0x1F\n").unwrap().unwrap();
        let Value::Map(top) = &doc.value else {
            panic!("not a map")
        };
        let Value::Map(inner) = &top[0].value.value else {
            panic!("not a map")
        };
        assert_eq!((inner[0].key.line, inner[0].key.col), (2, 3));
        assert_eq!(inner[0].value.value, Value::Float(1.1, "1.10".into()));
        assert_eq!((inner[0].value.line, inner[0].value.col), (2, 6));
        assert_eq!(inner[1].value.value, Value::Int(31, "0x1F".into()));
    }

    #[test]
    fn syntax_errors_and_duplicates_have_positions() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!((e.line, e.col), (2, 2));
        assert!(e.message.starts_with("YAML syntax error"), "{}", e.message);
        let e = parse("a: 1\nb:\n  c: 2\n  c: 3\n").unwrap_err();
        assert_eq!((e.line, e.col), (4, 3));
        assert_eq!(
            e.message,
            "duplicate key `c` (each key may appear once in a mapping)"
        );
    }

    #[test]
    fn empty_and_multi_document_input() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("# only a comment\n").unwrap(), None);
        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.line, 3);
    }
}
