//! The broker's record model: users and groups held compactly (a few
//! hundred bytes each), shared between the sources that read them and every
//! snapshot built from them (`Arc`), and rendered on demand for each
//! interface.
//!
//! - The NSS fields are plain fields, validated once when a source reads
//!   them (`userdb_proto::record`, the same checks the module applies).
//! - Privileged data (hashes, shadow aging) sit apart and go only to root.
//! - Records that came as JSON (drop-ins, services) keep their original text
//!   for `io.systemd.UserDatabase` clients, split into the part anyone may
//!   read and the privileged part. Records from `/etc`, and drop-ins that
//!   say no more than their NSS fields (`renders_as`), are rendered from
//!   their fields.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use userdb_proto::record::{
    group_json_fields, renders_exactly, user_json_fields, GroupRecord, GroupShadow, Passwd,
    UserRecord, UserShadow,
};

/// A user or group name, shared by every record and membership that names it.
pub type Name = Arc<str>;

/// A JSON record as it arrived, split by who may read it.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonRecord {
    /// The record without anything privileged, as compact JSON text.
    pub public: Box<str>,
    /// Top-level keys only root may see (a `-privileged` drop-in's content).
    pub privileged: Option<Box<str>>,
}

impl JsonRecord {
    /// Splits `record`: `privileged` and the keys in `private_keys` go to
    /// the privileged part.
    pub fn split(mut record: Map<String, Value>, private_keys: &[&str]) -> JsonRecord {
        let mut private = Map::new();
        for key in std::iter::once("privileged").chain(private_keys.iter().copied()) {
            if let Some(value) = record.remove(key) {
                private.insert(key.to_owned(), value);
            }
        }
        JsonRecord {
            public: text(&Value::Object(record)),
            privileged: (!private.is_empty()).then(|| text(&Value::Object(private))),
        }
    }

    /// The record as `peer_privileged` may see it, and whether anything was
    /// withheld.
    fn render(&self, peer_privileged: bool) -> (Map<String, Value>, bool) {
        let mut record = parse_object(&self.public);
        match &self.privileged {
            Some(private) if peer_privileged => {
                record.extend(parse_object(private));
                (record, false)
            }
            Some(_) => (record, true),
            None => (record, false),
        }
    }
}

/// Compact JSON text of an object. Serialising a `Value` cannot fail (its
/// maps have string keys); were it to, the record would read as empty.
fn text(value: &Value) -> Box<str> {
    serde_json::to_string(value).unwrap_or_default().into()
}

fn parse_object(text: &str) -> Map<String, Value> {
    // The text was produced by `text` from an object: it parses back.
    serde_json::from_str(text).unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub name: Name,
    pub uid: u32,
    pub gid: u32,
    /// The real name, home and shell one after another, in one allocation
    /// (users are kept by the hundred thousand): see [`User::gecos`].
    text: Box<str>,
    home_at: u32,
    shell_at: u32,
    /// Groups this record says the user is a member of (`memberOf`).
    pub member_of: Box<[Name]>,
    /// False for records found only under their uid (systemd's `UID.user`
    /// drop-ins that are not a link to a `NAME.user`): they answer look-ups
    /// by uid but are neither listed nor found by name.
    pub listed: bool,
    /// Shared with the `/etc/shadow` entry it came from: one copy of each.
    pub shadow: Option<Arc<UserShadow>>,
    pub json: Option<Box<JsonRecord>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: Name,
    pub gid: u32,
    /// The members this record lists itself.
    pub members: Box<[Name]>,
    pub listed: bool,
    /// Shared with the `/etc/gshadow` entry it came from.
    pub shadow: Option<Arc<GroupShadow>>,
    pub json: Option<Box<JsonRecord>>,
}

/// The shadow part as a peer may see it: only root does.
fn for_peer<T: Clone>(shadow: &Option<Arc<T>>, peer_privileged: bool) -> Option<T> {
    shadow.as_deref().filter(|_| peer_privileged).cloned()
}

