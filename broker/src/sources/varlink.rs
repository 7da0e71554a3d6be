//! Varlink `io.systemd.UserDatabase` services in `run/systemd/userdb/`,
//! queried per request.
//!
//! - Discovery follows the directory (services appearing and leaving). It
//!   never uses systemd-userdbd's multiplexer sockets (`io.systemd.Multiplexer`,
//!   `io.systemd.NameServiceSwitch`, `io.systemd.DropIn`: they may call NSS
//!   and so the broker), nor the broker's own socket under any name: sockets
//!   are compared by device and inode, not only by name.
//! - A service is "served by PID 1" when it is `io.systemd.DynamicUser` (not
//!   contacted to find out) or when the process listening on it is PID 1
//!   (`SO_PEERCRED`, checked once per socket). Requests with the dynamic
//!   bypass leave those out.
//! - Every call has a deadline. A timeout opens the source's circuit
//!   breaker: it is left out for a back-off (doubling from the minimum to
//!   the maximum), probed off the request path, and restored when it answers.
//! - Answers are cached (found and not found, each with its own TTL).
//! - What a service sends is checked: a record must be valid, carry the
//!   service's own name in `service` and match the key asked for; anything
//!   else is ignored with a log line (once per message).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use userdb_proto::api::userdb;
use userdb_proto::client::{ClientError, Connection};
use userdb_proto::names::valid_name;
use userdb_proto::record::{GroupRecord, UserRecord};
use userdb_proto::BROKER_SERVICE;

use crate::config::VarlinkSettings;
use crate::peer::Peer;

/// Sockets in the userdb directory that belong to systemd-userdbd's
/// multiplexer, which may resolve through NSS and so call the broker.
pub const NEVER_QUERIED: [&str; 4] = [
    "io.systemd.Multiplexer",
    "io.systemd.NameServiceSwitch",
    "io.systemd.DropIn",
    BROKER_SERVICE,
];

/// PID 1's own userdb service.
pub const DYNAMIC_USER: &str = "io.systemd.DynamicUser";

/// The userdb service directory below `root`.
pub fn directory(root: &Path) -> PathBuf {
    root.join("run/systemd/userdb")
}

/// What to ask a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Request {
    UserByName(String),
    UserById(u32),
    AllUsers,
    GroupByName(String),
    GroupById(u32),
    AllGroups,
    Memberships {
        user: Option<String>,
        group: Option<String>,
    },
}

impl Request {
    fn method(&self) -> &'static str {
        match self {
            Request::UserByName(_) | Request::UserById(_) | Request::AllUsers => {
                userdb::GET_USER_RECORD
            }
            Request::GroupByName(_) | Request::GroupById(_) | Request::AllGroups => {
                userdb::GET_GROUP_RECORD
            }
            Request::Memberships { .. } => userdb::GET_MEMBERSHIPS,
        }
    }

    fn parameters(&self, service: &str) -> Value {
        let mut p = match self {
            Request::UserByName(n) => json!({ "userName": n }),
            Request::UserById(id) => json!({ "uid": id }),
            Request::GroupByName(n) => json!({ "groupName": n }),
            Request::GroupById(id) => json!({ "gid": id }),
            Request::AllUsers | Request::AllGroups => json!({}),
            Request::Memberships { user, group } => {
                let mut p = json!({});
                if let Some(u) = user {
                    p["userName"] = json!(u);
                }
                if let Some(g) = group {
                    p["groupName"] = json!(g);
                }
                p
            }
        };
        p["service"] = json!(service);
        p
    }

    /// Memberships and listings may have several replies.
    fn more(&self) -> bool {
        match self {
            Request::AllUsers | Request::AllGroups => true,
            Request::Memberships { user, group } => user.is_none() || group.is_none(),
            _ => false,
        }
    }

    fn is_listing(&self) -> bool {
        matches!(self, Request::AllUsers | Request::AllGroups)
            || matches!(
                self,
                Request::Memberships {
                    user: None,
                    group: None
                }
            )
    }
}

