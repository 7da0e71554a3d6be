//! The classic databases: `etc/passwd`, `etc/shadow`, `etc/group` and
//! `etc/gshadow` below the root, parsed here (never through NSS, which could
//! lead back into the broker), as leniently as glibc's `files` module reads
//! them:
//!
//! - comments, blank lines and NIS compat lines (`+`/`-`) are skipped;
//! - a line that cannot be an entry (wrong field count, an id that is not a
//!   number, an invalid name, bytes that are not UTF-8 in a name, password
//!   or path) is skipped and reported; an invalid member name (not UTF-8
//!   included) drops that member, not the group; a real name that is not
//!   UTF-8 (Latin-1 from an old system) is kept with U+FFFD in place of
//!   the bytes, not the user dropped;
//! - duplicate names or ids are kept in file order: the merge gives each
//!   key to the first line that has it, as `files` does;
//! - shadow data become the privileged part of the records.
//!
//! Each file is read through `read` (regular files only, at most
//! [`MAX_FILE_SIZE`]); a file that cannot be read keeps its last good
//! content, and only a file that is gone counts as empty.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use userdb_proto::names::valid_name;
use userdb_proto::record::{GroupRecord, GroupShadow, UserRecord, UserShadow};

use super::read::{self, Identity};
use super::{quote, LoadReport, LocalSource, SourceData, SourceInfo, SourceKind};
use crate::model::{Group, User};

/// Largest `/etc` database read: a million users is about 70 MiB.
pub const MAX_FILE_SIZE: u64 = 128 << 20;

/// One file's last good content, parsed.
struct FileState<T> {
    path: PathBuf,
    identity: Option<Identity>,
    /// Whether `parsed` came from a read (and so is gone with the file).
    read: bool,
    /// The last read failed for a reason that may pass.
    unread: bool,
    parsed: T,
    problems: Vec<String>,
}

impl<T: Default> FileState<T> {
    fn new(path: PathBuf) -> Self {
        FileState {
            path,
            identity: None,
            read: false,
            unread: false,
            parsed: T::default(),
            problems: Vec::new(),
        }
    }

    /// Makes the next refresh read the file whether it changed or not.
    fn forget(&mut self) {
        self.identity = None;
    }

    /// Reads the file again if it changed; keeps the last good content when
    /// it cannot be read. Returns whether the content changed, and the
    /// failure to report, if any.
    fn refresh(
        &mut self,
        parse: impl Fn(&[u8], &Path, &mut Vec<String>) -> T,
    ) -> (bool, Option<String>) {
        let current = read::stat(&self.path).ok().map(|m| Identity::of(&m));
        if current.is_some() && current == self.identity {
            return (false, None);
        }
        let outcome = read::read(&self.path, MAX_FILE_SIZE);
        self.unread = outcome.as_ref().is_err_and(read::ReadError::may_pass);
        match outcome {
            Ok((bytes, identity)) => {
                let mut problems = Vec::new();
                self.parsed = parse(&bytes, &self.path, &mut problems);
                self.problems = problems;
                self.identity = Some(identity);
                self.read = true;
                (true, None)
            }
            Err(e) if !e.keeps_last_good() => {
                self.identity = None;
                let had = std::mem::replace(&mut self.read, false);
                self.parsed = T::default();
                self.problems.clear();
                (had, None)
            }
            Err(e) => {
                // The identity is forgotten so that the next refresh tries again.
                self.identity = None;
                let message = format!(
                    "{}: {e}; keeping its last good content",
                    self.path.display()
                );
                (false, Some(message))
            }
        }
    }
}

/// A database and the shadow file joined to it. The database's records
/// are held once, as served, each with its shadow entry (shared with the
/// shadow file's parsed entries), so a change to the shadow file alone
/// reads the database again with it.
struct Joined<T, S> {
    database: FileState<Vec<Arc<T>>>,
    shadow: FileState<ParsedShadow<S>>,
}

/// A shadow file's entries, by name.
type ParsedShadow<S> = HashMap<String, Arc<S>>;

impl<T, S> Joined<T, S> {
    fn new(database: PathBuf, shadow: PathBuf) -> Self {
        Joined {
            database: FileState::new(database),
            shadow: FileState::new(shadow),
        }
    }