/// Whether a record holds anything only root may see.
fn has_private<T>(shadow: &Option<Arc<T>>, json: &Option<Box<JsonRecord>>) -> bool {
    shadow.is_some() || json.as_ref().is_some_and(|j| j.privileged.is_some())
}

/// `USEC` fields of a user record that carry shadow aging data: privileged
/// when they come from `/etc/shadow`.
pub use userdb_proto::record::SHADOW_FIELDS;

impl User {
    /// A user from validated NSS fields (`/etc/passwd`, PID 1's dynamic users).
    pub fn from_nss(record: UserRecord, listed: bool) -> User {
        let UserRecord {
            name,
            uid,
            gid,
            gecos,
            home,
            shell,
            shadow,
        } = record;
        // The fields were checked when read: each is far below 4 GiB.
        let offset = |len: usize| u32::try_from(len).unwrap_or(u32::MAX);
        User {
            name: name.into(),
            uid,
            gid,
            home_at: offset(gecos.len()),
            shell_at: offset(gecos.len() + home.len()),
            text: [gecos, home, shell].concat().into(),
            member_of: Box::default(),
            listed,
            shadow: shadow.map(Arc::new),
            json: None,
        }
    }

    pub fn gecos(&self) -> &str {
        self.text.get(..self.home_at as usize).unwrap_or_default()
    }

    pub fn home(&self) -> &str {
        let (from, to) = (self.home_at as usize, self.shell_at as usize);
        self.text.get(from..to).unwrap_or_default()
    }

    pub fn shell(&self) -> &str {
        self.text.get(self.shell_at as usize..).unwrap_or_default()
    }

    /// A copy that answers look-ups by uid only.
    pub fn unlisted(&self) -> User {
        User {
            listed: false,
            ..self.clone()
        }
    }

    /// The NSS view, with the shadow part only for a privileged peer.
    pub fn nss(&self, peer_privileged: bool) -> UserRecord {
        UserRecord {
            name: self.name.to_string(),
            uid: self.uid,
            gid: self.gid,
            gecos: self.gecos().to_owned(),
            home: self.home().to_owned(),
            shell: self.shell().to_owned(),
            shadow: for_peer(&self.shadow, peer_privileged),
        }
    }

    /// The passwd fields, borrowed.
    pub fn passwd(&self) -> Passwd<'_> {
        Passwd {
            name: &self.name,
            uid: self.uid,
            gid: self.gid,
            gecos: self.gecos(),
            home: self.home(),
            shell: self.shell(),
        }
    }

    /// Whether a peer without privileges misses something of this record.
    pub fn has_privileged(&self) -> bool {
        has_private(&self.shadow, &self.json)
    }

    /// Whether the NSS fields render exactly as `record`: then its text
    /// need not be kept, and a plain drop-in costs none.
    pub fn renders_as(&self, record: &Map<String, Value>) -> bool {
        renders_exactly(record, &[], |field| {
            user_json_fields(&self.passwd(), self.shadow.as_deref(), field);
        })
    }

    /// The full userdb record as the peer may see it, and whether anything
    /// was withheld.
    pub fn userdb_json(&self, peer_privileged: bool) -> (Value, bool) {
        match &self.json {
            Some(json) => {
                let (record, withheld) = json.render(peer_privileged);
                (Value::Object(record), withheld)
            }
            None => (
                self.nss(peer_privileged).to_json(),
                !peer_privileged && self.has_privileged(),
            ),
        }
    }
}

impl Group {
    /// A group from validated NSS fields (`/etc/group`, PID 1's dynamic users).
    pub fn from_nss(record: GroupRecord, listed: bool) -> Group {
        let GroupRecord {
            name,
            gid,
            members,
            shadow,
        } = record;
        Group {
            name: name.into(),
            gid,
            members: members.into_iter().map(Name::from).collect(),
            listed,
            shadow: shadow.map(Arc::new),
            json: None,
        }
    }

    /// A copy that answers look-ups by gid only.
    pub fn unlisted(&self) -> Group {
        Group {
            listed: false,
            ..self.clone()
        }
    }

