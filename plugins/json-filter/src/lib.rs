//! `json-filter`: keep the records whose JSON value has a field equal to a configured value (or, with
//! no `equals`, has the field at all).
//!
//! Configuration:
//! - `field` (required): a dotted path into the value, e.g. `status` or `customer.country`.
//! - `equals`: a JSON literal (`"shipped"`, `42`, `true`) or, if it does not parse as JSON, a string.
//! - `negate`: `true` keeps the records that do NOT match.
//! - `on-invalid`: what to do with a value that is not JSON: `drop` (default) or `fail`.

use serde_json::Value;
use sluice::{Config, Record, Result, Writer};

/// The parsed configuration: built once at deploy time, used for every record.
#[derive(Clone, Debug)]
pub struct Filter {
    path: Vec<String>,
    equals: Option<Value>,
    negate: bool,
    fail_on_invalid: bool,
}

impl Filter {
    pub fn from_config(config: &Config) -> Result<Filter> {
        let field = config.require("field")?;
        let path: Vec<String> = field.split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            sluice::bail!("config `field` = {field:?} is not a dotted path like `customer.country`");
        }
        let equals = config.get("equals").map(|raw| serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned())));
        let negate = config.parse::<bool>("negate")?.unwrap_or(false);
        let fail_on_invalid = match config.get("on-invalid").unwrap_or("drop") {
            "drop" => false,
            "fail" => true,
            other => sluice::bail!("config `on-invalid` = {other:?}; expected `drop` or `fail`"),
        };
        Ok(Filter { path, equals, negate, fail_on_invalid })
    }

    /// Whether a parsed value passes the filter.
    pub fn matches(&self, value: &Value) -> bool {
        self.decide(self.path.iter().try_fold(value, |v, key| v.get(key)))
    }

    /// Whether the field found (or not) passes the filter.
    fn decide(&self, found: Option<&Value>) -> bool {
        let hit = match (&self.equals, found) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(expected), Some(actual)) => expected == actual,
        };
        hit != self.negate
    }

    /// Whether a record passes; `Err` only for invalid JSON with `on-invalid=fail`. The whole value
    /// is parsed (invalid JSON is still caught) but only the tested field is built.
    pub fn keep(&self, record: &Record) -> Result<bool> {
        match record.value_json_at(&self.path) {
            Ok(found) => Ok(self.decide(found.as_ref())),
            Err(e) if self.fail_on_invalid => Err(e),
            Err(_) => Ok(false),
        }
    }
}

/// Keeps the records that pass the filter built from the configuration at deploy time.
#[sluice::transform(init = Filter::from_config)]
pub fn run(filter: &Filter, record: Record, out: &mut Writer) -> Result<()> {
    if filter.keep(&record)? {
        out.write(record);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice::Record;
    use sluice::testing::Harness;

    fn harness() -> Harness<super::Filter> {
        Harness::stateful(super::Filter::from_config, super::run)
    }

    fn orders() -> Vec<Record> {
        [json!({"id": 1, "status": "shipped"}), json!({"id": 2, "status": "pending"}), json!({"id": 3})]
            .iter()
            .map(|v| Record::from_json(v).unwrap())
            .collect()
    }

    fn ids(written: &[sluice::testing::Written]) -> Vec<i64> {
        written.iter().map(|w| w.record.value_json::<serde_json::Value>().unwrap()["id"].as_i64().unwrap()).collect()
    }

    #[test]
    fn keeps_records_whose_field_equals_the_value() {
        let written = harness().config("field", "status").config("equals", "shipped").process(orders()).unwrap();
        assert_eq!(ids(&written), [1]);
    }

    #[test]
    fn negate_and_exists() {
        let written = harness().config("field", "status").config("equals", "shipped").config("negate", "true").process(orders()).unwrap();
        assert_eq!(ids(&written), [2, 3]);
        let written = harness().config("field", "status").process(orders()).unwrap();
        assert_eq!(ids(&written), [1, 2]);
    }

    #[test]
    fn nested_fields_and_typed_literals() {
        let batch = vec![Record::from_json(&json!({"c": {"n": 42}})).unwrap(), Record::from_json(&json!({"c": {"n": "42"}})).unwrap()];
        let written = harness().config("field", "c.n").config("equals", "42").process(batch).unwrap();
        assert_eq!(written.len(), 1, "42 the number, not \"42\" the string");
    }

    #[test]
    fn invalid_json_is_dropped_or_fails() {
        let batch = vec![Record::new("not json"), Record::from_json(&json!({"status": "shipped", "id": 9})).unwrap()];
        let written = harness().config("field", "status").process(batch.clone()).unwrap();
        assert_eq!(ids(&written), [9]);
        let error = harness().config("field", "status").config("on-invalid", "fail").process(batch).unwrap_err();
        assert!(error.message().contains("offset 0"), "{error}");
    }

    #[test]
    fn bad_config_is_refused_at_init() {
        let error = harness().process(vec![]).unwrap_err();
        assert!(error.message().contains("missing required config key `field`"), "{error}");
        let error = harness().config("field", "a..b").process(vec![]).unwrap_err();
        assert!(error.message().contains("dotted path"), "{error}");
    }
}
