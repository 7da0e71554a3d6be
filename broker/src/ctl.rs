//! userdb-brokerctl: look-ups and status against a running broker, and the
//! nsswitch.conf commands, printed as text or as one JSON document. The
//! command line is defined in [`crate::cli`]; the exit statuses are there.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};
use userdb_proto::api;
use userdb_proto::client::{ClientError, Connection, Limits};
use userdb_proto::record::{GroupRecord, UserRecord};
use userdb_proto::BROKER_SERVICE;

use crate::cli::{
    self, Brokerctl, CtlCommand, CtlOptions, EXIT_FAILURE, EXIT_INCOMPLETE, EXIT_NOT_FOUND,
    EXIT_OK, EXIT_UNREACHABLE,
};
use crate::config::{Config, DEFAULT_CONFIG_FILE};
use crate::nsswitch_config::{self as nsswitch, Edit, EditReport, Finding, Severity};

/// Why a command failed, and the exit status that says so.
#[derive(Debug, PartialEq)]
pub enum Failure {
    NotFound(String),
    /// Not found where the broker could look, but some source was down.
    Incomplete(String),
    Unreachable(String),
    Other(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::NotFound(_) => EXIT_NOT_FOUND,
            Failure::Incomplete(_) => EXIT_INCOMPLETE,
            Failure::Unreachable(_) => EXIT_UNREACHABLE,
            Failure::Other(_) => EXIT_FAILURE,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::NotFound(m)
            | Failure::Incomplete(m)
            | Failure::Unreachable(m)
            | Failure::Other(m) => m,
        }
    }
}

/// What a command prints on stdout, and its exit status.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub stdout: String,
    pub status: u8,
}

/// Parses the process's arguments and runs the command; results go to
/// stdout, failures to stderr.
pub fn main() -> ExitCode {
    match Brokerctl::try_parse() {
        Ok(command_line) => print(run(&command_line, Path::new("/"))),
        Err(e) => cli::parse_failure(&e),
    }
}

fn print(result: Result<Answer, Failure>) -> ExitCode {
    match result {
        Ok(answer) => {
            print!("{}", answer.stdout);
            ExitCode::from(answer.status)
        }
        Err(failure) => {
            eprintln!("userdb-brokerctl: {}", failure.message());
            ExitCode::from(failure.exit_code())
        }
    }
}

/// Runs one command; `root` is where `check` looks for userdb drop-ins.
pub fn run(command_line: &Brokerctl, root: &Path) -> Result<Answer, Failure> {
    let ctl = Ctl {
        options: command_line.options.clone(),
    };
    match &command_line.command {
        CtlCommand::User { key: who } => {
            let reply = ctl.call(
                api::userdb::GET_USER_RECORD,
                key(who, "userName", "uid"),
                who,
            )?;
            let record = &reply["record"];
            ctl.answer(|| record.clone(), || Ok(vec![format_user(record)?]))
        }
        CtlCommand::Group { key: which } => {
            let reply = ctl.call(
                api::userdb::GET_GROUP_RECORD,
                key(which, "groupName", "gid"),
                which,
            )?;
            let record = &reply["record"];
            ctl.answer(|| record.clone(), || Ok(vec![format_group(record)?]))
        }
        CtlCommand::Users => {
            let records = ctl.records(api::userdb::GET_USER_RECORD)?;
            ctl.answer(
                || Value::Array(records.clone()),
                || records.iter().map(format_user).collect(),
            )
        }
        CtlCommand::Groups => {
            let records = ctl.records(api::userdb::GET_GROUP_RECORD)?;
            ctl.answer(
                || Value::Array(records.clone()),
                || records.iter().map(format_group).collect(),
            )
        }
        CtlCommand::Members { group } => {
            let reply = ctl.call(
                api::userdb::GET_GROUP_RECORD,
                key(group, "groupName", "gid"),
                group,
            )?;
            let members = GroupRecord::from_json(&reply["record"])
                .map_err(|e| invalid("group", e))?
                .members;
            ctl.answer(|| json!(members), || Ok(members.clone()))
        }
        CtlCommand::Memberships { user } => {
            let groups = ctl.memberships(user)?;
            ctl.answer(|| json!(groups), || Ok(groups.clone()))
        }
        CtlCommand::Status => {
            let status = ctl.call(api::broker::GET_STATUS, json!({}), "status")?;
            ctl.answer(|| status.clone(), || Ok(status_lines(&status)))
        }
        CtlCommand::Flush => {
            ctl.call(api::broker::FLUSH, json!({}), "flush")?;
            ctl.answer(
                || json!({ "flushed": true }),
                || {
                    Ok(vec![
                        "cached answers of the Varlink services dropped".to_owned()
                    ])
                },
            )
        }
        CtlCommand::Check { file, config } => ctl.check(&file.file, config.as_deref(), root),
        CtlCommand::Enable { file } => ctl.edit(&file.file, Edit::Enable, root),
        CtlCommand::Disable { file } => ctl.edit(&file.file, Edit::Disable, root),
        CtlCommand::IsEnabled { file } => ctl.is_enabled(&file.file),
    }
}

