//! Reviews and edits `/etc/nsswitch.conf` for the broker: what
//! `userdb-brokerctl check`, `enable`, `disable` and `is-enabled` do.
//!
//! The functions over the file's text ([`check`], [`enable`], [`disable`],
//! [`lines_naming_broker`]) are pure; they use the shared parser in
//! `userdb_proto::nsswitch`. Edits touch only the lines they change:
//! comments, blank lines, other databases and the layout of untouched lines
//! stay byte for byte.
//!
//! `enable` records what it replaced in the file itself, as a comment above
//! each line it wrote ([`REPLACED`], [`ADDED`]), and `disable` restores
//! exactly that line. The record lives next to the line it describes, so it
//! survives whatever carries the file (backups, configuration management,
//! a copy to another machine), needs no second file that could describe
//! another version of this one, and tells the administrator reading the
//! file what was there before. [`edit_file`] is the file handling around
//! them: a backup of the first version it changed, and an atomic replace.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use userdb_proto::nsswitch::{parse_line, Action, Entry, Line, FILES_SERVICES};

use crate::sources::dropins::{self, DropInName};

/// The NSS service name of the module.
pub const BROKER: &str = "broker";

/// The databases the broker serves, in the order `enable` handles them.
pub const DATABASES: [&str; 4] = ["passwd", "group", "shadow", "gshadow"];

/// Serves `getgrouplist()` instead of the group line when the file has it;
/// `enable` edits it then, and never adds it.
const INITGROUPS: &str = "initgroups";

/// The file glibc reads.
pub const DEFAULT_FILE: &str = "/etc/nsswitch.conf";

/// Appended to the file's name for the copy of its first edited version.
pub const BACKUP_SUFFIX: &str = ".userdb-broker.bak";

/// The comment `enable` writes above a line it replaced; the rest of the
/// comment is that line as it was, byte for byte.
pub const REPLACED: &str = "# userdb-brokerctl enable replaced: ";

/// The comment `enable` writes above a line it added.
pub const ADDED: &str = "# userdb-brokerctl enable added the next line";

const SYSTEMD: &str = "systemd";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// A configuration that hangs, breaks lookups or hides users.
    Warning,
    /// Works, but not as well as it could.
    Advice,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Advice => "advice",
        }
    }
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
    /// `systemd` on a line without `broker`: names the services before it
    /// do not know go to PID 1's `io.systemd.DynamicUser`, which a generator
    /// must not wait for; `enable` replaces it with `broker`.
    SystemdConsulted,
    /// `systemd` beside `broker`: the broker already serves systemd's users
    /// and groups, and names it does not know still go to PID 1.
    SystemdBesideBroker,
    /// An `initgroups` line without `broker`: it, not the group line, serves
    /// `getgrouplist()`, so drop-in memberships are missing from `id` and
    /// from login sessions.
    InitgroupsWithoutBroker,
}

impl Problem {
    pub fn severity(self) -> Severity {
        match self {
            Problem::GroupWithoutMerge
            | Problem::SystemdConsulted
            | Problem::SystemdBesideBroker => Severity::Advice,
            _ => Severity::Warning,
        }
    }

