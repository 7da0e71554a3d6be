//! Reviews and edits `/etc/nsswitch.conf` for the broker, for
//! `userdb-brokerctl check`, `enable` and `disable`.
//!
//! The functions over the file's text ([`check`], [`enable`], [`disable`])
//! are pure; they use the shared parser in `userdb_proto::nsswitch`. Edits
//! touch only the lines they change: comments, blank lines, other databases
//! and the layout of untouched lines stay byte for byte. [`main`] is the
//! command line around them: it reads the file, keeps a backup and replaces
//! the file atomically.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use userdb_proto::nsswitch::{parse_line, Action, Entry, Line, FILES_SERVICES};

use crate::sources::dropins::{self, DropInName};

/// The NSS service name of the module.
pub const BROKER: &str = "broker";

/// The databases the broker serves, in the order `enable` handles them.
pub const DATABASES: [&str; 4] = ["passwd", "group", "shadow", "gshadow"];

const SYSTEMD: &str = "systemd";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// A configuration that hangs, breaks lookups or hides users.
    Warning,
    /// Works, but not as well as it could.
    Advice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// `systemd` after `[SUCCESS=merge]`: every lookup of a name the earlier
    /// services know also asks PID 1, and a generator doing so waits for
    /// PID 1 while PID 1 waits for the generator.
    SystemdAfterMerge,
    /// `[SUCCESS=merge]` outside the group line: glibc merges only groups
    /// and fails every other lookup that would merge.
    MergeOutsideGroup,
    /// Drop-ins exist, but this database never asks the broker.
    BrokerMissing,
    /// `broker` before `files`: users in `/etc/passwd` (root included) then
    /// wait for the broker, and a hung broker delays every login.
    BrokerBeforeFiles,
    /// `group: files broker` without `[SUCCESS=merge]`: members the broker
    /// knows for groups in `/etc/group` are not shown.
    GroupWithoutMerge,
    /// `systemd` on the line: names the services before it do not know go
    /// to PID 1's `io.systemd.DynamicUser`, which a generator must not wait
    /// for; the broker serves the same users with deadlines.
    SystemdConsulted,
    /// An `initgroups` line without `broker`: it, not the group line, serves
    /// `getgrouplist()`, so drop-in memberships are missing from `id` and
    /// from login sessions.
    InitgroupsWithoutBroker,
}

impl Problem {
    pub fn severity(self) -> Severity {
        match self {
            Problem::GroupWithoutMerge | Problem::SystemdConsulted => Severity::Advice,
            _ => Severity::Warning,
        }
    }

    fn explanation(self) -> &'static str {
        match self {
            Problem::SystemdAfterMerge => {
                "'systemd' follows [SUCCESS=merge]: lookups of names found earlier also ask PID 1, \
                 and a generator doing that at boot or daemon-reload deadlocks with PID 1 \
                 (90 s hang, possibly a frozen PID 1); use 'broker' instead"
            }
            Problem::MergeOutsideGroup => {
                "[SUCCESS=merge] works for the group database only; here glibc fails every lookup \
                 that would merge (dbus-daemon cannot resolve root, boot stalls)"
            }
            Problem::BrokerMissing => {
                "userdb drop-ins exist but this database never asks 'broker': those users and \
                 groups stay invisible to it"
            }
            Problem::BrokerBeforeFiles => {
                "'broker' comes before 'files': every lookup, root's included, waits for the \
                 broker first; put it after 'files'"
            }
            Problem::GroupWithoutMerge => {
                "no [SUCCESS=merge] before 'broker': members the broker knows for groups in \
                 /etc/group are not listed"
            }
            Problem::SystemdConsulted => {
                "'systemd' asks PID 1 for names not found before it, which a generator must not \
                 wait for; the broker already serves those users with deadlines"
            }
            Problem::InitgroupsWithoutBroker => {
                "this line, not the group line, serves getgrouplist(): without 'broker' drop-in \
                 memberships are missing from id and login sessions"
            }
        }
    }
}

/// One thing `check` found, on the line glibc uses for `database`
/// (`line` is 1-based; `None` when the file has no line for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub database: String,
    pub line: Option<usize>,
    pub problem: Problem,
}

