//! Tiered compilation: an uncached component runs on Winch's code at once and moves to Cranelift's
//! when the tier-up thread has compiled it; the baseline code is held to every bound the optimized
//! code is (CPU, memory, stack), and both tiers compute the same output.

mod common;

use common::{guest, input, instance_config, out};
use sluice_wasm::{Compilers, Engine, EngineConfig, Limits, PluginError, Tier};

fn engine(compilers: Compilers) -> Engine {
    Engine::new(EngineConfig { compilers, ..EngineConfig::default() }).unwrap()
}

#[test]
fn a_cold_component_starts_on_baseline_code_and_instances_move_to_optimized_code() {
    // `fixture-bulky`: Cranelift needs a second or more for its 2 MB of code, so the instance made
    // right after the load is certain to run Winch's code.
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig { cache_dir: Some(dir.path().to_owned()), ..EngineConfig::default() };
    let engine = Engine::new(config.clone()).unwrap();
    let module = engine.load_transform(&guest("fixture-bulky")).unwrap();
    let (cfg, _) = instance_config(&[]);
    let mut early = module.instantiate(cfg.clone(), out()).unwrap();
    assert_eq!(early.tier(), Tier::Baseline);
    assert!(!early.superseded());
    let batch: Vec<_> = (0..64).map(|offset| input(format!("value {offset}").as_bytes(), offset)).collect();
    let early_output = early.process(&batch).unwrap();
    assert_eq!(early_output.len(), batch.len());

    module.component().wait_optimized();
    assert_eq!(module.tier(), Tier::Optimized);
    assert!(early.superseded(), "a baseline instance is superseded once optimized code exists");
    let mut late = module.instantiate(cfg, out()).unwrap();
    assert_eq!(late.tier(), Tier::Optimized);
    assert!(!late.superseded());
    assert_eq!(late.process(&batch).unwrap(), early_output, "both tiers compute the same output (a hash per record)");

    // The optimized code was cached: a restart starts on it.
    let restarted = Engine::new(config).unwrap().load_transform(&guest("fixture-bulky")).unwrap();
    assert!(restarted.cache_hit());
    assert_eq!(restarted.tier(), Tier::Optimized);
}

#[test]
fn baseline_only_and_optimized_only_engines_stay_on_their_tier() {
    for (compilers, tier) in [(Compilers::Baseline, Tier::Baseline), (Compilers::Optimized, Tier::Optimized)] {
        let module = engine(compilers).load_transform(&guest("identity")).unwrap();
        module.component().wait_optimized();
        assert_eq!(module.tier(), tier, "{compilers:?}");
        let (cfg, _) = instance_config(&[]);
        let mut instance = module.instantiate(cfg, out()).unwrap();
        assert_eq!(instance.tier(), tier);
        assert!(!instance.superseded());
        assert_eq!(instance.process(&[input(b"v", 0)]).unwrap().len(), 1);
    }
}

fn hostile_on_baseline(mode: &str) -> Result<Vec<sluice_wasm::OutputRecord>, PluginError> {
    let module = engine(Compilers::Baseline).load_transform(&guest("fixture-hostile")).unwrap();
    let (mut cfg, _) = instance_config(&[("mode", mode)]);
    cfg.limits = Limits { cpu_ms_per_call: 200, memory_bytes: 32 << 20 };
    let mut instance = module.instantiate(cfg, out()).unwrap();
    assert_eq!(instance.tier(), Tier::Baseline);
    let result = instance.process(&[input(b"x", 0)]);
    if result.is_err() && !matches!(result, Err(PluginError::GuestError { .. })) {
        assert!(matches!(instance.process(&[input(b"x", 1)]), Err(PluginError::Poisoned(_))), "{mode}: poisoned after {result:?}");
    }
    result
}

#[test]
fn baseline_code_is_interrupted_at_the_cpu_bound() {
    assert!(matches!(hostile_on_baseline("loop"), Err(PluginError::CpuTimeout { limit_ms: 200 })));
}

#[test]
fn baseline_code_hits_the_memory_cap() {
    assert!(matches!(hostile_on_baseline("memory-bomb"), Err(PluginError::OutOfMemory { .. })));
}

#[test]
fn baseline_code_traps_on_stack_overflow_and_panics() {
    for mode in ["stack-overflow", "panic"] {
        assert!(matches!(hostile_on_baseline(mode), Err(PluginError::Trap(_))), "{mode}");
    }
}