    /// A stable name for machine-readable output.
    pub fn name(self) -> &'static str {
        match self {
            Problem::SystemdAfterMerge => "systemd-after-merge",
            Problem::MergeOutsideGroup => "merge-outside-group",
            Problem::BrokerMissing => "broker-missing",
            Problem::BrokerBeforeFiles => "broker-before-files",
            Problem::GroupWithoutMerge => "group-without-merge",
            Problem::SystemdConsulted => "systemd-consulted",
            Problem::SystemdBesideBroker => "systemd-beside-broker",
            Problem::InitgroupsWithoutBroker => "initgroups-without-broker",
        }
    }

    fn explanation(self) -> &'static str {
        match self {
            Problem::SystemdAfterMerge => {
                "'systemd' follows [SUCCESS=merge]: lookups of names found earlier also ask PID 1, \
                 and a generator doing that at boot or daemon-reload deadlocks with PID 1 \
                 (90 s hang, possibly a frozen PID 1); 'userdb-brokerctl enable' replaces it \
                 with 'broker'"
            }
            Problem::MergeOutsideGroup => {
                "[SUCCESS=merge] works for the group database only; here glibc fails every lookup \
                 that would merge (dbus-daemon cannot resolve root, boot stalls)"
            }
            Problem::BrokerMissing => {
                "userdb drop-ins exist but this database never asks 'broker': those users and \
                 groups stay invisible to it; 'userdb-brokerctl enable' adds it"
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
                 wait for; 'userdb-brokerctl enable' replaces it with 'broker', which serves the \
                 same users and groups with deadlines"
            }
            Problem::SystemdBesideBroker => {
                "'systemd' beside 'broker': the broker already serves systemd's users and groups \
                 with deadlines, and names it does not know still go to PID 1; remove 'systemd'"
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

    pub fn to_json(&self) -> Value {
        json!({
            "database": self.database,
            "line": self.line,
            "severity": self.severity().name(),
            "problem": self.problem.name(),
            "message": self.problem.explanation(),
        })
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(n) => write!(f, "line {n} ({}): ", self.database)?,
            None => write!(f, "no {} line: ", self.database)?,
        }
        write!(
            f,
            "{}: {}",
            self.severity().name(),
            self.problem.explanation()
        )
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
        let broker = line.position(BROKER);
        if line.merges_into(SYSTEMD) {
            report(database, at, Problem::SystemdAfterMerge);
        } else if line.position(SYSTEMD).is_some() {
            let problem = match broker {
                Some(_) => Problem::SystemdBesideBroker,
                None => Problem::SystemdConsulted,
            };
            report(database, at, problem);
        }
        if database != "group" && line.entries.iter().any(Entry::merges) {
            report(database, at, Problem::MergeOutsideGroup);
        }
        match broker {
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
    if let Some((index, line)) = document.effective(INITGROUPS) {
        if line.merges_into(SYSTEMD) {
            report(INITGROUPS, Some(index), Problem::SystemdAfterMerge);
        }
        if group_uses_broker && line.position(BROKER).is_none() {
            report(INITGROUPS, Some(index), Problem::InitgroupsWithoutBroker);
        }
    }
    findings
}

/// The 1-based numbers of the lines that name `broker` as a service, in
/// any database, effective or not: what `is-enabled` asks.
pub fn lines_naming_broker(text: &str) -> Vec<usize> {
    text.split_inclusive('\n')
        .enumerate()
        .filter(|(_, raw)| parse_line(raw).is_some_and(|line| line.position(BROKER).is_some()))
        .map(|(i, _)| i + 1)
        .collect()
}

/// The result of an edit: the new text and one sentence per change made
/// (empty when the file already was as asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edited {
    pub text: String,
    pub changes: Vec<String>,
}

/// Makes each of the passwd, group, shadow and gshadow lines (and an
/// `initgroups` line, if there is one) read `files broker`, with
/// `[SUCCESS=merge]` before `broker` on the group line only. Each line it
/// rewrites keeps its other services (`sss`, `ldap`, ...: directories the
/// broker does not read), its layout and comment, and gets a [`REPLACED`]
/// comment above it holding the line as it was; a missing line is appended
/// below an [`ADDED`] comment. Lines that already name `broker` are left as
/// they are ([`check`] says what is wrong with them). Idempotent.
pub fn enable(text: &str) -> Edited {
    let document = Document::new(text);
    let mut lines: Vec<String> = document.lines.iter().map(|l| (*l).to_owned()).collect();
    let mut appended = Vec::new();
    let mut changes = Vec::new();

    for database in DATABASES.iter().chain([&INITGROUPS]) {
        let Some((index, _)) = document.effective(database) else {
            if *database != INITGROUPS {
                let line = appended_line(database);
                changes.push(format!("{database}: added the line '{line}'"));
                appended.push(line);
            }
            continue;
        };
        let raw = document.lines[index];
        if let Some((written, mut made)) = enabled_line(raw) {
            lines[index] = format!("{REPLACED}{}\n{written}", without_ending(raw));
            changes.append(&mut made);
        }
    }

    let mut text: String = lines.concat();
    // Appended lines keep the file's own habit: after a last line without
    // a newline they too end without one, so `disable` can restore it.
    let ends_open = !text.is_empty() && !text.ends_with('\n');
    for line in appended {
        if ends_open {
            text.push_str(&format!("\n{ADDED}\n{line}"));
        } else {
            text.push_str(&format!("{ADDED}\n{line}\n"));
        }
    }
    Edited { text, changes }
}

/// The line `enable` appends for a database the file has no line for.
fn appended_line(database: &str) -> String {
    let services = if database == "group" {
        "files [SUCCESS=merge] broker"
    } else {
        "files broker"
    };
    format!("{:<16}{services}", format!("{database}:"))
}

/// What `enable` writes in place of `raw` (a whole line with its ending),
/// and the changes it made; `None` when `enable` leaves the line alone (not
/// a database the broker serves, or `broker` already named). One rule, used
/// both to write a line and, by `disable`, to recognise a line as written.
fn enabled_line(raw: &str) -> Option<(String, Vec<String>)> {
    let mut line = parse_line(raw)?;
    let database = line.database.clone();
    let served = DATABASES.contains(&database.as_str()) || database == INITGROUPS;
    if !served || line.position(BROKER).is_some() {
        return None;
    }
    let mut changes = Vec::new();
    let before = line.entries.len();
    line.entries.retain(|e| e.service != SYSTEMD);
    if line.entries.len() < before {
        changes.push(format!(
            "{database}: removed systemd (the broker serves systemd's users and groups itself, \
             with deadlines, and never waits on PID 1)"
        ));
    }
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
    if database == "group" {
        if let Some(files) = after_files.checked_sub(1).map(|p| &mut line.entries[p]) {
            if !files.merges() {
                files.actions.retain(|a| a.negated || a.status != "success");
                files.actions.push(Action {
                    negated: false,
                    status: "success".into(),
                    action: "merge".into(),
                });
                changes.push(format!("group: added [SUCCESS=merge] to {}", files.service));
            }
        }
    } else {
        for entry in line.entries.iter_mut().filter(|e| e.merges()) {
            entry.actions.retain(|a| !is_merge(a));
            changes.push(format!(
                "{database}: removed [SUCCESS=merge] from {} (glibc merges groups only and \
                 fails every other lookup that would merge)",
                entry.service
            ));
        }
    }
    Some((rewrite(raw, &line.entries), changes))
}

fn is_merge(action: &Action) -> bool {
    !action.negated && action.status == "success" && action.action == "merge"
}

fn without_ending(raw: &str) -> &str {
    raw.strip_suffix('\n').unwrap_or(raw)
}

fn ending(raw: &str) -> &str {
    &raw[without_ending(raw).len()..]
}

/// Undoes `enable`: a line below a [`REPLACED`] comment that is still what
/// `enable` wrote becomes the recorded line again, and a line below an
/// [`ADDED`] comment that is still what `enable` added goes, so that
/// `enable` then `disable` gives the file back byte for byte. A line that
/// names `broker` but was changed since (or was written by hand) only loses
/// `broker`, and a `[SUCCESS=merge]` left with no service after it (a line
/// left empty gets `files`, glibc's default); the comment above it goes.
/// Idempotent.
pub fn disable(text: &str) -> Edited {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut changes = Vec::new();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < lines.len() {
        let raw = lines[i];
        let next = lines.get(i + 1).copied().unwrap_or("");
        let marked = without_ending(raw);
        if let Some(original) = marked.strip_prefix(REPLACED) {
            let recorded = format!("{original}{}", ending(next));
            if enabled_line(&recorded).is_some_and(|(written, _)| written == next) {
                changes.push(format!("restored the line '{original}'"));
                out.push_str(&recorded);
                i += 2;
                continue;
            }
            changes.push(format!(
                "line {}: the line below enable's comment was changed since; before enable it \
                 read '{original}'",
                i + 1
            ));
        } else if marked == ADDED {
            let added = DATABASES
                .iter()
                .any(|database| without_ending(next) == appended_line(database));
            if added {
                changes.push(format!("removed the line '{}'", without_ending(next)));
                if ending(next).is_empty() && out.ends_with('\n') {
                    out.pop();
                }
                i += 2;
                continue;
            }
            changes.push(format!(
                "line {}: the line enable added was changed since",
                i + 1
            ));
        } else {
            out.push_str(&remove_broker(raw, &mut changes));
        }
        i += 1;
    }
    Edited { text: out, changes }
}

/// `raw` without `broker` if it names it, else `raw` as it is.
fn remove_broker(raw: &str, changes: &mut Vec<String>) -> String {
    let Some(mut line) = parse_line(raw) else {
        return raw.to_owned();
    };
    let Some(at) = line.position(BROKER) else {
        return raw.to_owned();
    };
    let database = line.database.clone();
    line.entries.remove(at);
    changes.push(format!("{database}: removed broker"));
    if at == line.entries.len() {
        if let Some(previous) = at.checked_sub(1).map(|p| &mut line.entries[p]) {
            if previous.merges() {
                previous.actions.retain(|a| !is_merge(a));
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
    rewrite(raw, &line.entries)
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
    let (content, ending) = (without_ending(raw), ending(raw));
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
    let services: Vec<String> = entries.iter().map(Entry::to_string).collect();
    format!(
        "{}{}{gap_before_comment}{comment}{ending}",
        &body[..services_start],
        services.join(" ")
    )
}

/// Which edit [`edit_file`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    Enable,
    Disable,
}

/// What [`edit_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditReport {
    /// One sentence per change; empty when the file already was as asked
    /// (and was then not written at all).
    pub changes: Vec<String>,
    /// The copy of the first version of the file an edit changed, and
    /// whether this edit made it (it is never overwritten).
    pub backup: Option<Backup>,
    /// What [`check`] says about the file as it now is.
    pub findings: Vec<Finding>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub path: PathBuf,
    pub written_now: bool,
}

/// Reads an nsswitch.conf, with the path in the error.
pub fn read(file: &Path) -> Result<String, String> {
    fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))
}

