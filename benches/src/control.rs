//! `ms-bench control`: the control plane's Raft cluster against etcd.
//!
//! Ours: three `ms-bench child control node` processes (each a
//! `controlplane::node::run`) on 127.0.0.1 with mTLS and durable logs
//! (`fdatasync` per append) in /var/tmp. The bench is a node-certificate
//! client of the Raft service's `ClientWrite` on the leader.
//! - write latency: one write at a time (a `PutPrincipal` metadata command),
//!   client send -> committed on a majority and applied on the leader -> reply;
//!   measured in alternating rounds against etcd (ours, etcd, ours, ...) with
//!   both clusters up, reporting each round's p99 ratio and their median;
//! - writes/s: `PIPELINE_DEPTH` writes in flight;
//! - failover: `kill -9` of the leader -> first write that commits through a
//!   survivor (writes retried round-robin over the survivors), >= 10 kills,
//!   the killed node restarted from its directory between kills;
//! - policy propagation: a `PutAcl` write -> the ACL applied on every node
//!   (each node's applied state polled over RPC; this is the replication +
//!   apply part of admin call -> XDP map; the map write itself is measured
//!   by the policy push histogram of the admin surface, not here).
//!
//! Peer: a 3-member etcd cluster (Debian `etcd-server`) on 127.0.0.1 with
//! data dirs in /var/tmp, written through its HTTP/JSON gateway
//! (`POST /v3/kv/put`) on one keep-alive connection to the leader; it runs
//! during the latency rounds only.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use controlplane::certs::{self, DevCerts};
use controlplane::cluster::{ClusterError, NodeStatus};
use controlplane::network::{PeerPool, Rpc};
use controlplane::node::NodeConfig;
use controlplane::types::{Acl, Command, CommandResponse, Operation, Permission, Principal};
use serde_json::json;

use hdrhistogram::Histogram;

use crate::report::{latency_histogram, Latency, Spread};
use crate::SuiteArgs;

const NODES: usize = 3;
/// Writes in flight for the throughput figure.
const PIPELINE_DEPTH: usize = 32;
/// Longest wait for a cluster to form or recover.
const WAIT_MAX: Duration = Duration::from_secs(30);
/// Deadline of one failover measurement.
const FAILOVER_MAX: Duration = Duration::from_secs(10);
/// Unrecorded writes before the first latency round, on each side.
const WARMUP_WRITES: u64 = 50;