impl Finding {
    pub fn severity(&self) -> Severity {
        self.problem.severity()
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity() {
            Severity::Warning => "warning",
            Severity::Advice => "advice",
        };
        match self.line {
            Some(n) => write!(f, "line {n} ({}): ", self.database)?,
            None => write!(f, "no {} line: ", self.database)?,
        }
        write!(f, "{severity}: {}", self.problem.explanation())
    }
}

/// The file's text split into lines that keep their line endings, with the
/// index of the line glibc uses for each database (the last one).
struct Document<'a> {
    lines: Vec<&'a str>,
}

impl<'a> Document<'a> {
    fn new(text: &'a str) -> Self {
        Document {
            lines: text.split_inclusive('\n').collect(),
        }
    }

    /// The effective line for `database`: its index and its parse.
    fn effective(&self, database: &str) -> Option<(usize, Line)> {
        self.lines
            .iter()
            .enumerate()
            .rev()
            .filter_map(|(i, raw)| parse_line(raw).map(|line| (i, line)))
            .find(|(_, line)| line.database == database)
    }
}

fn is_files(entry: &Entry) -> bool {
    FILES_SERVICES.contains(&entry.service.as_str())
}

/// Reviews the configuration. `dropins_exist`: whether userdb drop-ins
/// exist on the machine (see [`dropins_present`]); without them a database
/// that never asks the broker loses nothing.
pub fn check(text: &str, dropins_exist: bool) -> Vec<Finding> {
    let document = Document::new(text);
    let mut findings = Vec::new();
    let mut report = |database: &str, line: Option<usize>, problem: Problem| {
        findings.push(Finding {
            database: database.to_owned(),
            line: line.map(|i| i + 1),
            problem,
        })
    };

    for database in DATABASES {
        let Some((index, line)) = document.effective(database) else {
            if dropins_exist {
                report(database, None, Problem::BrokerMissing);
            }
            continue;
        };
        let at = Some(index);
        if line.merges_into(SYSTEMD) {
            report(database, at, Problem::SystemdAfterMerge);
        } else if line.position(SYSTEMD).is_some() {
            report(database, at, Problem::SystemdConsulted);
        }
        if database != "group" && line.entries.iter().any(Entry::merges) {
            report(database, at, Problem::MergeOutsideGroup);
        }
        match line.position(BROKER) {
            None if dropins_exist => report(database, at, Problem::BrokerMissing),
            None => {}
            Some(broker) => {
                let files = line.entries.iter().position(is_files);
                if files.is_some_and(|files| files > broker) {
                    report(database, at, Problem::BrokerBeforeFiles);
                } else if database == "group" && files.is_some() && !line.merges_into(BROKER) {
                    report(database, at, Problem::GroupWithoutMerge);
                }
            }
        }
    }

    let group_uses_broker = document
        .effective("group")
        .is_some_and(|(_, line)| line.position(BROKER).is_some());
    if let Some((index, line)) = document.effective("initgroups") {
        if line.merges_into(SYSTEMD) {
            report("initgroups", Some(index), Problem::SystemdAfterMerge);
        }
        if group_uses_broker && line.position(BROKER).is_none() {
            report("initgroups", Some(index), Problem::InitgroupsWithoutBroker);
        }
    }
    findings
}

/// The result of an edit: the new text and one sentence per change made
/// (empty when the file already was as asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edited {
    pub text: String,
    pub changes: Vec<String>,
}

