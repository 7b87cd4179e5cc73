#!/usr/bin/env bash
# The main job: set up a fresh machine, then run the two-process shared-memory
# publish/subscribe demo (prints messages/s and p50/p99/p99.9 latency).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/hugepages.sh reserve 512
trap 'scripts/hugepages.sh release' EXIT
cargo run --release --locked -p sdk --example shm_demo -- "$@"
