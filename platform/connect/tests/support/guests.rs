//! Builds the Wasm components these tests upload, once per test binary, with
//! `cargo build --profile wasm-guest --target wasm32-wasip2` into `target/wasm-guests` (the directory
//! `sluice-wasm`'s tests use too, so the two share the build).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The guests these tests use, by package name.
const GUESTS: &[&str] = &[
    "file-source",
    "file-sink",
    "fixture-hostile-source",
    "fixture-hostile",
    "pii-mask",
    "router",
    "json-filter",
    "jdbc-sink",
    "jdbc-source",
    "postgres-cdc",
];

fn build() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root");
    let target_dir = root.join("target/wasm-guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command.current_dir(&root).args(["build", "--profile", "wasm-guest", "--target", "wasm32-wasip2", "--target-dir"]).arg(&target_dir);
    for guest in GUESTS {
        command.args(["-p", guest]);
    }
    let status = command.status().expect("running cargo to build the wasm guests");
    assert!(status.success(), "building the wasm guests failed (is the wasm32-wasip2 target installed?)");
    target_dir.join("wasm32-wasip2/wasm-guest")
}

/// The bytes of a guest component, e.g. `guest("file-source")`.
pub fn guest(name: &str) -> Vec<u8> {
    assert!(GUESTS.contains(&name), "add {name} to GUESTS");
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| std::env::var_os("SLUICE_GUEST_DIR").map(PathBuf::from).unwrap_or_else(build));
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
