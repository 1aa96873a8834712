//! `pii-mask`: redact named fields of JSON values before they leave the input topic.
//!
//! Configuration:
//! - `fields` (required): comma-separated field names, e.g. `email,phone,ssn`. A name matches that key
//!   at any depth, inside nested objects and arrays.
//! - `replacement`: what a redacted value becomes (a string); default `"***"`.
//! - `on-invalid`: a value that is not JSON: `drop` (default — never pass through what could not be
//!   checked) or `fail`.

use std::collections::BTreeSet;

use serde_json::Value;
use sluice::{Config, Record, Result, Writer};

#[derive(Clone, Debug)]
pub struct Masker {
    fields: BTreeSet<String>,
    replacement: Value,
    fail_on_invalid: bool,
}

impl Masker {
    pub fn from_config(config: &Config) -> Result<Masker> {
        let fields: BTreeSet<String> = config.list("fields").into_iter().map(str::to_owned).collect();
        if fields.is_empty() {
            sluice::bail!("config `fields` must name at least one field, e.g. `email,phone`");
        }
        let replacement = Value::String(config.get("replacement").unwrap_or("***").to_owned());
        let fail_on_invalid = match config.get("on-invalid").unwrap_or("drop") {
            "drop" => false,
            "fail" => true,
            other => sluice::bail!("config `on-invalid` = {other:?}; expected `drop` or `fail`"),
        };
        Ok(Masker { fields, replacement, fail_on_invalid })
    }

    /// Redact in place; returns how many values were replaced.
    pub fn mask(&self, value: &mut Value) -> usize {
        match value {
            Value::Object(map) => map
                .iter_mut()
                .map(|(key, child)| {
                    if self.fields.contains(key) {
                        *child = self.replacement.clone();
                        1
                    } else {
                        self.mask(child)
                    }
                })
                .sum(),
            Value::Array(items) => items.iter_mut().map(|item| self.mask(item)).sum(),
            _ => 0,
        }
    }
}

/// Redacts the configured fields; the masker is built once, at deploy time.
#[sluice::transform(init = Masker::from_config)]
pub fn run(masker: &Masker, record: Record, out: &mut Writer) -> Result<()> {
    let mut value: Value = match record.value_json() {
        Ok(value) => value,
        Err(e) if masker.fail_on_invalid => return Err(e),
        Err(_) => {
            sluice::log::warn!("dropped record at offset {}: value is not JSON", record.offset());
            return Ok(());
        }
    };
    if masker.mask(&mut value) == 0 {
        out.write(record);
    } else {
        out.write(record.into_output().with_json_value(&value)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use sluice::Record;
    use sluice::testing::Harness;

    fn mask(config: &[(&str, &str)], value: Value) -> Value {
        let mut harness = Harness::stateful(super::Masker::from_config, super::run);
        for (k, v) in config {
            harness = harness.config(k, v);
        }
        let written = harness.process(vec![Record::from_json(&value).unwrap().with_key("k")]).unwrap();
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].record.key.as_deref(), Some(&b"k"[..]), "the key is kept");
        written[0].record.value_json().unwrap()
    }

    #[test]
    fn masks_named_fields_at_any_depth() {
        let masked = mask(
            &[("fields", "email, phone")],
            json!({"id": 1, "email": "a@b.c", "contacts": [{"phone": "555", "name": "x"}], "nested": {"email": null}}),
        );
        assert_eq!(masked, json!({"id": 1, "email": "***", "contacts": [{"phone": "***", "name": "x"}], "nested": {"email": "***"}}));
    }

    #[test]
    fn custom_replacement_and_untouched_values() {
        assert_eq!(mask(&[("fields", "ssn"), ("replacement", "[redacted]")], json!({"ssn": 1})), json!({"ssn": "[redacted]"}));
        assert_eq!(mask(&[("fields", "ssn")], json!({"id": 7})), json!({"id": 7}));
    }

    #[test]
    fn never_passes_unparsed_values_through() {
        let harness = Harness::stateful(super::Masker::from_config, super::run).config("fields", "email");
        let written = harness.process(vec![Record::new("email=a@b.c")]).unwrap();
        assert!(written.is_empty());
        assert!(harness.logs().iter().any(|(_, line)| line.contains("not JSON")));
        let failing = Harness::stateful(super::Masker::from_config, super::run).config("fields", "email").config("on-invalid", "fail");
        assert!(failing.process(vec![Record::new("email=a@b.c")]).is_err());
    }

    #[test]
    fn requires_fields() {
        let error = Harness::stateful(super::Masker::from_config, super::run).process(vec![]).unwrap_err();
        assert!(error.message().contains("`fields`"), "{error}");
    }
}
