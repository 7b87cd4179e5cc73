//! `memstreamer node`: the supervised data plane, control plane and Kafka listener.
//!
//! The supervisor runs itself as child processes — `memstreamer dataplane ...`,
//! `memstreamer controlplane ... --dataplane-commands` and, unless `--kafka-listen off`,
//! `memstreamer kafka ...` (on 127.0.0.1:9092 by default; a non-loopback address is refused
//! unless `--kafka-insecure-plaintext`, as TLS/SASL do not exist yet) — and forwards
//! SIGINT/SIGTERM to them.
//! When one child exits on its own, the supervisor stops the others and exits non-zero naming the
//! child (no restart: a data plane without its control plane would serve stale policy, and a
//! crash loop is better handled by the service manager that started the node, which sees the
//! failure). Each child asks the kernel for SIGTERM when the supervisor dies
//! (`PR_SET_PDEATHSIG`), so a `kill -9` of the supervisor leaves no orphans either.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dataplane::Backend;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Environment variable through which a child learns its supervisor's pid.
pub const SUPERVISOR_PID_ENV: &str = "MEMSTREAMER_SUPERVISOR_PID";
/// How long a child may take to stop after SIGTERM before it is killed.
pub const CHILD_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval of the supervisor's child checks.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The control plane's data directory under `--data-dir` (as its default,
/// /var/lib/memstreamer/cp, is under the default data directory).
pub const CONTROL_SUBDIR: &str = "cp";
/// The Kafka listener's partition logs under `--data-dir` (unless `--kafka-data-dir`).
pub const KAFKA_SUBDIR: &str = "kafka";

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// Data-plane TOML config (see dataplane::config; MS_* variables override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// `--profile` and `--data-dir`; `--data-dir DIR` also makes DIR/cp the control plane's
    /// data directory unless `--control-data-dir` says otherwise.
    #[command(flatten)]
    dataplane: crate::ConfigFlags,
    /// Data-plane backend override: afxdp or udp.
    #[arg(long)]
    backend: Option<Backend>,
    /// Control-plane TOML config (see controlplane::node::NodeConfig).
    #[arg(long)]
    controlplane_config: Option<PathBuf>,
    /// Control-plane (Raft) node id.
    #[arg(long)]
    id: Option<u64>,
    /// Control-plane gRPC (Raft + admin) listen address.
    #[arg(long)]
    control_listen: Option<String>,
    /// Control-plane address other nodes use to reach this one.
    #[arg(long)]
    advertise: Option<String>,
    /// Control-plane data directory (Raft log, snapshots, audit log, dev certs).
    #[arg(long)]
    control_data_dir: Option<PathBuf>,
    /// Control-plane certificate directory.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// Control-plane /metrics, /health, /ready address (empty: none).
    #[arg(long)]
    http_listen: Option<String>,
    /// Join a cluster through this member's control-plane address.
    #[arg(long)]
    join: Option<String>,
    /// Kafka listener address (port 0: any free port, printed at start); `off`: none.
    /// Plaintext: any address but loopback needs `--kafka-insecure-plaintext` (no TLS/SASL yet).
    #[arg(long, env = "MS_KAFKA_LISTEN", default_value = kafka::LISTEN_DEFAULT)]
    kafka_listen: String,
    /// host:port Kafka clients are told to connect to (default: the bound address).
    #[arg(long)]
    kafka_advertise: Option<String>,
    /// Serve Kafka in plaintext without authentication on a non-loopback address.
    #[arg(long)]
    kafka_insecure_plaintext: bool,
    /// Kafka partition logs (default: `<data dir>/kafka`).
    #[arg(long, env = "MS_KAFKA_DATA_DIR")]
    kafka_data_dir: Option<PathBuf>,
}

/// `--kafka-listen` value that turns the Kafka listener off.
pub const KAFKA_OFF: &str = "off";

/// In a supervised child: SIGTERM when the supervisor dies; exit if it is already gone.
pub fn follow_supervisor() -> anyhow::Result<()> {
    let Ok(pid) = std::env::var(SUPERVISOR_PID_ENV) else {
        return Ok(());
    };
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).context("PR_SET_PDEATHSIG")?;
    if pid.parse::<i32>().ok() != Some(nix::unistd::getppid().as_raw()) {
        anyhow::bail!("the supervisor (pid {pid}) is gone");
    }
    Ok(())
}

struct Supervised {
    name: &'static str,
    child: Child,
    status: Option<ExitStatus>,
}

