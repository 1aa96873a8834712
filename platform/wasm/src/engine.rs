//! The engine: one per broker, shared by every module and instance (it is cheap to clone).

use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};

use crate::TransformError;
use crate::bindings::{Transform, TransformPre};
use crate::cache::Cache;
use crate::host::HostState;
use crate::limits::MODULE_BYTES_MAX;
use crate::module::Module;

/// How the engine is set up. Per-transform limits are not here: they belong to instances.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Where compiled modules are cached (e.g. `<data-dir>/__transforms/cache`). `None` disables the
    /// cache: every load compiles.
    pub cache_dir: Option<PathBuf>,
    /// The epoch tick: the granularity of the per-call CPU bound. A tick costs one atomic increment;
    /// instrumented guest code checks the epoch at loop headers and function entries.
    pub epoch_tick: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { cache_dir: None, epoch_tick: EPOCH_TICK_DEFAULT }
    }
}

pub const EPOCH_TICK_DEFAULT: Duration = Duration::from_millis(10);

/// The wasmtime engine, the linker every instance is made with, the epoch ticker, and the cache.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub engine: wasmtime::Engine,
    pub linker: Linker<HostState>,
    pub epoch_tick: Duration,
    cache: Option<Cache>,
    /// Ends the ticker thread when the engine is dropped (the sender's drop wakes it).
    _ticker: Ticker,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Engine, TransformError> {
        if config.epoch_tick.is_zero() || config.epoch_tick > Duration::from_secs(1) {
            return Err(TransformError::InvalidRequest(format!("epoch_tick {:?} outside (0, 1s]", config.epoch_tick)));
        }
        let mut wasm_config = wasmtime::Config::new();
        wasm_config.wasm_component_model(true).epoch_interruption(true).cranelift_opt_level(wasmtime::OptLevel::Speed);
        // With `--features profiling`, `SLUICE_WASM_PERFMAP=1` writes /tmp/perf-<pid>.map so that `perf`
        // names guest functions (how BENCHMARKS.md's profile was taken).
        #[cfg(feature = "profiling")]
        if std::env::var_os("SLUICE_WASM_PERFMAP").is_some() {
            wasm_config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = wasmtime::Engine::new(&wasm_config).map_err(|e| TransformError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        // WASI p2: std needs it linked (clocks, random, stdio, exit); what the guest may reach is
        // decided per instance by its `WasiCtx`, which grants nothing by default.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| TransformError::Engine(format!("linking WASI: {e:#}")))?;
        Transform::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)
            .map_err(|e| TransformError::Engine(format!("linking host imports: {e:#}")))?;

        let cache = config.cache_dir.map(|dir| Cache::open(dir, &engine)).transpose()?;
        let ticker = Ticker::start(engine.clone(), config.epoch_tick)?;
        Ok(Engine { inner: Arc::new(EngineInner { engine, linker, epoch_tick: config.epoch_tick, cache, _ticker: ticker }) })
    }

    /// Validate and compile a transform component, or load its compilation from the cache.
    ///
    /// Checks, in order: size, that the bytes are WebAssembly and a component (not a core module),
    /// that wasmtime compiles it, that every import is one the host provides, and that it exports the
    /// transform world's functions with the right types.
    pub fn load(&self, bytes: &[u8]) -> Result<Module, TransformError> {
        if bytes.len() > MODULE_BYTES_MAX {
            return Err(TransformError::InvalidModule(format!("{} bytes; the limit is {MODULE_BYTES_MAX}", bytes.len())));
        }
        check_header(bytes)?;
        let started = Instant::now();
        let (component, digest, cache_hit) = match &self.inner.cache {
            Some(cache) => cache.load_or_compile(&self.inner.engine, bytes)?,
            None => (compile(&self.inner.engine, bytes)?, crate::cache::digest_hex(bytes), false),
        };
        let instance_pre = self.inner.linker.instantiate_pre(&component).map_err(|e| TransformError::WrongWorld(format!("{e:#}")))?;
        let pre = TransformPre::new(instance_pre).map_err(|e| {
            TransformError::WrongWorld(format!("{e:#} (a transform exports `sluice:plugin/transformer@{}`)", crate::WIT_VERSION))
        })?;
        Ok(Module::new(self.clone(), pre, digest, cache_hit, started.elapsed()))
    }
}

pub(crate) fn compile(engine: &wasmtime::Engine, bytes: &[u8]) -> Result<Component, TransformError> {
    Component::new(engine, bytes).map_err(|e| TransformError::InvalidModule(format!("{e:#}")))
}

/// The 8-byte preamble: `\0asm`, then version 0x000d and layer 1 for a component (layer 0 and version
/// 1 for a core module). Checked first so the common mistakes get a precise message.
fn check_header(bytes: &[u8]) -> Result<(), TransformError> {
    let Some(preamble) = bytes.get(..8) else {
        return Err(TransformError::InvalidModule(format!("{} bytes is too short to be WebAssembly", bytes.len())));
    };
    if &preamble[..4] != b"\0asm" {
        return Err(TransformError::InvalidModule("not WebAssembly (the file does not start with `\\0asm`)".to_owned()));
    }
    if preamble[6..8] == [0, 0] {
        return Err(TransformError::InvalidModule(
            "a core WebAssembly module, not a component; build the transform for the wasm32-wasip2 target".to_owned(),
        ));
    }
    Ok(())
}

/// Increments the engine's epoch every tick until dropped.
struct Ticker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: wasmtime::Engine, tick: Duration) -> Result<Ticker, TransformError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".to_owned())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    engine.increment_epoch();
                }
            })
            .map_err(|e| TransformError::Engine(format!("starting the epoch thread: {e}")))?;
        Ok(Ticker { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
