//! The compiled-module cache: a second engine on the same directory (a broker restart) loads without
//! compiling, and a damaged cache file costs a recompile, never an error.

mod common;

use common::{guest, input, instance_config, out};
use sluice_wasm::{Engine, EngineConfig};

#[test]
fn a_restart_loads_the_compiled_module_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = guest("json-filter");
    let config = EngineConfig { cache_dir: Some(dir.path().to_owned()), ..EngineConfig::default() };

    let first = Engine::new(config.clone()).unwrap().load_transform(&bytes).unwrap();
    assert!(!first.cache_hit());
    // Cranelift's code is written to the cache by the tier-up thread.
    first.component().wait_optimized();
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].starts_with(first.digest()) && files[0].ends_with(".cwasm"), "{files:?}");

    let restarted = Engine::new(config.clone()).unwrap();
    let second = restarted.load_transform(&bytes).unwrap();
    assert!(second.cache_hit());
    eprintln!("compile + check: {:?}; cached load + check: {:?}", first.load_time(), second.load_time());
    assert!(second.load_time() < first.load_time(), "cached {:?} vs compiled {:?}", second.load_time(), first.load_time());

    let (instance_config, _) = instance_config(&[("field", "a")]);
    let mut instance = second.instantiate(instance_config, out()).unwrap();
    assert_eq!(instance.process(&[input(br#"{"a":1}"#, 0), input(b"{}", 1)]).unwrap().len(), 1);

    // A damaged file is discarded and the module compiled again.
    std::fs::write(dir.path().join(&files[0]), b"damaged").unwrap();
    let third = Engine::new(config).unwrap().load_transform(&bytes).unwrap();
    assert!(!third.cache_hit());
    third.component().wait_optimized();
    assert!(std::fs::read(dir.path().join(&files[0])).unwrap().len() > 1000, "rewritten");
}

#[test]
fn a_cache_file_damaged_on_disk_is_recompiled_not_run() {
    // Regression (hostile modules, item 16): the cache was mapped as native code with only
    // wasmtime's header checks, so a flipped byte in the compiled code would have been executed.
    // Each file now carries the sha256 of its contents, checked before it is deserialized.
    let dir = tempfile::tempdir().unwrap();
    let bytes = guest("json-filter");
    let config = EngineConfig { cache_dir: Some(dir.path().to_owned()), ..EngineConfig::default() };
    let module = Engine::new(config.clone()).unwrap().load_transform(&bytes).unwrap();
    assert!(!module.cache_hit());
    module.component().wait_optimized();
    let path = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
    let pristine = std::fs::read(&path).unwrap();

    // Flip bytes in the middle of the file (the compiled code) and at its end; keep its length.
    for at in [pristine.len() / 2, pristine.len() - 1] {
        let mut damaged = pristine.clone();
        damaged[at] ^= 0x55;
        std::fs::write(&path, &damaged).unwrap();
        let module = Engine::new(config.clone()).unwrap().load_transform(&bytes).unwrap();
        assert!(!module.cache_hit(), "a damaged file (byte {at} of {}) was loaded", pristine.len());
        module.component().wait_optimized();
        assert_eq!(std::fs::read(&path).unwrap(), pristine, "the file is rewritten whole");
        let (instance_config, _) = instance_config(&[("field", "a")]);
        let mut instance = module.instantiate(instance_config, out()).unwrap();
        assert_eq!(instance.process(&[input(br#"{"a":1}"#, 0), input(b"{}", 1)]).unwrap().len(), 1);
    }
    // And the rewritten file is used again.
    assert!(Engine::new(config).unwrap().load_transform(&bytes).unwrap().cache_hit());
}

#[test]
fn a_component_with_two_megabytes_of_code_deploys_and_runs() {
    let bytes = guest("fixture-bulky");
    assert!(common::code_bytes(&bytes) > 1_900_000, "the fixture should carry ~2 MB of code");
    let engine = Engine::new(EngineConfig::default()).unwrap();
    // How long this takes is a benchmark (BENCHMARKS.md, `benches/transform.rs`), not a test: a
    // timed assertion fails on a loaded machine and proves nothing on an idle one.
    let module = engine.load_transform(&bytes).unwrap();
    let (instance_config, _) = instance_config(&[]);
    let mut instance = module.instantiate(instance_config, out()).unwrap();
    let output = instance.process(&[input(b"abc", 0), input(b"abc", 1)]).unwrap();
    assert_eq!(output.len(), 2);
    assert_ne!(output[0].headers[0].value, output[1].headers[0].value, "different generated functions ran");
}
