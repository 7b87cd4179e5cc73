//! `memstreamer`: the node binary.
//!
//! * `memstreamer node [--config FILE] [--profile default|low-latency] [--data-dir DIR]
//!   [--join ADDR] ...`: the supervised pair — runs `memstreamer dataplane` and
//!   `memstreamer controlplane` as child processes, forwards SIGINT/SIGTERM, and stops both (exit
//!   status 1, naming the child) when either exits on its own (see `supervise.rs`). With no flags
//!   and no files a single node comes up on the embedded defaults, the `default` profile: the
//!   data plane on the UDP backend at 127.0.0.1:7447 with its default ring directory, idling
//!   with a backoff strategy on one shared thread (~0 CPU when idle) and storing every partition
//!   under /var/lib/memstreamer/storage (records survive a restart); the control plane on
//!   127.0.0.1:7450 (admin API, mTLS with dev certificates created on first start under
//!   /var/lib/memstreamer/cp/certs) and HTTP /metrics on 127.0.0.1:7451. The first line names
//!   the profile in effect. `--profile low-latency` busy-spins one (pinned) thread per agent
//!   (tuned hosts, benchmarks; `dataplane::config` has the table). `--join ADDR` is passed to
//!   the control plane.
//! * `memstreamer dataplane [--config FILE] [--profile P] [--data-dir DIR] [--backend udp|afxdp|dpdk]`:
//!   runs the data plane alone until SIGINT/SIGTERM.
//! * `memstreamer controlplane [--config FILE] [--id N] [--listen ADDR] [--join ADDR] ...`: runs a
//!   control-plane node alone (`controlplane::node::run`; the same flags as `ms-controlplane`).
//! * `memstreamer kafka --listen ADDR --data-dir DIR --control-endpoint ADDR --cert-dir DIR
//!   --node-id N`: the Kafka API listener (the `kafka` crate); `memstreamer node` runs it as its
//!   third child on 127.0.0.1:9092 unless `--kafka-listen off`.
//! * `memstreamer certs --dir DIR`: creates a dev CA, a node and an `admin` client certificate.
//!
//! Stream changes reach the data plane without a restart: the control plane (run by `node`, or
//! with `--dataplane-commands`) writes create/drop commands into the data plane's shm-ring
//! `memstreamer-commands` (`controlplane::dataplane_link`), and the data plane's conductor
//! creates or removes the partition rings (`dataplane::conductor::StreamRings`).
//! * `memstreamer stat [--config FILE | --counters-file PATH] [--once]`: prints the node's counters
//!   from its shared-memory counters file (never touches the node process).
//! * `memstreamer demo`: its own netns + veth pair (198.18.0.0/15), a node on one end, a remote
//!   publisher in the other namespace, a local SDK subscriber; prints throughput and latency.

#![forbid(unsafe_code)]

mod demo;
mod stat;
mod supervise;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dataplane::config::Profile;
use dataplane::{Backend, Config, NodeParts};

/// The data plane's start-up line that ends its start (the demo waits for it).
pub(crate) const DATAPLANE_READY_LINE: &str = "memstreamer dataplane: streams";

#[derive(Parser)]
#[command(
    name = "memstreamer",
    about = "MemoryStreamer node: data plane + control plane, counters, certificates, demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the data plane and the control plane as supervised child processes.
    Node(supervise::NodeArgs),
    /// Runs a control-plane node (Raft metadata, admin API, policy push) until SIGINT/SIGTERM.
    Controlplane(controlplane::dataplane_link::NodeArgs),
    /// Runs the Kafka API listener until SIGINT/SIGTERM (`memstreamer node` starts it).
    Kafka(kafka::KafkaArgs),
    /// Creates dev certificates (CA, node, `admin` client) in DIR; existing ones are kept.
    Certs {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Runs the data plane (receiver, sender, archiver, conductor) until SIGINT/SIGTERM.
    Dataplane {
        /// TOML config (see dataplane::config); MS_* environment variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: ConfigFlags,
        /// Overrides `backend` of the config: afxdp, udp or dpdk (dpdk: a build with `--features dpdk`; never a silent fallback).
        #[arg(long)]
        backend: Option<Backend>,
    },
    /// Prints a node's counters (live, or once).
    Stat(stat::StatArgs),
    /// Self-contained end-to-end demo in its own network namespaces.
    Demo(demo::DemoArgs),
    /// Checks a node configuration and prints the effective values.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Data-plane config keys that have a command-line flag (they win over the file and `MS_*`).
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct ConfigFlags {
    /// `default`: backoff idle strategy on one shared thread, ~0 CPU when idle.
    /// `low-latency`: one busy-spinning thread per agent, pinned to `cores` (tuned hosts,
    /// benchmarks). Keys set in the config (`idle`, `threading`) win over the profile.
    #[arg(long)]
    pub profile: Option<Profile>,
    /// The node's data directory (default /var/lib/memstreamer): storage goes to DIR/storage
    /// unless the config sets `storage_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl ConfigFlags {
    /// As `MS_<KEY>` overrides (see `dataplane::Config::load_with`).
    fn overrides(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        if let Some(p) = self.profile {
            v.push(("MS_PROFILE".to_string(), p.to_string()));
        }
        if let Some(d) = &self.data_dir {
            v.push(("MS_DATA_DIR".to_string(), d.display().to_string()));
        }
        v
    }
}

pub(crate) fn load_config(path: Option<&PathBuf>, flags: &ConfigFlags) -> anyhow::Result<Config> {
    Ok(Config::load_with(
        path.map(PathBuf::as_path),
        flags.overrides(),
    )?)
}

/// Creates the storage directory (when storage is on), with an error that says the ways out:
/// the default, /var/lib/memstreamer/storage, is only writable by root or the service user.
pub(crate) fn prepare_storage(config: &Config) -> anyhow::Result<()> {
    let Some(dir) = &config.storage_dir else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the storage directory {}: run as a user who may write there, pass \
             --data-dir DIR (storage goes to DIR/storage), or set storage_dir = false in the \
             config (or MS_STORAGE_DIR=false) to run without storage",
            dir.display()
        )
    })
}

