//! The real `userdb-brokerd`, started on a fixture root.

use std::fs::{self, File};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
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
    config: PathBuf,
    /// The write end of the broker's stdin, when it is a pipe: kept open and
    /// silent, so that a read from it would block.
    _stdin: Option<ChildStdin>,
}

/// Where the broker's stderr goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stderr {
    /// A log file of the test's own ([`Broker::log`]).
    Log,
    /// A pipe whose read end is already closed: every write fails with EPIPE.
    Broken,
}

/// How to start a broker: [`Broker::launch`], options, then [`Launch::start`].
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    fixture: &'a Fixture,
    socket: PathBuf,
    nss: Option<&'a Nss>,
    config: String,
    nofile: Option<u64>,
    stdin_pipe: bool,
    stderr: Stderr,
    ready_limit: Duration,
    socket_only: bool,
}

impl<'a> Launch<'a> {
    /// How long it may take to send READY=1 (default [`READY_LIMIT`]).
    pub fn ready_within(mut self, limit: Duration) -> Self {
        self.ready_limit = limit;
        self
    }

    /// Listen on another socket path.
    pub fn socket(mut self, socket: &Path) -> Self {
        self.socket = socket.to_path_buf();
        self
    }

    /// Run inside `nss`'s namespace, so that its own look-ups (if it made
    /// any) would go through that nsswitch.conf and the module.
    pub fn under(mut self, nss: &'a Nss) -> Self {
        self.nss = Some(nss);
        self
    }

    /// The configuration file's text (written to [`Broker::config_path`]).
    pub fn config(mut self, config: &str) -> Self {
        self.config = config.to_owned();
        self
    }

    /// No snapshot file: every look-up goes through the socket, for tests
    /// of the server itself (with the file, local look-ups never reach it).
    pub fn socket_only(mut self) -> Self {
        self.socket_only = true;
        self
    }

    /// Soft and hard `RLIMIT_NOFILE` (set by `prlimit`, which then execs the
    /// broker: the pid is the broker's).
    pub fn nofile(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }

    /// stdin a pipe that nobody ever writes to.
    pub fn stdin_pipe(mut self) -> Self {
        self.stdin_pipe = true;
        self
    }

    /// stderr a pipe nobody reads any more: every log line fails to write.
    pub fn broken_stderr(mut self) -> Self {
        self.stderr = Stderr::Broken;
        self
    }

    /// Starts the broker and waits for READY=1.
    pub fn start(self) -> Broker {
        let scratch = self.fixture.scratch();
        let generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
        let notify_path = scratch.join(format!("notify.{generation}"));
        let notify = UnixDatagram::bind(&notify_path)
            .unwrap_or_else(|e| panic!("bind {}: {e}", notify_path.display()));
        let log = scratch.join(format!("broker.{generation}.log"));
        // Always a file of the test's own, so that the host's
        // /etc/userdb-broker/userdb-brokerd.toml never applies.
        let config = scratch.join(format!("broker.{generation}.toml"));
        let mut text = self.config.clone();
        if self.socket_only {
            text.push_str("\nsnapshot_file = false\n");
        }
        fs::write(&config, text).unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(limit) = self.nofile {
            argv.extend(["prlimit".into(), format!("--nofile={limit}:{limit}").into()]);
            argv.push("--".into());
        }
        argv.extend([
            artifacts::brokerd().into_os_string(),
            "--root".into(),
            self.fixture.root().into(),
            "--socket".into(),
            self.socket.clone().into(),
            "--config".into(),
            config.clone().into(),
        ]);
        let mut command = match self.nss {
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
        let stderr = match self.stderr {
            Stderr::Log => Stdio::from(
                File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display())),
            ),
            Stderr::Broken => Stdio::from(broken_pipe()),
        };
        command
            .env("RUST_BACKTRACE", "1")
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(if self.stdin_pipe {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stdin = child.stdin.take();
        let mut broker = Broker {
            child,
            socket: self.socket,
            log,
            config,
            _stdin: stdin,
        };
        broker.wait_ready(&notify, self.ready_limit);
        let _ = fs::remove_file(&notify_path);
        broker
    }
}

/// The write end of a pipe whose read end is closed.
fn broken_pipe() -> OwnedFd {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned here only.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    write
}

/// What `/proc/PID/status` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStatus {
    pub threads: u64,
    /// Resident memory now, KiB.
    pub rss_kib: u64,
    /// The most resident memory ever, KiB.
    pub hwm_kib: u64,
}