    /// Refreshes the files `wanted` names, the shadow file first; `note`
    /// takes each one's outcome. `parse` makes the records of the
    /// database's text, joined with the shadow file's entries.
    fn refresh(
        &mut self,
        wanted: impl Fn(&Path) -> bool,
        note: &mut impl FnMut((bool, Option<String>)),
        parse_shadow: impl Fn(&[u8], &Path, &mut Vec<String>) -> ParsedShadow<S>,
        parse: impl Fn(&[u8], &Path, &mut Vec<String>, &ParsedShadow<S>) -> Vec<Arc<T>>,
    ) {
        let mut shadow_changed = false;
        if wanted(&self.shadow.path) {
            let (changed, failure) = self.shadow.refresh(parse_shadow);
            shadow_changed = changed;
            note((changed, failure));
        }
        if shadow_changed {
            self.database.forget();
        }
        if shadow_changed || wanted(&self.database.path) {
            let shadows = &self.shadow.parsed;
            note(
                self.database
                    .refresh(|text, path, problems| parse(text, path, problems, shadows)),
            );
        }
    }
}

/// The `files` source.
pub struct Files {
    info: SourceInfo,
    dir: PathBuf,
    /// `/etc/passwd` with `/etc/shadow`.
    users: Joined<User, UserShadow>,
    /// `/etc/group` with `/etc/gshadow`.
    groups: Joined<Group, GroupShadow>,
    data: Arc<SourceData>,
    report: LoadReport,
}

impl Files {
    pub fn new(root: &Path) -> Files {
        let dir = root.join("etc");
        Files {
            info: SourceInfo::local(SourceKind::Files),
            users: Joined::new(dir.join("passwd"), dir.join("shadow")),
            groups: Joined::new(dir.join("group"), dir.join("gshadow")),
            dir,
            data: Arc::default(),
            report: LoadReport::default(),
        }
    }

    fn rebuild(&mut self, failures: Vec<String>) {
        let users = self.users.database.parsed.clone();
        let groups = self.groups.database.parsed.clone();
        let problems = [
            &self.users.database.problems,
            &self.users.shadow.problems,
            &self.groups.database.problems,
            &self.groups.shadow.problems,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .chain(failures)
        .collect();
        self.data = Arc::new(SourceData {
            users,
            groups,
            memberships: Default::default(),
            problems,
        });
    }
}

impl LocalSource for Files {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn watched(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    fn refresh(&mut self, changed: Option<&[PathBuf]>) -> bool {
        let started = Instant::now();
        let wanted = |path: &Path| changed.is_none_or(|c| c.iter().any(|p| p == path));
        let mut any = false;
        let mut failures = Vec::new();
        let mut note = |(changed, failure): (bool, Option<String>)| {
            any |= changed;
            failures.extend(failure);
        };
        self.users.refresh(
            wanted,
            &mut note,
            parse_shadow,
            |text, path, problems, shadows| {
                parse_passwd(text, path, problems, |record| {
                    let mut user = User::from_nss(record, true);
                    join_shadow(&user.name, &mut user.shadow, shadows);
                    Arc::new(user)
                })
            },
        );
        self.groups.refresh(
            wanted,
            &mut note,
            parse_gshadow,
            |text, path, problems, shadows| {
                parse_group(text, path, problems, |record| {
                    let mut group = Group::from_nss(record, true);
                    join_shadow(&group.name, &mut group.shadow, shadows);
                    Arc::new(group)
                })
            },
        );
        let failed = !failures.is_empty();
        if any || failed {
            self.report.last_error = failures.last().cloned().or(self.report.last_error.take());
            self.rebuild(failures);
        }
        self.report.took = started.elapsed();
        any || failed
    }

    fn read_unread(&mut self) -> bool {
        let unread: Vec<PathBuf> = [
            (self.users.database.unread, &self.users.database.path),
            (self.users.shadow.unread, &self.users.shadow.path),
            (self.groups.database.unread, &self.groups.database.path),
            (self.groups.shadow.unread, &self.groups.shadow.path),
        ]
        .into_iter()
        .filter(|(unread, _)| *unread)
        .map(|(_, path)| path.clone())
        .collect();
        !unread.is_empty() && self.refresh(Some(&unread))
    }

    fn data(&self) -> Arc<SourceData> {
        Arc::clone(&self.data)
    }

    fn report(&self) -> LoadReport {
        self.report.clone()
    }
}

/// Puts a record's entry in the shadow file, if it has one, in place of
/// the shadow data its own line carries: shared with the file's parsed
/// entries, not copied.
fn join_shadow<S>(name: &str, own: &mut Option<Arc<S>>, shadows: &HashMap<String, Arc<S>>) {
    if let Some(entry) = shadows.get(name) {
        *own = Some(Arc::clone(entry));
    }
}

/// The lines that carry entries, numbered from 1, split on `:` into fields
/// that are still bytes: each parser decides per field what bytes that are
/// not UTF-8 mean (a name or a path is refused, a real name is kept with
/// U+FFFD in their place, a member is left out), as `files` serves such
/// lines rather than dropping them.
fn entries<'a>(text: &'a [u8]) -> impl Iterator<Item = (usize, Vec<&'a [u8]>)> + 'a {
    text.split(|&b| b == b'\n')
        .enumerate()
        .filter_map(move |(i, line)| {
            let skip = line.iter().all(u8::is_ascii_whitespace)
                || matches!(line.first(), Some(b'#' | b'+' | b'-'));
            (!skip).then(|| (i + 1, line.split(|&b| b == b':').collect()))
        })
}

/// Every field as text, or the reason the line is skipped: the fields at
/// `lossy` may hold bytes that are not UTF-8 (kept as U+FFFD), the others
/// may not.
fn text_fields<'a>(fields: &[&'a [u8]], lossy: &[usize]) -> Result<Vec<Cow<'a, str>>, String> {
    fields
        .iter()
        .enumerate()
        .map(|(i, field)| match std::str::from_utf8(field) {
            Ok(text) => Ok(Cow::Borrowed(text)),
            Err(_) if lossy.contains(&i) => Ok(String::from_utf8_lossy(field)),
            Err(_) => Err(format!("field {} is not UTF-8", i + 1)),
        })
        .collect()
}

