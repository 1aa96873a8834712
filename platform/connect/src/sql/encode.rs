//! Parameters: [`SqlValue`]s bound for each database. PostgreSQL gets each value in its own binary
//! type (NUMERIC encoded exactly from the decimal text, NULL with no declared type so the server infers
//! it); MySQL and SQLite take decimals, JSON and UUIDs as text, which they convert without loss.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::mysql::MySqlArguments;
use sqlx::postgres::{PgArgumentBuffer, PgArguments, PgTypeInfo, Postgres};
use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments, Encode, Type};

use super::{SqlValue, ValueError};
use crate::error::{ConnectError, SqlFailure};

fn bad(index: usize, message: impl std::fmt::Display) -> ConnectError {
    ConnectError::sql(SqlFailure::Misuse, format!("parameter {}: {message}", index + 1))
}

fn bound(index: usize, error: BoxDynError) -> ConnectError {
    bad(index, format!("cannot be bound: {error}"))
}

pub(super) fn date(text: &str) -> Result<NaiveDate, ValueError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|e| format!("'{text}' is not a date (YYYY-MM-DD): {e}")).map_err(ValueError)
}

pub(super) fn time(text: &str) -> Result<NaiveTime, ValueError> {
    NaiveTime::parse_from_str(text, "%H:%M:%S%.f")
        .map_err(|e| format!("'{text}' is not a time (HH:MM:SS[.ffffff]): {e}"))
        .map_err(ValueError)
}

pub(super) fn timestamp(text: &str) -> Result<NaiveDateTime, ValueError> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f"))
        .map_err(|e| format!("'{text}' is not a timestamp (YYYY-MM-DDTHH:MM:SS[.ffffff]): {e}"))
        .map_err(ValueError)
}

pub(super) fn timestamp_tz(text: &str) -> Result<DateTime<Utc>, ValueError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("'{text}' is not a timestamp with a zone (RFC 3339, e.g. 2024-05-01T12:00:00.000001Z): {e}"))
        .map_err(ValueError)
}

fn uuid_bytes(text: &str) -> Result<[u8; 16], ValueError> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("'{text}' is not a UUID").into());
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// A decimal's text split into sign, digits before and after the point. Plain notation only.
fn split_decimal(text: &str) -> Result<(bool, &str, &str), ValueError> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if (int.is_empty() && frac.is_empty()) || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{text}' is not a decimal (digits, an optional sign and point; no exponent)").into());
    }
    Ok((negative, int, frac))
}

/// PostgreSQL NUMERIC in its binary form: base-10000 digits, weight, sign, display scale.
struct PgNumeric<'a>(&'a str);

impl Type<Postgres> for PgNumeric<'_> {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_name("numeric")
    }
}

impl Encode<'_, Postgres> for PgNumeric<'_> {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&numeric_binary(self.0)?);
        Ok(IsNull::No)
    }
}

const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

pub(super) fn numeric_binary(text: &str) -> Result<Vec<u8>, ValueError> {
    let header = |ndigits: i16, weight: i16, sign: u16, dscale: u16| {
        let mut out = Vec::with_capacity(8);
        out.extend_from_slice(&ndigits.to_be_bytes());
        out.extend_from_slice(&weight.to_be_bytes());
        out.extend_from_slice(&sign.to_be_bytes());
        out.extend_from_slice(&dscale.to_be_bytes());
        out
    };
    match text {
        "NaN" => return Ok(header(0, 0, NUMERIC_NAN, 0)),
        "Infinity" => return Ok(header(0, 0, NUMERIC_PINF, 0)),
        "-Infinity" => return Ok(header(0, 0, NUMERIC_NINF, 0)),
        _ => {}
    }
    let (negative, int, frac) = split_decimal(text)?;
    if frac.len() > 16_383 || int.len() > 131_072 {
        return Err(format!("'{}…' has more digits than NUMERIC holds", &text[..text.len().min(20)]).into());
    }
    let int = int.trim_start_matches('0');
    // Integer digits padded on the left to whole groups of four, fraction digits on the right.
    let int_pad = (4 - int.len() % 4) % 4;
    let frac_pad = (4 - frac.len() % 4) % 4;
    let all: String = "0".repeat(int_pad) + int + frac + &"0".repeat(frac_pad);
    let mut groups: Vec<i16> =
        all.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap_or("0").parse::<i16>().unwrap_or(0)).collect();
    let mut weight = ((int_pad + int.len()) / 4) as i32 - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let sign = if negative && !groups.is_empty() { NUMERIC_NEG } else { 0 };
    let mut out = header(groups.len() as i16, weight as i16, sign, frac.len() as u16);
    for group in groups {
        out.extend_from_slice(&group.to_be_bytes());
    }
    Ok(out)
}

