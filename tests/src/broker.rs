//! The real `userdb-brokerd`, started on a fixture root.

use std::fs::{self, File};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::artifacts;
use crate::fixture::Fixture;
use crate::nss::Nss;
use crate::process;

/// How long the broker may take to send `READY=1`.
pub const READY_LIMIT: Duration = Duration::from_secs(10);

/// Numbers the notify socket and log of each start, so a restarted broker
/// gets a fresh log.
static NEXT_GENERATION: AtomicUsize = AtomicUsize::new(0);

/// A running `userdb-brokerd`; killed and reaped on drop.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Broker {
    /// Starts the broker on `fixture`'s root and socket and waits for READY=1.
    pub fn start(fixture: &Fixture) -> Broker {
        Self::start_at(fixture, &fixture.socket_path())
    }

    /// Same, on another socket path.
    pub fn start_at(fixture: &Fixture, socket: &Path) -> Broker {
        Self::launch(fixture, socket, None, None, READY_LIMIT)
    }

    /// Same, with `config` written to a file and passed as `--config`.
    pub fn start_with_config(fixture: &Fixture, config: &str) -> Broker {
        Self::start_with_config_within(fixture, config, READY_LIMIT)
    }

    /// Same, waiting up to `ready_limit` for READY=1 (a very large root).
    pub fn start_with_config_within(
        fixture: &Fixture,
        config: &str,
        ready_limit: Duration,
    ) -> Broker {
        let path = fixture.scratch().join("broker.toml");
        fs::write(&path, config).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        Self::launch(
            fixture,
            &fixture.socket_path(),
            None,
            Some(&path),
            ready_limit,
        )
    }

    /// Starts the broker inside `nss`'s namespace, so that its own lookups
    /// (if it made any) would go through that nsswitch.conf and the module.
    pub fn start_under(fixture: &Fixture, nss: &Nss) -> Broker {
        Self::launch(
            fixture,
            &fixture.socket_path(),
            Some(nss),
            None,
            READY_LIMIT,
        )
    }

    fn launch(
        fixture: &Fixture,
        socket: &Path,
        nss: Option<&Nss>,
        config: Option<&Path>,
        ready_limit: Duration,
    ) -> Broker {
        let scratch = fixture.scratch();
        let generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
        let notify_path = scratch.join(format!("notify.{generation}"));
        let notify = UnixDatagram::bind(&notify_path)
            .unwrap_or_else(|e| panic!("bind {}: {e}", notify_path.display()));
        let log = scratch.join(format!("broker.{generation}.log"));
        let log_file =
            File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let mut argv = vec![
            artifacts::brokerd().into_os_string(),
            "--root".into(),
            fixture.root().into(),
            "--socket".into(),
            socket.into(),
        ];
        // Always a file of the test's own, so that the host's
        // /etc/userdb-broker/userdb-brokerd.toml never applies.
        let empty = scratch.join("empty.toml");
        let config = match config {
            Some(config) => config.to_path_buf(),
            None => {
                fs::write(&empty, "").unwrap_or_else(|e| panic!("write {}: {e}", empty.display()));
                empty
            }
        };
        argv.extend(["--config".into(), config.into()]);
        let mut command = match nss {
            Some(nss) => nss.command(&argv),
            None => {
                let mut plain = Command::new(&argv[0]);
                plain
                    .args(&argv[1..])
                    .env_clear()
                    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
                plain
            }
        };
        command
            .env("RUST_BACKTRACE", "1")
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let mut broker = Broker {
            child,
            socket: socket.to_path_buf(),
            log,
        };
        broker.wait_ready(&notify, ready_limit);
        let _ = fs::remove_file(&notify_path);
        broker
    }

    fn wait_ready(&mut self, notify: &UnixDatagram, limit: Duration) {
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        let _ = notify.set_read_timeout(Some(Duration::from_millis(50)));
        while started.elapsed() < limit {
            if let Ok(len) = notify.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..len]);
                if message.lines().any(|line| line == "READY=1") {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "userdb-brokerd exited before READY=1: {status}\n{}",
                    self.log()
                );
            }
        }
        panic!(
            "userdb-brokerd sent no READY=1 within {limit:?}\n{}",
            self.log()
        );
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the broker wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// `userdb-brokerctl --json status` against this broker, parsed.
    pub fn status(&self) -> serde_json::Value {
        let mut command = Command::new(artifacts::brokerctl());
        command
            .arg("--socket")
            .arg(&self.socket)
            .args(["--json", "status"]);
        let out = process::run(command, Duration::from_secs(10));
        out.assert_code(0, "userdb-brokerctl status");
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status is not JSON ({e}):\n{}", out.stdout))
    }

    /// Whether the process is still alive (not exited, not crashed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL and reap now, as a crash would end it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
