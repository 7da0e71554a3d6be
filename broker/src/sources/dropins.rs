//! systemd's JSON user and group drop-ins, read by the rules of systemd's
//! `userdb-dropin.c` and `conf-files.c`:
//!
//! - directories in priority order ([`DIRS`] below the root); a file name in
//!   an earlier directory hides the same name in later ones;
//! - an empty file, or a symlink to `/dev/null`, masks the name;
//! - `NAME.user` must hold `"userName": NAME`, and may not carry a
//!   `privileged` section; its `NAME.user-privileged` companion in the same
//!   directory is merged into it (top-level keys);
//! - `UID.user` must hold that uid; such files answer look-ups by uid only
//!   and are not listed as separate users;
//! - `NAME.group`, `GID.group`, `NAME.group-privileged` likewise;
//! - `USER:GROUP.membership` states a membership (content ignored, but an
//!   empty file is a mask like any other, so write `{}` into it);
//! - a file larger than [`MAX_FILE_SIZE`] is refused.
//!
//! Every record is validated with the shared record model; a broken file is
//! skipped with one problem line naming it, the rest keep resolving.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use userdb_proto::names::valid_name;
use userdb_proto::record::{GroupRecord, UserRecord};

use super::{SourceData, SourceGroup, SourceUser};

/// Drop-in directories below the root, earlier ones win.
pub const DIRS: [&str; 5] = [
    "etc/userdb",
    "run/userdb",
    "run/host/userdb",
    "usr/local/lib/userdb",
    "usr/lib/userdb",
];

/// Largest drop-in file read; real records are a few KiB.
pub const MAX_FILE_SIZE: u64 = 256 * 1024;

/// The drop-in directories below `root`, in priority order.
pub fn dirs(root: &Path) -> Vec<PathBuf> {
    DIRS.iter().map(|d| root.join(d)).collect()
}

/// What a drop-in file name declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropInName {
    UserByName(String),
    UserByUid(u32),
    GroupByName(String),
    GroupByGid(u32),
    Membership {
        user: String,
        group: String,
    },
    /// `.user-privileged` / `.group-privileged`: read with their record.
    Companion,
    /// Not a drop-in at all (other suffix): ignored silently.
    Unrelated,
}

/// Classifies a file name; `Err` says why a name with a drop-in suffix is
/// unusable.
pub fn classify(file_name: &str) -> Result<DropInName, String> {
    if file_name.ends_with(".user-privileged") || file_name.ends_with(".group-privileged") {
        return Ok(DropInName::Companion);
    }
    if let Some(stem) = file_name.strip_suffix(".user") {
        return match stem.parse::<u32>() {
            Ok(uid) => Ok(DropInName::UserByUid(uid)),
            Err(_) if valid_name(stem) => Ok(DropInName::UserByName(stem.to_owned())),
            Err(_) => Err(format!("{stem:?} is not a valid user name")),
        };
    }
    if let Some(stem) = file_name.strip_suffix(".group") {
        return match stem.parse::<u32>() {
            Ok(gid) => Ok(DropInName::GroupByGid(gid)),
            Err(_) if valid_name(stem) => Ok(DropInName::GroupByName(stem.to_owned())),
            Err(_) => Err(format!("{stem:?} is not a valid group name")),
        };
    }
    if let Some(stem) = file_name.strip_suffix(".membership") {
        return match stem.split_once(':') {
            Some((user, group)) if valid_name(user) && valid_name(group) => {
                Ok(DropInName::Membership {
                    user: user.to_owned(),
                    group: group.to_owned(),
                })
            }
            _ => Err("not USER:GROUP with two valid names".to_owned()),
        };
    }
    Ok(DropInName::Unrelated)
}

/// One visible drop-in file: the first of its name across the directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visible {
    pub file_name: String,
    pub path: PathBuf,
    /// Empty or a link to `/dev/null`: hides the name and provides nothing.
    pub masked: bool,
}

