//! Reading what the manager wrote: the event journal (`events.jsonl`) and the
//! `FILE:LINE:COL: dotted.path: message` problem lines of `validate`.
//!
//! Events are parsed into a small struct over `serde_json::Value` rather than the
//! manager's own types, so the suite checks the documented format (SPEC §7), not
//! whatever the implementation happens to serialize.

use serde_json::Value;
use std::fmt;
use std::path::Path;

/// One line of the event journal: `{seq, ts, id, kind, ...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seq: u64,
    /// The timestamp as written (RFC 3339 UTC).
    pub ts: String,
    /// `ts` as milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The process the event is about (absent for manager-wide events).
    pub id: Option<String>,
    pub kind: String,
    /// The whole object, for the kind's own fields.
    pub raw: Value,
}

impl Event {
    /// Parses one journal line; the error says what is wrong with it.
    pub fn parse(line: &str) -> Result<Event, String> {
        let raw: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
        let obj = raw.as_object().ok_or("not a JSON object")?;
        let seq = obj
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or("no unsigned integer `seq`")?;
        let ts = obj
            .get("ts")
            .and_then(Value::as_str)
            .ok_or("no string `ts`")?
            .to_owned();
        let ts_ms = parse_rfc3339_ms(&ts).ok_or_else(|| format!("`ts` {ts:?} is not RFC 3339"))?;
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .ok_or("no string `kind`")?
            .to_owned();
        let id = match obj.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(format!("`id` is not a string: {other}")),
        };
        Ok(Event {
            seq,
            ts,
            ts_ms,
            id,
            kind,
            raw,
        })
    }

    /// A string field of the event.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.raw.get(key).and_then(Value::as_str)
    }

    /// An unsigned integer field of the event.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.raw.get(key).and_then(Value::as_u64)
    }

    /// A signed integer field of the event (`None` when absent or null).
    pub fn i64(&self, key: &str) -> Option<i64> {
        self.raw.get(key).and_then(Value::as_i64)
    }

    /// Whether this event is about process `id`.
    pub fn is_for(&self, id: &str) -> bool {
        self.id.as_deref() == Some(id)
    }

    /// Whether this is a `state_changed` of process `id` into state `to`.
    pub fn is_transition_to(&self, id: &str, to: &str) -> bool {
        self.is_for(id) && self.kind == "state_changed" && self.str("to") == Some(to)
    }

    /// Whether this is a `state_changed` of process `id` from `from` to `to`.
    pub fn is_transition(&self, id: &str, from: &str, to: &str) -> bool {
        self.is_transition_to(id, to) && self.str("from") == Some(from)
    }

    /// Whether this is an event of `kind` about process `id`.
    pub fn is_kind(&self, id: &str, kind: &str) -> bool {
        self.is_for(id) && self.kind == kind
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw.to_string())
    }
}

/// Parses journal text. Only complete lines count: a last line without its newline is a
/// write in progress and is left for the next read. A complete line that is not a valid
/// event is an error naming the line.
pub fn parse_journal(text: &str) -> Result<Vec<Event>, String> {
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => return Ok(Vec::new()),
    };
    complete
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| Event::parse(l).map_err(|e| format!("journal line {}: {e}: {l}", n + 1)))
        .collect()
}