fn bad_line(problems: &mut Vec<String>, path: &Path, line: usize, why: impl std::fmt::Display) {
    problems.push(format!("{}:{line}: skipped: {why}", path.display()));
}

fn parse_id(field: &str) -> Option<u32> {
    field.parse().ok()
}

/// An optional day count; empty means unset.
fn parse_days(field: &str) -> Result<Option<i64>, String> {
    if field.is_empty() {
        Ok(None)
    } else {
        field
            .parse()
            .map(Some)
            .map_err(|_| format!("{} is not a number of days", quote(field)))
    }
}

/// A password field that carries a hash rather than pointing elsewhere.
fn inline_hash(field: &str) -> Option<String> {
    (field != "x").then(|| field.to_owned())
}

/// `name:hash:lastchg:min:max:warn:inactive:expire:reserved`.
pub fn parse_shadow(
    text: &[u8],
    path: &Path,
    problems: &mut Vec<String>,
) -> HashMap<String, Arc<UserShadow>> {
    let mut out = HashMap::new();
    let mut bad = Vec::new();
    for (line, fields) in entries(text) {
        if fields.len() != 9 {
            bad.push((line, format!("{} fields instead of 9", fields.len())));
            continue;
        }
        let fields = match text_fields(&fields, &[]) {
            Ok(fields) => fields,
            Err(why) => {
                bad.push((line, why));
                continue;
            }
        };
        let days: Result<Vec<Option<i64>>, String> =
            fields[2..8].iter().map(|f| parse_days(f)).collect();
        match days {
            Ok(d) => {
                out.entry(fields[0].to_string()).or_insert_with(|| {
                    Arc::new(UserShadow {
                        hashed_password: Some(fields[1].to_string()),
                        last_change_days: d[0],
                        min_days: d[1],
                        max_days: d[2],
                        warn_days: d[3],
                        inactive_days: d[4],
                        expire_days: d[5],
                    })
                });
            }
            Err(why) => bad.push((line, why)),
        }
    }
    for (line, why) in bad {
        bad_line(problems, path, line, why);
    }
    out
}

