//! The supervisor: every task of every deployment (a transform's input partition, a connector's
//! task, a mirror's partition) runs on a thread of its own, driven by one loop that every runtime
//! shares — start, step, back off after infrastructure errors, stop on a policy failure, pause,
//! resume, restart, stop — and a reconcile tick that starts the tasks a deployment gained (an input
//! topic grew new partitions) within [`RECONCILE_INTERVAL`].
//!
//! A runtime says only what is special about it, as a [`Task`]: how to start (fence the previous
//! owner, load the committed position) and one step of work (read, process, commit). Guest failures
//! the error policy turns into a stop are [`Step::Failed`]: the task shows `FAILED` with the error
//! until resumed or restarted. Anything else that goes wrong is a [`RuntimeError`] from `start` or
//! `step`: the loop resets the task (it aborts what it had open) and tries again with exponential
//! backoff ([`BACKOFF_MIN`]..[`BACKOFF_MAX`]), showing the error meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use sluice_broker::host::{Host, StopFlag};

use crate::error::RuntimeError;

/// How often every deployment's wanted tasks are compared with the running ones.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(2);
/// Backoff after the first infrastructure error of a task, doubled up to `BACKOFF_MAX`.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often a paused or failed task looks at its flags.
const PARKED_POLL: Duration = Duration::from_millis(200);

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Work was done; step again at once.
    Progress,
    /// Nothing to do; the task already waited a bounded time (for input, or its poll interval).
    Idle,
    /// The error policy stopped the task: it shows `FAILED` with this message until resumed.
    Failed(String),
}

/// One unit of work a runtime supervises. Methods block; they run on the task's own thread.
pub trait Task: Send + 'static {
    /// Prepares the task: fences any previous owner, loads the committed position. Called before the
    /// first step, after every error, and also while paused (so a deployment's start position is
    /// pinned at deploy time even when it starts paused). Retried with backoff until it succeeds.
    fn start(&mut self, control: &TaskControl) -> Result<(), RuntimeError>;
    /// One step: read, process, commit.
    fn step(&mut self, control: &TaskControl) -> Result<Step, RuntimeError>;
    /// Drops in-flight work (aborts an open transaction). Called after an error and at stop; the
    /// next `start` begins from the committed position.
    fn reset(&mut self);
}

/// A task's state, with Kafka Connect's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TaskState {
    Running,
    Paused,
    Failed,
    /// Stopped by the operator (the deployment and its positions are kept).
    Stopped,
    /// Wanted but not started yet (starting, or its thread could not be created).
    Unassigned,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "RUNNING",
            TaskState::Paused => "PAUSED",
            TaskState::Failed => "FAILED",
            TaskState::Stopped => "STOPPED",
            TaskState::Unassigned => "UNASSIGNED",
        }
    }
}

/// What an operator sees of one task.
#[derive(Debug, Clone, Serialize)]
pub struct TaskStatus {
    pub id: i32,
    pub state: TaskState,
    /// Why it is FAILED (policy stop), or the last infrastructure error it is backing off from.
    pub error: Option<String>,
    /// Infrastructure errors since it started (each followed by a reset and a backoff).
    pub retries: u64,
}

/// The flags a task's thread reads: shared with the deployment (pause, stop) or its own.
pub struct TaskControl {
    id: i32,
    deployment: Arc<DeploymentFlags>,
    /// Raised at the task's stop (and at its deployment's: that stop signals every task); the host
    /// calls of a task made with [`TaskControl::host`] give up their retries once it is.
    stop: StopFlag,
    failure: Mutex<Option<String>>,
    last_error: Mutex<Option<String>>,
    retries: AtomicU64,
    started: AtomicBool,
    /// Wakes a sleeping task at stop.
    wake: Condvar,
    wake_lock: Mutex<()>,
}

impl TaskControl {
    pub fn id(&self) -> i32 {
        self.id
    }

    /// A control that is never stopped or paused, for tests of code that takes one.
    pub fn detached(id: i32) -> TaskControl {
        TaskControl::new(id, Arc::default())
    }

    /// A fresh control for task `id` of the deployment whose flags are `deployment`.
    fn new(id: i32, deployment: Arc<DeploymentFlags>) -> TaskControl {
        TaskControl {
            id,
            deployment,
            stop: StopFlag::default(),
            failure: Mutex::new(None),
            last_error: Mutex::new(None),
            retries: AtomicU64::new(0),
            started: AtomicBool::new(false),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
        }
    }

