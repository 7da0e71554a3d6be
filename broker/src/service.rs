//! Method dispatch: one Varlink call in, its replies out.
//!
//! Serves `io.systemd.UserDatabase` (systemd's userdb API, so any userdb
//! client can use the broker: full JSON records), `io.userdb.Broker` (the
//! same look-ups with [`LookupOptions`], answering the NSS view of a record
//! the module needs, plus status and flushing the services' caches) and
//! `org.varlink.service` (`GetInfo`, and `GetInterfaceDescription` with the
//! interface definitions in `proto/idl/`).
//!
//! As systemd's own services do, a look-up must name the service it asks
//! (`"service": "io.userdb.Broker"`); anything else is `BadService`. A
//! miss while a source could not be asked is not a miss: on the broker's
//! interface it is `SourcesUnavailable`, naming them.
//!
//! Single answers are encoded at once; listings become a [`Stream`] that the
//! server drains as the client reads, so a listing of 100,000 users is never
//! held whole for one connection.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use userdb_proto::api::{self, GroupQuery, LookupOptions, MembershipQuery, UserQuery};
use userdb_proto::peer::Peer;
use userdb_proto::varlink::{encode, errors, Call, Reply};
use userdb_proto::BROKER_SERVICE;

use crate::metrics::Metrics;
use crate::model::User;
use crate::resolve::{Answer, FoundGroup, GroupListing, Key, Membership, Resolver, UserListing};

use api::varlink_service::{GET_INFO, GET_INTERFACE_DESCRIPTION};

/// Which interface a call came in on: options, the NSS view and `gid` in
/// membership replies exist only on the broker's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interface {
    UserDatabase,
    Broker,
}

/// What one call produces.
pub enum Outcome {
    /// Every reply, encoded (empty for a `oneway` call); `failed` when it
    /// is an error other than "not found".
    Replies { bytes: Vec<u8>, failed: bool },
    /// A listing, encoded as the client reads it.
    Stream(Stream),
}

pub struct Service {
    resolver: Resolver,
    connections: Arc<AtomicUsize>,
    started: Instant,
    config_file: Option<PathBuf>,
    metrics: Metrics,
}

impl Service {
    /// `config_file`: the configuration file in use, for status.
    pub fn new(resolver: Resolver, config_file: Option<PathBuf>) -> Self {
        Service {
            resolver,
            connections: Arc::new(AtomicUsize::new(0)),
            started: Instant::now(),
            config_file,
            metrics: Metrics::default(),
        }
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// The open-connection counter the server keeps, shown in status.
    pub fn connection_counter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.connections)
    }

    /// Whether answering `call` may wait for a Varlink service (then it runs
    /// on a worker thread, off the event loop).
    pub fn may_wait(&self, call: &Call) -> bool {
        let Some(interface) = interface_of(&call.method) else {
            return false;
        };
        let dynamic_bypass = interface == Interface::Broker
            && call
                .parameters
                .get("dynamicBypass")
                .and_then(Value::as_bool)
                == Some(true);
        !self
            .resolver
            .services(LookupOptions {
                caller_reads_files: false,
                dynamic_bypass,
            })
            .is_empty()
    }

    /// Answers one call. Errors are Varlink error replies.
    pub fn handle(&self, call: &Call, peer: &Peer) -> Outcome {
        let started = Instant::now();
        let outcome = self.dispatch(call, peer);
        let failed = matches!(outcome, Outcome::Replies { failed: true, .. });
        self.metrics.record(&call.method, started.elapsed(), failed);
        if call.oneway {
            Outcome::Replies {
                bytes: Vec::new(),
                failed,
            }
        } else {
            outcome
        }
    }

    fn dispatch(&self, call: &Call, peer: &Peer) -> Outcome {
        let ctx = Context {
            resolver: &self.resolver,
            peer: *peer,
        };
        match (call.method.as_str(), interface_of(&call.method)) {
            (GET_INFO, _) => single(get_info()),
            (GET_INTERFACE_DESCRIPTION, _) => describe(call),
            (api::broker::GET_STATUS, _) => single(self.status()),
            (api::broker::FLUSH, _) if peer.privileged() => {
                self.resolver.varlink().flush();
                tracing::info!(
                    pid = peer.pid,
                    "cached answers of the Varlink services dropped"
                );
                single(json!({}))
            }
            (api::broker::FLUSH, _) => error(errors::PERMISSION_DENIED),
            (m, Some(interface)) if m.ends_with(".GetUserRecord") => ctx.get_user(interface, call),
            (m, Some(interface)) if m.ends_with(".GetGroupRecord") => {
                ctx.get_group(interface, call)
            }
            (m, Some(interface)) if m.ends_with(".GetMemberships") => {
                ctx.get_memberships(interface, call)
            }
            (other, _) => failure(unknown_method(other)),
        }
    }

    fn status(&self) -> Value {
        let snapshot = self.resolver.snapshot();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptimeUSec": self.started.elapsed().as_micros() as u64,
            "configFile": self.config_file.as_ref().map(|p| p.display().to_string()),
            "generation": snapshot.generation,
            "snapshotAgeUSec": snapshot.built_at.elapsed().as_micros() as u64,
            "connections": self.connections.load(Ordering::Relaxed),
            "calls": self.metrics.status(),
            "sources": self.resolver.sources_status(),
        })
    }
}