/// Adds `broker` after `files` (or `compat`) on the passwd, group, shadow
/// and gshadow lines, with `[SUCCESS=merge]` before it on the group line
/// only; a missing line is appended. Other services stay, except `systemd`
/// after `[SUCCESS=merge]` on the group line, which is the PID 1 deadlock
/// and is removed (the broker serves those users itself). Idempotent.
pub fn enable(text: &str) -> Edited {
    let document = Document::new(text);
    let mut lines: Vec<String> = document.lines.iter().map(|l| (*l).to_owned()).collect();
    let mut appended = Vec::new();
    let mut changes = Vec::new();

    for database in DATABASES {
        let Some((index, mut line)) = document.effective(database) else {
            let services = if database == "group" {
                "files [SUCCESS=merge] broker"
            } else {
                "files broker"
            };
            let new_line = format!("{:<16}{services}", format!("{database}:"));
            changes.push(format!("{database}: added the line '{new_line}'"));
            appended.push(new_line);
            continue;
        };
        let before = changes.len();
        if line.position(BROKER).is_none() {
            let after_files = line
                .entries
                .iter()
                .rposition(is_files)
                .map_or(0, |files| files + 1);
            line.entries.insert(after_files, service(BROKER));
            changes.push(match after_files.checked_sub(1) {
                Some(previous) => format!(
                    "{database}: added broker after {}",
                    line.entries[previous].service
                ),
                None => format!("{database}: added broker first (no files service on the line)"),
            });
        }
        if database == "group" {
            enable_group_merge(&mut line, &mut changes);
        }
        if changes.len() > before {
            lines[index] = rewrite(&lines[index], &line.entries);
        }
    }

    let mut text: String = lines.concat();
    if !appended.is_empty() {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        for line in appended {
            text.push_str(&line);
            text.push('\n');
        }
    }
    Edited { text, changes }
}

/// Puts `[SUCCESS=merge]` on the files entry right before `broker` and
/// drops `systemd` entries that would follow a merge.
fn enable_group_merge(line: &mut Line, changes: &mut Vec<String>) {
    if let Some(previous) = line.position(BROKER).and_then(|b| b.checked_sub(1)) {
        let entry = &mut line.entries[previous];
        if is_files(entry) && !entry.merges() {
            entry.actions.retain(|a| a.negated || a.status != "success");
            entry.actions.push(Action {
                negated: false,
                status: "success".into(),
                action: "merge".into(),
            });
            changes.push(format!("group: added [SUCCESS=merge] to {}", entry.service));
        }
    }
    while line.merges_into(SYSTEMD) {
        let Some(at) = line.position(SYSTEMD) else {
            break;
        };
        line.entries.remove(at);
        changes.push(
            "group: removed systemd, which followed [SUCCESS=merge] (the PID 1 deadlock; \
             the broker serves systemd's users and groups itself)"
                .into(),
        );
    }
}

/// Removes `broker` from every line that names it, and a `[SUCCESS=merge]`
/// left with no service after it. A line left empty gets `files`, glibc's
/// default. Idempotent; other services and lines stay as they are.
pub fn disable(text: &str) -> Edited {
    let mut changes = Vec::new();
    let mut out = String::with_capacity(text.len());
    for raw in text.split_inclusive('\n') {
        let Some(mut line) = parse_line(raw) else {
            out.push_str(raw);
            continue;
        };
        let Some(at) = line.position(BROKER) else {
            out.push_str(raw);
            continue;
        };
        let database = line.database.clone();
        line.entries.remove(at);
        changes.push(format!("{database}: removed broker"));
        if at == line.entries.len() {
            if let Some(previous) = at.checked_sub(1).map(|p| &mut line.entries[p]) {
                if previous.merges() {
                    previous
                        .actions
                        .retain(|a| a.negated || a.status != "success" || a.action != "merge");
                    changes.push(format!(
                        "{database}: removed [SUCCESS=merge] from {}, which only served broker",
                        previous.service
                    ));
                }
            }
        }
        if line.entries.is_empty() {
            line.entries.push(service("files"));
            changes.push(format!(
                "{database}: the line was left empty; it now reads files"
            ));
        }
        out.push_str(&rewrite(raw, &line.entries));
    }
    Edited { text: out, changes }
}

fn service(name: &str) -> Entry {
    Entry {
        service: name.to_owned(),
        actions: Vec::new(),
    }
}

