//! userdb-brokerd: serves users and groups over Varlink. See the crate docs.

use std::process::ExitCode;

use clap::Parser;
use userdb_broker::cli::{self, Brokerd, EXIT_FAILURE};
use userdb_broker::config::Config;
use userdb_broker::{daemon, memory};

fn main() -> ExitCode {
    daemon::set_own_bypass();
    memory::tune_malloc();
    if daemon::is_pid1() {
        eprintln!("userdb-brokerd: refusing to run as PID 1: the broker must never be init (it would answer init's own look-ups)");
        return ExitCode::from(EXIT_FAILURE);
    }
    let cli = match Brokerd::try_parse() {
        Ok(cli) => cli,
        Err(e) => return cli::parse_failure(&e),
    };
    let config = match Config::from_cli(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("userdb-brokerd: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    daemon::init_logging(&config.log_level);
    // A reload reads the same command line and configuration file again.
    let reload = Box::new(move || Config::from_cli(&cli).map_err(|e| e.to_string()));
    match daemon::run(config, reload) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
