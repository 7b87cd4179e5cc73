//! `memstreamer`: the node binary.
//!
//! * `memstreamer node --config FILE [--backend udp|afxdp]`: runs the data plane until SIGINT/SIGTERM.
//! * `memstreamer stat [--config FILE | --counters-file PATH] [--once]`: prints the node's counters
//!   from its shared-memory counters file (never touches the node process).
//! * `memstreamer demo`: its own netns + veth pair (198.18.0.0/15), a node on one end, a remote
//!   publisher in the other namespace, a local SDK subscriber; prints throughput and latency.

#![forbid(unsafe_code)]

mod demo;
mod stat;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dataplane::{Backend, Config, NodeParts};

#[derive(Parser)]
#[command(
    name = "memstreamer",
    about = "MemoryStreamer node: data plane, counters, demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the data plane (receiver, sender, archiver, conductor) until SIGINT/SIGTERM.
    Node {
        /// TOML config (see dataplane::config); MS_* environment variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `backend` of the config: afxdp or udp (never a silent fallback).
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

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::from_env()?,
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

fn run_node(config: Option<PathBuf>, backend: Option<Backend>) -> anyhow::Result<()> {
    let mut config = load_config(config.as_ref())?;
    if let Some(b) = backend {
        config.backend = b;
        config.validate()?;
    }
    let stop = stop_flag()?;
    let parts = NodeParts::build(&config)?;
    let replayed = parts.replayed_records;
    let node = parts.start(&config)?;
    println!("memstreamer node: {}", node.describe);
    println!(
        "memstreamer node: streams {:?}, storage {}, replayed {replayed} records, counters {}",
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
    println!("memstreamer node: stopped");
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
        Command::Node { config, backend } => run_node(config, backend),
        Command::Stat(args) => stat::run(args),
        Command::Demo(args) => demo::run(args),
        Command::CheckConfig { config } => {
            println!("{:#?}", load_config(config.as_ref())?);
            Ok(())
        }
    }
}
