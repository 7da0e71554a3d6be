//! The end-to-end fixture: users and groups in every drop-in directory
//! beside the base `/etc` files, with shadowed records, privileged parts,
//! membership drop-ins, a group of 3000 members and a user in 200 groups.
//! Shared by the tests that check what is served and the tests that check
//! the snapshot file serves the same.

use serde_json::{json, Value};

use crate::fixture::{DropinDir, Fixture};

/// A drop-in user with every passwd field set, and the line it must produce.
pub struct User {
    pub name: &'static str,
    pub uid: u32,
    pub gecos: &'static str,
    pub home: &'static str,
    pub shell: &'static str,
}

impl User {
    pub fn record(&self) -> Value {
        json!({
            "userName": self.name, "uid": self.uid, "gid": self.uid,
            "realName": self.gecos, "homeDirectory": self.home, "shell": self.shell,
        })
    }

    pub fn passwd_line(&self) -> String {
        format!(
            "{}:x:{}:{}:{}:{}:{}",
            self.name, self.uid, self.uid, self.gecos, self.home, self.shell
        )
    }

    /// The user's own group (same name and id, no members).
    pub fn group_record(&self) -> Value {
        json!({ "groupName": self.name, "gid": self.uid })
    }

    pub fn group_line(&self) -> String {
        format!("{}:x:{}:", self.name, self.uid)
    }
}

pub const ALICE: User = User {
    name: "alice",
    uid: 1001,
    gecos: "Alice Example",
    home: "/home/alice",
    shell: "/bin/bash",
};
pub const BOB: User = User {
    name: "bob",
    uid: 1002,
    gecos: "Bob From UsrLib",
    home: "/home/bob",
    shell: "/bin/zsh",
};
/// In etc/userdb; a different `dual` with the same uid is in usr/lib/userdb.
pub const DUAL: User = User {
    name: "dual",
    uid: 1003,
    gecos: "Dual From Etc",
    home: "/home/dual",
    shell: "/bin/bash",
};
pub const DUAL_SHADOWED: User = User {
    name: "dual",
    uid: 1003,
    gecos: "Dual From UsrLib",
    home: "/srv/dual",
    shell: "/bin/sh",
};
pub const CAROL: User = User {
    name: "carol",
    uid: 1004,
    gecos: "Carol In Run",
    home: "/home/carol",
    shell: "/bin/bash",
};
pub const ERIN: User = User {
    name: "erin",
    uid: 1005,
    gecos: "Erin In UsrLocal",
    home: "/home/erin",
    shell: "/bin/bash",
};
/// Member of 200 drop-in groups.
pub const MANY: User = User {
    name: "many",
    uid: 1500,
    gecos: "In 200 Groups",
    home: "/home/many",
    shell: "/bin/bash",
};

pub const ALICE_HASH: &str = "$6$alicesalt$AliceDropinHashOnlyRootMaySee";
pub const DEVS_HASH: &str = "$6$devssalt$DevsGroupHashOnlyRootMaySee";
/// 19000 days in µs, as `lastPasswordChangeUSec`.
pub const DAYS_19000_USEC: u64 = 19_000 * 86_400 * 1_000_000;

pub const DEVS_GID: u32 = 2000;
pub const BIG_GID: u32 = 5000;
pub const BIG_MEMBERS: usize = 3000;
pub const MANY_GROUPS: u32 = 200;
pub const MANY_FIRST_GID: u32 = 6000;

pub fn big_members() -> Vec<String> {
    (0..BIG_MEMBERS).map(|i| format!("m{i:04}")).collect()
}

pub fn many_group_name(i: u32) -> String {
    format!("g{i:03}")
}

/// Users and groups from the drop-ins, in every directory the broker reads.
pub fn populated() -> Fixture {
    let f = Fixture::new();
    for (user, dir) in [
        (&ALICE, DropinDir::Etc),
        (&BOB, DropinDir::UsrLib),
        (&DUAL, DropinDir::Etc),
        (&DUAL_SHADOWED, DropinDir::UsrLib),
        (&CAROL, DropinDir::Run),
        (&ERIN, DropinDir::UsrLocalLib),
        (&MANY, DropinDir::Etc),
    ] {
        f.dropin_user(dir, &user.record());
        f.dropin_group(dir, &user.group_record());
    }
    let mut alice = ALICE.record();
    alice["lastPasswordChangeUSec"] = json!(DAYS_19000_USEC);
    f.dropin_user(DropinDir::Etc, &alice);
    f.dropin_user_privileged(
        DropinDir::Etc,
        "alice",
        &json!({ "hashedPassword": [ALICE_HASH] }),
    );

    f.dropin_group(
        DropinDir::Etc,
        &json!({ "groupName": "devs", "gid": DEVS_GID, "members": ["alice"] }),
    );
    f.dropin_group_privileged(
        DropinDir::Etc,
        "devs",
        &json!({ "hashedPassword": [DEVS_HASH] }),
    );
    // alice is already in the record: must still be listed once.
    f.dropin_membership(DropinDir::Etc, "alice", "devs");
    f.dropin_membership(DropinDir::UsrLib, "bob", "devs");
    // wheel is in /etc/group with filesuser; alice joins it by drop-in.
    f.dropin_membership(DropinDir::Etc, "alice", "wheel");

    f.dropin_group(
        DropinDir::UsrLib,
        &json!({ "groupName": "big", "gid": BIG_GID, "members": big_members() }),
    );
    for i in 0..MANY_GROUPS {
        let name = many_group_name(i);
        f.dropin_group(
            DropinDir::UsrLib,
            &json!({ "groupName": name, "gid": MANY_FIRST_GID + i }),
        );
        f.dropin_membership(DropinDir::UsrLib, "many", &name);
    }
    f
}

pub const DROPIN_USERS: [&User; 6] = [&ALICE, &BOB, &DUAL, &CAROL, &ERIN, &MANY];

/// Group lines the drop-ins define, as the broker must serve them merged.
pub fn dropin_group_lines() -> Vec<String> {
    let mut lines: Vec<String> = DROPIN_USERS.iter().map(|u| u.group_line()).collect();
    lines.push(format!("devs:x:{DEVS_GID}:alice,bob"));
    lines.push(format!("big:x:{BIG_GID}:{}", big_members().join(",")));
    lines.extend(
        (0..MANY_GROUPS).map(|i| format!("{}:x:{}:many", many_group_name(i), MANY_FIRST_GID + i)),
    );
    lines
}
