//! Varlink `io.systemd.UserDatabase` services in `run/systemd/userdb/`,
//! asked per request.
//!
//! - Discovery follows the directory (services appearing and leaving). It
//!   never uses systemd-userdbd's multiplexer sockets (`io.systemd.Multiplexer`,
//!   `io.systemd.NameServiceSwitch`, `io.systemd.DropIn`: they may call NSS
//!   and so the broker), nor the broker's own socket under any name: sockets
//!   are compared by device and inode, not only by name. When PID 1's
//!   dynamic users are read from its links (`dynamic`), its
//!   `io.systemd.DynamicUser` socket is never used either.
//! - A service serves PID 1's dynamic users when it is
//!   `io.systemd.DynamicUser` (not contacted to find out) or when the process
//!   listening on it is PID 1 (`SO_PEERCRED`, checked once per socket).
//! - The services of one request are asked at once, over non-blocking
//!   connections waited on together, each within its deadline: no thread
//!   per request, and a hung service costs one deadline, not one each.
//! - A timeout opens the service's circuit breaker: it is left out for a
//!   back-off (doubling from the minimum to the maximum), probed by the
//!   watcher (off the request path), and restored when it answers.
//! - Answers are cached (found and not found, each with its own TTL) and
//!   shared by every request that asks the same.
//! - What a service sends is checked: a record must be valid, carry the
//!   service's own name in `service` and match the key asked for; anything
//!   else is ignored with a log line (once per message).

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use userdb_proto::api::userdb;
use userdb_proto::client::{ClientError, Connection, Limits, Progress};
use userdb_proto::names::valid_name;
use userdb_proto::peer::Peer;
use userdb_proto::record::{GroupRecord, UserRecord};
use userdb_proto::BROKER_SERVICE;

use super::{SourceData, SourceInfo, SourceKind};
use crate::config::VarlinkSettings;
use crate::log_once::LogOnce;
use crate::model::{Group, JsonRecord, Name, User};

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

/// Largest reply frame and whole answer taken from a service.
const LIMITS: Limits = Limits {
    max_frame: 64 << 20,
    max_total: 256 << 20,
};

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

/// The record of a reply, its privileged section kept apart.
fn json_of(record: &Value) -> Option<Box<JsonRecord>> {
    match record {
        Value::Object(map) => Some(Box::new(JsonRecord::split(map.clone(), &[]))),
        _ => None,
    }
}

/// Checks one reply of a service and adds it to `answer`; `Err` says why
/// it is not used, in words for the log.
fn take_reply(
    service: &str,
    request: &Request,
    reply: &Value,
    answer: &mut SourceData,
) -> Result<(), String> {
    if let Request::Memberships { user, group } = request {
        let (Some(u), Some(g)) = (reply["userName"].as_str(), reply["groupName"].as_str()) else {
            return Err("membership reply without userName and groupName".into());
        };
        if !valid_name(u) || !valid_name(g) {
            return Err(format!(
                "membership with an invalid name: {}:{}",
                super::quote(u),
                super::quote(g)
            ));
        }
        if user.as_deref().is_some_and(|x| x != u) || group.as_deref().is_some_and(|x| x != g) {
            return Err(format!("membership {u}:{g} does not match the query"));
        }
        answer.memberships.push(Name::from(u), Name::from(g));
        return Ok(());
    }
    let record = &reply["record"];
    match record.get("service").and_then(Value::as_str) {
        Some(s) if s == service => {}
        other => return Err(format!("record carries service {other:?}, not {service:?}")),
    }
    let matches = |name: &str, id: u32| match request {
        Request::UserByName(n) | Request::GroupByName(n) => n == name,
        Request::UserById(i) | Request::GroupById(i) => *i == id,
        _ => true,
    };
    match request {
        Request::UserByName(_) | Request::UserById(_) | Request::AllUsers => {
            let u =
                UserRecord::from_json(record).map_err(|e| format!("invalid user record: {e}"))?;
            if !matches(&u.name, u.uid) {
                return Err(format!(
                    "record {}:{} does not match the query {request:?}",
                    u.name, u.uid
                ));
            }
            let mut user = User::from_nss(u, true);
            user.json = json_of(record);
            answer.users.push(Arc::new(user));
        }
        _ => {
            let g =
                GroupRecord::from_json(record).map_err(|e| format!("invalid group record: {e}"))?;
            if !matches(&g.name, g.gid) {
                return Err(format!(
                    "record {}:{} does not match the query {request:?}",
                    g.name, g.gid
                ));
            }
            let mut group = Group::from_nss(g, true);
            group.json = json_of(record);
            answer.groups.push(Arc::new(group));
        }
    }
    Ok(())
}

