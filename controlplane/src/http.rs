//! HTTP endpoints (axum): `/metrics` in Prometheus text format, `/health`
//! (the process serves requests) and `/ready` (a Raft leader is known and the
//! node's Raft core runs).
//!
//! Metrics:
//!
//! ```text
//! ms_cp_term                     gauge      current Raft term
//! ms_cp_leader                   gauge      leader's node id (0 = none known)
//! ms_cp_is_leader                gauge      1 on the leader
//! ms_cp_commit_index             gauge      highest committed log index
//! ms_cp_applied_index            gauge      highest log index applied to the state machine
//! ms_cp_apply_latency_seconds    histogram  admin proposal -> committed and applied on the leader
//! ms_cp_policy_push_seconds      histogram  applied state seen -> XDP maps written (all interfaces)
//! ms_cp_policy_push_errors_total counter    pushes where an interface could not be written
//! ms_cp_admin_requests_total     counter    admin calls answered
//! ms_cp_admin_denied_total       counter    admin calls refused (unauthenticated / permission)
//! ```
//!
//! With `[admin] dataplane_counters` (which `memstreamer node` sets) the same
//! page carries the local data plane's counters, read from its shared-memory
//! counters file (`abi::counters`, seqlocked, no call into the data
//! plane):
//!
//! ```text
//! ms_dp_up                        gauge    1 when the counters file is readable and its writer alive
//! ms_dp_counters_age_seconds      gauge    since the data plane last refreshed the file
//! ms_dp_<counter>_total           counter  every `Total` counter, e.g. ms_dp_rx_drop_malformed_total
//! ms_dp_<counter>                 gauge    every `Gauge`/`Max` counter, e.g. ms_dp_rx_sessions_active
//! ms_dp_partition_archived_records_total{stream,partition}  records the archiver appended
//! ms_dp_partition_durable_records_total{stream,partition}   records durable on storage
//! ```
//! Counter names are the snake_case of `abi::counters::Counter`
//! (stable: ids and names are only ever appended).
//!
//! Replication (#11), from the applied cluster metadata and the replica
//! statuses ([`crate::replicas`]):
//!
//! ```text
//! ms_partitions_under_replicated   gauge  partitions whose ISR is smaller than their replica set
//! ms_partitions_below_min_isr      gauge  partitions whose ISR is below min_insync_replicas
//! ms_partitions_leaderless         gauge  partitions with no leader (no ISR member live)
//! ms_cp_unclean_elections_total    counter  unclean leader elections this node committed
//! ms_cp_status_records_total       counter  status records read from the local data plane
//! ms_cp_status_records_refused_total counter  status records refused (bad or another node's)
//! ms_partition_under_replicated{stream,partition}   gauge 0/1, partitions this node replicates
//! ms_replica_state{stream,partition,state}          gauge 1 for the state this node's replica reports
//! ms_replica_log_end{stream,partition}              gauge this node's replica's log end
//! ms_replica_durable{stream,partition}              gauge this node's replica's durable offset
//! ms_replica_lag_records{stream,partition,node}     gauge on the Raft leader: leader log end - replica log end
//! ```
//! Per-partition series stop at [`PARTITION_SERIES_MAX`] per family
//! (`ms_partition_series_truncated 1` says so).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use openraft::Raft;

use crate::cluster::Cluster;
use crate::replicas::{LocalReplicas, PartitionReports, ReplicaServing};
use crate::types::{ClusterState, NodeId, TypeConfig, LEADER_NONE};

/// Most per-partition series one family of replication metrics shows.
pub const PARTITION_SERIES_MAX: usize = 4_096;

/// Bucket upper bounds in microseconds (policy push and apply latencies).
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

/// A Prometheus histogram with fixed buckets, updated lock-free.
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let slot = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.buckets[LATENCY_BUCKETS_US.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Counters and histograms of one control-plane node.
#[derive(Default)]
pub struct Metrics {
    pub apply_latency: Histogram,
    pub policy_push: Histogram,
    pub policy_push_errors: AtomicU64,
    pub admin_requests: AtomicU64,
    pub admin_denied: AtomicU64,
}

/// The Raft figures `/metrics` shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaftFigures {
    pub node_id: u64,
    pub term: u64,
    pub leader: Option<u64>,
    pub commit_index: u64,
    pub applied_index: u64,
}

