//! One `managed_processes` entry: its id, type and flags, which config form its
//! `management` is written in, and the rules across entries (unique ids).

use super::canonical;
use super::ctx::{Ctx, Map};
use super::deps;
use super::nested;
use super::values::hint;
use super::yaml::{Node, Value};
use hsu_common::is_valid_process_id;
use hsu_managed_process::{
    ControlSpec, DiscoverySpec, HealthCheckSpec, ProcessDefinition, ProcessLogCollection,
    ProcessType,
};
use std::collections::BTreeMap;

/// What a `management` section yields, in either form.
#[derive(Default)]
pub(crate) struct Parts {
    pub control: Option<ControlSpec>,
    pub health_check: HealthCheckSpec,
    pub log_collection: ProcessLogCollection,
    pub discovery: Option<DiscoverySpec>,
    pub metadata: BTreeMap<String, String>,
}

const TYPES: [(&str, ProcessType); 3] = [
    ("standard_managed", ProcessType::StandardManaged),
    ("integrated_managed", ProcessType::IntegratedManaged),
    ("unmanaged", ProcessType::Unmanaged),
];
const TYPE_NAMES: [&str; 3] = ["standard_managed", "integrated_managed", "unmanaged"];

const ENTRY_KEYS: [&str; 9] = [
    "id",
    "type",
    "enabled",
    "profile_type",
    "metadata",
    "management",
    "depends_on",
    "depends_on_timeout",
    "ready_log_line",
];

/// `managed_processes`: every entry, checked, plus the uniqueness of ids.
pub(crate) fn list(cx: &mut Ctx, node: &Node, path: &str) -> Vec<ProcessDefinition> {
    let Value::Seq(items) = &node.value else {
        let message = format!("expected a list of processes, found {}", node.kind_name());
        cx.report(node, path, message);
        return Vec::new();
    };
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    let mut sites = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let Some(m) = cx.map(item, &item_path, &ENTRY_KEYS) else {
            continue;
        };
        let id = id(cx, &m);
        if let (Some(id), Some(at)) = (&id, m.get("id")) {
            if let Some(first) = seen.get(id) {
                let message = format!("duplicate id `{id}`; it is first used on line {first}");
                cx.report(at, &m.at("id"), message);
            } else {
                seen.insert(id.clone(), at.line);
            }
        }
        let (def, at) = entry(cx, &m, id.unwrap_or_default());
        out.push(def);
        sites.push(at);
    }
    deps::check(cx, &out, &sites);
    out
}

fn id(cx: &mut Ctx, m: &Map) -> Option<String> {
    let Some(node) = m.get("id") else {
        m.missing(cx, "id", "every process needs a unique id");
        return None;
    };
    let id = cx.string(node, &m.at("id"))?;
    if !is_valid_process_id(&id) {
        let message = format!("invalid id `{id}`: use 1 to 64 of the characters A-Z a-z 0-9 _ -");
        cx.report(node, &m.at("id"), message);
    }
    Some(id)
}

fn entry(cx: &mut Ctx, m: &Map, id: String) -> (ProcessDefinition, Vec<deps::Site>) {
    let given = m.get("type").map(|n| process_type(cx, n, &m.at("type")));
    let enabled = m.field(cx, "enabled", Ctx::boolean).unwrap_or(true);
    let profile_type = m.field(cx, "profile_type", Ctx::string);
    let mut metadata = m
        .get("metadata")
        .map(|n| cx.text_map(n, &m.at("metadata"), true))
        .unwrap_or_default();
    let (process_type, parts) = match m.get("management") {
        Some(n) => management(cx, n, &m.at("management"), given),
        None => {
            let ty = given.flatten().unwrap_or(ProcessType::StandardManaged);
            m.missing(cx, "management", "it says how to run or find the process");
            (ty, Parts::default())
        }
    };
    metadata.extend(parts.metadata);
    let (depends_on, sites) = deps::entry(cx, m);
    let ready_log_line = deps::ready_log_line(cx, m);
    let def = ProcessDefinition {
        id,
        process_type,
        enabled,
        control: parts.control,
        health_check: parts.health_check,
        log_collection: parts.log_collection,
        discovery: parts.discovery,
        metadata,
        profile_type,
        depends_on,
        ready_log_line,
    };
    (def, sites)
}

