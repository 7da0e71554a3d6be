//! Publishing the snapshot file next to the socket, for the module to read
//! without a round trip (the format: `userdb_proto::snapfile`).
//!
//! Each version is written to a new file and renamed over the old one, so a
//! reader's mapping never changes under it and can never fault; the old
//! file is then marked superseded (the only write ever made to a published
//! file), which readers see on their next look-up without a system call.
//! The file is root's, mode 0644, and holds no privileged field. It is
//! written by the watcher, off the request path, whenever a new snapshot is
//! in place or the set of Varlink services changes what it covers.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use userdb_proto::snapfile::{
    Builder, Coverage, GroupIn, UserIn, FILE_NAME, FLAGS_OFFSET, SUPERSEDED,
};

use crate::snapshot::Snapshot;

pub struct Publisher {
    path: PathBuf,
    /// The published file, kept open to mark it superseded once replaced.
    current: Option<File>,
    published: Option<(u64, Coverage)>,
}

/// What one publication cost.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    pub bytes: usize,
    pub took: Duration,
}

impl Publisher {
    pub fn new(path: PathBuf) -> Publisher {
        Publisher {
            path,
            current: None,
            published: None,
        }
    }

    /// Whether `snapshot` with `coverage` differs from what was published.
    pub fn is_stale(&self, snapshot: &Snapshot, coverage: Coverage) -> bool {
        self.published != Some((snapshot.generation, coverage))
    }

    pub fn publish(&mut self, snapshot: &Snapshot, coverage: Coverage) -> io::Result<Published> {
        let started = Instant::now();
        let bytes = encode(snapshot, coverage);
        let temporary = self
            .path
            .with_file_name(format!(".{FILE_NAME}.{}", std::process::id()));
        let _ = fs::remove_file(&temporary);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temporary)?;
        // The mode must not depend on the umask.
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        file.write_all(&bytes)?;
        // A file a previous broker published is marked too once replaced.
        let previous = match self.current.take() {
            Some(file) => Some(file),
            None => OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&self.path)
                .ok()
                .filter(|f| f.metadata().is_ok_and(|m| m.is_file())),
        };
        if let Err(e) = fs::rename(&temporary, &self.path) {
            let _ = fs::remove_file(&temporary);
            self.current = previous;
            return Err(e);
        }
        if let Some(old) = previous {
            old.write_all_at(&SUPERSEDED.to_le_bytes(), FLAGS_OFFSET as u64)?;
        }
        self.current = Some(file);
        self.published = Some((snapshot.generation, coverage));
        Ok(Published {
            bytes: bytes.len(),
            took: started.elapsed(),
        })
    }
}