/// Reads the Raft figures of `raft` (commit index from the Raft core).
pub async fn raft_figures(raft: &Raft<TypeConfig>) -> RaftFigures {
    let m = raft.metrics().borrow().clone();
    let commit_index = raft
        .with_raft_state(|st| st.committed.map(|l| l.index).unwrap_or(0))
        .await
        .unwrap_or(0);
    RaftFigures {
        node_id: m.id,
        term: m.current_term,
        leader: m.current_leader,
        commit_index,
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
    }
}

impl Metrics {
    /// The Prometheus text exposition of these metrics and `raft`.
    pub fn render(&self, raft: &RaftFigures) -> String {
        let mut out = String::with_capacity(4096);
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(&mut out, "ms_cp_term", "Current Raft term.", raft.term);
        gauge(
            &mut out,
            "ms_cp_leader",
            "Node id of the Raft leader (0 = unknown).",
            raft.leader.unwrap_or(0),
        );
        gauge(
            &mut out,
            "ms_cp_is_leader",
            "1 when this node is the Raft leader.",
            u64::from(raft.leader == Some(raft.node_id)),
        );
        gauge(
            &mut out,
            "ms_cp_commit_index",
            "Highest committed Raft log index.",
            raft.commit_index,
        );
        gauge(
            &mut out,
            "ms_cp_applied_index",
            "Highest Raft log index applied to the state machine.",
            raft.applied_index,
        );
        self.apply_latency.render(
            "ms_cp_apply_latency_seconds",
            "Admin proposal until committed and applied on the leader.",
            &mut out,
        );
        self.policy_push.render(
            "ms_cp_policy_push_seconds",
            "Applied state seen until the XDP maps of every data interface are written.",
            &mut out,
        );
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let v = v.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "ms_cp_policy_push_errors_total",
            "Policy pushes where an interface could not be written.",
            &self.policy_push_errors,
        );
        counter(
            &mut out,
            "ms_cp_admin_requests_total",
            "Admin calls answered.",
            &self.admin_requests,
        );
        counter(
            &mut out,
            "ms_cp_admin_denied_total",
            "Admin calls refused (unauthenticated or not permitted).",
            &self.admin_denied,
        );
        out
    }
}

#[derive(Clone)]
struct HttpState {
    raft: Raft<TypeConfig>,
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    dataplane_counters: Option<PathBuf>,
}

