//! Packs the guest SDK (`sdk/sluice`, `sdk/sluice-macros`, `sdk/wit`) into the `sluice` binary, so that
//! `sluice transform init` can unpack it anywhere the binary is installed, with no source checkout.
//!
//! It writes `$OUT_DIR/sdk_bundle.rs`: a table of (relative path, `include_bytes!` of the file) and a
//! digest of the contents, plus a generated workspace manifest for the unpacked directory. The SDK's
//! crates inherit `version`, `edition` and their dependencies from the repository's workspace; the
//! generated manifest carries exactly those entries, copied from the root `Cargo.toml`, so the
//! unpacked SDK builds on its own and stays in step with the repository.
//!
//! A build script rather than a crate such as `include_dir`: that one's proc macro cannot tell cargo
//! which files it read, so editing the SDK would not rebuild the binary on stable Rust, and the
//! manifest has to be generated anyway. `cargo:rerun-if-changed` on the three directories does both.
//!
//! It also bundles the first-party plugins (`plugins/`): it builds them for `wasm32-wasip2` with a
//! nested `cargo build --profile wasm-guest` into `target/wasm-guests` (its own target directory, so the outer
//! build's lock is not needed; the tests build their guests there too and share the work), copies
//! the components into `$OUT_DIR` and writes `$OUT_DIR/builtin_plugins.rs`, the table the server
//! hands to the module registry. So a fresh broker lists the connectors and transforms with no
//! upload. `SLUICE_BUILTIN_PLUGINS=none` skips this (a binary without them) for quick native builds.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The first-party plugins bundled into the binary: (package in `plugins/`, world).
const BUILTIN_PLUGINS: [(&str, &str); 11] = [
    ("file-source", "source"),
    ("file-sink", "sink"),
    ("jdbc-source", "source"),
    ("jdbc-sink", "sink"),
    ("postgres-cdc", "source"),
    ("json-filter", "transform"),
    ("json-to-msgpack", "transform"),
    ("pii-mask", "transform"),
    ("router", "transform"),
    ("default-replication-policy", "mirror-policy"),
    ("identity-replication-policy", "mirror-policy"),
];

/// The SDK directories packed, relative to `sdk/`.
const SDK_DIRS: [&str; 3] = ["sluice", "sluice-macros", "wit"];
/// Files at the top of `sdk/` packed as well.
const SDK_TOP_FILES: [&str; 1] = ["README.md"];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let repo = manifest_dir.join("../..");
    let sdk = repo.join("sdk");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    let workspace_manifest = repo.join("Cargo.toml");
    println!("cargo:rerun-if-changed={}", workspace_manifest.display());
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for dir in SDK_DIRS {
        println!("cargo:rerun-if-changed={}", sdk.join(dir).display());
        collect(&sdk.join(dir), dir, &mut files);
    }
    for name in SDK_TOP_FILES {
        let path = sdk.join(name);
        println!("cargo:rerun-if-changed={}", path.display());
        if path.is_file() {
            files.push((name.to_string(), path));
        }
    }
    files.sort();

    let root_manifest = sdk_workspace_manifest(&workspace_manifest, &sdk);
    let root_manifest_path = out_dir.join("sdk-workspace.toml");
    fs::write(&root_manifest_path, &root_manifest).expect("writing the SDK workspace manifest");

    // FNV-1a over every path and content: it only has to tell two different SDKs apart, so that two
    // builds of one version with different SDK sources unpack to different directories.
    let mut digest = Fnv::new();
    let mut table = String::from("/// Every file of the packed SDK: (path relative to the SDK root, contents).\n");
    table.push_str("pub(crate) const SDK_FILES: &[(&str, &[u8])] = &[\n");
    for (relative, path) in &files {
        let bytes = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        digest.update(relative.as_bytes());
        digest.update(&(bytes.len() as u64).to_le_bytes());
        digest.update(&bytes);
        let absolute = path.canonicalize().unwrap_or_else(|e| panic!("resolving {}: {e}", path.display()));
        writeln!(table, "    ({relative:?}, include_bytes!({:?})),", absolute.display().to_string()).expect("writing to a String");
    }
    digest.update(b"Cargo.toml");
    digest.update(root_manifest.as_bytes());
    writeln!(table, "    (\"Cargo.toml\", include_bytes!({:?})),", root_manifest_path.display().to_string()).expect("writing to a String");
    table.push_str("];\n");
    writeln!(table, "/// Digest of the packed SDK (paths and contents), part of the directory it unpacks to.")
        .expect("writing to a String");
    writeln!(table, "pub(crate) const SDK_DIGEST: &str = \"{:016x}\";", digest.finish()).expect("writing to a String");
    fs::write(out_dir.join("sdk_bundle.rs"), table).expect("writing sdk_bundle.rs");

    bundle_plugins(&repo, &out_dir);
}

