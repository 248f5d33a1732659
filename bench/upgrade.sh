#!/usr/bin/env bash
# Prints A/B upgrade figures for a Plinth node in QEMU (TCG): upload
# throughput, slot write time, upload → committed on the new slot, and the
# bytes sent and time for a same-version rebuild and a one-binary change.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
scripts/build-static.sh
# Reproducible bundles, as a release build makes them: the same inputs give
# the same root and UKI.
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)
export SOURCE_DATE_EPOCH
cargo bench -p plinth-tests --bench upgrade
