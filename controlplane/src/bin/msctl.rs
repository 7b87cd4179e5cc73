//! msctl: the admin CLI of a MemoryStreamer cluster, over the control plane's
//! mTLS gRPC admin API. Human tables by default, `--json` for scripts (one
//! JSON document on stdout). Exit status: 0 ok, 1 the call failed (the
//! message says what to do), 2 usage error.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use controlplane::auth::client_tls_config;
use controlplane::certs::{client_paths, CertPair, ADMIN_PRINCIPAL, DEV_CERT_DIR_DEFAULT};
use controlplane::grpc::LEADER_METADATA_KEY;
use controlplane::pb::admin as pb;
use controlplane::pb::admin::admin_client::AdminClient;

/// Admin address a single node with embedded defaults listens on.
const ENDPOINT_DEFAULT: &str = controlplane::node::LISTEN_DEFAULT;
/// Connect and per-call timeouts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Parser)]
#[command(name = "msctl", about = "Administer a MemoryStreamer cluster", version)]
struct Cli {
    /// Control-plane admin address (host:port) of any node.
    #[arg(long, env = "MSCTL_ENDPOINT", default_value = ENDPOINT_DEFAULT, global = true)]
    endpoint: String,
    /// Client certificate (PEM); its CN is your principal.
    #[arg(long, env = "MSCTL_CERT", global = true)]
    cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, env = "MSCTL_KEY", global = true)]
    key: Option<PathBuf>,
    /// Cluster CA certificate (PEM).
    #[arg(long, env = "MSCTL_CA", global = true)]
    ca: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Streams: create, list, describe, resolve, unclean-election, delete.
    #[command(subcommand)]
    Stream(StreamCmd),
    /// Partitions: describe one with its replicas' state (served by the Raft leader).
    #[command(subcommand)]
    Partition(PartitionCmd),
    /// Access-control entries.
    #[command(subcommand)]
    Acl(AclCmd),
    /// Principals (identities ACLs refer to).
    #[command(subcommand)]
    Principal(PrincipalCmd),
    /// Per-principal rate limits (enforced per source address in XDP).
    #[command(subcommand)]
    Quota(QuotaCmd),
    /// Cluster members.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Cluster status: leader, term, commit index, lag per member.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Raft leadership.
    #[command(subcommand)]
    Leader(LeaderCmd),
}

#[derive(Subcommand)]
enum StreamCmd {
    /// Create a stream: partitions placed round-robin over the live nodes, the first replica leads.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        #[arg(long, default_value_t = 1)]
        replication_factor: u32,
        #[arg(long, default_value_t = 1 << 30)]
        retention_bytes: u64,
        #[arg(long, default_value_t = 24 * 3600 * 1000)]
        retention_ms: u64,
        #[arg(long, value_enum, default_value_t = Mode::Reliable)]
        mode: Mode,
        /// Fewest in-sync replicas (leader included) for an `all` write to be accepted and
        /// the high watermark to move; 1..=replication factor.
        #[arg(long, default_value_t = 1)]
        min_insync_replicas: u32,
        /// Default ack mode of the stream's publishers: none (fire and forget), leader
        /// (appended on the leader), leader_durable (on the leader's disk), all (= all_replicated:
        /// every ISR member holds it in memory) or all_persisted (every ISR member has it on disk).
        #[arg(long, default_value = "all_replicated")]
        acks: String,
        /// Allow electing a replica outside the ISR when no ISR member is live (may lose
        /// acknowledged records; every such election is audited). Off by default.
        #[arg(long)]
        unclean_leader_election: bool,
    },
    /// Streams you may describe, with their replication policy.
    List,
    /// Partitions with leader, replicas, ISR and epoch; under-replicated ones marked.
    Describe { name: String },
    /// Each partition's leader, its data address and the epoch (what clients bootstrap from).
    Resolve { name: String },
    /// Turn unclean leader election on or off (audited).
    UncleanElection {
        name: String,
        #[arg(value_enum)]
        setting: OnOff,
    },
    /// Delete a stream; its partitions are dropped on every node.
    Delete { name: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Subcommand)]
enum PartitionCmd {
    /// Leader, epoch, ISR, each replica's state (serving or why not), log end, durable offset
    /// and lag, and the high watermarks.
    Describe { stream: String, partition: u32 },
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Reliable,
    Lossy,
}

