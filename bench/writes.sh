#!/usr/bin/env bash
# Prints the write budget of a single-node cluster in QEMU (TCG): bytes
# written per hour to the guest's disk and by each writer, idle with the
# Node Ready and with ten pods running with probes. Each figure is a
# measured window (PLINTH_WRITES_WINDOW_SECS, default 300 s) scaled to an
# hour. Takes about 20 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
scripts/build-static.sh
export PLINTH_KUBECTL="${PLINTH_KUBECTL:-${HOME:-/root}/.cache/plinth/kubectl-venv/bin/kubectl}"
cargo bench -p plinth-tests --bench writes
