//! The identity transform: every input record is written, unchanged, to the default output topic.
//! The smallest possible transform, and the tutorial in `sdk/README.md`.

use sluice::{Record, Result, Writer};

#[sluice::transform]
pub fn run(record: Record, out: &mut Writer) -> Result<()> {
    out.write(record);
    Ok(())
}

#[cfg(test)]
mod tests {
    use sluice::testing::Harness;
    use sluice::{OutputRecord, Record};

    #[test]
    fn copies_key_value_headers_and_timestamp() {
        let input = Record::new("hello").with_key("k").with_header("trace", "1").with_timestamp_ms(1_700_000_000_000);
        let written = Harness::new(super::run).process(vec![input.clone()]).unwrap();
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].topic, "output");
        assert_eq!(written[0].record, OutputRecord::from(input));
    }

    #[test]
    fn keeps_order_and_empty_values() {
        let batch: Vec<Record> = (0..100).map(|i| Record::new(format!("v{i}"))).chain([Record::default()]).collect();
        let written = Harness::new(super::run).process(batch).unwrap();
        assert_eq!(written.len(), 101);
        assert_eq!(written[42].record.value.as_deref(), Some(&b"v42"[..]));
        assert_eq!(written[100].record.value, None);
    }
}
