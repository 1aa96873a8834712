//! The guest SDK packed into the binary by `build.rs` (`sdk/sluice`, `sdk/sluice-macros`, `sdk/wit` and a
//! generated workspace manifest), and its unpacking for `sluice transform init`.
//!
//! It unpacks to `$XDG_DATA_HOME/sluice/sdk/<version>-<digest>/` (else `~/.local/share/...`): one
//! directory per distinct SDK, shared by every crate scaffolded with that binary and never changed
//! after it is complete. A directory is written under a temporary name and renamed into place, so a
//! crash or two `init`s at once leave either nothing or a whole SDK there.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

mod packed {
    include!(concat!(env!("OUT_DIR"), "/sdk_bundle.rs"));
}

/// Written last into an unpacked SDK: its presence means every file before it is there.
const COMPLETE_MARKER: &str = ".complete";

/// `<version>-<digest>`: the name of this binary's SDK directory.
pub(crate) fn sdk_version() -> String {
    format!("{}-{}", env!("CARGO_PKG_VERSION"), packed::SDK_DIGEST)
}

/// Where SDKs are unpacked by default: `$XDG_DATA_HOME/sluice/sdk`, else `$HOME/.local/share/sluice/sdk`.
pub(crate) fn default_root() -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    non_empty("XDG_DATA_HOME").or_else(|| non_empty("HOME").map(|home| home.join(".local/share"))).map(|data| data.join("sluice/sdk"))
}

/// Makes sure this binary's SDK is unpacked under `root` and returns the path of its `sluice` crate.
pub(crate) fn unpack(root: &Path) -> Result<PathBuf> {
    let target = root.join(sdk_version());
    if !target.join(COMPLETE_MARKER).exists() {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let staging = root.join(format!(".unpacking-{}-{}", sdk_version(), std::process::id()));
        // Left over from a crash of this same process id: start again.
        let _ = std::fs::remove_dir_all(&staging);
        write_files(&staging).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&staging);
        })?;
        if target.exists() && !target.join(COMPLETE_MARKER).exists() {
            // Incomplete and not ours to finish (an unpacking predating the rename, or a hand edit).
            std::fs::remove_dir_all(&target).with_context(|| format!("removing the incomplete SDK at {}", target.display()))?;
        }
        if let Err(error) = std::fs::rename(&staging, &target) {
            let _ = std::fs::remove_dir_all(&staging);
            // Another `init` finished first: its copy is identical.
            if !target.join(COMPLETE_MARKER).exists() {
                return Err(error).with_context(|| format!("moving the SDK into {}", target.display()));
            }
        }
    }
    let crate_dir = target.join("sluice");
    if !crate_dir.join("Cargo.toml").is_file() {
        bail!("{} is incomplete (no sluice/Cargo.toml); delete it and run `sluice transform init` again", target.display());
    }
    Ok(crate_dir)
}

fn write_files(dir: &Path) -> Result<()> {
    for (relative, bytes) in packed::SDK_FILES {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    std::fs::write(dir.join(COMPLETE_MARKER), sdk_version()).with_context(|| format!("writing {}", dir.join(COMPLETE_MARKER).display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packed_sdk_holds_both_crates_the_wit_and_a_workspace_manifest() {
        let paths: Vec<&str> = packed::SDK_FILES.iter().map(|(p, _)| *p).collect();
        for needed in ["Cargo.toml", "sluice/Cargo.toml", "sluice/src/lib.rs", "sluice-macros/Cargo.toml", "wit/plugin.wit"] {
            assert!(paths.contains(&needed), "{needed} is not packed: {paths:?}");
        }
        assert!(paths.iter().all(|p| !p.contains("..") && !p.starts_with('/')), "{paths:?}");
        let root = packed::SDK_FILES.iter().find(|(p, _)| *p == "Cargo.toml").map(|(_, b)| String::from_utf8_lossy(b)).unwrap_or_default();
        let manifest: toml::Table = root.parse().expect("the generated manifest is TOML");
        let workspace = &manifest["workspace"];
        assert!(workspace["package"].get("version").is_some(), "{root}");
        assert_eq!(workspace["dependencies"]["sluice-macros"]["path"].as_str(), Some("sluice-macros"), "{root}");
    }

    #[test]
    fn unpacking_is_idempotent_and_replaces_an_incomplete_copy() {
        let dir = std::env::temp_dir().join(format!("sluice-sdk-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let crate_dir = unpack(&dir).expect("unpack");
        assert!(crate_dir.join("src/lib.rs").is_file());
        assert!(crate_dir.starts_with(dir.join(sdk_version())));
        assert_eq!(unpack(&dir).expect("again"), crate_dir);
        // A copy without its marker (cut short) is replaced by a whole one.
        std::fs::remove_file(crate_dir.join("src/lib.rs")).expect("remove a file");
        std::fs::remove_file(dir.join(sdk_version()).join(COMPLETE_MARKER)).expect("remove the marker");
        assert_eq!(unpack(&dir).expect("repair"), crate_dir);
        assert!(crate_dir.join("src/lib.rs").is_file());
        let leftovers: Vec<_> = std::fs::read_dir(&dir).expect("list").filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
