//! `ms-controlplane`: runs one control-plane node (the `memstreamer` binary
//! embeds the same entry point, `controlplane::node::run`, with the same
//! flags, `controlplane::dataplane_link::NodeArgs`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use controlplane::dataplane_link::NodeArgs;
use controlplane::node;

#[derive(Parser)]
#[command(name = "ms-controlplane", about = "MemoryStreamer control-plane node")]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
}

fn main() -> ExitCode {
    let config = match Args::parse().node.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ms-controlplane: {e}");
            return ExitCode::from(2);
        }
    };
    match node::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ms-controlplane: {e}");
            ExitCode::FAILURE
        }
    }
}