/// Sets the returned flag on SIGINT or SIGTERM.
pub(crate) fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, flag.clone()).context("installing the signal handler")?;
    }
    Ok(flag)
}

fn run_node(
    config: Option<PathBuf>,
    flags: &ConfigFlags,
    backend: Option<Backend>,
) -> anyhow::Result<()> {
    let mut config = load_config(config.as_ref(), flags)?;
    if let Some(b) = backend {
        config.backend = b;
        config.validate()?;
    }
    prepare_storage(&config)?;
    let stop = stop_flag()?;
    let parts = NodeParts::build(&config)?;
    let replayed = parts.replayed_records;
    let node = parts.start(&config)?;
    println!("memstreamer dataplane: {}", node.describe);
    if std::env::var_os(supervise::SUPERVISOR_PID_ENV).is_none() {
        // (Under `memstreamer node` the supervisor prints it, from the same configuration.)
        println!("memstreamer dataplane: {}", config.describe_profile());
    }
    println!(
        "{DATAPLANE_READY_LINE} {:?}, storage {}, replayed {replayed} records, counters {}",
        config
            .streams
            .iter()
            .map(|s| (s.id, s.partitions))
            .collect::<Vec<_>>(),
        config
            .storage_dir
            .as_ref()
            .map_or("off".to_string(), |d| d.display().to_string()),
        config.counters_file.display()
    );
    while !stop.load(Ordering::Relaxed) {
        if !node.is_healthy() {
            let panicked = node.stop();
            anyhow::bail!("an agent thread stopped unexpectedly ({panicked} panicked); see the messages above");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let panicked = node.stop();
    if panicked > 0 {
        anyhow::bail!("{panicked} agent threads panicked during shutdown");
    }
    println!("memstreamer dataplane: stopped");
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        // The chain, without causes already quoted by the message above them.
        let mut msg = e.to_string();
        for cause in e.chain().skip(1) {
            let cause = cause.to_string();
            if !msg.contains(&cause) {
                msg = format!("{msg}: {cause}");
            }
        }
        eprintln!("memstreamer: error: {msg}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Node(args) => supervise::run(args),
        Command::Dataplane {
            config,
            overrides,
            backend,
        } => {
            supervise::follow_supervisor()?;
            run_node(config, &overrides, backend)
        }
        Command::Controlplane(args) => {
            supervise::follow_supervisor()?;
            let config = args.into_config()?;
            controlplane::node::run(config)?;
            Ok(())
        }
        Command::Kafka(args) => {
            supervise::follow_supervisor()?;
            kafka::run(kafka::KafkaConfig::new(args)?)
        }
        Command::Certs { dir } => {
            let c = controlplane::certs::generate_dev(&dir)?;
            for (what, pair) in [("CA", &c.ca), ("node", &c.node), ("admin client", &c.admin)] {
                println!("{what}: {} {}", pair.cert.display(), pair.key.display());
            }
            Ok(())
        }
        Command::Stat(args) => stat::run(args),
        Command::Demo(args) => demo::run(args),
        Command::CheckConfig { config } => {
            println!(
                "{:#?}",
                load_config(config.as_ref(), &ConfigFlags::default())?
            );
            Ok(())
        }
    }
}
