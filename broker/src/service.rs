//! Method dispatch: one Varlink call in, its replies out.
//!
//! Serves `io.systemd.UserDatabase` (systemd's userdb API, so any userdb
//! client can use the broker), `io.userdb.Broker` (the same look-ups with
//! [`LookupOptions`], plus status) and `org.varlink.service.GetInfo`.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use userdb_proto::api::{self, GroupQuery, LookupOptions, MembershipQuery, UserQuery};
use userdb_proto::record::strip_privileged;
use userdb_proto::varlink::{errors, Call, Reply};
use userdb_proto::BROKER_SERVICE;

use crate::peer::Peer;
use crate::resolve::{Key, Resolver};

const GET_INFO: &str = "org.varlink.service.GetInfo";
const VARLINK_SERVICE_INTERFACE: &str = "org.varlink.service";

/// Receives the replies of one call, in order.
pub type ReplySink<'a> = dyn FnMut(Reply) -> io::Result<()> + 'a;

pub struct Service {
    resolver: Resolver,
    connections: Arc<AtomicUsize>,
}

/// Which interface a look-up came in on: options and `gid` in membership
/// replies exist only on the broker's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interface {
    UserDatabase,
    Broker,
}

impl Service {
    pub fn new(resolver: Resolver) -> Self {
        Service {
            resolver,
            connections: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The open-connection counter the server keeps, shown in status.
    pub fn connection_counter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.connections)
    }

    /// Answers one call. Errors are Varlink error replies; only a failure to
    /// deliver a reply is returned as `Err`.
    pub fn handle(&self, call: &Call, peer: &Peer, sink: &mut ReplySink<'_>) -> io::Result<()> {
        let mut out = Replies::new(sink, call.more);
        let ctx = Context {
            resolver: &self.resolver,
            peer,
        };
        match call.method.as_str() {
            GET_INFO => out.single(get_info()),
            api::userdb::GET_USER_RECORD => ctx.get_user(Interface::UserDatabase, call, &mut out),
            api::broker::GET_USER_RECORD => ctx.get_user(Interface::Broker, call, &mut out),
            api::userdb::GET_GROUP_RECORD => ctx.get_group(Interface::UserDatabase, call, &mut out),
            api::broker::GET_GROUP_RECORD => ctx.get_group(Interface::Broker, call, &mut out),
            api::userdb::GET_MEMBERSHIPS => {
                ctx.get_memberships(Interface::UserDatabase, call, &mut out)
            }
            api::broker::GET_MEMBERSHIPS => ctx.get_memberships(Interface::Broker, call, &mut out),
            api::broker::GET_STATUS => out.single(self.status()),
            other => out.error(unknown_method(other)),
        }
    }

    fn status(&self) -> Value {
        let snapshot = self.resolver.snapshot();
        json!({
            "generation": snapshot.generation,
            "snapshotAgeUSec": snapshot.built_at.elapsed().as_micros() as u64,
            "connections": self.connections.load(Ordering::Relaxed),
            "sources": self.resolver.sources_status(),
        })
    }
}

fn get_info() -> Value {
    json!({
        "vendor": "userdb-broker",
        "product": "userdb-brokerd",
        "version": env!("CARGO_PKG_VERSION"),
        "url": "https://systemd.io/USER_GROUP_API/",
        "interfaces": [
            VARLINK_SERVICE_INTERFACE,
            api::userdb::INTERFACE,
            api::broker::INTERFACE,
        ],
    })
}

fn unknown_method(method: &str) -> Reply {
    let interface = method.rsplit_once('.').map_or("", |(i, _)| i);
    if [
        VARLINK_SERVICE_INTERFACE,
        api::userdb::INTERFACE,
        api::broker::INTERFACE,
    ]
    .contains(&interface)
    {
        error_with(errors::METHOD_NOT_FOUND, json!({ "method": method }))
    } else {
        error_with(
            errors::INTERFACE_NOT_FOUND,
            json!({ "interface": interface }),
        )
    }
}

fn error_with(name: &str, parameters: Value) -> Reply {
    Reply {
        parameters: Some(parameters),
        continues: false,
        error: Some(name.to_owned()),
    }
}

/// Sends replies, marking all but the last of a stream with `continues`.
struct Replies<'s, 'a> {
    sink: &'s mut ReplySink<'a>,
    more: bool,
    pending: Option<Value>,
}

impl<'s, 'a> Replies<'s, 'a> {
    fn new(sink: &'s mut ReplySink<'a>, more: bool) -> Self {
        Replies {
            sink,
            more,
            pending: None,
        }
    }