/// Installs the `wasm32-wasip2` standard library with rustup when the toolchain lacks it (the toolchain
/// file asks for it, but rustup only adds targets by itself when it installs the toolchain), so that
/// `cargo run --release -- server` works on a fresh machine. Without rustup, the build fails below
/// with what to do.
fn ensure_wasm_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let sysroot = Command::new(&rustc).args(["--print", "sysroot"]).output().ok().filter(|o| o.status.success());
    let Some(sysroot) = sysroot.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()) else { return };
    if Path::new(&sysroot).join("lib/rustlib/wasm32-wasip2").is_dir() {
        return;
    }
    println!("cargo:warning=installing the wasm32-wasip2 target (rustup target add wasm32-wasip2) to build the first-party plugins");
    let _ = Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).status();
}

/// Builds the first-party plugins and writes `builtin_plugins.rs` (see the module docs).
fn bundle_plugins(repo: &Path, out_dir: &Path) {
    println!("cargo:rerun-if-env-changed=SLUICE_BUILTIN_PLUGINS");
    println!("cargo:rerun-if-changed={}", repo.join("Cargo.lock").display());
    let mut table = String::from("/// The first-party plugins this binary carries (see build.rs).\n");
    table.push_str("pub(crate) const BUILTIN_PLUGINS: &[sluice_runtime::Builtin] = &[\n");
    if std::env::var("SLUICE_BUILTIN_PLUGINS").as_deref() != Ok("none") {
        for (package, _) in BUILTIN_PLUGINS {
            println!("cargo:rerun-if-changed={}", repo.join("plugins").join(package).display());
        }
        ensure_wasm_target();
        let target_dir = repo.join("target/wasm-guests");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let mut command = Command::new(cargo);
        command.current_dir(repo).args(["build", "--profile", "wasm-guest", "--target", "wasm32-wasip2", "--target-dir"]).arg(&target_dir);
        for (package, _) in BUILTIN_PLUGINS {
            command.args(["-p", package]);
        }
        // What cargo sets for this build script's own compilation must not leak into the guests'.
        for var in [
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
            "CARGO_BUILD_TARGET",
            "CARGO_TARGET_DIR",
            "RUSTC_WORKSPACE_WRAPPER",
        ] {
            command.env_remove(var);
        }
        let status = command.status().unwrap_or_else(|e| panic!("running cargo to build the first-party plugins: {e}"));
        assert!(
            status.success(),
            "building the first-party plugins for wasm32-wasip2 failed. If the target is missing, install it with \
             `rustup target add wasm32-wasip2`; to build without the plugins, set SLUICE_BUILTIN_PLUGINS=none."
        );
        for (package, world) in BUILTIN_PLUGINS {
            let file = format!("{}.wasm", package.replace('-', "_"));
            let built = target_dir.join("wasm32-wasip2/wasm-guest").join(&file);
            // A copy: later guest builds rewrite the original, which must not rebuild this crate.
            let copy = out_dir.join(&file);
            fs::copy(&built, &copy).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
            writeln!(
                table,
                "    sluice_runtime::Builtin {{ name: {package:?}, world: {world:?}, bytes: include_bytes!({:?}) }},",
                copy.display().to_string()
            )
            .expect("writing to a String");
        }
    }
    table.push_str("];\n");
    fs::write(out_dir.join("builtin_plugins.rs"), table).expect("writing builtin_plugins.rs");
}

/// Adds every file under `dir` (skipping build output and hidden files) as `prefix/relative/path`.
fn collect(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "target" || name == "Cargo.lock" {
            continue;
        }
        let path = entry.path();
        let relative = format!("{prefix}/{name}");
        if path.is_dir() {
            collect(&path, &relative, out);
        } else {
            out.push((relative, path));
        }
    }
}