fn interface_of(method: &str) -> Option<Interface> {
    match method {
        api::userdb::GET_USER_RECORD
        | api::userdb::GET_GROUP_RECORD
        | api::userdb::GET_MEMBERSHIPS => Some(Interface::UserDatabase),
        api::broker::GET_USER_RECORD
        | api::broker::GET_GROUP_RECORD
        | api::broker::GET_MEMBERSHIPS => Some(Interface::Broker),
        _ => None,
    }
}

fn single(parameters: Value) -> Outcome {
    Outcome::Replies {
        bytes: encode(&Reply::ok(parameters, false)),
        failed: false,
    }
}

fn failure(reply: Reply) -> Outcome {
    let failed = reply.error.as_deref() != Some(api::userdb::NO_RECORD_FOUND);
    Outcome::Replies {
        bytes: encode(&reply),
        failed,
    }
}

fn error(name: &str) -> Outcome {
    failure(Reply::error(name))
}

fn get_info() -> Value {
    json!({
        "vendor": "userdb-broker",
        "product": "userdb-brokerd",
        "version": env!("CARGO_PKG_VERSION"),
        "url": "https://systemd.io/USER_GROUP_API/",
        "interfaces": api::INTERFACES.map(|(name, _)| name),
    })
}

/// `org.varlink.service.GetInterfaceDescription`.
fn describe(call: &Call) -> Outcome {
    let wanted = call.parameters.get("interface").and_then(Value::as_str);
    match api::INTERFACES
        .iter()
        .find(|(name, _)| Some(*name) == wanted)
    {
        Some((_, idl)) => single(json!({ "description": idl })),
        None => failure(error_with(
            errors::INTERFACE_NOT_FOUND,
            json!({ "interface": wanted.unwrap_or_default() }),
        )),
    }
}

