#!/usr/bin/env bash
# Builds librdkafka's own C load generator, `rdkafka_performance`, from the librdkafka sources that the
# `rdkafka-sys` crate ships (crates.io is reachable where GitHub is not), so that every figure in
# BENCHMARKS.md measured with it is one any Kafka user can reproduce. Prints the binary's path.
#
#   tests/perf/build_rdkafka_performance.sh [OUT_DIR]     # default /tmp/librdkafka
set -euo pipefail
out=${1:-/tmp/librdkafka}
bin=$out/examples/rdkafka_performance
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
version=4.10.0+2.12.1
fetch=$(mktemp -d)
mkdir -p "$fetch/src"
printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nrdkafka-sys = "=%s"\n' "$version" > "$fetch/Cargo.toml"
echo 'fn main() {}' > "$fetch/src/main.rs"
(cd "$fetch" && cargo fetch -q)
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/rdkafka-sys-"$version"/librdkafka | head -1)
rm -rf "$out" && cp -r "$src" "$out"
cd "$out"
./configure --disable-sasl --disable-gssapi --disable-lz4-ext --disable-curl --disable-zstd > configure.log 2>&1
make -j"$(nproc)" libs > make.log 2>&1
make -C examples rdkafka_performance >> make.log 2>&1
rm -rf "$fetch"
echo "$bin"
