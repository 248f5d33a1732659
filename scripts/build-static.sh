#!/usr/bin/env bash
# Builds the binaries that go into an image (and plinth-pause, the pod
# sandbox image's program), statically linked (glibc,
# crt-static), into target/x86_64-unknown-linux-gnu/release.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu -p plinth-init -p apid -p orchestrator -p plinth-pause
