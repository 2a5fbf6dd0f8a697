//! The walk's shared state (where problems are collected) and typed readers for nodes.
//!
//! Every reader takes the node and its dotted path, reports a problem on a mismatch and
//! returns `None`, so callers fall back to a default and keep going: one pass finds
//! every problem.

use super::problem::Problem;
use super::values::{hint, parse_duration, parse_size, shown, MAX_DURATION};
use super::yaml::{Entry, Node, Value};
use super::MAX_STRING_LEN;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) struct Ctx {
    file: String,
    /// The config file's directory, for resolving relative paths.
    pub dir: PathBuf,
    pub problems: Vec<Problem>,
}

/// `parent.key`, or `key` at the root.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Ctx {
    pub fn new(file: String, dir: PathBuf) -> Self {
        Ctx {
            file,
            dir,
            problems: Vec::new(),
        }
    }

    pub fn report(&mut self, at: &Node, path: &str, message: impl Into<String>) {
        self.report_at(at.line, at.col, path, message);
    }

    pub fn report_at(&mut self, line: usize, col: usize, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            line,
            col,
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn expected(&mut self, node: &Node, path: &str, what: &str) {
        let message = format!("expected {what}, found {}", node.kind_name());
        self.report(node, path, message);
    }

    /// Views a mapping, reporting unknown keys (with a hint drawn from `known` and `hints`).
    pub fn map<'n>(&mut self, node: &'n Node, path: &str, known: &[&str]) -> Option<Map<'n>> {
        self.map_with_hints(node, path, known, &[])
    }

    /// Like [`Ctx::map`]; `hints` are extra names a typo may be close to (e.g. the keys of
    /// the other config form), suggested but not accepted.
    pub fn map_with_hints<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        known: &[&str],
        hints: &[&str],
    ) -> Option<Map<'n>> {
        let Value::Map(entries) = &node.value else {
            self.expected(node, path, "a mapping");
            return None;
        };
        let all: Vec<&str> = known.iter().chain(hints).copied().collect();
        for entry in entries {
            let name = entry.name();
            // At the top level, `x-` keys are the user's own (a place for anchors).
            if path.is_empty() && name.starts_with("x-") {
                continue;
            }
            if !known.contains(&name) {
                let message = if name == "<<" && matches!(entry.value.value, Value::Map(_)) {
                    // Merged already unless written quoted, which YAML makes a plain key.
                    "a quoted `<<` is an ordinary key, not a merge key; write it unquoted"
                        .to_string()
                } else if name == "<<" {
                    format!(
                        "a merge key takes a mapping or a list of mappings (e.g. \
                         `<<: *defaults`), found {}",
                        entry.value.kind_name()
                    )
                } else if hints.contains(&name) {
                    format!(
                        "`{name}` belongs to the other config form (canonical vs HSU nested) \
                         and is not valid here; expected one of: {}",
                        known.join(", ")
                    )
                } else {
                    unknown_key(name, known, &all)
                };
                self.report(&entry.key, &join(path, name), message);
            }
        }
        Some(Map {
            node,
            path: path.to_string(),
            entries,
        })
    }

    /// A string. Numbers and booleans count as their text (`id: 42`, `command: true`).
    /// Longer than [`MAX_STRING_LEN`] bytes is a problem.
    pub fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) | Value::Int(_, s) | Value::Float(_, s) => {
                self.short_enough(node, path, s).then(|| s.clone())
            }
            Value::Bool(b) => Some(b.to_string()),
            _ => {
                self.expected(node, path, "a string");
                None
            }
        }
    }

    /// Reports `text` (a value or a key at `node`) if it is over [`MAX_STRING_LEN`] bytes.
    pub fn short_enough(&mut self, node: &Node, path: &str, text: &str) -> bool {
        if text.len() <= MAX_STRING_LEN {
            return true;
        }
        let message = format!(
            "is {} bytes long; a string may be at most {} KiB ({MAX_STRING_LEN} bytes)",
            text.len(),
            MAX_STRING_LEN / 1024
        );
        self.report(node, path, message);
        false
    }

    /// A string handed to the operating system when the process starts (a program, an
    /// argument, a path, an environment value): a NUL byte cannot be passed there, so it
    /// is a problem here rather than a failure at every start.
    pub fn os_string(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        self.no_nul(node, path, &s).then_some(s)
    }

    /// Reports `text` if it contains a NUL byte.
    pub fn no_nul(&mut self, node: &Node, path: &str, text: &str) -> bool {
        if !text.contains('\0') {
            return true;
        }
        let message = "contains a NUL byte (`\\0`), which cannot be passed to a process";
        self.report(node, path, message);
        false
    }

    /// A string that must not be empty.
    pub fn non_empty(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        self.check_non_empty(node, path, s)
    }

    /// A string for the operating system ([`Ctx::os_string`]) that must not be empty.
    pub fn os_non_empty(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.os_string(node, path)?;
        self.check_non_empty(node, path, s)
    }

    fn check_non_empty(&mut self, node: &Node, path: &str, s: String) -> Option<String> {
        if s.trim().is_empty() {
            self.report(node, path, "must not be empty");
            return None;
        }
        Some(s)
    }

    pub fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.expected(node, path, "`true` or `false`");
                None
            }
        }
    }

    /// A non-negative whole number.
    pub fn uint(&mut self, node: &Node, path: &str) -> Option<u64> {
        self.uint_up_to(node, path, u64::MAX)
    }

    /// A whole number from 0 to `max`.
    fn uint_up_to(&mut self, node: &Node, path: &str, max: u64) -> Option<u64> {
        let out_of_range = |text: &str| format!("out of range (max {max}), found {text}");
        let n = match &node.value {
            Value::Int(i, _) if *i < 0 => {
                self.report(node, path, format!("must not be negative, found {i}"));
                return None;
            }
            Value::Int(i, _) => u64::try_from(*i).ok()?,
            // A whole number too large for a YAML integer arrives as a float.
            Value::Float(_, text) if is_whole(text) => match text.parse::<u64>() {
                Ok(n) => n,
                Err(_) if text.starts_with('-') => {
                    self.report(node, path, format!("must not be negative, found {text}"));
                    return None;
                }
                Err(_) => {
                    self.report(node, path, out_of_range(text));
                    return None;
                }
            },
            _ => {
                self.expected(node, path, "a whole number");
                return None;
            }
        };
        if n > max {
            self.report(node, path, out_of_range(&n.to_string()));
            return None;
        }
        Some(n)
    }

    pub fn u32(&mut self, node: &Node, path: &str) -> Option<u32> {
        let n = self.uint_up_to(node, path, u32::MAX.into())?;
        u32::try_from(n).ok()
    }

    pub fn u16(&mut self, node: &Node, path: &str) -> Option<u16> {
        let n = self.uint_up_to(node, path, u16::MAX.into())?;
        u16::try_from(n).ok()
    }

    /// A whole number that is at least 1.
    pub fn positive_u32(&mut self, node: &Node, path: &str) -> Option<u32> {
        let n = self.u32(node, path)?;
        if n == 0 {
            self.report(node, path, "must be at least 1");
            return None;
        }
        Some(n)
    }

    /// Any finite number (integer or decimal).
    pub fn number(&mut self, node: &Node, path: &str) -> Option<f64> {
        match &node.value {
            // Precision loss above 2^53 is irrelevant for rates and percentages.
            Value::Int(i, _) => Some(*i as f64),
            Value::Float(f, _) if f.is_finite() => Some(*f),
            Value::Float(_, text) => {
                let message = format!("must be a finite number, found `{}`", shown(text));
                self.report(node, path, message);
                None
            }
            _ => {
                self.expected(node, path, "a number");
                None
            }
        }
    }

    /// A duration: `250ms`, `1m30s`, or a number of seconds; at most [`MAX_DURATION`].
    pub fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let negative = |text: &str| format!("a duration cannot be negative, found {text}");
        let parsed = match &node.value {
            Value::Int(i, text) => u64::try_from(*i)
                .map(Duration::from_secs)
                .map_err(|_| negative(text)),
            Value::Float(_, text) if text.trim_start().starts_with('-') => Err(negative(text)),
            Value::Float(f, text) => match Duration::try_from_secs_f64(*f) {
                Ok(d) => Ok(d),
                Err(_) if f.is_nan() => Err(format!(
                    "must be a finite number of seconds, found `{}`",
                    shown(text)
                )),
                Err(_) => Err(format!(
                    "out of range (max {}s, about 100 years), found {}",
                    MAX_DURATION.as_secs(),
                    shown(text)
                )),
            },
            Value::Str(s) => self
                .short_enough(node, path, s)
                .then(|| parse_duration(s))?,
            _ => {
                self.expected(node, path, "a duration such as `10s`");
                return None;
            }
        };
        let capped = parsed.and_then(|d| {
            if d <= MAX_DURATION {
                return Ok(d);
            }
            let written = node.scalar_text().unwrap_or_default();
            Err(format!(
                "out of range (max {}s, about 100 years), found {}",
                MAX_DURATION.as_secs(),
                shown(written)
            ))
        });
        self.ok_or_report(node, path, capped)
    }

    /// A size: a number of bytes, or `512MiB`, `1GiB`, `100MB`.
    pub fn size(&mut self, node: &Node, path: &str) -> Option<u64> {
        let parsed = match &node.value {
            Value::Int(i, _) => {
                u64::try_from(*i).map_err(|_| format!("must not be negative, found {i}"))
            }
            Value::Float(_, text) if is_whole(text) => return self.uint(node, path),
            Value::Str(s) => self.short_enough(node, path, s).then(|| parse_size(s))?,
            _ => {
                self.expected(node, path, "a size such as `512MiB`");
                return None;
            }
        };
        self.ok_or_report(node, path, parsed)
    }

    fn ok_or_report<T>(&mut self, node: &Node, path: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|message| self.report(node, path, message)).ok()
    }

    /// One of a fixed set of names. Case and `-` vs `_` do not matter.
    pub fn choice<T: Copy>(&mut self, node: &Node, path: &str, options: &[(&str, T)]) -> Option<T> {
        let text = self.string(node, path)?;
        let wanted = text.trim().to_ascii_lowercase().replace('-', "_");
        if let Some((_, value)) = options.iter().find(|(name, _)| *name == wanted) {
            return Some(*value);
        }
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        let message = format!(
            "unknown value `{text}`; expected one of: {}{}",
            names.join(", "),
            hint(&wanted, &names)
        );
        self.report(node, path, message);
        None
    }

    /// A path; relative ones are resolved against the config file's directory.
    pub fn path(&mut self, node: &Node, path: &str) -> Option<PathBuf> {
        let text = self.os_non_empty(node, path)?;
        Some(self.resolve(Path::new(&text)))
    }

    /// Joins a relative path to the config directory, dropping `.` components (`..` is
    /// kept: it may cross a symbolic link).
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.dir.join(path).components().collect()
    }

    /// A program: with a `/` it is a path (resolved like [`Ctx::path`]); a bare name is
    /// kept as is, to be looked up on `PATH` when started.
    pub fn program(&mut self, node: &Node, path: &str) -> Option<PathBuf> {
        let text = self.os_non_empty(node, path)?;
        if text.contains('/') {
            Some(self.resolve(Path::new(&text)))
        } else {
            Some(PathBuf::from(text))
        }
    }

    pub fn string_list(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        self.list_of(node, path, Ctx::string)
    }

    /// A program's arguments: a list of strings without NUL bytes.
    pub fn arguments(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        self.list_of(node, path, Ctx::os_string)
    }

    fn list_of(
        &mut self,
        node: &Node,
        path: &str,
        read: fn(&mut Ctx, &Node, &str) -> Option<String>,
    ) -> Option<Vec<String>> {
        let Value::Seq(items) = &node.value else {
            self.expected(node, path, "a list of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            out.extend(read(self, item, &format!("{path}[{i}]")));
        }
        Some(out)
    }

    /// A mapping of names to scalar values (numbers and booleans become their text).
    /// `lists`: a list value becomes its items joined with `, ` (for metadata tags).
    pub fn text_map(&mut self, node: &Node, path: &str, lists: bool) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Value::Map(entries) = &node.value else {
            self.expected(node, path, "a mapping of names to values");
            return out;
        };
        for entry in entries {
            let key_path = join(path, entry.name());
            if !self.short_enough(&entry.key, &join(path, &shown(entry.name())), entry.name()) {
                continue;
            }
            if let Some(value) = self.text_value(&entry.value, &key_path, lists) {
                out.insert(entry.name().to_string(), value);
            }
        }
        out
    }

    fn text_value(&mut self, node: &Node, path: &str, lists: bool) -> Option<String> {
        match &node.value {
            Value::Seq(_) if lists => Some(self.string_list(node, path)?.join(", ")),
            Value::Null => {
                self.report(
                    node,
                    path,
                    "expected a value, found nothing (write \"\" for empty)",
                );
                None
            }
            _ => self.string(node, path),
        }
    }
}

