//! `depends_on`, `depends_on_timeout` and `ready_log_line` of one entry, and the rules
//! across entries: every id known, no process depending on itself, no cycle, and each
//! condition one the dependency can meet.

use super::ctx::{Ctx, Map};
use super::values::hint;
use super::yaml::{Node, Value};
use hsu_managed_process::{Dependency, DependencyCondition, ProcessDefinition, RestartPolicy};
use std::collections::{BTreeMap, BTreeSet};

/// Where one `depends_on` entry is written, for problems found across entries.
#[derive(Debug, Clone)]
pub(crate) struct Site {
    line: usize,
    col: usize,
    path: String,
}

const CONDITIONS: [(&str, DependencyCondition); 5] = [
    ("started", DependencyCondition::Started),
    ("healthy", DependencyCondition::Healthy),
    ("completed", DependencyCondition::Completed),
    (
        "completed_successfully",
        DependencyCondition::CompletedSuccessfully,
    ),
    ("log_ready", DependencyCondition::LogReady),
];

/// The entry's `depends_on` (with `depends_on_timeout` as each one's default timeout),
/// and where each dependency is written.
pub(crate) fn entry(cx: &mut Ctx, m: &Map) -> (Vec<Dependency>, Vec<Site>) {
    let default_timeout = m.field(cx, "depends_on_timeout", super::manager::positive_duration);
    let Some(node) = m.get("depends_on") else {
        if m.has("depends_on_timeout") {
            m.forbid(cx, "depends_on_timeout", "is only used with `depends_on`");
        }
        return (Vec::new(), Vec::new());
    };
    let path = m.at("depends_on");
    let items: Vec<&Node> = match &node.value {
        Value::Seq(items) => items.iter().collect(),
        // A single entry is accepted as a list of one.
        Value::Str(_) | Value::Map(_) => vec![node],
        _ => {
            let message = format!(
                "expected a list of dependencies (ids, or `{{id, condition}}`), found {}",
                node.kind_name()
            );
            cx.report(node, &path, message);
            return (Vec::new(), Vec::new());
        }
    };
    let mut deps = Vec::new();
    let mut sites = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let item_path = match &node.value {
            Value::Seq(_) => format!("{path}[{i}]"),
            _ => path.clone(),
        };
        if let Some(dep) = dependency(cx, item, &item_path, default_timeout) {
            sites.push(Site {
                line: item.line,
                col: item.col,
                path: item_path,
            });
            deps.push(dep);
        }
    }
    (deps, sites)
}

fn dependency(
    cx: &mut Ctx,
    node: &Node,
    path: &str,
    default_timeout: Option<std::time::Duration>,
) -> Option<Dependency> {
    if let Value::Str(_) = &node.value {
        let id = cx.non_empty(node, path)?;
        return Some(Dependency {
            id,
            condition: DependencyCondition::Started,
            timeout: default_timeout,
            propagate_restart: false,
        });
    }
    let m = cx.map(node, path, &["id", "condition", "timeout", "restart"])?;
    let condition = m
        .field(cx, "condition", |cx, n, p| cx.choice(n, p, &CONDITIONS))
        .unwrap_or(DependencyCondition::Started);
    let timeout = m
        .field(cx, "timeout", super::manager::positive_duration)
        .or(default_timeout);
    let propagate_restart = m
        .field(cx, "restart", |cx, n, p| {
            cx.choice(n, p, &[("propagate", true), ("ignore", false)])
        })
        .unwrap_or(false);
    if !m.has("id") {
        m.missing(cx, "id", "the id of the process depended on");
        return None;
    }
    let id = m.field(cx, "id", Ctx::non_empty)?;
    Some(Dependency {
        id,
        condition,
        timeout,
        propagate_restart,
    })
}

/// `ready_log_line`: a regular expression, checked here so that a bad one is a config
/// problem, not a surprise at run time.
pub(crate) fn ready_log_line(cx: &mut Ctx, m: &Map) -> Option<String> {
    let node = m.get("ready_log_line")?;
    let path = m.at("ready_log_line");
    let pattern = cx.non_empty(node, &path)?;
    match regex::Regex::new(&pattern) {
        Ok(_) => Some(pattern),
        Err(e) => {
            let first = e.to_string();
            let first = first.lines().last().unwrap_or("invalid").trim().to_owned();
            cx.report(
                node,
                &path,
                format!("`{pattern}` is not a valid regular expression: {first}"),
            );
            None
        }
    }
}

