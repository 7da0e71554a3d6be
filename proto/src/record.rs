//! The NSS view of systemd's JSON user and group records
//! (<https://systemd.io/USER_RECORD/>, <https://systemd.io/GROUP_RECORD/>).
//!
//! The broker keeps each record's full JSON for userdb clients; this module
//! extracts, validates and defaults exactly the fields a passwd, group,
//! shadow or gshadow entry needs. Both ends use it, so what the broker
//! accepts and what the module will pack are the same thing.

use serde_json::{json, Map, Value};

use crate::names::{valid_gecos, valid_hash, valid_id, valid_name, valid_path};

/// Shadow data; every field except the hash is in days, `None` when unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserShadow {
    pub hashed_password: Option<String>,
    pub last_change_days: Option<i64>,
    pub min_days: Option<i64>,
    pub max_days: Option<i64>,
    pub warn_days: Option<i64>,
    pub inactive_days: Option<i64>,
    pub expire_days: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
    /// Present only when the record carries privileged data.
    pub shadow: Option<UserShadow>,
}

/// A passwd entry's fields, borrowed from wherever they are held: a
/// record, the snapshot file, the broker's model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passwd<'a> {
    pub name: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub gecos: &'a str,
    pub home: &'a str,
    pub shell: &'a str,
}

impl UserRecord {
    pub fn passwd(&self) -> Passwd<'_> {
        Passwd {
            name: &self.name,
            uid: self.uid,
            gid: self.gid,
            gecos: &self.gecos,
            home: &self.home,
            shell: &self.shell,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupShadow {
    pub hashed_password: Option<String>,
    pub administrators: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
    pub shadow: Option<GroupShadow>,
}

/// Why a record was refused, in words fit for a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError(pub String);

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RecordError {}

fn err<T>(msg: impl Into<String>) -> Result<T, RecordError> {
    Err(RecordError(msg.into()))
}

const USEC_PER_DAY: u64 = 86_400 * 1_000_000;

/// Record fields (outside `privileged`) that carry shadow aging data; they
/// are withheld from unprivileged peers together with `privileged`.
pub const SHADOW_FIELDS: [&str; 6] = [
    "lastPasswordChangeUSec",
    "passwordChangeMinUSec",
    "passwordChangeMaxUSec",
    "passwordChangeWarnUSec",
    "passwordChangeInactiveUSec",
    "notAfterUSec",
];

/// Removes privileged data from a record; returns whether anything was there.
pub fn strip_privileged(record: &mut Value) -> bool {
    let Some(obj) = record.as_object_mut() else {
        return false;
    };
    let mut removed = obj.remove("privileged").is_some();
    for key in SHADOW_FIELDS {
        removed |= obj.remove(key).is_some();
    }
    removed
}

fn object(v: &Value) -> Result<&Map<String, Value>, RecordError> {
    v.as_object()
        .map_or_else(|| err("record is not a JSON object"), Ok)
}

fn opt_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, RecordError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => err(format!("field '{key}' is not a string")),
    }
}

fn opt_id(obj: &Map<String, Value>, key: &str) -> Result<Option<u32>, RecordError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(id) if valid_id(id) => Ok(Some(id)),
            _ => err(format!("field '{key}' is not a valid id: {v}")),
        },
    }
}

fn opt_days(obj: &Map<String, Value>, key: &str) -> Result<Option<i64>, RecordError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            // u64::MAX is systemd's "infinity": no limit.
            Some(u64::MAX) => Ok(None),
            Some(usec) => Ok(i64::try_from(usec / USEC_PER_DAY).ok()),
            None => err(format!("field '{key}' is not an unsigned integer")),
        },
    }
}

fn name_list(obj: &Map<String, Value>, key: &str) -> Result<Vec<String>, RecordError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item.as_str() {
                Some(s) if valid_name(s) => Ok(s.to_owned()),
                _ => err(format!("field '{key}' holds an invalid name: {item}")),
            })
            .collect(),
        Some(_) => err(format!("field '{key}' is not an array")),
    }
}

