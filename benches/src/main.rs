//! `ms-bench`: MemoryStreamer's benchmark suites. Each suite measures our path
//! and a peer (iceoryx2, crossbeam, fio, ...) in the same run, prints human
//! lines, and ends with one JSON object holding the figures and the ratios.
//! Benchmarks measure; they never assert.
#![forbid(unsafe_code)]

mod bindings;
mod control;
mod net;
mod net_dpdk;
mod report;
mod shm;
mod storage;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ms-bench",
    about = "MemoryStreamer benchmark suites (figures, not tests)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone, Debug)]
pub struct SuiteArgs {
    /// A short run (~20-30 s per suite) for smoke checks; figures are noisier.
    #[arg(long)]
    pub quick: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Shared-memory rings: cross-process latency and throughput vs iceoryx2 and crossbeam.
    Shm(SuiteArgs),
    /// storage-nvme: append throughput and durable-ack latency vs fio.
    Storage(SuiteArgs),
    /// Network path: AF_XDP vs kernel UDP (vs DPDK's af_packet vdev with `--features dpdk`) over veth.
    Net(SuiteArgs),
    /// Control plane: 3-node Raft write latency, failover, policy propagation vs etcd.
    Control(SuiteArgs),
    /// Python and C clients: Python pub/sub vs iceoryx2's Python package, the C API vs the Rust SDK.
    Bindings(SuiteArgs),
    /// Every suite in turn.
    All(SuiteArgs),
    /// Internal: a peer process started by a suite.
    #[command(hide = true)]
    Child {
        suite: String,
        role: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Shm(a) => report::emit_json(&shm::run(&a)?),
        Cmd::Storage(a) => report::emit_json(&storage::run(&a)?),
        Cmd::Net(a) => report::emit_json(&net::run(&a)?),
        Cmd::Control(a) => report::emit_json(&control::run(&a)?),
        Cmd::Bindings(a) => report::emit_json(&bindings::run(&a)?),
        Cmd::All(a) => {
            report::emit_json(&shm::run(&a)?);
            report::emit_json(&storage::run(&a)?);
            report::emit_json(&control::run(&a)?);
            report::emit_json(&net::run(&a)?);
            report::emit_json(&bindings::run(&a)?);
        }
        Cmd::Child { suite, role, rest } => match suite.as_str() {
            "shm" => shm::child(&role, &rest)?,
            "storage" => storage::child(&role, &rest)?,
            "control" => control::child(&role, &rest)?,
            "net" => net_dpdk::child(&role, &rest)?,
            other => anyhow::bail!("unknown suite {other:?}"),
        },
    }
    Ok(())
}
