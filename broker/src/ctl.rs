//! userdb-brokerctl: look-ups and status against a running broker.
//!
//! Exit codes: 0 ok, 2 name not known, 3 broker absent or unreachable,
//! 64 usage, 1 anything else.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};
use userdb_proto::api;
use userdb_proto::client::{ClientError, Connection, Limits};
use userdb_proto::record::{GroupRecord, UserRecord};
use userdb_proto::BROKER_SERVICE;

pub const USAGE: &str = "\
usage: userdb-brokerctl [--socket PATH] [--json] [--timeout-ms N] COMMAND
commands:
  user NAME|UID     one user, as a passwd line
  group NAME|GID    one group, as a group line (members merged from every source)
  users             every user
  groups            every group
  members GROUP     the group's members, one per line
  status            sources, their state and latency, snapshot and connections";

pub const EXIT_NOT_FOUND: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;
pub const EXIT_USAGE: u8 = 64;

/// Global options, valid before any command.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub socket: PathBuf,
    pub json: bool,
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            socket: PathBuf::from(userdb_proto::DEFAULT_SOCKET_PATH),
            json: false,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why a command failed, and the exit code that says so.
#[derive(Debug, PartialEq)]
pub enum Failure {
    Usage(String),
    NotFound(String),
    Unreachable(String),
    Other(String),
}

impl Failure {
    fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Failure::Usage(_) => EXIT_USAGE,
            Failure::NotFound(_) => EXIT_NOT_FOUND,
            Failure::Unreachable(_) => EXIT_UNREACHABLE,
            Failure::Other(_) => 1,
        })
    }

    fn message(&self) -> &str {
        match self {
            Failure::Usage(m)
            | Failure::NotFound(m)
            | Failure::Unreachable(m)
            | Failure::Other(m) => m,
        }
    }
}

/// Splits the global options from the command and its arguments.
pub fn parse_options(args: &[String]) -> Result<(Options, &[String]), Failure> {
    let mut options = Options::default();
    let mut rest = args;
    while let Some(arg) = rest.first() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let takes_value = matches!(flag, "--socket" | "--timeout-ms");
        let value = if takes_value {
            match inline.or_else(|| rest.get(1).cloned()) {
                Some(v) => Some(v),
                None => return Err(Failure::Usage(format!("{flag} needs a value"))),
            }
        } else {
            None
        };
        match (flag, value) {
            ("--socket", Some(v)) => options.socket = PathBuf::from(v),
            ("--timeout-ms", Some(v)) => {
                let ms = v.parse::<u64>().ok().filter(|&ms| ms > 0).ok_or_else(|| {
                    Failure::Usage(format!("--timeout-ms needs a positive number, not {v:?}"))
                })?;
                options.timeout = Duration::from_millis(ms);
            }
            ("--json", None) => options.json = true,
            _ if flag.starts_with('-') => {
                return Err(Failure::Usage(format!("unknown option {flag}")))
            }
            _ => break,
        }
        let consumed = if takes_value && !arg.contains('=') {
            2
        } else {
            1
        };
        rest = &rest[consumed..];
    }
    Ok((options, rest))
}

/// Runs the command line (without the program name); prints results on
/// stdout and failures on stderr.
pub fn main(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}\n{}", crate::nsswitch_config::USAGE);
        return ExitCode::SUCCESS;
    }
    let result = parse_options(args).and_then(|(options, command)| {
        let ctl = Ctl { options };
        ctl.run(command)
    });
    match result {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("userdb-brokerctl: {}", failure.message());
            if let Failure::Usage(_) = failure {
                eprintln!("{USAGE}\n{}", crate::nsswitch_config::USAGE);
            }
            failure.exit_code()
        }
    }
}

struct Ctl {
    options: Options,
}

/// A key given on the command line: digits are an id.
fn key(arg: &str, name_field: &str, id_field: &str) -> Value {
    match arg.parse::<u32>() {
        Ok(id) => json!({ id_field: id, "service": BROKER_SERVICE }),
        Err(_) => json!({ name_field: arg, "service": BROKER_SERVICE }),
    }
}

