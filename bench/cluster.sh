#!/usr/bin/env bash
# Prints the three-node cluster's figures in QEMU (TCG), from one run of the
# multinode test (tests/tests/multinode.rs, which prints `figure: NAME VALUE`
# lines): config applied → worker Ready, each worker's service RSS,
# pod-to-pod round trip within a node and across nodes (busybox ping, 5
# packets), and how long the workers ran with the control plane stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
scripts/build-static.sh
export PLINTH_KUBECTL="${PLINTH_KUBECTL:-${HOME:-/root}/.cache/plinth/kubectl-venv/bin/kubectl}"
log=$(mktemp /tmp/plinth-cluster-bench.XXXXXX)
start=$(date +%s)
if ! cargo test -p plinth-tests --test multinode -- --nocapture >"$log" 2>&1; then
  echo "bench/cluster.sh: the multinode test failed (log: $log)" >&2
  grep -E '^(multinode step|figure):' "$log" >&2 || true
  exit 1
fi
echo "multinode test: $(( $(date +%s) - start )) s (build, three boots, every step)"
grep '^figure:' "$log" | sed 's/^figure: //' | column -t
rm -f "$log"
