//! The on-disk cache of compiled components, so a broker restart does not recompile.
//!
//! A file `<sha256 of the component bytes>-<engine fingerprint>.cwasm` holds a header — the magic
//! `SLUICE-CWASM-1\n` and the sha256 of the rest — followed by wasmtime's serialized compilation.
//! The fingerprint hashes wasmtime's own compatibility key (its version and every setting that
//! affects code generation), so another wasmtime or another configuration never reads a file it did
//! not write. The digest is checked before the bytes are handed to `Component::deserialize`, which
//! maps them as executable code: a file damaged on disk, cut short by a full disk, or from an older
//! Sluice without the header is recompiled and overwritten (with a warning), never run. Files are
//! written with `EngineConfig::cache_write`: in the broker, its one atomic, durable file replace.
//! Only Cranelift's (optimized) code is cached; Winch's baseline code is made again when needed.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::PluginError;
use crate::engine::CacheWrite;

/// What every cache file starts with; the version digit changes if the layout does.
const MAGIC: &[u8] = b"SLUICE-CWASM-1\n";
const HEADER_BYTES: usize = MAGIC.len() + 32;

pub(crate) struct Cache {
    dir: PathBuf,
    engine_fingerprint: String,
    write: CacheWrite,
}

pub(crate) fn digest_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Cache {
    pub fn open(dir: PathBuf, engine: &wasmtime::Engine, write: CacheWrite) -> Result<Cache, PluginError> {
        fs::create_dir_all(&dir).map_err(|e| PluginError::Engine(format!("creating cache directory {}: {e}", dir.display())))?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Cache { dir, engine_fingerprint: format!("{:016x}", hasher.finish()), write })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_fingerprint))
    }

    /// The cached compilation of the component with sha256 `digest`, if there is a sound one.
    pub fn load(&self, engine: &wasmtime::Engine, digest: &str) -> Option<Component> {
        let path = self.path(digest);
        let file = fs::read(&path).ok()?;
        match verified_payload(&file).map(|compiled| deserialize(engine, compiled)) {
            Ok(Ok(component)) => Some(component),
            Ok(Err(e)) => {
                tracing::warn!(path = %path.display(), "recompiling: wasmtime refused the cached compilation: {e:#}");
                None
            }
            Err(why) => {
                tracing::warn!(path = %path.display(), "recompiling: the cached compilation is damaged: {why}");
                None
            }
        }
    }

    /// Cache the compilation of the component with sha256 `digest` (a failure is logged: the next
    /// load compiles again).
    pub fn store(&self, digest: &str, component: &Component) {
        let path = self.path(digest);
        match component.serialize() {
            Ok(compiled) => {
                if let Err(e) = (self.write)(&path, &with_header(&compiled)) {
                    tracing::warn!(path = %path.display(), "could not cache the compiled module: {e}");
                }
            }
            Err(e) => tracing::warn!("could not serialize the compiled module: {e:#}"),
        }
    }
}

fn with_header(compiled: &[u8]) -> Vec<u8> {
    let mut file = Vec::with_capacity(HEADER_BYTES + compiled.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&Sha256::digest(compiled));
    file.extend_from_slice(compiled);
    file
}

/// The compilation inside a cache file, if its header is ours and its digest matches.
fn verified_payload(file: &[u8]) -> Result<&[u8], &'static str> {
    if file.len() < HEADER_BYTES || !file.starts_with(MAGIC) {
        return Err("no Sluice cache header");
    }
    let (digest, compiled) = file[MAGIC.len()..].split_at(32);
    if Sha256::digest(compiled).as_slice() != digest {
        return Err("its sha256 does not match the header");
    }
    Ok(compiled)
}

/// The crate's one unsafe call.
#[allow(unsafe_code)]
fn deserialize(engine: &wasmtime::Engine, compiled: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `Component::deserialize` trusts its input to be wasmtime's own output: it maps it as
    // executable code. These bytes are written only by `store` above, from
    // `Component::serialize`, into the broker's data directory (owned by the broker, not writable by
    // clients: nothing reaches it over the network), and `verified_payload` has just checked them
    // against the sha256 written with them, so a file damaged on disk never gets here. The name binds
    // a file to the sha256 of the component it was compiled from and to this wasmtime's compatibility
    // key, and wasmtime checks the header's version and settings again before use. The digest is not
    // a defence against someone who can write the data directory — they could write a matching
    // digest, but they can already replace the broker's logs and binary, so this trusts no one new.
    unsafe { Component::deserialize(engine, compiled) }
}