/// The rules across entries. `sites[i]` are where `defs[i]`'s dependencies are written.
pub(crate) fn check(cx: &mut Ctx, defs: &[ProcessDefinition], sites: &[Vec<Site>]) {
    let ids: Vec<&str> = defs.iter().map(|d| d.id.as_str()).collect();
    let by_id: BTreeMap<&str, &ProcessDefinition> =
        defs.iter().map(|d| (d.id.as_str(), d)).collect();
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (def, sites) in defs.iter().zip(sites) {
        for (dep, site) in def.depends_on.iter().zip(sites) {
            let report = |cx: &mut Ctx, message: String| {
                cx.report_at(site.line, site.col, &site.path, message)
            };
            if dep.id == def.id {
                report(cx, format!("`{}` cannot depend on itself", def.id));
                continue;
            }
            let Some(target) = by_id.get(dep.id.as_str()) else {
                let others: Vec<&str> = ids.iter().copied().filter(|i| *i != def.id).collect();
                report(
                    cx,
                    format!(
                        "depends on `{}`, which is not a process in this config{}",
                        dep.id,
                        hint(&dep.id, &others)
                    ),
                );
                continue;
            };
            if let Some(problem) = unmeetable(dep.condition, target) {
                report(cx, problem);
            }
            edges
                .entry(def.id.as_str())
                .or_default()
                .insert(dep.id.as_str());
        }
    }
    for cycle in cycles(&edges) {
        let shown = format!("{} -> {}", cycle.join(" -> "), cycle[0]);
        let members: BTreeSet<&str> = cycle.iter().copied().collect();
        for (def, sites) in defs.iter().zip(sites) {
            if !members.contains(def.id.as_str()) {
                continue;
            }
            for (dep, site) in def.depends_on.iter().zip(sites) {
                if members.contains(dep.id.as_str()) {
                    let message =
                        format!("dependency cycle: {shown}; no process in it could ever start");
                    cx.report_at(site.line, site.col, &site.path, message);
                }
            }
        }
    }
}

/// Why `target` can never meet `condition`, if it cannot.
fn unmeetable(condition: DependencyCondition, target: &ProcessDefinition) -> Option<String> {
    let id = &target.id;
    match condition {
        DependencyCondition::LogReady if target.ready_log_line.is_none() => Some(format!(
            "condition `log_ready` needs `ready_log_line` on `{id}`"
        )),
        DependencyCondition::LogReady if !target.log_collection.enabled => Some(format!(
            "condition `log_ready` needs `{id}`'s output captured (its log_collection is off)"
        )),
        DependencyCondition::Completed | DependencyCondition::CompletedSuccessfully
            if !target.process_type.is_managed() =>
        {
            Some(format!(
                "condition `{}` cannot be met by the unmanaged `{id}` (its exit is not seen)",
                condition.as_str()
            ))
        }
        DependencyCondition::Completed | DependencyCondition::CompletedSuccessfully
            if target
                .control
                .as_ref()
                .is_some_and(|c| c.restart_policy == RestartPolicy::Always) =>
        {
            Some(format!(
                "condition `{}` is never met: `{id}` has restart_policy always, so it never \
                 stays completed",
                condition.as_str()
            ))
        }
        _ => None,
    }
}

/// Every cycle of the graph, once each (one per strongly connected component of more
/// than one process), as the ids along it starting from the smallest.
fn cycles<'a>(edges: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<Vec<&'a str>> {
    // Tarjan's strongly connected components, iteratively small enough to recurse: a
    // config has at most a few thousand processes.
    struct Tarjan<'a, 'e> {
        edges: &'e BTreeMap<&'a str, BTreeSet<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        components: Vec<Vec<&'a str>>,
    }
    impl<'a> Tarjan<'a, '_> {
        fn visit(&mut self, v: &'a str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on_stack.insert(v);
            let succ: Vec<&'a str> = self
                .edges
                .get(v)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default();
            for w in succ {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                self.components.push(component);
            }
        }
    }
    let mut t = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        components: Vec::new(),
    };
    for &v in edges.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    let mut out = Vec::new();
    for component in t.components.into_iter().filter(|c| c.len() > 1) {
        let members: BTreeSet<&str> = component.iter().copied().collect();
        let start = *members.iter().next().expect("not empty");
        out.push(path_back(edges, &members, start));
    }
    out.sort();
    out
}

