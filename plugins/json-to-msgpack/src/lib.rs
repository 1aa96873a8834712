//! `json-to-msgpack`: re-encode JSON values as MessagePack (maps keep their field names), keeping key,
//! headers and timestamp, and setting the header `content-type: application/msgpack`.
//!
//! Configuration:
//! - `on-invalid`: a value that is not JSON: `fail` (default: a converter that silently loses
//!   records is worse than one that stops), `drop` or `pass` (forward unchanged).
//!
//! Records without a value pass through unchanged (tombstones stay tombstones).

use serde_json::Value;
use sluice::{Config, Record, Result, Writer};

pub const CONTENT_TYPE: &str = "application/msgpack";

/// What to do with a value that is not JSON, from `on-invalid`; parsed once, at deploy time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnInvalid {
    Fail,
    Drop,
    Pass,
}

impl OnInvalid {
    pub fn from_config(config: &Config) -> Result<OnInvalid> {
        match config.get("on-invalid").unwrap_or("fail") {
            "fail" => Ok(OnInvalid::Fail),
            "drop" => Ok(OnInvalid::Drop),
            "pass" => Ok(OnInvalid::Pass),
            other => sluice::bail!("config `on-invalid` = {other:?}; expected `fail`, `drop` or `pass`"),
        }
    }
}

#[sluice::transform(init = OnInvalid::from_config)]
pub fn run(on_invalid: &OnInvalid, record: Record, out: &mut Writer) -> Result<()> {
    if record.value().is_none() {
        out.write(record);
        return Ok(());
    }
    let value: Value = match record.value_json() {
        Ok(value) => value,
        Err(e) => {
            return match on_invalid {
                OnInvalid::Drop => Ok(()),
                OnInvalid::Pass => {
                    out.write(record);
                    Ok(())
                }
                OnInvalid::Fail => Err(e),
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

    fn harness() -> Harness<super::OnInvalid> {
        Harness::stateful(super::OnInvalid::from_config, super::run)
    }

    #[test]
    fn converts_json_to_msgpack_keeping_key_and_timestamp() {
        let input = json!({"id": 1, "items": [{"sku": "a", "qty": 2}], "paid": true, "note": null});
        let record = Record::from_json(&input).unwrap().with_key("k").with_timestamp_ms(99).with_header("content-type", "application/json");
        let written = harness().process(vec![record]).unwrap();
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
        assert!(harness().process(batch.clone()).is_err());
        assert!(harness().config("on-invalid", "drop").process(batch.clone()).unwrap().is_empty());
        let passed = harness().config("on-invalid", "pass").process(batch).unwrap();
        assert_eq!(passed[0].record.value.as_deref(), Some(&b"{oops"[..]));
    }

    #[test]
    fn an_unknown_on_invalid_is_refused_at_init() {
        let error = harness().config("on-invalid", "ignore").process(vec![]).unwrap_err();
        assert!(error.message().contains("expected `fail`, `drop` or `pass`"), "{error}");
    }

    #[test]
    fn tombstones_pass_through() {
        let written = harness().process(vec![Record::default().with_key("k")]).unwrap();
        assert_eq!(written[0].record.value, None);
    }
}