    /// The NSS view with `members` in place of the record's own list.
    pub fn nss(&self, members: Vec<String>, peer_privileged: bool) -> GroupRecord {
        GroupRecord {
            name: self.name.to_string(),
            gid: self.gid,
            members,
            shadow: for_peer(&self.shadow, peer_privileged),
        }
    }

    pub fn has_privileged(&self) -> bool {
        has_private(&self.shadow, &self.json)
    }

    /// As for [`User::renders_as`], the record's own `members` aside: the
    /// merged list is rendered in their place.
    pub fn renders_as(&self, record: &Map<String, Value>) -> bool {
        renders_exactly(record, &["members"], |field| {
            group_json_fields(&self.name, self.gid, &[], self.shadow.as_deref(), field);
        })
    }

    /// The full userdb record with `members` in place of the record's own
    /// list, as the peer may see it, and whether anything was withheld.
    pub fn userdb_json(&self, members: Vec<String>, peer_privileged: bool) -> (Value, bool) {
        let (mut record, withheld) = match &self.json {
            Some(json) => json.render(peer_privileged),
            None => {
                let Value::Object(record) = self.nss(Vec::new(), peer_privileged).to_json() else {
                    return (json!({}), false);
                };
                (record, !peer_privileged && self.has_privileged())
            }
        };
        if members.is_empty() {
            record.remove("members");
        } else {
            record.insert("members".into(), json!(members));
        }
        (Value::Object(record), withheld)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_records_withhold_their_private_part() {
        let mut record = Map::new();
        record.insert("userName".into(), json!("alice"));
        record.insert("hashedPassword".into(), json!(["$6$x"]));
        record.insert("privileged".into(), json!({"sshAuthorizedKeys": ["k"]}));
        let split = JsonRecord::split(record, &["hashedPassword"]);
        let (public, withheld) = split.render(false);
        assert!(withheld);
        assert_eq!(Value::Object(public), json!({"userName": "alice"}));
        let (full, withheld) = split.render(true);
        assert!(!withheld);
        assert_eq!(full["hashedPassword"], json!(["$6$x"]));
        assert_eq!(full["privileged"]["sshAuthorizedKeys"], json!(["k"]));
    }

    #[test]
    fn files_users_render_their_shadow_only_for_root() {
        let user = User::from_nss(
            UserRecord {
                name: "bob".into(),
                uid: 1001,
                gid: 1001,
                gecos: String::new(),
                home: "/home/bob".into(),
                shell: "/bin/sh".into(),
                shadow: Some(UserShadow {
                    hashed_password: Some("$6$h".into()),
                    ..UserShadow::default()
                }),
            },
            true,
        );
        let (public, withheld) = user.userdb_json(false);
        assert!(withheld && public.get("privileged").is_none());
        let (full, withheld) = user.userdb_json(true);
        assert!(!withheld);
        assert_eq!(full["privileged"]["hashedPassword"], json!(["$6$h"]));
        assert_eq!(user.nss(false).shadow, None);
    }

    #[test]
    fn a_users_text_fields_read_back_as_given() {
        for (gecos, home, shell) in [
            ("", "/", "/bin/sh"),
            ("Jos\u{e9} \u{1f600}", "/home/j\u{f6}", ""),
        ] {
            let user = User::from_nss(
                UserRecord {
                    name: "j".into(),
                    uid: 1,
                    gid: 1,
                    gecos: gecos.into(),
                    home: home.into(),
                    shell: shell.into(),
                    shadow: None,
                },
                true,
            );
            assert_eq!(
                (user.gecos(), user.home(), user.shell()),
                (gecos, home, shell)
            );
        }
    }

    #[test]
    fn group_members_are_the_merged_list() {
        let group = Group::from_nss(
            GroupRecord {
                name: "wheel".into(),
                gid: 10,
                members: vec!["a".into()],
                shadow: None,
            },
            true,
        );
        let (record, _) = group.userdb_json(vec!["a".into(), "b".into()], false);
        assert_eq!(record["members"], json!(["a", "b"]));
        let (record, _) = group.userdb_json(Vec::new(), false);
        assert!(record.get("members").is_none());
    }
}
