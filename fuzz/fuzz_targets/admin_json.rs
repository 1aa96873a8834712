//! The admin API's JSON request bodies, taken as far as they go before the broker is touched: axum's
//! JSON extraction into the handler's own body type, then the handler's checks (`POST /v1/topics`).
//!
//! The runtimes' bodies (`/v1/transforms`, `/v1/mirrors`, Kafka Connect's `/connectors`) are serde
//! types validated by their crates' unit tests; they are left out here because fuzzing them would
//! link wasmtime into the fuzz build, which alone takes longer than every fuzz run together in CI.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let _ = sluice_broker::fuzz::check_create_topic_body(body);
});
