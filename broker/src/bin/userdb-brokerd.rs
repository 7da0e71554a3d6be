//! userdb-brokerd: serves users and groups over Varlink. See the crate docs.

use std::process::ExitCode;

use userdb_broker::config::{Command, Config, USAGE};
use userdb_broker::daemon;

fn main() -> ExitCode {
    daemon::set_own_bypass();
    if daemon::is_pid1() {
        eprintln!("userdb-brokerd: refusing to run as PID 1: the broker must never be init (it would answer init's own look-ups)");
        return ExitCode::from(1);
    }
    let config = match Config::from_args(std::env::args().skip(1)) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("userdb-brokerd: {e}");
            return ExitCode::from(64);
        }
    };
    daemon::init_logging(&config.log_level);
    let reload = Box::new(|| match Config::from_args(std::env::args().skip(1)) {
        Ok(Command::Run(config)) => Ok(*config),
        Ok(Command::Help) => Err("no configuration to reload".to_owned()),
        Err(e) => Err(e.to_string()),
    });
    match daemon::run(config, reload) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}
