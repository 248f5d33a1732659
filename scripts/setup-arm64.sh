#!/usr/bin/env bash
# The arm64 toolchain (part of scripts/setup-debian.sh): the aarch64 cross
# linker and C library, qemu-user (runs the aarch64 unit tests), and the
# standard library's source, from which cargo builds an aarch64 std
# (`-Zbuild-std`; no prebuilt aarch64 std can be fetched for the pinned rustc).
#
# The std source is Debian's `rust-src` for the pinned rustc, from
# trixie-backports, pinned by version and sha256. It is fetched with a
# private apt state and a private sources list (nothing of the system's apt
# set-up changes, nothing from trixie is installed) and its `library/` is
# extracted into ~/.cache/plinth/rust-src-<version>. If the archive no
# longer has that version, $PLINTH_RUST_SRC_TARBALL or the copy in the
# build machines' shared/toolchains/ next to the checkout is used, checked
# against its own sha256.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
rust_version=1.95.0
deb_version=1.95.0+dfsg1-2~bpo13+1
deb_sha256=7b76db5b880a77f9e52975d2baa6209d2f76d2c9c2789515c3088cb960e2c83b
tarball_sha256=d0362b043f95357af0fa696863ae24633935bd849efaa0d61649192c6965dd46
cache="${HOME:-/root}/.cache/plinth"
src="$cache/rust-src-$rust_version"

# The std source must be the compiler's own version. Another rustc still
# builds and runs everything for x86_64: say so, and leave arm64 out.
have=$(rustc --version | awk '{print $2}')
if [ "$have" != "$rust_version" ]; then
  echo "arm64: skipped: the std source pinned here is for rustc $rust_version, this is rustc $have (arm64 builds need rustc $rust_version: rustup toolchain install $rust_version)" >&2
  exit 0
fi

# Cross linker, aarch64 C library, qemu-user (from bookworm-backports like the
# rest of QEMU; --no-install-recommends keeps qemu-user-binfmt out: nothing
# here relies on binfmt_misc, cargo runs tests through qemu-aarch64 itself).
need=()
for p in gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user file; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "missing ${need[*]}: run scripts/setup-debian.sh as root" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq -o DPkg::Lock::Timeout=600
  apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends -t bookworm-backports qemu-user >/dev/null
  apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross file >/dev/null
fi

if [ ! -f "$src/.complete" ]; then
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/rust-src.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  deb="rust-src_${deb_version}_all.deb"
  # A private apt: its own sources list (trixie-backports only), state,
  # cache and (empty) parts and preferences directories.
  a="$tmp/apt"
  mkdir -p "$a/lists/partial" "$a/cache/archives/partial" "$a/parts" "$a/prefs"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main" > "$a/sources.list"
  apt_private=(-q -o "Dir::Etc::sourcelist=$a/sources.list" -o "Dir::Etc::sourceparts=$a/parts"
    -o "Dir::Etc::preferences=$a/prefs/none" -o "Dir::Etc::preferencesparts=$a/prefs"
    -o "Dir::State=$a" -o "Dir::State::Lists=$a/lists" -o "Dir::Cache=$a/cache"
    -o Acquire::Languages=none -o APT::Sandbox::User=root)
  echo "fetching the std source: Debian rust-src $deb_version (trixie-backports, private apt state)"
  if apt-get "${apt_private[@]}" update >"$tmp/apt.log" 2>&1 &&
     (cd "$tmp" && apt-get "${apt_private[@]}" download "rust-src=$deb_version" >>"$tmp/apt.log" 2>&1); then
    echo "$deb_sha256  $tmp/$deb" | sha256sum -c --quiet - ||
      { echo "$deb: sha256 mismatch (want $deb_sha256); not using it" >&2; exit 1; }
    mkdir -p "$tmp/out"
    dpkg-deb --fsys-tarfile "$tmp/$deb" | tar -x -C "$tmp/out" --strip-components=4 "./usr/src/rustc-$rust_version/library"
  else
    fallback=${PLINTH_RUST_SRC_TARBALL:-}
    for d in ../shared/toolchains ../../shared/toolchains; do
      [ -n "$fallback" ] || [ ! -f "$d/rust-std-src-$rust_version.tar.xz" ] || fallback=$(realpath "$d/rust-std-src-$rust_version.tar.xz")
    done
    fallback=${fallback:-../shared/toolchains/rust-std-src-$rust_version.tar.xz}
    echo "Debian's archive did not give rust-src $deb_version ($(tail -1 "$tmp/apt.log")); using $fallback"
    [ -f "$fallback" ] || { echo "no std source: rust-src $deb_version is gone from trixie-backports and $fallback does not exist (set PLINTH_RUST_SRC_TARBALL to a copy of the library/ tree, sha256 $tarball_sha256)" >&2; exit 1; }
    echo "$tarball_sha256  $fallback" | sha256sum -c --quiet - ||
      { echo "$fallback: sha256 mismatch (want $tarball_sha256)" >&2; exit 1; }
    mkdir -p "$tmp/out"
    tar -xJf "$fallback" -C "$tmp/out"
  fi
  [ -f "$tmp/out/library/std/Cargo.toml" ] || { echo "the std source has no library/std" >&2; exit 1; }
  rm -rf "$src"
  mv "$tmp/out" "$src"
  touch "$src/.complete"
fi
echo "arm64: $(aarch64-linux-gnu-gcc --version | head -1), $(qemu-aarch64 --version | head -1), std source in $src"
