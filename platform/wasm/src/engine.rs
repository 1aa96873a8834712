//! The engine: one per broker, shared by every world, module and instance (cheap to clone). It owns
//! the wasmtime engine, the epoch ticker, the compiled-module cache, and one linker per world —
//! the shared imports (WASI with bounded waits, `host`) plus that world's own.

use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, InstancePre, Linker};

use crate::bindings::host;
use crate::cache::Cache;
use crate::host::HostState;
use crate::limits::MODULE_BYTES_MAX;
use crate::transform::TransformModule;
use crate::{PluginError, World};

/// How the engine is set up. Per-plugin limits are not here: they belong to instances.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Where compiled modules are cached (a directory the broker owns, under its data directory).
    /// `None` disables the cache: every load compiles.
    pub cache_dir: Option<PathBuf>,
    /// How a compiled module is written into the cache. The broker's runtimes pass its one atomic,
    /// durable file replace (`sluice_broker::host::write_file_atomically`); the default is a plain
    /// write, enough for tests and benchmarks because every cache file carries the sha256 of its
    /// contents and a torn or damaged one is recompiled, never run.
    pub cache_write: CacheWrite,
    /// The epoch tick: the granularity of the per-call CPU bound. A tick costs one atomic increment;
    /// instrumented guest code checks the epoch at loop headers and function entries.
    pub epoch_tick: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { cache_dir: None, cache_write: |path, bytes| std::fs::write(path, bytes), epoch_tick: EPOCH_TICK_DEFAULT }
    }
}

/// Writes one compiled module into the cache directory (see [`EngineConfig::cache_write`]).
pub type CacheWrite = fn(&std::path::Path, &[u8]) -> std::io::Result<()>;

pub const EPOCH_TICK_DEFAULT: Duration = Duration::from_millis(10);

