#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up, lints, unit and
# integration tests (real processes, real files), loom models, fuzz smoke runs.
# Everything it reserves (hugepages, mounts) it releases on exit.
#
# Privileged tests (namespaces, XDP, mounts, hugepages; they call `testkit::require!`)
# must run here: MS_REQUIRE_PRIVILEGED=1 turns a missing need (root, a tool, a
# hugepage pool) into a test failure instead of a skip, and every such test that ran
# is logged to MS_PRIVILEGED_LOG; the suite fails unless every call site ran.
# Each part's wall time is printed as it ends and again, with the total, at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${MS_FUZZ_SECONDS:-20}
PRIVILEGED_LOG=$PWD/target/privileged-tests.log
export MS_REQUIRE_PRIVILEGED=1 MS_PRIVILEGED_LOG=$PRIVILEGED_LOG

STARTED=$EPOCHREALTIME
PART="" PART_STARTED=""
TIMES=()
seconds_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
part_end() {
  [[ -n $PART ]] || return 0
  local took; took=$(seconds_since "$PART_STARTED")
  TIMES+=("$(printf '%-14s %8s s' "$PART" "$took")")
  printf -- '-- %s: %s s\n' "$PART" "$took"
  PART=""
}
# step NAME DESCRIPTION: ends the running part, starts part NAME (timed under that name).
step() {
  part_end
  PART=$1 PART_STARTED=$EPOCHREALTIME
  printf '\n== %s\n' "$2"
}
finish() {
  local rc=$?
  part_end
  if [[ -n ${HUGEPAGES_RESERVED:-} ]]; then scripts/hugepages.sh release || rc=1; fi
  printf '\n== wall time%s\n' "$( ((rc == 0)) || echo " (FAILED, exit $rc)")"
  ((${#TIMES[@]})) && printf '  %s\n' "${TIMES[@]}"
  printf '  %-14s %8s s\n' "total" "$(seconds_since "$STARTED")"
  exit "$rc"
}
trap finish EXIT

# The `testkit::require!` call sites, as `file:line` (what the log's first field names).
privileged_sites() {
  grep -rnE --include='*.rs' --exclude-dir=target --exclude-dir=testkit --exclude-dir=.git \
    '^\s*testkit::require!\(' -- */ | cut -d: -f1,2 | sort -u
}

# Optional backends built and tested here (setup.sh installs what they need).
FEATURES="dataplane/dpdk,memstreamer/dpdk,benches/dpdk"

step set-up "set-up"
if ((EUID != 0)); then
  echo "make test runs the privileged tests (namespaces, XDP, mounts, hugepages): run it as root" >&2
  exit 1
fi
scripts/setup.sh --test
HUGEPAGES_RESERVED=1
scripts/hugepages.sh reserve 512

step no-skips "no test skips by hand (testkit::require! decides) or is #[ignore]d"
if grep -rniE --include='*.rs' --exclude-dir=target --exclude-dir=testkit \
  'e?println!\("[^"]*skip' -- */; then
  echo "a test above skips itself: call testkit::require!(...) instead, so make test fails it" >&2
  exit 1
fi
if grep -rn --include='*.rs' --exclude-dir=target '#\[ignore' -- */; then
  echo "an #[ignore]d test above never runs in make test: make it run, or delete it" >&2
  exit 1
fi

step fmt "cargo fmt --check"
cargo fmt --all -- --check

step clippy "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked --features "$FEATURES" -- -D warnings

step "cargo test" "cargo test (privileged tests required)"
mkdir -p target
: >"$PRIVILEGED_LOG"
cargo test --workspace --locked --features "$FEATURES"
expected=$(privileged_sites)
ran=$(cut -d' ' -f1 "$PRIVILEGED_LOG" | sort -u)
missing=$(comm -23 <(printf '%s\n' "$expected") <(printf '%s\n' "$ran"))
n_expected=$(grep -c . <<<"$expected" || true)
n_ran_tests=$(sort -u "$PRIVILEGED_LOG" | grep -c . || true)
n_ran_sites=$(grep -c . <<<"$ran" || true)
echo "privileged tests run: $n_ran_tests (call sites: $n_ran_sites of $n_expected; log: $PRIVILEGED_LOG)"
if ((n_ran_tests == 0)); then
  echo "no privileged test ran: the log is empty (did cargo test run the integration tests?)" >&2
  exit 1
fi
if [[ -n $missing ]]; then
  echo "privileged tests that did not run (testkit::require! call sites absent from the log):" >&2
  sed 's/^/  /' <<<"$missing" >&2
  exit 1
fi

step python "python (pytest): build the abi3 wheel, install it into .venv, run python/tests"
# The wheel as maturin builds it (extension-module, release), so pytest tests what users install.
rm -f target/wheels/memstreamer-*.whl
.venv/bin/maturin build --release --locked -m python/Cargo.toml -i .venv/bin/python -o target/wheels
.venv/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps \
  target/wheels/memstreamer-*.whl
(cd python && ../.venv/bin/python -m pytest -q tests)

step deploy-check "deployment kit (infra/, ansible/)"
scripts/check-deploy.sh

step loom "loom models (shm-ring)"
RUSTFLAGS="--cfg loom -C target-feature=+cmpxchg16b" CARGO_TARGET_DIR=target/loom \
  cargo test -p shm-ring --release --locked --test loom

step fuzz "fuzz smoke (${FUZZ_SECONDS}s per target; lock files must be current)"
# cargo-fuzz 0.12 has no --locked: check each fuzz lock file with `cargo metadata --locked`
# first (it fails if the lock would change), and that the build left it as committed.
for dir in */fuzz; do
  [[ -f "$dir/Cargo.toml" ]] || continue
  crate=${dir%/fuzz}
  if [[ ! -f "$dir/Cargo.lock" ]]; then
    echo "$dir/Cargo.lock is missing: generate it (cargo fuzz build) and commit it" >&2
    exit 1
  fi
  lock_before=$(sha256sum "$dir/Cargo.lock")
  cargo metadata --locked --format-version 1 --manifest-path "$dir/Cargo.toml" >/dev/null
  for target in $(cd "$crate" && cargo fuzz list); do
    echo "-- $crate: $target"
    (cd "$crate" && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- \
      -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 2>&1 | tail -n 3)
  done
  if [[ $(sha256sum "$dir/Cargo.lock") != "$lock_before" ]]; then
    git --no-pager diff -- "$dir/Cargo.lock" >&2 || true
    echo "$dir/Cargo.lock changed during the fuzz build: commit the refreshed lock file" >&2
    exit 1
  fi
done

part_end
printf '\n== all tests passed\n'