/// The names of a `,`-separated member list; a member that is not UTF-8 or
/// not a valid name is an `Err` with the member as it may be shown.
fn members(field: &[u8]) -> impl Iterator<Item = Result<String, String>> + '_ {
    field
        .split(|&b| b == b',')
        .filter(|m| !m.is_empty())
        .map(|member| match std::str::from_utf8(member) {
            Ok(name) if valid_name(name) => Ok(name.to_owned()),
            Ok(name) => Err(quote(name)),
            Err(_) => Err(quote(&String::from_utf8_lossy(member))),
        })
}

/// `name:password:uid:gid:gecos:home:shell`; each entry as `served` makes
/// it, as soon as it is parsed.
pub fn parse_passwd<T>(
    text: &[u8],
    path: &Path,
    problems: &mut Vec<String>,
    mut served: impl FnMut(UserRecord) -> T,
) -> Vec<T> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (line, f) in entries(text) {
        if f.len() != 7 {
            bad.push((line, format!("{} fields instead of 7", f.len())));
            continue;
        }
        // The real name (field 5) is free text: kept even when it is not UTF-8.
        let f = match text_fields(&f, &[4]) {
            Ok(f) => f,
            Err(why) => {
                bad.push((line, why));
                continue;
            }
        };
        let (Some(uid), Some(gid)) = (parse_id(&f[2]), parse_id(&f[3])) else {
            bad.push((line, "uid or gid is not a number".to_owned()));
            continue;
        };
        // glibc reads an empty home as "/" and an empty shell as /bin/sh.
        let user = UserRecord {
            name: f[0].to_string(),
            uid,
            gid,
            gecos: f[4].to_string(),
            home: if f[5].is_empty() { "/" } else { &f[5] }.to_owned(),
            shell: if f[6].is_empty() { "/bin/sh" } else { &f[6] }.to_owned(),
            shadow: inline_hash(&f[1]).map(|hash| UserShadow {
                hashed_password: Some(hash),
                ..UserShadow::default()
            }),
        };
        // Validated exactly as records from any other source are.
        match UserRecord::from_json(&user.to_json()) {
            Ok(_) => out.push(served(user)),
            Err(why) => bad.push((line, why.to_string())),
        }
    }
    for (line, why) in bad {
        bad_line(problems, path, line, why);
    }
    out
}

/// `name:hash:administrators:members`.
pub fn parse_gshadow(
    text: &[u8],
    path: &Path,
    problems: &mut Vec<String>,
) -> HashMap<String, Arc<GroupShadow>> {
    let mut out = HashMap::new();
    let mut bad = Vec::new();
    for (line, f) in entries(text) {
        if f.len() != 4 {
            bad.push((line, format!("{} fields instead of 4", f.len())));
            continue;
        }
        let (Ok(name), Ok(hash)) = (std::str::from_utf8(f[0]), std::str::from_utf8(f[1])) else {
            bad.push((line, "name or hash is not UTF-8".to_owned()));
            continue;
        };
        let administrators = members(f[2]).filter_map(Result::ok).collect();
        out.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(GroupShadow {
                hashed_password: Some(hash.to_owned()),
                administrators,
            })
        });
    }
    for (line, why) in bad {
        bad_line(problems, path, line, why);
    }
    out
}

