//! Every size that crosses into or out of a guest has a named maximum here.

use crate::PluginError;

/// Per-instance resource limits, set at deploy time and changeable between calls
/// ([`crate::Instance::set_limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Cap on the guest's linear memory (all memories of the component together; a Rust component
    /// has one). Growing past it stops the call with `OutOfMemory`. Memory is never shrunk: lowering the cap below what the
    /// guest already has makes its next growth fail.
    pub memory_bytes: usize,
    /// How long one call (instantiation and `init`, or one batch) may run, in milliseconds of
    /// wall-clock time, enforced by epoch interruption at the engine's tick granularity. Time the
    /// host spends inside imports that wait on something outside the guest (a database, for the
    /// coming `sql` capability) is not charged, up to [`HOST_WAIT_MS_PER_CALL_MAX`]; time the guest
    /// itself spends blocked in WASI (a sleep) is charged, and a wait that would outlast the
    /// budget ends the call at once. So this is the guest's CPU time unless the host is
    /// oversubscribed.
    pub cpu_ms_per_call: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_bytes: MEMORY_BYTES_DEFAULT, cpu_ms_per_call: CPU_MS_PER_CALL_DEFAULT }
    }
}

pub const MEMORY_BYTES_DEFAULT: usize = 64 << 20;
/// A guest needs a few pages for its stack and data; below this nothing useful runs.
pub const MEMORY_BYTES_MIN: usize = 1 << 20;
/// wasm32 addresses 4 GiB.
pub const MEMORY_BYTES_MAX: usize = 4 << 30;
pub const CPU_MS_PER_CALL_DEFAULT: u64 = 2_000;
pub const CPU_MS_PER_CALL_MIN: u64 = 1;
pub const CPU_MS_PER_CALL_MAX: u64 = 600_000;

/// The largest component `Engine::load` accepts.
pub const MODULE_BYTES_MAX: usize = 64 << 20;
/// Input records per `process` call (the broker's batches are smaller).
pub const INPUT_RECORDS_PER_CALL_MAX: usize = 10_000;
/// Output records one `process` call may return (fan-out of a full input batch to several topics).
pub const OUTPUT_RECORDS_PER_CALL_MAX: usize = 100_000;
/// Key + value + header bytes of one output record: Kafka's default `max.message.bytes`.
pub const OUTPUT_RECORD_BYTES_MAX: usize = 1 << 20;
/// Bytes the host copies out of a guest in one go: the whole output of one call (keys, values and
/// headers, plus the host-side size of every record and header struct), or the arguments of one
/// import call (a log message before truncation). Checked while lifting, before each allocation
/// (wasmtime's "hostcall fuel"), so output records that alias one guest buffer cannot make the host
/// allocate more than this, however many there are.
pub const OUTPUT_BYTES_PER_CALL_MAX: usize = 128 << 20;
/// Headers on one output record.
pub const OUTPUT_HEADERS_PER_RECORD_MAX: usize = 1_024;
/// Records one source `poll` may return (the broker writes them in one transaction).
pub const SOURCE_RECORDS_PER_POLL_MAX: usize = 10_000;
/// Source positions one `poll` may return.
pub const SOURCE_POSITIONS_PER_POLL_MAX: usize = 1_000;
/// Source positions handed to `init`: every position a connector has saved (the connector
/// runtime keeps at most this many per connector).
pub const SOURCE_POSITIONS_PER_INIT_MAX: usize = 10_000;
/// One source position's partition or offset, as JSON text.
pub const SOURCE_POSITION_BYTES_MAX: usize = 4_096;
/// Topics named by one sink batch.
pub const SINK_TOPICS_PER_BATCH_MAX: usize = 1_024;
/// Config keys a connector may declare in `describe`, and the bytes of its version and documentation.
pub const CONNECTOR_KEYS_MAX: usize = 256;
pub const CONNECTOR_SPEC_TEXT_BYTES_MAX: usize = 4_096;
/// Output topics one deployment may name.
pub const OUTPUTS_MAX: usize = 64;
/// Most topic or group names a mirror policy is asked about in one call.
pub const POLICY_NAMES_PER_CALL_MAX: usize = 10_000;
/// Output topic name length (Kafka's limit on topic names).
pub const OUTPUT_NAME_BYTES_MAX: usize = 249;
/// Deploy-time configuration entries and their total size.
pub const CONFIG_ENTRIES_MAX: usize = 1_024;
pub const CONFIG_BYTES_MAX: usize = 1 << 20;
/// Gauge names one instance may set with `host.set-gauge`, and their length.
pub const GAUGES_PER_INSTANCE_MAX: usize = 32;
pub const GAUGE_NAME_BYTES_MAX: usize = 64;
/// One log message from a guest; longer ones are truncated.
pub const LOG_MESSAGE_BYTES_MAX: usize = 4_096;
/// Log messages a guest may write per call; the rest are counted and dropped.
pub const LOG_MESSAGES_PER_CALL_MAX: usize = 256;
/// A guest's error message (from `init` or `process`); longer ones are truncated.
pub const GUEST_ERROR_BYTES_MAX: usize = 4_096;
/// Time per call spent in host imports that wait on something outside the guest (a database) and
/// is therefore not charged to `cpu_ms_per_call`; waits beyond it are charged. Together the two
/// bound a call's wall-clock time.
pub const HOST_WAIT_MS_PER_CALL_MAX: u64 = 600_000;

