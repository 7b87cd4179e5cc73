#!/usr/bin/env bash
# Idempotent set-up of a fresh machine for MemoryStreamer: Debian packages,
# Rust components and cargo tools. Safe to run many times; does nothing when
# everything is present. Hugepages are reserved by scripts/hugepages.sh.
#
#   scripts/setup.sh            packages needed to build, run and bench
#   scripts/setup.sh --test     also the tools the test suite needs (cargo-fuzz)
set -euo pipefail

APT_PACKAGES=(
  fio          # storage bench peer (ms-bench storage)
  iproute2     # ip netns / veth / tc netem for data-plane and control-plane tests
  util-linux   # mount, taskset
  pkg-config
  clang llvm libbpf-dev      # xdp-programs: C XDP programs built with clang -target bpf
  m4 libelf-dev zlib1g-dev   # xsk-rs (AF_XDP) builds its vendored libxdp/libbpf
  etcd-server  # ms-bench control: the etcd peer
  ethtool      # AF_XDP queue set-up on veth (ethtool -L)
  ansible ansible-lint jq   # scripts/check-deploy.sh validates ansible/ and infra/
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

if [[ "${1:-}" == "--test" ]]; then
  if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz (crates.io)"
    cargo install --locked cargo-fuzz --version 0.12.0 >/dev/null
  fi
fi
log "done"
