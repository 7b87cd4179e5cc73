#!/usr/bin/env bash
# Reserve / release the 2 MiB hugepage pool and the hugetlbfs mount that
# MemoryStreamer's shared-memory rings use. `reserve` remembers what was there
# before so `release` restores exactly that: we clean up what we made.
#
#   scripts/hugepages.sh reserve [PAGES]   default 512 pages (1 GiB)
#   scripts/hugepages.sh release
#   scripts/hugepages.sh status
set -euo pipefail

MOUNT=${MS_HUGETLBFS:-/dev/hugepages}
STATE_DIR=/run/memstreamer
NR=/proc/sys/vm/nr_hugepages
log() { printf '[hugepages] %s\n' "$*"; }

reserve() {
  local want=${1:-512}
  mkdir -p "$STATE_DIR"
  local have; have=$(cat "$NR")
  if [[ ! -f "$STATE_DIR/nr_hugepages.prev" ]]; then
    echo "$have" >"$STATE_DIR/nr_hugepages.prev"
  fi
  if ((have < want)); then
    echo "$want" >"$NR" || true
    have=$(cat "$NR")
    if ((have < want)); then
      log "asked for $want hugepages, the kernel gave $have (fragmented memory?); rings fall back to /dev/shm"
    fi
  fi
  if ! mountpoint -q "$MOUNT"; then
    mkdir -p "$MOUNT"
    mount -t hugetlbfs -o pagesize=2M none "$MOUNT"
    touch "$STATE_DIR/mounted"
  fi
  log "pool: $(cat "$NR") pages of 2 MiB, hugetlbfs at $MOUNT"
}

release() {
  rm -rf "${MOUNT:?}/memstreamer"
  if [[ -f "$STATE_DIR/mounted" ]]; then
    umount "$MOUNT" 2>/dev/null || log "could not unmount $MOUNT (busy?)"
    rmdir "$MOUNT" 2>/dev/null || true
    rm -f "$STATE_DIR/mounted"
  fi
  if [[ -f "$STATE_DIR/nr_hugepages.prev" ]]; then
    cat "$STATE_DIR/nr_hugepages.prev" >"$NR"
    rm -f "$STATE_DIR/nr_hugepages.prev"
  fi
  log "pool restored to $(cat "$NR") pages"
}

status() {
  grep -E 'HugePages_(Total|Free|Rsvd)' /proc/meminfo
  mountpoint "$MOUNT" 2>/dev/null || echo "$MOUNT is not a hugetlbfs mount"
}

case "${1:-status}" in
  reserve) reserve "${2:-512}" ;;
  release) release ;;
  status) status ;;
  *) echo "usage: $0 reserve [PAGES] | release | status" >&2; exit 2 ;;
esac
