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

/// Runs `command` with piped stdout/stderr and no stdin; kills it (SIGKILL)
/// once `limit` has passed.
pub fn run(mut command: Command, limit: Duration) -> Outcome {
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
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send((status, started.elapsed()));
    });
    let (result, timed_out) = match rx.recv_timeout(limit) {
        Ok(result) => (result, false),
        Err(_) => {
            // The waiter has not reaped the child yet, so the pid is still ours.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            match rx.recv() {
                Ok(result) => (result, true),
                Err(_) => panic!("waiter for {command:?} vanished"),
            }
        }
    };
    let _ = waiter.join();
    let (status, elapsed) = result;
    let status = status.unwrap_or_else(|e| panic!("cannot wait for {command:?}: {e}"));
    let text = |handle: Option<thread::JoinHandle<Vec<u8>>>| {
        handle
            .and_then(|h| h.join().ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    Outcome {
        status,
        stdout: text(stdout),
        stderr: text(stderr),
        elapsed,
        timed_out,
    }
}