/// Why one reply of a service is not used, in words for the log.
fn check_reply(service: &str, request: &Request, reply: &Value) -> Result<Value, String> {
    if let Request::Memberships { user, group } = request {
        let (Some(u), Some(g)) = (reply["userName"].as_str(), reply["groupName"].as_str()) else {
            return Err("membership reply without userName and groupName".into());
        };
        if !valid_name(u) || !valid_name(g) {
            return Err(format!("membership with an invalid name: {u:?}:{g:?}"));
        }
        if user.as_deref().is_some_and(|x| x != u) || group.as_deref().is_some_and(|x| x != g) {
            return Err(format!("membership {u}:{g} does not match the query"));
        }
        return Ok(json!({ "userName": u, "groupName": g }));
    }
    let record = &reply["record"];
    match record.get("service").and_then(Value::as_str) {
        Some(s) if s == service => {}
        other => return Err(format!("record carries service {other:?}, not {service:?}")),
    }
    let (name, id) = match request {
        Request::UserByName(_) | Request::UserById(_) | Request::AllUsers => {
            let u =
                UserRecord::from_json(record).map_err(|e| format!("invalid user record: {e}"))?;
            (u.name, u.uid)
        }
        _ => {
            let g =
                GroupRecord::from_json(record).map_err(|e| format!("invalid group record: {e}"))?;
            (g.name, g.gid)
        }
    };
    let matches = match request {
        Request::UserByName(n) | Request::GroupByName(n) => *n == name,
        Request::UserById(i) | Request::GroupById(i) => *i == id,
        _ => true,
    };
    if !matches {
        return Err(format!(
            "record {name}:{id} does not match the query {request:?}"
        ));
    }
    Ok(record.clone())
}

/// The circuit breaker of one source.
#[derive(Debug, Default)]
struct Breaker {
    /// Set while the source is left out.
    open_since: Option<Instant>,
    /// The current back-off; zero while closed.
    backoff: Duration,
    /// A probe is under way.
    probing: bool,
}

impl Breaker {
    fn trip(&mut self, settings: &VarlinkSettings) {
        self.backoff = if self.backoff.is_zero() {
            settings.min_backoff
        } else {
            (self.backoff * 2).min(settings.max_backoff)
        };
        self.open_since = Some(Instant::now());
    }

    fn close(&mut self) {
        *self = Breaker::default();
    }

    fn probe_due(&self) -> bool {
        !self.probing && self.open_since.is_some_and(|t| t.elapsed() >= self.backoff)
    }
}

/// Cached answers of one source.
#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<Request, (Instant, Arc<Vec<Value>>)>,
}

/// Entries kept per source before expired ones are dropped.
const CACHE_CAP: usize = 4096;

impl Cache {
    fn get(&self, request: &Request) -> Option<Arc<Vec<Value>>> {
        self.entries
            .get(request)
            .filter(|(expires, _)| Instant::now() < *expires)
            .map(|(_, answer)| Arc::clone(answer))
    }

    fn put(&mut self, request: Request, answer: Arc<Vec<Value>>, ttl: Duration) {
        if self.entries.len() >= CACHE_CAP {
            let now = Instant::now();
            self.entries.retain(|_, (expires, _)| now < *expires);
            if self.entries.len() >= CACHE_CAP {
                self.entries.clear();
            }
        }
        self.entries.insert(request, (Instant::now() + ttl, answer));
    }
}

/// How a source did lately, for status output.
#[derive(Debug, Default, Clone)]
struct Health {
    last_latency: Option<Duration>,
    last_error: Option<String>,
}

