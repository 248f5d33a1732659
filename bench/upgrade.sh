#!/usr/bin/env bash
# Prints A/B upgrade figures for a Plinth node in QEMU (TCG): upload
# throughput, slot write time, and upload → committed on the new slot.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
scripts/build-static.sh
cargo build --release --workspace --bins
cargo bench -p plinth-tests --bench upgrade
