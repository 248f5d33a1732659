#!/usr/bin/env bash
# Prints boot and footprint figures for a Plinth image in QEMU (TCG).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
scripts/build-static.sh
cargo build --release --workspace --bins
cargo bench -p plinth-tests --bench boot