/// Cluster-wide partition health from the applied metadata.
fn render_partition_health(state: &ClusterState, out: &mut String) {
    let (mut under, mut below, mut leaderless) = (0u64, 0u64, 0u64);
    let min_isr: std::collections::BTreeMap<u32, u8> = state
        .streams
        .values()
        .map(|s| (s.id, s.policy.min_insync_replicas))
        .collect();
    for a in state.assignments.values().flatten() {
        under += u64::from(a.isr.len() < a.replicas.len());
        let min = usize::from(min_isr.get(&a.stream_id).copied().unwrap_or(1));
        below += u64::from(a.isr.len() < min);
        leaderless += u64::from(a.leader == LEADER_NONE);
    }
    for (name, help, v) in [
        (
            "ms_partitions_under_replicated",
            "Partitions whose ISR is smaller than their replica set.",
            under,
        ),
        (
            "ms_partitions_below_min_isr",
            "Partitions whose ISR is below min_insync_replicas (acks=all writes refused).",
            below,
        ),
        (
            "ms_partitions_leaderless",
            "Partitions without a leader (no ISR member live).",
            leaderless,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
}

/// Per-partition replication series: this node's replicas (`me`), and on the Raft leader the
/// lag of every replica that reported (`reports`, empty elsewhere).
pub fn render_replication(
    state: &ClusterState,
    me: NodeId,
    local: &LocalReplicas,
    reports: &PartitionReports,
    out: &mut String,
) {
    render_partition_health(state, out);
    let names: std::collections::BTreeMap<u32, &str> = state
        .streams
        .values()
        .map(|s| (s.id, s.name.as_str()))
        .collect();
    let name = |id: u32| names.get(&id).copied().unwrap_or("-");
    let mut truncated = false;
    let _ = writeln!(out, "# HELP ms_partition_under_replicated 1 when the partition's ISR is smaller than its replica set (partitions this node replicates).\n# TYPE ms_partition_under_replicated gauge");
    let mine = state
        .assignments
        .values()
        .flatten()
        .filter(|a| a.replicas.contains(&me));
    for (i, a) in mine.enumerate() {
        if i == PARTITION_SERIES_MAX {
            truncated = true;
            break;
        }
        let v = u8::from(a.isr.len() < a.replicas.len());
        let _ = writeln!(
            out,
            "ms_partition_under_replicated{{stream=\"{}\",partition=\"{}\"}} {v}",
            name(a.stream_id),
            a.partition
        );
    }
    let _ = writeln!(out, "# HELP ms_replica_state 1 for the state this node's replica reports (serving, catching_up, no_ring, no_storage, refused, removed).\n# TYPE ms_replica_state gauge");
    let local = local.snapshot(PARTITION_SERIES_MAX);
    truncated |= local.len() == PARTITION_SERIES_MAX;
    for r in &local {
        for st in ReplicaServing::ALL {
            let _ = writeln!(
                out,
                "ms_replica_state{{stream=\"{}\",partition=\"{}\",state=\"{}\"}} {}",
                name(r.stream_id),
                r.partition,
                st.as_str(),
                u8::from(r.state == st)
            );
        }
    }
    for (family, help, get) in [
        (
            "ms_replica_log_end",
            "Next offset this node's replica will store.",
            (|r: &crate::replicas::ReplicaReport| r.log_end) as fn(&_) -> u64,
        ),
        (
            "ms_replica_durable",
            "Offsets below this are on this node's replica's disk.",
            |r| r.durable,
        ),
    ] {
        let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} gauge");
        for r in &local {
            let _ = writeln!(
                out,
                "{family}{{stream=\"{}\",partition=\"{}\"}} {}",
                name(r.stream_id),
                r.partition,
                get(r)
            );
        }
    }
    truncated |= render_lag(state, reports, &name, out);
    let _ = writeln!(out, "# HELP ms_partition_series_truncated 1 when per-partition series were cut at {PARTITION_SERIES_MAX}.\n# TYPE ms_partition_series_truncated gauge\nms_partition_series_truncated {}", u8::from(truncated));
}

/// `ms_replica_lag_records` from the reports the Raft leader holds; true when truncated.
fn render_lag<'a>(
    state: &ClusterState,
    reports: &PartitionReports,
    name: &dyn Fn(u32) -> &'a str,
    out: &mut String,
) -> bool {
    let _ = writeln!(out, "# HELP ms_replica_lag_records Records a replica is behind its leader's log end (reported on the Raft leader).\n# TYPE ms_replica_lag_records gauge");
    let mut n = 0usize;
    for ((stream, partition), rs) in reports {
        let Ok(a) = state.assignment(*stream, *partition) else {
            continue;
        };
        let Some(leader_end) = rs.iter().find(|r| r.node == a.leader).map(|r| r.log_end) else {
            continue;
        };
        for r in rs.iter().filter(|r| a.replicas.contains(&r.node)) {
            if n == PARTITION_SERIES_MAX {
                return true;
            }
            n += 1;
            let _ = writeln!(
                out,
                "ms_replica_lag_records{{stream=\"{}\",partition=\"{partition}\",node=\"{}\"}} {}",
                name(*stream),
                r.node,
                leader_end.saturating_sub(r.log_end)
            );
        }
    }
    false
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let figures = raft_figures(&s.raft).await;
    let mut text = s.metrics.render(&figures);
    render_cluster_replication(
        &s.cluster,
        figures.leader == Some(figures.node_id),
        &mut text,
    );
    if let Some(path) = s.dataplane_counters {
        let snap =
            tokio::task::spawn_blocking(move || abi::counters::CountersSnapshot::read(&path)).await;
        match snap {
            Ok(snap) => render_dataplane(snap.as_ref().ok(), now_unix_ns(), &mut text),
            Err(_) => render_dataplane(None, now_unix_ns(), &mut text),
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

fn render_cluster_replication(cluster: &Cluster, is_leader: bool, out: &mut String) {
    let reports = if is_leader {
        cluster
            .cluster_replicas()
            .fresh(cluster.report_max_age(), std::time::Instant::now())
    } else {
        PartitionReports::new()
    };
    let local = cluster.local_replicas();
    cluster.view().read(|d| {
        render_replication(&d.state, cluster.me().id, local, &reports, out);
    });
    for (name, help, v) in [
        (
            "ms_cp_unclean_elections_total",
            "Unclean leader elections this node committed.",
            cluster.unclean_elections.load(Ordering::Relaxed),
        ),
        (
            "ms_cp_status_records_total",
            "Status records read from the local data plane's status ring.",
            local.records.load(Ordering::Relaxed),
        ),
        (
            "ms_cp_status_records_refused_total",
            "Status records refused (did not decode, or named another node).",
            local.refused.load(Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
}

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `RxDropMalformed` -> `rx_drop_malformed`.
fn snake_case(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 8);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                s.push('_');
            }
            s.push(c.to_ascii_lowercase());
        } else {
            s.push(c);
        }
    }
    s
}

/// Appends the data plane's counters (`ms_dp_*`) to `out`; `ms_dp_up 0` alone
/// when there is no snapshot (file missing, unreadable, or another format).
pub fn render_dataplane(
    snap: Option<&abi::counters::CountersSnapshot>,
    now_unix_ns: u64,
    out: &mut String,
) {
    use abi::counters::CounterKind;
    let gauge = |out: &mut String, name: &str, help: &str, v: &dyn std::fmt::Display| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    let up = snap.is_some_and(|s| s.writer_alive());
    gauge(
        out,
        "ms_dp_up",
        "1 when the data plane's counters file is readable and its writer alive.",
        &u8::from(up),
    );
    let Some(snap) = snap else {
        return;
    };
    let age = now_unix_ns.saturating_sub(snap.updated_unix_ns) as f64 / 1e9;
    gauge(
        out,
        "ms_dp_counters_age_seconds",
        "Since the data plane last refreshed its counters file.",
        &format_args!("{age:.3}"),
    );
    for &(counter, value) in &snap.values {
        let base = format!("ms_dp_{}", snake_case(&format!("{counter:?}")));
        let (name, kind) = match counter.kind() {
            CounterKind::Total => (format!("{base}_total"), "counter"),
            CounterKind::Gauge | CounterKind::Max => (base, "gauge"),
        };
        let _ = writeln!(
            out,
            "# HELP {name} {}.
# TYPE {name} {kind}
{name} {value}",
            counter.label()
        );
    }
    for (name, help, get) in [
        (
            "ms_dp_partition_archived_records_total",
            "Records the archiver appended to storage",
            (|p| p.archived_records) as fn(&abi::counters::PartitionSnapshot) -> u64,
        ),
        (
            "ms_dp_partition_durable_records_total",
            "Records durable on storage",
            |p| p.durable_records,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}.
# TYPE {name} counter"
        );
        for p in &snap.partitions {
            let _ = writeln!(
                out,
                "{name}{{stream=\"{}\",partition=\"{}\"}} {}",
                p.stream,
                p.partition,
                get(p)
            );
        }
    }
}

async fn health() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn ready(State(s): State<HttpState>) -> impl IntoResponse {
    let m = s.raft.metrics().borrow().clone();
    if let Err(e) = &m.running_state {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("raft stopped: {e}; restart the node\n"),
        );
    }
    match m.current_leader {
        Some(leader) => (StatusCode::OK, format!("ready (leader {leader})\n")),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no Raft leader known yet: wait for the election, or join a cluster\n".to_string(),
        ),
    }
}