fn first_hash(obj: &Map<String, Value>) -> Result<Option<String>, RecordError> {
    match obj.get("hashedPassword") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => match items.first() {
            None => Ok(None),
            Some(Value::String(h)) if valid_hash(h) => Ok(Some(h.clone())),
            Some(_) => err("field 'hashedPassword' holds an invalid hash"),
        },
        Some(_) => err("field 'hashedPassword' is not an array"),
    }
}

fn privileged(obj: &Map<String, Value>) -> Result<Option<&Map<String, Value>>, RecordError> {
    match obj.get("privileged") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(p)) => Ok(Some(p)),
        Some(_) => err("field 'privileged' is not an object"),
    }
}

fn checked_name(obj: &Map<String, Value>, key: &str) -> Result<String, RecordError> {
    match opt_str(obj, key)? {
        Some(n) if valid_name(n) => Ok(n.to_owned()),
        Some(n) => err(format!("invalid name in '{key}': {n:?}")),
        None => err(format!("record has no '{key}'")),
    }
}

fn checked_path(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, RecordError> {
    match opt_str(obj, key)? {
        Some(p) if valid_path(p) => Ok(Some(p.to_owned())),
        Some(p) => err(format!("invalid path in '{key}': {p:?}")),
        None => Ok(None),
    }
}

/// Lowest and highest uid of systemd's "regular" disposition on Debian.
const REGULAR_UIDS: std::ops::RangeInclusive<u32> = 1000..=60000;

impl UserRecord {
    /// Extracts and validates the NSS view of a JSON user record. Defaults
    /// follow systemd: gid = uid, home `/` (`/root` for root), shell
    /// `/bin/sh` for root, `/bin/bash` for regular users, nologin otherwise.
    pub fn from_json(record: &Value) -> Result<Self, RecordError> {
        let obj = object(record)?;
        let name = checked_name(obj, "userName")?;
        let Some(uid) = opt_id(obj, "uid")? else {
            return err(format!("user '{name}' has no 'uid'"));
        };
        let gid = opt_id(obj, "gid")?.unwrap_or(uid);
        let gecos = match opt_str(obj, "realName")? {
            Some(g) if valid_gecos(g) => g.to_owned(),
            Some(g) => return err(format!("user '{name}': invalid 'realName' {g:?}")),
            None => String::new(),
        };
        let home = checked_path(obj, "homeDirectory")?
            .unwrap_or_else(|| if uid == 0 { "/root" } else { "/" }.to_owned());
        let shell = checked_path(obj, "shell")?.unwrap_or_else(|| {
            if uid == 0 {
                "/bin/sh"
            } else if REGULAR_UIDS.contains(&uid) {
                "/bin/bash"
            } else {
                "/usr/sbin/nologin"
            }
            .to_owned()
        });
        let shadow = match privileged(obj)? {
            Some(p) => Some(UserShadow {
                hashed_password: first_hash(p)?,
                last_change_days: opt_days(obj, "lastPasswordChangeUSec")?,
                min_days: opt_days(obj, "passwordChangeMinUSec")?,
                max_days: opt_days(obj, "passwordChangeMaxUSec")?,
                warn_days: opt_days(obj, "passwordChangeWarnUSec")?,
                inactive_days: opt_days(obj, "passwordChangeInactiveUSec")?,
                expire_days: opt_days(obj, "notAfterUSec")?,
            }),
            None => None,
        };
        Ok(UserRecord {
            name,
            uid,
            gid,
            gecos,
            home,
            shell,
            shadow,
        })
    }

    /// The JSON record for a user read from `/etc/passwd` (and `/etc/shadow`).
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        user_json_fields(&self.passwd(), self.shadow.as_ref(), |key, field| {
            obj.insert(key.into(), field.to_value());
        });
        Value::Object(obj)
    }
}

