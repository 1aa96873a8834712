//! The `mirror-policy` world: the builtin default and identity policies and the `dr-filter` example,
//! built for wasm32-wasip2 and run through `PolicyModule` — world detection, `init` with the alias and
//! config (and refusing bad config), naming, group selection, and `filter`'s keep / drop / replace.

mod common;

use common::{engine, guest, instance_config};
use sluice_wasm::{Header, InputRecord, PluginError, PolicyModule, RecordAction, World};

fn policy(name: &str) -> PolicyModule {
    engine().compile(&guest(name)).unwrap().mirror_policy().unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn names(topics: &[&str]) -> Vec<String> {
    topics.iter().map(|t| t.to_string()).collect()
}

fn record(key: &str, headers: &[(&str, &str)], offset: i64) -> InputRecord {
    InputRecord {
        key: Some(key.as_bytes().to_vec()),
        value: Some(b"v".to_vec()),
        headers: headers.iter().map(|(k, v)| Header { key: k.to_string(), value: v.as_bytes().to_vec() }).collect(),
        timestamp_ms: 1_700_000_000_000,
        partition: 0,
        offset,
    }
}

#[test]
fn policies_are_their_own_world() {
    let engine = engine();
    assert_eq!(engine.inspect(&guest("default-replication-policy")).unwrap().worlds(), [World::MirrorPolicy]);
    assert_eq!(engine.inspect(&guest("dr-filter")).unwrap().worlds(), [World::MirrorPolicy]);
    let error = engine.compile(&guest("pii-mask")).unwrap().mirror_policy().err().expect("a transform is no policy");
    assert!(error.to_string().contains("sluice:plugin/replication-policy@0.1.0"), "{error}");
    assert!(engine.load_transform(&guest("identity-replication-policy")).is_err());
}

#[test]
fn the_builtin_policies_name_copies_as_mirrormaker_does() {
    let (config, _) = instance_config(&[]);
    let mut default = policy("default-replication-policy").instantiate(config, "east").unwrap();
    assert!(!default.filters_records(), "naming only: no call per record");
    assert_eq!(
        default.target_topics(&names(&["orders", "payments"])).unwrap(),
        [Ok(Some("east.orders".to_string())), Ok(Some("east.payments".to_string()))]
    );
    assert_eq!(default.select_groups(&names(&["a", "b"])).unwrap(), [true, true]);
    let (config, _) = instance_config(&[("replication.policy.separator", "_")]);
    let mut underscore = policy("default-replication-policy").instantiate(config, "east").unwrap();
    assert_eq!(underscore.target_topics(&names(&["orders"])).unwrap(), [Ok(Some("east_orders".to_string()))]);
    let (config, _) = instance_config(&[]);
    let mut identity = policy("identity-replication-policy").instantiate(config, "east").unwrap();
    assert_eq!(identity.target_topics(&names(&["orders"])).unwrap(), [Ok(Some("orders".to_string()))]);
    // A name Kafka refuses, or one of the broker's own, fails that topic alone.
    let (config, _) = instance_config(&[]);
    let mut long = policy("default-replication-policy").instantiate(config, &"a".repeat(245)).unwrap();
    let answers = long.target_topics(&names(&["orders", "o"])).unwrap();
    assert!(answers[0].as_ref().is_err_and(|why| why.contains("1..=249")), "{answers:?}");
    assert_eq!(answers[1], Ok(Some(format!("{}.o", "a".repeat(245)))));
    let (config, _) = instance_config(&[("target.prefix", "__")]);
    let mut internal = policy("dr-filter").instantiate(config, "east").unwrap();
    assert!(internal.target_topics(&names(&["orders"])).unwrap()[0].as_ref().is_err_and(|why| why.contains("'__'")));
    // Bad config: `init` refuses it with the policy's own message.
    let (config, _) = instance_config(&[("separator", "-")]);
    match policy("default-replication-policy").instantiate(config, "east") {
        Err(PluginError::InitFailed(message)) => assert!(message.contains("unknown policy_config key"), "{message}"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a typo in the config must be refused"),
    }
    let (config, _) = instance_config(&[("replication.policy.separator", "/")]);
    assert!(matches!(policy("default-replication-policy").instantiate(config, "east"), Err(PluginError::InitFailed(_))));
}

#[test]
fn a_filtering_policy_keeps_drops_and_rewrites_records() {
    let (config, _) =
        instance_config(&[("skip.topics", "audit"), ("drop.key.prefix", "internal-"), ("strip.header", "trace"), ("target.prefix", "dr-")]);
    let mut dr = policy("dr-filter").instantiate(config, "east").unwrap();
    assert!(dr.filters_records());
    assert_eq!(dr.target_topics(&names(&["orders", "audit"])).unwrap(), [Ok(Some("dr-orders".to_string())), Ok(None)]);
    assert_eq!(dr.select_groups(&names(&["billing", "test-x"])).unwrap(), [true, false]);
    let batch = [record("k1", &[], 0), record("internal-2", &[], 1), record("k3", &[("trace", "t"), ("keep", "y")], 2)];
    let actions = dr.filter("orders", &batch).unwrap();
    assert_eq!(actions.len(), 3);
    assert_eq!(actions[0], RecordAction::Keep);
    assert_eq!(actions[1], RecordAction::Drop);
    let RecordAction::Replace(rewritten) = &actions[2] else { panic!("{:?}", actions[2]) };
    assert_eq!(rewritten.headers, [Header { key: "keep".into(), value: b"y".to_vec() }]);
    assert_eq!(rewritten.key.as_deref(), Some(&b"k3"[..]));
    // A batch over the limit is refused before the guest sees it.
    let huge: Vec<InputRecord> = (0..sluice_wasm::INPUT_RECORDS_PER_CALL_MAX as i64 + 1).map(|i| record("k", &[], i)).collect();
    assert!(matches!(dr.filter("orders", &huge), Err(PluginError::InvalidRequest(_))));
    assert!(dr.poisoned().is_none());
}
