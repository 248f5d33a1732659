#!/usr/bin/env bash
# The test command: installs what the tests need (QEMU, OVMF, image tools,
# the arm64 toolchain), builds the static binaries once (x86_64: the image's
# and the host tools, which the end-to-end tests drive; arm64: the image's),
# then runs every test in the workspace with cargo-nextest when it is there
# (the kubectl and controllers suites twice: on SQLite and, as the
# `*_etcd` test binaries, on etcd), and the unit tests of machinery, init
# and apid for aarch64 under qemu-aarch64. Extra arguments go to the
# x86_64 test run (e.g. a test name filter). Prints each step's wall time.
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
# cargo-nextest (.config/nextest.toml) runs the tests of every binary from
# one queue, the QEMU guests first, and prints each test's duration;
# without it, `cargo test` runs them binary after binary. Both keep going
# past a failure, so one run reports every failing test.
if cargo nextest --version >/dev/null 2>&1; then
  run_tests() { cargo nextest run --no-fail-fast "$@"; }
else
  echo "test.sh: cargo-nextest is not installed: running the tests with cargo test, one binary at a time (slower)" >&2
  run_tests() { cargo test --no-fail-fast "$@"; }
fi
step run_tests --workspace "$@"
if [ "$arch" = all ]; then step scripts/test-arm64.sh; fi
