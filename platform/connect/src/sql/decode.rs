//! Results: each database's values as [`SqlValue`]s, exactly. PostgreSQL values are read from their
//! binary wire form (NUMERIC digit groups, timestamps as microseconds since 2000-01-01); MySQL and
//! SQLite values through the driver's decoders. Every value's size is accounted to the call's
//! [`Budget`] from the row buffer before it is copied.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime};
use sqlx::mysql::MySqlRow;
use sqlx::postgres::{PgRow, PgValueFormat};
use sqlx::sqlite::SqliteRow;
use sqlx::{Column, Row, TypeInfo, ValueRef};

use super::{Budget, SqlValue, ValueError};
use crate::error::{ConnectError, SqlFailure};

/// 2000-01-01T00:00:00Z, PostgreSQL's epoch, in Unix microseconds.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6f";

fn unsupported(column: &str, message: impl std::fmt::Display) -> ConnectError {
    ConnectError::sql(SqlFailure::Unsupported, format!("column '{column}': {message}"))
}

fn fixed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], ValueError> {
    bytes.try_into().map_err(|_| format!("expected {N} bytes, got {}", bytes.len())).map_err(ValueError)
}

fn utf8(bytes: &[u8]) -> Result<String, ValueError> {
    String::from_utf8(bytes.to_vec()).map_err(|e| format!("not UTF-8: {e}")).map_err(ValueError)
}

/// A NUMERIC's binary form as exact decimal text, keeping its display scale.
pub(super) fn numeric_text(bytes: &[u8]) -> Result<String, ValueError> {
    if bytes.len() < 8 {
        return Err("a NUMERIC shorter than its header".into());
    }
    let ndigits = i16::from_be_bytes([bytes[0], bytes[1]]);
    let weight = i16::from_be_bytes([bytes[2], bytes[3]]) as i32;
    let sign = u16::from_be_bytes([bytes[4], bytes[5]]);
    let dscale = u16::from_be_bytes([bytes[6], bytes[7]]) as i32;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        0x0000 | 0x4000 => {}
        other => return Err(format!("a NUMERIC with sign {other:#x}").into()),
    }
    if ndigits < 0 || bytes.len() != 8 + 2 * ndigits as usize {
        return Err("a NUMERIC whose length does not match its digit count".into());
    }
    let digits: Vec<i32> = bytes[8..].chunks(2).map(|c| i16::from_be_bytes([c[0], c[1]]) as i32).collect();
    if digits.iter().any(|d| !(0..10_000).contains(d)) {
        return Err("a NUMERIC digit group out of range".into());
    }
    // The group with exponent `e` (value × 10000^e) sits at index `weight - e`.
    let group = |e: i32| -> i32 {
        let index = weight - e;
        if index >= 0 && (index as usize) < digits.len() { digits[index as usize] } else { 0 }
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        out.push_str(&group(weight).to_string());
        for e in (0..weight).rev() {
            out.push_str(&format!("{:04}", group(e)));
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut fraction = String::new();
        let mut e = -1;
        while (fraction.len() as i32) < dscale {
            fraction.push_str(&format!("{:04}", group(e)));
            e -= 1;
        }
        fraction.truncate(dscale as usize);
        out.push_str(&fraction);
    }
    Ok(out)
}

fn pg_timestamp(micros: i64) -> Result<String, ValueError> {
    match micros {
        i64::MAX => return Ok("infinity".into()),
        i64::MIN => return Ok("-infinity".into()),
        _ => {}
    }
    let unix = micros.checked_add(PG_EPOCH_UNIX_MICROS).ok_or("a timestamp out of range")?;
    let at = DateTime::from_timestamp_micros(unix).ok_or("a timestamp out of range")?;
    Ok(at.naive_utc().format(TIMESTAMP_FORMAT).to_string())
}

fn pg_date(days: i32) -> Result<String, ValueError> {
    match days {
        i32::MAX => return Ok("infinity".into()),
        i32::MIN => return Ok("-infinity".into()),
        _ => {}
    }
    let epoch = NaiveDate::from_ymd_opt(2000, 1, 1).ok_or("no epoch")?;
    let date = epoch.checked_add_signed(chrono::Duration::days(days as i64)).ok_or("a date out of range")?;
    Ok(date.format("%Y-%m-%d").to_string())
}

