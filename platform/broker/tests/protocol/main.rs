//! The broker's wire-level integration tests, in one test binary: each binary links the whole broker,
//! so one binary instead of four saves minutes of every build. The tests that measure the process's
//! peak RSS (`offset_commit_memory`, `reply_budget`, `request_budget`) stay alone in theirs.

#[path = "../common/mod.rs"]
mod common;

mod connection_limits;
mod groups_wire;
mod txn_wire;
mod wire;
