#!/usr/bin/env bash
# Validates the operators' deployment kit (infra/ and ansible/) without changing this machine:
#
#   1. systemd units: `systemd-analyze verify` on temp copies whose ExecStart points at the local
#      build; any warning (unknown key, bad value, missing binary) fails; `systemd-analyze
#      security --offline` keeps memstreamer.service's exposure score at 5.0 or below.
#   2. Prometheus: `promtool check config`, `promtool check rules`, `promtool test rules` (promtool
#      taken from Debian's prometheus .deb, extracted into a cache dir: nothing is installed or
#      started).
#   3. Metric names: every ms_cp_* name used by the alert rules, the dashboard and the ansible
#      templates must be one that controlplane/src/http.rs exports.
#   4. Grafana dashboard: valid JSON (jq), with the structure Grafana needs.
#   5. Ansible: `--syntax-check`, `ansible-lint` (Debian's package), the node
#      configuration templates rendered into a temp dir and checked by `memstreamer
#      check-config` (data plane) and against controlplane::node::NodeConfig's fields (control
#      plane); a smoke test runs `memstreamer node` on loopback with a rendered configuration
#      (temp dirs, free ports) and checks its live /metrics; then two CHECK-MODE runs of site.yml against localhost (--check --diff); a snapshot of
#      every path the playbook would write is compared before and after it.
#
# Installs with apt what it needs (ansible, ansible-lint, jq); idempotent; exits non-zero on the first failure.
# Usage: scripts/check-deploy.sh   (as root; about 1 minute)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MS_CHECK_DEPLOY_CACHE:-/var/cache/memstreamer-check-deploy}
TMP=$(mktemp -d /tmp/check-deploy.XXXXXX)
SHM=/dev/shm/check-deploy-$$
NODE_PID=""
cleanup() {
  if [[ -n "$NODE_PID" ]] && kill -0 "$NODE_PID" 2>/dev/null; then
    kill -TERM "$NODE_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$NODE_PID" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$NODE_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP" "$SHM"
}
trap cleanup EXIT
trap "exit 130" INT TERM HUP PIPE
log() { printf '[check-deploy] %s\n' "$*"; }
fail() { printf '[check-deploy] FAILED: %s\n' "$*" >&2; exit 1; }
START=$(date +%s)

