//! The benchmark's data: generated users and groups, written as
//! `/etc/passwd`/`/etc/group` lines, as systemd's JSON drop-ins, or both.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use serde_json::json;
use userdb_broker_tests::{DropinDir, Fixture};

/// uid and gid of the first generated user and group.
pub const FIRST_ID: u32 = 200_000;

/// The user `id` is timed for: a member of [`MANY_GROUPS`] groups.
pub const MANY_USER: &str = "manyuser";
const MANY_UID: u32 = FIRST_ID - 1;
pub const MANY_GROUPS: u32 = 500;

pub fn user_name(i: u32) -> String {
    format!("benchuser{i}")
}

pub fn group_name(i: u32) -> String {
    format!("benchgroup{i}")
}

/// The passwd line of generated user `i`, with `gecos` as its comment.
pub fn passwd_line(i: u32, gecos: &str) -> String {
    let (name, id) = (user_name(i), FIRST_ID + i);
    format!("{name}:x:{id}:{id}:{gecos}:/home/{name}:/bin/bash")
}

pub fn default_gecos(i: u32) -> String {
    format!("Bench User {i}")
}

/// The JSON drop-in of generated user `i` (the same entry as its passwd line).
pub fn user_record(i: u32, gecos: &str) -> String {
    let (name, id) = (user_name(i), FIRST_ID + i);
    json!({"userName": name, "uid": id, "gid": id, "realName": gecos,
           "homeDirectory": format!("/home/{name}"), "shell": "/bin/bash"})
    .to_string()
}

/// Writes drop-ins straight into a directory no broker watches yet (no
/// staging and rename: nothing can read a half-written file).
struct DropinWriter<'a> {
    dir: &'a Path,
    files: usize,
}

impl DropinWriter<'_> {
    fn write(&mut self, file_name: &str, content: &[u8]) {
        let path = self.dir.join(file_name);
        fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        self.files += 1;
    }

    /// `NAME.KIND` holding `content`, and the `ID.KIND` link to it.
    fn record(&mut self, name: &str, id: u32, kind: &str, content: &str) {
        let file_name = format!("{name}.{kind}");
        self.write(&file_name, content.as_bytes());
        let link = self.dir.join(format!("{id}.{kind}"));
        symlink(&file_name, &link).unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
        self.files += 1;
    }
}

/// `etc/DB` of `fixture`: its base lines followed by `lines`.
fn write_etc(fixture: &Fixture, db: &str, lines: Vec<String>) {
    let path = fixture.root().join("etc").join(db);
    let base = fs::read_to_string(&path).unwrap_or_default();
    let mut all: Vec<&str> = base.lines().collect();
    all.extend(lines.iter().map(String::as_str));
    fixture.replace_etc_file(db, &all);
}

/// Where [`both_forms`] writes its drop-ins: beside the fixture's root,
/// not in it, so that only nss-systemd reads them (the look-up namespace
/// mounts them at `/run/userdb`) and the broker serves the /etc lines.
pub fn systemd_dropins(fixture: &Fixture) -> PathBuf {
    fixture.scratch().join("systemd-userdb")
}

/// `size` users and `size` groups, each both an /etc line (what `files`
/// and the broker read) and a drop-in (what `systemd` reads), the same
/// entry in both;
/// user `i` is a member of group `i`. Plus [`MANY_USER`], a member of the
/// first [`MANY_GROUPS`] groups (never of the last one, which the
/// look-ups use), with the first as its primary group: listed on those
/// groups' lines and records and as `.membership` drop-ins.
pub fn both_forms(size: u32) -> Fixture {
    let fixture = Fixture::new();
    let dir = systemd_dropins(&fixture);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let mut dropins = DropinWriter {
        dir: &dir,
        files: 0,
    };
    let many = MANY_GROUPS.min(size.saturating_sub(1));
    let mut passwd = Vec::with_capacity(size as usize + 1);
    let mut group = Vec::with_capacity(size as usize);
    passwd.push(format!(
        "{MANY_USER}:x:{MANY_UID}:{FIRST_ID}:Many Groups:/home/{MANY_USER}:/bin/bash"
    ));
    dropins.record(
        MANY_USER,
        MANY_UID,
        "user",
        &json!({"userName": MANY_USER, "uid": MANY_UID, "gid": FIRST_ID,
                "realName": "Many Groups", "homeDirectory": format!("/home/{MANY_USER}"),
                "shell": "/bin/bash"})
        .to_string(),
    );
    for i in 0..size {
        let id = FIRST_ID + i;
        let gecos = default_gecos(i);
        passwd.push(passwd_line(i, &gecos));
        dropins.record(&user_name(i), id, "user", &user_record(i, &gecos));
        let mut members = vec![user_name(i)];
        if i < many {
            members.push(MANY_USER.to_owned());
            // nss-systemd's getgrouplist reads memberships from these only.
            dropins.write(&format!("{MANY_USER}:{}.membership", group_name(i)), b"{}");
        }
        group.push(format!("{}:x:{id}:{}", group_name(i), members.join(",")));
        dropins.record(
            &group_name(i),
            id,
            "group",
            &json!({"groupName": group_name(i), "gid": id, "members": members}).to_string(),
        );
    }
    write_etc(&fixture, "passwd", passwd);
    write_etc(&fixture, "group", group);
    fixture
}