/// Enables or disables the broker in `file`; `root` is where drop-ins are
/// looked for (for the findings).
pub fn edit_file(file: &Path, edit: Edit, root: &Path) -> Result<EditReport, String> {
    let text = read(file)?;
    let edited = match edit {
        Edit::Enable => enable(&text),
        Edit::Disable => disable(&text),
    };
    let backup = if edited.changes.is_empty() {
        None
    } else {
        Some(replace_keeping_first_backup(file, &text, &edited.text)?)
    };
    Ok(EditReport {
        changes: edited.changes,
        backup,
        findings: check(&edited.text, dropins_present(root)),
    })
}

/// Writes `old` to `FILE.userdb-broker.bak` unless that file exists (the
/// first backup is the one worth keeping: the version before any edit),
/// then `new` to a temporary file beside FILE with FILE's mode and owner,
/// and renames it over FILE, so a reader sees the old or the new file,
/// never a part. A symlink is followed: its target is replaced, the link
/// stays.
fn replace_keeping_first_backup(file: &Path, old: &str, new: &str) -> Result<Backup, String> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        format!("cannot {what} {}: {e}", path.display())
    };
    let target = fs::canonicalize(file).map_err(|e| io("resolve", file, e))?;
    let metadata = fs::metadata(&target).map_err(|e| io("stat", &target, e))?;
    let with_suffix = |suffix: &str| {
        let mut name = target.clone().into_os_string();
        name.push(suffix);
        PathBuf::from(name)
    };
    let path = with_suffix(BACKUP_SUFFIX);
    let written_now = match write_new(&path, old, &metadata) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io("write", &path, e)),
    };

    let temporary = with_suffix(&format!(".userdb-broker.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&temporary);
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
    Ok(Backup { path, written_now })
}

/// Creates `path` (failing if it exists) holding `text`, with the mode and
/// owner of `like`, and flushes it to disk.
fn write_new(path: &Path, text: &str, like: &fs::Metadata) -> std::io::Result<()> {
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

    /// Every nsswitch.conf the tests know: distributions' defaults as they
    /// ship (Debian 12 with libnss-systemd, Fedora's authselect output, Arch,
    /// openSUSE, Ubuntu 22.04) and hand-edited files.
    const FIXTURES: [(&str, &str); 7] = [
        (
            "debian-12",
            include_str!("../tests/nsswitch/debian-12.conf"),
        ),
        (
            "fedora-authselect",
            include_str!("../tests/nsswitch/fedora-authselect.conf"),
        ),
        ("arch", include_str!("../tests/nsswitch/arch.conf")),
        ("opensuse", include_str!("../tests/nsswitch/opensuse.conf")),
        (
            "ubuntu-22.04",
            include_str!("../tests/nsswitch/ubuntu-22.04.conf"),
        ),
        (
            "hand-edited",
            include_str!("../tests/nsswitch/hand-edited.conf"),
        ),
        (
            "no-final-newline",
            include_str!("../tests/nsswitch/no-final-newline.conf"),
        ),
    ];

    #[test]
    fn enable_then_disable_restores_every_known_file_byte_for_byte() {
        for (name, original) in FIXTURES {
            let enabled = enable(original);
            assert_ne!(enabled.text, original, "{name}: enable changed nothing");
            let disabled = disable(&enabled.text);
            assert_eq!(disabled.text, original, "{name}: disable lost something");
            assert_eq!(
                disable(&disabled.text).text,
                original,
                "{name}: second disable"
            );
        }
    }

    #[test]
    fn check_has_nothing_to_say_about_what_enable_wrote() {
        for (name, original) in FIXTURES {
            let enabled = enable(original).text;
            for dropins in [false, true] {
                assert_eq!(problems(&enabled, dropins), [], "{name}:\n{enabled}");
            }
        }
    }

    #[test]
    fn enable_writes_the_lines_the_readme_promises_on_stock_distributions() {
        let services = |text: &str, database: &str| -> String {
            let (_, line) = Document::new(text).effective(database).unwrap();
            line.entries
                .iter()
                .map(Entry::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        for (name, original) in &FIXTURES[..5] {
            let enabled = enable(original).text;
            let files = if *name == "opensuse" {
                "compat"
            } else {
                "files"
            };
            for database in DATABASES {
                let expected = if database == "group" {
                    format!("{files} [SUCCESS=merge] broker")
                } else if *name == "opensuse" && database == "gshadow" {
                    "files broker".to_owned()
                } else {
                    format!("{files} broker")
                };
                assert_eq!(services(&enabled, database), expected, "{name} {database}");
            }
        }
    }

    #[test]
    fn systemd_beside_broker_is_advice_to_remove_it() {
        let found = check("passwd: files broker systemd\n", false);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].problem, Problem::SystemdBesideBroker);
        assert_eq!(found[0].severity(), Severity::Advice);
        assert!(found[0].to_string().contains("remove 'systemd'"));
    }

    #[test]
    fn systemd_advice_without_the_broker_points_to_enable() {
        let found = check(DEBIAN_DEFAULT, false);
        assert!(!found.is_empty());
        for finding in found {
            assert_eq!(finding.problem, Problem::SystemdConsulted);
            let text = finding.to_string();
            assert!(!text.contains("already serves"), "{text}");
            assert!(text.contains("userdb-brokerctl enable"), "{text}");
        }
    }

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

    /// `NAME.conf` after `enable`, reviewed by hand: `NAME.enabled`.
    #[test]
    fn enable_on_each_known_file_gives_the_reviewed_result() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nsswitch");
        for (name, original) in FIXTURES {
            let expected = fs::read_to_string(dir.join(format!("{name}.enabled"))).unwrap();
            assert_eq!(enable(original).text, expected, "{name}");
        }
    }

    #[test]
    fn enable_on_debian_default_writes_the_recommended_lines_and_records_the_old_ones() {
        let edited = enable(DEBIAN_DEFAULT);
        assert_eq!(
            edited.text,
            "\
# /etc/nsswitch.conf
#
# Example configuration of GNU Name Service Switch functionality.

# userdb-brokerctl enable replaced: passwd:         files systemd
passwd:         files broker
# userdb-brokerctl enable replaced: group:          files systemd
group:          files [SUCCESS=merge] broker
# userdb-brokerctl enable replaced: shadow:         files systemd
shadow:         files broker
# userdb-brokerctl enable replaced: gshadow:        files systemd
gshadow:        files broker

hosts:          files dns
networks:       files
"
        );
        assert!(edited
            .changes
            .iter()
            .any(|c| c.starts_with("group: removed systemd")));
    }

    #[test]
    fn enable_is_idempotent() {
        for (name, original) in FIXTURES {
            let once = enable(original);
            let twice = enable(&once.text);
            assert_eq!(twice.text, once.text, "{name}");
            assert_eq!(twice.changes, Vec::<String>::new(), "{name}");
        }
        assert_eq!(enable(RECOMMENDED).text, RECOMMENDED);
    }

    #[test]
    fn enable_appends_missing_lines_and_keeps_comments() {
        let text = "# mine\npasswd: compat # NIS too\n";
        let edited = enable(text);
        assert_eq!(
            edited.text,
            "# mine\n# userdb-brokerctl enable replaced: passwd: compat # NIS too\n\
             passwd: compat broker # NIS too\n\
             # userdb-brokerctl enable added the next line\ngroup:          files [SUCCESS=merge] broker\n\
             # userdb-brokerctl enable added the next line\nshadow:         files broker\n\
             # userdb-brokerctl enable added the next line\ngshadow:        files broker\n"
        );
        assert_eq!(disable(&edited.text).text, text);
        assert_eq!(disable(&enable("").text).text, "");
    }

    #[test]
    fn enable_keeps_other_services_and_puts_broker_after_files() {
        let edited = enable("passwd: files sss\ngroup: sss files [NOTFOUND=return] ldap\n");
        assert_eq!(line_of(&edited.text, "passwd"), "passwd: files broker sss");
        assert_eq!(
            line_of(&edited.text, "group"),
            "group: sss files [NOTFOUND=return SUCCESS=merge] broker ldap"
        );
        assert_eq!(
            line_of(&enable("passwd: sss\n").text, "passwd"),
            "passwd: broker sss"
        );
    }

    #[test]
    fn enable_drops_merge_outside_the_group_line_and_disable_brings_it_back() {
        let text = "passwd: files [SUCCESS=merge] systemd\n";
        let edited = enable(text);
        assert_eq!(line_of(&edited.text, "passwd"), "passwd: files broker");
        assert_eq!(disable(&edited.text).text, text);
    }

    #[test]
    fn enable_edits_an_initgroups_line_but_never_adds_one() {
        let edited = enable("group: files systemd\ninitgroups: files systemd\n");
        assert_eq!(
            line_of(&edited.text, "initgroups"),
            "initgroups: files broker"
        );
        assert!(!enable("passwd: files\n").text.contains("initgroups"));
    }

    #[test]
    fn enable_leaves_a_line_that_already_names_broker() {
        let text = "passwd: files broker systemd\n";
        let edited = enable(text);
        assert_eq!(
            line_of(&edited.text, "passwd"),
            "passwd: files broker systemd"
        );
        assert!(!edited.changes.iter().any(|c| c.starts_with("passwd")));
    }

    #[test]
    fn disable_without_a_record_removes_broker_and_its_merge() {
        let plain = "passwd:         files\ngroup:          files\nshadow:         files\ngshadow:        files\n";
        let disabled = disable(RECOMMENDED);
        assert_eq!(disabled.text, plain);
        assert!(disabled.changes.contains(
            &"group: removed [SUCCESS=merge] from files, which only served broker".into()
        ));
    }

    #[test]
    fn disable_of_a_line_changed_after_enable_removes_broker_only() {
        let enabled = enable("passwd: files systemd\n").text;
        let changed = enabled.replace("passwd: files broker", "passwd: files broker ldap");
        let disabled = disable(&changed);
        assert_eq!(disabled.text, "passwd: files ldap\n");
        assert!(
            disabled.changes[0].contains("before enable it read 'passwd: files systemd'"),
            "{:?}",
            disabled.changes
        );
    }

    #[test]
    fn disable_drops_a_record_whose_line_is_gone() {
        let enabled = enable("passwd: files systemd\nhosts: files\n").text;
        let removed = enabled.replace("passwd: files broker\n", "");
        let added_changed = enable("")
            .text
            .replace("shadow:         files broker", "shadow: files");
        assert_eq!(disable(&removed).text, "hosts: files\n");
        assert!(!disable(&added_changed).text.contains("userdb-brokerctl"));
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

    #[test]
    fn lines_naming_broker_in_any_database() {
        assert_eq!(lines_naming_broker(DEBIAN_DEFAULT), Vec::<usize>::new());
        assert_eq!(
            lines_naming_broker("# passwd: files broker\nhosts: files\ngroup:files\tbroker\n"),
            [3]
        );
        assert_eq!(
            lines_naming_broker("passwd: brokerx\n"),
            Vec::<usize>::new()
        );
        assert_eq!(lines_naming_broker(&enable(DEBIAN_DEFAULT).text).len(), 4);
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
    fn edit_file_keeps_the_mode_and_the_first_backup_only() {
        let scratch = Scratch::new("edit");
        let conf = scratch.write("nsswitch.conf", DEBIAN_DEFAULT);
        fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        let backup = scratch.0.join("nsswitch.conf.userdb-broker.bak");

        let report = edit_file(&conf, Edit::Enable, &scratch.0).unwrap();
        assert_eq!(
            fs::read_to_string(&conf).unwrap(),
            enable(DEBIAN_DEFAULT).text
        );
        assert_eq!(fs::metadata(&conf).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(
            report.backup,
            Some(Backup {
                path: backup.clone(),
                written_now: true
            })
        );
        assert_eq!(report.findings, []);
        assert_eq!(fs::read_to_string(&backup).unwrap(), DEBIAN_DEFAULT);

        let again = edit_file(&conf, Edit::Enable, &scratch.0).unwrap();
        assert_eq!((again.changes.len(), again.backup), (0, None));

        let disabled = edit_file(&conf, Edit::Disable, &scratch.0).unwrap();
        assert_eq!(disabled.backup.map(|b| b.written_now), Some(false));
        assert_eq!(fs::read_to_string(&conf).unwrap(), DEBIAN_DEFAULT);
        assert_eq!(fs::read_to_string(&backup).unwrap(), DEBIAN_DEFAULT);
        let leftovers: Vec<_> = fs::read_dir(&scratch.0)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_symlinked_file_keeps_its_link() {
        let scratch = Scratch::new("symlink");
        let real = scratch.write("real.conf", RECOMMENDED);
        let link = scratch.0.join("nsswitch.conf");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        edit_file(&link, Edit::Disable, &scratch.0).unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!fs::read_to_string(&real).unwrap().contains("broker"));
        assert!(scratch.0.join("real.conf.userdb-broker.bak").exists());
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let scratch = Scratch::new("missing");
        let missing = scratch.0.join("absent.conf");
        let error = edit_file(&missing, Edit::Enable, &scratch.0).unwrap_err();
        assert!(error.contains("absent.conf"), "{error}");
        assert!(!missing.exists());
    }
}
