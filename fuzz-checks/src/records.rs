//! `record::UserRecord::from_json` and `GroupRecord::from_json`, the gate
//! every record passes before the module packs it into a caller's buffer: an
//! accepted record has valid names and ids, and fields that cannot corrupt a
//! passwd, group, shadow or gshadow line. What the broker publishes for it
//! (`to_json`) reads back as the same record, and withholding its privileged
//! part from an unprivileged peer leaves a record that still reads.

use serde_json::Value;
use userdb_proto::names::{valid_id, valid_name, valid_path};
use userdb_proto::record::{strip_privileged, GroupRecord, UserRecord};

pub fn check(data: &[u8]) {
    let Ok(record) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    check_user(&record);
    check_group(&record);
}

/// Bytes that end or split a line of `/etc/passwd` and its kin, or end a C
/// string in the caller's buffer.
fn assert_one_line(line: &str, fields: usize) {
    assert_eq!(line.split(':').count(), fields, "{line:?}");
    assert!(!line.contains(['\n', '\r', '\0']), "{line:?}");
}

fn assert_list(names: &[String]) {
    for name in names {
        assert!(valid_name(name), "{name:?}");
    }
    let joined = names.join(",");
    if !names.is_empty() {
        assert_eq!(joined.split(',').collect::<Vec<_>>(), names, "{joined:?}");
    }
}

pub fn check_user(record: &Value) {
    let Ok(user) = UserRecord::from_json(record) else {
        return;
    };
    assert!(valid_name(&user.name), "{user:?}");
    assert!(valid_id(user.uid) && valid_id(user.gid), "{user:?}");
    assert!(
        valid_path(&user.home) && valid_path(&user.shell),
        "{user:?}"
    );
    assert_one_line(
        &format!(
            "{}:x:{}:{}:{}:{}:{}",
            user.name, user.uid, user.gid, user.gecos, user.home, user.shell
        ),
        7,
    );
    if let Some(shadow) = &user.shadow {
        let hash = shadow.hashed_password.as_deref().unwrap_or("!*");
        assert_one_line(&format!("{}:{hash}:::::::", user.name), 9);
    }

    assert_eq!(UserRecord::from_json(&user.to_json()).as_ref(), Ok(&user));
    let mut unprivileged = record.clone();
    strip_privileged(&mut unprivileged);
    let expected = UserRecord {
        shadow: None,
        ..user
    };
    assert_eq!(UserRecord::from_json(&unprivileged), Ok(expected));
}

pub fn check_group(record: &Value) {
    let Ok(group) = GroupRecord::from_json(record) else {
        return;
    };
    assert!(valid_name(&group.name), "{group:?}");
    assert!(valid_id(group.gid), "{group:?}");
    assert_list(&group.members);
    let members = group.members.join(",");
    assert_one_line(&format!("{}:x:{}:{members}", group.name, group.gid), 4);
    if let Some(shadow) = &group.shadow {
        assert_list(&shadow.administrators);
        let hash = shadow.hashed_password.as_deref().unwrap_or("!*");
        let admins = shadow.administrators.join(",");
        assert_one_line(&format!("{}:{hash}:{admins}:{members}", group.name), 4);
    }

    assert_eq!(
        GroupRecord::from_json(&group.to_json()).as_ref(),
        Ok(&group)
    );
    let mut unprivileged = record.clone();
    strip_privileged(&mut unprivileged);
    let expected = GroupRecord {
        shadow: None,
        ..group
    };
    assert_eq!(GroupRecord::from_json(&unprivileged), Ok(expected));
}