/// One field of a record's JSON rendering, borrowed from the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonField<'a> {
    Text(&'a str),
    Number(u64),
    Names(&'a [String]),
    /// `{"hashedPassword": [the hash]}`, the list empty without one.
    Privileged(Option<&'a str>),
}

impl JsonField<'_> {
    pub fn to_value(self) -> Value {
        match self {
            JsonField::Text(text) => json!(text),
            JsonField::Number(n) => json!(n),
            JsonField::Names(names) => json!(names),
            JsonField::Privileged(hash) => json!({ "hashedPassword": hash.as_slice() }),
        }
    }

    /// Whether `value` is what [`Self::to_value`] gives, without making it.
    pub fn is(self, value: &Value) -> bool {
        let strings_are = |list: &Value, strings: &mut dyn ExactSizeIterator<Item = &str>| {
            list.as_array().is_some_and(|items| {
                items.len() == strings.len()
                    && items
                        .iter()
                        .zip(strings)
                        .all(|(item, s)| item.as_str() == Some(s))
            })
        };
        match self {
            JsonField::Text(text) => value.as_str() == Some(text),
            // `as_u64` is `None` for a float or a negative number, which a
            // rendered id or time never is.
            JsonField::Number(n) => value.as_u64() == Some(n),
            JsonField::Names(names) => strings_are(value, &mut names.iter().map(String::as_str)),
            JsonField::Privileged(hash) => value.as_object().is_some_and(|object| {
                object.len() == 1
                    && object
                        .get("hashedPassword")
                        .is_some_and(|hashes| strings_are(hashes, &mut hash.into_iter()))
            }),
        }
    }
}

/// The fields of a user's JSON rendering, in no particular order: the
/// one definition of what [`UserRecord::to_json`] holds.
pub fn user_json_fields<'a>(
    passwd: &Passwd<'a>,
    shadow: Option<&'a UserShadow>,
    mut field: impl FnMut(&'static str, JsonField<'a>),
) {
    field("userName", JsonField::Text(passwd.name));
    field("uid", JsonField::Number(passwd.uid.into()));
    field("gid", JsonField::Number(passwd.gid.into()));
    if !passwd.gecos.is_empty() {
        field("realName", JsonField::Text(passwd.gecos));
    }
    field("homeDirectory", JsonField::Text(passwd.home));
    field("shell", JsonField::Text(passwd.shell));
    if let Some(s) = shadow {
        let days = [
            ("lastPasswordChangeUSec", s.last_change_days),
            ("passwordChangeMinUSec", s.min_days),
            ("passwordChangeMaxUSec", s.max_days),
            ("passwordChangeWarnUSec", s.warn_days),
            ("passwordChangeInactiveUSec", s.inactive_days),
            ("notAfterUSec", s.expire_days),
        ];
        for (key, value) in days {
            if let Some(d) = value.and_then(|d| u64::try_from(d).ok()) {
                field(key, JsonField::Number(d.saturating_mul(USEC_PER_DAY)));
            }
        }
        field(
            "privileged",
            JsonField::Privileged(s.hashed_password.as_deref()),
        );
    }
}

/// The fields of a group's JSON rendering: the one definition of what
/// [`GroupRecord::to_json`] holds.
pub fn group_json_fields<'a>(
    name: &'a str,
    gid: u32,
    members: &'a [String],
    shadow: Option<&'a GroupShadow>,
    mut field: impl FnMut(&'static str, JsonField<'a>),
) {
    field("groupName", JsonField::Text(name));
    field("gid", JsonField::Number(gid.into()));
    if !members.is_empty() {
        field("members", JsonField::Names(members));
    }
    if let Some(s) = shadow {
        if !s.administrators.is_empty() {
            field("administrators", JsonField::Names(&s.administrators));
        }
        field(
            "privileged",
            JsonField::Privileged(s.hashed_password.as_deref()),
        );
    }
}

