//! The engine: one per broker, shared by every world, module and instance (cheap to clone). It owns
//! the wasmtime engines, the epoch ticker, the compiled-module cache, the tier-up compiler thread,
//! and one linker per world and engine — the shared imports (WASI with bounded waits, `host`) plus
//! that world's own.
//!
//! Tiered compilation: a component that is not in the cache is compiled first by Winch, wasmtime's
//! single-pass baseline compiler (3–4× faster to compile than Cranelift here, BENCHMARKS.md; its code
//! runs 35–40 % slower), so a deploy serves sooner; the `wasm-tier-up` thread then compiles it with
//! Cranelift, writes that to the cache, and publishes it. Instances made after that run the
//! optimized code, and the runtimes replace a baseline instance at their next safe point
//! ([`Tier`], `superseded()` on every instance). Only Cranelift's code is cached: a restart or a
//! second deploy of the same bytes starts optimized.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, InstancePre, Linker};

use crate::bindings::host;
use crate::cache::{Cache, digest_hex};
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
    /// Which compilers make code: Winch then Cranelift (the default), or one of them.
    pub compilers: Compilers,
}

/// Which compilers an engine uses (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compilers {
    /// Winch first, for a quick start; Cranelift in the background, cached.
    #[default]
    Tiered,
    /// Cranelift only, in the caller: every compile takes Cranelift's time (up to seconds).
    Optimized,
    /// Winch only; nothing is cached. For tests of the baseline code, and for deploying many
    /// short-lived modules where compile time matters more than speed.
    Baseline,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cache_dir: None,
            cache_write: |path, bytes| std::fs::write(path, bytes),
            epoch_tick: EPOCH_TICK_DEFAULT,
            compilers: Compilers::default(),
        }
    }
}

/// Writes one compiled module into the cache directory (see [`EngineConfig::cache_write`]).
pub type CacheWrite = fn(&std::path::Path, &[u8]) -> std::io::Result<()>;

pub const EPOCH_TICK_DEFAULT: Duration = Duration::from_millis(10);

/// Components waiting for the tier-up thread. When it is full, `compile` compiles with Cranelift in
/// the caller instead (back-pressure on uploads, and no unbounded queue of module bytes).
const TIER_UP_QUEUE_MAX: usize = 16;

/// Which compiler made the code an instance runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Winch, the single-pass baseline compiler: what a component runs on between its first compile
    /// and the end of its Cranelift compile.
    Baseline,
    /// Cranelift with optimizations: what the cache holds and every instance ends up on.
    Optimized,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Baseline => "baseline",
            Tier::Optimized => "optimized",
        }
    }
}

/// The wasmtime engine, the linkers instances are made with, the epoch ticker, and the cache.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

/// One wasmtime engine (one compiler's code) and its linkers, one per world in `World::ALL` order.
pub(crate) struct Compiler {
    pub engine: wasmtime::Engine,
    linkers: Vec<Linker<HostState>>,
}

