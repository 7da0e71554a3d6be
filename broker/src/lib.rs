//! userdb-brokerd and userdb-brokerctl: a userdb broker that serves users
//! and groups from `/etc` files and systemd's JSON drop-ins over Varlink,
//! without ever resolving users through NSS itself.

pub mod cli;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod log_once;
pub mod memory;
pub mod merge;
pub mod metrics;
pub mod model;
pub mod nsswitch_config;
pub mod publish;
pub mod resolve;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod sources;
pub mod watch;
