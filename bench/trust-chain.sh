#!/usr/bin/env bash
# Prints apid + init idle RSS and ApplyConfig round-trip latency on loopback,
# with release builds of the real binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
# The binaries the harness runs are the static ones (tests/src: bin_dir).
scripts/build-static.sh --arch x86_64
cargo bench -p plinth-tests --bench trust_chain
