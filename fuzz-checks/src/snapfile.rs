//! `snapfile::Snapfile`, the reader of the snapshot file the module maps
//! into every process: whatever the bytes, parsing and every look-up end
//! without a panic, probing ends, and every record handed out has valid
//! names, ids and fields (what packing relies on). The input is the file's
//! content (after the control block), as the module hands it to the reader.

use userdb_proto::api::LookupOptions;
use userdb_proto::names::{valid_gecos, valid_id, valid_name, valid_path, ValidName};
use userdb_proto::snapfile::{Snapfile, UserView};

const OPTIONS: [LookupOptions; 3] = [
    LookupOptions {
        caller_reads_files: false,
        dynamic_bypass: false,
    },
    LookupOptions {
        caller_reads_files: true,
        dynamic_bypass: false,
    },
    LookupOptions {
        caller_reads_files: false,
        dynamic_bypass: true,
    },
];

/// Records beyond this many are not all walked: a hostile count costs time,
/// not correctness, and the checks of the first ones are what matter.
const WALK: usize = 4096;

fn assert_user(user: &UserView) {
    let p = &user.passwd;
    assert!(valid_name(p.name), "{user:?}");
    assert!(valid_id(p.uid) && valid_id(p.gid), "{user:?}");
    assert!(valid_gecos(p.gecos), "{user:?}");
    assert!(valid_path(p.home) && valid_path(p.shell), "{user:?}");
}

pub fn check(data: &[u8]) {
    let Ok(file) = Snapfile::parse(data) else {
        return;
    };
    let mut names = Vec::new();
    for i in 0..file.user_count().min(WALK) {
        if let Ok(user) = file.user_at(i) {
            assert_user(&user);
            names.push(user.passwd.name);
            let found = file.user_by_uid(user.passwd.uid);
            if let Ok(Some(by_uid)) = found {
                assert_eq!(by_uid.passwd.uid, user.passwd.uid);
            }
        }
    }
    for i in 0..file.group_count().min(WALK) {
        let Ok(group) = file.group_at(i) else {
            continue;
        };
        assert!(valid_name(group.name) && valid_id(group.gid));
        names.push(group.name);
        for options in OPTIONS {
            for member in group.members(options).take(WALK).flatten() {
                assert!(valid_name(member), "{member:?}");
            }
        }
        if let Ok(Some(by_gid)) = file.group_by_gid(group.gid) {
            assert_eq!(by_gid.gid, group.gid);
        }
    }
    names.extend(["root", "nobody", ""]);
    for name in names {
        let valid = ValidName::new(name);
        if let Some(Ok(Some(user))) = valid.map(|n| file.user_by_name(n)) {
            assert_user(&user);
            assert_eq!(user.passwd.name, name);
        }
        if let Some(Ok(Some(group))) = valid.map(|n| file.group_by_name(n)) {
            assert_eq!(group.name, name);
        }
        for options in OPTIONS {
            if let Ok(gids) = file.gids_of(name, options) {
                assert!(gids.iter().all(|&g| valid_id(g)));
            }
        }
    }
}