/// The visible files, by file name, after hiding and masking.
pub fn visible_files(dirs: &[PathBuf]) -> BTreeMap<String, Visible> {
    let mut out = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(file_name) = entry.file_name().into_string() else {
                continue;
            };
            if out.contains_key(&file_name) {
                continue;
            }
            let path = entry.path();
            let masked = match std::fs::metadata(&path) {
                Ok(m) => (m.is_file() && m.len() == 0) || m.file_type().is_char_device(),
                // A dangling link or an unreadable entry provides nothing
                // but still takes its name, as systemd's conf-files does.
                Err(_) => true,
            };
            out.insert(
                file_name.clone(),
                Visible {
                    file_name,
                    path,
                    masked,
                },
            );
        }
    }
    out
}

/// Reads a JSON object from a drop-in file, refusing oversized files.
fn read_object(path: &Path) -> Result<Map<String, Value>, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(format!("larger than {MAX_FILE_SIZE} bytes"));
    }
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err("not a JSON object".to_owned()),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

/// Reads a record and merges its `-privileged` companion from the same
/// directory, if there is one.
fn read_record(path: &Path, companion_suffix: &str) -> Result<Value, String> {
    let mut record = read_object(path)?;
    if record.contains_key("privileged") {
        return Err("a 'privileged' section belongs in the -privileged file".to_owned());
    }
    let companion = path.with_extension(companion_suffix);
    match std::fs::symlink_metadata(&companion) {
        Ok(_) => {
            let extra =
                read_object(&companion).map_err(|e| format!("{}: {e}", companion.display()))?;
            record.extend(extra);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", companion.display())),
    }
    Ok(Value::Object(record))
}

fn load_user(path: &Path, expect: &DropInName) -> Result<SourceUser, String> {
    let record = read_record(path, "user-privileged")?;
    let user = UserRecord::from_json(&record).map_err(|e| e.to_string())?;
    let listed = match expect {
        DropInName::UserByName(name) if *name == user.name => true,
        DropInName::UserByName(name) => {
            return Err(format!(
                "userName {:?} does not match the file name {name:?}",
                user.name
            ))
        }
        DropInName::UserByUid(uid) if *uid == user.uid => false,
        DropInName::UserByUid(uid) => {
            return Err(format!(
                "uid {} does not match the file name {uid}",
                user.uid
            ))
        }
        _ => return Err("not a user drop-in".to_owned()),
    };
    Ok(SourceUser {
        name: user.name,
        uid: user.uid,
        record,
        listed,
    })
}

fn load_group(path: &Path, expect: &DropInName) -> Result<SourceGroup, String> {
    let record = read_record(path, "group-privileged")?;
    let group = GroupRecord::from_json(&record).map_err(|e| e.to_string())?;
    let listed = match expect {
        DropInName::GroupByName(name) if *name == group.name => true,
        DropInName::GroupByName(name) => {
            return Err(format!(
                "groupName {:?} does not match the file name {name:?}",
                group.name
            ))
        }
        DropInName::GroupByGid(gid) if *gid == group.gid => false,
        DropInName::GroupByGid(gid) => {
            return Err(format!(
                "gid {} does not match the file name {gid}",
                group.gid
            ))
        }
        _ => return Err("not a group drop-in".to_owned()),
    };
    Ok(SourceGroup {
        name: group.name,
        gid: group.gid,
        record,
        listed,
    })
}

/// Reads the source from `dirs` (priority order). Named records come before
/// the id-named ones so that a `UID.user` link to `NAME.user` adds nothing.
pub fn load(dirs: &[PathBuf]) -> SourceData {
    let mut data = SourceData::default();
    let mut by_id_users = Vec::new();
    let mut by_id_groups = Vec::new();
    for file in visible_files(dirs).into_values().filter(|f| !f.masked) {
        let kind = match classify(&file.file_name) {
            Ok(kind) => kind,
            Err(why) => {
                data.problems
                    .push(format!("{}: skipped: {why}", file.path.display()));
                continue;
            }
        };
        let loaded = match &kind {
            DropInName::UserByName(_) => load_user(&file.path, &kind).map(|u| data.users.push(u)),
            DropInName::UserByUid(_) => load_user(&file.path, &kind).map(|u| by_id_users.push(u)),
            DropInName::GroupByName(_) => {
                load_group(&file.path, &kind).map(|g| data.groups.push(g))
            }
            DropInName::GroupByGid(_) => {
                load_group(&file.path, &kind).map(|g| by_id_groups.push(g))
            }
            DropInName::Membership { user, group } => {
                data.memberships.push((user.clone(), group.clone()));
                Ok(())
            }
            DropInName::Companion | DropInName::Unrelated => Ok(()),
        };
        if let Err(why) = loaded {
            data.problems
                .push(format!("{}: skipped: {why}", file.path.display()));
        }
    }
    data.users.extend(by_id_users);
    data.groups.extend(by_id_groups);
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::symlink;

    struct Root(PathBuf);

    impl Root {
        fn new(tag: &str) -> Root {
            let dir =
                std::env::temp_dir().join(format!("brokerd-dropins-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            for d in DIRS {
                std::fs::create_dir_all(dir.join(d)).unwrap();
            }
            Root(dir)
        }
        fn write(&self, dir: &str, name: &str, content: &str) -> PathBuf {
            let path = self.0.join(dir).join(name);
            std::fs::write(&path, content).unwrap();
            path
        }
        fn load(&self) -> SourceData {
            load(&dirs(&self.0))
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn user_names(data: &SourceData) -> Vec<(&str, bool)> {
        data.users
            .iter()
            .map(|u| (u.name.as_str(), u.listed))
            .collect()
    }

    #[test]
    fn file_names_are_classified() {
        assert_eq!(
            classify("alice.user"),
            Ok(DropInName::UserByName("alice".into()))
        );
        assert_eq!(classify("1000.user"), Ok(DropInName::UserByUid(1000)));
        assert_eq!(
            classify("wheel.group"),
            Ok(DropInName::GroupByName("wheel".into()))
        );
        assert_eq!(classify("10.group"), Ok(DropInName::GroupByGid(10)));
        assert_eq!(
            classify("alice:wheel.membership"),
            Ok(DropInName::Membership {
                user: "alice".into(),
                group: "wheel".into()
            })
        );
        assert_eq!(classify("alice.user-privileged"), Ok(DropInName::Companion));
        assert_eq!(classify("README"), Ok(DropInName::Unrelated));
        assert!(classify("-x.user").is_err());
        assert!(classify("a,b.group").is_err());
        assert!(classify("alice.membership").is_err());
        assert!(classify("alice:.membership").is_err());
        assert!(classify("alice:a,b.membership").is_err());
    }

    #[test]
    fn earlier_directory_wins_and_masks_hide() {
        let root = Root::new("priority");
        root.write(
            "etc/userdb",
            "alice.user",
            r#"{"userName":"alice","uid":2001}"#,
        );
        root.write(
            "usr/lib/userdb",
            "alice.user",
            r#"{"userName":"alice","uid":3001}"#,
        );
        root.write(
            "usr/lib/userdb",
            "bob.user",
            r#"{"userName":"bob","uid":3002}"#,
        );
        root.write("run/userdb", "bob.user", "");
        root.write(
            "usr/lib/userdb",
            "carol.user",
            r#"{"userName":"carol","uid":3003}"#,
        );
        symlink("/dev/null", root.0.join("run/host/userdb/carol.user")).unwrap();
        let data = root.load();
        assert!(data.problems.is_empty(), "{:?}", data.problems);
        assert_eq!(user_names(&data), [("alice", true)]);
        assert_eq!(data.users[0].uid, 2001);
    }

    #[test]
    fn uid_links_are_not_separate_users() {
        let root = Root::new("uidlink");
        root.write(
            "etc/userdb",
            "alice.user",
            r#"{"userName":"alice","uid":2001}"#,
        );
        symlink("alice.user", root.0.join("etc/userdb/2001.user")).unwrap();
        root.write(
            "etc/userdb",
            "2002.user",
            r#"{"userName":"dave","uid":2002}"#,
        );
        root.write("etc/userdb", "2003.user", r#"{"userName":"eve","uid":9}"#);
        let data = root.load();
        assert_eq!(
            user_names(&data),
            [("alice", true), ("alice", false), ("dave", false)]
        );
        assert_eq!(data.problems.len(), 1);
        assert!(
            data.problems[0].contains("2003.user") && data.problems[0].contains("does not match")
        );
    }

    #[test]
    fn privileged_companion_is_merged_and_inline_refused() {
        let root = Root::new("privileged");
        root.write(
            "etc/userdb",
            "alice.user",
            r#"{"userName":"alice","uid":2001}"#,
        );
        root.write(
            "etc/userdb",
            "alice.user-privileged",
            r#"{"privileged":{"hashedPassword":["$6$x$y"]}}"#,
        );
        root.write(
            "etc/userdb",
            "mallory.user",
            r#"{"userName":"mallory","uid":2002,"privileged":{"hashedPassword":["$6$a"]}}"#,
        );
        let data = root.load();
        assert_eq!(user_names(&data), [("alice", true)]);
        assert_eq!(
            data.users[0].record["privileged"],
            json!({"hashedPassword": ["$6$x$y"]})
        );
        assert_eq!(data.problems.len(), 1);
        assert!(
            data.problems[0].contains("mallory.user"),
            "{:?}",
            data.problems
        );
    }

    #[test]
    fn hostile_files_are_skipped_each_with_one_problem() {
        let root = Root::new("hostile");
        root.write(
            "etc/userdb",
            "good.user",
            r#"{"userName":"good","uid":2000}"#,
        );
        root.write("etc/userdb", "broken.user", r#"{"userName":"broken","#);
        root.write(
            "etc/userdb",
            "other.user",
            r#"{"userName":"notother","uid":2001}"#,
        );
        let huge = format!(
            r#"{{"userName":"huge","uid":2002,"realName":"{}"}}"#,
            "a".repeat(1 << 20)
        );
        root.write("etc/userdb", "huge.user", &huge);
        root.write(
            "etc/userdb",
            "nul.user",
            r#"{"userName":"nul","uid":2003,"realName":"a\u0000b"}"#,
        );
        root.write(
            "etc/userdb",
            "colon.user",
            r#"{"userName":"colon","uid":2004,"realName":"x:0:0::/:/bin/sh"}"#,
        );
        root.write("etc/userdb", "neg.user", r#"{"userName":"neg","uid":-1}"#);
        root.write("etc/userdb", "array.group", "[1,2]");
        root.write(
            "etc/userdb",
            "wheel.group",
            r#"{"groupName":"wheel","gid":10,"members":["good"]}"#,
        );
        let data = root.load();
        assert_eq!(user_names(&data), [("good", true)]);
        assert_eq!(data.groups.len(), 1);
        assert_eq!(data.problems.len(), 7, "{:?}", data.problems);
        for bad in ["broken", "other", "huge", "nul", "colon", "neg", "array"] {
            assert!(
                data.problems
                    .iter()
                    .any(|p| p.contains(&format!("/{bad}."))),
                "{bad}"
            );
        }
    }

    #[test]
    fn groups_and_memberships() {
        let root = Root::new("groups");
        root.write(
            "run/userdb",
            "devs.group",
            r#"{"groupName":"devs","gid":5000}"#,
        );
        root.write(
            "run/userdb",
            "5000.group",
            r#"{"groupName":"devs","gid":5000}"#,
        );
        root.write("run/userdb", "alice:devs.membership", "{}");
        root.write("usr/lib/userdb", "bob:devs.membership", "anything");
        // Empty, like a link to /dev/null, is a mask, as in systemd.
        root.write("usr/lib/userdb", "carol:devs.membership", "");
        root.write("usr/lib/userdb", "bad:a,b.membership", "{}");
        let data = root.load();
        assert_eq!(
            data.groups.iter().map(|g| g.listed).collect::<Vec<_>>(),
            [true, false]
        );
        assert_eq!(
            data.memberships,
            [
                ("alice".to_owned(), "devs".to_owned()),
                ("bob".to_owned(), "devs".to_owned())
            ]
        );
        assert_eq!(data.problems.len(), 1);
    }
}