    fn single(&mut self, parameters: Value) -> io::Result<()> {
        (self.sink)(Reply::ok(parameters, false))
    }

    fn error(&mut self, reply: Reply) -> io::Result<()> {
        (self.sink)(reply)
    }

    /// Queues one item of a stream; the previous one goes out marked.
    fn item(&mut self, parameters: Value) -> io::Result<()> {
        if let Some(previous) = self.pending.replace(parameters) {
            (self.sink)(Reply::ok(previous, true))?;
        }
        Ok(())
    }

    /// Ends a stream: the last item unmarked, or NoRecordFound if none.
    fn finish(&mut self) -> io::Result<()> {
        match self.pending.take() {
            Some(last) => (self.sink)(Reply::ok(last, false)),
            None => (self.sink)(Reply::error(api::userdb::NO_RECORD_FOUND)),
        }
    }

    /// Streams are allowed only to clients that asked for `more`.
    fn require_more(&mut self) -> io::Result<bool> {
        if !self.more {
            self.error(Reply::error(errors::EXPECTED_MORE))?;
        }
        Ok(self.more)
    }
}

struct Context<'a> {
    resolver: &'a Resolver,
    peer: &'a Peer,
}

/// Parses a query and checks its `service`, or says why not.
fn parse_query<Q: DeserializeOwned>(
    call: &Call,
    service: impl Fn(&Q) -> Option<&str>,
) -> Result<Q, Reply> {
    let parameters = match &call.parameters {
        Value::Null => Value::Object(Map::new()),
        other => other.clone(),
    };
    let query: Q = serde_json::from_value(parameters).map_err(|e| {
        error_with(
            errors::INVALID_PARAMETER,
            json!({ "parameter": e.to_string() }),
        )
    })?;
    match service(&query) {
        Some(s) if s != BROKER_SERVICE => Err(Reply::error(api::userdb::BAD_SERVICE)),
        _ => Ok(query),
    }
}

/// The options a query may use on the interface it came in on.
fn options_for(interface: Interface, options: LookupOptions) -> LookupOptions {
    match interface {
        Interface::Broker => options,
        Interface::UserDatabase => LookupOptions::default(),
    }
}

/// The id a record carries under `field`.
fn id_of(record: &Value, field: &str) -> Option<u32> {
    record
        .get(field)
        .and_then(Value::as_u64)
        .and_then(|id| u32::try_from(id).ok())
}

