#!/usr/bin/env bash
# The unit tests of `machinery` and `init` for aarch64: cross-built with a
# std built from source (as scripts/build-static.sh --arch arm64 does) and
# run under qemu-aarch64 as cargo's runner. The dev profile: the release
# profile's test build would need a second, unwinding std. Extra arguments
# go to cargo test (e.g. a test name filter, or `-- --nocapture`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/arm64-env.sh
. scripts/arm64-env.sh
cargo test --target aarch64-unknown-linux-gnu -Zbuild-std=std,panic_abort -p machinery -p plinth-init --lib "$@"
