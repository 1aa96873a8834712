//! The example and first-party transforms, compiled to components and run through the host: the same
//! behaviour their native unit tests check, now across the Wasm boundary.

mod common;

use common::{engine, input, instance_config, load, out};
use sluice_wasm::{InputBatch, InputRecord, Output, OutputRecord};

#[test]
fn identity_copies_every_field_one_batch_per_call() {
    let engine = engine();
    let module = load(&engine, "identity");
    let (config, _) = instance_config(&[]);
    let mut instance = module.instantiate(config, out()).unwrap();
    let batch: Vec<InputRecord> = (0..1000)
        .map(|i| InputRecord {
            key: Some(format!("k{i}").into_bytes()),
            value: if i % 10 == 0 { None } else { Some(vec![i as u8; 100]) },
            headers: vec![sluice_wasm::Header { key: "h".into(), value: vec![1, 2] }],
            timestamp_ms: i,
            partition: 3,
            offset: 500 + i,
        })
        .collect();
    let output = instance.process(&batch).unwrap();
    assert_eq!(output.len(), batch.len());
    for (inp, out) in batch.iter().zip(&output) {
        assert_eq!(
            out,
            &OutputRecord {
                key: inp.key.clone(),
                value: inp.value.clone(),
                headers: inp.headers.clone(),
                timestamp_ms: inp.timestamp_ms,
                output: 0
            }
        );
    }
    // Many calls on one instance: the guest frees what each batch allocated.
    for _ in 0..200 {
        assert_eq!(instance.process(&batch).unwrap().len(), 1000);
    }
    assert!(instance.process(&[]).unwrap().is_empty());
}

