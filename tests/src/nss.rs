//! Lookups through real glibc with the module, in a private mount namespace.
//!
//! `unshare --mount --propagation private` gives the command its own view of
//! `/etc/nsswitch.conf`, `/etc/passwd`, `/etc/group`, `/etc/shadow` and
//! `/etc/gshadow` (bind mounts of the fixture's files); the mounts vanish with
//! the namespace when the command exits, so the machine's `/etc` is untouched.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::artifacts;
use crate::fixture::Fixture;
use crate::lines::assert_line;
use crate::process::{self, Outcome};

/// `files` first, merge on group: the configuration the project recommends.
pub const FILES_THEN_BROKER: &str = "\
passwd: files broker
group: files [SUCCESS=merge] broker
shadow: files broker
gshadow: files broker
";

/// Only the module: every lookup reaches it.
pub const BROKER_ONLY: &str = "\
passwd: broker
group: broker
shadow: broker
gshadow: broker
";

/// Without a limit a hung lookup would hang the suite.
pub const DEFAULT_LIMIT: Duration = Duration::from_secs(60);

/// Binds the fixture's files over /etc, then runs the command. Arguments:
/// $1 nsswitch.conf, $2 the fixture's etc directory, then the command.
const SETUP_SCRIPT: &str = r#"set -e
mount --bind "$1" /etc/nsswitch.conf
for db in passwd group shadow gshadow; do mount --bind "$2/$db" "/etc/$db"; done
shift 2
exec "$@"
"#;

/// What PID 1 gives generators in systemd 252.
pub const GENERATOR_ENV: [(&str, &str); 4] = [
    ("SYSTEMD_SCOPE", "system"),
    ("SYSTEMD_ARCHITECTURE", "x86-64"),
    ("SYSTEMD_IN_INITRD", "0"),
    ("SYSTEMD_FIRST_BOOT", "0"),
];

/// The uid and gid of `nobody` used for unprivileged lookups.
pub const NOBODY: u32 = 65534;

/// How to run lookups for one test: which nsswitch.conf, which socket, which
/// environment.
#[derive(Debug, Clone)]
pub struct Nss {
    nsswitch: PathBuf,
    etc: PathBuf,
    lib_dir: PathBuf,
    /// `USERDB_BROKER_SOCKET`; `None`: the module's default paths.
    socket: Option<PathBuf>,
    env: Vec<(String, OsString)>,
    /// The nsswitch.conf lines joined with "; ", for failure messages.
    label: String,
    as_pid1: bool,
    limit: Duration,
}