/// Whether `record`, its keys `besides` aside, holds exactly the fields
/// `render` gives (none of them `besides`), and no other.
pub fn renders_exactly(
    record: &Map<String, Value>,
    besides: &[&str],
    render: impl FnOnce(&mut dyn FnMut(&'static str, JsonField<'_>)),
) -> bool {
    let mut fields = 0;
    let mut same = true;
    render(&mut |key, field| {
        fields += 1;
        same = same && record.get(key).is_some_and(|value| field.is(value));
    });
    let own = record.len()
        - besides
            .iter()
            .filter(|key| record.contains_key(**key))
            .count();
    same && fields == own
}

impl GroupRecord {
    /// Extracts and validates the NSS view of a JSON group record.
    pub fn from_json(record: &Value) -> Result<Self, RecordError> {
        let obj = object(record)?;
        let name = checked_name(obj, "groupName")?;
        let Some(gid) = opt_id(obj, "gid")? else {
            return err(format!("group '{name}' has no 'gid'"));
        };
        let members = name_list(obj, "members")?;
        let shadow = match privileged(obj)? {
            Some(p) => Some(GroupShadow {
                hashed_password: first_hash(p)?,
                administrators: name_list(obj, "administrators")?,
            }),
            None => None,
        };
        Ok(GroupRecord {
            name,
            gid,
            members,
            shadow,
        })
    }