/// The router of `/metrics`, `/health`, `/ready`; `/metrics` also shows the
/// data plane's counters file at `dataplane_counters` when given.
pub fn router(
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    dataplane_counters: Option<PathBuf>,
) -> Router {
    Router::new()
        .route("/metrics", get(self::metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(HttpState {
            raft: cluster.raft().clone(),
            cluster,
            metrics,
            dataplane_counters,
        })
}

/// Binds `addr` and serves the router until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    dataplane_counters: Option<PathBuf>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(cluster, metrics, dataplane_counters))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the HTTP listener, with a message that says what to change.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, HttpBindError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpBindError { addr, source })
}

#[derive(Debug, thiserror::Error)]
#[error(
    "could not listen for HTTP on {addr}: {source}; pick a free port (http_listen in the config)"
)]
pub struct HttpBindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_metrics_show_under_replicated_partitions_states_and_lag() {
        use crate::replicas::{ReplicaReport, ReplicaRole};
        use crate::types::{Command, NodeInfo, NodeLiveness, ReplicationPolicy, StreamMode};
        let mut s = ClusterState::default();
        for id in 1..=3 {
            s.apply(&Command::RegisterNode(NodeInfo {
                id,
                ..Default::default()
            }));
        }
        s.apply(&Command::CreateStream {
            name: "o".into(),
            partitions: 2,
            replication_factor: 3,
            retention_bytes: 0,
            retention_ms: 0,
            mode: StreamMode::Reliable,
            policy: ReplicationPolicy {
                min_insync_replicas: 3,
                ..ReplicationPolicy::default()
            },
        });
        s.apply(&Command::SetNodeLiveness {
            id: 3,
            liveness: NodeLiveness::Dead,
        });
        s.apply(&Command::UpdateIsr {
            stream_id: 0,
            partition: 0,
            leader: 1,
            leader_epoch: 1,
            isr: vec![1, 2],
        });
        let report = |node, state, log_end| ReplicaReport {
            stream_id: 0,
            partition: 0,
            node,
            role: if node == 1 {
                ReplicaRole::Leader
            } else {
                ReplicaRole::Follower
            },
            state,
            leader_epoch: 1,
            log_end,
            durable: log_end - 1,
            hw_replicated: 0,
            hw_persisted: 0,
            proposed_isr: Vec::new(),
        };
        let local = LocalReplicas::default();
        local.put(report(2, ReplicaServing::CatchingUp, 70));
        let mut reports = PartitionReports::new();
        reports.insert(
            (0, 0),
            vec![
                report(1, ReplicaServing::Serving, 100),
                report(2, ReplicaServing::CatchingUp, 70),
            ],
        );
        let mut out = String::new();
        render_replication(&s, 2, &local, &reports, &mut out);
        for want in [
            "ms_partitions_under_replicated 1",
            "ms_partitions_below_min_isr 1",
            "ms_partitions_leaderless 0",
            "ms_partition_under_replicated{stream=\"o\",partition=\"0\"} 1",
            "ms_partition_under_replicated{stream=\"o\",partition=\"1\"} 0",
            "ms_replica_state{stream=\"o\",partition=\"0\",state=\"catching_up\"} 1",
            "ms_replica_state{stream=\"o\",partition=\"0\",state=\"serving\"} 0",
            "ms_replica_log_end{stream=\"o\",partition=\"0\"} 70",
            "ms_replica_durable{stream=\"o\",partition=\"0\"} 69",
            "ms_replica_lag_records{stream=\"o\",partition=\"0\",node=\"1\"} 0",
            "ms_replica_lag_records{stream=\"o\",partition=\"0\",node=\"2\"} 30",
            "ms_partition_series_truncated 0",
        ] {
            assert!(
                out.lines().any(|l| l == want),
                "{want} missing from:\n{out}"
            );
        }
    }

    #[test]
    fn dataplane_counters_render_with_stable_names() {
        use abi::counters::{Counter, CountersSnapshot, PartitionSnapshot};
        let mut out = String::new();
        render_dataplane(None, 0, &mut out);
        assert_eq!(out.lines().last(), Some("ms_dp_up 0"));
        let snap = CountersSnapshot {
            pid: std::process::id(),
            updated_unix_ns: 1_000_000_000,
            started_unix_ns: 0,
            values: vec![
                (Counter::RxDropMalformed, 7),
                (Counter::RxSessionsActive, 2),
            ],
            partitions: vec![PartitionSnapshot {
                stream: 3,
                partition: 1,
                archived_records: 10,
                durable_records: 9,
                durable_ring_mark: 0,
            }],
        };
        let mut out = String::new();
        render_dataplane(Some(&snap), 3_500_000_000, &mut out);
        for line in [
            "ms_dp_up 1",
            "ms_dp_counters_age_seconds 2.500",
            "# TYPE ms_dp_rx_drop_malformed_total counter",
            "ms_dp_rx_drop_malformed_total 7",
            "# TYPE ms_dp_rx_sessions_active gauge",
            "ms_dp_rx_sessions_active 2",
            "ms_dp_partition_archived_records_total{stream=\"3\",partition=\"1\"} 10",
            "ms_dp_partition_durable_records_total{stream=\"3\",partition=\"1\"} 9",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        // Every metric name is valid Prometheus ([a-zA-Z_:][a-zA-Z0-9_:]*).
        for c in Counter::ALL {
            let name = snake_case(&format!("{c:?}"));
            assert!(
                name.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_'),
                "{name}"
            );
        }
    }

    #[test]
    fn exposition_has_every_series_and_cumulative_buckets() {
        let m = Metrics::default();
        m.policy_push.observe(Duration::from_micros(40));
        m.policy_push.observe(Duration::from_micros(700));
        m.policy_push.observe(Duration::from_secs(60));
        let text = m.render(&RaftFigures {
            node_id: 1,
            term: 3,
            leader: Some(1),
            commit_index: 9,
            applied_index: 8,
        });
        for line in [
            "ms_cp_term 3",
            "ms_cp_leader 1",
            "ms_cp_is_leader 1",
            "ms_cp_commit_index 9",
            "ms_cp_applied_index 8",
            "ms_cp_policy_push_seconds_bucket{le=\"0.00005\"} 1",
            "ms_cp_policy_push_seconds_bucket{le=\"0.001\"} 2",
            "ms_cp_policy_push_seconds_bucket{le=\"+Inf\"} 3",
            "ms_cp_policy_push_seconds_count 3",
            "ms_cp_apply_latency_seconds_count 0",
            "ms_cp_admin_denied_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
