//! The hostile local user: `nss-probe hold` and `nss-probe forge` run as
//! nobody (`setpriv`), with a descriptor limit of their own high enough for
//! thousands of connections.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::artifacts;
use crate::nss::{as_user, NOBODY};
use crate::probe::summary;
use crate::process::{self, Outcome, Running};

/// The attacker's own `RLIMIT_NOFILE`.
const ATTACKER_NOFILE: u64 = 65_536;

/// `nss-probe MODE ARGS...` as nobody, under its own descriptor limit.
fn as_nobody(mode: &str, args: &[String]) -> Command {
    let mut argv = vec![artifacts::probe().display().to_string(), mode.to_owned()];
    argv.extend(args.iter().cloned());
    let nofile = process::allowed_nofile(ATTACKER_NOFILE);
    let mut command = Command::new("prlimit");
    command
        .arg(format!("--nofile={nofile}:{nofile}"))
        .arg("--")
        .args(as_user(NOBODY, &argv))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    command
}

/// What the connections do once open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// Nothing at all.
    Idle,
    /// Each asks for a listing of every user and never reads the answer.
    UnreadListings,
}

/// A running flood: up to `count` connections held, every one the broker
/// closes replaced at once, until the time is up.
#[derive(Debug)]
pub struct Flood {
    running: Running,
    seconds: f64,
}

/// What the attacker saw.
#[derive(Debug, Clone, Copy)]
pub struct FloodReport {
    /// Connections open at the end.
    pub held: u64,
    /// The most open at once.
    pub most: u64,
    /// Connections made.
    pub connects: u64,
    /// Connections the broker closed.
    pub closed_by_peer: u64,
}

/// Starts the flood against `socket`.
pub fn flood(socket: &Path, count: usize, seconds: f64, connections: Connections) -> Flood {
    let mut args = vec![
        socket.display().to_string(),
        count.to_string(),
        seconds.to_string(),
    ];
    if connections == Connections::UnreadListings {
        args.push("enumerate".to_owned());
    }
    Flood {
        running: process::spawn(as_nobody("hold", &args)),
        seconds,
    }
}

impl Flood {
    pub fn finish(self) -> FloodReport {
        let out = self
            .running
            .wait(Duration::from_secs_f64(self.seconds) + Duration::from_secs(30));
        assert!(
            !out.timed_out && out.code() == Some(0),
            "the attacker failed\n{}",
            out.describe()
        );
        let numbers = summary(&out.stdout, "hold");
        let number = |key: &str| numbers.get(key).copied().unwrap_or(0);
        FloodReport {
            held: number("held"),
            most: number("most"),
            connects: number("connects"),
            closed_by_peer: number("closed_by_peer"),
        }
    }
}

/// A listener run by nobody that answers every call with a forged `root`
/// (`realName` "FORGED"), for `seconds`.
#[derive(Debug)]
pub struct Forger {
    running: Running,
    seconds: f64,
}

impl Forger {
    /// Starts it on `socket` and waits until the socket is there.
    pub fn start(socket: &Path, seconds: f64) -> Forger {
        let args = [socket.display().to_string(), seconds.to_string()];
        let forger = Forger {
            running: process::spawn(as_nobody("forge", &args)),
            seconds,
        };
        let started = std::time::Instant::now();
        while !socket.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the forger never listened on {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        forger
    }

    pub fn finish(self) -> Outcome {
        self.running
            .wait(Duration::from_secs_f64(self.seconds) + Duration::from_secs(10))
    }
}