/// How the data of the broker-at-scale runs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `/etc/passwd` and `/etc/group` lines, members on the group lines.
    EtcLines,
    /// `.user` and `.group` drop-ins with their id links, and one
    /// `USER:GROUP.membership` drop-in per membership.
    DropIns,
}

impl Form {
    pub fn label(self) -> &'static str {
        match self {
            Form::EtcLines => "/etc lines",
            Form::DropIns => "drop-ins",
        }
    }
}

/// What a scale fixture holds.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub users: u32,
    pub groups: u32,
    pub memberships: u32,
    pub dropin_files: usize,
}

/// Shared groups per user at scale: each user is a member of two.
const SHARED_PER_USER: u32 = 2;

/// `users` users, each with a group of its own, plus `users / 20` shared
/// groups of 40 members each (every user in two): 100,000 users give
/// 105,000 groups and 200,000 memberships, in `form`.
pub fn at_scale(users: u32, form: Form) -> (Fixture, Scale) {
    let fixture = Fixture::new();
    let dir = fixture.root().join(DropinDir::Etc.relative());
    let mut dropins = DropinWriter {
        dir: &dir,
        files: 0,
    };
    let shared = (users / 20).max(SHARED_PER_USER);
    let shared_name = |j: u32| format!("benchshared{j}");
    let shared_gid = |j: u32| FIRST_ID + users + j;
    let mut members: Vec<Vec<String>> = vec![Vec::new(); shared as usize];
    let mut passwd = Vec::new();
    let mut group = Vec::new();
    for i in 0..users {
        let id = FIRST_ID + i;
        let gecos = default_gecos(i);
        for k in 0..SHARED_PER_USER {
            let j = (i + k * shared / SHARED_PER_USER) % shared;
            match form {
                Form::EtcLines => members[j as usize].push(user_name(i)),
                Form::DropIns => dropins.write(
                    &format!("{}:{}.membership", user_name(i), shared_name(j)),
                    b"{}",
                ),
            }
        }
        match form {
            Form::EtcLines => {
                passwd.push(passwd_line(i, &gecos));
                group.push(format!("{}:x:{id}:", group_name(i)));
            }
            Form::DropIns => {
                dropins.record(&user_name(i), id, "user", &user_record(i, &gecos));
                dropins.record(
                    &group_name(i),
                    id,
                    "group",
                    &json!({"groupName": group_name(i), "gid": id}).to_string(),
                );
            }
        }
    }
    for j in 0..shared {
        match form {
            Form::EtcLines => group.push(format!(
                "{}:x:{}:{}",
                shared_name(j),
                shared_gid(j),
                members[j as usize].join(",")
            )),
            Form::DropIns => dropins.record(
                &shared_name(j),
                shared_gid(j),
                "group",
                &json!({"groupName": shared_name(j), "gid": shared_gid(j)}).to_string(),
            ),
        }
    }
    let files = dropins.files;
    if form == Form::EtcLines {
        write_etc(&fixture, "passwd", passwd);
        write_etc(&fixture, "group", group);
    }
    let scale = Scale {
        users,
        groups: users + shared,
        memberships: users * SHARED_PER_USER,
        dropin_files: files,
    };
    (fixture, scale)
}

/// A change to generated user `i`'s comment, prepared in advance so that
/// applying it is only the write an administrator's tool makes: the whole
/// file written beside the old one and renamed over it.
pub enum Change {
    Passwd(Vec<String>),
    Dropin { file_name: String, content: String },
}

impl Change {
    pub fn new(form: Form, users: u32, i: u32, gecos: &str) -> Change {
        match form {
            Form::EtcLines => {
                let mut lines: Vec<String> = userdb_broker_tests::fixture::BASE_PASSWD
                    .iter()
                    .map(|l| (*l).to_owned())
                    .collect();
                lines.extend((0..users).map(|u| {
                    if u == i {
                        passwd_line(u, gecos)
                    } else {
                        passwd_line(u, &default_gecos(u))
                    }
                }));
                Change::Passwd(lines)
            }
            Form::DropIns => Change::Dropin {
                file_name: format!("{}.user", user_name(i)),
                content: user_record(i, gecos),
            },
        }
    }

    pub fn apply(&self, fixture: &Fixture) {
        match self {
            Change::Passwd(lines) => fixture.replace_etc_file(
                "passwd",
                &lines.iter().map(String::as_str).collect::<Vec<_>>(),
            ),
            Change::Dropin { file_name, content } => {
                fixture.dropin_raw(DropinDir::Etc, file_name, content.as_bytes());
            }
        }
    }
}