impl Compiler {
    fn new(config: &wasmtime::Config) -> Result<Compiler, PluginError> {
        let engine = wasmtime::Engine::new(config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let linkers = World::ALL
            .into_iter()
            .map(|world| world_linker(&engine, world).map_err(|e| PluginError::Engine(format!("linking the {world} world: {e:#}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Compiler { engine, linkers })
    }

    fn linker(&self, world: World) -> &Linker<HostState> {
        let idx = World::ALL.iter().position(|w| *w == world).expect("World::ALL lists every world");
        &self.linkers[idx]
    }
}

pub(crate) struct EngineInner {
    optimized: Compiler,
    /// Winch; `None` when tiering is off.
    baseline: Option<Compiler>,
    pub epoch_tick: Duration,
    cache: Option<Arc<Cache>>,
    /// Where baseline-compiled components go to be compiled by Cranelift; `None` when tiering is off.
    tier_up: Option<mpsc::SyncSender<TierUpJob>>,
    /// Ends the ticker thread when the engine is dropped (the sender's drop wakes it).
    _ticker: Ticker,
}

impl EngineInner {
    pub(crate) fn compiler(&self, tier: Tier) -> &Compiler {
        match (tier, &self.baseline) {
            (Tier::Baseline, Some(baseline)) => baseline,
            _ => &self.optimized,
        }
    }
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
        let optimized = Compiler::new(&wasm_config)?;
        let baseline = match config.compilers {
            Compilers::Tiered | Compilers::Baseline => {
                // Winch compiles the guest's functions; Cranelift still compiles the trampolines
                // (one per function the host can call: exported, or in a table), which for a module
                // with thousands of table entries took most of the baseline compile. They are tiny
                // and not worth optimizing: no egraph pass, single-pass register allocation.
                wasm_config
                    .strategy(wasmtime::Strategy::Winch)
                    .cranelift_opt_level(wasmtime::OptLevel::None)
                    .cranelift_regalloc_algorithm(wasmtime::RegallocAlgorithm::SinglePass);
                Some(Compiler::new(&wasm_config)?)
            }
            Compilers::Optimized => None,
        };
        // The cache holds Cranelift's code only.
        let cache = match config.compilers {
            Compilers::Baseline => None,
            _ => config.cache_dir.map(|dir| Cache::open(dir, &optimized.engine, config.cache_write).map(Arc::new)).transpose()?,
        };
        let tier_up = match config.compilers {
            Compilers::Tiered => Some(TierUp::start(optimized.engine.clone(), cache.clone())?),
            _ => None,
        };
        let engines = std::iter::once(&optimized).chain(&baseline).map(|c| c.engine.clone()).collect();
        let ticker = Ticker::start(engines, config.epoch_tick)?;
        Ok(Engine { inner: Arc::new(EngineInner { optimized, baseline, epoch_tick: config.epoch_tick, cache, tier_up, _ticker: ticker }) })
    }

    /// Validate and compile a component (or load its compilation from the cache), whatever its
    /// world. Checks, in order: size, that the bytes are WebAssembly and a component (not a core
    /// module), and that wasmtime compiles it. An uncached component is compiled by Winch here and
    /// by Cranelift in the background (the module doc); with tiering off, or where Winch refuses
    /// the component, Cranelift compiles it here, which takes up to seconds for large modules
    /// (BENCHMARKS.md): call it on a blocking thread, never on the data path.
    pub fn compile(&self, bytes: &[u8]) -> Result<CompiledComponent, PluginError> {
        if bytes.len() > MODULE_BYTES_MAX {
            return Err(PluginError::InvalidModule(format!("{} bytes; the limit is {MODULE_BYTES_MAX}", bytes.len())));
        }
        check_header(bytes)?;
        let started = Instant::now();
        let inner = &self.inner;
        let digest = digest_hex(bytes);
        let cached = inner.cache.as_ref().and_then(|cache| cache.load(&inner.optimized.engine, &digest));
        let (code, cache_hit) = match cached {
            Some(component) => (Code::new(None, Some(component)), true),
            None => (self.compile_uncached(bytes, &digest)?, false),
        };
        Ok(CompiledComponent { engine: self.clone(), code, digest, cache_hit, load_time: started.elapsed() })
    }

    fn compile_uncached(&self, bytes: &[u8], digest: &str) -> Result<Arc<Code>, PluginError> {
        let inner = &self.inner;
        if let Some(baseline) = &inner.baseline {
            match (compile(&baseline.engine, bytes), &inner.tier_up) {
                (Ok(component), None) => return Ok(Code::new(Some(component), None)),
                (Ok(component), Some(tier_up)) => {
                    let code = Arc::new(Code { baseline: Some(component), optimized: OnceLock::new(), done: Done::default() });
                    let job = TierUpJob { code: Arc::downgrade(&code), bytes: bytes.to_vec(), digest: digest.to_owned() };
                    // A full queue (or a gone thread): compile the optimized code here instead.
                    if tier_up.try_send(job).is_ok() {
                        return Ok(code);
                    }
                }
                (Err(e), None) => return Err(e),
                // Winch supports less than Cranelift (some SIMD, for one); Cranelift decides.
                (Err(e), Some(_)) => tracing::debug!(digest, "the baseline compiler refused the component ({e}); compiling with Cranelift"),
            }
        }
        let component = compile(&inner.optimized.engine, bytes)?;
        if let Some(cache) = &inner.cache {
            cache.store(digest, &component);
        }
        Ok(Code::new(None, Some(component)))
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
                Ok(()) => {
                    // A connector waits for optimized code before every instance (its state lives
                    // in the instance), so it gains nothing from the baseline: compile it here, at
                    // upload, as before tiering, not when its first task starts.
                    if matches!(world, World::Source | World::Sink) {
                        component.wait_optimized();
                    }
                    return Ok(component);
                }
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

/// A component's compiled code: baseline code from the first compile (if it was not cached) and
/// the optimized code once the tier-up thread has made it. Shared by every clone of a
/// [`CompiledComponent`], so every holder sees the tier-up.
pub(crate) struct Code {
    baseline: Option<Component>,
    optimized: OnceLock<Component>,
    /// Set when the tier-up has finished, with or without optimized code, for `wait_optimized`.
    done: Done,
}

#[derive(Default)]
struct Done {
    finished: Mutex<bool>,
    changed: Condvar,
}

impl Code {
    /// Code that will not change tier.
    fn new(baseline: Option<Component>, optimized: Option<Component>) -> Arc<Code> {
        let code = Code { baseline, optimized: OnceLock::new(), done: Done::default() };
        code.finish(optimized);
        Arc::new(code)
    }

    /// The best code compiled so far.
    fn current(&self) -> (Tier, &Component) {
        match (self.optimized.get(), &self.baseline) {
            (Some(component), _) => (Tier::Optimized, component),
            (None, Some(component)) => (Tier::Baseline, component),
            (None, None) => unreachable!("a Code is made with baseline or optimized code"),
        }
    }

    pub(crate) fn tier(&self) -> Tier {
        self.current().0
    }

    fn finish(&self, optimized: Option<Component>) {
        if let Some(component) = optimized {
            let _ = self.optimized.set(component);
        }
        *self.done.finished.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.done.changed.notify_all();
    }

    fn wait(&self) {
        let mut finished = self.done.finished.lock().unwrap_or_else(|e| e.into_inner());
        while !*finished {
            finished = self.done.changed.wait(finished).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A compiled component, not yet bound to a world. Cheap to clone.
#[derive(Clone)]
pub struct CompiledComponent {
    engine: Engine,
    code: Arc<Code>,
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

    /// How long compiling (or loading the cached compilation) took, until the first runnable code:
    /// with tiering, Winch's compile.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The compiler of the best code so far: instances made now run it.
    pub fn tier(&self) -> Tier {
        self.code.tier()
    }

    /// Block until the background Cranelift compile of this component has finished (at once if it
    /// has, or there is none). Afterwards `tier()` is `Optimized`, unless Cranelift failed where
    /// Winch did not (logged; the baseline code keeps serving).
    pub fn wait_optimized(&self) {
        self.code.wait();
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

    pub(crate) fn code(&self) -> &Arc<Code> {
        &self.code
    }

    /// Link the best code so far against `world`'s imports (not yet checking its exports).
    pub(crate) fn instance_pre(&self, world: World) -> Result<(Tier, InstancePre<HostState>), PluginError> {
        let (tier, component) = self.code.current();
        let pre = self.engine.inner.compiler(tier).linker(world).instantiate_pre(component).map_err(|e| self.wrong_world(world, &e))?;
        Ok((tier, pre))
    }

    /// Whether the component implements `world`: its imports are all provided, its exports match.
    fn check(&self, world: World) -> Result<(), PluginError> {
        world.check(&self.instance_pre(world)?.1).map_err(|e| self.wrong_world(world, &e))
    }

    /// `WrongWorld` saying what went wrong, what the world exports and what this component does.
    pub(crate) fn wrong_world(&self, world: World, error: &wasmtime::Error) -> PluginError {
        let (tier, component) = self.code.current();
        let engine = &self.engine.inner.compiler(tier).engine;
        let exports: Vec<String> = component.component_type().exports(engine).map(|(name, _)| format!("`{name}`")).take(8).collect();
        let exports = if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") };
        PluginError::WrongWorld(format!("{error:#} (a {world} exports `{}`; this component exports {exports})", world.export()))
    }
}

/// A world's typed pre-instantiation (`TransformPre`, `SourcePre`, ...) of a component, for the
/// component's best code: made again when the tier changes.
pub(crate) struct WorldPre<P> {
    world: World,
    make: fn(InstancePre<HostState>) -> wasmtime::Result<P>,
    baseline: Option<P>,
    optimized: Arc<OnceLock<P>>,
}

impl<P: Clone> Clone for WorldPre<P> {
    fn clone(&self) -> Self {
        WorldPre { world: self.world, make: self.make, baseline: self.baseline.clone(), optimized: Arc::clone(&self.optimized) }
    }
}

impl<P: Clone> WorldPre<P> {
    /// Checks that `component` implements `world` (with its best code so far).
    pub fn new(
        component: &CompiledComponent,
        world: World,
        make: fn(InstancePre<HostState>) -> wasmtime::Result<P>,
    ) -> Result<WorldPre<P>, PluginError> {
        let mut pres = WorldPre { world, make, baseline: None, optimized: Arc::new(OnceLock::new()) };
        let (tier, pre) = pres.make(component)?;
        match tier {
            Tier::Baseline => pres.baseline = Some(pre),
            Tier::Optimized => drop(pres.optimized.set(pre)),
        }
        Ok(pres)
    }

    fn make(&self, component: &CompiledComponent) -> Result<(Tier, P), PluginError> {
        let (tier, pre) = component.instance_pre(self.world)?;
        let pre = (self.make)(pre).map_err(|e| component.wrong_world(self.world, &e))?;
        Ok((tier, pre))
    }

    /// The pre-instantiation of the component's best code so far, and its tier.
    pub fn current(&self, component: &CompiledComponent) -> Result<(Tier, P), PluginError> {
        if let Some(pre) = self.optimized.get() {
            return Ok((Tier::Optimized, pre.clone()));
        }
        match (component.tier(), &self.baseline) {
            (Tier::Baseline, Some(pre)) => Ok((Tier::Baseline, pre.clone())),
            _ => {
                let (tier, pre) = self.make(component)?;
                if tier == Tier::Optimized {
                    let _ = self.optimized.set(pre.clone());
                }
                Ok((tier, pre))
            }
        }
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

/// Increments the engines' epochs every tick until dropped.
struct Ticker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engines: Vec<wasmtime::Engine>, tick: Duration) -> Result<Ticker, PluginError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".to_owned())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    for engine in &engines {
                        engine.increment_epoch();
                    }
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

/// One component for the tier-up thread: its code (skipped if every holder has dropped it by then)
/// and its bytes.
struct TierUpJob {
    code: Weak<Code>,
    bytes: Vec<u8>,
    digest: String,
}

/// The `wasm-tier-up` thread: compiles baseline components with Cranelift, one at a time, in the
/// order they were compiled; caches and publishes the result. It ends when the engine is dropped
/// (its queue's sender with it); a compile in progress then finishes first, unobserved.
struct TierUp;

impl TierUp {
    fn start(engine: wasmtime::Engine, cache: Option<Arc<Cache>>) -> Result<mpsc::SyncSender<TierUpJob>, PluginError> {
        let (jobs, queued) = mpsc::sync_channel::<TierUpJob>(TIER_UP_QUEUE_MAX);
        std::thread::Builder::new()
            .name("wasm-tier-up".to_owned())
            .spawn(move || {
                for job in queued {
                    if job.code.strong_count() == 0 {
                        continue;
                    }
                    let started = Instant::now();
                    // Another compile of the same bytes may have cached the code meanwhile.
                    let cached = cache.as_ref().and_then(|cache| cache.load(&engine, &job.digest));
                    let compiled = match cached {
                        Some(component) => Ok(component),
                        // A compiler panic must not end the thread: waiters (`wait_optimized`) would hang.
                        None => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            let component = compile(&engine, &job.bytes)?;
                            if let Some(cache) = &cache {
                                cache.store(&job.digest, &component);
                            }
                            Ok(component)
                        }))
                        .unwrap_or_else(|_| Err(PluginError::Engine("Cranelift panicked".to_owned()))),
                    };
                    let optimized = match compiled {
                        Ok(component) => {
                            tracing::info!(
                                digest = job.digest,
                                compile_ms = started.elapsed().as_millis() as u64,
                                "optimized code ready; instances move to it at their next call boundary"
                            );
                            Some(component)
                        }
                        Err(e) => {
                            tracing::warn!(
                                digest = job.digest,
                                "Cranelift could not compile a component Winch compiled; it keeps running baseline code: {e}"
                            );
                            None
                        }
                    };
                    if let Some(code) = job.code.upgrade() {
                        code.finish(optimized);
                    }
                }
            })
            .map_err(|e| PluginError::Engine(format!("starting the tier-up thread: {e}")))?;
        Ok(jobs)
    }
}