impl Supervised {
    fn spawn(
        name: &'static str,
        args: &[String],
        env: &[(&str, String)],
    ) -> anyhow::Result<Supervised> {
        let exe = std::env::current_exe().context("locating the memstreamer executable")?;
        let child = Command::new(exe)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env(SUPERVISOR_PID_ENV, std::process::id().to_string())
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        println!("memstreamer node: {name} started, pid {}", child.id());
        Ok(Supervised {
            name,
            child,
            status: None,
        })
    }

    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// SIGTERM, then SIGKILL after [`CHILD_STOP_TIMEOUT`]; always reaps.
    fn stop(&mut self) {
        if self.poll().is_some() {
            return;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + CHILD_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.poll().is_some() {
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        eprintln!(
            "memstreamer node: the {} did not stop within {:?}; killing it",
            self.name, CHILD_STOP_TIMEOUT
        );
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }
}

fn dataplane_args(a: &NodeArgs) -> Vec<String> {
    let mut v = vec!["dataplane".to_string()];
    if let Some(c) = &a.config {
        v.extend(["--config".into(), c.display().to_string()]);
    }
    if let Some(p) = a.dataplane.profile {
        v.extend(["--profile".into(), p.to_string()]);
    }
    if let Some(d) = &a.dataplane.data_dir {
        v.extend(["--data-dir".into(), d.display().to_string()]);
    }
    if let Some(b) = a.backend {
        v.extend(["--backend".into(), b.to_string()]);
    }
    v
}

fn controlplane_args(a: &NodeArgs, dp: &dataplane::Config) -> Vec<String> {
    let mut v = vec!["controlplane".to_string(), "--dataplane-commands".into()];
    let mut opt = |flag: &str, value: Option<String>| {
        if let Some(value) = value {
            v.extend([flag.to_string(), value]);
        }
    };
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    opt("--config", path(&a.controlplane_config));
    opt("--id", a.id.map(|i| i.to_string()));
    opt("--listen", a.control_listen.clone());
    opt("--advertise", a.advertise.clone());
    let cp_data_dir = a.control_data_dir.clone().or_else(|| {
        a.dataplane
            .data_dir
            .as_ref()
            .map(|d| d.join(CONTROL_SUBDIR))
    });
    opt("--data-dir", path(&cp_data_dir));
    opt("--cert-dir", path(&a.cert_dir));
    opt("--http-listen", a.http_listen.clone());
    opt("--join", a.join.clone());
    // The control plane registers the data plane's address (when it is one others can reach:
    // not 0.0.0.0 or port 0, then the control-plane config's `data_addr` applies) and writes
    // into the data plane's ring directory.
    let reachable = !dp.listen.ip().is_unspecified() && dp.listen.port() != 0;
    opt("--data-addr", reachable.then(|| dp.listen.to_string()));
    opt("--dataplane-shm-dir", path(&dp.shm_dir));
    opt(
        "--dataplane-counters",
        Some(dp.counters_file.display().to_string()),
    );
    // The data plane's configured streams become streams of the cluster metadata (#11).
    for s in &dp.streams {
        v.extend([
            "--dataplane-stream".to_string(),
            format!("{}:{}", s.id, s.partitions),
        ]);
    }
    v
}

/// The control plane child's configuration, as it will read its flags.
fn control_plane_config(
    a: &NodeArgs,
    dp: &dataplane::Config,
) -> anyhow::Result<controlplane::node::NodeConfig> {
    #[derive(clap::Parser)]
    struct Cp {
        #[command(flatten)]
        node: controlplane::dataplane_link::NodeArgs,
    }
    let cp_args = controlplane_args(a, dp);
    Ok(
        <Cp as clap::Parser>::try_parse_from(cp_args.iter().map(String::as_str))
            .context("control-plane flags")?
            .node
            .into_config()?,
    )
}

/// The data plane child's environment: the control plane's id of this node as `MS_NODE_ID`, so
/// the data plane applies the partition assignments its control plane sends (#11), unless the
/// data plane's configuration names an id of its own.
fn dataplane_env(
    a: &NodeArgs,
    dp: &dataplane::Config,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    if dp.node_id != 0 {
        return Ok(Vec::new());
    }
    Ok(vec![(
        "MS_NODE_ID",
        control_plane_config(a, dp)?.id.to_string(),
    )])
}

/// The Kafka child's arguments, checked (`None`: `--kafka-listen off`). It reaches the control
/// plane this node starts, with the node's certificate.
fn kafka_args(a: &NodeArgs, dp: &dataplane::Config) -> anyhow::Result<Option<Vec<String>>> {
    if a.kafka_listen == KAFKA_OFF {
        return Ok(None);
    }
    let cp = control_plane_config(a, dp)?;
    let listen = a.kafka_listen.parse().with_context(|| {
        format!(
            "--kafka-listen `{}`: give host:port or `off`",
            a.kafka_listen
        )
    })?;
    let data_dir = a
        .kafka_data_dir
        .clone()
        .unwrap_or_else(|| dp.data_dir.join(KAFKA_SUBDIR));
    let args = kafka::KafkaArgs {
        listen,
        advertise: a.kafka_advertise.clone(),
        insecure_plaintext: a.kafka_insecure_plaintext,
        data_dir,
        control_endpoint: cp.listen.clone(),
        cert_dir: cp.cert_dir(),
        node_id: cp.id,
        request_bytes_max: kafka::run::REQUEST_BYTES_MAX_DEFAULT,
    };
    kafka::KafkaConfig::new(args.clone())?;
    let mut v = vec![
        "kafka".to_string(),
        "--listen".into(),
        args.listen.to_string(),
        "--data-dir".into(),
        args.data_dir.display().to_string(),
        "--control-endpoint".into(),
        args.control_endpoint,
        "--cert-dir".into(),
        args.cert_dir.display().to_string(),
        "--node-id".into(),
        args.node_id.to_string(),
    ];
    if let Some(adv) = args.advertise {
        v.extend(["--advertise".into(), adv]);
    }
    if args.insecure_plaintext {
        v.push("--insecure-plaintext".into());
    }
    Ok(Some(v))
}

/// Runs the children until SIGINT/SIGTERM or until one of them exits.
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let stop = crate::stop_flag()?;
    let mut dp_config = crate::load_config(args.config.as_ref(), &args.dataplane)?;
    if let Some(b) = args.backend {
        dp_config.backend = b;
    }
    dp_config.validate()?;
    println!("memstreamer node: {}", dp_config.describe_profile());
    crate::prepare_storage(&dp_config)?;
    let kafka = kafka_args(&args, &dp_config)?;
    let dp_env = dataplane_env(&args, &dp_config)?;
    let mut children = vec![Supervised::spawn(
        "data plane",
        &dataplane_args(&args),
        &dp_env,
    )?];
    let mut more = vec![("control plane", controlplane_args(&args, &dp_config))];
    more.extend(kafka.map(|k| ("kafka listener", k)));
    for (name, child_args) in more {
        match Supervised::spawn(name, &child_args, &[]) {
            Ok(c) => children.push(c),
            Err(e) => {
                children.iter_mut().rev().for_each(Supervised::stop);
                return Err(e);
            }
        }
    }
    let mut failed = None;
    while !stop.load(Ordering::Relaxed) {
        if let Some((name, status)) = children
            .iter_mut()
            .find_map(|c| c.poll().map(|status| (c.name, status)))
        {
            // A terminal's Ctrl-C reaches the children too: an exit after a stop request is not
            // a failure.
            if !stop.load(Ordering::Relaxed) {
                failed = Some((name, status));
            }
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    // Kafka listener, then control plane (it stops writing commands), then the data plane.
    for c in children.iter_mut().rev() {
        c.stop();
    }
    if let Some((name, status)) = failed {
        let others: Vec<&str> = children
            .iter()
            .filter(|c| c.name != name)
            .map(|c| c.name)
            .collect();
        anyhow::bail!(
            "the {name} exited unexpectedly ({status}); stopped the {} too",
            others.join(", ")
        );
    }
    for c in &children {
        if let Some(s) = c.status.filter(|s| !s.success()) {
            eprintln!("memstreamer node: the {} stopped with {s}", c.name);
        }
    }
    println!("memstreamer node: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeArgs,
    }

    #[test]
    fn flags_reach_the_right_child() {
        let a = Cli::parse_from([
            "node",
            "--config",
            "/d.toml",
            "--backend",
            "udp",
            "--join",
            "10.0.0.1:7450",
            "--id",
            "2",
            "--control-listen",
            "127.0.0.1:9",
            "--profile",
            "low-latency",
            "--data-dir",
            "/data",
        ])
        .node;
        assert_eq!(
            dataplane_args(&a),
            [
                "dataplane",
                "--config",
                "/d.toml",
                "--profile",
                "low-latency",
                "--data-dir",
                "/data",
                "--backend",
                "udp"
            ]
        );
        let dp = dataplane::Config {
            shm_dir: Some("/r".into()),
            ..dataplane::Config::default()
        };
        let cp = controlplane_args(&a, &dp).join(" ");
        assert_eq!(
            cp,
            format!(
                "controlplane --dataplane-commands --id 2 --listen 127.0.0.1:9 --data-dir /data/cp --join 10.0.0.1:7450 --data-addr {} --dataplane-shm-dir /r --dataplane-counters {} --dataplane-stream 7:1",
                dp.listen,
                dp.counters_file.display()
            )
        );
        // The control plane accepts what the supervisor passes.
        #[derive(Parser)]
        struct Cp {
            #[command(flatten)]
            node: controlplane::dataplane_link::NodeArgs,
        }
        let c = Cp::try_parse_from(controlplane_args(&a, &dp).iter().map(String::as_str))
            .unwrap()
            .node
            .into_config()
            .unwrap();
        assert_eq!(c.join.as_deref(), Some("10.0.0.1:7450"));
        assert_eq!(c.data_dir, std::path::Path::new("/data/cp"));
        // Without --data-dir, the control plane's own default is under the data plane's.
        assert_eq!(
            std::path::Path::new(dataplane::config::DATA_DIR_DEFAULT).join(CONTROL_SUBDIR),
            std::path::Path::new(controlplane::node::DATA_DIR_DEFAULT)
        );
        assert!(c.admin.dataplane_commands);
        assert_eq!(c.admin.dataplane_shm_dir, Some("/r".into()));
        assert_eq!(c.admin.dataplane_counters, Some(dp.counters_file.clone()));
        let configured: Vec<(u32, u16)> = dp.streams.iter().map(|s| (s.id, s.partitions)).collect();
        let registered: Vec<(u32, u16)> = c
            .admin
            .dataplane_streams
            .iter()
            .map(|s| (s.id, s.partitions))
            .collect();
        assert_eq!(registered, configured);
    }
}