/// The wasmtime engine, the linkers instances are made with, the epoch ticker, and the cache.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub engine: wasmtime::Engine,
    /// One per world, in `World::ALL` order.
    linkers: Vec<Linker<HostState>>,
    pub epoch_tick: Duration,
    cache: Option<Cache>,
    /// Ends the ticker thread when the engine is dropped (the sender's drop wakes it).
    _ticker: Ticker,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Engine, PluginError> {
        if config.epoch_tick.is_zero() || config.epoch_tick > Duration::from_secs(1) {
            return Err(PluginError::InvalidRequest(format!("epoch_tick {:?} outside (0, 1s]", config.epoch_tick)));
        }
        let mut wasm_config = wasmtime::Config::new();
        wasm_config.wasm_component_model(true).epoch_interruption(true).cranelift_opt_level(wasmtime::OptLevel::Speed);
        // With `--features profiling`, `SLUICE_WASM_PERFMAP=1` writes /tmp/perf-<pid>.map so that `perf`
        // names guest functions (how BENCHMARKS.md's profile was taken).
        #[cfg(feature = "profiling")]
        if std::env::var_os("SLUICE_WASM_PERFMAP").is_some() {
            wasm_config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = wasmtime::Engine::new(&wasm_config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let linkers = World::ALL
            .into_iter()
            .map(|world| world_linker(&engine, world).map_err(|e| PluginError::Engine(format!("linking the {world} world: {e:#}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let cache = config.cache_dir.map(|dir| Cache::open(dir, &engine, config.cache_write)).transpose()?;
        let ticker = Ticker::start(engine.clone(), config.epoch_tick)?;
        Ok(Engine { inner: Arc::new(EngineInner { engine, linkers, epoch_tick: config.epoch_tick, cache, _ticker: ticker }) })
    }

    /// Validate and compile a component (or load its compilation from the cache), whatever its
    /// world. Checks, in order: size, that the bytes are WebAssembly and a component (not a core
    /// module), and that wasmtime compiles it. Compiling takes up to seconds for large modules
    /// (BENCHMARKS.md): call it on a blocking thread, never on the data path.
    pub fn compile(&self, bytes: &[u8]) -> Result<CompiledComponent, PluginError> {
        if bytes.len() > MODULE_BYTES_MAX {
            return Err(PluginError::InvalidModule(format!("{} bytes; the limit is {MODULE_BYTES_MAX}", bytes.len())));
        }
        check_header(bytes)?;
        let started = Instant::now();
        let (component, digest, cache_hit) = match &self.inner.cache {
            Some(cache) => cache.load_or_compile(&self.inner.engine, bytes)?,
            None => (compile(&self.inner.engine, bytes)?, crate::cache::digest_hex(bytes), false),
        };
        Ok(CompiledComponent { engine: self.clone(), component, digest, cache_hit, load_time: started.elapsed() })
    }

    /// Compile a component and tell which worlds it implements, for a module registry that lists
    /// uploaded modules by world. `WrongWorld` if it implements none, saying for each world what
    /// the component lacks. The result turns into a typed module (`transform()`) without compiling
    /// again.
    pub fn inspect(&self, bytes: &[u8]) -> Result<CompiledComponent, PluginError> {
        let component = self.compile(bytes)?;
        let mut reasons = Vec::new();
        for world in World::ALL {
            match component.check(world) {
                Ok(()) => return Ok(component),
                Err(error) => reasons.push(error.to_string()),
            }
        }
        Err(PluginError::WrongWorld(format!("the component is of no world this host runs: {}", reasons.join("; "))))
    }

    /// Compile a component and check it is a transform: `compile`, then the world check (every
    /// import is one the host provides; it exports `sluice:plugin/transformer@0.1.0` with the right
    /// types).
    pub fn load_transform(&self, bytes: &[u8]) -> Result<TransformModule, PluginError> {
        self.compile(bytes)?.transform()
    }

    fn linker(&self, world: World) -> &Linker<HostState> {
        let idx = World::ALL.iter().position(|w| *w == world).expect("World::ALL lists every world");
        &self.inner.linkers[idx]
    }
}

/// The linker of one world: what every world imports, then the world's own imports.
fn world_linker(engine: &wasmtime::Engine, world: World) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    // WASI p2: std needs it linked (clocks, random, stdio, exit); what the guest may reach is
    // decided per instance by its `Grants`, which grant nothing by default.
    crate::wasi::add_to_linker(&mut linker)?;
    host::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)?;
    #[cfg(feature = "test-host-imports")]
    crate::test_imports::add_to_linker(&mut linker)?;
    world.add_imports(&mut linker)?;
    Ok(linker)
}

/// A compiled component, not yet bound to a world. Cheap to clone.
#[derive(Clone)]
pub struct CompiledComponent {
    engine: Engine,
    component: Component,
    digest: String,
    cache_hit: bool,
    load_time: Duration,
}

impl CompiledComponent {
    /// The sha256 of the component's bytes, lower-case hex: identifies a module version.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether compiling found the compilation in the on-disk cache.
    pub fn cache_hit(&self) -> bool {
        self.cache_hit
    }

    /// How long compiling (or loading the cached compilation) took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The worlds this component implements (none, or one: a component exporting two worlds'
    /// interfaces would be listed under each).
    pub fn worlds(&self) -> Vec<World> {
        World::ALL.into_iter().filter(|world| self.check(*world).is_ok()).collect()
    }

    /// This component as a transform, or `WrongWorld`.
    pub fn transform(&self) -> Result<TransformModule, PluginError> {
        TransformModule::new(self.clone())
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Link the component against `world`'s imports (not yet checking its exports).
    pub(crate) fn instance_pre(&self, world: World) -> Result<InstancePre<HostState>, PluginError> {
        self.engine.linker(world).instantiate_pre(&self.component).map_err(|e| self.wrong_world(world, &e))
    }

    /// Whether the component implements `world`: its imports are all provided, its exports match.
    fn check(&self, world: World) -> Result<(), PluginError> {
        world.check(&self.instance_pre(world)?).map_err(|e| self.wrong_world(world, &e))
    }

    /// `WrongWorld` saying what went wrong, what the world exports and what this component does.
    pub(crate) fn wrong_world(&self, world: World, error: &wasmtime::Error) -> PluginError {
        let engine = &self.engine.inner.engine;
        let exports: Vec<String> = self.component.component_type().exports(engine).map(|(name, _)| format!("`{name}`")).take(8).collect();
        let exports = if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") };
        PluginError::WrongWorld(format!("{error:#} (a {world} exports `{}`; this component exports {exports})", world.export()))
    }
}

pub(crate) fn compile(engine: &wasmtime::Engine, bytes: &[u8]) -> Result<Component, PluginError> {
    Component::new(engine, bytes).map_err(|e| PluginError::InvalidModule(format!("{e:#}")))
}

/// The 8-byte preamble: `\0asm`, then version 0x000d and layer 1 for a component (layer 0 and version
/// 1 for a core module). Checked first so the common mistakes get a precise message.
fn check_header(bytes: &[u8]) -> Result<(), PluginError> {
    let Some(preamble) = bytes.get(..8) else {
        return Err(PluginError::InvalidModule(format!("{} bytes is too short to be WebAssembly", bytes.len())));
    };
    if &preamble[..4] != b"\0asm" {
        return Err(PluginError::InvalidModule("not WebAssembly (the file does not start with `\\0asm`)".to_owned()));
    }
    if preamble[6..8] == [0, 0] {
        return Err(PluginError::InvalidModule(
            "a core WebAssembly module, not a component; build the plugin for the wasm32-wasip2 target".to_owned(),
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
    fn start(engine: wasmtime::Engine, tick: Duration) -> Result<Ticker, PluginError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".to_owned())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    engine.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Engine(format!("starting the epoch thread: {e}")))?;
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