/// Reads and parses the journal at `path`; a missing file is an empty journal.
///
/// # Panics
/// On an unreadable file or a malformed complete line: the journal is part of the
/// contract, so a bad line fails the test.
pub fn read_journal(path: &Path) -> Vec<Event> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    };
    parse_journal(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The state transitions the seed's state diagram allows (SPEC §5), plus
/// `starting -> stopping` (a stop while a process is still starting).
pub const ALLOWED_TRANSITIONS: &[(&str, &str)] = &[
    ("stopped", "starting"),
    ("starting", "running"),
    ("starting", "failed"),
    ("starting", "stopping"),
    ("running", "stopping"),
    ("running", "stopped"),
    ("running", "failed"),
    ("stopping", "stopped"),
    ("failed", "starting"),
    ("failed", "stopped"),
];

/// Checks the invariants every journal must satisfy:
/// - `seq` increases by exactly one from line to line;
/// - `ts` never goes backwards;
/// - per process, each `state_changed` starts where the previous one ended (the first
///   from `stopped`) and is one of [`ALLOWED_TRANSITIONS`];
/// - `restart_scheduled` and `circuit_opened` happen while the process is `failed`.
pub fn check_journal(events: &[Event]) -> Result<(), String> {
    use std::collections::HashMap;
    let mut state: HashMap<&str, &str> = HashMap::new();
    for pair in events.windows(2) {
        if pair[1].seq != pair[0].seq + 1 {
            return Err(format!(
                "seq gap or disorder between {} and {}",
                pair[0], pair[1]
            ));
        }
        if pair[1].ts_ms < pair[0].ts_ms {
            return Err(format!("ts goes backwards: {} then {}", pair[0], pair[1]));
        }
    }
    // After a manager restart, each process's first move may start anywhere: the new
    // manager adopts a running process, or keeps a failed one failed, without a move.
    let mut managers = 0;
    for e in events {
        if e.kind == "manager_started" {
            managers += 1;
            if managers > 1 {
                state.clear();
            }
        }
        let Some(id) = e.id.as_deref() else { continue };
        let fresh = managers > 1 && !state.contains_key(id);
        let current = match (state.get(id).copied(), e.str("from")) {
            (None, Some(from)) if fresh => from,
            (current, _) => current.unwrap_or("stopped"),
        };
        match e.kind.as_str() {
            "state_changed" => {
                let (from, to) = match (e.str("from"), e.str("to")) {
                    (Some(f), Some(t)) => (f, t),
                    _ => return Err(format!("state_changed without from/to: {e}")),
                };
                if e.str("reason").is_none() {
                    return Err(format!("state_changed without a reason: {e}"));
                }
                if from != current {
                    return Err(format!("`{id}` was {current}, but the journal says {e}"));
                }
                if !ALLOWED_TRANSITIONS.contains(&(from, to)) {
                    return Err(format!("transition not in the state diagram: {e}"));
                }
                state.insert(id, to);
            }
            "restart_scheduled" | "circuit_opened" if current != "failed" => {
                return Err(format!("`{id}` was {current} (not failed) at {e}"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The `state_changed` events of process `id`, in order.
pub fn state_changes<'a>(events: &'a [Event], id: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e.is_kind(id, "state_changed"))
        .collect()
}

/// Checks the chain of `state_changed` events of process `id` alone: the first starts
/// from `stopped`, each `from` is the previous `to`, every pair is one of
/// [`ALLOWED_TRANSITIONS`], and each has a reason. The error names the offending event
/// and lists the chain.
pub fn check_state_chain(events: &[Event], id: &str) -> Result<(), String> {
    let chain = state_changes(events, id);
    let mut current = "stopped";
    for e in &chain {
        let problem = match (e.str("from"), e.str("to"), e.str("reason")) {
            (Some(from), _, _) if from != current => Some(format!("`{id}` was {current}")),
            (Some(from), Some(to), Some(_)) if ALLOWED_TRANSITIONS.contains(&(from, to)) => {
                current = to;
                None
            }
            (Some(_), Some(_), Some(_)) => Some("not in the state diagram".to_owned()),
            _ => Some("from, to or reason missing".to_owned()),
        };
        if let Some(problem) = problem {
            return Err(format!(
                "{problem}: {e}\nthe chain of `{id}`:\n{}",
                format_events(chain.iter().copied())
            ));
        }
    }
    Ok(())
}

/// One `restart_scheduled` event's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledRestart {
    pub seq: u64,
    pub ts_ms: i64,
    pub delay_ms: u64,
    pub attempt: u64,
    pub trigger: String,
}

/// The `restart_scheduled` events of process `id`, in order.
///
/// # Panics
/// When such an event lacks `delay_ms`, `attempt` or `trigger`.
pub fn scheduled_restarts(events: &[Event], id: &str) -> Vec<ScheduledRestart> {
    events
        .iter()
        .filter(|e| e.is_kind(id, "restart_scheduled"))
        .map(|e| ScheduledRestart {
            seq: e.seq,
            ts_ms: e.ts_ms,
            delay_ms: e
                .u64("delay_ms")
                .unwrap_or_else(|| panic!("no delay_ms: {e}")),
            attempt: e
                .u64("attempt")
                .unwrap_or_else(|| panic!("no attempt: {e}")),
            trigger: e
                .str("trigger")
                .unwrap_or_else(|| panic!("no trigger: {e}"))
                .to_owned(),
        })
        .collect()
}

/// The first event after `seq` matching `pred`.
pub fn first_after(
    events: &[Event],
    seq: u64,
    mut pred: impl FnMut(&Event) -> bool,
) -> Option<&Event> {
    events.iter().find(|e| e.seq > seq && pred(e))
}

/// The events as one line each, for failure messages.
pub fn format_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> String {
    events
        .into_iter()
        .map(|e| format!("  {e}\n"))
        .collect::<String>()
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp such as
/// `2026-01-01T00:00:00.123Z` or `2026-01-01T01:00:00.1+01:00`.
pub fn parse_rfc3339_ms(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |s: &str| -> Option<i64> {
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(&ts[0..4])?, num(&ts[5..7])?, num(&ts[8..10])?);
    let (hour, min, sec) = (num(&ts[11..13])?, num(&ts[14..16])?, num(&ts[17..19])?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &ts[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = num(&padded)?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            sign * (num(&rest[1..3])? * 60 + num(&rest[4..6])?)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_min * 60;
    Some(secs * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One `FILE:LINE:COL: dotted.path: message` line printed by `validate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub path: String,
    pub message: String,
}

/// Parses a problem line; `None` when the line does not have that shape (the shape of
/// the regular expression `^.+:\d+:\d+: .+: .+$`).
pub fn parse_problem(line: &str) -> Option<Problem> {
    let line = line.trim_end_matches(['\r', '\n']);
    // The first `:<digits>:<digits>: ` after a non-empty file name.
    for (i, _) in line.match_indices(':').filter(|(i, _)| *i > 0) {
        let rest = &line[i + 1..];
        let Some((l, rest)) = split_number(rest) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix(':') else {
            continue;
        };
        let Some((c, rest)) = split_number(rest) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix(": ") else {
            continue;
        };
        let (path, message) = rest.split_once(": ")?;
        if path.is_empty() || message.trim().is_empty() {
            return None;
        }
        return Some(Problem {
            file: line[..i].to_owned(),
            line: l,
            column: c,
            path: path.to_owned(),
            message: message.to_owned(),
        });
    }
    None
}

fn split_number(s: &str) -> Option<(u32, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    Some((s[..digits].parse().ok()?, &s[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_and_skips_torn_tail() {
        let text = concat!(
            r#"{"seq":1,"ts":"2026-01-01T00:00:00.000Z","kind":"manager_started","pid":5,"config":"c"}"#,
            "\n",
            r#"{"seq":2,"ts":"2026-01-01T00:00:01.250Z","id":"svc","kind":"state_changed","from":"stopped","to":"starting","reason":"r"}"#,
            "\n",
            r#"{"seq":3,"ts":"2026-01-01T00:0"#,
        );
        let events = parse_journal(text).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].id, None);
        assert_eq!(events[0].kind, "manager_started");
        assert!(events[1].is_transition("svc", "stopped", "starting"));
        assert!(!events[1].is_transition("svc", "running", "starting"));
        assert_eq!(events[1].ts_ms - events[0].ts_ms, 1250);
        assert_eq!(events[1].str("reason"), Some("r"));
    }

    #[test]
    fn rejects_malformed_complete_lines() {
        assert!(parse_journal("{\"seq\":1}\n")
            .unwrap_err()
            .contains("line 1"));
        assert!(parse_journal("nonsense\n").is_err());
        let no_kind = r#"{"seq":1,"ts":"2026-01-01T00:00:00.000Z"}"#;
        assert!(parse_journal(&format!("{no_kind}\n")).is_err());
        assert_eq!(parse_journal("").unwrap(), Vec::new());
    }

    fn journal(lines: &[&str]) -> Vec<Event> {
        let text: String = lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                format!(
                    "{{\"seq\":{},\"ts\":\"2026-01-01T00:00:0{}.000Z\",\"id\":\"a\",{l}}}\n",
                    i + 1,
                    i
                )
            })
            .collect();
        parse_journal(&text).unwrap()
    }

    #[test]
    fn journal_invariants() {
        let sc = |f: &str, t: &str| {
            format!(r#""kind":"state_changed","from":"{f}","to":"{t}","reason":"r""#)
        };
        let rs = r#""kind":"restart_scheduled","delay_ms":1,"attempt":1,"trigger":"exit""#;
        let ok = [
            sc("stopped", "starting"),
            sc("starting", "running"),
            sc("running", "failed"),
            rs.to_string(),
            sc("failed", "starting"),
        ];
        let ok: Vec<&str> = ok.iter().map(String::as_str).collect();
        assert_eq!(check_journal(&journal(&ok)), Ok(()));
        let skip = [sc("stopped", "starting"), sc("running", "stopped")];
        let skip: Vec<&str> = skip.iter().map(String::as_str).collect();
        assert!(check_journal(&journal(&skip)).is_err());
        let bad = [sc("stopped", "running")];
        let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
        assert!(check_journal(&journal(&bad)).is_err());
        let early = [sc("stopped", "starting"), rs.to_string()];
        let early: Vec<&str> = early.iter().map(String::as_str).collect();
        assert!(check_journal(&journal(&early)).is_err());
        let mut gap = journal(&ok);
        gap.remove(1);
        assert!(check_journal(&gap).unwrap_err().contains("seq"));
    }

    #[test]
    fn state_chain_of_one_process() {
        let sc = |f: &str, t: &str| {
            format!(r#""kind":"state_changed","from":"{f}","to":"{t}","reason":"r""#)
        };
        let ok = [
            sc("stopped", "starting"),
            sc("starting", "running"),
            sc("running", "stopping"),
            sc("stopping", "stopped"),
        ];
        let ok: Vec<&str> = ok.iter().map(String::as_str).collect();
        assert_eq!(check_state_chain(&journal(&ok), "a"), Ok(()));
        assert_eq!(state_changes(&journal(&ok), "a").len(), 4);
        assert_eq!(check_state_chain(&journal(&ok), "other"), Ok(()));
        let broken = [sc("stopped", "starting"), sc("running", "stopping")];
        let broken: Vec<&str> = broken.iter().map(String::as_str).collect();
        let err = check_state_chain(&journal(&broken), "a").unwrap_err();
        assert!(err.contains("was starting"), "{err}");
        let illegal = [sc("stopped", "starting"), sc("starting", "stopped")];
        let illegal: Vec<&str> = illegal.iter().map(String::as_str).collect();
        assert!(check_state_chain(&journal(&illegal), "a")
            .unwrap_err()
            .contains("state diagram"));
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T12:34:56.789Z"),
            Some(1_709_210_096_789)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T13:34:56.789123+01:00"),
            Some(1_709_210_096_789)
        );
        assert_eq!(parse_rfc3339_ms("2024-02-29 12:34:56"), None);
        assert_eq!(parse_rfc3339_ms("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }

    #[test]
    fn problem_lines() {
        let p = parse_problem(
            "/x/config.yaml:12:9: managed_processes[0].management.control.graceful_timeout: invalid duration \"soon\"",
        )
        .unwrap();
        assert_eq!(p.file, "/x/config.yaml");
        assert_eq!((p.line, p.column), (12, 9));
        assert_eq!(
            p.path,
            "managed_processes[0].management.control.graceful_timeout"
        );
        assert!(p.message.starts_with("invalid duration"));
        assert!(parse_problem("error: config.yaml is invalid").is_none());
        assert!(parse_problem("config.yaml:3: path: message").is_none());
        assert!(parse_problem(":3:4: path: message").is_none());
        assert!(parse_problem("c.yaml:3:4: path-only").is_none());
        assert!(parse_problem("c.yaml:3:4: a: b: c").is_some());
    }
}