fn pg_time(micros: i64) -> Result<String, ValueError> {
    if !(0..=86_400_000_000).contains(&micros) {
        return Err("a time out of range".into());
    }
    if micros == 86_400_000_000 {
        return Ok("24:00:00.000000".into());
    }
    let time = NaiveTime::from_num_seconds_from_midnight_opt((micros / 1_000_000) as u32, ((micros % 1_000_000) * 1_000) as u32)
        .ok_or("a time out of range")?;
    Ok(time.format("%H:%M:%S%.6f").to_string())
}

/// One PostgreSQL value in binary form.
fn postgres_value(type_name: &str, bytes: &[u8]) -> Result<SqlValue, ValueError> {
    Ok(match type_name {
        "BOOL" => SqlValue::Bool(fixed::<1>(bytes)?[0] != 0),
        // What a function returning nothing (pg_sleep) returns.
        "VOID" => SqlValue::Null,
        "INT2" => SqlValue::Int(i16::from_be_bytes(fixed(bytes)?) as i64),
        "INT4" => SqlValue::Int(i32::from_be_bytes(fixed(bytes)?) as i64),
        "INT8" => SqlValue::Int(i64::from_be_bytes(fixed(bytes)?)),
        "OID" => SqlValue::Int(u32::from_be_bytes(fixed(bytes)?) as i64),
        "FLOAT4" => SqlValue::Float(f32::from_be_bytes(fixed(bytes)?) as f64),
        "FLOAT8" => SqlValue::Float(f64::from_be_bytes(fixed(bytes)?)),
        "NUMERIC" => SqlValue::Decimal(numeric_text(bytes)?),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CITEXT" | "UNKNOWN" | "XML" => SqlValue::Text(utf8(bytes)?),
        "CHAR" => SqlValue::Text(utf8(bytes)?),
        "BYTEA" => SqlValue::Bytes(bytes.to_vec()),
        "JSON" => SqlValue::Json(utf8(bytes)?),
        "JSONB" => match bytes.split_first() {
            Some((1, text)) => SqlValue::Json(utf8(text)?),
            _ => return Err("a JSONB value of an unknown version".into()),
        },
        "DATE" => SqlValue::Date(pg_date(i32::from_be_bytes(fixed(bytes)?))?),
        "TIME" => SqlValue::Time(pg_time(i64::from_be_bytes(fixed(bytes)?))?),
        "TIMETZ" => {
            let raw: [u8; 12] = fixed(bytes)?;
            let micros = i64::from_be_bytes(raw[..8].try_into().map_err(|_| "timetz")?);
            // PostgreSQL stores the zone as seconds *west* of UTC.
            let east = -i32::from_be_bytes(raw[8..].try_into().map_err(|_| "timetz")?);
            let (sign, east) = if east < 0 { ('-', -east) } else { ('+', east) };
            SqlValue::Time(format!("{}{sign}{:02}:{:02}", pg_time(micros)?, east / 3600, east % 3600 / 60))
        }
        "TIMESTAMP" => SqlValue::Timestamp(pg_timestamp(i64::from_be_bytes(fixed(bytes)?))?),
        "TIMESTAMPTZ" => {
            let text = pg_timestamp(i64::from_be_bytes(fixed(bytes)?))?;
            SqlValue::TimestampTz(if text.ends_with("infinity") { text } else { text + "Z" })
        }
        "UUID" => {
            let b: [u8; 16] = fixed(bytes)?;
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            SqlValue::Uuid(format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]))
        }
        other => return Err(format!("type {other} has no mapping in the sql capability; cast it in the query (e.g. ::text)").into()),
    })
}

