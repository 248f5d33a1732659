#!/usr/bin/env bash
# From a fresh Debian 12 machine to a one-node Plinth cluster in QEMU: builds
# the image, boots it, applies a signed control-plane config with osctl,
# fetches the admin kubeconfig, waits for the node to be Ready, and prints
# the commands to use it with osctl and kubectl.
#   PLINTH_OUT (default _out/node): keys, image, config and kubeconfig.
#   PLINTH_PRELOAD: OCI image archives or directories to bake in (`:`-separated).
#   --maintenance: stop after booting, in maintenance mode (no config applied).
#   --workers N: also N workers (w1…wN) joined by token; every VM gets a
#     second NIC (eth1) on one guest-to-guest network (`qemu cluster-net`),
#     the control plane 10.5.0.1/24 and worker i 10.5.0.(i+1)/24 there.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${PLINTH_OUT:-$PWD/_out/node}
maintenance=false
workers=0
while [ $# -gt 0 ]; do
  case "$1" in
    --maintenance) maintenance=true; shift ;;
    --workers) workers=${2:?--workers needs a number}; shift 2 ;;
    --workers=*) workers=${1#--workers=}; shift ;;
    *) echo "usage: scripts/run-node.sh [--maintenance] [--workers N]" >&2; exit 2 ;;
  esac
done
case "$workers" in
  '' | *[!0-9]*) echo "--workers $workers: a number of workers (0–250)" >&2; exit 2 ;;
esac
if [ "$workers" -gt 250 ]; then echo "--workers $workers: at most 250 on 10.5.0.0/24" >&2; exit 2; fi
if $maintenance && [ "$workers" -gt 0 ]; then
  echo "--maintenance and --workers: choose one (workers join a configured control plane)" >&2
  exit 2
fi
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
for i in $(seq 1 250); do
  [ -d "${HOME:-/root}/.plinth/vms/w$i" ] || break
  "$bin/qemu" down --name "w$i" >/dev/null 2>&1 || true
done
net=()
config=$out/node.toml
if [ "$workers" -gt 0 ]; then
  net=(--cluster-net "$("$bin/qemu" cluster-net)")
  config=$out/n1-cluster.toml
fi
up=$("$bin/qemu" up --image "$out/plinth.img" --name n1 --memory 512 "${net[@]}")
api=$(echo "$up" | sed -n 's/.*its API is at \(.*\)$/\1/p')
kube=$(echo "$up" | sed -n 's/.*kubeconfig --server \(https:[^ ]*\).*/\1/p')
if [ ! -f "$config" ]; then
  cluster=()
  [ "$workers" -gt 0 ] && cluster=(--cluster-address 10.5.0.1/24)
  "$bin/osctl" gen config --cluster demo --role controlplane --hostname n1 "${cluster[@]}" --secrets "$out/keys" --out "$config"
fi
export OSCTLCONFIG=$out/keys/osctlconfig
if $maintenance; then
  echo "$up"
  cat <<MSG

Next:
  export OSCTLCONFIG=$OSCTLCONFIG PATH=$bin:\$PATH
  osctl -n $api --insecure apply-config -f $config
  osctl -n $api kubeconfig --server $kube --out $out/kubeconfig
Stop the VM with: qemu down --name n1
MSG
  exit 0
fi
mode=()
[ "$workers" -gt 0 ] && mode=(--mode reboot)
"$bin/osctl" -n "$api" --insecure apply-config "${mode[@]}" -f "$config"
echo "waiting for the control plane and the node to be Ready (a minute or two under TCG)…"
for _ in $(seq 1 120); do
  "$bin/osctl" -n "$api" kubeconfig --server "$kube" --out "$out/kubeconfig" >/dev/null 2>&1 && break
  sleep 2
done
ready() {
  for _ in $(seq 1 150); do
    [ "$("$kubectl" --kubeconfig "$out/kubeconfig" get node "$1" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] && return
    sleep 2
  done
  echo "node $1 is not Ready after 5 minutes: see its serial log (qemu list) and osctl -n API logs orchestrator" >&2
  exit 1
}
ready n1
# Workers: the same image, a worker config with the control plane's token
# and no CA key, joined over the cluster network.
token=$(sed -n 's/^token = "\(.*\)"$/\1/p' "$config")
worker_lines=""
for i in $(seq 1 "$workers"); do
  name=w$i
  wup=$("$bin/qemu" up --image "$out/plinth.img" --name "$name" --memory 512 "${net[@]}")
  wapi=$(echo "$wup" | sed -n 's/.*its API is at \(.*\)$/\1/p')
  "$bin/osctl" gen config --cluster demo --role worker --hostname "$name" --cluster-address "10.5.0.$((i + 1))/24" \
    --endpoint https://10.5.0.1:6443 --token "$token" --cert-san 127.0.0.1 --secrets "$out/keys" --out "$out/$name.toml"
  # Its static eth1 address comes up at the next boot (maintenance mode ran DHCP).
  "$bin/osctl" -n "$wapi" --insecure apply-config --mode reboot -f "$out/$name.toml"
  echo "waiting for $name to join…"
  ready "$name"
  worker_lines="$worker_lines
  osctl -n $wapi services        # $name"
done
"$kubectl" --kubeconfig "$out/kubeconfig" get nodes -o wide
cat <<MSG

Node n1 is up in QEMU (osctl API $api, Kubernetes API $kube)$([ "$workers" -gt 0 ] && echo ", with $workers worker(s)").
  export OSCTLCONFIG=$OSCTLCONFIG KUBECONFIG=$out/kubeconfig PATH=$bin:$(dirname "$kubectl"):\$PATH
  kubectl get nodes,pods -A
  osctl -n $api services$worker_lines
Images baked in with PLINTH_PRELOAD=busybox.tar run with imagePullPolicy: IfNotPresent.
Stop the VMs with: qemu down --name n1$(for i in $(seq 1 "$workers"); do printf '; qemu down --name w%s' "$i"; done)
MSG
