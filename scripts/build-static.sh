#!/usr/bin/env bash
# Builds Plinth's binaries statically linked (glibc, crt-static), in the
# release profile.
#   --arch x86_64 (default): the image's binaries (plinth-init, apid,
#     orchestrator, plinth-pause) and the host tools (osctl, image-builder,
#     qemu) in one cargo invocation, into target/x86_64-unknown-linux-gnu/release.
#     Static glibc binaries run on the host too: the README's commands and
#     the tests use this one set, so each crate compiles once per profile.
#   --arch arm64: the image's binaries for aarch64, into
#     target/aarch64-unknown-linux-gnu/release, with a std built from source
#     (-Zbuild-std; scripts/setup-arm64.sh fetches the pinned std source).
#   --arch all: both.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=x86_64
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=${2:?--arch needs x86_64, arm64 or all}; shift 2 ;;
    --arch=*) arch=${1#--arch=}; shift ;;
    *) echo "usage: scripts/build-static.sh [--arch x86_64|arm64|all]" >&2; exit 2 ;;
  esac
done
# scripts/test-arm64.sh tests with these packages too (to reuse this build).
image_pkgs=(-p plinth-init -p apid -p orchestrator -p plinth-pause)
tool_pkgs=(-p osctl -p image-builder -p qemu)

build_x86_64() {
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --target x86_64-unknown-linux-gnu "${image_pkgs[@]}" "${tool_pkgs[@]}"
}

build_arm64() {
  # shellcheck source=scripts/arm64-env.sh
  . scripts/arm64-env.sh
  cargo build --release --target aarch64-unknown-linux-gnu -Zbuild-std=std,panic_abort "${image_pkgs[@]}"
}

case "$arch" in
  x86_64 | amd64) build_x86_64 ;;
  arm64 | aarch64) build_arm64 ;;
  all) build_x86_64; build_arm64 ;;
  *) echo "--arch $arch: expected x86_64, arm64 or all" >&2; exit 2 ;;
esac