#[derive(Clone, Copy, ValueEnum)]
enum Op {
    Read,
    Write,
    Create,
    Delete,
    Describe,
    Alter,
    ClusterAdmin,
}

#[derive(Subcommand)]
enum AclCmd {
    /// Add (or replace) an ACL.
    Put {
        #[arg(long)]
        principal: String,
        /// Stream name, glob (`orders.*`) or `*` (also the cluster).
        #[arg(long)]
        resource: String,
        #[arg(long = "op", value_enum, required = true)]
        ops: Vec<Op>,
        /// A Deny ACL (Deny wins over Allow).
        #[arg(long)]
        deny: bool,
        /// Source CIDR the data-path (XDP) policy applies to; repeatable.
        #[arg(long = "source")]
        sources: Vec<String>,
    },
    List {
        #[arg(long)]
        principal: Option<String>,
    },
    Delete {
        #[arg(long)]
        principal: String,
        #[arg(long)]
        resource: String,
    },
}

#[derive(Subcommand)]
enum PrincipalCmd {
    Create { name: String },
    List,
    Delete { name: String },
}

#[derive(Subcommand)]
enum QuotaCmd {
    Put {
        #[arg(long)]
        principal: String,
        #[arg(long)]
        bytes_per_s: u64,
        #[arg(long)]
        burst_bytes: u64,
    },
    List,
    Delete {
        #[arg(long)]
        principal: String,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    List,
    /// Add a node as a voting member.
    Add {
        #[arg(long)]
        id: u64,
        /// The node's control-plane address (ip:port).
        #[arg(long)]
        control: String,
        /// The node's data-plane address (ip:port).
        #[arg(long)]
        data: String,
    },
    /// Remove a member (voter or learner). Removing the Raft leader first
    /// hands leadership to the most caught-up other voter.
    Remove {
        id: u64,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    Status,
}

#[derive(Subcommand)]
enum LeaderCmd {
    /// Hand Raft leadership to a voter.
    Transfer {
        #[arg(long)]
        to: u64,
    },
}

fn default_path(given: Option<PathBuf>, dev: PathBuf) -> PathBuf {
    given.unwrap_or(dev)
}

async fn connect(cli: &Cli, endpoint: &str) -> Result<AdminClient<Channel>, String> {
    let dev_dir = PathBuf::from(DEV_CERT_DIR_DEFAULT);
    let dev = client_paths(&dev_dir, ADMIN_PRINCIPAL);
    let identity = CertPair {
        cert: default_path(cli.cert.clone(), dev.cert),
        key: default_path(cli.key.clone(), dev.key),
    };
    let ca = default_path(
        cli.ca.clone(),
        dev_dir.join(controlplane::certs::CA_CERT_FILE),
    );
    let tls = client_tls_config(&identity, &ca).map_err(|e| e.to_string())?;
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("https://{endpoint}")
    };
    let channel = Endpoint::from_shared(url.clone())
        .map_err(|e| format!("`{endpoint}` is not a valid endpoint ({e}): use host:port"))?
        .tls_config(tls)
        .map_err(|e| format!("TLS configuration refused: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .map_err(|e| connect_error(endpoint, &e))?;
    Ok(AdminClient::new(channel))
}

fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

fn connect_error(endpoint: &str, e: &tonic::transport::Error) -> String {
    let chain = source_chain(e);
    if chain.contains("certificate") || chain.contains("tls") || chain.contains("alert") {
        format!(
            "TLS handshake with {endpoint} failed ({chain}): the server must present a \
             certificate from your --ca, and your --cert must be signed by the cluster CA \
             and not expired"
        )
    } else {
        format!("cannot reach the control plane at {endpoint} ({chain}): is the node running? check --endpoint")
    }
}

fn status_error(s: &Status) -> String {
    let msg = match std::error::Error::source(s) {
        Some(src) => format!("{}: {}", s.message(), source_chain(src)),
        None => s.message().to_string(),
    };
    let tls_hint = |m: &str| {
        let m = m.to_ascii_lowercase();
        m.contains("certificate") || m.contains("tls") || m.contains("alert")
    };
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::Internal if tls_hint(&msg) => format!(
            "the server refused the TLS handshake ({msg}): use a client certificate signed by \
             the cluster CA that has not expired (--cert/--key)"
        ),
        Code::Unavailable | Code::Unknown | Code::Cancelled
            if msg.contains("transport error") || msg.contains("connection closed") =>
        {
            format!(
            "the connection failed ({msg}): if the server closed it right after connecting, it \
             refused your client certificate (expired or not signed by the cluster CA: check \
             --cert/--key/--ca); otherwise check that the node is up"
            )
        }
        code => format!("{code:?}: {msg}"),
    }
}

/// Runs `call` against the endpoint; on a follower's redirect, once against the leader.
macro_rules! call {
    ($cli:expr, $method:ident, $req:expr) => {{
        let req = $req;
        let mut client = connect($cli, &$cli.endpoint).await?;
        match client.$method(req.clone()).await {
            Ok(r) => Ok::<_, String>(r.into_inner()),
            Err(s)
                if s.code() == Code::FailedPrecondition
                    && s.metadata().get(LEADER_METADATA_KEY).is_some() =>
            {
                let leader = s
                    .metadata()
                    .get(LEADER_METADATA_KEY)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let mut client = connect($cli, &leader).await?;
                client
                    .$method(req)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| status_error(&s))
            }
            Err(s) => Err(status_error(&s)),
        }
    }};
}

fn mode_name(m: i32) -> &'static str {
    if m == pb::StreamMode::Lossy as i32 {
        "lossy"
    } else {
        "reliable"
    }
}