/// The manifest at the root of the unpacked SDK: a workspace of `sluice` and `sluice-macros` with the
/// `[workspace.package]` keys and the `[workspace.dependencies]` entries the two crates inherit.
fn sdk_workspace_manifest(workspace_manifest: &Path, sdk: &Path) -> String {
    let text = fs::read_to_string(workspace_manifest).expect("reading the workspace Cargo.toml");
    let root: toml::Table = text.parse().expect("the workspace Cargo.toml is valid TOML");
    let workspace = root.get("workspace").and_then(toml::Value::as_table).expect("the root Cargo.toml has [workspace]");
    let empty = toml::Table::new();
    let package = workspace.get("package").and_then(toml::Value::as_table).unwrap_or(&empty);
    let dependencies = workspace.get("dependencies").and_then(toml::Value::as_table).unwrap_or(&empty);

    let mut inherited = std::collections::BTreeSet::new();
    for crate_dir in ["sluice", "sluice-macros"] {
        let manifest_path = sdk.join(crate_dir).join("Cargo.toml");
        let manifest: toml::Table = fs::read_to_string(&manifest_path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", manifest_path.display()))
            .parse()
            .unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", manifest_path.display()));
        inherited_dependencies(&manifest, &mut inherited);
    }

    let mut out_package = toml::Table::new();
    for key in ["version", "edition", "license", "rust-version"] {
        if let Some(value) = package.get(key) {
            out_package.insert(key.to_string(), value.clone());
        }
    }
    let mut out_dependencies = toml::Table::new();
    for name in inherited {
        let mut spec =
            dependencies.get(&name).cloned().unwrap_or_else(|| panic!("the SDK inherits `{name}`, missing from [workspace.dependencies]"));
        // Paths inside `sdk/` are siblings in the unpacked layout.
        if let Some(path) = spec.get("path").and_then(toml::Value::as_str).map(str::to_string)
            && let Some(table) = spec.as_table_mut()
        {
            let local = path.strip_prefix("sdk/").unwrap_or_else(|| panic!("the SDK depends on `{path}`, outside sdk/"));
            table.insert("path".to_string(), toml::Value::String(local.to_string()));
        }
        out_dependencies.insert(name, spec);
    }
    let mut out_workspace = toml::Table::new();
    out_workspace.insert("resolver".to_string(), toml::Value::String("3".to_string()));
    out_workspace.insert(
        "members".to_string(),
        toml::Value::Array(vec![toml::Value::String("sluice".into()), toml::Value::String("sluice-macros".into())]),
    );
    out_workspace.insert("package".to_string(), toml::Value::Table(out_package));
    out_workspace.insert("dependencies".to_string(), toml::Value::Table(out_dependencies));
    // Lints too, in case the SDK's crates say `[lints] workspace = true`.
    if let Some(lints) = workspace.get("lints") {
        out_workspace.insert("lints".to_string(), lints.clone());
    }
    let mut out = toml::Table::new();
    out.insert("workspace".to_string(), toml::Value::Table(out_workspace));
    let body = toml::to_string(&out).expect("serializing the SDK workspace manifest");
    format!("# The Sluice guest SDK, unpacked by `sluice transform init`. Generated; do not edit.\n\n{body}")
}

/// Names of the dependencies a manifest takes from its workspace (`name.workspace = true`), in every
/// dependency table, target-specific ones included.
fn inherited_dependencies(manifest: &toml::Table, out: &mut std::collections::BTreeSet<String>) {
    let mut tables: Vec<&toml::Table> = Vec::new();
    for key in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(table) = manifest.get(key).and_then(toml::Value::as_table) {
            tables.push(table);
        }
    }
    if let Some(targets) = manifest.get("target").and_then(toml::Value::as_table) {
        for target in targets.values().filter_map(toml::Value::as_table) {
            for key in ["dependencies", "dev-dependencies", "build-dependencies"] {
                if let Some(table) = target.get(key).and_then(toml::Value::as_table) {
                    tables.push(table);
                }
            }
        }
    }
    for table in tables {
        for (name, spec) in table {
            if spec.get("workspace").and_then(toml::Value::as_bool) == Some(true) {
                out.insert(name.clone());
            }
        }
    }
}

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