impl Nss {
    /// Lookups against `fixture` with `nsswitch` as `/etc/nsswitch.conf` and
    /// `USERDB_BROKER_SOCKET` set to the fixture's socket.
    pub fn new(fixture: &Fixture, nsswitch: &str) -> Nss {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let scratch = fixture.scratch();
        let nsswitch_path = scratch.join(format!(
            "nsswitch.{}.conf",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&nsswitch_path, nsswitch)
            .unwrap_or_else(|e| panic!("write {}: {e}", nsswitch_path.display()));
        Nss {
            nsswitch: nsswitch_path,
            etc: fixture.root().join("etc"),
            lib_dir: module_dir(scratch),
            socket: Some(fixture.socket_path()),
            env: Vec::new(),
            label: nsswitch.lines().collect::<Vec<_>>().join("; "),
            as_pid1: false,
            limit: DEFAULT_LIMIT,
        }
    }

    /// The nsswitch.conf in use, on one line.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Point the module at another socket.
    pub fn socket(mut self, path: &Path) -> Nss {
        self.socket = Some(path.to_path_buf());
        self
    }

    /// Leave `USERDB_BROKER_SOCKET` unset: the module uses its default
    /// socket and snapshot file, which the command must mount in place.
    pub fn default_socket(mut self) -> Nss {
        self.socket = None;
        self
    }

    /// An extra environment variable for the looked-up command.
    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Nss {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// Run the command as PID 1 of a new PID namespace.
    pub fn as_pid1(mut self) -> Nss {
        self.as_pid1 = true;
        self
    }

    /// Run the command with the environment PID 1 gives generators.
    pub fn as_generator(self) -> Nss {
        GENERATOR_ENV
            .iter()
            .fold(self, |nss, (k, v)| nss.env(k, *v))
    }

    pub fn limit(mut self, limit: Duration) -> Nss {
        self.limit = limit;
        self
    }

    /// The command that runs `argv` in the namespace, with a clean
    /// environment holding only what the lookup needs.
    pub fn command(&self, argv: &[impl AsRef<std::ffi::OsStr>]) -> Command {
        self.command_under(&[], argv)
    }

    /// As [`Nss::command`], the namespace itself started by `wrapper`
    /// (a tracer outside the namespace sees the command as it runs there,
    /// PID 1 included).
    fn command_under(&self, wrapper: &[&str], argv: &[impl AsRef<std::ffi::OsStr>]) -> Command {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg("unshare");
                c
            }
            None => Command::new("unshare"),
        };
        command.args(["--mount", "--propagation", "private"]);
        if self.as_pid1 {
            command.args(["--pid", "--fork", "--kill-child", "--mount-proc"]);
        }
        command
            .args(["--", "sh", "-c", SETUP_SCRIPT, "sh"])
            .arg(&self.nsswitch)
            .arg(&self.etc)
            .args(argv)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C")
            .env("LD_LIBRARY_PATH", &self.lib_dir);
        if let Some(socket) = &self.socket {
            command.env("USERDB_BROKER_SOCKET", socket);
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// Runs `argv` in the namespace and returns what it did.
    pub fn run(&self, argv: &[&str]) -> Outcome {
        process::run(self.command(argv), self.limit)
    }

    /// Runs `argv`, asserting it succeeds; the lines it printed.
    pub fn run_ok(&self, argv: &[&str]) -> Vec<String> {
        let out = self.run(argv);
        out.assert_code(0, &self.describe(argv));
        out.stdout.lines().map(str::to_owned).collect()
    }

    /// The single line `argv` prints, asserting success and exactly one line.
    pub fn one_line(&self, argv: &[&str]) -> String {
        let lines = self.run_ok(argv);
        assert_eq!(
            lines.len(),
            1,
            "{}: expected one line, got {lines:?}",
            self.describe(argv)
        );
        lines.into_iter().next().unwrap_or_default()
    }

    /// Asserts `argv` prints exactly the line `expected`.
    pub fn expect_line(&self, argv: &[&str], expected: impl AsRef<str>) {
        assert_line(
            &self.describe(argv),
            &self.one_line(argv),
            expected.as_ref(),
        );
    }

    /// Asserts `argv` finds nothing: getent's exit code 2 and no output.
    pub fn expect_not_found(&self, argv: &[&str]) {
        let out = self.run(argv);
        let what = format!("{} (not found)", self.describe(argv));
        out.assert_code(2, &what);
        assert_eq!(out.stdout, "", "{what}: printed something");
    }

    /// Runs `argv` until it prints `expected` (exit 0 and that one line) or,
    /// for `None`, finds nothing (exit 2); how long that took, if it
    /// happened within `limit`.
    pub fn wait_for(
        &self,
        argv: &[&str],
        expected: Option<&str>,
        limit: Duration,
    ) -> Option<Duration> {
        let started = Instant::now();
        loop {
            let out = self.run(argv);
            let done = match expected {
                Some(line) => out.code() == Some(0) && out.stdout.trim_end() == line,
                None => out.code() == Some(2),
            };
            if done {
                return Some(started.elapsed());
            }
            if started.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `[nsswitch lines] command`, for failure messages.
    fn describe(&self, argv: &[&str]) -> String {
        format!("[{}] {}", self.label, argv.join(" "))
    }

    /// The command that runs `argv` in the namespace under strace, every
    /// `connect` written to `trace`. strace starts the namespace, so a
    /// command run as PID 1 is traced too; the seccomp filter stops only
    /// `connect`, so tracing costs next to nothing per look-up.
    pub fn traced_command(&self, argv: &[impl AsRef<std::ffi::OsStr>], trace: &Path) -> Command {
        let trace = trace.display().to_string();
        let strace = [
            "strace",
            "-f",
            "-qq",
            "--seccomp-bpf",
            "-e",
            "trace=connect",
            "-o",
            trace.as_str(),
        ];
        self.command_under(&strace, argv)
    }

    /// A file for [`Nss::traced_command`] beside the test's nsswitch.conf.
    pub fn trace_file(&self) -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        self.nsswitch.with_file_name(format!(
            "strace.{}.log",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Runs `argv` under strace; what it did and how many times it
    /// connected to `socket`.
    pub fn connections(&self, argv: &[&str], socket: &Path) -> (Outcome, usize) {
        let trace = self.trace_file();
        let out = process::run(self.traced_command(argv, &trace), self.limit);
        let count = connections_in(&trace, socket)
            .unwrap_or_else(|e| panic!("read {}: {e}\n{}", trace.display(), out.describe()));
        (out, count)
    }

    /// Runs `argv` as nobody with no supplementary groups.
    pub fn run_as_nobody(&self, argv: &[&str]) -> Outcome {
        self.run_as(NOBODY, argv)
    }

    /// Runs `argv` as `uid` (its gid the same number) with no supplementary groups.
    pub fn run_as(&self, uid: u32, argv: &[&str]) -> Outcome {
        process::run(self.command(&as_user(uid, argv)), self.limit)
    }
}

/// `argv` run by `setpriv` as `uid` (gid the same number), with no
/// supplementary groups.
pub fn as_user<S: AsRef<std::ffi::OsStr>>(uid: u32, argv: &[S]) -> Vec<OsString> {
    let mut full: Vec<OsString> = vec![
        "setpriv".into(),
        format!("--reuid={uid}").into(),
        format!("--regid={uid}").into(),
        "--clear-groups".into(),
        "--".into(),
    ];
    full.extend(argv.iter().map(|a| a.as_ref().to_os_string()));
    full
}

/// The connections to `socket` an strace log shows (the log is removed).
pub fn connections_in(trace: &Path, socket: &Path) -> std::io::Result<usize> {
    let traced = fs::read_to_string(trace)?;
    let _ = fs::remove_file(trace);
    let socket = socket.display().to_string();
    Ok(traced
        .lines()
        .filter(|l| l.contains("connect(") && l.contains(&socket))
        .count())
}

/// `<scratch>/lib` holding `libnss_broker.so.2` -> the built module, for
/// `LD_LIBRARY_PATH`.
fn module_dir(scratch: &Path) -> PathBuf {
    let dir = scratch.join("lib");
    let link = dir.join("libnss_broker.so.2");
    if !link.exists() {
        let module = artifacts::module();
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        match symlink(&module, &link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("symlink {}: {e}", link.display()),
        }
    }
    dir
}