fn op_name(o: i32) -> &'static str {
    match pb::Operation::try_from(o) {
        Ok(pb::Operation::Read) => "read",
        Ok(pb::Operation::Write) => "write",
        Ok(pb::Operation::Create) => "create",
        Ok(pb::Operation::Delete) => "delete",
        Ok(pb::Operation::Describe) => "describe",
        Ok(pb::Operation::Alter) => "alter",
        Ok(pb::Operation::ClusterAdmin) => "cluster-admin",
        Err(_) => "?",
    }
}

fn stream_json(s: &pb::Stream) -> Value {
    json!({
        "name": s.name, "id": s.id, "partitions": s.partitions,
        "replication_factor": s.replication_factor, "retention_bytes": s.retention_bytes,
        "retention_ms": s.retention_ms, "mode": mode_name(s.mode),
        "min_insync_replicas": s.min_insync_replicas, "ack_default": s.ack_default,
        "unclean_leader_election": s.unclean_leader_election,
    })
}

fn acl_json(a: &pb::Acl) -> Value {
    json!({
        "principal": a.principal, "resource": a.resource_pattern,
        "operations": a.operations.iter().map(|&o| op_name(o)).collect::<Vec<_>>(),
        "permission": if a.permission == pb::Permission::Deny as i32 { "deny" } else { "allow" },
        "sources": a.source_cidrs,
    })
}

/// Prints rows as an aligned table.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn op_pb(o: Op) -> i32 {
    (match o {
        Op::Read => pb::Operation::Read,
        Op::Write => pb::Operation::Write,
        Op::Create => pb::Operation::Create,
        Op::Delete => pb::Operation::Delete,
        Op::Describe => pb::Operation::Describe,
        Op::Alter => pb::Operation::Alter,
        Op::ClusterAdmin => pb::Operation::ClusterAdmin,
    }) as i32
}

/// Prints a one-line confirmation (a JSON object with `--json`).
fn done(cli: &Cli, what: String) {
    if cli.json {
        println!("{}", json!({"ok": true, "done": what}));
    } else {
        println!("{what}");
    }
}

