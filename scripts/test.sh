#!/usr/bin/env bash
# The test command: installs what the tests need (QEMU, OVMF, image tools,
# the arm64 toolchain), builds the static binaries once (x86_64: the image's
# and the host tools, which the end-to-end tests drive; arm64: the image's),
# then runs every test in the workspace (the kubectl and controllers suites
# a second time on etcd), and the unit tests of machinery and
# init for aarch64 under qemu-aarch64. Extra arguments go to the x86_64
# `cargo test` (e.g. a test name filter). Prints each step's wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
times=()
step() {
  local start=$SECONDS
  "$@"
  times+=("$((SECONDS - start)) s  $*")
}
trap 'printf "test.sh: %s\n" "${times[@]}" >&2' EXIT
step scripts/setup-debian.sh
export PLINTH_KUBECTL="${PLINTH_KUBECTL:-${HOME:-/root}/.cache/plinth/kubectl-venv/bin/kubectl}"
arch=all
# Without the arm64 toolchain (another rustc than the pinned std source's),
# a person's run leaves arm64 out and says so; under CI=true it fails.
if [ "${CI:-}" != true ] && ! (. scripts/arm64-env.sh); then
  echo "test.sh: SKIPPING the arm64 build and tests (see above; CI=true makes this an error)" >&2
  arch=x86_64
fi
step scripts/build-static.sh --arch "$arch"
# --no-fail-fast: one run reports every failing test binary, not the first.
step cargo test --workspace --no-fail-fast "$@"
# The API server's kubectl and controllers suites again, on etcd (a
# one-member cluster per server): the same assertions on both stores.
step env PLINTH_TEST_STORE=etcd cargo test -p orchestrator --no-fail-fast --test kubectl --test controllers
if [ "$arch" = all ]; then step scripts/test-arm64.sh; fi