/// `raw` with its services replaced by `entries`: the `database:` prefix and
/// its spacing, a trailing comment and the line ending are kept. Actions are
/// written in glibc's conventional case, `[NOTFOUND=return]`.
fn rewrite(raw: &str, entries: &[Entry]) -> String {
    let (content, ending) = match raw.strip_suffix('\n') {
        Some(content) => (content, "\n"),
        None => (raw, ""),
    };
    let (body, comment) = content.split_at(content.find('#').unwrap_or(content.len()));
    let services_start = body.find(':').map_or(0, |colon| {
        let after = &body[colon + 1..];
        colon + 1 + (after.len() - after.trim_start().len())
    });
    let gap_before_comment = match &body[body.trim_end().len()..] {
        "" if !comment.is_empty() => " ",
        gap if !comment.is_empty() => gap,
        _ => "",
    };
    let services: Vec<String> = entries.iter().map(format_entry).collect();
    format!(
        "{}{}{gap_before_comment}{comment}{ending}",
        &body[..services_start],
        services.join(" ")
    )
}

fn format_entry(entry: &Entry) -> String {
    if entry.actions.is_empty() {
        return entry.service.clone();
    }
    let actions: Vec<String> = entry
        .actions
        .iter()
        .map(|a| {
            let bang = if a.negated { "!" } else { "" };
            format!("{bang}{}={}", a.status.to_ascii_uppercase(), a.action)
        })
        .collect();
    format!("{} [{}]", entry.service, actions.join(" "))
}

/// The subcommands this module serves, for `userdb-brokerctl`'s dispatch.
pub const COMMANDS: [&str; 3] = ["check", "enable", "disable"];

/// Usage lines for those subcommands.
pub const USAGE: &str = "\
nsswitch.conf commands (FILE defaults to /etc/nsswitch.conf):
  check [--file FILE]     warn about lines that can deadlock or hide users; exit 1 on a warning
  enable [--file FILE]    add broker to passwd, group, shadow and gshadow (backup: FILE.userdb-broker.bak)
  disable [--file FILE]   take broker back out (same backup)";

const DEFAULT_FILE: &str = "/etc/nsswitch.conf";
const BACKUP_SUFFIX: &str = ".userdb-broker.bak";
const EXIT_WARNING: u8 = 1;
const EXIT_FAILURE: u8 = 1;

/// What a subcommand printed and the exit status it chose.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub lines: Vec<String>,
    pub status: u8,
}

#[derive(Debug, PartialEq, Eq)]
pub enum CommandError {
    Usage(String),
    Io(String),
}

/// Runs `check`, `enable` or `disable` from `args` (without the program
/// name); `None` when `args` name another command. Drop-ins are looked for
/// on this machine.
pub fn main(args: &[String]) -> Option<ExitCode> {
    let command = args.first().filter(|c| COMMANDS.contains(&c.as_str()))?;
    Some(match run(command, &args[1..], Path::new("/")) {
        Ok(outcome) => {
            for line in outcome.lines {
                println!("{line}");
            }
            ExitCode::from(outcome.status)
        }
        Err(CommandError::Usage(message)) => {
            eprintln!("userdb-brokerctl {command}: {message}\n{USAGE}");
            ExitCode::from(crate::ctl::EXIT_USAGE)
        }
        Err(CommandError::Io(message)) => {
            eprintln!("userdb-brokerctl {command}: {message}");
            ExitCode::from(EXIT_FAILURE)
        }
    })
}

/// One subcommand with its arguments; `root` is where drop-ins are looked for.
pub fn run(command: &str, args: &[String], root: &Path) -> Result<Outcome, CommandError> {
    let file = file_argument(args)?;
    let text = fs::read_to_string(&file)
        .map_err(|e| CommandError::Io(format!("cannot read {}: {e}", file.display())))?;
    let dropins = dropins_present(root);
    let edited = match command {
        "check" => {
            let findings = check(&text, dropins);
            let warned = findings.iter().any(|f| f.severity() == Severity::Warning);
            let mut lines: Vec<String> = findings
                .iter()
                .map(|f| format!("{}: {f}", file.display()))
                .collect();
            if lines.is_empty() {
                lines.push(format!("{}: no findings", file.display()));
            }
            let status = if warned { EXIT_WARNING } else { 0 };
            return Ok(Outcome { lines, status });
        }
        "enable" => enable(&text),
        "disable" => disable(&text),
        other => return Err(CommandError::Usage(format!("unknown command {other}"))),
    };
    if edited.changes.is_empty() {
        return Ok(Outcome {
            lines: vec![format!(
                "{}: already {command}d, nothing changed",
                file.display()
            )],
            status: 0,
        });
    }
    let backup = replace_keeping_backup(&file, &text, &edited.text)?;
    let mut lines: Vec<String> = edited
        .changes
        .iter()
        .map(|c| format!("{}: {c}", file.display()))
        .collect();
    lines.push(format!(
        "{}: the previous version is in {}",
        file.display(),
        backup.display()
    ));
    lines.extend(
        check(&edited.text, dropins)
            .iter()
            .map(|f| format!("{}: {f}", file.display())),
    );
    Ok(Outcome { lines, status: 0 })
}