# --- tools -------------------------------------------------------------------------------
need_apt=()
command -v ansible-playbook >/dev/null || need_apt+=(ansible)
command -v ansible-lint >/dev/null || need_apt+=(ansible-lint)
command -v jq >/dev/null || need_apt+=(jq)
command -v curl >/dev/null || need_apt+=(curl)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
if ((${#need_apt[@]})); then
  log "installing ${need_apt[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PROMTOOL=$(command -v promtool || true)
if [[ -z "$PROMTOOL" ]]; then
  PROMTOOL=$CACHE/promtool
  if [[ ! -x "$PROMTOOL" ]]; then
    log "fetching promtool from Debian's prometheus package (download only, not installed)"
    mkdir -p "$CACHE/deb"
    (cd "$CACHE/deb" && { apt-get download -q prometheus >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && apt-get download -q prometheus >/dev/null 2>&1; }; }) ||
      fail "apt-get download prometheus failed (network?): install promtool, or retry"
    dpkg-deb --fsys-tarfile "$CACHE"/deb/prometheus_*.deb |
      tar -xO ./usr/bin/promtool >"$PROMTOOL.part"
    chmod 0755 "$PROMTOOL.part"
    mv "$PROMTOOL.part" "$PROMTOOL"
    rm -rf "$CACHE/deb"
  fi
fi

# The newest local build (release or debug).
BIN=$(ls -t "$ROOT/target/release/memstreamer" "$ROOT/target/debug/memstreamer" 2>/dev/null | head -1 || true)
[[ -n "$BIN" ]] || fail "no memstreamer build in target/: run cargo build -p memstreamer (or --release)"

# --- 1. systemd units ----------------------------------------------------------------------
log "systemd-analyze verify infra/systemd"
mkdir -p "$TMP/units"
for u in "$ROOT"/infra/systemd/*.service; do
  sed -e "s#/usr/local/bin/memstreamer#$BIN#g" \
    -e "s#/usr/local/sbin/memstreamer-irq-affinity#$ROOT/infra/systemd/memstreamer-irq-affinity#g" \
    "$u" >"$TMP/units/$(basename "$u")"
done
out=$(cd "$TMP/units" && systemd-analyze verify --man=no ./*.service 2>&1) ||
  fail "systemd-analyze verify: $out"
[[ -z "$out" ]] || fail "systemd-analyze verify reported: $out"
# Hardening regression guard: memstreamer.service scores 4.6 ("OK") today; fail above 5.0.
out=$(cd "$TMP/units" && systemd-analyze security --offline=yes --threshold=50 --no-pager \
  ./memstreamer.service 2>&1) ||
  fail "memstreamer.service hardening got weaker (exposure above 5.0): $(tail -1 <<<"$out")"
log "  $(grep -o 'Overall exposure level.*' <<<"$out")"
sh -n "$ROOT/infra/systemd/memstreamer-irq-affinity" || fail "infra/systemd/memstreamer-irq-affinity: shell syntax"

# --- 2. Prometheus -------------------------------------------------------------------------
log "promtool check config / check rules / test rules"
"$PROMTOOL" check config "$ROOT/infra/prometheus/prometheus.yml" >/dev/null
"$PROMTOOL" check rules "$ROOT/infra/prometheus/rules/memstreamer.rules.yml" >/dev/null
(cd "$ROOT/infra/prometheus/rules" && "$PROMTOOL" test rules memstreamer.rules.test.yml >/dev/null) ||
  fail "promtool test rules infra/prometheus/rules/memstreamer.rules.test.yml (run it for details)"

# --- 3. metric names -----------------------------------------------------------------------
log "metric names against controlplane/src/http.rs and abi/src/counters.rs"
exported=$(grep -oE '"ms_(cp|dp)_[a-z_]+' "$ROOT/controlplane/src/http.rs" | tr -d '"' | sort -u)
[[ -n "$exported" ]] || fail "no ms_cp_* metric names found in controlplane/src/http.rs"
# ms_dp_<snake_case(Counter)>[_total]: http.rs renders every abi::counters::Counter so.
exported+=$'\n'$(python3 - "$ROOT/abi/src/counters.rs" <<'EOF'
import re, sys
for name, kind in re.findall(r"^\s+([A-Z][A-Za-z0-9]*) = \d+, (Total|Gauge|Max),", open(sys.argv[1]).read(), re.M):
    snake = re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()
    print(f"ms_dp_{snake}" + ("_total" if kind == "Total" else ""))
EOF
)
grep -q '^ms_dp_rx_drop_malformed_total$' <<<"$exported" ||
  fail "could not derive the ms_dp_* names from abi/src/counters.rs"
used=$(grep -rhoE 'ms_(cp|dp)_[a-z_]+' "$ROOT/infra/prometheus" "$ROOT/infra/grafana" "$ROOT/ansible" |
  sed -E 's/_(bucket|sum|count)$//' | sort -u)
for m in $used; do
  grep -qx "$m" <<<"$exported" || fail "metric $m is used but controlplane/src/http.rs does not export it"
done

# --- 4. Grafana dashboard ------------------------------------------------------------------
log "dashboard JSON"
for d in "$ROOT"/infra/grafana/*.json; do
  jq -e '(.title | type == "string") and (.uid | type == "string") and (.panels | length > 0)
         and ([.panels[] | .targets[]? | .expr | type == "string"] | all)' "$d" >/dev/null ||
    fail "$d is not a Grafana dashboard (title, uid, panels with expr targets)"
done

# --- 5. Ansible ----------------------------------------------------------------------------
cd "$ROOT/ansible"
export ANSIBLE_CONFIG=$ROOT/ansible/ansible.cfg ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0
log "ansible-playbook --syntax-check"
ansible-playbook --syntax-check -i localhost, site.yml >/dev/null
ansible-inventory -i inventory.example.ini --list >/dev/null || fail "ansible/inventory.example.ini does not parse"
log "ansible-lint (production profile)"
ansible-lint --offline -q --nocolor site.yml || fail "ansible-lint (findings above)"

log "rendering the node configuration templates into $TMP"
cat >"$TMP/render.yml" <<EOF
- hosts: localhost
  connection: local
  gather_facts: false
  vars_files:
    - $ROOT/ansible/roles/tuned_host/defaults/main.yml
    - $ROOT/ansible/roles/memstreamer/defaults/main.yml
  vars:
    memstreamer_host_address: 127.0.0.1
  tasks:
    - ansible.builtin.copy:
        content: "{{ lookup('ansible.builtin.template', '$ROOT/ansible/roles/memstreamer/templates/' ~ item ~ '.j2') }}"
        dest: "$TMP/{{ variant }}-{{ item }}"
        mode: "0600"
      loop: [node.toml, controlplane.toml]
EOF
ansible-playbook -i localhost, "$TMP/render.yml" -e variant=default >/dev/null
ansible-playbook -i localhost, "$TMP/render.yml" -e variant=afxdp \
  -e '{"memstreamer_backend": "afxdp", "memstreamer_interface": "eth1", "memstreamer_queues": 2,
       "memstreamer_threading": "dedicated", "memstreamer_cores": [1, 2, 3, 4], "memstreamer_id": 2,
       "memstreamer_join": "10.0.0.1:7450", "memstreamer_superusers": ["admin", "ops"],
       "memstreamer_shm_dir": "/dev/hugepages/memstreamer", "memstreamer_storage_dir": "",
       "memstreamer_streams": [{"id": 7, "partitions": 2}, {"id": 9, "partitions": 1}]}' >/dev/null
for v in default afxdp; do
  out=$(env -i PATH="$PATH" "$BIN" check-config --config "$TMP/$v-node.toml" 2>&1) ||
    fail "memstreamer check-config rejects the $v node.toml: $out"
done
python3 - "$ROOT" "$TMP" <<'EOF' || fail "controlplane.toml template does not match controlplane::node::NodeConfig"
import re, sys, tomllib
root, tmp = sys.argv[1], sys.argv[2]
def fields(path, struct):
    src = open(path).read()
    body = re.search(r"pub struct %s \{(.*?)\n\}" % struct, src, re.S).group(1)
    return set(re.findall(r"^\s*pub (\w+):", body, re.M))
top = fields(f"{root}/controlplane/src/node.rs", "NodeConfig")
admin = fields(f"{root}/controlplane/src/grpc/serve.rs", "AdminConfig")
for v in ("default", "afxdp"):
    cfg = tomllib.load(open(f"{tmp}/{v}-controlplane.toml", "rb"))
    bad = set(cfg) - top | {f"admin.{k}" for k in set(cfg.get("admin", {})) - admin}
    if bad:
        sys.exit(f"{v}: unknown keys {sorted(bad)}")
    if not isinstance(cfg["id"], int) or cfg["id"] <= 0:
        sys.exit(f"{v}: id must be a positive integer")
EOF

# Smoke test: the node runs with the configuration the role renders (loopback, free ports,
# every directory under $TMP and $SHM) and its /metrics serves every metric the alert rules
# and the dashboard use.
read -r P_DATA P_CTRL P_HTTP < <(python3 -c 'import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
ansible-playbook -i localhost, "$TMP/render.yml" -e variant=smoke -e "{
  \"memstreamer_data_listen\": \"127.0.0.1:$P_DATA\", \"memstreamer_control_listen\": \"127.0.0.1:$P_CTRL\",
  \"memstreamer_http_listen\": \"127.0.0.1:$P_HTTP\", \"memstreamer_idle\": \"backoff\",
  \"memstreamer_ring_capacity_bytes\": 1048576, \"memstreamer_shm_dir\": \"$SHM\",
  \"memstreamer_storage_dir\": \"$TMP/storage\", \"memstreamer_counters_file\": \"$TMP/counters\",
  \"memstreamer_data_dir\": \"$TMP/cp\", \"memstreamer_cert_dir\": \"$TMP/cp/certs\"}" >/dev/null
log "smoke test: memstreamer node with the rendered configuration (ports $P_DATA/$P_CTRL/$P_HTTP)"
env -i PATH="$PATH" "$BIN" node --config "$TMP/smoke-node.toml" \
  --controlplane-config "$TMP/smoke-controlplane.toml" \
  --kafka-listen 127.0.0.1:0 --kafka-data-dir "$TMP/kafka" >"$TMP/node.log" 2>&1 &
NODE_PID=$!
ready=""
for _ in $(seq 1 120); do
  if curl -sf "http://127.0.0.1:$P_HTTP/ready" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$NODE_PID" 2>/dev/null || break
  sleep 0.25
done
[[ -n "$ready" ]] || { cat "$TMP/node.log" >&2; fail "the node did not become ready within 30 s with the rendered configuration"; }
live=$(curl -sf "http://127.0.0.1:$P_HTTP/metrics" | sed -n 's/^# TYPE \([a-z_]*\) .*/\1/p' | sort -u)
for m in $used; do
  grep -qx "$m" <<<"$live" || fail "metric $m is used but the running node's /metrics does not serve it"
done
kill -TERM "$NODE_PID"
for _ in $(seq 1 60); do kill -0 "$NODE_PID" 2>/dev/null || break; sleep 0.25; done
if kill -0 "$NODE_PID" 2>/dev/null; then fail "the node did not stop within 15 s of SIGTERM"; fi
wait "$NODE_PID" || { cat "$TMP/node.log" >&2; fail "the node exited non-zero after SIGTERM"; }
NODE_PID=""

# Paths the playbook writes on a node or monitoring host: they must look the same afterwards.
# /var/lib/memstreamer only by its own owner and mode (other tests may run nodes that write
# below it); only the sysctls nothing else here sets.
snapshot() {
  local p
  for p in /etc/memstreamer /etc/sysctl.d/60-memstreamer.conf /etc/default/memstreamer \
    /etc/security/limits.d/90-memstreamer.conf /etc/tmpfiles.d/memstreamer-cpufreq.conf \
    /etc/systemd/system/memstreamer.service /etc/systemd/system/memstreamer-hugepages.service \
    /etc/systemd/system/memstreamer-irq-affinity.service /usr/local/sbin/memstreamer-irq-affinity \
    /usr/local/bin/memstreamer /etc/prometheus /etc/fstab "$ROOT/ansible/.dev-certs"; do
    if [[ -e "$p" ]]; then
      find "$p" -printf '%p %s %m %u %T@\n' 2>/dev/null | sort
    else
      echo "$p absent"
    fi
  done
  stat -c '%n %U %G %a' /var/lib/memstreamer 2>/dev/null || echo "/var/lib/memstreamer absent"
  getent passwd memstreamer || echo "user memstreamer absent"
  getent group memstreamer || echo "group memstreamer absent"
  dpkg-query -W -f='${Status}\n' prometheus 2>/dev/null || echo "prometheus not installed"
  sysctl -n net.core.busy_poll net.core.busy_read net.core.netdev_max_backlog
}
snapshot >"$TMP/before"
# Two passes: the defaults, and an AF_XDP node with a data-plane core (IRQ affinity tasks).
passes=('{}' '{"tuned_host_dataplane_cores": [1], "memstreamer_backend": "afxdp", "memstreamer_interface": "lo"}')
for extra in "${passes[@]}"; do
  log "check-mode run of site.yml against localhost (--check --diff), extra vars $extra"
  ansible-playbook -i localhost, -c local --check --diff \
    -e ms_node_hosts=localhost -e ms_monitoring_hosts=localhost \
    -e memstreamer_binary_src="$BIN" -e "$extra" site.yml >"$TMP/check-mode.log" 2>&1 ||
    { tail -40 "$TMP/check-mode.log" >&2; fail "check-mode run of site.yml with $extra"; }
  grep -E '^localhost +:' "$TMP/check-mode.log" | sed 's/^/[check-deploy]   /'
done
snapshot >"$TMP/after"
diff -u "$TMP/before" "$TMP/after" >&2 || fail "the check-mode run changed this machine (diff above)"

log "OK in $(($(date +%s) - START)) s"
