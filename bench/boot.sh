#!/usr/bin/env bash
# Prints boot and footprint figures for a Plinth image in QEMU (TCG).
set -euo pipefail
cd "$(dirname "$0")/.."
# --board arm64-virt: the arm64 image under qemu-system-aarch64 -M virt.
board=qemu-x86_64
if [ "${1:-}" = "--board" ]; then board="${2:?--board needs a name}"; fi
scripts/setup-debian.sh
case "$board" in
  qemu-x86_64) scripts/build-static.sh ;;
  # osctl on the host is the x86_64 static one: both sets.
  arm64-virt) scripts/build-static.sh --arch all ;;
  *) echo "bench/boot.sh: --board is qemu-x86_64 or arm64-virt, not $board" >&2; exit 2 ;;
esac
PLINTH_BENCH_BOARD="$board" cargo bench -p plinth-tests --bench boot
