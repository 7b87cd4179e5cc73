//! `memstreamer`: the node binary.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Checks a node configuration (TOML + MS_* overrides) and prints the effective values.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => {
            let config = match config {
                Some(path) => dataplane::Config::load(&path)?,
                None => dataplane::Config::from_env()?,
            };
            println!("{config:#?}");
        }
    }
    Ok(())
}