const _: () = assert!(MEMORY_BYTES_MIN <= MEMORY_BYTES_DEFAULT && MEMORY_BYTES_DEFAULT <= MEMORY_BYTES_MAX);
const _: () = assert!(CPU_MS_PER_CALL_MIN <= CPU_MS_PER_CALL_DEFAULT && CPU_MS_PER_CALL_DEFAULT <= CPU_MS_PER_CALL_MAX);
const _: () = assert!(OUTPUT_RECORDS_PER_CALL_MAX >= INPUT_RECORDS_PER_CALL_MAX);
const _: () = assert!(SOURCE_RECORDS_PER_POLL_MAX <= OUTPUT_RECORDS_PER_CALL_MAX);
// One call may return at least one record of the largest size (with every header and its struct).
const _: () = assert!(OUTPUT_BYTES_PER_CALL_MAX >= OUTPUT_RECORD_BYTES_MAX + OUTPUT_HEADERS_PER_RECORD_MAX * 64 + 1024);
const _: () = assert!(LOG_MESSAGE_BYTES_MAX <= OUTPUT_BYTES_PER_CALL_MAX && GUEST_ERROR_BYTES_MAX <= OUTPUT_BYTES_PER_CALL_MAX);

impl Limits {
    /// Checks the limits are within their bounds; `InvalidRequest` says which is not.
    pub fn validate(&self) -> Result<(), PluginError> {
        if !(MEMORY_BYTES_MIN..=MEMORY_BYTES_MAX).contains(&self.memory_bytes) {
            return Err(PluginError::InvalidRequest(format!(
                "memory_bytes {} outside {MEMORY_BYTES_MIN}..={MEMORY_BYTES_MAX}",
                self.memory_bytes
            )));
        }
        if !(CPU_MS_PER_CALL_MIN..=CPU_MS_PER_CALL_MAX).contains(&self.cpu_ms_per_call) {
            return Err(PluginError::InvalidRequest(format!(
                "cpu_ms_per_call {} outside {CPU_MS_PER_CALL_MIN}..={CPU_MS_PER_CALL_MAX}",
                self.cpu_ms_per_call
            )));
        }
        Ok(())
    }
}

/// Truncate to at most `max` bytes on a char boundary, marking the cut.
pub(crate) fn truncate_message(mut message: String, max: usize) -> String {
    if message.len() > max {
        let mut cut = max;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("… (truncated)");
    }
    message
}