/// NULL with no declared type: the server infers it from where it is used.
struct PgNull;

impl Type<Postgres> for PgNull {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
}

impl Encode<'_, Postgres> for PgNull {
    fn encode_by_ref(&self, _: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Ok(IsNull::Yes)
    }
}

/// JSON as `jsonb` (version byte 1, then the text).
struct PgJsonb<'a>(&'a str);

impl Type<Postgres> for PgJsonb<'_> {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_name("jsonb")
    }
}

impl Encode<'_, Postgres> for PgJsonb<'_> {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.push(1);
        buf.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
}

struct PgUuid([u8; 16]);

impl Type<Postgres> for PgUuid {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_name("uuid")
    }
}

impl Encode<'_, Postgres> for PgUuid {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }
}

/// The parameter types of a statement, as a suffix for its text: the driver caches prepared
/// statements by text, and PostgreSQL fixes parameter types at prepare time, so the same text bound
/// with different types must be prepared apart.
pub(super) fn postgres_signature(params: &[SqlValue]) -> String {
    if params.is_empty() {
        return String::new();
    }
    let kinds: String = params
        .iter()
        .map(|p| match p {
            SqlValue::Null => 'n',
            SqlValue::Bool(_) => 'b',
            SqlValue::Int(_) => 'i',
            SqlValue::Float(_) => 'f',
            SqlValue::Decimal(_) => 'd',
            SqlValue::Text(_) => 't',
            SqlValue::Bytes(_) => 'y',
            SqlValue::Json(_) => 'j',
            SqlValue::Date(_) => 'D',
            SqlValue::Time(_) => 'T',
            SqlValue::Timestamp(_) => 's',
            SqlValue::TimestampTz(_) => 'z',
            SqlValue::Uuid(_) => 'u',
        })
        .collect();
    format!("\n/* sluice:{kinds} */")
}

pub(super) fn postgres(params: &[SqlValue]) -> Result<PgArguments, ConnectError> {
    let mut args = PgArguments::default();
    for (i, param) in params.iter().enumerate() {
        let added = match param {
            SqlValue::Null => Arguments::add(&mut args, PgNull),
            SqlValue::Bool(b) => Arguments::add(&mut args, *b),
            SqlValue::Int(n) => Arguments::add(&mut args, *n),
            SqlValue::Float(f) => Arguments::add(&mut args, *f),
            SqlValue::Decimal(text) => {
                numeric_binary(text).map_err(|e| bad(i, e))?;
                Arguments::add(&mut args, PgNumeric(text))
            }
            SqlValue::Text(text) => Arguments::add(&mut args, text.as_str()),
            SqlValue::Bytes(bytes) => Arguments::add(&mut args, bytes.as_slice()),
            SqlValue::Json(text) => Arguments::add(&mut args, PgJsonb(text)),
            SqlValue::Date(text) => Arguments::add(&mut args, date(text).map_err(|e| bad(i, e))?),
            SqlValue::Time(text) => Arguments::add(&mut args, time(text).map_err(|e| bad(i, e))?),
            SqlValue::Timestamp(text) => Arguments::add(&mut args, timestamp(text).map_err(|e| bad(i, e))?),
            SqlValue::TimestampTz(text) => Arguments::add(&mut args, timestamp_tz(text).map_err(|e| bad(i, e))?),
            SqlValue::Uuid(text) => Arguments::add(&mut args, PgUuid(uuid_bytes(text).map_err(|e| bad(i, e))?)),
        };
        added.map_err(|e| bound(i, e))?;
    }
    Ok(args)
}

