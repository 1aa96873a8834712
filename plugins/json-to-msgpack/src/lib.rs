//! `json-to-msgpack`: re-encode JSON values as MessagePack (maps keep their field names), keeping key,
//! headers and timestamp, and setting the header `content-type: application/msgpack`.
//!
//! Configuration:
//! - `on-invalid`: a value that is not JSON: `fail` (default: a converter that silently loses
//!   records is worse than one that stops), `drop` or `pass` (forward unchanged).
//!
//! Records without a value pass through unchanged (tombstones stay tombstones).

use serde_json::Value;
use sluice::{Record, Result, Writer};

pub const CONTENT_TYPE: &str = "application/msgpack";

#[sluice::transform]
pub fn run(record: Record, out: &mut Writer) -> Result<()> {
    if record.value().is_none() {
        out.write(record);
        return Ok(());
    }
    let value: Value = match record.value_json() {
        Ok(value) => value,
        Err(e) => {
            return match sluice::config().get("on-invalid").unwrap_or("fail") {
                "drop" => Ok(()),
                "pass" => {
                    out.write(record);
                    Ok(())
                }
                _ => Err(e),
            };
        }
    };
    let mut output = record.into_output().with_msgpack_value(&value)?;
    output.headers.retain(|h| h.key != "content-type");
    out.write(output.with_header("content-type", CONTENT_TYPE));
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use sluice::Record;
    use sluice::testing::Harness;

    #[test]
    fn converts_json_to_msgpack_keeping_key_and_timestamp() {
        let input = json!({"id": 1, "items": [{"sku": "a", "qty": 2}], "paid": true, "note": null});
        let record = Record::from_json(&input).unwrap().with_key("k").with_timestamp_ms(99).with_header("content-type", "application/json");
        let written = Harness::new(super::run).process(vec![record]).unwrap();
        let out = &written[0].record;
        assert_eq!(out.value_msgpack::<Value>().unwrap(), input);
        assert_eq!(out.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(out.timestamp_ms, 99);
        let content_types: Vec<&[u8]> = out.headers.iter().filter(|h| h.key == "content-type").map(|h| h.value.as_slice()).collect();
        assert_eq!(content_types, [super::CONTENT_TYPE.as_bytes()]);
        assert!(out.value.as_ref().unwrap().len() < serde_json::to_vec(&input).unwrap().len());
    }

    #[test]
    fn invalid_json_fails_by_default_or_is_dropped_or_passed() {
        let batch = vec![Record::new("{oops")];
        assert!(Harness::new(super::run).process(batch.clone()).is_err());
        assert!(Harness::new(super::run).config("on-invalid", "drop").process(batch.clone()).unwrap().is_empty());
        let passed = Harness::new(super::run).config("on-invalid", "pass").process(batch).unwrap();
        assert_eq!(passed[0].record.value.as_deref(), Some(&b"{oops"[..]));
    }

    #[test]
    fn tombstones_pass_through() {
        let written = Harness::new(super::run).process(vec![Record::default().with_key("k")]).unwrap();
        assert_eq!(written[0].record.value, None);
    }
}