/// The process type. On a misspelling, the problem is reported and the suggested type
/// (if any) is assumed, so the rest of the entry is checked against what was meant.
fn process_type(cx: &mut Ctx, node: &Node, path: &str) -> Option<ProcessType> {
    let text = cx.string(node, path)?;
    let wanted = text.trim().to_ascii_lowercase().replace('-', "_");
    if let Some((_, ty)) = TYPES.iter().find(|(name, _)| *name == wanted) {
        return Some(*ty);
    }
    let message = format!(
        "unknown process type `{text}`; expected one of: {}{}",
        TYPE_NAMES.join(", "),
        hint(&wanted, &TYPE_NAMES)
    );
    cx.report(node, path, message);
    let suggested = super::values::suggest(&wanted, &TYPE_NAMES)?;
    TYPES
        .iter()
        .find(|(name, _)| *name == suggested)
        .map(|(_, ty)| *ty)
}

/// Decides the form of `management` and reads it. `given`: `None` when there is no
/// `type` key, `Some(None)` when it was invalid.
fn management(
    cx: &mut Ctx,
    node: &Node,
    path: &str,
    given: Option<Option<ProcessType>>,
) -> (ProcessType, Parts) {
    let fallback = given.flatten().unwrap_or(ProcessType::StandardManaged);
    let Value::Map(entries) = &node.value else {
        cx.map(node, path, &[]);
        return (fallback, Parts::default());
    };
    let present = |keys: &[&str]| -> Vec<String> {
        entries
            .iter()
            .filter(|e| keys.contains(&e.name()))
            .map(|e| e.name().to_string())
            .collect()
    };
    let canonical_keys = present(&canonical::KEYS);
    let nested_keys = present(&TYPE_NAMES);
    if let (Some(c), Some(n)) = (canonical_keys.first(), nested_keys.first()) {
        let message = format!(
            "mixes the canonical form (`{c}`) with the HSU nested form (`{n}`); write each \
             process in one form"
        );
        cx.report(node, path, message);
        // Each part is still checked in its own form, so that no other problem waits
        // for this one to be fixed.
        let part = |keys: &[&str]| Node {
            value: Value::Map(
                entries
                    .iter()
                    .filter(|e| keys.contains(&e.name()))
                    .cloned()
                    .collect(),
            ),
            ..node.clone()
        };
        let canonical_part = part(&canonical::KEYS);
        if let Some(m) = cx.map(&canonical_part, path, &canonical::KEYS) {
            canonical::management(cx, &m, fallback);
        }
        nested_management(cx, &part(&TYPE_NAMES), path, given);
        return (fallback, Parts::default());
    }
    if nested_keys.is_empty() {
        let Some(m) = cx.map_with_hints(node, path, &canonical::KEYS, &TYPE_NAMES) else {
            return (fallback, Parts::default());
        };
        return (fallback, canonical::management(cx, &m, fallback));
    }
    nested_management(cx, node, path, given)
}

fn nested_management(
    cx: &mut Ctx,
    node: &Node,
    path: &str,
    given: Option<Option<ProcessType>>,
) -> (ProcessType, Parts) {
    let fallback = given.flatten().unwrap_or(ProcessType::StandardManaged);
    let Some(m) = cx.map_with_hints(node, path, &TYPE_NAMES, &canonical::KEYS) else {
        return (fallback, Parts::default());
    };
    let mut found = TYPES.iter().filter(|(name, _)| m.has(name));
    let Some(&(name, ty)) = found.next() else {
        return (fallback, Parts::default());
    };
    for (other, _) in found {
        m.forbid(
            cx,
            other,
            &format!("cannot be given together with `{name}`; give one"),
        );
    }
    if let Some(Some(declared)) = given {
        if declared != ty {
            m.forbid(
                cx,
                name,
                &format!(
                    "does not match `type: {}`; the key under `management` names the type",
                    declared.as_str()
                ),
            );
        }
    }
    let section = m.get(name).unwrap_or(node);
    (ty, nested::type_section(cx, section, &m.at(name), ty))
}
