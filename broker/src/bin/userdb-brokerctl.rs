//! userdb-brokerctl: look-ups and status against a running userdb-brokerd,
//! and the nsswitch.conf commands `check`, `enable`, `disable` and
//! `is-enabled`.

fn main() -> std::process::ExitCode {
    userdb_broker::ctl::main()
}
