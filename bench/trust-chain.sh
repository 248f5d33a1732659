#!/usr/bin/env bash
# Prints apid + init idle RSS and ApplyConfig round-trip latency on loopback,
# with release builds of the real binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
cargo bench -p plinth-tests --bench trust_chain