    /// The JSON record for a group read from `/etc/group` (and `/etc/gshadow`).
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        group_json_fields(
            &self.name,
            self.gid,
            &self.members,
            self.shadow.as_ref(),
            |key, field| {
                obj.insert(key.into(), field.to_value());
            },
        );
        Value::Object(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_defaults_follow_systemd() {
        let u = UserRecord::from_json(&json!({"userName": "alice", "uid": 1500})).unwrap();
        assert_eq!(u.gid, 1500);
        assert_eq!(u.home, "/");
        assert_eq!(u.shell, "/bin/bash");
        assert_eq!(u.gecos, "");
        assert_eq!(u.shadow, None);
        let svc = UserRecord::from_json(&json!({"userName": "svc", "uid": 900})).unwrap();
        assert_eq!(svc.shell, "/usr/sbin/nologin");
        let root = UserRecord::from_json(&json!({"userName": "root", "uid": 0})).unwrap();
        assert_eq!(
            (root.home.as_str(), root.shell.as_str()),
            ("/root", "/bin/sh")
        );
    }

    #[test]
    fn user_refuses_hostile_fields() {
        for bad in [
            json!({"userName": "a", "uid": -1}),
            json!({"userName": "a", "uid": 4294967295u64}),
            json!({"userName": "a", "uid": 65535}),
            json!({"userName": "a", "uid": 5000000000u64}),
            json!({"userName": "a", "uid": "1000"}),
            json!({"userName": "a:b", "uid": 1}),
            json!({"userName": "a\u{0}b", "uid": 1}),
            json!({"userName": "a", "uid": 1, "realName": "x:0:0:"}),
            json!({"userName": "a", "uid": 1, "realName": "x\u{0}"}),
            json!({"userName": "a", "uid": 1, "homeDirectory": ""}),
            json!({"userName": "a", "uid": 1, "shell": "/bin/sh\n"}),
            json!({"userName": "a", "uid": 1, "privileged": {"hashedPassword": ["a:b"]}}),
            json!({"userName": "a", "uid": 1, "privileged": "x"}),
            json!({"uid": 1}),
            json!(["not", "an", "object"]),
        ] {
            assert!(UserRecord::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_field_is_exactly_the_value_it_renders_as() {
        let names = ["alice".to_owned(), "bob".to_owned()];
        let fields = [
            JsonField::Text("/home/alice"),
            JsonField::Number(1500),
            JsonField::Names(&names),
            JsonField::Names(&[]),
            JsonField::Privileged(Some("$6$x")),
            JsonField::Privileged(None),
        ];
        for (i, field) in fields.iter().enumerate() {
            for (j, other) in fields.iter().enumerate() {
                assert_eq!(
                    field.is(&other.to_value()),
                    i == j,
                    "{field:?} is {other:?}"
                );
            }
        }
        for (field, unlike) in [
            (JsonField::Number(1500), json!(1500.0)),
            (JsonField::Number(1500), json!("1500")),
            (JsonField::Text("a"), json!(["a"])),
            (JsonField::Names(&names), json!(["alice"])),
            (JsonField::Names(&names), json!(["alice", 2])),
            (
                JsonField::Privileged(Some("$6$x")),
                json!({"hashedPassword": ["$6$x"], "sshAuthorizedKeys": []}),
            ),
            (
                JsonField::Privileged(Some("$6$x")),
                json!({"hashedPassword": "$6$x"}),
            ),
        ] {
            assert!(!field.is(&unlike), "{field:?} is {unlike}");
        }
    }

    #[test]
    fn a_record_renders_exactly_when_it_holds_its_fields_and_no_other() {
        let alice = UserRecord::from_json(&json!({
            "userName": "alice", "uid": 1500, "realName": "Alice",
            "privileged": {"hashedPassword": ["$6$x"]},
        }))
        .unwrap();
        let render = |field: &mut dyn FnMut(&'static str, JsonField<'_>)| {
            user_json_fields(&alice.passwd(), alice.shadow.as_ref(), field);
        };
        let Value::Object(mut rendered) = alice.to_json() else {
            panic!("not an object");
        };
        assert!(renders_exactly(&rendered, &[], render));
        rendered.insert("disposition".into(), json!("regular"));
        assert!(!renders_exactly(&rendered, &[], render));
        assert!(renders_exactly(&rendered, &["disposition"], render));
        rendered.remove("disposition");
        rendered.remove("shell");
        assert!(!renders_exactly(&rendered, &[], render));
    }

    #[test]
    fn user_round_trip_with_shadow() {
        let u = UserRecord {
            name: "bob".into(),
            uid: 1001,
            gid: 100,
            gecos: "Bob,,,".into(),
            home: "/home/bob".into(),
            shell: "/bin/zsh".into(),
            shadow: Some(UserShadow {
                hashed_password: Some("$6$salt$hash".into()),
                last_change_days: Some(19000),
                min_days: Some(0),
                max_days: Some(99999),
                warn_days: Some(7),
                inactive_days: None,
                expire_days: None,
            }),
        };
        assert_eq!(UserRecord::from_json(&u.to_json()).unwrap(), u);
    }

    #[test]
    fn strip_removes_privileged_and_aging() {
        let u = UserRecord::from_json(&json!({
            "userName": "bob", "uid": 1001, "lastPasswordChangeUSec": 0u64,
            "privileged": {"hashedPassword": ["$6$x"]}
        }))
        .unwrap();
        let mut v = u.to_json();
        assert!(strip_privileged(&mut v));
        assert!(v.get("privileged").is_none());
        assert!(v.get("lastPasswordChangeUSec").is_none());
        assert!(!strip_privileged(&mut v));
        assert_eq!(UserRecord::from_json(&v).unwrap().shadow, None);
    }

    #[test]
    fn group_members_and_shadow() {
        let g = GroupRecord::from_json(&json!({
            "groupName": "wheel", "gid": 10, "members": ["alice", "bob"],
            "administrators": ["alice"], "privileged": {"hashedPassword": ["!"]}
        }))
        .unwrap();
        assert_eq!(g.members, ["alice", "bob"]);
        let shadow = g.shadow.clone().unwrap();
        assert_eq!(shadow.hashed_password.as_deref(), Some("!"));
        assert_eq!(shadow.administrators, ["alice"]);
        assert_eq!(GroupRecord::from_json(&g.to_json()).unwrap(), g);
        assert!(
            GroupRecord::from_json(&json!({"groupName": "g", "gid": 1, "members": ["a,b"]}))
                .is_err()
        );
        assert!(GroupRecord::from_json(&json!({"groupName": "g"})).is_err());
    }
}
