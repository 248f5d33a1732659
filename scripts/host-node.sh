#!/usr/bin/env bash
# Runs a Plinth node in host mode (init + apid as ordinary processes over a
# state directory), with fresh operator keys, and leaves it waiting for
# `osctl apply-config`. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${PLINTH_OUT:-$PWD/_out/host-node}
port=${PLINTH_PORT:-50000}
scripts/build-static.sh
bin=${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/release
mkdir -p "$out"
if [ ! -f "$out/keys/ops.key" ]; then
  "$bin/osctl" gen keys --out "$out/keys" --cluster demo
fi
cat <<MSG

Plinth node (host mode) starting on 127.0.0.1:$port, in maintenance mode.
In another terminal:

  export OSCTLCONFIG=$out/keys/osctlconfig PATH=$bin:\$PATH
  osctl gen config --cluster demo --role controlplane --hostname n1 --secrets $out/keys --out $out/node.toml
  osctl -n 127.0.0.1:$port --insecure apply-config -f $out/node.toml
  osctl -n 127.0.0.1:$port version
  osctl -n 127.0.0.1:$port services

MSG
exec "$bin/plinth-init" --state-dir "$out/state" --trusted-key "$out/keys/ops.pub" --api-listen "127.0.0.1:$port"