impl Ctl {
    /// Runs one command and returns the lines to print.
    fn run(&self, command: &[String]) -> Result<Vec<String>, Failure> {
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        match args.as_slice() {
            ["user", who] => {
                let reply = self.call(
                    api::userdb::GET_USER_RECORD,
                    key(who, "userName", "uid"),
                    who,
                )?;
                Ok(vec![self.user_line(&reply["record"])?])
            }
            ["group", which] => {
                let reply = self.call(
                    api::userdb::GET_GROUP_RECORD,
                    key(which, "groupName", "gid"),
                    which,
                )?;
                Ok(vec![self.group_line(&reply["record"])?])
            }
            ["users"] => self
                .enumerate(api::userdb::GET_USER_RECORD)?
                .iter()
                .map(|reply| self.user_line(&reply["record"]))
                .collect(),
            ["groups"] => self
                .enumerate(api::userdb::GET_GROUP_RECORD)?
                .iter()
                .map(|reply| self.group_line(&reply["record"]))
                .collect(),
            ["members", group] => {
                let reply = self.call(
                    api::userdb::GET_GROUP_RECORD,
                    key(group, "groupName", "gid"),
                    group,
                )?;
                let record = GroupRecord::from_json(&reply["record"])
                    .map_err(|e| Failure::Other(e.to_string()))?;
                Ok(record.members)
            }
            ["status"] => {
                let status = self.call(api::broker::GET_STATUS, json!({}), "status")?;
                Ok(if self.options.json {
                    vec![status.to_string()]
                } else {
                    status_lines(&status)
                })
            }
            [] => Err(Failure::Usage("no command given".into())),
            [other, ..] => Err(Failure::Usage(format!(
                "unknown command or wrong arguments: {other}"
            ))),
        }
    }

    fn connect(&self) -> Result<Connection, Failure> {
        Connection::connect_timeout(&self.options.socket, self.options.timeout)
            .map(|c| {
                c.with_limits(Limits {
                    max_total: usize::MAX,
                    ..Limits::default()
                })
            })
            .map_err(|e| self.unreachable(e))
    }

    fn unreachable(&self, e: ClientError) -> Failure {
        Failure::Unreachable(format!(
            "cannot reach the broker at {}: {e}",
            self.options.socket.display()
        ))
    }

    /// Maps a failed call: unknown keys and broker trouble are told apart.
    fn failure(&self, e: ClientError, what: &str) -> Failure {
        match e {
            ClientError::Remote(name) if name == api::userdb::NO_RECORD_FOUND => {
                Failure::NotFound(format!("{what}: not known"))
            }
            ClientError::Remote(name) => {
                Failure::Other(format!("{what}: the broker answered {name}"))
            }
            ClientError::Protocol(_) | ClientError::Oversized => {
                Failure::Other(format!("{what}: {e}"))
            }
            other => self.unreachable(other),
        }
    }

    fn call(&self, method: &str, parameters: Value, what: &str) -> Result<Value, Failure> {
        self.connect()?
            .call(method, &parameters)
            .map_err(|e| self.failure(e, what))
    }

    /// Every reply of an enumeration; none at all is an empty list.
    fn enumerate(&self, method: &str) -> Result<Vec<Value>, Failure> {
        let mut replies = Vec::new();
        let result =
            self.connect()?
                .call_more(method, &json!({ "service": BROKER_SERVICE }), |reply| {
                    replies.push(reply);
                    Ok(())
                });
        match result {
            Ok(()) => Ok(replies),
            Err(ClientError::Remote(name)) if name == api::userdb::NO_RECORD_FOUND => {
                Ok(Vec::new())
            }
            Err(e) => Err(self.failure(e, method)),
        }
    }

    fn user_line(&self, record: &Value) -> Result<String, Failure> {
        if self.options.json {
            return Ok(record.to_string());
        }
        UserRecord::from_json(record)
            .map(|u| passwd_line(&u))
            .map_err(|e| Failure::Other(format!("the broker sent an invalid user record: {e}")))
    }

    fn group_line(&self, record: &Value) -> Result<String, Failure> {
        if self.options.json {
            return Ok(record.to_string());
        }
        GroupRecord::from_json(record)
            .map(|g| group_line(&g))
            .map_err(|e| Failure::Other(format!("the broker sent an invalid group record: {e}")))
    }
}

pub fn passwd_line(u: &UserRecord) -> String {
    format!(
        "{}:x:{}:{}:{}:{}:{}",
        u.name, u.uid, u.gid, u.gecos, u.home, u.shell
    )
}

pub fn group_line(g: &GroupRecord) -> String {
    format!("{}:x:{}:{}", g.name, g.gid, g.members.join(","))
}

