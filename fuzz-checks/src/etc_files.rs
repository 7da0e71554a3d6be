//! The broker's parsers of `/etc/passwd`, `/etc/group`, `/etc/shadow` and
//! `/etc/gshadow`, which read whatever an administrator left there: any
//! bytes give entries that pass the gate every record passes (and so cannot
//! corrupt a line), each as the broker then holds it renders the same
//! record, no file gives more entries than it has lines, and every problem
//! is one log line that names the file.

use std::path::Path;

use userdb_broker::model::{Group, User};
use userdb_broker::sources::files::{parse_group, parse_gshadow, parse_passwd, parse_shadow};

use crate::records::{check_group, check_user};

pub fn check(data: &[u8]) {
    let path = Path::new("/etc/fuzzed");
    let lines = data.split(|&b| b == b'\n').count();
    let mut problems = Vec::new();

    let users = parse_passwd(data, path, &mut problems, std::convert::identity);
    for user in &users {
        check_user(&user.to_json());
        assert_eq!(&User::from_nss(user.clone(), true).nss(true), user);
    }
    let groups = parse_group(data, path, &mut problems, std::convert::identity);
    for group in &groups {
        check_group(&group.to_json());
        let held = Group::from_nss(group.clone(), true);
        assert_eq!(&held.nss(group.members.clone(), true), group);
    }
    let shadows = parse_shadow(data, path, &mut problems);
    let gshadows = parse_gshadow(data, path, &mut problems);
    assert!(
        [users.len(), groups.len(), shadows.len(), gshadows.len()]
            .iter()
            .all(|&entries| entries <= lines),
        "more entries than the {lines} lines"
    );

    for problem in &problems {
        assert!(problem.starts_with("/etc/fuzzed:"), "{problem:?}");
        assert!(!problem.contains(['\n', '\r', '\0']), "{problem:?}");
    }
}
