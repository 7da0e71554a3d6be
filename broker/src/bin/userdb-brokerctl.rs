//! userdb-brokerctl: look-ups and status against a running userdb-brokerd,
//! and the nsswitch.conf commands `check`, `enable` and `disable`.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    userdb_broker::nsswitch_config::main(&args).unwrap_or_else(|| userdb_broker::ctl::main(&args))
}