impl Context<'_> {
    /// The record as this peer may see it, with `service` filled in.
    fn render(&self, mut record: Value) -> Value {
        let incomplete = !self.peer.privileged() && strip_privileged(&mut record);
        if let Some(obj) = record.as_object_mut() {
            obj.entry("service")
                .or_insert_with(|| json!(BROKER_SERVICE));
        }
        json!({ "record": record, "incomplete": incomplete })
    }

    fn get_user(&self, interface: Interface, call: &Call, out: &mut Replies) -> io::Result<()> {
        let query: UserQuery = match parse_query(call, |q: &UserQuery| q.service.as_deref()) {
            Ok(q) => q,
            Err(reply) => return out.error(reply),
        };
        let options = options_for(interface, query.options);
        let found = match (&query.user_name, query.uid) {
            (None, None) => {
                if out.require_more()? {
                    self.resolver
                        .users(options, &mut |picked| out.item(self.render(picked.record)))?;
                    out.finish()?;
                }
                return Ok(());
            }
            (Some(name), uid) => match self.resolver.user(Key::Name(name), options) {
                Some(user) if uid.is_some_and(|uid| id_of(&user.record, "uid") != Some(uid)) => {
                    return out.error(Reply::error(api::userdb::CONFLICTING_RECORD_FOUND))
                }
                found => found,
            },
            (None, Some(uid)) => self.resolver.user(Key::Id(uid), options),
        };
        match found {
            Some(user) => out.single(self.render(user.record)),
            None => out.error(Reply::error(api::userdb::NO_RECORD_FOUND)),
        }
    }

    fn get_group(&self, interface: Interface, call: &Call, out: &mut Replies) -> io::Result<()> {
        let query: GroupQuery = match parse_query(call, |q: &GroupQuery| q.service.as_deref()) {
            Ok(q) => q,
            Err(reply) => return out.error(reply),
        };
        let options = options_for(interface, query.options);
        let found = match (&query.group_name, query.gid) {
            (None, None) => {
                if out.require_more()? {
                    self.resolver
                        .groups(options, &mut |picked| out.item(self.render(picked.record)))?;
                    out.finish()?;
                }
                return Ok(());
            }
            (Some(name), gid) => match self.resolver.group(Key::Name(name), options) {
                Some(group) if gid.is_some_and(|gid| id_of(&group.record, "gid") != Some(gid)) => {
                    return out.error(Reply::error(api::userdb::CONFLICTING_RECORD_FOUND))
                }
                found => found,
            },
            (None, Some(gid)) => self.resolver.group(Key::Id(gid), options),
        };
        match found {
            Some(group) => out.single(self.render(group.record)),
            None => out.error(Reply::error(api::userdb::NO_RECORD_FOUND)),
        }
    }

    fn get_memberships(
        &self,
        interface: Interface,
        call: &Call,
        out: &mut Replies,
    ) -> io::Result<()> {
        let query: MembershipQuery =
            match parse_query(call, |q: &MembershipQuery| q.service.as_deref()) {
                Ok(q) => q,
                Err(reply) => return out.error(reply),
            };
        let options = options_for(interface, query.options);
        let single = query.user_name.is_some() && query.group_name.is_some();
        if !single && !out.require_more()? {
            return Ok(());
        }
        let memberships = self.resolver.memberships(
            query.user_name.as_deref(),
            query.group_name.as_deref(),
            options,
        );
        for m in memberships {
            let mut reply = json!({ "userName": m.user, "groupName": m.group });
            if interface == Interface::Broker {
                if let Some(gid) = self.resolver.gid_of(&m.group, options) {
                    reply["gid"] = json!(gid);
                }
            }
            out.item(reply)?;
        }
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::{merge, LoadedSource, Priority};
    use crate::sources::{SourceData, SourceGroup, SourceKind, SourceUser};
    use std::time::Duration;
    use userdb_proto::record::{GroupRecord, UserRecord, UserShadow};

    const ROOT: Peer = Peer {
        pid: 1234,
        uid: 0,
        gid: 0,
    };
    const USER: Peer = Peer {
        pid: 1234,
        uid: 1000,
        gid: 1000,
    };

    fn files_user(name: &str, uid: u32, hash: Option<&str>) -> SourceUser {
        let record = UserRecord {
            name: name.into(),
            uid,
            gid: uid,
            gecos: String::new(),
            home: "/".into(),
            shell: "/bin/sh".into(),
            shadow: hash.map(|h| UserShadow {
                hashed_password: Some(h.into()),
                last_change_days: Some(19000),
                ..Default::default()
            }),
        }
        .to_json();
        SourceUser {
            name: name.into(),
            uid,
            record,
            listed: true,
        }
    }

    fn plain_group(name: &str, gid: u32, members: &[&str]) -> SourceGroup {
        let record = GroupRecord {
            name: name.into(),
            gid,
            members: members.iter().map(|m| m.to_string()).collect(),
            shadow: None,
        }
        .to_json();
        SourceGroup {
            name: name.into(),
            gid,
            record,
            listed: true,
        }
    }

    fn service() -> Service {
        let files = SourceData {
            users: vec![
                files_user("root", 0, Some("$6$root")),
                files_user("alice", 1000, None),
            ],
            groups: vec![
                plain_group("wheel", 10, &["alice"]),
                plain_group("users", 100, &[]),
            ],
            ..Default::default()
        };
        let dropins = SourceData {
            users: vec![SourceUser {
                name: "bob".into(),
                uid: 2000,
                record: json!({"userName": "bob", "uid": 2000, "service": "io.example.Directory"}),
                listed: true,
            }],
            groups: vec![plain_group("devs", 500, &["bob"])],
            memberships: vec![
                ("bob".into(), "wheel".into()),
                ("alice".into(), "wheel".into()),
            ],
            problems: Vec::new(),
        };
        let load = |name: &str, kind, data| LoadedSource {
            name: name.into(),
            kind,
            data,
            load_time: Duration::from_micros(50),
        };
        let merged = merge(
            vec![
                load("files", SourceKind::Files, files),
                load("dropins", SourceKind::DropIns, dropins),
            ],
            3,
        );
        let resolver = Resolver::local_only(
            merged.snapshot,
            Priority::new(vec!["files".into(), "dropins".into()]),
        );
        Service::new(resolver)
    }

    fn call(
        service: &Service,
        peer: Peer,
        method: &str,
        parameters: Value,
        more: bool,
    ) -> Vec<Reply> {
        let call = Call {
            method: method.into(),
            parameters,
            more,
            oneway: false,
        };
        let mut replies = Vec::new();
        service
            .handle(&call, &peer, &mut |r| {
                replies.push(r);
                Ok(())
            })
            .unwrap();
        replies
    }

    fn error_of(replies: &[Reply]) -> Option<&str> {
        assert_eq!(replies.len(), 1, "{replies:?}");
        replies[0].error.as_deref()
    }

    fn record_of(reply: &Reply) -> &Value {
        &reply.parameters.as_ref().unwrap()["record"]
    }

    const SVC: &str = BROKER_SERVICE;

    #[test]
    fn user_by_name_and_uid() {
        let s = service();
        for params in [
            json!({"userName": "alice", "service": SVC}),
            json!({"uid": 1000, "service": SVC}),
        ] {
            let r = call(&s, USER, api::userdb::GET_USER_RECORD, params, false);
            assert_eq!(error_of(&r), None);
            assert_eq!(record_of(&r[0])["userName"], "alice");
            assert_eq!(record_of(&r[0])["service"], SVC);
            assert_eq!(r[0].parameters.as_ref().unwrap()["incomplete"], false);
            assert!(!r[0].continues);
        }
        let bob = call(
            &s,
            USER,
            api::userdb::GET_USER_RECORD,
            json!({"uid": 2000, "service": SVC}),
            false,
        );
        assert_eq!(record_of(&bob[0])["service"], "io.example.Directory");
    }

    #[test]
    fn lookup_errors() {
        let s = service();
        let m = api::userdb::GET_USER_RECORD;
        let cases = [
            (
                json!({"userName": "nobody-here", "service": SVC}),
                api::userdb::NO_RECORD_FOUND,
            ),
            (
                json!({"uid": 4242, "service": SVC}),
                api::userdb::NO_RECORD_FOUND,
            ),
            (
                json!({"userName": "alice", "service": "io.systemd.Multiplexer"}),
                api::userdb::BAD_SERVICE,
            ),
            (
                json!({"userName": "alice", "uid": 0, "service": SVC}),
                api::userdb::CONFLICTING_RECORD_FOUND,
            ),
            (json!({"service": SVC}), errors::EXPECTED_MORE),
            (
                json!({"uid": -5, "service": SVC}),
                errors::INVALID_PARAMETER,
            ),
            (json!("not an object"), errors::INVALID_PARAMETER),
        ];
        for (params, expected) in cases {
            assert_eq!(
                error_of(&call(&s, USER, m, params.clone(), false)),
                Some(expected),
                "{params}"
            );
        }
        assert_eq!(
            error_of(&call(
                &s,
                USER,
                "io.systemd.UserDatabase.Frobnicate",
                json!({}),
                false
            )),
            Some(errors::METHOD_NOT_FOUND)
        );
        assert_eq!(
            error_of(&call(&s, USER, "com.example.Nope", json!({}), false)),
            Some(errors::INTERFACE_NOT_FOUND)
        );
    }

    #[test]
    fn privileged_data_only_for_root() {
        let s = service();
        let params = json!({"userName": "root", "service": SVC});
        let as_root = call(
            &s,
            ROOT,
            api::userdb::GET_USER_RECORD,
            params.clone(),
            false,
        );
        assert_eq!(
            record_of(&as_root[0])["privileged"]["hashedPassword"][0],
            "$6$root"
        );
        assert_eq!(as_root[0].parameters.as_ref().unwrap()["incomplete"], false);
        let as_user = call(&s, USER, api::userdb::GET_USER_RECORD, params, false);
        let record = record_of(&as_user[0]);
        assert!(record.get("privileged").is_none());
        assert!(record.get("lastPasswordChangeUSec").is_none());
        assert_eq!(as_user[0].parameters.as_ref().unwrap()["incomplete"], true);
    }

    #[test]
    fn enumeration_streams_with_continues() {
        let s = service();
        let r = call(
            &s,
            USER,
            api::userdb::GET_USER_RECORD,
            json!({"service": SVC}),
            true,
        );
        let names: Vec<&Value> = r.iter().map(|r| &record_of(r)["userName"]).collect();
        assert_eq!(names, ["root", "alice", "bob"]);
        assert_eq!(
            r.iter().map(|r| r.continues).collect::<Vec<_>>(),
            [true, true, false]
        );
        let skip_files = call(
            &s,
            USER,
            api::broker::GET_USER_RECORD,
            json!({"service": SVC, "callerReadsFiles": true}),
            true,
        );
        assert_eq!(skip_files.len(), 1);
        assert_eq!(record_of(&skip_files[0])["userName"], "bob");
        let ignored_on_systemd_api = call(
            &s,
            USER,
            api::userdb::GET_USER_RECORD,
            json!({"service": SVC, "callerReadsFiles": true}),
            true,
        );
        assert_eq!(ignored_on_systemd_api.len(), 3);
    }

    #[test]
    fn group_members_are_the_merged_union() {
        let s = service();
        let r = call(
            &s,
            USER,
            api::userdb::GET_GROUP_RECORD,
            json!({"groupName": "wheel", "service": SVC}),
            false,
        );
        assert_eq!(record_of(&r[0])["members"], json!(["alice", "bob"]));
        let by_key_for_files_reader = call(
            &s,
            USER,
            api::broker::GET_GROUP_RECORD,
            json!({"gid": 10, "service": SVC, "callerReadsFiles": true}),
            false,
        );
        assert_eq!(
            record_of(&by_key_for_files_reader[0])["members"],
            json!(["bob"])
        );
        let users = call(
            &s,
            USER,
            api::userdb::GET_GROUP_RECORD,
            json!({"groupName": "users"}),
            false,
        );
        assert!(record_of(&users[0]).get("members").is_none());
        let listing = call(
            &s,
            USER,
            api::broker::GET_GROUP_RECORD,
            json!({"service": SVC, "callerReadsFiles": true}),
            true,
        );
        let names: Vec<&Value> = listing.iter().map(|r| &record_of(r)["groupName"]).collect();
        assert_eq!(names, ["devs"]);
    }

    #[test]
    fn memberships_by_user_group_both_and_none() {
        let s = service();
        let m = api::userdb::GET_MEMBERSHIPS;
        let pairs = |replies: Vec<Reply>| -> Vec<(String, String)> {
            replies
                .iter()
                .map(|r| {
                    let p = r.parameters.as_ref().unwrap();
                    (
                        p["userName"].as_str().unwrap().into(),
                        p["groupName"].as_str().unwrap().into(),
                    )
                })
                .collect()
        };
        let p = |u: &str, g: &str| (u.to_owned(), g.to_owned());
        assert_eq!(
            pairs(call(
                &s,
                USER,
                m,
                json!({"userName": "bob", "service": SVC}),
                true
            )),
            [p("bob", "devs"), p("bob", "wheel")]
        );
        assert_eq!(
            pairs(call(
                &s,
                USER,
                m,
                json!({"groupName": "wheel", "service": SVC}),
                true
            )),
            [p("alice", "wheel"), p("bob", "wheel")]
        );
        assert_eq!(
            pairs(call(
                &s,
                USER,
                m,
                json!({"userName": "alice", "groupName": "wheel"}),
                false
            )),
            [p("alice", "wheel")]
        );
        assert_eq!(pairs(call(&s, USER, m, json!({}), true)).len(), 3);
        assert_eq!(
            error_of(&call(&s, USER, m, json!({"userName": "bob"}), false)),
            Some(errors::EXPECTED_MORE)
        );
        assert_eq!(
            error_of(&call(&s, USER, m, json!({"userName": "zed"}), true)),
            Some(api::userdb::NO_RECORD_FOUND)
        );
        let with_gid = call(
            &s,
            USER,
            api::broker::GET_MEMBERSHIPS,
            json!({"userName": "alice", "callerReadsFiles": true}),
            true,
        );
        assert_eq!(error_of(&with_gid), Some(api::userdb::NO_RECORD_FOUND));
        let bob_with_gid = call(
            &s,
            USER,
            api::broker::GET_MEMBERSHIPS,
            json!({"userName": "bob", "groupName": "devs", "callerReadsFiles": true}),
            false,
        );
        assert_eq!(
            bob_with_gid[0].parameters,
            Some(json!({"userName": "bob", "groupName": "devs", "gid": 500}))
        );
    }

    #[test]
    fn status_and_info() {
        let s = service();
        let status = call(&s, USER, api::broker::GET_STATUS, Value::Null, false);
        let p = status[0].parameters.as_ref().unwrap();
        assert_eq!(p["generation"], 3);
        assert_eq!(p["sources"][0]["name"], "files");
        assert_eq!(p["sources"][1]["users"], 1);
        assert_eq!(p["sources"][1]["latencyUSec"], 50);
        let info = call(&s, USER, GET_INFO, Value::Null, false);
        assert_eq!(
            info[0].parameters.as_ref().unwrap()["interfaces"][1],
            api::userdb::INTERFACE
        );
    }
}
