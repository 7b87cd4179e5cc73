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

use crate::types::TypeConfig;

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
    metrics: Arc<Metrics>,
    dataplane_counters: Option<PathBuf>,
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let figures = raft_figures(&s.raft).await;
    let mut text = s.metrics.render(&figures);
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
    raft: Raft<TypeConfig>,
    metrics: Arc<Metrics>,
    dataplane_counters: Option<PathBuf>,
) -> Router {
    Router::new()
        .route("/metrics", get(self::metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(HttpState {
            raft,
            metrics,
            dataplane_counters,
        })
}

/// Binds `addr` and serves the router until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    raft: Raft<TypeConfig>,
    metrics: Arc<Metrics>,
    dataplane_counters: Option<PathBuf>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(raft, metrics, dataplane_counters))
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