fn unknown_method(method: &str) -> Reply {
    let interface = method.rsplit_once('.').map_or("", |(i, _)| i);
    if api::INTERFACES.iter().any(|(name, _)| *name == interface) {
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

/// Parses a query and checks its `service`, or says why not.
fn parse_query<Q: DeserializeOwned>(
    call: &Call,
    service: impl Fn(&Q) -> Option<&str>,
) -> Result<Q, Outcome> {
    let parameters = match &call.parameters {
        Value::Null => Value::Object(Map::new()),
        other => other.clone(),
    };
    let query: Q = serde_json::from_value(parameters).map_err(|e| {
        failure(error_with(
            errors::INVALID_PARAMETER,
            json!({ "parameter": e.to_string() }),
        ))
    })?;
    match service(&query) {
        Some(BROKER_SERVICE) => Ok(query),
        _ => Err(error(api::userdb::BAD_SERVICE)),
    }
}

/// The options a query may use on the interface it came in on.
fn options_for(interface: Interface, options: LookupOptions) -> LookupOptions {
    match interface {
        Interface::Broker => options,
        Interface::UserDatabase => LookupOptions::default(),
    }
}

#[derive(Clone, Copy)]
struct Context<'a> {
    resolver: &'a Resolver,
    peer: Peer,
}

/// How one record is rendered for one call.
#[derive(Debug, Clone, Copy)]
struct Render {
    interface: Interface,
    privileged: bool,
}

impl Render {
    fn user(self, user: &User) -> Value {
        let (mut record, incomplete) = match self.interface {
            Interface::UserDatabase => user.userdb_json(self.privileged),
            Interface::Broker => (
                user.nss(self.privileged).to_json(),
                !self.privileged && user.has_privileged(),
            ),
        };
        with_service(&mut record);
        json!({ "record": record, "incomplete": incomplete })
    }

    fn group(self, found: &FoundGroup) -> Value {
        let members: Vec<String> = found.members.iter().map(|m| m.to_string()).collect();
        let (mut record, incomplete) = match self.interface {
            Interface::UserDatabase => found.group.userdb_json(members, self.privileged),
            Interface::Broker => (
                found.group.nss(members, self.privileged).to_json(),
                !self.privileged && found.group.has_privileged(),
            ),
        };
        with_service(&mut record);
        json!({ "record": record, "incomplete": incomplete })
    }

    fn membership(self, m: &Membership) -> Value {
        let mut reply = json!({ "userName": &*m.user, "groupName": &*m.group });
        if self.interface == Interface::Broker {
            if let Some(gid) = m.gid {
                reply["gid"] = json!(gid);
            }
        }
        reply
    }
}

/// The reply to a look-up by key: the record, `NoRecordFound`, or, when
/// some source could not say, `SourcesUnavailable` naming them on the
/// broker's interface and systemd's `ServiceNotAvailable` on its own.
fn answered<T>(
    interface: Interface,
    answer: Answer<T>,
    render: impl FnOnce(T) -> Value,
) -> Outcome {
    match answer {
        Ok(Some(found)) => single(render(found)),
        Ok(None) => error(api::userdb::NO_RECORD_FOUND),
        Err(incomplete) if interface == Interface::Broker => failure(error_with(
            api::broker::SOURCES_UNAVAILABLE,
            json!({ "sources": incomplete.0 }),
        )),
        Err(_) => error(api::userdb::SERVICE_NOT_AVAILABLE),
    }
}

/// Records answered by the broker say so, unless they name their service.
fn with_service(record: &mut Value) {
    if let Some(obj) = record.as_object_mut() {
        obj.entry("service")
            .or_insert_with(|| json!(BROKER_SERVICE));
    }
}

impl Context<'_> {
    fn render(&self, interface: Interface) -> Render {
        Render {
            interface,
            privileged: self.peer.privileged(),
        }
    }

    fn get_user(&self, interface: Interface, call: &Call) -> Outcome {
        let query: UserQuery = match parse_query(call, |q: &UserQuery| q.service.as_deref()) {
            Ok(q) => q,
            Err(reply) => return reply,
        };
        let options = options_for(interface, query.options);
        let render = self.render(interface);
        let found = match (&query.user_name, query.uid) {
            (None, None) => {
                if !call.more {
                    return error(errors::EXPECTED_MORE);
                }
                let listing = self.resolver.users(options);
                return Outcome::Stream(Stream::new(Items::Users(listing), render));
            }
            (Some(name), uid) => match self.resolver.user(Key::Name(name), options) {
                Ok(Some(user)) if uid.is_some_and(|uid| user.uid != uid) => {
                    return error(api::userdb::CONFLICTING_RECORD_FOUND)
                }
                found => found,
            },
            (None, Some(uid)) => self.resolver.user(Key::Id(uid), options),
        };
        answered(interface, found, |user| render.user(&user))
    }

    fn get_group(&self, interface: Interface, call: &Call) -> Outcome {
        let query: GroupQuery = match parse_query(call, |q: &GroupQuery| q.service.as_deref()) {
            Ok(q) => q,
            Err(reply) => return reply,
        };
        let options = options_for(interface, query.options);
        let render = self.render(interface);
        let found = match (&query.group_name, query.gid) {
            (None, None) => {
                if !call.more {
                    return error(errors::EXPECTED_MORE);
                }
                let listing = self.resolver.groups(options);
                return Outcome::Stream(Stream::new(Items::Groups(listing), render));
            }
            (Some(name), gid) => match self.resolver.group(Key::Name(name), options) {
                Ok(Some(found)) if gid.is_some_and(|gid| found.group.gid != gid) => {
                    return error(api::userdb::CONFLICTING_RECORD_FOUND)
                }
                found => found,
            },
            (None, Some(gid)) => self.resolver.group(Key::Id(gid), options),
        };
        answered(interface, found, |found| render.group(&found))
    }

    fn get_memberships(&self, interface: Interface, call: &Call) -> Outcome {
        let query: MembershipQuery =
            match parse_query(call, |q: &MembershipQuery| q.service.as_deref()) {
                Ok(q) => q,
                Err(reply) => return reply,
            };
        let options = options_for(interface, query.options);
        let single_pair = query.user_name.is_some() && query.group_name.is_some();
        if !single_pair && !call.more {
            return error(errors::EXPECTED_MORE);
        }
        let memberships = self.resolver.memberships(
            query.user_name.as_deref(),
            query.group_name.as_deref(),
            options,
        );
        Outcome::Stream(Stream::new(
            Items::Memberships(memberships.into_iter()),
            self.render(interface),
        ))
    }
}