pub(super) fn mysql(params: &[SqlValue]) -> Result<MySqlArguments, ConnectError> {
    let mut args = MySqlArguments::default();
    for (i, param) in params.iter().enumerate() {
        let added = match param {
            SqlValue::Null => Arguments::add(&mut args, None::<String>),
            SqlValue::Bool(b) => Arguments::add(&mut args, *b),
            SqlValue::Int(n) => Arguments::add(&mut args, *n),
            SqlValue::Float(f) => Arguments::add(&mut args, *f),
            SqlValue::Decimal(text) => {
                split_decimal(text).map_err(|e| bad(i, e))?;
                Arguments::add(&mut args, text.as_str())
            }
            SqlValue::Text(text) | SqlValue::Json(text) => Arguments::add(&mut args, text.as_str()),
            SqlValue::Bytes(bytes) => Arguments::add(&mut args, bytes.as_slice()),
            SqlValue::Date(text) => Arguments::add(&mut args, date(text).map_err(|e| bad(i, e))?),
            SqlValue::Time(text) => Arguments::add(&mut args, time(text).map_err(|e| bad(i, e))?),
            SqlValue::Timestamp(text) => Arguments::add(&mut args, timestamp(text).map_err(|e| bad(i, e))?),
            // The driver's sessions run in UTC, so a TIMESTAMP column stores the instant.
            SqlValue::TimestampTz(text) => Arguments::add(&mut args, timestamp_tz(text).map_err(|e| bad(i, e))?.naive_utc()),
            SqlValue::Uuid(text) => {
                uuid_bytes(text).map_err(|e| bad(i, e))?;
                Arguments::add(&mut args, text.as_str())
            }
        };
        added.map_err(|e| bound(i, e))?;
    }
    Ok(args)
}

pub(super) fn sqlite<'q>(params: &'q [SqlValue]) -> Result<SqliteArguments<'q>, ConnectError> {
    let mut args = SqliteArguments::default();
    for (i, param) in params.iter().enumerate() {
        let added = match param {
            SqlValue::Null => Arguments::add(&mut args, None::<i64>),
            SqlValue::Bool(b) => Arguments::add(&mut args, *b),
            SqlValue::Int(n) => Arguments::add(&mut args, *n),
            SqlValue::Float(f) => Arguments::add(&mut args, *f),
            SqlValue::Bytes(bytes) => Arguments::add(&mut args, bytes.as_slice()),
            SqlValue::Decimal(text) => {
                split_decimal(text).map_err(|e| bad(i, e))?;
                Arguments::add(&mut args, text.as_str())
            }
            SqlValue::Date(text) => {
                date(text).map_err(|e| bad(i, e))?;
                Arguments::add(&mut args, text.as_str())
            }
            SqlValue::Time(text) => {
                time(text).map_err(|e| bad(i, e))?;
                Arguments::add(&mut args, text.as_str())
            }
            SqlValue::Timestamp(text) => {
                timestamp(text).map_err(|e| bad(i, e))?;
                Arguments::add(&mut args, text.as_str())
            }
            SqlValue::TimestampTz(text) => {
                timestamp_tz(text).map_err(|e| bad(i, e))?;
                Arguments::add(&mut args, text.as_str())
            }
            SqlValue::Text(text) | SqlValue::Json(text) | SqlValue::Uuid(text) => Arguments::add(&mut args, text.as_str()),
        };
        added.map_err(|e| bound(i, e))?;
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numerics_encode_to_postgres_base_10000_groups() {
        // 12345.678 = groups 1 | 2345 | 6780, weight 1, dscale 3.
        assert_eq!(numeric_binary("12345.678").unwrap(), vec![0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 9, 41, 26, 124]);
        // -0.0001 = group 1 at weight -1, negative, dscale 4.
        assert_eq!(numeric_binary("-0.0001").unwrap(), vec![0, 1, 255, 255, 0x40, 0, 0, 4, 0, 1]);
        // zero keeps its scale and no sign.
        assert_eq!(numeric_binary("-0.00").unwrap(), vec![0, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(numeric_binary("10000").unwrap(), vec![0, 1, 0, 1, 0, 0, 0, 0, 0, 1]);
        assert!(numeric_binary("1e5").is_err());
        assert!(numeric_binary("").is_err());
        assert_eq!(
            super::super::decode::numeric_text(&numeric_binary("-98765432109876543210.0123456789").unwrap()).unwrap(),
            "-98765432109876543210.0123456789"
        );
    }
}
