#!/usr/bin/env bash
# Pod-to-pod round trip (p50/p99) and throughput from a pod on node a to a
# pod on the same node, on a node of the same LAN (host-gw), on a node
# behind a router (VXLAN), and on the LAN node with VXLAN forced — on the
# kernel devices node-net programs (bridge, veth, routes, the vxlan device
# and its FDB), in network namespaces of its own (root; not QEMU). Prints
# `figure:` lines and a table. About 30 s. Built in the dev profile: the
# figures are the kernel's (the bench only writes and reads sockets), and a
# release build of the test crates costs minutes on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p orchestrator-node-net --bench pod_network --profile dev