/// One discovered service.
#[derive(Debug)]
pub struct VarlinkSource {
    pub name: String,
    pub path: PathBuf,
    pub served_by_pid1: bool,
    identity: (u64, u64),
    breaker: Mutex<Breaker>,
    cache: Mutex<Cache>,
    health: Mutex<Health>,
    /// Messages already logged, so a misbehaving service does not flood.
    logged: Mutex<HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Distinct messages remembered per source before the memory is reset.
const LOGGED_CAP: usize = 1024;

impl VarlinkSource {
    fn log_once(&self, message: String) {
        let mut logged = lock(&self.logged);
        if logged.len() >= LOGGED_CAP {
            logged.clear();
        }
        if logged.insert(message.clone()) {
            tracing::warn!(source = %self.name, "{message}");
        }
    }

    /// Whether requests currently use this source.
    pub fn available(&self) -> bool {
        lock(&self.breaker).open_since.is_none()
    }

    /// The cached answer, if it is still fresh.
    pub fn cached(&self, request: &Request) -> Option<Arc<Vec<Value>>> {
        lock(&self.cache).get(request)
    }

    /// Asks the service (or the cache); what could not be had is empty.
    pub fn fetch(&self, request: &Request, settings: &VarlinkSettings) -> Arc<Vec<Value>> {
        if let Some(answer) = self.cached(request) {
            return answer;
        }
        let timeout = if request.is_listing() {
            settings.enumeration_timeout
        } else {
            settings.timeout
        };
        let started = Instant::now();
        let result = self.call(request, timeout);
        let answer = match result {
            Ok(replies) => {
                lock(&self.breaker).close();
                *lock(&self.health) = Health {
                    last_latency: Some(started.elapsed()),
                    last_error: None,
                };
                let checked: Vec<Value> = replies
                    .iter()
                    .filter_map(|reply| match check_reply(&self.name, request, reply) {
                        Ok(v) => Some(v),
                        Err(why) => {
                            self.log_once(format!("reply ignored: {why}"));
                            None
                        }
                    })
                    .collect();
                let ttl = if checked.is_empty() {
                    settings.negative_cache_ttl
                } else {
                    settings.cache_ttl
                };
                let answer = Arc::new(checked);
                lock(&self.cache).put(request.clone(), Arc::clone(&answer), ttl);
                return answer;
            }
            Err(e) => e,
        };
        lock(&self.health).last_error = Some(answer.to_string());
        match answer {
            ClientError::Timeout => {
                let mut breaker = lock(&self.breaker);
                breaker.trip(settings);
                tracing::warn!(
                    source = %self.name,
                    "no answer within {timeout:?}: left out for {:?}",
                    breaker.backoff
                );
            }
            ClientError::Remote(name) => {
                // A service that cannot enumerate, or is not ready: nothing
                // to use, and no reason to ask again at once.
                self.log_once(format!("answered {name}"));
                lock(&self.cache).put(
                    request.clone(),
                    Arc::new(Vec::new()),
                    settings.negative_cache_ttl,
                );
            }
            other => self.log_once(format!("query failed: {other}")),
        }
        Arc::new(Vec::new())
    }

    /// One call; `NoRecordFound` is an empty answer, not an error.
    fn call(&self, request: &Request, timeout: Duration) -> Result<Vec<Value>, ClientError> {
        let mut connection = Connection::connect_timeout(&self.path, timeout)?;
        let parameters = request.parameters(&self.name);
        let mut replies = Vec::new();
        let result = if request.more() {
            connection.call_more(request.method(), &parameters, |reply| {
                replies.push(reply);
                Ok(())
            })
        } else {
            connection
                .call(request.method(), &parameters)
                .map(|reply| replies.push(reply))
        };
        match result {
            Ok(()) => Ok(replies),
            Err(ClientError::Remote(name)) if name == userdb::NO_RECORD_FOUND => Ok(replies),
            Err(e) => Err(e),
        }
    }