/// The file's bytes for `snapshot`: every visible record with the keys it
/// holds, the merged members, and the groups of every member name, in the
/// snapshot's own order (a stable file for a stable snapshot).
pub fn encode(snapshot: &Snapshot, coverage: Coverage) -> Vec<u8> {
    let members = snapshot.member_names();
    let mut b = Builder::with_capacity(snapshot.users.len(), snapshot.groups.len(), members.len());
    let origin = |source| snapshot.origin(source);
    for entry in &snapshot.users {
        let u = &entry.user;
        b.user(UserIn {
            passwd: u.passwd(),
            listed: u.listed,
            origin: origin(entry.source),
            holds_name: entry.holds_name,
            holds_id: entry.holds_id,
        });
    }
    for entry in &snapshot.groups {
        let g = &entry.group;
        b.group(GroupIn {
            name: &g.name,
            gid: g.gid,
            listed: g.listed,
            origin: origin(entry.source),
            holds_name: entry.holds_name,
            holds_id: entry.holds_id,
            members: snapshot
                .members_of(entry)
                .map(|(name, by_files)| (&**name, by_files))
                .collect(),
        });
    }
    let mut listed: Vec<(u32, bool)> = Vec::new();
    for member in members {
        listed.clear();
        listed.extend(
            snapshot
                .groups_listing(member)
                .iter()
                .map(|r| (r.group, r.by_files)),
        );
        b.member(&member.name, &listed);
    }
    b.finish(snapshot.generation, coverage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::{build, Loaded, Priority};
    use crate::model::{Group, Name, User};
    use crate::sources::{LoadReport, SourceData, SourceInfo, SourceKind};
    use std::sync::Arc;
    use userdb_proto::api::LookupOptions;
    use userdb_proto::names::ValidName;
    use userdb_proto::record::{GroupRecord, UserRecord};
    use userdb_proto::snapfile::{check_control, Snapfile, CONTROL_SIZE};

    fn snapshot() -> Snapshot {
        let user = |name: &str, uid| {
            Arc::new(User::from_nss(
                UserRecord {
                    name: name.into(),
                    uid,
                    gid: uid,
                    gecos: "G".into(),
                    home: "/".into(),
                    shell: "/bin/sh".into(),
                    shadow: None,
                },
                true,
            ))
        };
        let files = SourceData {
            users: vec![user("root", 0), user("alice", 1000)],
            groups: vec![Arc::new(Group::from_nss(
                GroupRecord {
                    name: "wheel".into(),
                    gid: 10,
                    members: vec!["alice".into()],
                    shadow: None,
                },
                true,
            ))],
            ..Default::default()
        };
        let dropins = SourceData {
            users: vec![user("bob", 2000)],
            memberships: [(Name::from("bob"), Name::from("wheel"))]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let loaded = [(SourceKind::Files, files), (SourceKind::DropIns, dropins)]
            .into_iter()
            .map(|(kind, data)| Loaded {
                info: SourceInfo::local(kind),
                data: Arc::new(data),
                load: LoadReport::default(),
            })
            .collect();
        build(loaded, &Priority::new(Vec::new()), 5).snapshot
    }

    #[test]
    fn the_file_answers_what_the_snapshot_does() {
        let bytes = encode(&snapshot(), Coverage::new(false, false, true));
        let file = Snapfile::parse(&bytes[CONTROL_SIZE..]).unwrap();
        assert_eq!(file.generation(), 5);
        assert_eq!(
            file.user_by_name(ValidName::new("bob").unwrap())
                .unwrap()
                .unwrap()
                .passwd
                .uid,
            2000
        );
        assert!(
            file.user_by_name(ValidName::new("alice").unwrap())
                .unwrap()
                .unwrap()
                .origin
                .files
        );
        let wheel = file
            .group_by_name(ValidName::new("wheel").unwrap())
            .unwrap()
            .unwrap();
        let files_first = LookupOptions {
            caller_reads_files: true,
            dynamic_bypass: false,
        };
        let members: Vec<&str> = wheel.members(files_first).map(Result::unwrap).collect();
        assert_eq!(members, ["bob"]);
        assert_eq!(file.gids_of("bob", files_first).unwrap(), [10]);
        assert!(file.gids_of("alice", files_first).unwrap().is_empty());
    }

    #[test]
    fn a_replaced_file_is_marked_superseded_and_a_new_one_takes_its_place() {
        let dir = std::env::temp_dir().join(format!("brokerd-publish-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = userdb_proto::snapfile::path_for(&dir.join("io.userdb.Broker"));
        let mut publisher = Publisher::new(path.clone());
        let first = snapshot();
        publisher.publish(&first, Coverage::default()).unwrap();
        let old = fs::read(&path).unwrap();
        check_control(old[..12].try_into().unwrap()).unwrap();
        let old_handle = File::open(&path).unwrap();
        assert!(!publisher.is_stale(&first, Coverage::default()));
        assert!(publisher.is_stale(&first, Coverage(1)));
        publisher.publish(&first, Coverage(1)).unwrap();
        let mut flags = [0u8; 4];
        old_handle
            .read_exact_at(&mut flags, FLAGS_OFFSET as u64)
            .unwrap();
        assert_eq!(u32::from_le_bytes(flags), SUPERSEDED);
        let new = fs::read(&path).unwrap();
        assert_eq!(&new[FLAGS_OFFSET..FLAGS_OFFSET + 4], &[0; 4]);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
