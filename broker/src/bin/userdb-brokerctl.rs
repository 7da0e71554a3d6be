//! userdb-brokerctl: look-ups and status against a running userdb-brokerd.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    userdb_broker::ctl::main(&args)
}
