//! `ms-controlplane`: runs one control-plane node (the `memstreamer` binary
//! embeds the same entry point, `controlplane::node::run`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use controlplane::node::{self, NodeConfig};

#[derive(Parser)]
#[command(name = "ms-controlplane", about = "MemoryStreamer control-plane node")]
struct Args {
    /// TOML configuration; flags override it. Without it the embedded defaults apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Raft node id (non-zero, unique in the cluster).
    #[arg(long)]
    id: Option<u64>,
    /// gRPC listen address (ip:port).
    #[arg(long)]
    listen: Option<String>,
    /// Address other nodes use to reach this one.
    #[arg(long)]
    advertise: Option<String>,
    /// Data-plane address of this node.
    #[arg(long)]
    data_addr: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// Join the cluster through this member's address (fresh node only).
    #[arg(long)]
    join: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = match &args.config {
        Some(p) => match NodeConfig::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ms-controlplane: {e}");
                return ExitCode::from(2);
            }
        },
        None => NodeConfig::default(),
    };
    if let Some(v) = args.id {
        config.id = v;
    }
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.advertise {
        config.advertise = Some(v);
    }
    if let Some(v) = args.data_addr {
        config.data_addr = v;
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.cert_dir {
        config.cert_dir = Some(v);
    }
    if let Some(v) = args.join {
        config.join = Some(v);
    }
    match node::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ms-controlplane: {e}");
            ExitCode::FAILURE
        }
    }
}
