//! The Kafka request decoder, as the broker runs it on every frame a client sends:
//! `sluice_protocol::decode_request` over arbitrary bytes (a frame without its length prefix), which
//! reaches every API key and version in `SUPPORTED_APIS`.
//!
//! Beyond "never panics", it checks the decode budget from outside: the bytes the decoder allocates
//! (counted by a wrapper around the system allocator) stay within `decoded_bytes_max(frame)` plus a
//! small allowance for error messages. A decoder that builds more than that from a frame is an
//! amplification bug, whether the request then decodes or not.
#![no_main]

use std::alloc::System;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_protocol::{DecodeError, decode_request, decoded_bytes_max};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// What decoding may allocate beyond the budget: error messages and the frame's shared-buffer
/// bookkeeping, none of which grows with the element counts on the wire.
const ALLOWANCE_BYTES: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    let region = Region::new(GLOBAL);
    let decoded = decode_request(frame);
    let change = region.change();
    let allocated = change.bytes_allocated + usize::try_from(change.bytes_reallocated).unwrap_or(0);
    let limit = decoded_bytes_max(data.len()) + ALLOWANCE_BYTES;
    assert!(
        allocated <= limit,
        "decoding {} bytes allocated {allocated} bytes (limit {limit}): {:?}",
        data.len(),
        decoded.as_ref().map(|r| (r.api_key, r.version)).map_err(DecodeError::to_string)
    );
    match decoded {
        Ok(request) => {
            // What the broker reads next: the header's fields, the api key it dispatches on.
            assert_eq!(request.api_key as i16, request.header.request_api_key);
            assert_eq!(request.version, request.header.request_api_version);
        }
        Err(error) => {
            // Every error keeps the correlation id once the fixed header arrived, so the broker can
            // answer or log it.
            assert_eq!(error.meta().is_some(), data.len() >= sluice_protocol::REQUEST_HEADER_FIXED_BYTES, "{error}");
        }
    }
});
