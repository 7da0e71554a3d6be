//! Methods, parameters and replies of the two interfaces the broker serves.
//!
//! `io.systemd.UserDatabase` is systemd's userdb API, so any userdb client
//! (nss-systemd, userdbctl) can use the broker. `io.userdb.Broker` has the
//! same three look-ups plus the options only the module needs, and status.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `org.varlink.service`, which every Varlink service implements.
pub mod varlink_service {
    pub const INTERFACE: &str = "org.varlink.service";
    pub const GET_INFO: &str = "org.varlink.service.GetInfo";
    pub const GET_INTERFACE_DESCRIPTION: &str = "org.varlink.service.GetInterfaceDescription";
    pub const IDL: &str = include_str!("../idl/org.varlink.service.varlink");
}

pub mod userdb {
    pub const INTERFACE: &str = "io.systemd.UserDatabase";
    pub const IDL: &str = include_str!("../idl/io.systemd.UserDatabase.varlink");
    pub const GET_USER_RECORD: &str = "io.systemd.UserDatabase.GetUserRecord";
    pub const GET_GROUP_RECORD: &str = "io.systemd.UserDatabase.GetGroupRecord";
    pub const GET_MEMBERSHIPS: &str = "io.systemd.UserDatabase.GetMemberships";

    pub const NO_RECORD_FOUND: &str = "io.systemd.UserDatabase.NoRecordFound";
    pub const BAD_SERVICE: &str = "io.systemd.UserDatabase.BadService";
    pub const SERVICE_NOT_AVAILABLE: &str = "io.systemd.UserDatabase.ServiceNotAvailable";
    pub const CONFLICTING_RECORD_FOUND: &str = "io.systemd.UserDatabase.ConflictingRecordFound";
    pub const ENUMERATION_NOT_SUPPORTED: &str = "io.systemd.UserDatabase.EnumerationNotSupported";
}

pub mod broker {
    pub const INTERFACE: &str = "io.userdb.Broker";
    pub const IDL: &str = include_str!("../idl/io.userdb.Broker.varlink");
    pub const GET_USER_RECORD: &str = "io.userdb.Broker.GetUserRecord";
    pub const GET_GROUP_RECORD: &str = "io.userdb.Broker.GetGroupRecord";
    pub const GET_MEMBERSHIPS: &str = "io.userdb.Broker.GetMemberships";
    pub const GET_STATUS: &str = "io.userdb.Broker.GetStatus";
    pub const FLUSH: &str = "io.userdb.Broker.Flush";

    /// Not found, but some sources could not be asked.
    pub const SOURCES_UNAVAILABLE: &str = "io.userdb.Broker.SourcesUnavailable";
}

/// Every interface the broker serves, with its description.
pub const INTERFACES: [(&str, &str); 3] = [
    (varlink_service::INTERFACE, varlink_service::IDL),
    (userdb::INTERFACE, userdb::IDL),
    (broker::INTERFACE, broker::IDL),
];

/// What the module knows about its caller that changes the answer. Only the
/// `io.userdb.Broker` methods read these; on `io.systemd.UserDatabase` they
/// are ignored so systemd's clients always get the full view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LookupOptions {
    /// `files` stands before `broker` on the caller's nsswitch.conf line, so
    /// glibc has already read `/etc/passwd`/`/etc/group` itself. The broker
    /// then leaves out what came only from those files: records in
    /// enumerations, members in group records, memberships. A group record
    /// that exists in `/etc/group` is still returned by key (carrying only the
    /// extra members) so that `[SUCCESS=merge]` has something to merge.
    #[serde(default, skip_serializing_if = "is_false")]
    pub caller_reads_files: bool,
    /// Leave out every source served by PID 1 (`SYSTEMD_NSS_DYNAMIC_BYPASS=1`
    /// or generator context in the caller).
    #[serde(default, skip_serializing_if = "is_false")]
    pub dynamic_bypass: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(flatten)]
    pub options: LookupOptions,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(flatten)]
    pub options: LookupOptions,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembershipQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(flatten)]
    pub options: LookupOptions,
}

/// Reply of GetUserRecord and GetGroupRecord. `incomplete` is true when the
/// privileged part was withheld from the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordReply {
    pub record: Value,
    #[serde(default)]
    pub incomplete: bool,
}

/// Reply of GetMemberships. `gid` is sent only on `io.userdb.Broker`, so that
/// `initgroups` needs one round trip instead of one per group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembershipReply {
    pub user_name: String,
    pub group_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_flatten_into_query() {
        let q: UserQuery = serde_json::from_value(serde_json::json!({
            "userName": "alice", "service": "io.userdb.Broker",
            "callerReadsFiles": true
        }))
        .unwrap();
        assert_eq!(q.user_name.as_deref(), Some("alice"));
        assert!(q.options.caller_reads_files);
        assert!(!q.options.dynamic_bypass);
    }

    #[test]
    fn unknown_fields_are_ignored_for_newer_clients() {
        let q: GroupQuery = serde_json::from_value(serde_json::json!({
            "groupName": "wheel", "service": "io.userdb.Broker", "fuzzyNames": ["x"]
        }))
        .unwrap();
        assert_eq!(q.group_name.as_deref(), Some("wheel"));
    }

    #[test]
    fn negative_uid_is_refused() {
        let r: Result<UserQuery, _> = serde_json::from_value(serde_json::json!({"uid": -1}));
        assert!(r.is_err());
    }

    #[test]
    fn default_options_are_not_serialised() {
        let v = serde_json::to_value(UserQuery {
            uid: Some(0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(v, serde_json::json!({"uid": 0}));
    }
}
