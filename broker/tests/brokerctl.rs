//! userdb-brokerctl as a user runs it: the nsswitch.conf commands on a
//! scratch file (never the machine's), and a clear failure without a broker.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

const BROKERCTL: &str = env!("CARGO_BIN_EXE_userdb-brokerctl");

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("brokerctl-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn brokerctl(args: &[&str]) -> Output {
    Command::new(BROKERCTL)
        .args(args)
        .output()
        .expect("run userdb-brokerctl")
}

#[test]
fn check_warns_about_the_pid1_deadlock_line_and_exits_1() {
    let dir = scratch("check");
    let file = dir.join("nsswitch.conf");
    fs::write(
        &file,
        "passwd: files broker\ngroup: files [SUCCESS=merge] systemd\n",
    )
    .unwrap();
    let out = brokerctl(&["check", "--file", file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("line 2 (group)"), "{stdout}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn enable_then_disable_edits_the_file_and_keeps_a_backup() {
    let dir = scratch("enable");
    let file = dir.join("nsswitch.conf");
    let original =
        "# mine\npasswd: files\ngroup: files\nshadow: files\ngshadow: files\nhosts: files dns\n";
    fs::write(&file, original).unwrap();
    let path = file.to_str().unwrap();

    assert_eq!(
        brokerctl(&["enable", "--file", path]).status.code(),
        Some(0)
    );
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        "# mine\npasswd: files broker\ngroup: files [SUCCESS=merge] broker\n\
         shadow: files broker\ngshadow: files broker\nhosts: files dns\n"
    );
    let backup = dir.join("nsswitch.conf.userdb-broker.bak");
    assert_eq!(fs::read_to_string(&backup).unwrap(), original);
    assert_eq!(brokerctl(&["check", "--file", path]).status.code(), Some(0));

    assert_eq!(
        brokerctl(&["disable", "--file", path]).status.code(),
        Some(0)
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), original);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn lookup_without_a_broker_names_the_socket_and_exits_3() {
    let dir = scratch("absent");
    let socket = dir.join("io.userdb.Broker");
    let out = brokerctl(&["--socket", socket.to_str().unwrap(), "user", "root"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(socket.to_str().unwrap()), "{stderr}");
    let _ = fs::remove_dir_all(&dir);
}
