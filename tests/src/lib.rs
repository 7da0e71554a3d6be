//! Harness for end-to-end and fault tests that go through real glibc.
//!
//! Everything runs against artifacts of `cargo build --release`: the NSS
//! module is loaded by `getent`, `id` or the `nss-probe` helper inside a
//! private mount namespace whose `/etc/nsswitch.conf` and user databases are
//! bind-mounted from a per-test [`Fixture`]; the machine's `/etc` is never
//! written.

pub mod artifacts;
pub mod attacker;
pub mod broker;
pub mod fake;
pub mod fixture;
pub mod lines;
pub mod nss;
pub mod populated;
pub mod population;
pub mod probe;
pub mod process;
pub mod userdb_service;
pub mod varlink;

use std::sync::{Mutex, MutexGuard};

pub use broker::{Broker, ProcStatus};
pub use fake::{Backlogged, Behaviour, FakeBroker};
pub use fixture::{DropinDir, Fixture};
pub use lines::{assert_line, assert_same_lines};
pub use nss::Nss;
pub use process::Outcome;

static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// CLOCK_MONOTONIC in ns: the clock `nss-probe` reports in, so that its
/// times compare with the harness's.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

/// Held by every test whose result depends on wall time or that loads the
/// machine heavily, so that such tests never run concurrently with each other.
pub fn exclusive() -> MutexGuard<'static, ()> {
    // A test that panicked while holding the lock leaves nothing to repair.
    EXCLUSIVE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