/// What a stream hands out.
enum Items {
    Users(UserListing),
    Groups(GroupListing),
    Memberships(std::vec::IntoIter<Membership>),
}

impl Items {
    fn next(&mut self, render: Render) -> Option<Value> {
        match self {
            Items::Users(listing) => listing.next().map(|u| render.user(&u)),
            Items::Groups(listing) => listing.next().map(|g| render.group(&g)),
            Items::Memberships(list) => list.next().map(|m| render.membership(&m)),
        }
    }
}

/// A streamed answer: every reply but the last carries `continues`, and an
/// empty listing is `NoRecordFound`.
pub struct Stream {
    items: Items,
    render: Render,
    /// The item read ahead: it goes out once it is known whether another
    /// one follows.
    ahead: Option<Value>,
    started: bool,
    done: bool,
}

impl Stream {
    fn new(items: Items, render: Render) -> Stream {
        Stream {
            items,
            render,
            ahead: None,
            started: false,
            done: false,
        }
    }

    /// Appends encoded replies to `out` until it holds at least `budget`
    /// bytes or the stream ends; returns whether it ended.
    pub fn fill(&mut self, out: &mut Vec<u8>, budget: usize) -> bool {
        if !self.started {
            self.started = true;
            self.ahead = self.items.next(self.render);
            if self.ahead.is_none() {
                out.extend(encode(&Reply::error(api::userdb::NO_RECORD_FOUND)));
                self.done = true;
            }
        }
        while !self.done && out.len() < budget {
            let next = self.items.next(self.render);
            let current = std::mem::replace(&mut self.ahead, next);
            let Some(current) = current else {
                self.done = true;
                break;
            };
            let more = self.ahead.is_some();
            out.extend(encode(&Reply::ok(current, more)));
            self.done = !more;
        }
        self.done
    }

    /// Every reply at once, for tests and callers without backpressure.
    pub fn collect(mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while !self.fill(&mut out, usize::MAX) {}
        out
    }
}

