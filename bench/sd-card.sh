#!/usr/bin/env bash
# A single node in QEMU (TCG) on a disk throttled like a slow SD card (200
# I/Os and 4 MiB per second; PLINTH_SD_THROTTLE=IOPS,BPS for another), 12
# pods running, held for 30 minutes (PLINTH_SD_HOLD_SECS): prints the API's
# p50/p99 latency, the Lease's renewals and longest gap, the services'
# restarts, and fails if the Node left Ready, the Lease lapsed or a service
# restarted. Takes about 40 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
scripts/build-static.sh
export PLINTH_KUBECTL="${PLINTH_KUBECTL:-${HOME:-/root}/.cache/plinth/kubectl-venv/bin/kubectl}"
cargo bench -p plinth-tests --bench sd_card