impl ProcStatus {
    pub fn of(pid: u32) -> ProcStatus {
        let path = format!("/proc/{pid}/status");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {path}:\n{text}"))
        };
        ProcStatus {
            threads: field("Threads:"),
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
        }
    }
}

impl Broker {
    /// Starts the broker on `fixture`'s root and socket and waits for READY=1.
    pub fn start(fixture: &Fixture) -> Broker {
        Self::launch(fixture).start()
    }

    /// Same, on another socket path.
    pub fn start_at(fixture: &Fixture, socket: &Path) -> Broker {
        Self::launch(fixture).socket(socket).start()
    }

    /// Same, with `config` as its configuration file.
    pub fn start_with_config(fixture: &Fixture, config: &str) -> Broker {
        Self::launch(fixture).config(config).start()
    }

    /// Starts the broker inside `nss`'s namespace, so that its own lookups
    /// (if it made any) would go through that nsswitch.conf and the module.
    pub fn start_under(fixture: &Fixture, nss: &Nss) -> Broker {
        Self::launch(fixture).under(nss).start()
    }

    /// A broker on `fixture`'s root and socket with an empty configuration
    /// file, to be changed by the [`Launch`] options before it starts.
    pub fn launch(fixture: &Fixture) -> Launch<'_> {
        Launch {
            fixture,
            socket: fixture.socket_path(),
            nss: None,
            config: String::new(),
            nofile: None,
            stdin_pipe: false,
            stderr: Stderr::Log,
            ready_limit: READY_LIMIT,
            socket_only: false,
        }
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

    /// The configuration file it was started with (a reload reads it again).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Threads and memory now.
    pub fn proc_status(&self) -> ProcStatus {
        ProcStatus::of(self.pid())
    }

    /// CPU time used so far (user and system).
    pub fn cpu_time(&self) -> Duration {
        let path = format!("/proc/{}/stat", self.pid());
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        // The fields after the parenthesised command name; utime and stime
        // are the 14th and 15th of the line.
        let after = text.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<u64> = after
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|f| f.parse().ok())
            .collect();
        assert_eq!(
            fields.len(),
            2,
            "cannot read utime/stime from {path}: {text}"
        );
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis((fields[0] + fields[1]) * 1000 / ticks)
    }

    /// How many descriptors it has open.
    pub fn open_fds(&self) -> usize {
        let dir = format!("/proc/{}/fd", self.pid());
        fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("list {dir}: {e}"))
            .count()
    }

    /// Sets its soft descriptor limit (`prlimit --pid`), hard limit unchanged.
    pub fn set_soft_nofile(&self, soft: usize) {
        let mut command = Command::new("prlimit");
        command
            .arg("--pid")
            .arg(self.pid().to_string())
            .arg(format!("--nofile={soft}:"));
        process::run(command, Duration::from_secs(10)).assert_code(0, "prlimit --pid");
    }

    /// Sends `signal` (a `libc::SIG*`).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory preconditions; the pid is our child's,
        // not yet reaped (it is reaped only by kill() or drop).
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Starts counting `VmHWM` again from the current resident size.
    pub fn reset_peak_memory(&self) {
        let path = format!("/proc/{}/clear_refs", self.pid());
        fs::write(&path, "5").unwrap_or_else(|e| panic!("write {path}: {e}"));
    }

    /// Waits until a line of the log satisfies `wanted`; that line, if one
    /// did within `limit`.
    pub fn wait_for_log(&self, limit: Duration, wanted: impl Fn(&str) -> bool) -> Option<String> {
        let started = Instant::now();
        loop {
            if let Some(line) = self.log().lines().find(|l| wanted(l)) {
                return Some(line.to_owned());
            }
            if started.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

    /// `userdb-brokerctl --json user NAME` against this broker, as root or
    /// as `uid` (its gid the same number), parsed.
    pub fn user_record(&self, name: &str, uid: Option<u32>) -> serde_json::Value {
        let mut argv: Vec<std::ffi::OsString> = vec![
            artifacts::brokerctl().into(),
            "--socket".into(),
            self.socket.clone().into(),
            "--json".into(),
            "user".into(),
            name.into(),
        ];
        if let Some(uid) = uid {
            argv = crate::nss::as_user(uid, &argv);
        }
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        let out = process::run(command, Duration::from_secs(10));
        out.assert_code(0, "userdb-brokerctl --json user");
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
    }

    /// How it ended, if it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
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
