#!/usr/bin/env bash
# Three nodes in QEMU (TCG) on one cluster network: a control plane and two
# workers joining by token at once, a 3-replica Deployment spread over
# them, then one worker powered off (QEMU killed) and on again. Prints
# `figure:` lines: power-on → control plane Ready, each worker's config
# applied → Ready, power-off → Node not Ready → pod replaced elsewhere,
# power-on → Ready → the old pod gone; and, before that, pod-to-pod round
# trip and HTTP throughput on one node and across nodes, and the control
# plane's and a worker's memory (RSS of each process).
# PLINTH_TEST_POD_NETWORK=vxlan (or host-gw) sets cluster.pod_network.
# The pods tolerate the unreachable taint for PLINTH_CLUSTER_TOLERATION_S seconds (default 30; upstream's
# default is 300). Not in CI: about 10 minutes. PLINTH_QEMU_LOCK=FILE runs
# it under `flock FILE` (one QEMU user at a time on a shared machine). The
# bench only drives QEMU, so it is built in the dev profile (no release
# build of the test crate).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
scripts/build-static.sh
export PLINTH_KUBECTL="${PLINTH_KUBECTL:-${HOME:-/root}/.cache/plinth/kubectl-venv/bin/kubectl}"
run=(cargo bench -p plinth-tests --bench cluster --profile dev)
if [ -n "${PLINTH_QEMU_LOCK:-}" ]; then flock "$PLINTH_QEMU_LOCK" "${run[@]}"; else "${run[@]}"; fi
