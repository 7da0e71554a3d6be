//! Shared by both ends of userdb-broker: the Varlink framing, the
//! `io.systemd.UserDatabase` / `io.userdb.Broker` message types, the NSS
//! view of a user/group record with the validation both ends apply, and the
//! small blocking Varlink client (`client`, `peer`: the only modules with
//! socket system calls, each `unsafe` block with its reason).
//!
//! The module links this crate into every process, so it stays free of
//! runtimes, threads and global state.

pub mod api;
pub mod client;
pub mod names;
pub mod nsswitch;
pub mod peer;
pub mod record;
pub mod snapfile;
pub mod varlink;
pub mod visibility;

/// The Varlink service name of the broker, in `service` parameters and as the
/// socket's file name.
pub const BROKER_SERVICE: &str = "io.userdb.Broker";

/// Where the broker listens unless told otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/run/userdb-broker/io.userdb.Broker";
