//! Running a child process with a hard time limit and capturing its output.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// What a finished (or killed) command produced.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// From just before spawn to the moment the process was reaped.
    pub elapsed: Duration,
    /// The time limit was reached and the process was killed.
    pub timed_out: bool,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn ms(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1000.0
    }

    /// Panics with everything known about the run unless it exited with `code`.
    pub fn assert_code(&self, code: i32, what: &str) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "{what}: expected exit code {code}\n{}",
            self.describe()
        );
        self
    }

    pub fn describe(&self) -> String {
        format!(
            "status: {:?}{}, elapsed {:.1} ms\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            if self.timed_out {
                " (killed at time limit)"
            } else {
                ""
            },
            self.ms(),
            self.stdout,
            self.stderr
        )
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error only truncates what the test sees; the status still tells.
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

type Reaped = (std::io::Result<ExitStatus>, Duration);

/// A child started by [`spawn`], its output being collected; killed if
/// dropped before [`Running::wait`] (a test that failed half-way).
#[derive(Debug)]
pub struct Running {
    pid: u32,
    what: String,
    started: Instant,
    stdout: Option<thread::JoinHandle<Vec<u8>>>,
    stderr: Option<thread::JoinHandle<Vec<u8>>>,
    done: mpsc::Receiver<Reaped>,
    waiter: Option<thread::JoinHandle<()>>,
    finished: bool,
}

/// Starts `command` with piped stdout/stderr and no stdin.
pub fn spawn(mut command: Command) -> Running {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {command:?}: {e}"));
    let pid = child.id();
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let (tx, done) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send((status, started.elapsed()));
    });
    Running {
        pid,
        what: format!("{command:?}"),
        started,
        stdout,
        stderr,
        done,
        waiter: Some(waiter),
        finished: false,
    }
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until the child ends, killing it (SIGKILL) once `limit` has
    /// passed since it was started.
    pub fn wait(mut self, limit: Duration) -> Outcome {
        let left = limit.saturating_sub(self.started.elapsed());
        let (result, timed_out) = match self.done.recv_timeout(left) {
            Ok(result) => (result, false),
            Err(_) => {
                // The waiter has not reaped the child yet, so the pid is still ours.
                unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
                match self.done.recv() {
                    Ok(result) => (result, true),
                    Err(_) => panic!("waiter for {} vanished", self.what),
                }
            }
        };
        if let Some(waiter) = self.waiter.take() {
            let _ = waiter.join();
        }
        let (status, elapsed) = result;
        let status = status.unwrap_or_else(|e| panic!("cannot wait for {}: {e}", self.what));
        let text = |handle: Option<thread::JoinHandle<Vec<u8>>>| {
            handle
                .and_then(|h| h.join().ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        self.finished = true;
        Outcome {
            status,
            stdout: text(self.stdout.take()),
            stderr: text(self.stderr.take()),
            elapsed,
            timed_out,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.finished && self.done.try_recv().is_err() {
            // Not reaped yet (the waiter would have sent), so the pid is still ours.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Runs `command` with piped stdout/stderr and no stdin; kills it (SIGKILL)
/// once `limit` has passed.
pub fn run(command: Command, limit: Duration) -> Outcome {
    spawn(command).wait(limit)
}

/// `CAP_SYS_RESOURCE` (linux/capability.h): raising a hard limit needs it.
const CAP_SYS_RESOURCE: u32 = 24;

/// `wanted` as a descriptor limit, or this process's hard limit if it is
/// lower and cannot be raised (a container may not grant `CAP_SYS_RESOURCE`).
pub fn allowed_nofile(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return wanted;
    }
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let caps = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(caps.trim(), 16).ok()
        })
        .unwrap_or(0);
    if effective & (1 << CAP_SYS_RESOURCE) != 0 {
        wanted
    } else {
        wanted.min(limit.rlim_max)
    }
}
