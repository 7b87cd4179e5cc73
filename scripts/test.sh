#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up, lints, unit and
# integration tests (real processes, real files), loom models, fuzz smoke runs.
# Everything it reserves (hugepages, mounts) it releases on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${MS_FUZZ_SECONDS:-20}
step() { printf '\n== %s\n' "$*"; }

step "set-up"
scripts/setup.sh --test
scripts/hugepages.sh reserve 512
trap 'scripts/hugepages.sh release' EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "deployment kit (infra/, ansible/)"
scripts/check-deploy.sh

step "loom models (shm-ring)"
RUSTFLAGS="--cfg loom -C target-feature=+cmpxchg16b" CARGO_TARGET_DIR=target/loom \
  cargo test -p shm-ring --release --locked --test loom

step "fuzz smoke (${FUZZ_SECONDS}s per target)"
for dir in */fuzz; do
  [[ -f "$dir/Cargo.toml" ]] || continue
  crate=${dir%/fuzz}
  for target in $(cd "$crate" && cargo fuzz list); do
    echo "-- $crate: $target"
    (cd "$crate" && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- \
      -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 2>&1 | tail -n 3)
  done
done

step "all tests passed"
