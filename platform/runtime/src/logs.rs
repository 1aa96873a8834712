//! A deployment's log: lines its module writes (`sluice::log::info!` in the SDK) and what the runtime
//! says about it (stops, dead letters) go to the broker's `tracing` log and to a bounded buffer that
//! the deployment's status shows (`GET /v1/transforms/{name}`, `sluice transform status`, …).

use std::collections::VecDeque;

use parking_lot::Mutex;
use serde::Serialize;
use sluice_wasm::{LogLevel, LogSink, TracingLogSink};

/// Lines kept per deployment; older ones are dropped.
pub const LOG_LINES_KEPT: usize = 200;

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub at_ms: i64,
    pub level: &'static str,
    pub message: String,
}

pub struct LogBuffer {
    tracing: TracingLogSink,
    lines: Mutex<VecDeque<LogLine>>,
}

impl LogBuffer {
    /// `name`: the deployment, as the broker's log lines name it.
    pub fn new(name: &str) -> LogBuffer {
        LogBuffer { tracing: TracingLogSink { plugin: name.to_string() }, lines: Mutex::new(VecDeque::with_capacity(LOG_LINES_KEPT)) }
    }

    pub fn push(&self, level: LogLevel, message: &str) {
        let level_name = match level {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        };
        let mut lines = self.lines.lock();
        if lines.len() == LOG_LINES_KEPT {
            lines.pop_front();
        }
        lines.push_back(LogLine { at_ms: sluice_broker::host::now_ms(), level: level_name, message: message.to_string() });
    }

    /// The latest warning kept, if it is at most `within_ms` old.
    pub fn last_warning(&self, within_ms: i64) -> Option<LogLine> {
        let since = sluice_broker::host::now_ms() - within_ms;
        self.lines.lock().iter().rev().take_while(|line| line.at_ms >= since).find(|line| line.level == "warn").cloned()
    }

    pub fn recent(&self, n: usize) -> Vec<LogLine> {
        let lines = self.lines.lock();
        lines.iter().skip(lines.len().saturating_sub(n)).cloned().collect()
    }
}

impl LogSink for LogBuffer {
    fn log(&self, level: LogLevel, message: &str) {
        self.tracing.log(level, message);
        self.push(level, message);
    }
}