/// The circuit breaker of one service.
#[derive(Debug, Default)]
struct Breaker {
    /// Set while the service is left out.
    open_since: Option<Instant>,
    /// The current back-off; zero while closed.
    backoff: Duration,
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
        self.open_since.is_some_and(|t| t.elapsed() >= self.backoff)
    }

    /// The state in words, for status.
    fn describe(&self) -> String {
        match self.open_since {
            None => "ok".to_owned(),
            Some(since) => {
                let left = self.backoff.saturating_sub(since.elapsed());
                if left.is_zero() {
                    "failing, probed now".to_owned()
                } else {
                    format!("failing, next try in {} s", left.as_secs().max(1))
                }
            }
        }
    }
}

/// Cached answers of one service.
#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<Request, (Instant, Arc<SourceData>)>,
}

/// Entries kept per service before expired ones are dropped.
const CACHE_CAP: usize = 4096;

impl Cache {
    fn get(&self, request: &Request) -> Option<Arc<SourceData>> {
        self.entries
            .get(request)
            .filter(|(expires, _)| Instant::now() < *expires)
            .map(|(_, answer)| Arc::clone(answer))
    }

    fn put(&mut self, request: Request, answer: Arc<SourceData>, ttl: Duration) {
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

/// How a service did lately, for status output.
#[derive(Debug, Default, Clone)]
struct Health {
    last_latency: Option<Duration>,
    last_error: Option<String>,
}

/// One discovered service.
#[derive(Debug)]
pub struct VarlinkSource {
    pub info: SourceInfo,
    pub path: PathBuf,
    identity: (u64, u64),
    breaker: Mutex<Breaker>,
    cache: Mutex<Cache>,
    health: Mutex<Health>,
    /// Messages already logged, so a misbehaving service does not flood.
    logged: Mutex<LogOnce>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl VarlinkSource {
    fn new(name: String, path: PathBuf, identity: (u64, u64), pid1_users: bool) -> Self {
        VarlinkSource {
            info: SourceInfo {
                name,
                kind: SourceKind::Varlink,
                pid1_users,
            },
            path,
            identity,
            breaker: Mutex::default(),
            cache: Mutex::default(),
            health: Mutex::default(),
            logged: Mutex::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    fn log_once(&self, message: String) {
        if lock(&self.logged).first(&message) {
            tracing::warn!(source = %self.info.name, "{message}");
        }
    }

    /// Whether requests currently use this service.
    pub fn available(&self) -> bool {
        lock(&self.breaker).open_since.is_none()
    }

    /// The cached answer, if it is still fresh.
    pub fn cached(&self, request: &Request) -> Option<Arc<SourceData>> {
        lock(&self.cache).get(request)
    }

    /// Drops every cached answer.
    pub fn flush(&self) {
        lock(&self.cache).entries.clear();
    }

    /// Opens a connection and sends the request.
    fn begin(&self, request: &Request, timeout: Duration) -> Result<Connection, ClientError> {
        let mut connection = Connection::connect_timeout(&self.path, timeout)?.with_limits(LIMITS);
        connection.start(
            request.method(),
            &request.parameters(&self.info.name),
            request.more(),
        )?;
        Ok(connection)
    }

    /// Records the outcome of one exchange and returns what to use of it,
    /// and whether the service failed to answer at all.
    fn settle(
        &self,
        request: &Request,
        outcome: Result<Vec<Value>, ClientError>,
        started: Instant,
        settings: &VarlinkSettings,
    ) -> (Arc<SourceData>, bool) {
        let error = match outcome {
            Ok(replies) => {
                lock(&self.breaker).close();
                *lock(&self.health) = Health {
                    last_latency: Some(started.elapsed()),
                    last_error: None,
                };
                let mut answer = SourceData::default();
                for reply in &replies {
                    if let Err(why) = take_reply(&self.info.name, request, reply, &mut answer) {
                        self.log_once(format!("reply ignored: {why}"));
                    }
                }
                let empty = answer.users.is_empty()
                    && answer.groups.is_empty()
                    && answer.memberships.is_empty();
                let ttl = if empty {
                    settings.negative_cache_ttl
                } else {
                    settings.cache_ttl
                };
                let answer = Arc::new(answer);
                lock(&self.cache).put(request.clone(), Arc::clone(&answer), ttl);
                return (answer, false);
            }
            Err(e) => e,
        };
        lock(&self.health).last_error = Some(error.to_string());
        match error {
            ClientError::Timeout => {
                let timeout = if request.is_listing() {
                    settings.enumeration_timeout
                } else {
                    settings.timeout
                };
                let mut breaker = lock(&self.breaker);
                breaker.trip(settings);
                tracing::warn!(
                    source = %self.info.name,
                    "no answer within {timeout:?}: left out for {:?}",
                    breaker.backoff
                );
            }
            ClientError::Remote(name) => {
                // A service that cannot enumerate, or is not ready: nothing
                // to use, and no reason to ask again at once.
                self.log_once(format!("answered {name}"));
                lock(&self.cache).put(request.clone(), Arc::default(), settings.negative_cache_ttl);
                return (Arc::default(), false);
            }
            other => self.log_once(format!("query failed: {other}")),
        }
        (Arc::default(), true)
    }

    /// Tries a service whose breaker is open; closes it on any answer.
    fn probe(&self, settings: &VarlinkSettings) {
        let started = Instant::now();
        let request = Request::UserById(0);
        let answered = match self.begin(&request, settings.timeout).and_then(|mut c| {
            c.read_available(|_| Ok(()))?;
            finish(&mut c, |_| Ok(()))
        }) {
            Ok(()) | Err(ClientError::Remote(_)) => true,
            Err(_) => false,
        };
        let mut breaker = lock(&self.breaker);
        if answered {
            breaker.close();
            lock(&self.health).last_latency = Some(started.elapsed());
            tracing::info!(source = %self.info.name, "answers again: restored");
        } else {
            breaker.trip(settings);
            tracing::warn!(source = %self.info.name, "probe failed: left out for {:?}", breaker.backoff);
        }
    }

    pub fn status(&self) -> Value {
        let breaker = lock(&self.breaker);
        let health = lock(&self.health).clone();
        json!({
            "name": self.info.name,
            "kind": SourceKind::Varlink.name(),
            "state": breaker.describe(),
            "servedByPid1": self.info.pid1_users,
            "latencyUSec": health.last_latency.map(|d| d.as_micros() as u64),
            "lastError": health.last_error,
        })
    }
}

/// Waits for the rest of a started call's replies until its deadline.
fn finish(
    connection: &mut Connection,
    mut each: impl FnMut(Value) -> Result<(), ClientError>,
) -> Result<(), ClientError> {
    loop {
        if connection.read_available(&mut each)? == Progress::Done {
            return Ok(());
        }
        wait_readable(&[connection.fd()], connection.deadline())?;
    }
}

/// Waits until one of `fds` is readable or `deadline` passes.
fn wait_readable(fds: &[std::os::fd::RawFd], deadline: Instant) -> Result<(), ClientError> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout);
        }
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: `polled` is a valid array of `polled.len()` pollfds that
        // outlives the call.
        let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, ms) };
        match n {
            0 => return Err(ClientError::Timeout),
            n if n > 0 => return Ok(()),
            _ => match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                errno => return Err(ClientError::Os(errno.unwrap_or(libc::EIO))),
            },
        }
    }
}

