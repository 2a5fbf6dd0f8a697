//! Parsing of the text forms of durations and sizes, and "did you mean" suggestions.

use std::time::Duration;

/// The longest duration a config may give (100 years as `humantime` counts them, so
/// `100y` is accepted): far beyond any sensible timeout, and small enough that adding it
/// to the current time can never overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(3_155_760_000);

/// Parses `250ms`, `10s`, `1m30s`, `2h` (and a bare number of seconds, `"30"`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    if text.starts_with('-') {
        return Err(format!(
            "a duration cannot be negative, found `{}`",
            shown(text)
        ));
    }
    humantime::parse_duration(text).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => format!(
            "out of range (max {}s, about 100 years), found `{}`",
            MAX_DURATION.as_secs(),
            shown(text)
        ),
        e => format!(
            "invalid duration `{}` ({e}); expected e.g. `250ms`, `10s`, `1m30s`, `2h`",
            shown(text)
        ),
    })
}

/// `text` for quoting in a message: cut to its first 64 characters (with `...`), so a
/// huge value does not make a huge message.
pub(crate) fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    const SHOWN: usize = 64;
    match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}...", &text[..cut]).into(),
        None => text.into(),
    }
}

/// Parses a size: a number of bytes, or a number with a unit: binary `KiB`, `MiB`,
/// `GiB`, `TiB` (powers of 1024) or decimal `KB`, `MB`, `GB`, `TB` (powers of 1000).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let invalid = || {
        format!(
            "invalid size `{}`; expected a number of bytes or a number with a unit, \
             e.g. `512MiB`, `1GiB`, `100MB`",
            shown(text)
        )
    };
    if text.starts_with('-') {
        return Err(format!(
            "a size cannot be negative, found `{}`",
            shown(text)
        ));
    }
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(invalid());
    }
    let size: bytesize::ByteSize = text.parse().map_err(|_| invalid())?;
    match size.as_u64() {
        u64::MAX => Err(format!(
            "out of range (max {} bytes, 16 EiB), found `{}`",
            u64::MAX,
            shown(text)
        )),
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
        assert_eq!(
            parse_duration("-5s"),
            Err("a duration cannot be negative, found `-5s`".into())
        );
        assert!(parse_duration("99999999999999999999y")
            .unwrap_err()
            .starts_with("out of range"));
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