fn file_argument(args: &[String]) -> Result<PathBuf, CommandError> {
    match args {
        [] => Ok(PathBuf::from(DEFAULT_FILE)),
        [flag, file] if flag == "--file" => Ok(PathBuf::from(file)),
        [flag] if flag.starts_with("--file=") => Ok(PathBuf::from(&flag["--file=".len()..])),
        [flag] if flag == "--file" => Err(CommandError::Usage("--file needs a value".into())),
        _ => Err(CommandError::Usage(format!(
            "unexpected arguments {args:?}"
        ))),
    }
}

/// Writes `old` to `FILE.userdb-broker.bak`, then `new` to a temporary file
/// beside FILE with FILE's mode and owner, and renames it over FILE, so a
/// reader sees the old or the new file, never a part. A symlink is followed:
/// its target is replaced, the link stays.
fn replace_keeping_backup(file: &Path, old: &str, new: &str) -> Result<PathBuf, CommandError> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        CommandError::Io(format!("cannot {what} {}: {e}", path.display()))
    };
    let target = fs::canonicalize(file).map_err(|e| io("resolve", file, e))?;
    let metadata = fs::metadata(&target).map_err(|e| io("stat", &target, e))?;
    let with_suffix = |suffix: &str| {
        let mut name = target.clone().into_os_string();
        name.push(suffix);
        PathBuf::from(name)
    };
    let backup = with_suffix(BACKUP_SUFFIX);
    write_new(&backup, old, &metadata).map_err(|e| io("write", &backup, e))?;

    let temporary = with_suffix(&format!(".userdb-broker.{}.tmp", std::process::id()));
    let written =
        write_new(&temporary, new, &metadata).and_then(|()| fs::rename(&temporary, &target));
    if let Err(e) = written {
        let _ = fs::remove_file(&temporary);
        return Err(io("replace", &target, e));
    }
    if let Some(directory) = target.parent() {
        File::open(directory)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync", directory, e))?;
    }
    Ok(backup)
}

/// Writes `text` to `path` (replacing a regular file there) with the mode
/// and owner of `like`, and flushes it to disk.
fn write_new(path: &Path, text: &str, like: &fs::Metadata) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(like.mode() & 0o7777)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    std::os::unix::fs::fchown(&file, Some(like.uid()), Some(like.gid()))?;
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
        like.mode() & 0o7777,
    ))?;
    file.sync_all()
}

