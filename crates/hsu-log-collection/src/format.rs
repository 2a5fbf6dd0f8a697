//! How one line is written: to a capture file (optionally stamped) and to each
//! aggregation target format.

use crate::settings::Format;
use crate::Stream;
use std::borrow::Cow;
use std::time::SystemTime;

/// Where a line came from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source<'a> {
    /// A process's stream.
    Process {
        /// The process id.
        id: &'a str,
        /// Which stream.
        stream: Stream,
    },
    /// The manager's own log.
    Manager,
}

/// Arrival times as text, formatted once per time (every line of one read shares it).
#[derive(Debug, Default)]
pub(crate) struct Clock {
    last: Option<(SystemTime, String)>,
}

impl Clock {
    /// `at` as RFC 3339 with microseconds, UTC: `2026-01-02T03:04:05.678901Z`.
    pub(crate) fn text(&mut self, at: SystemTime) -> &str {
        let stale = self.last.as_ref().is_none_or(|(t, _)| *t != at);
        if stale {
            self.last = Some((at, humantime::format_rfc3339_micros(at).to_string()));
        }
        self.last.as_ref().map_or("", |(_, s)| s.as_str())
    }
}

/// Appends a stored line: `[<ts> ]<line>\n`.
pub(crate) fn stored(out: &mut Vec<u8>, ts: Option<&str>, line: &[u8]) {
    if let Some(ts) = ts {
        out.extend_from_slice(ts.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(line);
    out.push(b'\n');
}

/// Appends a line as an aggregation target writes it (see [`Format`]). `continued`: the
/// line is a piece of a longer one whose rest follows.
pub(crate) fn target(
    out: &mut Vec<u8>,
    format: Format,
    prefix: Option<&str>,
    ts: &str,
    source: Source<'_>,
    line: &[u8],
    continued: bool,
) {
    match format {
        Format::Plain | Format::EnhancedPlain => {
            if let Some(p) = prefix {
                out.extend_from_slice(p.as_bytes());
                out.push(b' ');
            }
            if format == Format::EnhancedPlain {
                out.extend_from_slice(ts.as_bytes());
                out.push(b' ');
                match source {
                    Source::Process { id, stream } => {
                        out.extend_from_slice(id.as_bytes());
                        out.push(b'[');
                        out.extend_from_slice(stream.as_str().as_bytes());
                        out.extend_from_slice(b"] ");
                    }
                    Source::Manager => out.extend_from_slice(b"[manager] "),
                }
            }
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        Format::Json => json(out, prefix, ts, source, line, continued),
    }
}

/// One JSON object and a newline. Always valid JSON: control characters are escaped,
/// and bytes that are not UTF-8 become U+FFFD with `"invalid_utf8": true`.
fn json(
    out: &mut Vec<u8>,
    prefix: Option<&str>,
    ts: &str,
    source: Source<'_>,
    line: &[u8],
    continued: bool,
) {
    let text = String::from_utf8_lossy(line);
    let invalid = matches!(text, Cow::Owned(_));
    out.extend_from_slice(b"{\"ts\":");
    string(out, ts);
    match source {
        Source::Process { id, stream } => {
            out.extend_from_slice(b",\"id\":");
            string(out, id);
            out.extend_from_slice(b",\"stream\":");
            string(out, stream.as_str());
        }
        Source::Manager => out.extend_from_slice(b",\"id\":null,\"stream\":\"manager\""),
    }
    out.extend_from_slice(b",\"line\":");
    string(out, &text);
    if continued {
        out.extend_from_slice(b",\"continued\":true");
    }
    if invalid {
        out.extend_from_slice(b",\"invalid_utf8\":true");
    }
    if let Some(p) = prefix {
        out.extend_from_slice(b",\"prefix\":");
        string(out, p);
    }
    out.extend_from_slice(b"}\n");
}

fn string(out: &mut Vec<u8>, s: &str) {
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `line` without ANSI escape sequences (`ESC [ ... final`), for the manager's own log
/// lines, which are coloured when its stderr is a terminal.
pub(crate) fn strip_ansi(line: &[u8]) -> Cow<'_, [u8]> {
    if !line.contains(&0x1b) {
        return Cow::Borrowed(line);
    }
    let mut out = Vec::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        if line[i] == 0x1b && line.get(i + 1) == Some(&b'[') {
            i += 2;
            while i < line.len() && !(0x40..=0x7e).contains(&line[i]) {
                i += 1;
            }
            i += 1;
        } else {
            out.push(line[i]);
            i += 1;
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn one(format: Format, prefix: Option<&str>, source: Source<'_>, line: &[u8]) -> String {
        let mut out = Vec::new();
        target(&mut out, format, prefix, "T", source, line, false);
        String::from_utf8(out).unwrap()
    }

    const WEB: Source<'static> = Source::Process {
        id: "web",
        stream: Stream::Stderr,
    };

    #[test]
    fn plain_and_enhanced() {
        assert_eq!(one(Format::Plain, None, WEB, b"hi"), "hi\n");
        assert_eq!(one(Format::Plain, Some("[HSU]"), WEB, b"hi"), "[HSU] hi\n");
        assert_eq!(
            one(Format::EnhancedPlain, Some("[HSU]"), WEB, b"hi"),
            "[HSU] T web[stderr] hi\n"
        );
        assert_eq!(
            one(Format::EnhancedPlain, None, Source::Manager, b"x"),
            "T [manager] x\n"
        );
    }

    #[test]
    fn json_is_valid_for_any_bytes() {
        let nasty = b"a\x00b\x1b[31mc\"d\\e\tf\xff\xfeg";
        let text = one(Format::Json, Some("p"), WEB, nasty);
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"], "web");
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["prefix"], "p");
        assert_eq!(v["invalid_utf8"], true);
        assert_eq!(
            v["line"].as_str().unwrap(),
            "a\u{0}b\u{1b}[31mc\"d\\e\tf\u{fffd}\u{fffd}g"
        );
        let v: serde_json::Value =
            serde_json::from_str(&one(Format::Json, None, Source::Manager, b"ok")).unwrap();
        assert_eq!(v["id"], serde_json::Value::Null);
        assert_eq!(v["stream"], "manager");
        assert!(v.get("invalid_utf8").is_none() && v.get("prefix").is_none());
        let mut out = Vec::new();
        target(&mut out, Format::Json, None, "T", WEB, b"x", true);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["continued"], true);
    }

    #[test]
    fn stamps_and_ansi() {
        let mut clock = Clock::default();
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(clock.text(at), "2023-11-14T22:13:20.123456Z");
        let mut out = Vec::new();
        stored(&mut out, Some("T"), b"line");
        stored(&mut out, None, b"raw");
        assert_eq!(out, b"T line\nraw\n");
        assert_eq!(
            &*strip_ansi(b"\x1b[2m2026\x1b[0m \x1b[32m INFO\x1b[0m go"),
            b"2026  INFO go"
        );
        assert_eq!(&*strip_ansi(b"plain"), b"plain");
    }
}
