#!/usr/bin/env bash
# The test command: installs what the tests need (QEMU, OVMF, image tools),
# builds the binaries the end-to-end tests drive (host binaries, and the
# static ones that go into images), then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
export PLINTH_KUBECTL="${PLINTH_KUBECTL:-${HOME:-/root}/.cache/plinth/kubectl-venv/bin/kubectl}"
scripts/build-static.sh
cargo build --workspace --bins
cargo test --workspace "$@"