/// Whether any userdb drop-in (user, group or membership) exists in the
/// drop-in directories below `root`; for [`check`].
pub fn dropins_present(root: &Path) -> bool {
    dropins::dirs(root).iter().any(|dir| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|entry| {
                entry.file_name().to_str().is_some_and(|name| {
                    !matches!(
                        dropins::classify(name),
                        Ok(DropInName::Unrelated | DropInName::Companion) | Err(_)
                    )
                })
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_DEFAULT: &str = "\
# /etc/nsswitch.conf
#
# Example configuration of GNU Name Service Switch functionality.

passwd:         files systemd
group:          files systemd
shadow:         files systemd
gshadow:        files systemd

hosts:          files dns
networks:       files
";

    const RECOMMENDED: &str = "\
passwd:         files broker
group:          files [SUCCESS=merge] broker
shadow:         files broker
gshadow:        files broker
";

    fn problems(text: &str, dropins: bool) -> Vec<(String, Option<usize>, Problem)> {
        check(text, dropins)
            .into_iter()
            .map(|f| (f.database, f.line, f.problem))
            .collect()
    }

    fn line_of<'a>(text: &'a str, database: &str) -> &'a str {
        text.lines()
            .rfind(|l| l.starts_with(&format!("{database}:")))
            .unwrap_or_else(|| panic!("no {database} line in {text:?}"))
    }

    #[test]
    fn recommended_configuration_has_no_findings() {
        assert_eq!(problems(RECOMMENDED, true), []);
    }

    #[test]
    fn systemd_after_merge_is_the_deadlock_warning() {
        let text = "passwd: files broker\ngroup: files [SUCCESS=merge] systemd\n";
        let found = check(text, false);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].problem, Problem::SystemdAfterMerge);
        assert_eq!(found[0].line, Some(2));
        assert_eq!(found[0].severity(), Severity::Warning);
        assert!(found[0].to_string().starts_with("line 2 (group): warning:"));
    }

    #[test]
    fn merge_on_passwd_and_shadow_is_a_warning() {
        let text = "passwd: files [SUCCESS=merge] broker\nshadow: files [success=MERGE] broker\n";
        let found = problems(text, false);
        assert!(found.contains(&("passwd".into(), Some(1), Problem::MergeOutsideGroup)));
        assert!(found.contains(&("shadow".into(), Some(2), Problem::MergeOutsideGroup)));
    }

    #[test]
    fn broker_missing_is_reported_only_where_dropins_exist() {
        assert_eq!(problems("passwd: files\ngroup: files\n", false), []);
        let found = problems("passwd: files\ngroup: files [SUCCESS=merge] broker\n", true);
        assert_eq!(
            found,
            [
                ("passwd".into(), Some(1), Problem::BrokerMissing),
                ("shadow".into(), None, Problem::BrokerMissing),
                ("gshadow".into(), None, Problem::BrokerMissing),
            ]
        );
    }

    #[test]
    fn broker_before_files_and_group_without_merge() {
        let found = problems("passwd: broker files\ngroup: files broker\n", false);
        assert_eq!(
            found,
            [
                ("passwd".into(), Some(1), Problem::BrokerBeforeFiles),
                ("group".into(), Some(2), Problem::GroupWithoutMerge),
            ]
        );
        assert_eq!(Problem::GroupWithoutMerge.severity(), Severity::Advice);
    }

    #[test]
    fn only_the_last_line_for_a_database_counts() {
        let text = "group: files [SUCCESS=merge] systemd\ngroup: files [SUCCESS=merge] broker\n";
        assert_eq!(problems(text, false), []);
    }

    #[test]
    fn initgroups_line_without_broker_is_reported() {
        let text = "group: files [SUCCESS=merge] broker\ninitgroups: files\n";
        assert_eq!(
            problems(text, false),
            [(
                "initgroups".into(),
                Some(2),
                Problem::InitgroupsWithoutBroker
            )]
        );
    }

    #[test]
    fn enable_on_debian_default_adds_broker_and_keeps_everything_else() {
        let edited = enable(DEBIAN_DEFAULT);
        assert_eq!(
            line_of(&edited.text, "passwd"),
            "passwd:         files broker systemd"
        );
        assert_eq!(
            line_of(&edited.text, "group"),
            "group:          files [SUCCESS=merge] broker"
        );
        assert_eq!(
            line_of(&edited.text, "shadow"),
            "shadow:         files broker systemd"
        );
        assert_eq!(
            line_of(&edited.text, "gshadow"),
            "gshadow:        files broker systemd"
        );
        let untouched = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !DATABASES.iter().any(|d| l.starts_with(&format!("{d}:"))))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(untouched(&edited.text), untouched(DEBIAN_DEFAULT));
        assert!(edited
            .changes
            .iter()
            .any(|c| c.starts_with("group: removed systemd")));
        // systemd stays on the other lines, and check still advises about it.
        let found = problems(&edited.text, true);
        assert!(
            found
                .iter()
                .all(|(_, _, p)| *p == Problem::SystemdConsulted),
            "{found:?}"
        );
        assert_eq!(found.len(), 3);
    }

    #[test]
    fn enable_is_idempotent() {
        let once = enable(DEBIAN_DEFAULT);
        let twice = enable(&once.text);
        assert_eq!(twice.text, once.text);
        assert_eq!(twice.changes, Vec::<String>::new());
        assert_eq!(enable(RECOMMENDED).text, RECOMMENDED);
    }

    #[test]
    fn enable_appends_missing_lines_and_keeps_comments() {
        let text = "# mine\npasswd: compat # NIS too\ngroup:files";
        let edited = enable(text);
        assert_eq!(
            edited.text,
            "# mine\npasswd: compat broker # NIS too\ngroup:files [SUCCESS=merge] broker\n\
             shadow:         files broker\ngshadow:        files broker\n"
        );
        assert_eq!(problems(&edited.text, true), []);
    }

    #[test]
    fn enable_puts_broker_after_files_not_at_the_end() {
        let edited = enable("passwd: files sss\ngroup: sss files [NOTFOUND=return] ldap\n");
        assert_eq!(line_of(&edited.text, "passwd"), "passwd: files broker sss");
        assert_eq!(
            line_of(&edited.text, "group"),
            "group: sss files [NOTFOUND=return SUCCESS=merge] broker ldap"
        );
    }

    #[test]
    fn enable_without_files_puts_broker_first() {
        let edited = enable("passwd: sss\n");
        assert_eq!(line_of(&edited.text, "passwd"), "passwd: broker sss");
    }

    #[test]
    fn disable_undoes_enable() {
        let plain = "passwd:         files\ngroup:          files\nshadow:         files\ngshadow:        files\n";
        assert_eq!(enable(plain).text, RECOMMENDED);
        let disabled = disable(RECOMMENDED);
        assert_eq!(disabled.text, plain);
        assert!(disabled.changes.contains(
            &"group: removed [SUCCESS=merge] from files, which only served broker".into()
        ));
    }

    #[test]
    fn disable_keeps_a_merge_that_still_serves_another_service() {
        let disabled = disable("group: files [SUCCESS=merge] broker sss # keep\n");
        assert_eq!(disabled.text, "group: files [SUCCESS=merge] sss # keep\n");
    }

    #[test]
    fn disable_is_idempotent_and_leaves_no_empty_line() {
        let once = disable("passwd: broker\nhosts: files dns\n");
        assert_eq!(once.text, "passwd: files\nhosts: files dns\n");
        let twice = disable(&once.text);
        assert_eq!(twice.text, once.text);
        assert!(twice.changes.is_empty());
    }

    /// A fresh directory for one test, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("nsswitch-config-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| (*a).to_owned()).collect()
    }

    fn file_args(path: &Path) -> Vec<String> {
        args(&["--file", path.to_str().unwrap()])
    }

    #[test]
    fn dropins_present_sees_records_and_memberships_only() {
        let root = Scratch::new("dropins");
        let dir = root.0.join("etc/userdb");
        fs::create_dir_all(&dir).unwrap();
        assert!(!dropins_present(&root.0));
        fs::write(dir.join("README"), "not a drop-in").unwrap();
        assert!(!dropins_present(&root.0));
        fs::write(dir.join("alice:wheel.membership"), "{}").unwrap();
        assert!(dropins_present(&root.0));
    }

    #[test]
    fn check_command_exits_1_on_a_warning_only() {
        let scratch = Scratch::new("check");
        let deadlock = scratch.write("deadlock.conf", "group: files [SUCCESS=merge] systemd\n");
        let outcome = run("check", &file_args(&deadlock), &scratch.0).unwrap();
        assert_eq!(outcome.status, 1);
        assert_eq!(outcome.lines.len(), 1);
        assert!(
            outcome.lines[0].contains("line 1 (group): warning:"),
            "{outcome:?}"
        );

        let advice_only = scratch.write("advice.conf", "passwd: files broker systemd\n");
        let outcome = run("check", &file_args(&advice_only), &scratch.0).unwrap();
        assert_eq!(outcome.status, 0, "{outcome:?}");

        let good = scratch.write("good.conf", RECOMMENDED);
        let outcome = run("check", &file_args(&good), &scratch.0).unwrap();
        assert_eq!((outcome.status, outcome.lines.len()), (0, 1));
        assert!(outcome.lines[0].ends_with("no findings"));
    }

    #[test]
    fn check_command_reports_missing_broker_when_dropins_exist() {
        let scratch = Scratch::new("check-dropins");
        let conf = scratch.write("nsswitch.conf", DEBIAN_DEFAULT);
        assert_eq!(
            run("check", &file_args(&conf), &scratch.0).unwrap().status,
            0
        );
        fs::create_dir_all(scratch.0.join("run/userdb")).unwrap();
        scratch.write("run/userdb/alice.user", "{}");
        let outcome = run("check", &file_args(&conf), &scratch.0).unwrap();
        assert_eq!(outcome.status, 1);
        let missing = outcome
            .lines
            .iter()
            .filter(|l| l.contains("never asks 'broker'"));
        assert_eq!(missing.count(), 4, "{outcome:?}");
    }

    #[test]
    fn enable_command_replaces_the_file_and_keeps_a_backup_and_the_mode() {
        let scratch = Scratch::new("enable");
        let conf = scratch.write("nsswitch.conf", DEBIAN_DEFAULT);
        fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();

        let outcome = run("enable", &file_args(&conf), &scratch.0).unwrap();
        assert_eq!(outcome.status, 0);
        assert_eq!(
            fs::read_to_string(&conf).unwrap(),
            enable(DEBIAN_DEFAULT).text
        );
        let backup = scratch.0.join("nsswitch.conf.userdb-broker.bak");
        assert_eq!(fs::read_to_string(&backup).unwrap(), DEBIAN_DEFAULT);
        assert_eq!(fs::metadata(&conf).unwrap().mode() & 0o7777, 0o640);
        assert!(outcome
            .lines
            .iter()
            .any(|l| l.ends_with("group: added broker after files")));
        let leftovers: Vec<_> = fs::read_dir(&scratch.0)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // A second enable changes nothing, the backup included.
        let again = run("enable", &file_args(&conf), &scratch.0).unwrap();
        assert_eq!(again.lines.len(), 1);
        assert!(again.lines[0].ends_with("already enabled, nothing changed"));
        assert_eq!(fs::read_to_string(&backup).unwrap(), DEBIAN_DEFAULT);
    }

    #[test]
    fn disable_command_takes_broker_out_again() {
        let scratch = Scratch::new("disable");
        let conf = scratch.write("nsswitch.conf", RECOMMENDED);
        run("disable", &file_args(&conf), &scratch.0).unwrap();
        let text = fs::read_to_string(&conf).unwrap();
        assert!(
            !text.contains("broker") && !text.contains("merge"),
            "{text}"
        );
        let backup = scratch.0.join("nsswitch.conf.userdb-broker.bak");
        assert_eq!(fs::read_to_string(backup).unwrap(), RECOMMENDED);
    }

    #[test]
    fn a_symlinked_file_keeps_its_link() {
        let scratch = Scratch::new("symlink");
        let real = scratch.write("real.conf", RECOMMENDED);
        let link = scratch.0.join("nsswitch.conf");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        run("disable", &file_args(&link), &scratch.0).unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!fs::read_to_string(&real).unwrap().contains("broker"));
        assert!(scratch.0.join("real.conf.userdb-broker.bak").exists());
    }

    #[test]
    fn bad_arguments_and_missing_files_are_errors() {
        let scratch = Scratch::new("errors");
        let missing = scratch.0.join("absent.conf");
        assert!(matches!(
            run("check", &file_args(&missing), &scratch.0),
            Err(CommandError::Io(m)) if m.contains("absent.conf")
        ));
        let usage = |list: &[&str]| {
            matches!(
                run("enable", &args(list), &scratch.0),
                Err(CommandError::Usage(_))
            )
        };
        assert!(usage(&["--file"]));
        assert!(usage(&["--frobnicate"]));
        assert!(!missing.exists());
        assert_eq!(main(&args(&["status"])), None);
    }
}