fn status_lines(status: &Value) -> Vec<String> {
    let mut lines = vec![
        format!(
            "snapshot generation {}, built {:.1} s ago; {} open connections",
            status["generation"],
            status["snapshotAgeUSec"].as_u64().unwrap_or(0) as f64 / 1e6,
            status["connections"],
        ),
        format!(
            "{:<28} {:<8} {:<28} {:>7} {:>7} {:>11} {:>8} {:>10}",
            "SOURCE", "KIND", "STATE", "USERS", "GROUPS", "MEMBERSHIPS", "PROBLEMS", "LATENCY"
        ),
    ];
    for s in status["sources"].as_array().into_iter().flatten() {
        let text = |k: &str| s[k].as_str().unwrap_or("-").to_owned();
        let count = |k: &str| s[k].as_u64().map_or("-".to_owned(), |n| n.to_string());
        let latency = s["latencyUSec"]
            .as_u64()
            .map_or("-".to_owned(), |us| format!("{:.2} ms", us as f64 / 1e3));
        let mut state = text("state");
        if let Some(us) = s["retryInUSec"].as_u64() {
            state = format!("{state}, retry in {:.1} s", us as f64 / 1e6);
        }
        if s["servedByPid1"] == true {
            state.push_str(", PID 1");
        }
        lines.push(format!(
            "{:<28} {:<8} {:<28} {:>7} {:>7} {:>11} {:>8} {:>10}",
            text("name"),
            text("kind"),
            state,
            count("users"),
            count("groups"),
            count("memberships"),
            count("problems"),
            latency,
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_before_the_command() {
        let a = args(&[
            "--socket",
            "/tmp/s",
            "--json",
            "--timeout-ms=250",
            "user",
            "alice",
        ]);
        let (options, rest) = parse_options(&a).unwrap();
        assert_eq!(options.socket, PathBuf::from("/tmp/s"));
        assert!(options.json);
        assert_eq!(options.timeout, Duration::from_millis(250));
        assert_eq!(rest, ["user", "alice"]);
        assert!(matches!(
            parse_options(&args(&["--bogus"])),
            Err(Failure::Usage(_))
        ));
        assert!(matches!(
            parse_options(&args(&["--timeout-ms", "0"])),
            Err(Failure::Usage(_))
        ));
        assert!(matches!(
            parse_options(&args(&["--socket"])),
            Err(Failure::Usage(_))
        ));
    }

    #[test]
    fn keys_pick_name_or_id() {
        assert_eq!(key("1000", "userName", "uid")["uid"], 1000);
        assert_eq!(key("alice", "userName", "uid")["userName"], "alice");
    }

    #[test]
    fn lines_in_passwd_and_group_format() {
        let u =
            UserRecord::from_json(&json!({"userName": "alice", "uid": 1000, "realName": "Alice"}))
                .unwrap();
        assert_eq!(passwd_line(&u), "alice:x:1000:1000:Alice:/:/bin/bash");
        let g = GroupRecord::from_json(
            &json!({"groupName": "wheel", "gid": 10, "members": ["a", "b"]}),
        )
        .unwrap();
        assert_eq!(group_line(&g), "wheel:x:10:a,b");
    }

    #[test]
    fn status_shows_every_source_with_state_and_latency() {
        let status = json!({
            "generation": 4, "snapshotAgeUSec": 1_500_000u64, "connections": 2,
            "sources": [
                {"name": "files", "kind": "files", "state": "ok", "users": 3, "groups": 4,
                 "memberships": 5, "problems": 0, "latencyUSec": 120},
                {"name": "io.systemd.DynamicUser", "kind": "varlink", "state": "open",
                 "servedByPid1": true, "latencyUSec": null, "retryInUSec": 4_200_000u64},
            ]
        });
        let lines = status_lines(&status);
        assert_eq!(lines.len(), 4);
        assert!(
            lines[0].contains("generation 4") && lines[0].contains("2 open connections"),
            "{}",
            lines[0]
        );
        assert!(
            lines[2].starts_with("files") && lines[2].ends_with("0.12 ms"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].contains("open, retry in 4.2 s, PID 1") && lines[3].ends_with('-'),
            "{}",
            lines[3]
        );
    }

    #[test]
    fn absent_broker_is_unreachable_naming_the_socket() {
        let ctl = Ctl {
            options: Options {
                socket: PathBuf::from("/nonexistent/broker.sock"),
                ..Options::default()
            },
        };
        match ctl.run(&args(&["user", "root"])) {
            Err(Failure::Unreachable(m)) => assert!(m.contains("/nonexistent/broker.sock"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ctl.run(&args(&["frobnicate"])),
            Err(Failure::Usage(_))
        ));
        assert!(matches!(ctl.run(&args(&["user"])), Err(Failure::Usage(_))));
    }
}