fn unknown_key(name: &str, known: &[&str], candidates: &[&str]) -> String {
    let shown = shown(name);
    match super::values::suggest(name, candidates) {
        Some(s) => format!("unknown key `{shown}`; did you mean `{s}`?"),
        None => format!(
            "unknown key `{shown}`; expected one of: {}",
            known.join(", ")
        ),
    }
}

/// Whether a number as written is a whole number (`-12`, `18446744073709551616`).
fn is_whole(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// A mapping node being read; keys are looked up by name.
pub(crate) struct Map<'n> {
    pub node: &'n Node,
    pub path: String,
    entries: &'n [Entry],
}

impl<'n> Map<'n> {
    /// The value of `key`; a `null` value counts as absent.
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entry(key).map(|e| &e.value).filter(|v| !v.is_null())
    }

    pub fn entry(&self, key: &str) -> Option<&'n Entry> {
        self.entries.iter().find(|e| e.name() == key)
    }

    /// The key node of `key`, for problems about the key's presence.
    pub fn key(&self, key: &str) -> Option<&'n Node> {
        self.entry(key)
            .filter(|e| !e.value.is_null())
            .map(|e| &e.key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Reads `key` with `read` when present.
    pub fn field<T>(
        &self,
        cx: &mut Ctx,
        key: &str,
        read: impl FnOnce(&mut Ctx, &Node, &str) -> Option<T>,
    ) -> Option<T> {
        let node = self.get(key)?;
        read(cx, node, &self.at(key))
    }

    /// Reports that a required `key` is missing, at the key the mapping is the value of
    /// (e.g. `management:`), else at the mapping (a list item: its first key).
    pub fn missing(&self, cx: &mut Ctx, key: &str, why: &str) {
        let message = if why.is_empty() {
            "missing required key".to_string()
        } else {
            format!("missing: {why}")
        };
        let (line, col) = self.node.whole_at();
        cx.report_at(line, col, &self.at(key), message);
    }

    /// Reports `key` (if present) as not allowed here, with the reason.
    pub fn forbid(&self, cx: &mut Ctx, key: &str, why: &str) {
        if let Some(k) = self.key(key) {
            cx.report(k, &self.at(key), format!("`{key}` {why}"));
        }
    }
}