pub(super) fn postgres_row(row: &PgRow, budget: &mut Budget) -> Result<Vec<SqlValue>, ConnectError> {
    let mut out = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let name = column.name();
        let value = row.try_get_raw(i).map_err(|e| unsupported(name, e))?;
        if value.is_null() {
            out.push(SqlValue::Null);
            continue;
        }
        let bytes = value.as_bytes().map_err(|e| unsupported(name, e))?;
        budget.take(name, bytes.len())?;
        let decoded = match value.format() {
            PgValueFormat::Binary => postgres_value(column.type_info().name(), bytes),
            // Only results of the simple protocol come as text; the capability never uses it.
            PgValueFormat::Text => utf8(bytes).map(SqlValue::Text),
        };
        out.push(decoded.map_err(|e| unsupported(name, e))?);
    }
    Ok(out)
}

pub(super) fn mysql_row(row: &MySqlRow, budget: &mut Budget) -> Result<Vec<SqlValue>, ConnectError> {
    let mut out = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let name = column.name();
        let type_name = column.type_info().name();
        if row.try_get_raw(i).map_err(|e| unsupported(name, e))?.is_null() {
            out.push(SqlValue::Null);
            continue;
        }
        let get_err = |e: sqlx::Error| unsupported(name, e);
        let value = match type_name {
            "BOOLEAN" | "TINYINT" | "SMALLINT" | "INT" | "MEDIUMINT" | "BIGINT" | "YEAR" => {
                budget.take(name, 8)?;
                SqlValue::Int(row.try_get_unchecked::<i64, _>(i).map_err(get_err)?)
            }
            "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "INT UNSIGNED" | "MEDIUMINT UNSIGNED" | "BIGINT UNSIGNED" | "BIT" => {
                budget.take(name, 8)?;
                let n = row.try_get_unchecked::<u64, _>(i).map_err(get_err)?;
                i64::try_from(n).map_or_else(|_| SqlValue::Decimal(n.to_string()), SqlValue::Int)
            }
            "FLOAT" => {
                budget.take(name, 4)?;
                SqlValue::Float(row.try_get_unchecked::<f32, _>(i).map_err(get_err)? as f64)
            }
            "DOUBLE" => {
                budget.take(name, 8)?;
                SqlValue::Float(row.try_get_unchecked::<f64, _>(i).map_err(get_err)?)
            }
            "DATE" => {
                budget.take(name, 10)?;
                SqlValue::Date(row.try_get_unchecked::<NaiveDate, _>(i).map_err(get_err)?.format("%Y-%m-%d").to_string())
            }
            "DATETIME" => {
                budget.take(name, 26)?;
                SqlValue::Timestamp(row.try_get_unchecked::<NaiveDateTime, _>(i).map_err(get_err)?.format(TIMESTAMP_FORMAT).to_string())
            }
            // The driver's sessions run in UTC, so a TIMESTAMP comes as UTC.
            "TIMESTAMP" => {
                budget.take(name, 27)?;
                let at = row.try_get_unchecked::<NaiveDateTime, _>(i).map_err(get_err)?;
                SqlValue::TimestampTz(format!("{}Z", at.format(TIMESTAMP_FORMAT)))
            }
            "TIME" => {
                budget.take(name, 15)?;
                let time = row
                    .try_get_unchecked::<NaiveTime, _>(i)
                    .map_err(|e| unsupported(name, format!("{e} (TIME values outside 00:00..24:00 have no mapping; cast them to CHAR)")))?;
                SqlValue::Time(time.format("%H:%M:%S%.6f").to_string())
            }
            _ => {
                let bytes = row.try_get_unchecked::<&[u8], _>(i).map_err(get_err)?;
                budget.take(name, bytes.len())?;
                match type_name {
                    "DECIMAL" => SqlValue::Decimal(utf8(bytes).map_err(|e| unsupported(name, e))?),
                    "JSON" => SqlValue::Json(utf8(bytes).map_err(|e| unsupported(name, e))?),
                    // The protocol flags `_bin` collations (and so MariaDB's JSON) binary too, and
                    // says nothing of the character set: such columns are bytes, for every row alike;
                    // a query wanting text casts them (CAST(x AS CHAR)).
                    "BINARY" | "VARBINARY" | "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" | "GEOMETRY" => {
                        SqlValue::Bytes(bytes.to_vec())
                    }
                    _ => match std::str::from_utf8(bytes) {
                        Ok(text) => SqlValue::Text(text.to_string()),
                        Err(_) => SqlValue::Bytes(bytes.to_vec()),
                    },
                }
            }
        };
        out.push(value);
    }
    Ok(out)
}

