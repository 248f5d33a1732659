#!/usr/bin/env bash
# Prints the single-node cluster's figures in QEMU (TCG): power-on → Node
# Ready and → Deployment Ready, guest RAM in use idle and with the
# Deployment, the RSS of each service. With --min-memory, also runs the
# whole-journey test at less and less guest memory and prints the smallest
# -m at which it still passes (each run takes several minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
scripts/build-static.sh
cargo build --release --workspace --bins
export PLINTH_KUBECTL="${PLINTH_KUBECTL:-${HOME:-/root}/.cache/plinth/kubectl-venv/bin/kubectl}"
cargo bench -p plinth-tests --bench journey
if [ "${1:-}" = "--min-memory" ]; then
  smallest=""
  for m in 384 256 192 160 128 112 96; do
    if PLINTH_JOURNEY_MEMORY_MIB=$m cargo test --release -p plinth-tests --test journey >"/tmp/plinth-journey-$m.log" 2>&1; then
      echo "whole-journey test at -m ${m}M: passed"
      smallest=$m
    else
      echo "whole-journey test at -m ${m}M: failed (log: /tmp/plinth-journey-$m.log)"
      break
    fi
  done
  echo "smallest guest memory at which the whole journey passes: ${smallest:-none of those tried} MiB"
fi
