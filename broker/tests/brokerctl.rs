//! userdb-brokerctl as a user runs it: the nsswitch.conf commands on
//! scratch files (never the machine's), the command line's conventions
//! (options anywhere, --help, --version, exit statuses, --json), and the
//! look-ups against a real userdb-brokerd serving a scratch root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::{json, Value};

mod notify;

const BROKERCTL: &str = env!("CARGO_BIN_EXE_userdb-brokerctl");
const BROKERD: &str = env!("CARGO_BIN_EXE_userdb-brokerd");

/// A fresh directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("brokerctl-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&path, text).unwrap();
        path
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn brokerctl(args: &[&str]) -> Output {
    Command::new(BROKERCTL)
        .args(args)
        .output()
        .expect("run userdb-brokerctl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs brokerctl, asserts its exit status, and returns its stdout.
fn expect(code: i32, args: &[&str]) -> String {
    let out = brokerctl(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs brokerctl with --json, asserts its exit status, and parses stdout
/// as exactly one JSON document.
fn expect_json(code: i32, args: &[&str]) -> Value {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let text = expect(code, &with_json);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{args:?}: not one JSON document ({e}): {text}"))
}

#[test]
fn check_warns_about_the_pid1_deadlock_line_and_exits_1() {
    let dir = Scratch::new("check");
    let file = dir.write(
        "nsswitch.conf",
        "passwd: files broker\ngroup: files [SUCCESS=merge] systemd\n",
    );
    let out = expect(1, &["check", "--file", file.to_str().unwrap()]);
    assert!(out.contains("line 2 (group): warning:"), "{out}");

    let report = expect_json(1, &["check", "--file", file.to_str().unwrap()]);
    assert_eq!(
        report["findings"][0]["problem"], "systemd-after-merge",
        "{report}"
    );
    assert_eq!(report["findings"][0]["line"], 2, "{report}");
}

#[test]
fn check_exits_0_on_advice_and_says_so_when_there_is_nothing() {
    let dir = Scratch::new("advice");
    let advice = dir.write("advice.conf", include_str!("nsswitch/debian-12.conf"));
    let out = expect(0, &["check", "--file", advice.to_str().unwrap()]);
    assert!(
        out.contains("advice:") && out.contains("userdb-brokerctl enable"),
        "{out}"
    );
    let good = dir.write(
        "good.conf",
        "passwd: files broker\ngroup: files [SUCCESS=merge] broker\n",
    );
    let out = expect(0, &["check", "--file", good.to_str().unwrap()]);
    assert!(out.contains("no findings"), "{out}");
}

#[test]
fn check_validates_the_daemons_configuration_file() {
    let dir = Scratch::new("check-config");
    let nsswitch = dir.write("nsswitch.conf", "passwd: files broker\n");
    let nsswitch = nsswitch.to_str().unwrap();
    let good = dir.write("good.toml", "max_connections = 10\n");
    let out = expect(
        0,
        &[
            "check",
            "--file",
            nsswitch,
            "--config",
            good.to_str().unwrap(),
        ],
    );
    assert!(out.contains("good.toml: valid"), "{out}");

    let typo = dir.write("typo.toml", "max_conections = 10\n");
    let out = expect(
        1,
        &[
            "check",
            "--file",
            nsswitch,
            "--config",
            typo.to_str().unwrap(),
        ],
    );
    assert!(
        out.contains("typo.toml") && out.contains("max_conections"),
        "{out}"
    );
    let broken = dir.write("broken.toml", "max_connections = \n");
    let report = expect_json(
        1,
        &[
            "check",
            "--file",
            nsswitch,
            "--config",
            broken.to_str().unwrap(),
        ],
    );
    assert_eq!(report["config"]["present"], true, "{report}");
    assert!(report["config"]["error"].is_string(), "{report}");

    let missing = dir.path("missing.toml");
    let report = expect_json(1, &["check", "--file", nsswitch, "--config", &missing]);
    assert!(
        report["config"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("missing.toml")),
        "{report}"
    );
}

#[test]
fn enable_then_disable_edits_the_file_and_keeps_a_backup() {
    let dir = Scratch::new("enable");
    let original =
        "# mine\npasswd: files\ngroup: files\nshadow: files\ngshadow: files\nhosts: files dns\n";
    let file = dir.write("nsswitch.conf", original);
    let path = file.to_str().unwrap();

    let out = expect(0, &["enable", "--file", path]);
    assert!(out.contains("group: added broker after files"), "{out}");
    let enabled = fs::read_to_string(&file).unwrap();
    let effective: Vec<&str> = enabled.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        effective,
        [
            "passwd: files broker",
            "group: files [SUCCESS=merge] broker",
            "shadow: files broker",
            "gshadow: files broker",
            "hosts: files dns"
        ]
    );
    let backup = dir.0.join("nsswitch.conf.userdb-broker.bak");
    assert_eq!(fs::read_to_string(&backup).unwrap(), original);
    assert!(expect(0, &["check", "--file", path]).contains("no findings"));
    let again = expect(0, &["enable", "--file", path]);
    assert!(
        again.contains("already enabled, nothing changed"),
        "{again}"
    );

    let report = expect_json(0, &["disable", "--file", path]);
    assert_eq!(report["changed"], true, "{report}");
    assert_eq!(report["backup"], backup.to_str().unwrap(), "{report}");
    assert_eq!(report["findings"], json!([]), "{report}");
    assert_eq!(fs::read_to_string(&file).unwrap(), original);
}

#[test]
fn disable_restores_what_enable_replaced_and_the_first_backup_stays() {
    let dir = Scratch::new("roundtrip");
    let original = include_str!("nsswitch/debian-12.conf");
    let file = dir.write("nsswitch.conf", original);
    let path = file.to_str().unwrap();
    let backup = dir.0.join("nsswitch.conf.userdb-broker.bak");

    expect(0, &["enable", "--file", path]);
    assert_eq!(fs::read_to_string(&backup).unwrap(), original);
    expect(0, &["disable", "--file", path]);
    assert_eq!(
        fs::read_to_string(&backup).unwrap(),
        original,
        "backup overwritten"
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), original);
}

#[test]
fn is_enabled_answers_with_its_exit_status() {
    let dir = Scratch::new("is-enabled");
    let stock = dir.write("stock.conf", include_str!("nsswitch/debian-12.conf"));
    let stock = stock.to_str().unwrap();
    expect(1, &["is-enabled", "--file", stock]);
    expect(0, &["enable", "--file", stock]);
    let out = expect(0, &["is-enabled", "--file", stock]);
    assert!(out.contains("broker on line 8, 10, 12, 14"), "{out}");
    let report = expect_json(0, &["is-enabled", "--file", stock]);
    assert_eq!(report["enabled"], true, "{report}");
    assert_eq!(report["lines"], json!([8, 10, 12, 14]), "{report}");
    expect(0, &["disable", "--file", stock]);
    expect(1, &["is-enabled", "--file", stock]);

    let commented = dir.write("commented.conf", "# passwd: files broker\n");
    expect(1, &["is-enabled", "--file", commented.to_str().unwrap()]);
    let missing = dir.path("missing.conf");
    let out = expect(1, &["is-enabled", "--file", &missing]);
    assert!(out.contains("does not exist"), "{out}");
}

#[test]
fn options_are_accepted_before_and_after_the_command() {
    let dir = Scratch::new("options");
    let file = dir.write("nsswitch.conf", "passwd: files broker\n");
    let path = file.to_str().unwrap();
    let socket = dir.path("absent.sock");

    for args in [
        vec!["--json", "check", "--file", path],
        vec!["check", "--json", "--file", path],
        vec!["check", "--file", path, "--json"],
    ] {
        let out = expect(0, &args);
        let report: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{args:?}: not one JSON document ({e}): {out}"));
        assert_eq!(report["file"], path, "{args:?}: {report}");
    }
    expect(0, &["--socket", &socket, "check", "--file", path]);
    for args in [
        vec!["status", "--json", "--socket", &socket],
        vec!["--socket", &socket, "status", "--json"],
        vec!["user", "root", "--socket", &socket],
        vec![
            "--timeout-ms",
            "100",
            "memberships",
            "root",
            "--socket",
            &socket,
        ],
    ] {
        let out = brokerctl(&args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(&socket), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn help_version_and_usage_errors() {
    let version = expect(0, &["--version"]);
    assert_eq!(
        version.trim(),
        format!("userdb-brokerctl {}", env!("CARGO_PKG_VERSION"))
    );
    let help = expect(0, &["--help"]);
    for command in [
        "user",
        "group",
        "users",
        "groups",
        "members",
        "memberships",
        "status",
        "check",
        "enable",
        "disable",
        "is-enabled",
    ] {
        assert!(
            help.contains(&format!("\n  {command} ")),
            "{command}: {help}"
        );
        let own = expect(0, &[command, "--help"]);
        assert!(
            own.contains(&format!("Usage: userdb-brokerctl {command}")),
            "{command}: {own}"
        );
    }
    assert!(help.contains("Exit status:"), "{help}");
    assert!(expect(0, &["enable", "--help"]).contains("--file <FILE>"));

    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["user"],
        vec!["users", "extra"],
        vec!["--timeout-ms", "0", "status"],
        vec!["check", "--bogus"],
    ] {
        let out = brokerctl(&args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
        let says = stderr(&out);
        assert!(
            says.starts_with("error: ") || says.contains("\nUsage: userdb-brokerctl"),
            "{args:?}: {says}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }

    let out = Command::new(BROKERD).arg("--version").output().unwrap();
    assert_eq!(
        stdout(&out).trim(),
        format!("userdb-brokerd {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(BROKERD).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("--config <FILE>"), "{}", stdout(&out));
}

/// A real userdb-brokerd serving a scratch root; killed when dropped.
struct Broker {
    child: Child,
    socket: String,
}

impl Broker {
    fn start(dir: &Scratch) -> Broker {
        let socket = dir.path("run/io.userdb.Broker");
        let notify_path = dir.0.join("notify");
        let notify = notify::socket(&notify_path);
        let config = dir.write("userdb-brokerd.toml", "");
        let mut child = Command::new(BROKERD)
            .args(["--socket", &socket, "--root", &dir.path("root"), "--config"])
            .arg(config)
            .env("NOTIFY_SOCKET", &notify_path)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        notify::wait_ready(&notify, &mut child);
        Broker { child, socket }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn lookups_print_lines_or_one_json_document() {
    let dir = Scratch::new("lookups");
    dir.write(
        "root/etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n",
    );
    dir.write(
        "root/etc/group",
        "root:x:0:\nwheel:x:10:alice\nalice:x:1000:\naudio:x:29:\n",
    );
    dir.write("root/etc/userdb/alice:audio.membership", "{}");
    let broker = Broker::start(&dir);
    let at = ["--socket", broker.socket.as_str()];
    let with = |args: &[&'static str]| -> Vec<&str> {
        at.iter().copied().chain(args.iter().copied()).collect()
    };

    assert_eq!(
        expect(0, &with(&["user", "alice"])),
        "alice:x:1000:1000:Alice:/home/alice:/bin/sh\n"
    );
    assert_eq!(
        expect(0, &with(&["user", "0"])),
        "root:x:0:0:root:/root:/bin/sh\n"
    );
    assert_eq!(expect_json(0, &with(&["user", "alice"]))["uid"], 1000);
    assert_eq!(expect(0, &with(&["group", "wheel"])), "wheel:x:10:alice\n");

    let users = expect_json(0, &with(&["users"]));
    let names: Vec<&str> = users
        .as_array()
        .expect("users is a JSON array")
        .iter()
        .filter_map(|u| u["userName"].as_str())
        .collect();
    assert_eq!(names, ["root", "alice"], "{users}");
    assert_eq!(expect(0, &with(&["users"])).lines().count(), 2);
    let groups = expect_json(0, &with(&["groups"]));
    assert_eq!(groups.as_array().map(Vec::len), Some(4), "{groups}");

    assert_eq!(expect(0, &with(&["members", "audio"])), "alice\n");
    assert_eq!(expect_json(0, &with(&["members", "10"])), json!(["alice"]));
    let mut memberships: Vec<String> = expect(0, &with(&["memberships", "alice"]))
        .lines()
        .map(str::to_owned)
        .collect();
    memberships.sort();
    assert_eq!(memberships, ["audio", "wheel"]);
    let by_uid = expect_json(0, &with(&["memberships", "1000"]));
    assert_eq!(by_uid.as_array().map(Vec::len), Some(2), "{by_uid}");
    assert_eq!(expect_json(0, &with(&["memberships", "root"])), json!([]));

    for args in [
        ["user", "nosuch"],
        ["memberships", "nosuch"],
        ["members", "nosuch"],
    ] {
        let out = brokerctl(&with(&args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("nosuch: not known"),
            "{}",
            stderr(&out)
        );
    }

    let status = expect_json(0, &with(&["status"]));
    assert!(status["sources"].is_array(), "{status}");
}

#[test]
fn brokerd_reads_the_file_given_and_refuses_a_bad_one() {
    let dir = Scratch::new("brokerd-config");
    let bad = dir.write("bad.toml", "max_conections = 10\n");
    let out = Command::new(BROKERD)
        .args(["--socket", &dir.path("sock"), "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("max_conections"), "{}", stderr(&out));
    assert!(!Path::new(&dir.path("sock")).exists());
}