/// A cycle through `start` inside `members` (which are strongly connected).
fn path_back<'a>(
    edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
    members: &BTreeSet<&'a str>,
    start: &'a str,
) -> Vec<&'a str> {
    // Breadth-first from `start` to any member with an edge back to it.
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    let mut seen = BTreeSet::from([start]);
    while let Some(v) = queue.pop_front() {
        let next = edges.get(v).into_iter().flatten().copied();
        for w in next.filter(|w| members.contains(w)) {
            if w == start {
                let mut path = vec![v];
                let mut at = v;
                while let Some(&p) = parent.get(at) {
                    path.push(p);
                    at = p;
                }
                path.reverse();
                return path;
            }
            if seen.insert(w) {
                parent.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    members.iter().copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph<'a>(pairs: &[(&'a str, &'a str)]) -> BTreeMap<&'a str, BTreeSet<&'a str>> {
        let mut g: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (a, b) in pairs {
            g.entry(a).or_default().insert(b);
        }
        g
    }

    #[test]
    fn every_cycle_once_from_its_smallest_id() {
        let g = graph(&[
            ("app", "db"),
            ("db", "cache"),
            ("cache", "app"),
            ("worker", "app"),
            ("x", "y"),
            ("y", "x"),
        ]);
        assert_eq!(cycles(&g), vec![vec!["app", "db", "cache"], vec!["x", "y"]]);
    }

    #[test]
    fn a_dag_has_no_cycle() {
        let g = graph(&[("app", "db"), ("worker", "app"), ("worker", "db")]);
        assert!(cycles(&g).is_empty());
    }

    fn load(text: &str) -> Result<crate::config::Config, String> {
        crate::config::load_str(text, std::path::Path::new("/etc/hsu/c.yaml"))
            .map_err(|e| e.to_string())
    }

    fn process(id: &str, extra: &str) -> String {
        format!("  - id: {id}\n{extra}    management: {{control: {{executable: /bin/true}}}}\n")
    }

    #[test]
    fn dependencies_parse_in_both_spellings() {
        let text = format!(
            "managed_processes:\n{}{}{}",
            process("db", "    ready_log_line: 'listening on port \\d+'\n"),
            process(
                "app",
                "    depends_on_timeout: 30s\n    depends_on:\n      - db\n      \
                 - {id: migrate, condition: completed_successfully, timeout: 5s, restart: propagate}\n"
            ),
            process("migrate", "    depends_on: {id: db, condition: log_ready}\n"),
        );
        let config = load(&text).unwrap();
        let app = &config.processes[1];
        assert_eq!(
            app.depends_on,
            vec![
                Dependency {
                    id: "db".into(),
                    condition: DependencyCondition::Started,
                    timeout: Some(std::time::Duration::from_secs(30)),
                    propagate_restart: false,
                },
                Dependency {
                    id: "migrate".into(),
                    condition: DependencyCondition::CompletedSuccessfully,
                    timeout: Some(std::time::Duration::from_secs(5)),
                    propagate_restart: true,
                },
            ]
        );
        assert_eq!(
            config.processes[0].ready_log_line.as_deref(),
            Some("listening on port \\d+")
        );
        assert_eq!(
            config.processes[2].depends_on[0].condition,
            DependencyCondition::LogReady
        );
    }

    #[test]
    fn every_problem_with_dependencies_is_reported_at_its_place() {
        let text = format!(
            "managed_processes:\n{}{}{}{}{}{}",
            process("db", "    ready_log_line: '(unclosed'\n"),
            process("app", "    depends_on: [dbb, app]\n"),
            process("a", "    depends_on: [b]\n"),
            process("b", "    depends_on: [{id: c, condition: soon}]\n"),
            process("c", "    depends_on: [a, {id: db, condition: log_ready}]\n"),
            process("w", "    depends_on_timeout: 0s\n"),
        );
        let out = load(&text).unwrap_err();
        for expected in [
            "c.yaml:3:21: managed_processes[0].ready_log_line: `(unclosed` is not a valid regular expression",
            "c.yaml:6:18: managed_processes[1].depends_on[0]: depends on `dbb`, which is not a process in this config; did you mean `db`?",
            "c.yaml:6:23: managed_processes[1].depends_on[1]: `app` cannot depend on itself",
            "c.yaml:9:18: managed_processes[2].depends_on[0]: dependency cycle: a -> b -> c -> a",
            "managed_processes[3].depends_on[0].condition: ",
            "c.yaml:15:18: managed_processes[4].depends_on[0]: dependency cycle: a -> b -> c -> a",
            "managed_processes[4].depends_on[1]: condition `log_ready` needs `ready_log_line` on `db`",
            "managed_processes[5].depends_on_timeout",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
        }
        // b's edge to c is in the cycle too, even though its condition was misspelt.
        assert_eq!(out.matches("dependency cycle").count(), 3, "{out}");
    }
}
