//! The daemon as a process: readiness, termination, refusing PID 1.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod notify;

const BROKERD: &str = env!("CARGO_BIN_EXE_userdb-brokerd");

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("brokerd-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("root/etc")).unwrap();
    std::fs::write(dir.join("root/etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    dir
}

#[test]
fn notifies_ready_and_removes_its_socket_on_sigterm() {
    let dir = scratch("ready");
    let notify_path = dir.join("notify");
    let notify = notify::socket(&notify_path);
    let socket = dir.join("run/io.userdb.Broker");
    let mut child = Command::new(BROKERD)
        .arg("--socket")
        .arg(&socket)
        .arg("--root")
        .arg(dir.join("root"))
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    notify::wait_ready(&notify, &mut child);
    assert!(socket.exists(), "listening before READY=1");

    // SAFETY: signalling our own child by its pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    assert!(!socket.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refuses_to_run_as_pid_1() {
    let dir = scratch("pid1");
    let output = Command::new("unshare")
        .args(["--pid", "--fork", "--"])
        .arg(BROKERD)
        .arg("--socket")
        .arg(dir.join("sock"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing to run as PID 1"), "{stderr}");
    assert!(!dir.join("sock").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arguments_are_a_usage_error() {
    let output = Command::new(BROKERD)
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Usage: userdb-brokerd"));
}
