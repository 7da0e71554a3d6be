//! `cargo run -p xtask -- dist-assets OUT_DIR`: see the library docs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build-time tasks of userdb-broker")]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Write the man pages and shell completions below OUT_DIR
    DistAssets {
        #[arg(value_name = "OUT_DIR")]
        out_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let Task::DistAssets { out_dir } = Xtask::parse().task;
    match xtask::dist_assets(&out_dir) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask dist-assets: {}: {e}", out_dir.display());
            ExitCode::FAILURE
        }
    }
}
