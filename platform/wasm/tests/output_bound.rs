//! Output that aliases guest memory cannot multiply host memory (hostile modules, item 13). A guest
//! can return 100 000 records whose values all point at ONE 1 MiB buffer: a few MiB of guest memory,
//! 100 GB if the host copied each value. The host bounds the bytes it copies out of a guest per call
//! (`OUTPUT_BYTES_PER_CALL_MAX`), checked before each allocation while lifting, so the call fails
//! with `MalformedOutput` and the host's memory stays small.
//!
//! A test binary of its own, so that the process's peak RSS measures this test alone.

mod common;

use common::{engine, input, instance_config, load, out};
use sluice_wasm::{Limits, OUTPUT_BYTES_PER_CALL_MAX, PluginError};

/// Peak resident set of this process (`VmHWM`), in bytes.
fn peak_rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
}

#[test]
fn output_records_aliasing_one_guest_buffer_are_refused_after_copying_at_most_the_bound() {
    let engine = engine();
    let (mut config, _) = instance_config(&[("mode", "aliased-output")]);
    config.limits = Limits { memory_bytes: 64 << 20, cpu_ms_per_call: 10_000 };
    let mut instance = load(&engine, "fixture-hostile").instantiate(config, out()).unwrap();
    let before = peak_rss_bytes();

    let error = instance.process(&[input(b"x", 0)]).unwrap_err();

    let grown = peak_rss_bytes().saturating_sub(before);
    assert!(matches!(error, PluginError::MalformedOutput(_)), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&format!("more than {OUTPUT_BYTES_PER_CALL_MAX} bytes in one call")), "{message}");
    assert!(message.contains("OUTPUT_BYTES_PER_CALL_MAX"), "{message}");
    // The 64 MiB guest plus at most the copy bound; 100 000 copies would be 100 GB.
    assert!(grown < OUTPUT_BYTES_PER_CALL_MAX + (256 << 20), "peak RSS grew by {} MiB", grown >> 20);
    eprintln!("peak RSS grew by {} MiB (bound {} MiB)", grown >> 20, OUTPUT_BYTES_PER_CALL_MAX >> 20);
    // The guest stopped midway through the ABI: the instance is not called again.
    assert!(matches!(instance.process(&[input(b"x", 1)]), Err(PluginError::Poisoned(_))));
}
