# Sourced by the scripts that build or test for aarch64: checks the arm64
# toolchain that scripts/setup-arm64.sh installs and exports what cargo
# needs to cross-build with a std built from source. These variables
# (RUSTC_BOOTSTRAP above all) belong to the aarch64 build only: source this
# in a subshell or a script of its own, never in a shell that also builds for
# the host.
rust_src="${HOME:-/root}/.cache/plinth/rust-src-1.95.0/library"
missing=()
[ "$(rustc --version | awk '{print $2}')" = 1.95.0 ] || missing+=("rustc 1.95.0, the version of the pinned std source (this is $(rustc --version))")
[ -f "$rust_src/../.complete" ] || missing+=("the std source ($rust_src)")
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=("aarch64-linux-gnu-gcc (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross)")
command -v qemu-aarch64 >/dev/null || missing+=("qemu-aarch64 (qemu-user from bookworm-backports)")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'arm64 build: missing %s\n' "${missing[@]}" >&2
  echo "install them with scripts/setup-debian.sh (as root), or scripts/setup-arm64.sh alone" >&2
  exit 1
fi
# -Zbuild-std is unstable: allowed for this build only, with the pinned
# rustc's own std source (cargo reads __CARGO_TESTS_ONLY_SRC_ROOT instead of
# the rust-src component rustup would install).
export RUSTC_BOOTSTRAP=1 __CARGO_TESTS_ONLY_SRC_ROOT="$rust_src"
# RUSTFLAGS apply only to the target's code with --target (not to build
# scripts or proc-macros, which run on the host).
export RUSTFLAGS="-C target-feature=+crt-static"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
