//! Issue 9's boundary, checked: the transform runtime (and the runtime crate under it) sees the
//! broker only through `sluice_broker::host`, so neither may depend on the storage engine or the
//! Kafka codec.

use std::process::Command;

#[test]
fn runtimes_depend_on_neither_storage_nor_the_kafka_codec() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(output.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    for crate_name in ["sluice-transforms", "sluice-runtime"] {
        let package = packages.iter().find(|p| p["name"] == crate_name).unwrap_or_else(|| panic!("{crate_name} not in the workspace"));
        let dependencies: Vec<&str> = package["dependencies"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
        for forbidden in ["sluice-storage", "kafka-protocol"] {
            assert!(!dependencies.contains(&forbidden), "{crate_name} depends on {forbidden}: {dependencies:?}");
        }
        assert!(dependencies.contains(&"sluice-broker"), "{crate_name} should reach the broker through sluice_broker::host");
    }
}