impl Outcome {
    /// Every reply encoded, draining a stream.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Outcome::Replies { bytes, .. } => bytes,
            Outcome::Stream(stream) => stream.collect(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::merge::{build, Loaded, Priority};
    use crate::model::{Group, Name};
    use crate::snapshot::SnapshotStore;
    use crate::sources::varlink::VarlinkSources;
    use crate::sources::{LoadReport, SourceData, SourceInfo, SourceKind};
    use userdb_proto::record::{GroupRecord, UserRecord, UserShadow};
    use userdb_proto::varlink::FrameBuffer;

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

    fn files_user(name: &str, uid: u32, hash: Option<&str>) -> Arc<User> {
        Arc::new(User::from_nss(
            UserRecord {
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
            },
            true,
        ))
    }

    fn plain_group(name: &str, gid: u32, members: &[&str]) -> Arc<Group> {
        Arc::new(Group::from_nss(
            GroupRecord {
                name: name.into(),
                gid,
                members: members.iter().map(|m| m.to_string()).collect(),
                shadow: None,
            },
            true,
        ))
    }

    pub(crate) fn resolver_over(sources: Vec<(SourceKind, SourceData)>) -> Resolver {
        let priority = Priority::new(vec!["files".into(), "dropins".into()]);
        let loaded = sources
            .into_iter()
            .map(|(kind, data)| Loaded {
                info: SourceInfo::local(kind),
                data: Arc::new(data),
                load: LoadReport {
                    took: std::time::Duration::from_micros(50),
                    last_error: None,
                },
            })
            .collect();
        let merged = build(loaded, &priority, 3);
        let no_services = VarlinkSources::new(
            "/nonexistent".into(),
            "/nonexistent".into(),
            Default::default(),
        );
        Resolver::new(
            Arc::new(SnapshotStore::new(merged.snapshot)),
            Arc::new(no_services),
            priority,
        )
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
        let mut bob = User::from_nss(
            UserRecord {
                name: "bob".into(),
                uid: 2000,
                gid: 2000,
                gecos: String::new(),
                home: "/".into(),
                shell: "/bin/sh".into(),
                shadow: None,
            },
            true,
        );
        let mut record = Map::new();
        record.insert("userName".into(), json!("bob"));
        record.insert("uid".into(), json!(2000));
        record.insert("service".into(), json!("io.example.Directory"));
        bob.json = Some(Box::new(crate::model::JsonRecord::split(record, &[])));
        let dropins = SourceData {
            users: vec![Arc::new(bob)],
            groups: vec![plain_group("devs", 500, &["bob"])],
            memberships: [
                (Name::from("bob"), Name::from("wheel")),
                (Name::from("alice"), Name::from("wheel")),
            ]
            .into_iter()
            .collect(),
            problems: Vec::new(),
        };
        Service::new(
            resolver_over(vec![
                (SourceKind::Files, files),
                (SourceKind::DropIns, dropins),
            ]),
            None,
        )
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
        let bytes = service.handle(&call, &peer).into_bytes();
        let mut frames = FrameBuffer::new(usize::MAX);
        frames.push(&bytes);
        let mut replies = Vec::new();
        while let Ok(Some(frame)) = frames.next_frame() {
            replies.push(serde_json::from_slice(&frame).unwrap());
        }
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
        for method in [api::userdb::GET_USER_RECORD, api::broker::GET_USER_RECORD] {
            let as_root = call(&s, ROOT, method, params.clone(), false);
            assert_eq!(
                record_of(&as_root[0])["privileged"]["hashedPassword"][0],
                "$6$root"
            );
            assert_eq!(as_root[0].parameters.as_ref().unwrap()["incomplete"], false);
            let as_user = call(&s, USER, method, params.clone(), false);
            let record = record_of(&as_user[0]);
            assert!(record.get("privileged").is_none());
            assert!(record.get("lastPasswordChangeUSec").is_none());
            assert_eq!(as_user[0].parameters.as_ref().unwrap()["incomplete"], true);
        }
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
    fn a_stream_fills_its_budget_and_no_more() {
        let s = service();
        let call = Call {
            method: api::userdb::GET_USER_RECORD.into(),
            parameters: json!({"service": SVC}),
            more: true,
            oneway: false,
        };
        let Outcome::Stream(mut stream) = s.handle(&call, &USER) else {
            panic!("a listing is a stream");
        };
        let mut out = Vec::new();
        assert!(!stream.fill(&mut out, 1));
        assert_eq!(
            out.iter().filter(|&&b| b == 0).count(),
            1,
            "one reply per step"
        );
        assert!(stream.fill(&mut out, usize::MAX));
        assert_eq!(out.iter().filter(|&&b| b == 0).count(), 3);
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
            json!({"groupName": "users", "service": SVC}),
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
            [p("bob", "wheel"), p("bob", "devs")]
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
                json!({"userName": "alice", "groupName": "wheel", "service": SVC}),
                false
            )),
            [p("alice", "wheel")]
        );
        assert_eq!(
            pairs(call(&s, USER, m, json!({"service": SVC}), true)).len(),
            3
        );
        assert_eq!(
            error_of(&call(
                &s,
                USER,
                m,
                json!({"userName": "bob", "service": SVC}),
                false
            )),
            Some(errors::EXPECTED_MORE)
        );
        assert_eq!(
            error_of(&call(
                &s,
                USER,
                m,
                json!({"userName": "zed", "service": SVC}),
                true
            )),
            Some(api::userdb::NO_RECORD_FOUND)
        );
        let with_gid = call(
            &s,
            USER,
            api::broker::GET_MEMBERSHIPS,
            json!({"userName": "alice", "callerReadsFiles": true, "service": SVC}),
            true,
        );
        assert_eq!(error_of(&with_gid), Some(api::userdb::NO_RECORD_FOUND));
        let bob_with_gid = call(
            &s,
            USER,
            api::broker::GET_MEMBERSHIPS,
            json!({"userName": "bob", "groupName": "devs", "callerReadsFiles": true, "service": SVC}),
            false,
        );
        assert_eq!(
            bob_with_gid[0].parameters,
            Some(json!({"userName": "bob", "groupName": "devs", "gid": 500}))
        );
    }

    #[test]
    fn look_ups_must_name_the_service_as_systemd_requires() {
        let s = service();
        for method in [api::userdb::GET_USER_RECORD, api::broker::GET_GROUP_RECORD] {
            let r = call(&s, USER, method, json!({"userName": "alice"}), false);
            assert_eq!(error_of(&r), Some(api::userdb::BAD_SERVICE), "{method}");
        }
    }

    #[test]
    fn every_listed_interface_is_described() {
        let s = service();
        let info = call(&s, USER, GET_INFO, Value::Null, false);
        let interfaces = info[0].parameters.as_ref().unwrap()["interfaces"].clone();
        for interface in interfaces.as_array().unwrap() {
            let r = call(
                &s,
                USER,
                GET_INTERFACE_DESCRIPTION,
                json!({ "interface": interface }),
                false,
            );
            let idl = r[0].parameters.as_ref().unwrap()["description"]
                .as_str()
                .unwrap();
            assert!(
                idl.contains(&format!("interface {}", interface.as_str().unwrap())),
                "{idl}"
            );
        }
        let unknown = call(
            &s,
            USER,
            GET_INTERFACE_DESCRIPTION,
            json!({"interface": "x.y"}),
            false,
        );
        assert_eq!(error_of(&unknown), Some(errors::INTERFACE_NOT_FOUND));
    }

    #[test]
    fn only_root_may_flush() {
        let s = service();
        let as_user = call(&s, USER, api::broker::FLUSH, json!({}), false);
        assert_eq!(error_of(&as_user), Some(errors::PERMISSION_DENIED));
        let as_root = call(&s, ROOT, api::broker::FLUSH, json!({}), false);
        assert_eq!(error_of(&as_root), None);
    }

    #[test]
    fn status_and_info() {
        let s = service();
        call(&s, USER, api::broker::GET_STATUS, Value::Null, false);
        let status = call(&s, USER, api::broker::GET_STATUS, Value::Null, false);
        let p = status[0].parameters.as_ref().unwrap();
        assert_eq!(p["generation"], 3);
        assert_eq!(p["sources"][0]["name"], "files");
        assert_eq!(p["sources"][1]["users"], 1);
        assert_eq!(p["sources"][1]["latencyUSec"], 50);
        assert_eq!(p["version"], env!("CARGO_PKG_VERSION"));
        assert!(p["uptimeUSec"].is_u64());
        assert_eq!(p["calls"][0]["method"], api::broker::GET_STATUS);
        let info = call(&s, USER, GET_INFO, Value::Null, false);
        assert_eq!(
            info[0].parameters.as_ref().unwrap()["interfaces"][1],
            api::userdb::INTERFACE
        );
    }
}