    /// Tries a source whose breaker is open; closes it on any answer.
    fn probe(&self, settings: &VarlinkSettings) {
        let started = Instant::now();
        let answered = match self.call(&Request::UserById(0), settings.timeout) {
            Ok(_) | Err(ClientError::Remote(_)) => true,
            Err(_) => false,
        };
        let mut breaker = lock(&self.breaker);
        breaker.probing = false;
        if answered {
            breaker.close();
            lock(&self.health).last_latency = Some(started.elapsed());
            tracing::info!(source = %self.name, "answers again: restored");
        } else {
            breaker.trip(settings);
            tracing::warn!(source = %self.name, "probe failed: left out for {:?}", breaker.backoff);
        }
    }

    pub fn status(&self) -> Value {
        let breaker = lock(&self.breaker);
        let health = lock(&self.health).clone();
        let state = match (breaker.open_since, breaker.probing) {
            (None, _) => "ok",
            (Some(_), true) => "probing",
            (Some(_), false) => "open",
        };
        let retry_in = breaker
            .open_since
            .map(|t| breaker.backoff.saturating_sub(t.elapsed()).as_micros() as u64);
        json!({
            "name": self.name,
            "kind": "varlink",
            "state": state,
            "servedByPid1": self.served_by_pid1,
            "latencyUSec": health.last_latency.map(|d| d.as_micros() as u64),
            "retryInUSec": retry_in,
            "lastError": health.last_error,
        })
    }
}

/// The services currently in the userdb directory.
pub struct VarlinkSources {
    directory: PathBuf,
    own_socket: PathBuf,
    pub settings: VarlinkSettings,
    current: RwLock<Vec<Arc<VarlinkSource>>>,
}

impl VarlinkSources {
    pub fn new(directory: PathBuf, own_socket: PathBuf, settings: VarlinkSettings) -> Self {
        VarlinkSources {
            directory,
            own_socket,
            settings,
            current: RwLock::new(Vec::new()),
        }
    }