/// Comma-separated node ids.
fn id_list(v: &[u64]) -> String {
    v.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// One step per subcommand group.
async fn run(cli: &Cli) -> Result<(), String> {
    match &cli.cmd {
        Cmd::Stream(c) => stream(cli, c).await,
        Cmd::Partition(c) => partition(cli, c).await,
        Cmd::Acl(c) => acl(cli, c).await,
        Cmd::Principal(c) => principal(cli, c).await,
        Cmd::Quota(c) => quota(cli, c).await,
        Cmd::Node(c) => node(cli, c).await,
        Cmd::Cluster(ClusterCmd::Status) => cluster_status(cli).await,
        Cmd::Leader(LeaderCmd::Transfer { to }) => {
            let r = call!(
                cli,
                transfer_leadership,
                pb::TransferLeadershipRequest { to: *to }
            )?;
            done(cli, format!("node {} leads", r.leader));
            Ok(())
        }
    }
}

async fn stream(cli: &Cli, cmd: &StreamCmd) -> Result<(), String> {
    match cmd {
        StreamCmd::Create {
            name,
            partitions,
            replication_factor,
            retention_bytes,
            retention_ms,
            mode,
            min_insync_replicas,
            acks,
            unclean_leader_election,
        } => {
            let req = pb::CreateStreamRequest {
                min_insync_replicas: *min_insync_replicas,
                ack_default: acks.clone(),
                unclean_leader_election: *unclean_leader_election,
                name: name.clone(),
                partitions: *partitions,
                replication_factor: *replication_factor,
                retention_bytes: *retention_bytes,
                retention_ms: *retention_ms,
                mode: match mode {
                    Mode::Reliable => pb::StreamMode::Reliable as i32,
                    Mode::Lossy => pb::StreamMode::Lossy as i32,
                },
            };
            let r = call!(cli, create_stream, req)?;
            let s = r.stream.unwrap_or_default();
            if cli.json {
                println!("{}", stream_json(&s));
            } else {
                println!("created stream {} (id {})", s.name, s.id);
            }
        }
        StreamCmd::List => {
            let r = call!(cli, list_streams, pb::ListStreamsRequest {})?;
            print_streams(cli, &r.streams);
        }
        StreamCmd::Describe { name } => {
            let r = call!(
                cli,
                describe_stream,
                pb::DescribeStreamRequest { name: name.clone() }
            )?;
            print_stream_detail(cli, &r);
        }
        StreamCmd::Resolve { name } => resolve(cli, name).await?,
        StreamCmd::UncleanElection { name, setting } => {
            let enabled = matches!(setting, OnOff::On);
            let req = pb::SetUncleanElectionRequest {
                name: name.clone(),
                enabled,
            };
            call!(cli, set_unclean_election, req)?;
            let what = if enabled {
                "on: a replica outside the ISR may lead, acknowledged records may be lost"
            } else {
                "off"
            };
            done(cli, format!("unclean leader election of {name}: {what}"));
        }
        StreamCmd::Delete { name } => {
            call!(
                cli,
                delete_stream,
                pb::DeleteStreamRequest { name: name.clone() }
            )?;
            done(cli, format!("deleted stream {name}"));
        }
    }
    Ok(())
}

fn print_streams(cli: &Cli, streams: &[pb::Stream]) {
    if cli.json {
        let v: Vec<Value> = streams.iter().map(stream_json).collect();
        println!("{}", Value::Array(v));
        return;
    }
    table(
        &[
            "NAME",
            "ID",
            "PARTITIONS",
            "RF",
            "MODE",
            "MIN_ISR",
            "ACKS",
            "RETENTION_BYTES",
            "RETENTION_MS",
        ],
        streams
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.id.to_string(),
                    s.partitions.to_string(),
                    s.replication_factor.to_string(),
                    mode_name(s.mode).to_string(),
                    s.min_insync_replicas.to_string(),
                    s.ack_default.clone(),
                    s.retention_bytes.to_string(),
                    s.retention_ms.to_string(),
                ]
            })
            .collect(),
    );
}

fn print_stream_detail(cli: &Cli, r: &pb::DescribeStreamReply) {
    let s = r.stream.clone().unwrap_or_default();
    if cli.json {
        let mut v = stream_json(&s);
        v["partitions_detail"] = r
            .partitions
            .iter()
            .map(|p| {
                json!({"partition": p.partition, "leader": p.leader, "replicas": p.replicas,
                       "isr": p.isr, "leader_epoch": p.leader_epoch,
                       "under_replicated": p.isr.len() < p.replicas.len()})
            })
            .collect();
        println!("{v}");
        return;
    }
    println!(
        "stream {} (id {}, {} partitions, rf {}, {}, min ISR {}, acks {}{})",
        s.name,
        s.id,
        s.partitions,
        s.replication_factor,
        mode_name(s.mode),
        s.min_insync_replicas,
        ack_label(&s.ack_default),
        if s.unclean_leader_election {
            ", UNCLEAN leader election on"
        } else {
            ""
        }
    );
    table(
        &[
            "PARTITION",
            "LEADER",
            "REPLICAS",
            "ISR",
            "EPOCH",
            "UNDER_REPLICATED",
        ],
        r.partitions
            .iter()
            .map(|p| {
                vec![
                    p.partition.to_string(),
                    leader_label(p.leader),
                    id_list(&p.replicas),
                    id_list(&p.isr),
                    p.leader_epoch.to_string(),
                    yes_no(p.isr.len() < p.replicas.len()).into(),
                ]
            })
            .collect(),
    );
}