struct Ctl {
    options: CtlOptions,
}

/// A key given on the command line: digits are an id.
fn key(arg: &str, name_field: &str, id_field: &str) -> Value {
    match arg.parse::<u32>() {
        Ok(id) => json!({ id_field: id, "service": BROKER_SERVICE }),
        Err(_) => json!({ name_field: arg, "service": BROKER_SERVICE }),
    }
}

fn invalid(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Other(format!("the broker sent an invalid {what} record: {e}"))
}

fn format_user(record: &Value) -> Result<String, Failure> {
    UserRecord::from_json(record)
        .map(|u| passwd_line(&u))
        .map_err(|e| invalid("user", e))
}

fn format_group(record: &Value) -> Result<String, Failure> {
    GroupRecord::from_json(record)
        .map(|g| group_line(&g))
        .map_err(|e| invalid("group", e))
}

/// Lines as text: each followed by a newline.
fn text(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

impl Ctl {
    /// The answer in the form asked for: one JSON document, or lines. Only
    /// the form printed is built.
    fn answer(
        &self,
        as_json: impl FnOnce() -> Value,
        as_text: impl FnOnce() -> Result<Vec<String>, Failure>,
    ) -> Result<Answer, Failure> {
        self.answer_with_status(EXIT_OK, as_json, as_text)
    }

    fn answer_with_status(
        &self,
        status: u8,
        as_json: impl FnOnce() -> Value,
        as_text: impl FnOnce() -> Result<Vec<String>, Failure>,
    ) -> Result<Answer, Failure> {
        let stdout = if self.options.json {
            format!("{}\n", as_json())
        } else {
            text(&as_text()?)
        };
        Ok(Answer { stdout, status })
    }

    fn connect(&self) -> Result<Connection, Failure> {
        let timeout = Duration::from_millis(self.options.timeout_ms);
        Connection::connect_timeout(&self.options.socket, timeout)
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
            ClientError::Remote(name) if name == api::userdb::SERVICE_NOT_AVAILABLE => {
                Failure::Incomplete(format!(
                    "{what}: not found, but some sources could not be asked \
                     (userdb-brokerctl status says which): it may exist there"
                ))
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

    /// Every reply of a call with `more`; none at all is an empty list.
    fn call_more(&self, method: &str, parameters: Value) -> Result<Vec<Value>, Failure> {
        let mut replies = Vec::new();
        let result = self.connect()?.call_more(method, &parameters, |reply| {
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

    /// Every user or group record.
    fn records(&self, method: &str) -> Result<Vec<Value>, Failure> {
        let replies = self.call_more(method, json!({ "service": BROKER_SERVICE }))?;
        Ok(replies
            .into_iter()
            .map(|mut reply| reply["record"].take())
            .collect())
    }

    /// The groups `user` (a name or a UID) is a member of. The user is
    /// looked up first, so an unknown user is "not known" rather than a
    /// user without memberships.
    fn memberships(&self, user: &str) -> Result<Vec<String>, Failure> {
        let reply = self.call(
            api::userdb::GET_USER_RECORD,
            key(user, "userName", "uid"),
            user,
        )?;
        let name = UserRecord::from_json(&reply["record"])
            .map_err(|e| invalid("user", e))?
            .name;
        let replies = self.call_more(
            api::userdb::GET_MEMBERSHIPS,
            json!({ "userName": name, "service": BROKER_SERVICE }),
        )?;
        replies
            .iter()
            .map(|reply| {
                reply["groupName"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        Failure::Other(format!(
                            "the broker sent a membership without a group: {reply}"
                        ))
                    })
            })
            .collect()
    }

    /// `check`: the findings in nsswitch.conf, and whether the daemon's
    /// configuration file (`--config`, else the default one if present)
    /// is valid; status 1 on a warning or an invalid file.
    fn check(&self, file: &Path, config: Option<&Path>, root: &Path) -> Result<Answer, Failure> {
        let text = nsswitch::read(file).map_err(Failure::Other)?;
        let findings = nsswitch::check(&text, nsswitch::dropins_present(root));
        let config_file = config.unwrap_or(Path::new(DEFAULT_CONFIG_FILE));
        let present = config.is_some() || config_file.exists();
        let config_error = present
            .then(|| Config::default().apply_file(config_file).err())
            .flatten()
            .map(|e| e.0);
        let warned = findings.iter().any(|f| f.severity() == Severity::Warning);
        let status = if warned || config_error.is_some() {
            EXIT_FAILURE
        } else {
            EXIT_OK
        };
        self.answer_with_status(
            status,
            || {
                json!({
                    "file": file,
                    "findings": findings.iter().map(Finding::to_json).collect::<Vec<_>>(),
                    "config": {
                        "file": config_file,
                        "present": present,
                        "error": config_error,
                    },
                })
            },
            || {
                let mut lines = finding_lines(file, &findings);
                if findings.is_empty() {
                    lines.push(format!("{}: no findings", file.display()));
                }
                let config_file = config_file.display();
                lines.push(match (&config_error, present) {
                    (Some(error), _) => format!("error: {error}"),
                    (None, true) => format!("{config_file}: valid"),
                    (None, false) => {
                        format!("{config_file}: not present; the daemon uses its defaults")
                    }
                });
                Ok(lines)
            },
        )
    }

    fn edit(&self, file: &Path, edit: Edit, root: &Path) -> Result<Answer, Failure> {
        let report = nsswitch::edit_file(file, edit, root).map_err(Failure::Other)?;
        let EditReport {
            changes,
            backup,
            findings,
        } = &report;
        self.answer(
            || {
                json!({
                    "file": file,
                    "changed": !changes.is_empty(),
                    "changes": changes,
                    "backup": backup.as_ref().map(|b| &b.path),
                    "findings": findings.iter().map(Finding::to_json).collect::<Vec<_>>(),
                })
            },
            || {
                let name = file.display();
                let mut lines: Vec<String> =
                    changes.iter().map(|c| format!("{name}: {c}")).collect();
                match backup {
                    None => lines.push(format!(
                        "{name}: already {}, nothing changed",
                        match edit {
                            Edit::Enable => "enabled",
                            Edit::Disable => "disabled",
                        }
                    )),
                    Some(backup) if backup.written_now => lines.push(format!(
                        "{name}: the version before this edit is in {}",
                        backup.path.display()
                    )),
                    Some(backup) => lines.push(format!(
                        "{name}: the version before the first edit stays in {}",
                        backup.path.display()
                    )),
                }
                lines.extend(finding_lines(file, findings));
                Ok(lines)
            },
        )
    }

    /// `is-enabled`: status 0 when a line names broker, 1 when none does
    /// or the file does not exist.
    fn is_enabled(&self, file: &Path) -> Result<Answer, Failure> {
        let lines = match std::fs::read_to_string(file) {
            Ok(text) => Some(nsswitch::lines_naming_broker(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Failure::Other(format!(
                    "cannot read {}: {e}",
                    file.display()
                )))
            }
        };
        let named = lines.as_deref().unwrap_or_default();
        let status = if named.is_empty() {
            EXIT_FAILURE
        } else {
            EXIT_OK
        };
        self.answer_with_status(
            status,
            || json!({ "file": file, "enabled": !named.is_empty(), "lines": named }),
            || {
                let name = file.display();
                Ok(vec![match &lines {
                    None => format!("{name}: does not exist"),
                    Some(n) if n.is_empty() => format!("{name}: no line names broker"),
                    Some(n) => {
                        let numbers: Vec<String> = n.iter().map(usize::to_string).collect();
                        format!("{name}: broker on line {}", numbers.join(", "))
                    }
                }])
            },
        )
    }
}

fn finding_lines(file: &Path, findings: &[Finding]) -> Vec<String> {
    findings
        .iter()
        .map(|f| format!("{}: {f}", file.display()))
        .collect()
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

/// Microseconds as a reader wants them.
fn duration(us: u64) -> String {
    match us {
        0..=999 => format!("{us} µs"),
        1_000..=999_999 => format!("{:.1} ms", us as f64 / 1e3),
        1_000_000..=359_999_999 => format!("{:.1} s", us as f64 / 1e6),
        _ => format!("{:.1} h", us as f64 / 3.6e9),
    }
}

fn status_lines(status: &Value) -> Vec<String> {
    let us = |v: &Value| v.as_u64().unwrap_or(0);
    let mut lines = vec![
        format!(
            "userdb-brokerd {}, up {}; configuration {}",
            status["version"].as_str().unwrap_or("?"),
            duration(us(&status["uptimeUSec"])),
            status["configFile"]
                .as_str()
                .unwrap_or("(none, built-in defaults)"),
        ),
        format!(
            "snapshot generation {}, built {} ago; {} open connections",
            status["generation"],
            duration(us(&status["snapshotAgeUSec"])),
            status["connections"],
        ),
        String::new(),
        format!(
            "{:<44} {:>9} {:>7} {:>9} {:>9} {:>9}",
            "METHOD", "CALLS", "ERRORS", "P50", "P90", "P99"
        ),
    ];
    for c in status["calls"].as_array().into_iter().flatten() {
        lines.push(format!(
            "{:<44} {:>9} {:>7} {:>9} {:>9} {:>9}",
            c["method"].as_str().unwrap_or("-"),
            us(&c["calls"]),
            us(&c["errors"]),
            format!("≤{}", duration(us(&c["p50USec"]))),
            format!("≤{}", duration(us(&c["p90USec"]))),
            format!("≤{}", duration(us(&c["p99USec"]))),
        ));
    }
    lines.push(String::new());
    lines.push(format!(
        "{:<28} {:<8} {:<36} {:>7} {:>7} {:>11} {:>8} {:>10}",
        "SOURCE", "KIND", "STATE", "USERS", "GROUPS", "MEMBERSHIPS", "PROBLEMS", "LATENCY"
    ));
    let mut errors = Vec::new();
    for s in status["sources"].as_array().into_iter().flatten() {
        let text = |k: &str| s[k].as_str().unwrap_or("-").to_owned();
        let count = |k: &str| s[k].as_u64().map_or("-".to_owned(), |n| n.to_string());
        let latency = s["latencyUSec"].as_u64().map_or("-".to_owned(), duration);
        let mut state = text("state");
        if s["servedByPid1"] == true {
            state.push_str(", PID 1");
        }
        lines.push(format!(
            "{:<28} {:<8} {:<36} {:>7} {:>7} {:>11} {:>8} {:>10}",
            text("name"),
            text("kind"),
            state,
            count("users"),
            count("groups"),
            count("memberships"),
            count("problems"),
            latency,
        ));
        if let Some(e) = s["lastError"].as_str() {
            errors.push(format!("  {}: {e}", text("name")));
        }
    }
    if !errors.is_empty() {
        lines.push(String::new());
        lines.push("last errors:".to_owned());
        lines.extend(errors);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "version": "0.1.0", "uptimeUSec": 90_000_000u64, "configFile": null,
            "generation": 4, "snapshotAgeUSec": 1_500_000u64, "connections": 2,
            "calls": [{"method": "io.userdb.Broker.GetUserRecord", "calls": 10, "errors": 1,
                       "p50USec": 4, "p90USec": 128, "p99USec": 8192}],
            "sources": [
                {"name": "files", "kind": "files", "state": "ok", "users": 3, "groups": 4,
                 "memberships": 5, "problems": 0, "latencyUSec": 120},
                {"name": "io.systemd.DynamicUser", "kind": "varlink", "state": "failing, next try in 4 s",
                 "servedByPid1": true, "latencyUSec": null, "lastError": "timed out"},
            ]
        });
        let lines = status_lines(&status);
        let text = lines.join("\n");
        assert!(
            lines[0].contains("0.1.0, up 90.0 s") && lines[0].contains("built-in defaults"),
            "{text}"
        );
        assert!(
            lines[1].contains("generation 4") && lines[1].contains("2 open connections"),
            "{text}"
        );
        assert!(
            text.contains("io.userdb.Broker.GetUserRecord") && text.contains("≤8.2 ms"),
            "{text}"
        );
        let files = lines.iter().find(|l| l.starts_with("files")).unwrap();
        assert!(files.ends_with("120 µs"), "{files}");
        let dynamic = lines
            .iter()
            .find(|l| l.starts_with("io.systemd.DynamicUser"))
            .unwrap();
        assert!(
            dynamic.contains("failing, next try in 4 s, PID 1") && dynamic.ends_with('-'),
            "{dynamic}"
        );
        assert!(
            text.ends_with("  io.systemd.DynamicUser: timed out"),
            "{text}"
        );
    }

    #[test]
    fn absent_broker_is_unreachable_naming_the_socket() {
        let command_line = Brokerctl::try_parse_from([
            "userdb-brokerctl",
            "--socket",
            "/nonexistent/broker.sock",
            "memberships",
            "root",
        ])
        .unwrap();
        match run(&command_line, Path::new("/nonexistent")) {
            Err(Failure::Unreachable(m)) => assert!(m.contains("/nonexistent/broker.sock"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