/// `name:password:gid:member,member,...`; an invalid member is left out and
/// reported, the group kept; each entry as `served` makes it.
pub fn parse_group<T>(
    text: &[u8],
    path: &Path,
    problems: &mut Vec<String>,
    mut served: impl FnMut(GroupRecord) -> T,
) -> Vec<T> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    let mut left_out = Vec::new();
    for (line, f) in entries(text) {
        if f.len() != 4 {
            bad.push((line, format!("{} fields instead of 4", f.len())));
            continue;
        }
        let member_field = f[3];
        let f = match text_fields(&f[..3], &[]) {
            Ok(f) => f,
            Err(why) => {
                bad.push((line, why));
                continue;
            }
        };
        let Some(gid) = parse_id(&f[2]) else {
            bad.push((line, "gid is not a number".to_owned()));
            continue;
        };
        let mut valid = Vec::new();
        for member in members(member_field) {
            match member {
                Ok(name) => valid.push(name),
                Err(shown) => left_out.push(format!(
                    "{}:{line}: member {shown} left out: not a valid name",
                    path.display(),
                )),
            }
        }
        let group = GroupRecord {
            name: f[0].to_string(),
            gid,
            members: valid,
            shadow: inline_hash(&f[1]).map(|hash| GroupShadow {
                hashed_password: Some(hash),
                administrators: Vec::new(),
            }),
        };
        match GroupRecord::from_json(&group.to_json()) {
            Ok(_) => out.push(served(group)),
            Err(why) => bad.push((line, why.to_string())),
        }
    }
    for (line, why) in bad {
        bad_line(problems, path, line, why);
    }
    problems.extend(left_out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/etc/x")
    }

    #[test]
    fn passwd_lines_with_shadow() {
        let mut problems = Vec::new();
        let shadows = parse_shadow(b"alice:$6$salt$h:19000:0:99999:7:::\n", p(), &mut problems);
        let users = parse_passwd(
            b"# comment\n\nroot:x:0:0:root:/root:/bin/bash\n+nisuser::::::\n-other\nalice:x:1000:1000:Alice,,,:/home/alice:\n",
            p(),
            &mut problems,
            std::convert::identity,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].home, "/root");
        assert_eq!(users[0].shadow, None);
        assert_eq!(
            (users[1].uid, users[1].gid, users[1].gecos.as_str()),
            (1000, 1000, "Alice,,,")
        );
        assert_eq!(users[1].shell, "/bin/sh");
        let shadow = &shadows["alice"];
        assert_eq!(shadow.hashed_password.as_deref(), Some("$6$salt$h"));
        assert_eq!(
            (
                shadow.last_change_days,
                shadow.max_days,
                shadow.inactive_days
            ),
            (Some(19000), Some(99999), None)
        );
    }

    #[test]
    fn invalid_passwd_lines_are_reported_and_skipped_relative_homes_kept() {
        let mut problems = Vec::new();
        let users = parse_passwd(
            b"short:x:1\nbad:x:uid:1:::/bin/sh\nneg:x:-1:1::/:/bin/sh\nbad name:x:5:5::/:/bin/sh\nhome:x:6:6::rel:/bin/sh\nok:x:7:7::/:/bin/sh\nlatin\xe9:x:8:8::/:/bin/sh\n",
            p(),
            &mut problems,
            std::convert::identity,
        );
        assert_eq!(
            users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
            ["bad name", "home", "ok"]
        );
        assert_eq!(users[1].home, "rel");
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems
            .iter()
            .any(|p| p.starts_with("/etc/x:7: skipped: field 1 is not UTF-8")));
        assert!(problems.iter().any(|p| p.starts_with("/etc/x:1: skipped")));
    }

    #[test]
    fn bytes_that_are_not_utf8_drop_only_what_cannot_be_kept() {
        let mut problems = Vec::new();
        let users = parse_passwd(
            b"jose:x:9:9:Jos\xe9:/home/jose:/bin/sh\nhome:x:10:10::/home/\xe9:/bin/sh\n",
            p(),
            &mut problems,
            std::convert::identity,
        );
        assert_eq!(users.len(), 1, "{problems:?}");
        assert_eq!(users[0].gecos, "Jos\u{fffd}");
        assert!(problems[0].contains(":2: skipped: field 6 is not UTF-8"));
        let groups = parse_group(
            b"g:x:11:ok,m\xe9,also\n",
            p(),
            &mut problems,
            std::convert::identity,
        );
        assert_eq!(groups[0].members, ["ok", "also"]);
        assert!(
            problems[1].contains("member \"m\u{fffd}\" left out"),
            "{problems:?}"
        );
    }

    #[test]
    fn duplicate_lines_are_all_kept_in_file_order() {
        let users = parse_passwd(
            b"dup:x:1:1::/:/bin/sh\ndup:x:2:2::/:/bin/sh\nother:x:1:1::/:/bin/sh\n",
            p(),
            &mut Vec::new(),
            std::convert::identity,
        );
        let keys: Vec<(&str, u32)> = users.iter().map(|u| (u.name.as_str(), u.uid)).collect();
        assert_eq!(keys, [("dup", 1), ("dup", 2), ("other", 1)]);
    }

    #[test]
    fn inline_passwd_hash_is_privileged() {
        let users = parse_passwd(
            b"old:$1$abc:9:9::/:/bin/sh\n",
            p(),
            &mut Vec::new(),
            std::convert::identity,
        );
        assert_eq!(
            users[0]
                .shadow
                .as_ref()
                .and_then(|s| s.hashed_password.as_deref()),
            Some("$1$abc")
        );
    }

    #[test]
    fn shadow_with_bad_days_is_skipped() {
        let mut problems = Vec::new();
        let s = parse_shadow(
            b"a:x:soon:0:0:0:::\nb:*:1:2:3:4:5:6:\nc:x\n",
            p(),
            &mut problems,
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s["b"].expire_days, Some(6));
        assert_eq!(problems.len(), 2);
    }

    #[test]
    fn an_invalid_member_is_left_out_the_group_kept() {
        let mut problems = Vec::new();
        let gshadows = parse_gshadow(b"wheel:!:alice:alice,bob\nbroken\n", p(), &mut problems);
        let groups = parse_group(
            b"wheel:x:10:alice,bob\nempty:x:11:\nbad:x:ten:\nodd:x:12:ok,-bad,also\n",
            p(),
            &mut problems,
            std::convert::identity,
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0].members, ["alice", "bob"]);
        assert_eq!(groups[2].members, ["ok", "also"]);
        let shadow = &gshadows["wheel"];
        assert_eq!(
            (
                shadow.hashed_password.as_deref(),
                shadow.administrators.clone()
            ),
            (Some("!"), vec!["alice".to_owned()])
        );
    }

    struct Root(PathBuf);

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn root(tag: &str) -> Root {
        let dir = std::env::temp_dir().join(format!("brokerd-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        Root(dir)
    }

    #[test]
    fn a_file_that_cannot_be_read_keeps_its_last_good_content() {
        let root = root("lastgood");
        let passwd = root.0.join("etc/passwd");
        std::fs::write(&passwd, "root:x:0:0::/root:/bin/sh\n").unwrap();
        let mut files = Files::new(&root.0);
        assert!(files.refresh(None));
        assert_eq!(files.data().users.len(), 1);
        std::fs::remove_file(&passwd).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(&passwd)
            .status()
            .unwrap();
        assert!(status.success());
        files.refresh(Some(std::slice::from_ref(&passwd)));
        assert_eq!(files.data().users[0].name.as_ref(), "root");
        assert!(files.report().last_error.unwrap().contains("FIFO"));
        std::fs::remove_file(&passwd).unwrap();
        assert!(files.refresh(Some(&[passwd])));
        assert!(files.data().users.is_empty(), "a removed file is empty");
    }

    #[test]
    fn a_change_to_a_shadow_file_alone_reaches_the_records_it_is_joined_to() {
        let root = root("shadowjoin");
        let etc = root.0.join("etc");
        let write = |name: &str, text: &str| std::fs::write(etc.join(name), text).unwrap();
        write("passwd", "alice:$1$inline:1000:1000::/home/alice:/bin/sh\n");
        write("shadow", "alice:$6$first:19000::::::\n");
        write("group", "staff:x:50:alice\n");
        write("gshadow", "staff:$6$g1::alice\n");
        let mut files = Files::new(&root.0);
        assert!(files.refresh(None));
        let hashes = |files: &Files| {
            let data = files.data();
            let user = data.users[0]
                .shadow
                .as_ref()
                .and_then(|s| s.hashed_password.clone());
            let group = data.groups[0]
                .shadow
                .as_ref()
                .and_then(|s| s.hashed_password.clone());
            (user, group)
        };
        assert_eq!(
            hashes(&files),
            (Some("$6$first".into()), Some("$6$g1".into()))
        );
        write("shadow", "alice:$6$second:19001::::::\n");
        write("gshadow", "staff:$6$g2::alice\n");
        let shadows = [etc.join("shadow"), etc.join("gshadow")];
        assert!(files.refresh(Some(&shadows)));
        assert_eq!(
            hashes(&files),
            (Some("$6$second".into()), Some("$6$g2".into()))
        );
        // Without a shadow entry, what the line itself carries comes back.
        write("shadow", "someone:$6$x:19001::::::\n");
        write("gshadow", "");
        assert!(files.refresh(Some(&shadows)));
        assert_eq!(hashes(&files), (Some("$1$inline".into()), None));
    }

    #[test]
    fn missing_root_is_an_empty_source() {
        let mut files = Files::new(Path::new("/nonexistent-root"));
        files.refresh(None);
        assert_eq!(*files.data(), SourceData::default());
    }
}
