//! The on-disk cache of compiled components, so a broker restart does not recompile.
//!
//! A file `<sha256 of the component bytes>-<engine fingerprint>.cwasm` holds wasmtime's serialized
//! compilation. The fingerprint hashes wasmtime's own compatibility key (its version and every
//! setting that affects code generation), so another wasmtime or another configuration never reads a
//! file it did not write. Writes go to a temporary file renamed into place, so a crash leaves either
//! no file or a whole one. A file that fails to load is deleted and the module recompiled.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::TransformError;
use crate::engine::compile;

pub(crate) struct Cache {
    dir: PathBuf,
    engine_fingerprint: String,
}

pub(crate) fn digest_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Cache {
    pub fn open(dir: PathBuf, engine: &wasmtime::Engine) -> Result<Cache, TransformError> {
        fs::create_dir_all(&dir).map_err(|e| TransformError::Engine(format!("creating cache directory {}: {e}", dir.display())))?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Cache { dir, engine_fingerprint: format!("{:016x}", hasher.finish()) })
    }

    /// The component, the sha256 of its bytes, and whether it came from the cache.
    pub fn load_or_compile(&self, engine: &wasmtime::Engine, bytes: &[u8]) -> Result<(Component, String, bool), TransformError> {
        let digest = digest_hex(bytes);
        let path = self.dir.join(format!("{digest}-{}.cwasm", self.engine_fingerprint));
        if let Ok(compiled) = fs::read(&path) {
            match deserialize(engine, &compiled) {
                Ok(component) => return Ok((component, digest, true)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "discarding unreadable compiled module: {e:#}");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        let component = compile(engine, bytes)?;
        match component.serialize() {
            Ok(compiled) => {
                if let Err(e) = write_atomically(&path, &compiled) {
                    tracing::warn!(path = %path.display(), "could not cache the compiled module: {e}");
                }
            }
            Err(e) => tracing::warn!("could not serialize the compiled module: {e:#}"),
        }
        Ok((component, digest, false))
    }
}

/// The crate's one unsafe call.
#[allow(unsafe_code)]
fn deserialize(engine: &wasmtime::Engine, compiled: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `Component::deserialize` trusts its input to be wasmtime's own output: it maps it as
    // executable code. These files are written only by `load_or_compile` above, from
    // `Component::serialize`, into the broker's data directory (owned by the broker, not writable by
    // clients: nothing reaches it over the network). The name binds a file to the sha256 of the
    // component it was compiled from and to this wasmtime's compatibility key, and wasmtime checks the
    // header's version and settings again before use. Someone who can write the data directory can
    // already replace the broker's logs and binary, so this trusts no one new.
    unsafe { Component::deserialize(engine, compiled) }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
