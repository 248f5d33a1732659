#!/usr/bin/env bash
# Prints the single-node cluster's figures in QEMU (TCG): power-on → Node
# Ready and → Deployment Ready, guest RAM in use idle and with the
# Deployment, the RSS of each service. With --min-memory, also runs the
# whole-journey test at less and less guest memory and prints the smallest
# -m at which it still passes (each run takes several minutes).
#   --board arm64-virt: the arm64 image under qemu-system-aarch64 -M virt
#   (default qemu-x86_64); --min-memory then runs the arm64 journey test.
set -euo pipefail
cd "$(dirname "$0")/.."
board=qemu-x86_64
min_memory=
while [ $# -gt 0 ]; do
  case "$1" in
    --board) board="${2:?--board needs a name}"; shift 2 ;;
    --min-memory) min_memory=1; shift ;;
    *) echo "usage: bench/journey.sh [--board qemu-x86_64|arm64-virt] [--min-memory]" >&2; exit 2 ;;
  esac
done
case "$board" in
  qemu-x86_64) arch=x86_64; journey_test=image_to_kubectl_workloads_through_an_upgrade_and_a_rollback ;;
  arm64-virt) arch=all; journey_test=arm64_virt_image_to_kubectl_workloads_through_an_upgrade_and_a_rollback ;;
  *) echo "bench/journey.sh: --board is qemu-x86_64 or arm64-virt, not $board" >&2; exit 2 ;;
esac
scripts/setup-debian.sh
scripts/build-static.sh --arch "$arch"
export PLINTH_KUBECTL="${PLINTH_KUBECTL:-${HOME:-/root}/.cache/plinth/kubectl-venv/bin/kubectl}"
PLINTH_BENCH_BOARD="$board" cargo bench -p plinth-tests --bench journey
if [ -n "$min_memory" ]; then
  smallest=""
  for m in 384 256 192 160 128 112 96; do
    if PLINTH_JOURNEY_MEMORY_MIB=$m cargo test --release -p plinth-tests --test journey -- --exact "$journey_test" >"/tmp/plinth-journey-$m.log" 2>&1; then
      echo "whole-journey test at -m ${m}M: passed"
      smallest=$m
    else
      echo "whole-journey test at -m ${m}M: failed (log: /tmp/plinth-journey-$m.log)"
      break
    fi
  done
  echo "smallest guest memory at which the whole journey passes: ${smallest:-none of those tried} MiB"
fi