/// An ack mode with what it means, so nobody guesses whether `all` waits for disks.
fn ack_label(a: &str) -> String {
    let what = match a {
        "none" => "fire and forget",
        "leader" => "appended on the leader",
        "leader_durable" => "on the leader's disk",
        "all_replicated" => "all: every ISR member holds it in memory",
        "all_persisted" => "all: every ISR member has it on disk",
        _ => "unknown to this msctl",
    };
    format!("{a} ({what})")
}

fn leader_label(leader: u64) -> String {
    if leader == 0 {
        "none".into()
    } else {
        leader.to_string()
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

async fn resolve(cli: &Cli, name: &str) -> Result<(), String> {
    let req = pb::ResolveStreamRequest { name: name.into() };
    let r = call!(cli, resolve_stream, req)?;
    if cli.json {
        let parts: Vec<Value> = r
            .partitions
            .iter()
            .map(|p| {
                json!({"partition": p.partition, "leader": p.leader,
                       "leader_data_addr": p.leader_data_addr, "leader_epoch": p.leader_epoch})
            })
            .collect();
        let v = json!({"stream": name, "id": r.stream_id, "ack_default": r.ack_default,
                       "min_insync_replicas": r.min_insync_replicas, "partitions": parts});
        println!("{v}");
        return Ok(());
    }
    println!(
        "stream {name} (id {}, acks {}, min ISR {})",
        r.stream_id,
        ack_label(&r.ack_default),
        r.min_insync_replicas
    );
    table(
        &["PARTITION", "LEADER", "LEADER_DATA_ADDR", "EPOCH"],
        r.partitions
            .iter()
            .map(|p| {
                vec![
                    p.partition.to_string(),
                    leader_label(p.leader),
                    p.leader_data_addr.clone(),
                    p.leader_epoch.to_string(),
                ]
            })
            .collect(),
    );
    Ok(())
}

async fn partition(cli: &Cli, cmd: &PartitionCmd) -> Result<(), String> {
    let PartitionCmd::Describe { stream, partition } = cmd;
    let req = pb::DescribePartitionRequest {
        name: stream.clone(),
        partition: *partition,
    };
    let r = call!(cli, describe_partition, req)?;
    let a = r.assignment.clone().unwrap_or_default();
    let s = r.stream.clone().unwrap_or_default();
    if cli.json {
        let reps: Vec<Value> = r
            .replicas
            .iter()
            .map(|v| {
                json!({"node": v.node, "data_addr": v.data_addr, "in_isr": v.in_isr,
                       "leader": v.leader, "live": v.live, "reported": v.reported,
                       "role": v.role, "state": v.state, "reported_epoch": v.reported_epoch,
                       "log_end": v.log_end, "durable": v.durable, "lag": v.lag})
            })
            .collect();
        let v = json!({"stream": stream, "partition": partition, "leader": a.leader,
                       "leader_epoch": a.leader_epoch, "isr": a.isr, "replicas": reps,
                       "min_insync_replicas": s.min_insync_replicas, "ack_default": s.ack_default,
                       "high_watermark_replicated": r.high_watermark_replicated,
                       "high_watermark_persisted": r.high_watermark_persisted,
                       "under_replicated": r.under_replicated, "below_min_isr": r.below_min_isr});
        println!("{v}");
        return Ok(());
    }
    println!(
        "stream {stream} partition {partition}: leader {}, epoch {}, ISR [{}], min ISR {}{}{}",
        leader_label(a.leader),
        a.leader_epoch,
        id_list(&a.isr),
        s.min_insync_replicas,
        if r.under_replicated {
            ", UNDER-REPLICATED"
        } else {
            ""
        },
        if r.below_min_isr {
            ", BELOW MIN ISR (acks=all writes refused)"
        } else {
            ""
        },
    );
    println!(
        "acks {}; high watermark: replicated {}, persisted {}",
        ack_label(&s.ack_default),
        r.high_watermark_replicated,
        r.high_watermark_persisted
    );
    table(
        &[
            "NODE",
            "DATA_ADDR",
            "LEADER",
            "IN_ISR",
            "LIVE",
            "STATE",
            "EPOCH",
            "LOG_END",
            "DURABLE",
            "LAG",
        ],
        r.replicas
            .iter()
            .map(|v| {
                let n = |x: u64| {
                    if v.reported {
                        x.to_string()
                    } else {
                        "-".into()
                    }
                };
                vec![
                    v.node.to_string(),
                    v.data_addr.clone(),
                    yes_no(v.leader).into(),
                    yes_no(v.in_isr).into(),
                    yes_no(v.live).into(),
                    v.state.clone(),
                    n(v.reported_epoch),
                    n(v.log_end),
                    n(v.durable),
                    n(v.lag),
                ]
            })
            .collect(),
    );
    Ok(())
}

async fn acl(cli: &Cli, cmd: &AclCmd) -> Result<(), String> {
    match cmd {
        AclCmd::Put {
            principal,
            resource,
            ops,
            deny,
            sources,
        } => {
            let acl = pb::Acl {
                principal: principal.clone(),
                resource_pattern: resource.clone(),
                operations: ops.iter().map(|&o| op_pb(o)).collect(),
                permission: if *deny {
                    pb::Permission::Deny as i32
                } else {
                    pb::Permission::Allow as i32
                },
                source_cidrs: sources.clone(),
            };
            call!(cli, put_acl, pb::PutAclRequest { acl: Some(acl) })?;
            done(
                cli,
                format!(
                    "{} ACL for {principal} on {resource} stored",
                    if *deny { "deny" } else { "allow" }
                ),
            );
        }
        AclCmd::List { principal } => {
            let r = call!(
                cli,
                list_acls,
                pb::ListAclsRequest {
                    principal: principal.clone().unwrap_or_default()
                }
            )?;
            print_acls(cli, &r.acls);
        }
        AclCmd::Delete {
            principal,
            resource,
        } => {
            call!(
                cli,
                delete_acl,
                pb::DeleteAclRequest {
                    principal: principal.clone(),
                    resource_pattern: resource.clone()
                }
            )?;
            done(
                cli,
                format!("deleted the ACLs of {principal} on {resource}"),
            );
        }
    }
    Ok(())
}

fn print_acls(cli: &Cli, acls: &[pb::Acl]) {
    if cli.json {
        println!("{}", Value::Array(acls.iter().map(acl_json).collect()));
        return;
    }
    table(
        &[
            "PRINCIPAL",
            "RESOURCE",
            "PERMISSION",
            "OPERATIONS",
            "SOURCES",
        ],
        acls.iter()
            .map(|a| {
                let ops: Vec<&str> = a.operations.iter().map(|&o| op_name(o)).collect();
                vec![
                    a.principal.clone(),
                    a.resource_pattern.clone(),
                    if a.permission == pb::Permission::Deny as i32 {
                        "deny"
                    } else {
                        "allow"
                    }
                    .into(),
                    ops.join(","),
                    a.source_cidrs.join(","),
                ]
            })
            .collect(),
    );
}

async fn principal(cli: &Cli, cmd: &PrincipalCmd) -> Result<(), String> {
    match cmd {
        PrincipalCmd::Create { name } => {
            call!(
                cli,
                put_principal,
                pb::PutPrincipalRequest { name: name.clone() }
            )?;
            done(cli, format!("principal {name} stored"));
        }
        PrincipalCmd::List => {
            let r = call!(cli, list_principals, pb::ListPrincipalsRequest {})?;
            if cli.json {
                println!("{}", json!(r.names));
            } else {
                table(
                    &["PRINCIPAL"],
                    r.names.into_iter().map(|n| vec![n]).collect(),
                );
            }
        }
        PrincipalCmd::Delete { name } => {
            call!(
                cli,
                delete_principal,
                pb::DeletePrincipalRequest { name: name.clone() }
            )?;
            done(
                cli,
                format!("principal {name} deleted (with its ACLs and quota)"),
            );
        }
    }
    Ok(())
}

async fn quota(cli: &Cli, cmd: &QuotaCmd) -> Result<(), String> {
    match cmd {
        QuotaCmd::Put {
            principal,
            bytes_per_s,
            burst_bytes,
        } => {
            let quota = pb::Quota {
                principal: principal.clone(),
                bytes_per_s: *bytes_per_s,
                burst_bytes: *burst_bytes,
            };
            call!(cli, put_quota, pb::PutQuotaRequest { quota: Some(quota) })?;
            done(cli, format!("quota of {principal} stored"));
        }
        QuotaCmd::List => {
            let r = call!(cli, list_quotas, pb::ListQuotasRequest {})?;
            print_quotas(cli, &r.quotas);
        }
        QuotaCmd::Delete { principal } => {
            call!(
                cli,
                delete_quota,
                pb::DeleteQuotaRequest {
                    principal: principal.clone()
                }
            )?;
            done(cli, format!("quota of {principal} deleted"));
        }
    }
    Ok(())
}

fn print_quotas(cli: &Cli, quotas: &[pb::Quota]) {
    if cli.json {
        let v: Vec<Value> = quotas
            .iter()
            .map(|q| {
                json!({"principal": q.principal, "bytes_per_s": q.bytes_per_s,
                       "burst_bytes": q.burst_bytes})
            })
            .collect();
        println!("{}", Value::Array(v));
        return;
    }
    table(
        &["PRINCIPAL", "BYTES_PER_S", "BURST_BYTES"],
        quotas
            .iter()
            .map(|q| {
                vec![
                    q.principal.clone(),
                    q.bytes_per_s.to_string(),
                    q.burst_bytes.to_string(),
                ]
            })
            .collect(),
    );
}

async fn node(cli: &Cli, cmd: &NodeCmd) -> Result<(), String> {
    match cmd {
        NodeCmd::List => {
            let r = call!(cli, list_nodes, pb::ListNodesRequest {})?;
            print_nodes(cli, &r.nodes);
        }
        NodeCmd::Add { id, control, data } => {
            call!(
                cli,
                add_member,
                pb::AddMemberRequest {
                    id: *id,
                    control_addr: control.clone(),
                    data_addr: data.clone()
                }
            )?;
            done(cli, format!("node {id} added as a voter"));
        }
        NodeCmd::Remove { id } => {
            call!(cli, remove_member, pb::RemoveMemberRequest { id: *id })?;
            done(cli, format!("node {id} removed"));
        }
    }
    Ok(())
}

fn print_nodes(cli: &Cli, nodes: &[pb::Node]) {
    if cli.json {
        let v: Vec<Value> = nodes
            .iter()
            .map(|n| {
                json!({"id": n.id, "control_addr": n.control_addr, "data_addr": n.data_addr,
                       "voter": n.voter, "live": n.live})
            })
            .collect();
        println!("{}", Value::Array(v));
        return;
    }
    table(
        &["ID", "CONTROL", "DATA", "ROLE", "LIVE"],
        nodes
            .iter()
            .map(|n| {
                vec![
                    n.id.to_string(),
                    n.control_addr.clone(),
                    n.data_addr.clone(),
                    if n.voter { "voter" } else { "learner" }.into(),
                    if n.live { "yes" } else { "no" }.into(),
                ]
            })
            .collect(),
    );
}

async fn cluster_status(cli: &Cli) -> Result<(), String> {
    let r = call!(cli, cluster_status, pb::ClusterStatusRequest {})?;
    if cli.json {
        let members: Vec<Value> = r
            .members
            .iter()
            .map(|m| json!({"id": m.id, "matched_index": m.matched_index, "lag": m.lag, "voter": m.voter}))
            .collect();
        println!(
            "{}",
            json!({"node_id": r.node_id, "role": r.role, "leader": r.leader,
                   "leader_addr": r.leader_addr, "term": r.term,
                   "commit_index": r.commit_index, "applied_index": r.applied_index,
                   "members": members})
        );
        return Ok(());
    }
    println!(
        "node {} ({}), leader {} ({}), term {}, commit index {}, applied index {}",
        r.node_id, r.role, r.leader, r.leader_addr, r.term, r.commit_index, r.applied_index
    );
    table(
        &["MEMBER", "ROLE", "MATCHED", "LAG"],
        r.members
            .iter()
            .map(|m| {
                vec![
                    m.id.to_string(),
                    if m.voter { "voter" } else { "learner" }.into(),
                    m.matched_index.to_string(),
                    m.lag.to_string(),
                ]
            })
            .collect(),
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("msctl: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            if cli.json {
                println!("{}", json!({"ok": false, "error": msg}));
            }
            eprintln!("msctl: {msg}");
            ExitCode::from(1)
        }
    }
}