struct BenchDir(PathBuf);

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Child processes of this suite; killed on drop.
struct Procs(Vec<Option<Child>>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.0.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Ours {
    root: PathBuf,
    certs: DevCerts,
    ports: Vec<u16>,
    procs: Procs,
    rt: tokio::runtime::Runtime,
    pool: Arc<PeerPool>,
}

impl Ours {
    fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    fn start(&mut self, i: usize, join: bool) -> anyhow::Result<()> {
        let mut args = vec![
            "--id".into(),
            (i + 1).to_string(),
            "--listen".into(),
            self.addr(i),
            "--data-dir".into(),
            self.root.join(format!("n{i}")).display().to_string(),
            "--cert-dir".into(),
            self.certs.dir.display().to_string(),
        ];
        if join {
            args.extend(["--join".into(), self.addr(0)]);
        }
        // /proc/self/exe still execs this binary if a rebuild replaced the
        // file during the run (current_exe() would name the new one, or none).
        let child = Proc::new("/proc/self/exe")
            .args(["child", "control", "node"])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        self.procs.0[i] = Some(child);
        Ok(())
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.procs.0[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn call<Q: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        i: usize,
        rpc: Rpc,
        req: &Q,
        timeout: Duration,
    ) -> Option<Result<T, ClusterError>> {
        self.rt
            .block_on(self.pool.call(&self.addr(i), rpc, req, timeout))
            .ok()
    }

    fn status(&self, i: usize) -> Option<NodeStatus> {
        self.call(i, Rpc::Status, &(), Duration::from_millis(300))?
            .ok()
    }

    /// The leader every node in `nodes` agrees on, once all are caught up.
    fn wait_stable(&self, nodes: &[usize]) -> anyhow::Result<usize> {
        let start = Instant::now();
        while start.elapsed() < WAIT_MAX {
            let st: Vec<Option<NodeStatus>> = nodes.iter().map(|&i| self.status(i)).collect();
            if st.iter().all(|s| s.is_some()) {
                let st: Vec<NodeStatus> = st.into_iter().flatten().collect();
                let leader = st[0].leader;
                let voters = st[0].members.iter().filter(|m| m.voter).count();
                let applied: BTreeSet<Option<u64>> =
                    st.iter().map(|s| s.last_applied_index).collect();
                if leader.is_some()
                    && voters == NODES
                    && st.iter().all(|s| s.leader == leader)
                    && applied.len() == 1
                {
                    return Ok((leader.unwrap_or(1) - 1) as usize);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the control-plane cluster did not settle within {WAIT_MAX:?}")
    }

    fn write(&self, i: usize, cmd: &Command, timeout: Duration) -> bool {
        matches!(
            self.call::<_, CommandResponse>(i, Rpc::ClientWrite, cmd, timeout),
            Some(Ok(r)) if !matches!(r, CommandResponse::Rejected(_))
        )
    }
}

fn principal(k: u64) -> Command {
    Command::PutPrincipal(Principal {
        name: format!("bench-principal-{k}"),
    })
}

/// One round of sequential writes to the leader for `duration`. A write that
/// fails (the leader changed under load) is not recorded; the new leader is
/// found and the round goes on. Returns the latencies, the leader at the end
/// and the number of failed writes.
fn ours_round(
    ours: &Ours,
    mut leader: usize,
    duration: Duration,
    next: &mut u64,
) -> anyhow::Result<(Histogram<u64>, usize, u64)> {
    let mut h = latency_histogram();
    let mut failed = 0u64;
    let end = Instant::now() + duration;
    while Instant::now() < end {
        *next += 1;
        let t = Instant::now();
        if ours.write(leader, &principal(*next), Duration::from_secs(2)) {
            h.record(t.elapsed().as_nanos() as u64)?;
        } else {
            failed += 1;
            leader = ours.wait_stable(&[0, 1, 2])?;
        }
    }
    Ok((h, leader, failed))
}

fn throughput(ours: &Ours, leader: usize, seconds: u64, next: &mut u64) -> f64 {
    let addr = ours.addr(leader);
    let pool = ours.pool.clone();
    let base = *next;
    *next += 10_000_000;
    ours.rt.block_on(async move {
        let end = Instant::now() + Duration::from_secs(seconds);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..PIPELINE_DEPTH as u64 {
            let pool = pool.clone();
            let addr = addr.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                let mut k = base + w * 100_000;
                while Instant::now() < end {
                    k += 1;
                    let r = pool
                        .call::<Command, CommandResponse, ClusterError>(
                            &addr,
                            Rpc::ClientWrite,
                            &principal(k),
                            Duration::from_secs(2),
                        )
                        .await;
                    if matches!(r, Ok(Ok(_))) {
                        n += 1;
                    }
                }
                n
            }));
        }
        let mut total = 0u64;
        for t in tasks {
            total += t.await.unwrap_or(0);
        }
        total as f64 / start.elapsed().as_secs_f64()
    })
}

fn failover(ours: &mut Ours, kills: usize, next: &mut u64) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for round in 0..kills {
        let leader = ours.wait_stable(&[0, 1, 2])?;
        let survivors: Vec<usize> = (0..NODES).filter(|&i| i != leader).collect();
        ours.kill9(leader);
        let t0 = Instant::now();
        let mut done = None;
        'outer: for _ in 0..100_000 {
            for &i in &survivors {
                *next += 1;
                if ours.write(i, &principal(*next), Duration::from_millis(200)) {
                    done = Some(t0.elapsed());
                    break 'outer;
                }
            }
            if t0.elapsed() > FAILOVER_MAX {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let ms = done
            .map(|d| d.as_secs_f64() * 1e3)
            .context("no write committed after the leader was killed")?;
        println!(
            "failover {round}: killed node {} -> write committed after {ms:.0} ms",
            leader + 1
        );
        out.push(ms);
        ours.start(leader, false)?;
    }
    ours.wait_stable(&[0, 1, 2])?;
    Ok(out)
}

fn policy_propagation(ours: &Ours, rounds: usize) -> anyhow::Result<Latency> {
    let mut leader = ours.wait_stable(&[0, 1, 2])?;
    let who = Command::PutPrincipal(Principal {
        name: "bench-policy".into(),
    });
    let mut created = false;
    for _ in 0..5 {
        created = ours.write(leader, &who, Duration::from_secs(2));
        if created {
            break;
        }
        leader = ours.wait_stable(&[0, 1, 2])?;
    }
    if !created {
        bail!("cannot create the policy principal");
    }
    let mut h = latency_histogram();
    for k in 0..rounds {
        let cidr = format!("198.18.1.{}/32", k % 250 + 1)
            .parse()
            .expect("static CIDR");
        let acl = Acl {
            principal: "bench-policy".into(),
            resource_pattern: format!("bench-stream-{k}"),
            operations: vec![Operation::Write],
            permission: Permission::Allow,
            source_cidrs: vec![cidr],
        };
        let t = Instant::now();
        if !ours.write(leader, &Command::PutAcl(acl), Duration::from_secs(2)) {
            // Leadership moved under load: skip this sample.
            leader = ours.wait_stable(&[0, 1, 2])?;
            continue;
        }
        // The leader applied the ACL before answering; its applied index now
        // covers it. Wait for every node to apply up to there.
        let Some(target) = ours.status(leader).and_then(|s| s.last_applied_index) else {
            continue;
        };
        let mut pending: Vec<usize> = (0..NODES).filter(|&i| i != leader).collect();
        for _ in 0..100_000 {
            pending.retain(|&i| {
                ours.status(i)
                    .and_then(|s| s.last_applied_index)
                    .is_none_or(|a| a < target)
            });
            if pending.is_empty() || t.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        if !pending.is_empty() {
            bail!("ACL not applied on nodes {pending:?} within 5 s");
        }
        h.record(t.elapsed().as_nanos() as u64)?;
    }
    Ok(Latency::from_histogram(&h))
}

// ---- etcd peer --------------------------------------------------------

fn etcd_binary() -> Option<String> {
    let out = Proc::new("etcd").arg("--version").output().ok()?;
    let v = String::from_utf8_lossy(&out.stdout);
    v.lines().next().map(|l| l.trim().to_string())
}

fn start_etcd(root: &Path, procs: &mut Procs) -> anyhow::Result<Vec<u16>> {
    let client: Vec<u16> = (0..NODES)
        .map(|_| free_port())
        .collect::<anyhow::Result<_>>()?;
    let peer: Vec<u16> = (0..NODES)
        .map(|_| free_port())
        .collect::<anyhow::Result<_>>()?;
    let cluster = (0..NODES)
        .map(|i| format!("e{i}=http://127.0.0.1:{}", peer[i]))
        .collect::<Vec<_>>()
        .join(",");
    for i in 0..NODES {
        let c = Proc::new("etcd")
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(root.join(format!("etcd{i}")))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", client[i]),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", client[i]),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", peer[i]),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", peer[i]),
            ])
            .args([
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
            ])
            .args([
                "--initial-cluster-token",
                "ms-bench",
                "--log-level",
                "error",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start etcd")?;
        procs.0.push(Some(c));
    }
    Ok(client)
}

/// One keep-alive HTTP/1.1 connection.
struct Http {
    r: BufReader<TcpStream>,
    port: u16,
}

impl Http {
    fn connect(port: u16) -> anyhow::Result<Http> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Http {
            r: BufReader::new(s),
            port,
        })
    }

    fn post(&mut self, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        );
        self.r.get_mut().write_all(req.as_bytes())?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("bad HTTP status line")?;
        let (mut len, mut chunked) = (None, false);
        for _ in 0..100 {
            line.clear();
            self.r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            for _ in 0..10_000 {
                line.clear();
                self.r.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim(), 16).context("bad chunk size")?;
                let mut chunk = vec![0u8; n + 2];
                self.r.read_exact(&mut chunk)?;
                body.extend_from_slice(&chunk[..n]);
                if n == 0 {
                    break;
                }
            }
        } else {
            let mut b = vec![0u8; len.unwrap_or(0)];
            self.r.read_exact(&mut b)?;
            body = b;
        }
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    }
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                s.push(T[(n >> (18 - 6 * k)) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn etcd_leader_port(ports: &[u16]) -> anyhow::Result<u16> {
    let start = Instant::now();
    while start.elapsed() < WAIT_MAX {
        for &p in ports {
            let Ok(mut h) = Http::connect(p) else {
                continue;
            };
            let Ok((200, body)) = h.post("/v3/maintenance/status", "{}") else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let me = v["header"]["member_id"].as_str().unwrap_or("-");
            if v["leader"].as_str() == Some(me) {
                return Ok(p);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("etcd elected no leader within {WAIT_MAX:?}")
}

fn etcd_put(h: &mut Http, k: u64) -> anyhow::Result<()> {
    let body = json!({
        "key": b64(format!("bench-principal-{k}").as_bytes()),
        "value": b64(format!("{{\"name\":\"bench-principal-{k}\"}}").as_bytes()),
    })
    .to_string();
    let (code, resp) = h.post("/v3/kv/put", &body)?;
    if code != 200 {
        bail!("etcd put answered {code}: {resp}");
    }
    Ok(())
}

/// One round of sequential puts to the etcd leader for `duration`.
fn etcd_round(h: &mut Http, duration: Duration, next: &mut u64) -> anyhow::Result<Histogram<u64>> {
    let mut hist = latency_histogram();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        *next += 1;
        let t = Instant::now();
        etcd_put(h, *next)?;
        hist.record(t.elapsed().as_nanos() as u64)?;
    }
    Ok(hist)
}

/// The etcd peer: three members and a keep-alive connection to the leader.
struct Etcd {
    version: String,
    _procs: Procs,
    http: Http,
    next: u64,
}

impl Etcd {
    /// Starts the peer cluster, or `None` (said on stdout) if etcd is absent.
    fn start(root: &Path) -> anyhow::Result<Option<Etcd>> {
        let Some(version) = etcd_binary() else {
            println!("etcd not found: install it with `apt-get install etcd-server`; etcd figures are null");
            return Ok(None);
        };
        let mut procs = Procs(Vec::new());
        let ports = start_etcd(root, &mut procs)?;
        let port = etcd_leader_port(&ports)?;
        let mut http = Http::connect(port)?;
        for k in 0..WARMUP_WRITES {
            etcd_put(&mut http, k)?;
        }
        Ok(Some(Etcd {
            version,
            _procs: procs,
            http,
            next: WARMUP_WRITES,
        }))
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// Write latency of both clusters, measured in alternating rounds (ours,
/// etcd, ours, etcd, ...) while both run, so a drift of this VM's speed hits
/// both sides alike.
struct Rounds {
    ours: Histogram<u64>,
    etcd: Option<Histogram<u64>>,
    /// Per round: ours p99 / etcd p99.
    p99_ratios: Vec<f64>,
    ours_p99_us: Vec<f64>,
    etcd_p99_us: Vec<f64>,
    failed: u64,
    leader: usize,
}

fn latency_rounds(
    ours: &Ours,
    mut leader: usize,
    etcd: &mut Option<Etcd>,
    rounds: usize,
    round: Duration,
    next: &mut u64,
) -> anyhow::Result<Rounds> {
    for _ in 0..WARMUP_WRITES {
        *next += 1;
        ours.write(leader, &principal(*next), Duration::from_secs(2));
    }
    let mut out = Rounds {
        ours: latency_histogram(),
        etcd: etcd.as_ref().map(|_| latency_histogram()),
        p99_ratios: Vec::new(),
        ours_p99_us: Vec::new(),
        etcd_p99_us: Vec::new(),
        failed: 0,
        leader,
    };
    for r in 0..rounds {
        let (h, l, failed) = ours_round(ours, leader, round, next)?;
        leader = l;
        out.failed += failed;
        out.ours.add(&h)?;
        let o = Latency::from_histogram(&h);
        out.ours_p99_us.push(us(o.p99_ns));
        let mut line = format!(
            "round {r}: ours p50 {:>6.0} us p99 {:>6.0} us (n = {})",
            us(o.p50_ns),
            us(o.p99_ns),
            o.count
        );
        if let (Some(e), Some(all)) = (etcd.as_mut(), out.etcd.as_mut()) {
            let h = etcd_round(&mut e.http, round, &mut e.next)?;
            all.add(&h)?;
            let l = Latency::from_histogram(&h);
            out.etcd_p99_us.push(us(l.p99_ns));
            let ratio = o.p99_ns as f64 / l.p99_ns.max(1) as f64;
            out.p99_ratios.push(ratio);
            line += &format!(
                " | etcd p50 {:>6.0} us p99 {:>6.0} us (n = {}) | p99 ratio {ratio:.2}",
                us(l.p50_ns),
                us(l.p99_ns),
                l.count
            );
        }
        println!("{line}");
    }
    out.leader = leader;
    Ok(out)
}

/// Our 3-node cluster on 127.0.0.1 under `root` (dev certificates, one process per node),
/// started and with a stable leader (returned).
fn start_ours(root: &Path) -> anyhow::Result<(Ours, usize)> {
    let certs = certs::generate_dev(&root.join("certs")).context("dev certificates")?;
    let tls = controlplane::auth::client_tls_config(&certs.node, &certs.ca.cert)?;
    // The client's calls run on the calling thread (like the blocking
    // socket of the etcd client): no hand-off to a runtime worker.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pool = {
        let _g = rt.enter();
        PeerPool::new(tls)
    };
    let mut ours = Ours {
        root: root.to_path_buf(),
        certs,
        ports: (0..NODES)
            .map(|_| free_port())
            .collect::<anyhow::Result<_>>()?,
        procs: Procs((0..NODES).map(|_| None).collect()),
        rt,
        pool,
    };
    let raft = controlplane::node::RaftConfig::default();
    println!(
        "raft: heartbeat {} ms, election timeout {}-{} ms",
        raft.heartbeat_interval_ms, raft.election_timeout_min_ms, raft.election_timeout_max_ms
    );
    ours.start(0, false)?;
    std::thread::sleep(Duration::from_millis(300));
    ours.start(1, true)?;
    ours.start(2, true)?;
    let leader = ours.wait_stable(&[0, 1, 2])?;
    Ok((ours, leader))
}

/// Prints the write latency over all rounds, ours and etcd's, and their per-round p99 ratios.
fn report_latency(r: &Rounds) -> (Latency, Option<Latency>, Spread) {
    let lat = Latency::from_histogram(&r.ours);
    let etcd_lat = r.etcd.as_ref().map(Latency::from_histogram);
    let ratio = Spread::of(&r.p99_ratios);
    println!("{}", lat.line("ours: write (3 nodes)"));
    if let Some(l) = &etcd_lat {
        println!("{}", l.line("etcd: put (3 members)"));
        println!(
            "write p99 ours/etcd per round: min {:.2} median {:.2} max {:.2}; over all rounds {:.2}",
            ratio.min,
            ratio.median,
            ratio.max,
            lat.p99_ns as f64 / l.p99_ns.max(1) as f64
        );
    }
    (lat, etcd_lat, ratio)
}

pub fn run(args: &SuiteArgs) -> anyhow::Result<serde_json::Value> {
    let root = PathBuf::from(format!("/var/tmp/ms-bench-control-{}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    let _guard = BenchDir(root.clone());
    let (rounds, round_s, tput_s, kills, policy_rounds) = if args.quick {
        (8, 2, 5, 10, 200)
    } else {
        (12, 5, 15, 20, 1_000)
    };
    println!("control suite: 3 nodes on 127.0.0.1 (mTLS, fdatasync per append) in {}; removed at the end", root.display());

    let (mut ours, leader) = start_ours(&root)?;
    let mut etcd = Etcd::start(&root)?;
    if let Some(e) = &etcd {
        println!("peer: {} (3 members on 127.0.0.1, HTTP/JSON gateway, one keep-alive connection to the leader)", e.version);
    }
    println!(
        "write latency: {rounds} rounds of {round_s} s per side, ours then etcd, both clusters running"
    );
    let mut next = 0u64;
    let lat_rounds = latency_rounds(
        &ours,
        leader,
        &mut etcd,
        rounds,
        Duration::from_secs(round_s),
        &mut next,
    )?;
    // The peer is not needed any more: stop it before the other figures.
    drop(etcd);
    let (lat, etcd_lat, ratio) = report_latency(&lat_rounds);
    let (leader, failed) = (lat_rounds.leader, lat_rounds.failed);
    if failed > 0 {
        println!(
            "note: {failed} write(s) failed because leadership moved during the run (not recorded)"
        );
    }
    let wps = throughput(&ours, leader, tput_s, &mut next);
    println!("ours: {wps:.0} writes/s with {PIPELINE_DEPTH} in flight");
    let policy = policy_propagation(&ours, policy_rounds)?;
    println!("{}", policy.line("ours: ACL write -> all 3"));
    let fo = failover(&mut ours, kills, &mut next)?;
    let mut sorted = fo.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let fo_median = sorted[sorted.len() / 2];
    let fo_max = sorted[sorted.len() - 1];
    println!(
        "ours: failover over {} kills: median {fo_median:.0} ms, max {fo_max:.0} ms",
        fo.len()
    );
    drop(ours);

    let has_etcd = etcd_lat.is_some();
    Ok(json!({
        "suite": "control",
        "quick": args.quick,
        "latency_rounds": rounds,
        "latency_round_s": round_s,
        "write_p50_us": us(lat.p50_ns),
        "write_p99_us": us(lat.p99_ns),
        "write_p999_us": us(lat.p999_ns),
        "write_p99_us_per_round": lat_rounds.ours_p99_us,
        "writes_failed_leader_moved": failed,
        "writes_per_s": wps,
        "pipeline_depth": PIPELINE_DEPTH,
        "etcd_write_p50_us": etcd_lat.map(|l| us(l.p50_ns)),
        "etcd_write_p99_us": etcd_lat.map(|l| us(l.p99_ns)),
        "etcd_write_p99_us_per_round": has_etcd.then_some(lat_rounds.etcd_p99_us),
        "ratio_write_p99_to_etcd": etcd_lat.map(|l| lat.p99_ns as f64 / l.p99_ns.max(1) as f64),
        "ratio_write_p99_to_etcd_per_round": has_etcd.then_some(lat_rounds.p99_ratios),
        "ratio_write_p99_to_etcd_median": has_etcd.then_some(ratio.median),
        "failover_kills": fo.len(),
        "failover_median_ms": fo_median,
        "failover_max_ms": fo_max,
        "failover_ms": fo,
        "policy_p50_us": us(policy.p50_ns),
        "policy_p99_us": us(policy.p99_ns),
        "policy_measures": "ACL write -> applied on all 3 nodes (XDP map write excluded)",
    }))
}

/// `node ARGS`: one control-plane node (`--id --listen --data-dir --cert-dir [--join]`).
pub fn child(role: &str, rest: &[String]) -> anyhow::Result<()> {
    if role != "node" {
        bail!("unknown control role {role:?}");
    }
    let mut c = NodeConfig::default();
    // Three nodes share 127.0.0.1: each takes a free port for /metrics.
    c.admin.http_listen = "127.0.0.1:0".into();
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .with_context(|| format!("{flag} needs a value"))?
            .clone();
        match flag.as_str() {
            "--id" => c.id = v.parse()?,
            "--listen" => c.listen = v,
            "--data-dir" => c.data_dir = v.into(),
            "--cert-dir" => c.cert_dir = Some(v.into()),
            "--join" => c.join = Some(v),
            other => bail!("unknown flag {other}"),
        }
    }
    controlplane::node::run(c)?;
    Ok(())
}
