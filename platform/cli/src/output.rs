//! How the CLI prints: aligned tables for people, one stable JSON document for scripts (`--json`),
//! record bytes as text when they are UTF-8 and base64 otherwise, and times read as RFC 3339 or epoch ms.

use anyhow::Result;
use base64::Engine as _;
use comfy_table::{ContentArrangement, Table, presets};
use serde_json::{Value, json};

use crate::exit::{UsageError, usage};

/// A borderless table with a header row, like `kubectl get` or `kafka-consumer-groups.sh`.
pub(crate) fn table<I, S>(header: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let mut table = Table::new();
    table.load_preset(presets::NOTHING).set_content_arrangement(ContentArrangement::Disabled).set_header(header);
    table
}

/// Prints a table without the leading space the preset puts in every cell.
pub(crate) fn print_table(table: &Table) {
    for line in table.to_string().lines() {
        println!("{}", line.strip_prefix(' ').unwrap_or(line).trim_end());
    }
}

pub(crate) fn print_json(value: &Value) {
    println!("{value}");
}

/// Bytes for JSON: a string when valid UTF-8, else `{"base64": "..."}`; null stays null.
pub(crate) fn bytes_json(bytes: Option<&[u8]>) -> Value {
    match bytes {
        None => Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(text) => Value::String(text.to_string()),
            Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) }),
        },
    }
}

/// Bytes for a terminal: lossy UTF-8 (invalid sequences become U+FFFD).
pub(crate) fn bytes_text(bytes: Option<&[u8]>) -> String {
    bytes.map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
}

/// Parses a point in time: epoch milliseconds (all digits) or RFC 3339 (`2024-05-01T12:00:00Z`,
/// `2024-05-01T14:00:00+02:00`). Returns epoch milliseconds.
pub(crate) fn parse_time(text: &str) -> Result<i64> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<i64>() {
            Ok(ms) => Ok(ms),
            Err(_) => usage(format!("`{text}` is too large for epoch milliseconds")),
        };
    }
    match text.parse::<jiff::Timestamp>() {
        Ok(ts) => Ok(ts.as_millisecond()),
        Err(e) => usage(format!("`{text}` is not a time: use RFC 3339 like 2024-05-01T12:00:00Z, or epoch milliseconds ({e})")),
    }
}

/// For clap's `value_parser`: the same as [`parse_time`], as a usage error.
pub(crate) fn time_arg(text: &str) -> Result<i64, UsageError> {
    parse_time(text).map_err(|e| UsageError(e.to_string()))
}

/// `1234567` → `1,234,567`.
pub(crate) fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `key=value` for clap, splitting at the first `=`.
pub(crate) fn key_value(text: &str) -> Result<(String, String), UsageError> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(UsageError(format!("`{text}` is not key=value"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_both_ways() {
        assert_eq!(parse_time("1700000000000").ok(), Some(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z").ok(), Some(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-15T00:13:20+02:00").ok(), Some(1_700_000_000_000));
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("99999999999999999999999").is_err());
    }

    #[test]
    fn bytes_render() {
        assert_eq!(bytes_json(Some(b"hi")), json!("hi"));
        assert_eq!(bytes_json(Some(&[0xff, 0x00])), json!({"base64": "/wA="}));
        assert_eq!(bytes_json(None), Value::Null);
        assert_eq!(group_digits(1_234_567), "1,234,567");
        assert_eq!(key_value("a=b=c").ok(), Some(("a".into(), "b=c".into())));
        assert!(key_value("=x").is_err());
    }
}
