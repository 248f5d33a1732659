#!/usr/bin/env bash
# From a fresh Debian 12 machine to a one-node Plinth cluster in QEMU: builds
# the image, boots it, applies a signed control-plane config with osctl,
# fetches the admin kubeconfig, waits for the node to be Ready, and prints
# the commands to use it with osctl and kubectl.
#   PLINTH_OUT (default _out/node): keys, image, config and kubeconfig.
#   PLINTH_PRELOAD: OCI image archives or directories to bake in (`:`-separated).
#   --maintenance: stop after booting, in maintenance mode (no config applied).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${PLINTH_OUT:-$PWD/_out/node}
scripts/setup-debian.sh
# One build: the static release set (the image's binaries and the host
# tools osctl, image-builder and qemu; static glibc binaries run here too).
scripts/build-static.sh
bin=${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/release
kubectl=${PLINTH_KUBECTL:-${HOME:-/root}/.cache/plinth/kubectl-venv/bin/kubectl}
mkdir -p "$out"
[ -f "$out/keys/ops.key" ] || "$bin/osctl" gen keys --out "$out/keys" --cluster demo
# Keys made before the Kubernetes CA was split from the machine API's.
[ -f "$out/keys/kube-ca.crt" ] || "$bin/osctl" gen kube-ca --out "$out/keys" --cluster demo
preload=()
IFS=: read -ra extra <<< "${PLINTH_PRELOAD:-}"
for p in "${extra[@]}"; do [ -n "$p" ] && preload+=(--preload-image "$p"); done
"$bin/image-builder" build --board qemu-x86_64 --bin-dir "$bin" --trust-key "$out/keys/ops.pub" -o "$out/plinth.img" "${preload[@]}"
"$bin/qemu" down --name n1 >/dev/null 2>&1 || true
up=$("$bin/qemu" up --image "$out/plinth.img" --name n1 --memory 512)
api=$(echo "$up" | sed -n 's/.*its API is at \(.*\)$/\1/p')
kube=$(echo "$up" | sed -n 's/.*kubeconfig --server \(https:[^ ]*\).*/\1/p')
[ -f "$out/node.toml" ] || "$bin/osctl" gen config --cluster demo --role controlplane --hostname n1 --secrets "$out/keys" --out "$out/node.toml"
export OSCTLCONFIG=$out/keys/osctlconfig
if [ "${1:-}" = "--maintenance" ]; then
  echo "$up"
  cat <<MSG

Next:
  export OSCTLCONFIG=$OSCTLCONFIG PATH=$bin:\$PATH
  osctl -n $api --insecure apply-config -f $out/node.toml
  osctl -n $api kubeconfig --server $kube --out $out/kubeconfig
Stop the VM with: qemu down --name n1
MSG
  exit 0
fi
"$bin/osctl" -n "$api" --insecure apply-config -f "$out/node.toml"
echo "waiting for the control plane and the node to be Ready (a minute or two under TCG)…"
for _ in $(seq 1 120); do
  "$bin/osctl" -n "$api" kubeconfig --server "$kube" --out "$out/kubeconfig" >/dev/null 2>&1 && break
  sleep 2
done
for _ in $(seq 1 120); do
  [ "$("$kubectl" --kubeconfig "$out/kubeconfig" get node n1 -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] && break
  sleep 2
done
"$kubectl" --kubeconfig "$out/kubeconfig" get nodes -o wide
cat <<MSG

Node n1 is up in QEMU (osctl API $api, Kubernetes API $kube).
  export OSCTLCONFIG=$OSCTLCONFIG KUBECONFIG=$out/kubeconfig PATH=$bin:$(dirname "$kubectl"):\$PATH
  kubectl get nodes,pods -A
  osctl -n $api services
Images baked in with PLINTH_PRELOAD=busybox.tar run with imagePullPolicy: IfNotPresent.
Stop the VM with: qemu down --name n1
MSG