    /// Whether the task should return from what it is doing (stop or pause requested).
    pub fn interrupted(&self) -> bool {
        self.stopping() || self.deployment.paused.load(Ordering::Acquire)
    }

    pub fn stopping(&self) -> bool {
        self.stop.raised() || self.deployment.stop.load(Ordering::Acquire)
    }

    /// `host` for this task: its calls that wait on the cluster (a coordinator or leader moving)
    /// stop retrying when the task stops, so an undeploy never waits out a failover.
    pub fn host(&self, host: &Host) -> Host {
        host.stopping_on(self.stop.clone())
    }

    /// Sleeps up to `duration`, waking early at stop. Returns whether the task should stop.
    pub fn sleep(&self, duration: Duration) -> bool {
        let mut guard = self.wake_lock.lock();
        if !self.stopping() {
            self.wake.wait_for(&mut guard, duration);
        }
        self.stopping()
    }

    fn status(&self) -> TaskStatus {
        let failure = self.failure.lock().clone();
        let state = if self.stopping() {
            TaskState::Stopped
        } else if failure.is_some() {
            TaskState::Failed
        } else if self.deployment.paused.load(Ordering::Acquire) {
            TaskState::Paused
        } else if self.started.load(Ordering::Acquire) {
            TaskState::Running
        } else {
            TaskState::Unassigned
        };
        TaskStatus {
            id: self.id,
            state,
            error: failure.or_else(|| self.last_error.lock().clone()),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    fn signal_stop(&self) {
        self.stop.raise();
        let _guard = self.wake_lock.lock();
        self.wake.notify_all();
    }
}

#[derive(Default)]
struct DeploymentFlags {
    paused: AtomicBool,
    stop: AtomicBool,
}

struct RunningTask {
    control: Arc<TaskControl>,
    thread: JoinHandle<()>,
}

/// Makes the task for an id (a partition, a task number).
pub type TaskFactory = Box<dyn Fn(i32) -> Result<Box<dyn Task>, RuntimeError> + Send + Sync>;
/// Which task ids a deployment wants now (for example, the input topic's partitions).
pub type WantedTasks = Box<dyn Fn() -> Vec<i32> + Send + Sync>;

/// One deployment's tasks.
pub struct TaskSet {
    /// `<kind>-<name>`, for thread names and logs.
    label: String,
    flags: Arc<DeploymentFlags>,
    factory: TaskFactory,
    wanted: WantedTasks,
    tasks: Mutex<BTreeMap<i32, RunningTask>>,
    /// Whether tasks no longer wanted are stopped ([`TaskSet::new_moving`]); otherwise a task,
    /// once started, runs until the set stops (a deleted input shows as its tasks' errors).
    stops_unwanted: bool,
    /// Tasks no longer wanted, told to stop and not yet exited; an id here is not started again
    /// until its old task is gone.
    retiring: Mutex<Vec<(i32, RunningTask)>>,
}

impl TaskSet {
    /// A deployment whose tasks are `wanted()`, each made by `factory`. Nothing runs until
    /// [`TaskSet::reconcile`] (the supervisor calls it at once and then every tick).
    pub fn new(kind: &str, name: &str, paused: bool, factory: TaskFactory, wanted: WantedTasks) -> Arc<TaskSet> {
        TaskSet::make(kind, name, paused, factory, wanted, false)
    }

    /// As [`TaskSet::new`], for tasks that move between brokers (in a cluster, an input partition's
    /// task runs on the partition's leader): a task no longer wanted here is stopped.
    pub fn new_moving(kind: &str, name: &str, paused: bool, factory: TaskFactory, wanted: WantedTasks) -> Arc<TaskSet> {
        TaskSet::make(kind, name, paused, factory, wanted, true)
    }

    fn make(kind: &str, name: &str, paused: bool, factory: TaskFactory, wanted: WantedTasks, stops_unwanted: bool) -> Arc<TaskSet> {
        let flags = Arc::new(DeploymentFlags::default());
        flags.paused.store(paused, Ordering::Release);
        Arc::new(TaskSet {
            label: format!("{kind}-{name}"),
            flags,
            factory,
            wanted,
            tasks: Mutex::new(BTreeMap::new()),
            stops_unwanted,
            retiring: Mutex::new(Vec::new()),
        })
    }

    /// Starts the wanted tasks that are not running and, in a set made with
    /// [`TaskSet::new_moving`], stops the running ones no longer wanted (a partition whose
    /// leadership moved to another broker: its task runs there now). A stopped task finishes in
    /// the background (it aborts what it had open); its id starts again only once it has exited.
    pub fn reconcile(&self) {
        if self.flags.stop.load(Ordering::Acquire) {
            return;
        }
        let wanted = (self.wanted)();
        let mut tasks = self.tasks.lock();
        // Checked again under the lock: `stop` raises the flag before it takes the tasks, so a
        // reconcile that began before `stop` cannot start a task after `stop` has taken the set
        // (that task would run unstopped beside the deployment's replacement).
        if self.flags.stop.load(Ordering::Acquire) {
            return;
        }
        let mut retiring = self.retiring.lock();
        for (_, task) in retiring.extract_if(.., |(_, task)| task.thread.is_finished()) {
            let _ = task.thread.join();
        }
        let unwanted: Vec<i32> =
            if self.stops_unwanted { tasks.keys().filter(|id| !wanted.contains(id)).copied().collect() } else { Vec::new() };
        for id in unwanted {
            if let Some(task) = tasks.remove(&id) {
                tracing::info!(deployment = self.label, task = id, "task no longer wanted here; stopping it");
                task.control.signal_stop();
                retiring.push((id, task));
            }
        }
        for id in wanted {
            if tasks.contains_key(&id) || retiring.iter().any(|(old, _)| *old == id) {
                continue;
            }
            match self.spawn(id) {
                Ok(task) => {
                    tasks.insert(id, task);
                }
                Err(error) => tracing::error!(deployment = self.label, task = id, %error, "cannot start a task; will retry"),
            }
        }
    }

    fn spawn(&self, id: i32) -> Result<RunningTask, RuntimeError> {
        let task = (self.factory)(id)?;
        let control = Arc::new(TaskControl::new(id, Arc::clone(&self.flags)));
        let thread_control = Arc::clone(&control);
        let label = self.label.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{}-{id}", self.label))
            .spawn(move || drive(task, &thread_control, &label))
            .map_err(|e| RuntimeError::Thread(e.to_string()))?;
        Ok(RunningTask { control, thread })
    }

    pub fn set_paused(&self, paused: bool) {
        self.flags.paused.store(paused, Ordering::Release);
    }

    pub fn paused(&self) -> bool {
        self.flags.paused.load(Ordering::Acquire)
    }

    /// Clears the failure of failed tasks (or of all with `only_failed = false`), so they retry what
    /// they failed on.
    pub fn clear_failures(&self, only_failed: bool) {
        for task in self.tasks.lock().values() {
            let mut failure = task.control.failure.lock();
            if failure.is_some() || !only_failed {
                *failure = None;
                *task.control.last_error.lock() = None;
            }
        }
    }

    /// Every task's status, by id.
    pub fn statuses(&self) -> Vec<TaskStatus> {
        self.tasks.lock().values().map(|t| t.control.status()).collect()
    }

    /// Stops every task and waits for each to reset (abort what it had open) and exit.
    pub fn stop(&self) {
        self.flags.stop.store(true, Ordering::Release);
        let tasks = std::mem::take(&mut *self.tasks.lock());
        let retiring = std::mem::take(&mut *self.retiring.lock());
        for task in tasks.values() {
            task.control.signal_stop();
        }
        for (_, task) in tasks.into_iter().chain(retiring) {
            let _ = task.thread.join();
        }
    }
}

/// The loop every task runs.
fn drive(mut task: Box<dyn Task>, control: &TaskControl, label: &str) {
    tracing::info!(deployment = label, task = control.id, "task started");
    let mut backoff = BACKOFF_MIN;
    let mut ready = false;
    while !control.stopping() {
        if !ready {
            match task.start(control) {
                Ok(()) => {
                    ready = true;
                    control.started.store(true, Ordering::Release);
                    *control.last_error.lock() = None;
                }
                Err(error) => {
                    backoff = backed_off(control, label, &error, backoff);
                    task.reset();
                    continue;
                }
            }
        }
        if control.deployment.paused.load(Ordering::Acquire) || control.failure.lock().is_some() {
            control.sleep(PARKED_POLL);
            continue;
        }
        match task.step(control) {
            Ok(Step::Progress) | Ok(Step::Idle) => backoff = BACKOFF_MIN,
            Ok(Step::Failed(message)) => {
                tracing::error!(deployment = label, task = control.id, error = %message, "task failed; it stays FAILED until resumed or restarted");
                *control.failure.lock() = Some(message);
                task.reset();
                ready = false;
            }
            Err(error) => {
                backoff = backed_off(control, label, &error, backoff);
                task.reset();
                ready = false;
            }
        }
    }
    task.reset();
    tracing::info!(deployment = label, task = control.id, "task stopped");
}

fn backed_off(control: &TaskControl, label: &str, error: &RuntimeError, backoff: Duration) -> Duration {
    control.retries.fetch_add(1, Ordering::Relaxed);
    *control.last_error.lock() = Some(error.to_string());
    tracing::warn!(deployment = label, task = control.id, %error, backoff_ms = backoff.as_millis() as u64, "task error; retrying");
    control.sleep(backoff);
    (backoff * 2).min(BACKOFF_MAX)
}

/// Every deployment of one runtime, reconciled on a background thread.
pub struct Supervisor {
    sets: Arc<Mutex<BTreeMap<String, Arc<TaskSet>>>>,
    ticker: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
}

impl Supervisor {
    /// Starts the reconcile thread (`<kind>-reconcile`).
    pub fn new(kind: &str) -> Result<Supervisor, RuntimeError> {
        let sets: Arc<Mutex<BTreeMap<String, Arc<TaskSet>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_sets, thread_stop) = (Arc::clone(&sets), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name(format!("{kind}-reconcile"))
            .spawn(move || {
                while !thread_stop.load(Ordering::Acquire) {
                    std::thread::sleep(PARKED_POLL);
                    let now = std::time::Instant::now();
                    let due: Vec<Arc<TaskSet>> = thread_sets.lock().values().cloned().collect();
                    for set in due {
                        set.reconcile();
                    }
                    std::thread::sleep(RECONCILE_INTERVAL.saturating_sub(now.elapsed()).saturating_sub(PARKED_POLL));
                }
            })
            .map_err(|e| RuntimeError::Thread(e.to_string()))?;
        Ok(Supervisor { sets, ticker: Mutex::new(Some((stop, thread))) })
    }

    /// Adds (or replaces, stopping the old one first) a deployment and starts its tasks.
    pub fn insert(&self, name: &str, set: Arc<TaskSet>) {
        if let Some(old) = self.remove(name) {
            old.stop();
        }
        set.reconcile();
        self.sets.lock().insert(name.to_string(), set);
    }

    /// Takes a deployment out of reconciliation (its tasks keep running until `stop`).
    pub fn remove(&self, name: &str) -> Option<Arc<TaskSet>> {
        self.sets.lock().remove(name)
    }

    pub fn get(&self, name: &str) -> Option<Arc<TaskSet>> {
        self.sets.lock().get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.sets.lock().keys().cloned().collect()
    }

    /// Stops every deployment (broker shutdown) and the reconcile thread.
    pub fn stop_all(&self) {
        if let Some((stop, thread)) = self.ticker.lock().take() {
            stop.store(true, Ordering::Release);
            let _ = thread.join();
        }
        let sets: Vec<Arc<TaskSet>> = std::mem::take(&mut *self.sets.lock()).into_values().collect();
        for set in &sets {
            set.flags.stop.store(true, Ordering::Release);
            for task in set.tasks.lock().values() {
                task.control.signal_stop();
            }
        }
        for set in sets {
            set.stop();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicI32;

    use super::*;

    struct Flaky {
        starts: Arc<AtomicI32>,
        steps: Arc<AtomicI32>,
        fail_first_starts: i32,
        fail_at_step: Option<i32>,
    }

    impl Task for Flaky {
        fn start(&mut self, _: &TaskControl) -> Result<(), RuntimeError> {
            let n = self.starts.fetch_add(1, Ordering::SeqCst);
            if n < self.fail_first_starts { Err(RuntimeError::Thread(format!("start {n} refused"))) } else { Ok(()) }
        }

        fn step(&mut self, control: &TaskControl) -> Result<Step, RuntimeError> {
            let n = self.steps.fetch_add(1, Ordering::SeqCst);
            if Some(n) == self.fail_at_step {
                return Ok(Step::Failed("bad record".into()));
            }
            control.sleep(Duration::from_millis(5));
            Ok(Step::Idle)
        }

        fn reset(&mut self) {}
    }

    fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn tasks_back_off_fail_resume_and_follow_new_partitions() {
        let supervisor = Supervisor::new("test").unwrap();
        let partitions = Arc::new(AtomicI32::new(1));
        let (starts, steps) = (Arc::new(AtomicI32::new(0)), Arc::new(AtomicI32::new(0)));
        let (s, t, p) = (Arc::clone(&starts), Arc::clone(&steps), Arc::clone(&partitions));
        let set = TaskSet::new(
            "test",
            "d",
            false,
            Box::new(move |id| {
                Ok(Box::new(Flaky {
                    starts: Arc::clone(&s),
                    steps: Arc::clone(&t),
                    fail_first_starts: 2,
                    fail_at_step: (id == 0).then_some(3),
                }) as Box<dyn Task>)
            }),
            Box::new(move || (0..p.load(Ordering::SeqCst)).collect()),
        );
        supervisor.insert("d", Arc::clone(&set));
        wait_for("task 0 to fail by policy", || set.statuses().first().is_some_and(|s| s.state == TaskState::Failed));
        let status = &set.statuses()[0];
        assert_eq!(status.error.as_deref(), Some("bad record"));
        assert_eq!(status.retries, 2, "two refused starts, each backed off");

        set.clear_failures(true);
        wait_for("task 0 to run again", || set.statuses()[0].state == TaskState::Running);

        partitions.store(3, Ordering::SeqCst);
        wait_for("the reconcile tick to start tasks 1 and 2", || set.statuses().len() == 3);

        set.set_paused(true);
        assert!(set.statuses().iter().all(|s| s.state == TaskState::Paused));
        supervisor.stop_all();
        assert!(set.statuses().is_empty(), "stopped tasks are gone");
    }

    /// A task that holds on for a while after it is told to stop (a runner aborting its transaction).
    struct Lingering {
        running: Arc<Mutex<Vec<i32>>>,
        overlapped: Arc<AtomicBool>,
        id: i32,
    }

    impl Task for Lingering {
        fn start(&mut self, _: &TaskControl) -> Result<(), RuntimeError> {
            let mut running = self.running.lock();
            if running.contains(&self.id) {
                self.overlapped.store(true, Ordering::SeqCst);
            }
            running.push(self.id);
            Ok(())
        }

        fn step(&mut self, control: &TaskControl) -> Result<Step, RuntimeError> {
            control.sleep(Duration::from_millis(5));
            Ok(Step::Idle)
        }

        fn reset(&mut self) {
            std::thread::sleep(Duration::from_millis(300));
            self.running.lock().retain(|id| *id != self.id);
        }
    }

    #[test]
    fn tasks_no_longer_wanted_stop_and_return_only_after_their_predecessor_exited() {
        let supervisor = Supervisor::new("test").unwrap();
        let wanted = Arc::new(Mutex::new(vec![0, 1, 2]));
        let running: Arc<Mutex<Vec<i32>>> = Arc::default();
        let overlapped = Arc::new(AtomicBool::new(false));
        let (w, r, o) = (Arc::clone(&wanted), Arc::clone(&running), Arc::clone(&overlapped));
        let set = TaskSet::new_moving(
            "test",
            "moving",
            false,
            Box::new(move |id| Ok(Box::new(Lingering { running: Arc::clone(&r), overlapped: Arc::clone(&o), id }) as Box<dyn Task>)),
            Box::new(move || w.lock().clone()),
        );
        supervisor.insert("moving", Arc::clone(&set));
        wait_for("three running tasks", || running.lock().len() == 3);

        // Partition 1's leadership moves away: its task stops; the others keep running.
        *wanted.lock() = vec![0, 2];
        set.reconcile();
        assert_eq!(set.statuses().iter().map(|s| s.id).collect::<Vec<_>>(), vec![0, 2]);
        // …and comes back before the old task has finished resetting: no second task 1 meanwhile,
        // one once the old one is gone.
        *wanted.lock() = vec![0, 1, 2];
        set.reconcile();
        assert_eq!(set.statuses().len(), 2, "task 1 waits for its predecessor");
        wait_for("task 1 to start again", || {
            set.reconcile();
            set.statuses().len() == 3 && running.lock().contains(&1)
        });
        supervisor.stop_all();
        assert!(running.lock().is_empty(), "every task reset at stop");
        assert!(!overlapped.load(Ordering::SeqCst), "two tasks 1 ran at once");
    }
}
