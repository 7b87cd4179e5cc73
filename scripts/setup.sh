#!/usr/bin/env bash
# Idempotent set-up of a fresh machine for MemoryStreamer: Debian packages,
# Rust components and cargo tools. Safe to run many times; does nothing when
# everything is present. Hugepages are reserved by scripts/hugepages.sh.
#
#   scripts/setup.sh            packages needed to build, run and bench
#   scripts/setup.sh --test     also the tools the test suite needs (cargo-fuzz), and checks
#                               that every tool the privileged tests call is on PATH
set -euo pipefail

APT_PACKAGES=(
  gcc          # cc: the C client tests, example and latency program (capi/)
  fio          # storage bench peer (ms-bench storage)
  iproute2     # ip netns / veth for data-plane and control-plane tests and the demo
  util-linux   # taskset, mountpoint; unshare and setpriv for tests
  mount        # mount / umount: hugetlbfs (scripts/hugepages.sh) and test mounts
  pkg-config
  clang llvm libbpf-dev      # xdp-programs: C XDP programs built with clang -target bpf
  m4 libelf-dev zlib1g-dev   # xsk-rs (AF_XDP) builds its vendored libxdp/libbpf
  libdpdk-dev libclang-dev   # --backend dpdk (cargo feature `dpdk`): DPDK 22.11 + its PMDs, bindgen
  etcd-server  # ms-bench control: the etcd peer
  ethtool      # AF_XDP queue set-up on veth (ethtool -L)
  ansible ansible-lint jq   # scripts/check-deploy.sh validates ansible/ and infra/
  python3 python3-venv python3-dev   # python/: the venv below; libpython for cargo builds of pyo3
  kcat         # Kafka listener tests (kafka/tests): a librdkafka client from Debian
)

log() { printf '[setup] %s\n' "$*"; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "[setup] cargo not found: install the Rust toolchain (rustup) first" >&2
  exit 1
fi
for c in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
    log "adding rustup component $c"
    rustup component add "$c"
  fi
done

# The Python client (python/): a venv at the repo root with Debian's python3, holding maturin
# (builds the abi3 wheel), pytest (python/tests) and iceoryx2's Python package (the peer of
# `ms-bench bindings`). scripts/test.sh and ms-bench build the wheel and install it there.
# The Kafka clients the Kafka listener's tests drive (python/tests/test_kafka.py): kafka-python
# with its codecs python-snappy, lz4 and zstandard, and confluent-kafka (its wheel bundles librdkafka).
VENV="$(cd "$(dirname "$0")/.." && pwd)/.venv"
PY_PACKAGES=(maturin==1.16.0 pytest==9.2.0 iceoryx2==0.10.0
  kafka-python==3.0.12 python-snappy==0.7.3 lz4==4.4.5 zstandard==0.25.0 confluent-kafka==2.16.1)
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.base_prefix != "/usr")'; then
  log "creating the Python venv $VENV (Debian's python3)"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv "$VENV"
fi
py_missing=()
for p in "${PY_PACKAGES[@]}"; do
  [[ $("$VENV/bin/python" -m pip show "${p%%==*}" 2>/dev/null | sed -n 's/^Version: //p') == "${p##*==}" ]] ||
    py_missing+=("$p")
done
if ((${#py_missing[@]})); then
  log "installing into the venv (PyPI): ${py_missing[*]}"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${py_missing[@]}"
else
  log "Python venv present"
fi

# The programs privileged tests run (testkit::require! fails them under `make test` when one is
# missing). The kernel parts they need (network namespaces, veth, XDP, AF_XDP, hugetlbfs)
# cannot be installed here; bpffs is mounted by the XDP loader itself.
TEST_TOOLS=(ip ethtool unshare setpriv mount umount mountpoint)

if [[ "${1:-}" == "--test" ]]; then
  if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz (crates.io)"
    cargo install --locked cargo-fuzz --version 0.12.0 >/dev/null
  fi
  absent=()
  for t in "${TEST_TOOLS[@]}"; do
    command -v "$t" >/dev/null 2>&1 || absent+=("$t")
  done
  if ((${#absent[@]})); then
    echo "[setup] not on PATH after installing the packages above: ${absent[*]}" >&2
    exit 1
  fi
fi
log "done"
