//! Parsing of the text forms of durations and sizes, and "did you mean" suggestions.

use std::time::Duration;

/// Parses `250ms`, `10s`, `1m30s`, `2h` (and a bare number of seconds, `"30"`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| {
        format!("invalid duration `{text}` ({e}); expected e.g. `250ms`, `10s`, `1m30s`, `2h`")
    })
}

/// Parses a size: a number of bytes, or a number with a unit: binary `KiB`, `MiB`,
/// `GiB`, `TiB` (powers of 1024) or decimal `KB`, `MB`, `GB`, `TB` (powers of 1000).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let invalid = || {
        format!(
            "invalid size `{text}`; expected a number of bytes or a number with a unit, \
             e.g. `512MiB`, `1GiB`, `100MB`"
        )
    };
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(invalid());
    }
    let size: bytesize::ByteSize = text.parse().map_err(|_| invalid())?;
    match size.as_u64() {
        u64::MAX => Err(format!("size `{text}` is too large")),
        bytes => Ok(bytes),
    }
}

/// The candidate closest to `input`, if one is close enough to be a likely typo.
pub(crate) fn suggest<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let input = input.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (*c, strsim::jaro_winkler(&input, c)))
        .filter(|(c, score)| {
            *score > 0.8 || (input.len() > 2 && strsim::levenshtein(&input, c) <= 2)
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(c, _)| c)
}

/// `, did you mean `x`?` or nothing.
pub(crate) fn hint(input: &str, candidates: &[&str]) -> String {
    suggest(input, candidates)
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("ten seconds").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes_binary_and_decimal() {
        assert_eq!(parse_size("512MiB"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("10 KiB"), Ok(10 * 1024));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("-1MiB").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12 potatoes").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("restart_polcy", &["restart", "restart_policy"]),
            Some("restart_policy")
        );
        assert_eq!(
            suggest("on-falure", &["never", "on_failure", "always"]),
            Some("on_failure")
        );
        assert_eq!(suggest("zzz", &["never", "always"]), None);
    }
}