/// What one service answered to the requests of one look-up.
pub struct Answer {
    pub source: Arc<VarlinkSource>,
    /// One per request, in the order asked (empty where nothing was had).
    pub data: Vec<Arc<SourceData>>,
    /// The service did not answer some request (timeout, broken reply):
    /// what it would have said is unknown.
    pub failed: bool,
}

/// Every answer of one look-up, one per service asked.
pub type Answers = Vec<Answer>;

/// The services currently in the userdb directory.
pub struct VarlinkSources {
    directory: PathBuf,
    own_socket: PathBuf,
    settings: RwLock<VarlinkSettings>,
    current: RwLock<Vec<Arc<VarlinkSource>>>,
    /// Set while PID 1's dynamic users are read from its links: then its
    /// `io.systemd.DynamicUser` socket is not a source.
    dynamic_users_local: std::sync::atomic::AtomicBool,
}

impl VarlinkSources {
    pub fn new(directory: PathBuf, own_socket: PathBuf, settings: VarlinkSettings) -> Self {
        VarlinkSources {
            directory,
            own_socket,
            settings: RwLock::new(settings),
            current: RwLock::new(Vec::new()),
            dynamic_users_local: Default::default(),
        }
    }

    pub fn settings(&self) -> VarlinkSettings {
        match self.settings.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set_settings(&self, settings: VarlinkSettings) {
        match self.settings.write() {
            Ok(mut s) => *s = settings,
            Err(poisoned) => *poisoned.into_inner() = settings,
        }
    }

    /// Tells discovery whether PID 1's dynamic users are read locally; from
    /// the moment they are, PID 1's services are no longer sources (not
    /// only from the next discovery).
    pub fn set_dynamic_users_local(&self, local: bool) {
        self.dynamic_users_local
            .store(local, std::sync::atomic::Ordering::Relaxed);
        if local {
            match self.current.write() {
                Ok(mut list) => list.retain(|s| !s.info.pid1_users),
                Err(poisoned) => poisoned.into_inner().retain(|s| !s.info.pid1_users),
            }
        }
    }

    /// Every known service, in name order.
    pub fn all(&self) -> Vec<Arc<VarlinkSource>> {
        match self.current.read() {
            Ok(list) => list.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The services a request with these options consults, breakers aside:
    /// the dynamic bypass leaves out those serving PID 1's dynamic users.
    fn consulted(&self, dynamic_bypass: bool) -> impl Iterator<Item = Arc<VarlinkSource>> {
        self.all()
            .into_iter()
            .filter(move |s| !(dynamic_bypass && s.info.pid1_users))
    }

    /// The services a request may use now.
    pub fn usable(&self, dynamic_bypass: bool) -> Vec<Arc<VarlinkSource>> {
        self.consulted(dynamic_bypass)
            .filter(|s| s.available())
            .collect()
    }

    /// The services a request with these options would ask but cannot now
    /// (breaker open).
    pub fn down(&self, dynamic_bypass: bool) -> Vec<String> {
        self.consulted(dynamic_bypass)
            .filter(|s| !s.available())
            .map(|s| s.info.name.clone())
            .collect()
    }

    /// Drops every service's cached answers.
    pub fn flush(&self) {
        for source in self.all() {
            source.flush();
        }
    }

    /// Asks every service all `requests` at once; each service's answers
    /// come back in request order (empty where nothing could be had).
    pub fn ask(&self, sources: Vec<Arc<VarlinkSource>>, requests: &[Request]) -> Answers {
        let settings = self.settings();
        let mut answers: Answers = sources
            .iter()
            .map(|s| Answer {
                source: Arc::clone(s),
                data: vec![Arc::<SourceData>::default(); requests.len()],
                failed: false,
            })
            .collect();
        struct Pending {
            source: usize,
            request: usize,
            connection: Connection,
            replies: Vec<Value>,
            started: Instant,
        }
        let mut pending = Vec::new();
        for (si, answer) in answers.iter_mut().enumerate() {
            let source = Arc::clone(&answer.source);
            for (ri, request) in requests.iter().enumerate() {
                if let Some(cached) = source.cached(request) {
                    answer.data[ri] = cached;
                    continue;
                }
                if !source.available() {
                    answer.failed = true;
                    continue;
                }
                let timeout = if request.is_listing() {
                    settings.enumeration_timeout
                } else {
                    settings.timeout
                };
                let started = Instant::now();
                match source.begin(request, timeout) {
                    Ok(connection) => pending.push(Pending {
                        source: si,
                        request: ri,
                        connection,
                        replies: Vec::new(),
                        started,
                    }),
                    Err(e) => {
                        let (data, failed) = source.settle(request, Err(e), started, &settings);
                        answer.data[ri] = data;
                        answer.failed |= failed;
                    }
                }
            }
        }
        while !pending.is_empty() {
            let mut still = Vec::with_capacity(pending.len());
            for mut p in pending {
                let replies = &mut p.replies;
                let outcome = p.connection.read_available(|v| {
                    replies.push(v);
                    Ok(())
                });
                let outcome = match outcome {
                    Ok(Progress::Pending) => {
                        still.push(p);
                        continue;
                    }
                    Ok(Progress::Done) => Ok(std::mem::take(&mut p.replies)),
                    Err(ClientError::Remote(name)) if name == userdb::NO_RECORD_FOUND => {
                        Ok(std::mem::take(&mut p.replies))
                    }
                    Err(e) => Err(e),
                };
                let answer = &mut answers[p.source];
                let (data, failed) =
                    answer
                        .source
                        .settle(&requests[p.request], outcome, p.started, &settings);
                answer.data[p.request] = data;
                answer.failed |= failed;
            }
            pending = still;
            if let Some(deadline) = pending.iter().map(|p| p.connection.deadline()).min() {
                let fds: Vec<_> = pending.iter().map(|p| p.connection.fd()).collect();
                // A timeout here is noticed per connection on the next round.
                let _ = wait_readable(&fds, deadline);
            }
        }
        answers
    }

    /// Re-reads the directory and probes the services whose back-off is
    /// over. Called from the watcher, never on the request path.
    pub fn maintain(&self) {
        self.discover();
        let settings = self.settings();
        for source in self.all() {
            let due = lock(&source.breaker).probe_due();
            if due {
                source.probe(&settings);
            }
        }
    }

    fn discover(&self) {
        let own = std::fs::metadata(&self.own_socket)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let dynamic_local = self
            .dynamic_users_local
            .load(std::sync::atomic::Ordering::Relaxed);
        let previous = self.all();
        let mut found = Vec::new();
        let mut entries: Vec<(String, PathBuf)> = match std::fs::read_dir(&self.directory) {
            Ok(entries) => entries
                .flatten()
                .take(1024)
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
                .collect(),
            Err(_) => Vec::new(),
        };
        entries.sort();
        let timeout = self.settings().timeout;
        for (name, path) in entries {
            if NEVER_QUERIED.contains(&name.as_str()) || (dynamic_local && name == DYNAMIC_USER) {
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
                .find(|s| s.info.name == name && s.identity == identity);
            found.push(match known {
                Some(s) if s.info.pid1_users && dynamic_local => continue,
                Some(s) => Arc::clone(s),
                None => {
                    let pid1 = name == DYNAMIC_USER || listener_is_pid1(&path, timeout);
                    if pid1 && dynamic_local {
                        continue;
                    }
                    tracing::info!(source = %name, served_by_pid1 = pid1, "userdb service appeared");
                    Arc::new(VarlinkSource::new(name, path, identity, pid1))
                }
            });
        }
        for gone in previous
            .iter()
            .filter(|p| !found.iter().any(|f| Arc::ptr_eq(f, p)))
        {
            tracing::info!(source = %gone.info.name, "userdb service went away");
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
        let good = user(json!({"userName": "alice", "uid": 5000, "service": SVC,
                                "privileged": {"hashedPassword": ["$6$x"]}}));
        let mut answer = SourceData::default();
        assert!(take_reply(SVC, &by_name, &good, &mut answer).is_ok());
        let alice = &answer.users[0];
        let (public, withheld) = alice.userdb_json(false);
        assert!(withheld && public.get("privileged").is_none());
        for bad in [
            user(json!({"userName": "alice", "uid": 5000})),
            user(json!({"userName": "alice", "uid": 5000, "service": "io.other"})),
            user(json!({"userName": "bob", "uid": 5000, "service": SVC})),
            user(json!({"userName": "alice", "uid": 5000, "realName": "a:b", "service": SVC})),
            json!({"garbage": true}),
        ] {
            assert!(
                take_reply(SVC, &by_name, &bad, &mut answer).is_err(),
                "{bad}"
            );
        }
        assert!(take_reply(SVC, &Request::UserById(5001), &good, &mut answer).is_err());
        let group = json!({"record": {"groupName": "devs", "gid": 700, "service": SVC}});
        assert!(take_reply(SVC, &Request::GroupById(700), &group, &mut answer).is_ok());
        let memberships = Request::Memberships {
            user: Some("alice".into()),
            group: None,
        };
        let pair = |u: &str, g: &str| json!({"userName": u, "groupName": g});
        assert!(take_reply(SVC, &memberships, &pair("alice", "devs"), &mut answer).is_ok());
        assert!(take_reply(SVC, &memberships, &pair("bob", "devs"), &mut answer).is_err());
        assert!(take_reply(SVC, &memberships, &pair("alice", "a,b"), &mut answer).is_err());
        assert_eq!(answer.memberships.len(), 1);
    }

    #[test]
    fn breaker_backoff_doubles_up_to_the_maximum_and_says_so_in_words() {
        let settings = VarlinkSettings {
            min_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
            ..VarlinkSettings::default()
        };
        let mut b = Breaker::default();
        assert_eq!(b.describe(), "ok");
        let backoffs: Vec<u64> = (0..6)
            .map(|_| {
                b.trip(&settings);
                b.backoff.as_secs()
            })
            .collect();
        assert_eq!(backoffs, [5, 10, 20, 40, 60, 60]);
        assert!(!b.probe_due());
        assert_eq!(b.describe(), "failing, next try in 59 s");
        b.close();
        assert!(b.open_since.is_none() && b.backoff.is_zero());
    }

    #[test]
    fn cache_honours_ttl() {
        let mut cache = Cache::default();
        let r = Request::UserById(1);
        cache.put(r.clone(), Arc::default(), Duration::from_millis(30));
        assert!(cache.get(&r).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.get(&r).is_none());
    }
}
