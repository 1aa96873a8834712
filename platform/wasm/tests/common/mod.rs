//! Builds the example, plugin and fixture components for the tests and the benchmark, once per test
//! binary, with `cargo build --profile wasm-guest --target wasm32-wasip2` into `target/wasm-guests` (a target
//! directory of its own, so it never waits on the lock of the `cargo test` that runs us).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use sluice_wasm::{Engine, EngineConfig, InputRecord, InstanceConfig, LogLevel, LogSink, TransformModule};

/// Every guest the tests use, by package name.
pub const GUESTS: &[&str] = &[
    "identity",
    "json-filter",
    "pii-mask",
    "router",
    "json-to-msgpack",
    "fixture-hostile",
    "fixture-wrong-world",
    "fixture-raw-bad-output",
    "fixture-bulky",
    "fixture-future-version",
    "fixture-host-wait",
    "fixture-hostile-source",
    "file-source",
    "file-sink",
    "default-replication-policy",
    "identity-replication-policy",
    "dr-filter",
];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

fn build_guests() -> PathBuf {
    let root = workspace_root();
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

/// The bytes of a guest component, e.g. `guest("json-filter")`.
pub fn guest(name: &str) -> Vec<u8> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    // `SLUICE_GUEST_DIR` points at components built elsewhere (e.g. with other compiler flags, for the
    // benchmark) instead of building them here.
    let dir = DIR.get_or_init(|| std::env::var_os("SLUICE_GUEST_DIR").map(PathBuf::from).unwrap_or_else(build_guests));
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

pub fn engine() -> Engine {
    Engine::new(EngineConfig::default()).expect("engine")
}

pub fn load(engine: &Engine, name: &str) -> TransformModule {
    engine.load_transform(&guest(name)).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// Bytes of code in all core modules of a component (the code sections; debug info and names excluded).
pub fn code_bytes(component: &[u8]) -> usize {
    fn leb(bytes: &[u8], mut i: usize) -> Option<(usize, usize)> {
        let (mut value, mut shift) = (0usize, 0);
        loop {
            let byte = *bytes.get(i)?;
            i += 1;
            value |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte < 0x80 {
                return Some((value, i));
            }
        }
    }
    fn walk(bytes: &[u8]) -> Option<usize> {
        let is_component = bytes.get(6..8)? != [0, 0];
        let (mut i, mut code) = (8, 0);
        while i < bytes.len() {
            let id = bytes[i];
            let (len, start) = leb(bytes, i + 1)?;
            let body = bytes.get(start..start + len)?;
            match (is_component, id) {
                (true, 1) => code += walk(body)?,
                (false, 10) => code += len,
                _ => {}
            }
            i = start + len;
        }
        Some(code)
    }
    walk(component).unwrap_or(0)
}

/// A record with this value at `offset`.
pub fn input(value: &[u8], offset: i64) -> InputRecord {
    InputRecord { key: None, value: Some(value.to_vec()), headers: Vec::new(), timestamp_ms: 1_700_000_000_000, partition: 0, offset }
}

/// A log sink that keeps every line, for assertions.
#[derive(Default)]
pub struct CapturedLogs(pub Mutex<Vec<(LogLevel, String)>>);

impl LogSink for CapturedLogs {
    fn log(&self, level: LogLevel, message: &str) {
        self.0.lock().unwrap().push((level, message.to_owned()));
    }
}

impl CapturedLogs {
    pub fn lines(&self) -> Vec<(LogLevel, String)> {
        self.0.lock().unwrap().clone()
    }
}

/// The one output topic most tests deploy with.
pub fn out() -> Vec<String> {
    vec!["out".to_owned()]
}

/// An instance config with these config pairs and captured logs.
pub fn instance_config(config: &[(&str, &str)]) -> (InstanceConfig, Arc<CapturedLogs>) {
    let logs = Arc::new(CapturedLogs::default());
    let mut instance_config = InstanceConfig::new("test");
    instance_config.config = config.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    instance_config.log_sink = logs.clone();
    (instance_config, logs)
}
