#!/usr/bin/env bash
# From a fresh Debian 12 machine to a Plinth node booted in QEMU, in
# maintenance mode, waiting for `osctl apply-config`.
#   PLINTH_OUT (default _out/node): keys, image and config live here.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${PLINTH_OUT:-$PWD/_out/node}
scripts/setup-debian.sh
scripts/build-static.sh
cargo build --release --workspace --bins
bin=$PWD/target/release
mkdir -p "$out"
[ -f "$out/keys/ops.key" ] || "$bin/osctl" gen keys --out "$out/keys" --cluster demo
"$bin/image-builder" build --board qemu-x86_64 --trust-key "$out/keys/ops.pub" -o "$out/plinth.img"
"$bin/qemu" down --name n1 >/dev/null 2>&1 || true
up=$("$bin/qemu" up --image "$out/plinth.img" --name n1 --memory 256)
echo "$up"
api=$(echo "$up" | sed -n 's/.*its API is at \(.*\)$/\1/p')
kube=$(echo "$up" | sed -n 's/.*kubeconfig --server \(https:[^ ]*\).*/\1/p')
[ -f "$out/node.toml" ] || "$bin/osctl" gen config --cluster demo --role controlplane --hostname n1 --secrets "$out/keys" --out "$out/node.toml"
cat <<MSG

Next:
  export OSCTLCONFIG=$out/keys/osctlconfig PATH=$bin:\$PATH
  osctl -n $api --insecure apply-config -f $out/node.toml
  osctl -n $api version
  osctl -n $api services
  osctl -n $api logs apid
Then kubectl (the control plane starts once the config is applied):
  osctl -n $api kubeconfig --server $kube --out $out/kubeconfig
  kubectl --kubeconfig $out/kubeconfig get namespaces
Stop the VM with: qemu down --name n1
MSG