#[test]
fn json_filter_filters_and_refuses_bad_config_at_init() {
    let engine = engine();
    let module = load(&engine, "json-filter");
    let (config, _) = instance_config(&[("field", "status"), ("equals", "shipped")]);
    let mut instance = module.instantiate(config, out()).unwrap();
    let batch = [input(br#"{"status":"shipped"}"#, 0), input(br#"{"status":"pending"}"#, 1), input(b"garbage", 2)];
    let output = instance.process(&batch).unwrap();
    assert_eq!(output.len(), 1);
    assert_eq!(output[0].value.as_deref(), Some(&br#"{"status":"shipped"}"#[..]));

    let (config, _) = instance_config(&[]);
    let error = module.instantiate(config, out()).err().expect("init must refuse a missing field");
    assert_eq!(error.to_string(), "init failed: init: missing required config key `field`");
}

#[test]
fn pii_mask_redacts_across_the_boundary() {
    let engine = engine();
    let (config, logs) = instance_config(&[("fields", "email")]);
    let mut instance = load(&engine, "pii-mask").instantiate(config, out()).unwrap();
    let output = instance.process(&[input(br#"{"user":{"email":"a@b.c"},"n":1}"#, 0), input(b"email=x", 1)]).unwrap();
    assert_eq!(output.len(), 1);
    let value: serde_json::Value = serde_json::from_slice(output[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(value, serde_json::json!({"user": {"email": "***"}, "n": 1}));
    assert!(logs.lines().iter().any(|(_, line)| line.contains("offset 1: value is not JSON")), "{:?}", logs.lines());
}

#[test]
fn router_fans_out_by_output_index() {
    let engine = engine();
    let (config, _) = instance_config(&[("field", "region"), ("routes", "eu:orders-eu,us:orders-us")]);
    let outputs = vec!["orders-other".into(), "orders-eu".into(), "orders-us".into()];
    let mut instance = load(&engine, "router").instantiate(config, outputs).unwrap();
    let output =
        instance.process(&[input(br#"{"region":"us"}"#, 0), input(br#"{"region":"eu"}"#, 1), input(br#"{"region":"mars"}"#, 2)]).unwrap();
    let outputs: Vec<u32> = output.iter().map(|r| r.output).collect();
    assert_eq!(outputs, [2, 1, 0]);
}

#[test]
fn json_to_msgpack_converts_and_a_guest_error_names_the_record() {
    let engine = engine();
    let (config, _) = instance_config(&[]);
    let mut instance = load(&engine, "json-to-msgpack").instantiate(config, out()).unwrap();
    let output = instance.process(&[input(br#"{"a":[1,2,3]}"#, 0)]).unwrap();
    assert_eq!(output[0].value.as_deref(), Some(&[0x81, 0xa1, b'a', 0x93, 1, 2, 3][..]));
    assert_eq!(output[0].headers[0].key, "content-type");

    let error = instance.process(&[input(b"{}", 5), input(b"{not json", 6)]).unwrap_err();
    // The SDK reports which record of the batch failed: the second.
    assert!(matches!(error, sluice_wasm::PluginError::GuestError { record_index: Some(1), .. }), "{error:?}");
    assert!(error.to_string().contains("record at partition 0 offset 6"), "{error}");
    // A guest's own error does not poison the instance.
    assert!(instance.poisoned().is_none());
    assert_eq!(instance.process(&[input(b"1", 7)]).unwrap().len(), 1);
}

#[test]
fn components_built_with_the_first_sdk_still_load_and_run() {
    // `fixtures/prebuilt`: identity and json-filter built with the SDK of the first release, before
    // stateful `init` and `host.report-failed-record` (they do not import it).
    let dir = common::workspace_root().join("platform/wasm/fixtures/prebuilt");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let engine = engine();

    let identity = engine.load_transform(&read("identity-first-sdk.wasm")).unwrap();
    let (config, _) = instance_config(&[]);
    let output = identity.instantiate(config, out()).unwrap().process(&[input(b"a", 0), input(b"b", 1)]).unwrap();
    assert_eq!(output.iter().map(|r| r.value.clone().unwrap()).collect::<Vec<_>>(), [b"a".to_vec(), b"b".to_vec()]);

    let filter = engine.load_transform(&read("json-filter-first-sdk.wasm")).unwrap();
    assert_eq!(engine.inspect(&read("json-filter-first-sdk.wasm")).unwrap().worlds(), [sluice_wasm::World::Transform]);
    let (config, _) = instance_config(&[("field", "status"), ("equals", "shipped"), ("on-invalid", "fail")]);
    let mut instance = filter.instantiate(config, out()).unwrap();
    let output = instance.process(&[input(br#"{"status":"shipped"}"#, 0), input(br#"{"status":"new"}"#, 1)]).unwrap();
    assert_eq!(output.len(), 1);
    // An old guest's error has no record index: the runtime has to isolate the record itself.
    let error = instance.process(&[input(b"{}", 2), input(b"not json", 3)]).unwrap_err();
    assert!(matches!(error, sluice_wasm::PluginError::GuestError { record_index: None, .. }), "{error:?}");
    assert!(error.to_string().starts_with("transform error: record at partition 0 offset 3"), "{error}");
}

/// `records` (all of one partition) as the runtime hands them to `process_batch`.
fn encoded(records: &[InputRecord]) -> InputBatch {
    let mut batch = InputBatch::new(records.first().map_or(0, |r| r.partition));
    for record in records {
        batch.push_record(record);
    }
    batch
}

fn outputs(records: Vec<OutputRecord>) -> Vec<Output> {
    records.into_iter().map(Output::from).collect()
}

#[test]
fn sdk_transforms_take_the_batch_as_one_buffer_and_answer_as_process_does() {
    let engine = engine();
    let mixed: Vec<InputRecord> = (0..300)
        .map(|i| InputRecord {
            key: (i % 7 != 0).then(|| format!("k{i}").into_bytes()),
            value: match i % 5 {
                0 => None,
                1 => Some(Vec::new()),
                2 => Some(format!(r#"{{"status":"shipped","region":"eu","email":"a{i}@b.c"}}"#).into_bytes()),
                3 => Some(br#"{"status":"new","region":"us"}"#.to_vec()),
                _ => Some(vec![0xff; i as usize]),
            },
            headers: (0..i % 3).map(|h| sluice_wasm::Header { key: format!("h{h}"), value: vec![h as u8; h as usize] }).collect(),
            timestamp_ms: 1_000 + i,
            partition: 2,
            offset: 40 + i,
        })
        .collect();
    let cases: [(&str, &[(&str, &str)], Vec<String>); 4] = [
        ("identity", &[], out()),
        ("json-filter", &[("field", "status"), ("equals", "shipped")], out()),
        ("router", &[("field", "region"), ("routes", "eu:eu,us:us")], vec!["other".into(), "eu".into(), "us".into()]),
        ("pii-mask", &[("fields", "email")], out()),
    ];
    for (name, config, topics) in cases {
        let module = load(&engine, name);
        assert!(module.batch_abi(), "{name} is built with the SDK, which exports batch-transformer");
        let (config, _) = instance_config(config);
        let mut instance = module.instantiate(config, topics).unwrap();
        assert!(instance.batch_abi());
        let batch = encoded(&mixed);
        let expected = outputs(instance.process(&mixed).unwrap());
        assert!(!expected.is_empty(), "{name}");
        assert_eq!(instance.process_batch(batch.all()).unwrap(), expected, "{name}");
        // Any range of the batch on its own, as the error policy's isolation sends them.
        for range in [0..0, 0..1, 5..17, 299..300] {
            let expected = outputs(instance.process(&mixed[range.clone()]).unwrap());
            assert_eq!(instance.process_batch(batch.slice(range.clone())).unwrap(), expected, "{name} {range:?}");
        }
    }
    // Many calls on one instance: memory does not grow with calls.
    let (config, _) = instance_config(&[]);
    let mut identity = load(&engine, "identity").instantiate(config, out()).unwrap();
    let batch = encoded(&mixed);
    identity.process_batch(batch.all()).unwrap();
    let memory = identity.memory_bytes();
    for _ in 0..300 {
        assert_eq!(identity.process_batch(batch.all()).unwrap().len(), mixed.len());
    }
    assert_eq!(identity.memory_bytes(), memory);
}

#[test]
fn a_transform_without_the_batch_export_gets_records_from_process_batch() {
    let dir = common::workspace_root().join("platform/wasm/fixtures/prebuilt");
    let engine = engine();
    let filter = engine.load_transform(&std::fs::read(dir.join("json-filter-first-sdk.wasm")).unwrap()).unwrap();
    assert!(!filter.batch_abi());
    let (config, _) = instance_config(&[("field", "status"), ("equals", "shipped"), ("on-invalid", "fail")]);
    let mut instance = filter.instantiate(config, out()).unwrap();
    let records = [input(br#"{"status":"shipped"}"#, 0), input(br#"{"status":"new"}"#, 1), input(br#"{"status":"shipped"}"#, 2)];
    let output = instance.process_batch(encoded(&records).all()).unwrap();
    assert_eq!(output, outputs(instance.process(&records).unwrap()));
    assert_eq!(output.len(), 2);
    let error = instance.process_batch(encoded(&[input(b"{}", 3), input(b"not json", 4)]).all()).unwrap_err();
    assert!(matches!(error, sluice_wasm::PluginError::GuestError { record_index: None, .. }), "{error:?}");
}