    /// Every known source, in name order.
    pub fn all(&self) -> Vec<Arc<VarlinkSource>> {
        match self.current.read() {
            Ok(list) => list.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The sources a request may use now.
    pub fn usable(&self, dynamic_bypass: bool) -> Vec<Arc<VarlinkSource>> {
        self.all()
            .into_iter()
            .filter(|s| s.available() && !(dynamic_bypass && s.served_by_pid1))
            .collect()
    }

    /// Re-reads the directory and starts probes that are due. Called from
    /// the watcher, never on the request path.
    pub fn maintain(self: &Arc<Self>) {
        self.discover();
        for source in self.all() {
            let due = {
                let mut breaker = lock(&source.breaker);
                let due = breaker.probe_due();
                if due {
                    breaker.probing = true;
                }
                due
            };
            if due {
                let sources = Arc::clone(self);
                let spawned = std::thread::Builder::new()
                    .name("probe".into())
                    .spawn(move || source.probe(&sources.settings));
                if let Err(e) = spawned {
                    tracing::warn!("cannot start a probe: {e}");
                }
            }
        }
    }

    fn discover(&self) {
        let own = std::fs::metadata(&self.own_socket)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let previous = self.all();
        let mut found = Vec::new();
        let mut entries: Vec<(String, PathBuf)> = match std::fs::read_dir(&self.directory) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
                .collect(),
            Err(_) => Vec::new(),
        };
        entries.sort();
        for (name, path) in entries {
            if NEVER_QUERIED.contains(&name.as_str()) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let identity = (meta.dev(), meta.ino());
            if !meta.file_type().is_socket() || Some(identity) == own {
                continue;
            }
            let known = previous
                .iter()
                .find(|s| s.name == name && s.identity == identity);
            found.push(match known {
                Some(s) => Arc::clone(s),
                None => {
                    let served_by_pid1 =
                        name == DYNAMIC_USER || listener_is_pid1(&path, self.settings.timeout);
                    tracing::info!(source = %name, served_by_pid1, "userdb service appeared");
                    Arc::new(VarlinkSource {
                        name,
                        path,
                        served_by_pid1,
                        identity,
                        breaker: Mutex::default(),
                        cache: Mutex::default(),
                        health: Mutex::default(),
                        logged: Mutex::default(),
                    })
                }
            });
        }
        for gone in previous
            .iter()
            .filter(|p| !found.iter().any(|f| Arc::ptr_eq(f, p)))
        {
            tracing::info!(source = %gone.name, "userdb service went away");
        }
        match self.current.write() {
            Ok(mut list) => *list = found,
            Err(poisoned) => *poisoned.into_inner() = found,
        }
    }
}

/// Whether PID 1 listens on the socket (connect only; nothing is sent).
fn listener_is_pid1(path: &Path, timeout: Duration) -> bool {
    Connection::connect_timeout(path, timeout)
        .ok()
        .and_then(|c| Peer::of(&c).ok())
        .is_some_and(|peer| peer.pid == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "io.example.Directory";

    #[test]
    fn requests_become_userdb_calls() {
        let r = Request::UserByName("alice".into());
        assert_eq!(r.method(), userdb::GET_USER_RECORD);
        assert_eq!(
            r.parameters(SVC),
            json!({"userName": "alice", "service": SVC})
        );
        assert!(!r.more());
        let m = Request::Memberships {
            user: None,
            group: Some("wheel".into()),
        };
        assert_eq!(
            m.parameters(SVC),
            json!({"groupName": "wheel", "service": SVC})
        );
        assert!(m.more() && !m.is_listing());
        assert!(Request::AllGroups.more() && Request::AllGroups.is_listing());
    }

    #[test]
    fn replies_are_checked() {
        let user = |record: Value| json!({ "record": record, "incomplete": false });
        let by_name = Request::UserByName("alice".into());
        let good = user(json!({"userName": "alice", "uid": 5000, "service": SVC}));
        assert!(check_reply(SVC, &by_name, &good).is_ok());
        for bad in [
            user(json!({"userName": "alice", "uid": 5000})),
            user(json!({"userName": "alice", "uid": 5000, "service": "io.other"})),
            user(json!({"userName": "bob", "uid": 5000, "service": SVC})),
            user(json!({"userName": "alice", "uid": 5000, "realName": "a:b", "service": SVC})),
            json!({"garbage": true}),
        ] {
            assert!(check_reply(SVC, &by_name, &bad).is_err(), "{bad}");
        }
        assert!(check_reply(SVC, &Request::UserById(5001), &good).is_err());
        let group = json!({"record": {"groupName": "devs", "gid": 700, "service": SVC}});
        assert!(check_reply(SVC, &Request::GroupById(700), &group).is_ok());
        let memberships = Request::Memberships {
            user: Some("alice".into()),
            group: None,
        };
        assert!(check_reply(
            SVC,
            &memberships,
            &json!({"userName": "alice", "groupName": "devs"})
        )
        .is_ok());
        assert!(check_reply(
            SVC,
            &memberships,
            &json!({"userName": "bob", "groupName": "devs"})
        )
        .is_err());
        assert!(check_reply(
            SVC,
            &memberships,
            &json!({"userName": "alice", "groupName": "a,b"})
        )
        .is_err());
    }

    #[test]
    fn breaker_backoff_doubles_up_to_the_maximum() {
        let settings = VarlinkSettings {
            min_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
            ..VarlinkSettings::default()
        };
        let mut b = Breaker::default();
        let backoffs: Vec<u64> = (0..6)
            .map(|_| {
                b.trip(&settings);
                b.backoff.as_secs()
            })
            .collect();
        assert_eq!(backoffs, [5, 10, 20, 40, 60, 60]);
        assert!(!b.probe_due());
        b.close();
        assert!(b.open_since.is_none() && b.backoff.is_zero());
    }

    #[test]
    fn cache_honours_ttl() {
        let mut cache = Cache::default();
        let r = Request::UserById(1);
        cache.put(
            r.clone(),
            Arc::new(vec![json!(1)]),
            Duration::from_millis(30),
        );
        assert_eq!(cache.get(&r).unwrap().len(), 1);
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.get(&r).is_none());
    }
}