pub(super) fn sqlite_row(row: &SqliteRow, budget: &mut Budget) -> Result<Vec<SqlValue>, ConnectError> {
    let mut out = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let name = column.name();
        let raw = row.try_get_raw(i).map_err(|e| unsupported(name, e))?;
        // A NULL's storage class is reported as the column's declared type: check it first.
        if raw.is_null() {
            out.push(SqlValue::Null);
            continue;
        }
        let storage = raw.type_info().name().to_string();
        let get_err = |e: sqlx::Error| unsupported(name, e);
        let value = match storage.as_str() {
            "NULL" => SqlValue::Null,
            "INTEGER" => {
                budget.take(name, 8)?;
                SqlValue::Int(row.try_get_unchecked::<i64, _>(i).map_err(get_err)?)
            }
            "REAL" => {
                budget.take(name, 8)?;
                SqlValue::Float(row.try_get_unchecked::<f64, _>(i).map_err(get_err)?)
            }
            "BLOB" => {
                let bytes = row.try_get_unchecked::<&[u8], _>(i).map_err(get_err)?;
                budget.take(name, bytes.len())?;
                SqlValue::Bytes(bytes.to_vec())
            }
            _ => {
                let text = row.try_get_unchecked::<&str, _>(i).map_err(get_err)?;
                budget.take(name, text.len())?;
                SqlValue::Text(text.to_string())
            }
        };
        out.push(value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: i16, weight: i16, sign: u16, dscale: u16, digits: &[i16]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [ndigits.to_be_bytes(), weight.to_be_bytes(), sign.to_be_bytes(), dscale.to_be_bytes()] {
            out.extend_from_slice(&v);
        }
        for d in digits {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out
    }

    #[test]
    fn numerics_decode_exactly_with_their_scale() {
        assert_eq!(numeric_text(&numeric(3, 1, 0, 3, &[1, 2345, 6780])).unwrap(), "12345.678");
        assert_eq!(numeric_text(&numeric(1, -1, 0x4000, 4, &[1])).unwrap(), "-0.0001");
        assert_eq!(numeric_text(&numeric(0, 0, 0, 2, &[])).unwrap(), "0.00");
        assert_eq!(numeric_text(&numeric(1, 2, 0, 0, &[7])).unwrap(), "700000000");
        assert_eq!(numeric_text(&numeric(1, -3, 0, 12, &[5])).unwrap(), "0.000000000005");
        assert_eq!(numeric_text(&numeric(0, 0, 0xC000, 0, &[])).unwrap(), "NaN");
        assert!(numeric_text(&numeric(2, 0, 0, 0, &[1])).is_err(), "length must match the digit count");
        assert!(numeric_text(&numeric(1, 0, 0, 0, &[10_000])).is_err());
    }

    #[test]
    fn temporal_values_keep_microseconds() {
        assert_eq!(pg_timestamp(1).unwrap(), "2000-01-01T00:00:00.000001");
        assert_eq!(pg_timestamp(-1).unwrap(), "1999-12-31T23:59:59.999999");
        assert_eq!(pg_date(-1).unwrap(), "1999-12-31");
        assert_eq!(pg_time(45_296_000_123).unwrap(), "12:34:56.000123");
        let timetz = [&45_296_000_123i64.to_be_bytes()[..], &(-7200i32).to_be_bytes()[..]].concat();
        assert_eq!(postgres_value("TIMETZ", &timetz).unwrap(), SqlValue::Time("12:34:56.000123+02:00".into()));
        assert!(postgres_value("INT4", &[0, 1]).is_err(), "a short value is an error, not a panic");
        assert!(postgres_value("INTERVAL", &[0; 16]).unwrap_err().0.contains("cast it"));
    }
}
