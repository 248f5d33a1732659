#!/usr/bin/env bash
# The unit tests of `machinery`, `init` and `apid` for aarch64: cross-built
# with a std built from source and run under qemu-aarch64 as cargo's
# runner. In the release profile, with the packages of
# scripts/build-static.sh --arch arm64 (its image_pkgs) besides machinery,
# so that the std and the dependencies that build compiled are reused
# rather than compiled again in the dev profile. Extra arguments go to the
# test binaries (e.g. a test name filter, or --nocapture).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/arm64-env.sh
. scripts/arm64-env.sh
# qemu-user cannot report a child's failed exec from spawn (it emulates the
# vfork of posix_spawn with a fork, so the child exits 127 instead): this
# test's premise does not hold under qemu-user. It runs on x86_64 and on
# real arm64 hardware.
skip=supervisor::tests::missing_program_backs_off
echo "test-arm64.sh: SKIPPING $skip under qemu-user (a failed exec shows as exit status 127, not a spawn error)" >&2
cargo test --release --target aarch64-unknown-linux-gnu -Zbuild-std=std,panic_abort \
  -p plinth-init -p apid -p orchestrator -p plinth-pause -p machinery --lib -- --skip "$skip" "$@"
