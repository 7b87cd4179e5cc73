#!/usr/bin/env bash
# The main job: set up a fresh machine, then run `memstreamer demo`: it creates its
# own network namespaces and veth pair (198.18.0.0/15), runs a node with XDP +
# AF_XDP on one end, a remote publisher in the other namespace and a local SDK
# subscriber, prints throughput and p50/p99/p99.9 latency, and removes everything
# it created. The node runs the low-latency profile (busy-spin, its agents on one
# thread; `memstreamer demo` writes `profile = "low-latency"` into its config and
# the node prints the profile line). Extra arguments go to `memstreamer demo`
# (e.g. --backend udp, --backend dpdk).
#
#   scripts/demo.sh [ARGS]      network demo (needs root)
#   scripts/demo.sh --shm       two-process shared-memory demo (sdk example)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/hugepages.sh reserve 512
trap 'scripts/hugepages.sh release' EXIT
if [[ "${1:-}" == "--shm" ]]; then
  shift
  cargo run --release --locked -p sdk --example shm_demo -- "$@"
else
  # With the DPDK backend built in, so `scripts/demo.sh --backend dpdk` works too.
  cargo run --release --locked -p memstreamer --features dpdk -- demo "$@"
fi
