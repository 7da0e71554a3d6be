//! Answers look-ups from the local snapshot and the Varlink services
//! together, by the same rules as the snapshot itself:
//!
//! - a user or group comes from the highest-priority source that has it
//!   (the order is configured, see `merge::Priority`), never from whichever
//!   answers first; services ranked below a local hit are not asked for it;
//! - memberships are the union over every source (local memberships,
//!   services' `GetMemberships`, services' group records' `members`), each
//!   pair once, local ones first, then by source priority;
//! - in listings a name or id already given by a higher-priority source
//!   hides later ones; a disagreeing pair is a conflict, logged once;
//! - the services of one request are asked concurrently, each within its
//!   deadline; sources whose breaker is open, or served by PID 1 when the
//!   request carries the dynamic bypass, are left out.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use userdb_proto::api::LookupOptions;

use crate::merge::{Priority, Rank};
use crate::snapshot::{Snapshot, SnapshotStore, SourceId};
use crate::sources::varlink::{Request, VarlinkSource, VarlinkSources};
use crate::sources::SourceKind;

/// A look-up key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    Name(&'a str),
    Id(u32),
}

/// A record chosen for an answer, and the kind of source it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Picked {
    pub record: Value,
    pub kind: SourceKind,
}

/// One membership in an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipAnswer {
    pub user: String,
    pub group: String,
}

/// Users or groups: which fields name a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Database {
    Users,
    Groups,
}

impl Database {
    fn label(self) -> &'static str {
        match self {
            Database::Users => "user",
            Database::Groups => "group",
        }
    }

    fn identity(self, record: &Value) -> Option<(&str, u32)> {
        let (name, id) = match self {
            Database::Users => ("userName", "uid"),
            Database::Groups => ("groupName", "gid"),
        };
        Some((
            record.get(name)?.as_str()?,
            u32::try_from(record.get(id)?.as_u64()?).ok()?,
        ))
    }
}

/// A record offered by one source.
struct Candidate<'a> {
    rank: Rank,
    source: &'a str,
    kind: SourceKind,
    record: &'a Value,
}

/// Distinct conflict messages remembered before the memory is reset.
const CONFLICTS_CAP: usize = 4096;

pub struct Resolver {
    store: SnapshotStore,
    varlink: Arc<VarlinkSources>,
    priority: Priority,
    logged_conflicts: Mutex<HashSet<String>>,
}

type Answers = Vec<(Arc<VarlinkSource>, Vec<Arc<Vec<Value>>>)>;

impl Resolver {
    pub fn new(store: SnapshotStore, varlink: Arc<VarlinkSources>, priority: Priority) -> Self {
        Resolver {
            store,
            varlink,
            priority,
            logged_conflicts: Mutex::new(HashSet::new()),
        }
    }

    /// A resolver over local sources only, for tests of the layers above.
    #[cfg(test)]
    pub fn local_only(snapshot: Snapshot, priority: Priority) -> Self {
        let no_services = VarlinkSources::new(
            "/nonexistent".into(),
            "/nonexistent".into(),
            Default::default(),
        );
        Resolver::new(
            SnapshotStore::new(snapshot),
            Arc::new(no_services),
            priority,
        )
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.store.current()
    }

    fn local_rank(&self, snapshot: &Snapshot, source: SourceId) -> Rank {
        match snapshot.sources.get(source) {
            Some(s) => self.priority.rank(&s.name, s.kind),
            None => self.priority.rank("", SourceKind::Files),
        }
    }

    fn varlink_rank(&self, source: &VarlinkSource) -> Rank {
        self.priority.rank(&source.name, SourceKind::Varlink)
    }

    /// Asks every source its requests (in order, each skipped once the
    /// source's breaker opens), the sources concurrently; answers come back
    /// in priority order.
    fn fan_out(&self, sources: Vec<Arc<VarlinkSource>>, requests: &[Request]) -> Answers {
        let settings = &self.varlink.settings;
        let ask = |source: &VarlinkSource| -> Vec<Arc<Vec<Value>>> {
            requests
                .iter()
                .map(|r| match source.cached(r) {
                    Some(answer) => answer,
                    None if source.available() => source.fetch(r, settings),
                    None => Arc::new(Vec::new()),
                })
                .collect()
        };
        let all_cached = sources
            .iter()
            .all(|s| requests.iter().all(|r| s.cached(r).is_some()));
        let mut answers: Answers = if sources.len() <= 1 || all_cached {
            sources
                .into_iter()
                .map(|s| {
                    let a = ask(&s);
                    (s, a)
                })
                .collect()
        } else {
            std::thread::scope(|scope| {
                let running: Vec<_> = sources
                    .into_iter()
                    .map(|s| {
                        let handle = scope.spawn({
                            let s = Arc::clone(&s);
                            let ask = &ask;
                            move || ask(&s)
                        });
                        (s, handle)
                    })
                    .collect();
                running
                    .into_iter()
                    .filter_map(|(s, handle)| handle.join().ok().map(|a| (s, a)))
                    .collect()
            })
        };
        answers.sort_by_key(|(s, _)| self.varlink_rank(s));
        answers
    }

    fn log_conflict(&self, db: Database, winner: &Candidate, loser: &Candidate) {
        let (Some((wn, wi)), Some((ln, li))) =
            (db.identity(winner.record), db.identity(loser.record))
        else {
            return;
        };
        if (wn, wi) == (ln, li) {
            return;
        }
        let message = format!(
            "conflict: {label} {wn}:{wi} from {} wins over {label} {ln}:{li} from {}",
            winner.source,
            loser.source,
            label = db.label()
        );
        let mut logged = self
            .logged_conflicts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if logged.len() >= CONFLICTS_CAP {
            logged.clear();
        }
        if logged.insert(message.clone()) {
            tracing::warn!("{message}");
        }
    }

    /// The best candidate; the others that disagree with it are conflicts.
    fn pick<'a>(&self, db: Database, mut candidates: Vec<Candidate<'a>>) -> Option<Candidate<'a>> {
        candidates.sort_by(|a, b| a.rank.cmp(&b.rank));
        let mut candidates = candidates.into_iter();
        let winner = candidates.next()?;
        for loser in candidates {
            self.log_conflict(db, &winner, &loser);
        }
        Some(winner)
    }

    pub fn user(&self, key: Key, options: LookupOptions) -> Option<Picked> {
        let snapshot = self.snapshot();
        let local = match key {
            Key::Name(n) => snapshot.user_by_name(n),
            Key::Id(uid) => snapshot.user_by_uid(uid),
        };
        let local_rank = local.map(|u| self.local_rank(&snapshot, u.source));
        let sources: Vec<_> = self
            .varlink
            .usable(options.dynamic_bypass)
            .into_iter()
            .filter(|s| outranks(&self.varlink_rank(s), local_rank.as_ref()))
            .collect();
        let request = match key {
            Key::Name(n) => Request::UserByName(n.to_owned()),
            Key::Id(uid) => Request::UserById(uid),
        };
        let answers = self.fan_out(sources, &[request]);
        let mut candidates = Vec::new();
        if let (Some(user), Some(rank)) = (local, local_rank) {
            candidates.push(Candidate {
                rank,
                source: &snapshot.sources[user.source].name,
                kind: snapshot.sources[user.source].kind,
                record: &user.record,
            });
        }
        candidates.extend(self.varlink_candidates(&answers, 0));
        self.pick(Database::Users, candidates).map(|c| Picked {
            record: c.record.clone(),
            kind: c.kind,
        })
    }

    /// The first record of each source's answer to request `index`.
    fn varlink_candidates<'a>(&self, answers: &'a Answers, index: usize) -> Vec<Candidate<'a>> {
        answers
            .iter()
            .filter_map(|(s, a)| {
                Some(Candidate {
                    rank: self.varlink_rank(s),
                    source: &s.name,
                    kind: SourceKind::Varlink,
                    record: a.get(index)?.first()?,
                })
            })
            .collect()
    }

    /// Every user, by priority, each name and id once.
    pub fn users(
        &self,
        options: LookupOptions,
        emit: &mut dyn FnMut(Picked) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let snapshot = self.snapshot();
        let answers = self.fan_out(
            self.varlink.usable(options.dynamic_bypass),
            &[Request::AllUsers],
        );
        let local = snapshot.users().map(|u| Candidate {
            rank: self.local_rank(&snapshot, u.source),
            source: &snapshot.sources[u.source].name,
            kind: snapshot.sources[u.source].kind,
            record: &u.record,
        });
        self.list(Database::Users, local, &answers, options, &mut |c| {
            emit(Picked {
                record: c.record.clone(),
                kind: c.kind,
            })
        })
    }

    /// Walks the candidates in priority order, hiding taken names and ids.
    fn list<'a>(
        &self,
        db: Database,
        local: impl Iterator<Item = Candidate<'a>>,
        answers: &'a Answers,
        options: LookupOptions,
        emit: &mut dyn FnMut(&Candidate<'a>) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut candidates: Vec<Candidate> = local.collect();
        for (s, a) in answers {
            for record in a.first().into_iter().flat_map(|r| r.iter()) {
                candidates.push(Candidate {
                    rank: self.varlink_rank(s),
                    source: &s.name,
                    kind: SourceKind::Varlink,
                    record,
                });
            }
        }
        // Stable: within one source the source's own order is kept.
        candidates.sort_by(|a, b| a.rank.cmp(&b.rank));
        let mut names: HashSet<&str> = HashSet::new();
        let mut ids: HashSet<u32> = HashSet::new();
        let mut winners: Vec<usize> = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            let Some((name, id)) = db.identity(c.record) else {
                continue;
            };
            if names.contains(name) || ids.contains(&id) {
                if let Some(&w) = winners.iter().rev().find(|&&w| {
                    db.identity(candidates[w].record)
                        .is_some_and(|(n, d)| n == name || d == id)
                }) {
                    self.log_conflict(db, &candidates[w], c);
                }
                continue;
            }
            names.insert(name);
            ids.insert(id);
            winners.push(i);
            if !(options.caller_reads_files && c.kind == SourceKind::Files) {
                emit(c)?;
            }
        }
        Ok(())
    }

    pub fn group(&self, key: Key, options: LookupOptions) -> Option<Picked> {
        let name = match key {
            Key::Name(n) => n.to_owned(),
            Key::Id(gid) => self.group_name_by_gid(gid, options)?,
        };
        let picked = self.group_by_name(&name, options)?;
        match key {
            Key::Id(gid)
                if Database::Groups.identity(&picked.record).map(|(_, id)| id) != Some(gid) =>
            {
                None
            }
            _ => Some(picked),
        }
    }

    /// The name of the group that wins gid `gid`.
    fn group_name_by_gid(&self, gid: u32, options: LookupOptions) -> Option<String> {
        let snapshot = self.snapshot();
        let local = snapshot.group_by_gid(gid);
        let local_rank = local.map(|g| self.local_rank(&snapshot, g.source));
        let sources: Vec<_> = self
            .varlink
            .usable(options.dynamic_bypass)
            .into_iter()
            .filter(|s| outranks(&self.varlink_rank(s), local_rank.as_ref()))
            .collect();
        let answers = self.fan_out(sources, &[Request::GroupById(gid)]);
        let mut candidates = self.varlink_candidates(&answers, 0);
        if let (Some(group), Some(rank)) = (local, local_rank) {
            candidates.push(Candidate {
                rank,
                source: &snapshot.sources[group.source].name,
                kind: snapshot.sources[group.source].kind,
                record: &group.record,
            });
        }
        let winner = self.pick(Database::Groups, candidates)?;
        Database::Groups
            .identity(winner.record)
            .map(|(n, _)| n.to_owned())
    }

    /// The group by name with its merged members.
    fn group_by_name(&self, name: &str, options: LookupOptions) -> Option<Picked> {
        let snapshot = self.snapshot();
        let local = snapshot.group_by_name(name);
        let answers = self.fan_out(
            self.varlink.usable(options.dynamic_bypass),
            &[
                Request::GroupByName(name.to_owned()),
                Request::Memberships {
                    user: None,
                    group: Some(name.to_owned()),
                },
            ],
        );
        let mut candidates = self.varlink_candidates(&answers, 0);
        if let Some(group) = local {
            candidates.push(Candidate {
                rank: self.local_rank(&snapshot, group.source),
                source: &snapshot.sources[group.source].name,
                kind: snapshot.sources[group.source].kind,
                record: &group.record,
            });
        }
        let winner = self.pick(Database::Groups, candidates)?;
        let mut members = Members::default();
        for m in snapshot.memberships_of_group(name) {
            if options.caller_reads_files && snapshot.stated_by_files(m) {
                members.skip(&m.user);
            } else {
                members.add(&m.user);
            }
        }
        for (_, a) in &answers {
            for record in a.first().into_iter().flat_map(|r| r.iter()) {
                members.add_all(record.get("members"));
            }
            for membership in a.get(1).into_iter().flat_map(|r| r.iter()) {
                members.add_value(membership.get("userName"));
            }
        }
        Some(Picked {
            record: members.into_record(winner.record.clone()),
            kind: winner.kind,
        })
    }

    /// Every group, by priority, each name and id once, members merged.
    pub fn groups(
        &self,
        options: LookupOptions,
        emit: &mut dyn FnMut(Picked) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let snapshot = self.snapshot();
        let answers = self.fan_out(
            self.varlink.usable(options.dynamic_bypass),
            &[
                Request::AllGroups,
                Request::Memberships {
                    user: None,
                    group: None,
                },
            ],
        );
        let local = snapshot.groups().map(|g| Candidate {
            rank: self.local_rank(&snapshot, g.source),
            source: &snapshot.sources[g.source].name,
            kind: snapshot.sources[g.source].kind,
            record: &g.record,
        });
        let remote_members = |group: &str, members: &mut Members| {
            for (_, a) in &answers {
                for record in a.first().into_iter().flat_map(|r| r.iter()) {
                    if record.get("groupName").and_then(Value::as_str) == Some(group) {
                        members.add_all(record.get("members"));
                    }
                }
                for m in a.get(1).into_iter().flat_map(|r| r.iter()) {
                    if m.get("groupName").and_then(Value::as_str) == Some(group) {
                        members.add_value(m.get("userName"));
                    }
                }
            }
        };
        self.list(Database::Groups, local, &answers, options, &mut |c| {
            let Some((name, _)) = Database::Groups.identity(c.record) else {
                return Ok(());
            };
            let mut members = Members::default();
            for m in snapshot.memberships_of_group(name) {
                if options.caller_reads_files && snapshot.stated_by_files(m) {
                    members.skip(&m.user);
                } else {
                    members.add(&m.user);
                }
            }
            remote_members(name, &mut members);
            emit(Picked {
                record: members.into_record(c.record.clone()),
                kind: c.kind,
            })
        })
    }

    /// Memberships of a user, of a group, one pair, or all of them.
    pub fn memberships(
        &self,
        user: Option<&str>,
        group: Option<&str>,
        options: LookupOptions,
    ) -> Vec<MembershipAnswer> {
        let snapshot = self.snapshot();
        let local: Box<dyn Iterator<Item = _>> = match (user, group) {
            (Some(u), Some(g)) => Box::new(snapshot.membership(u, g).into_iter()),
            (Some(u), None) => Box::new(snapshot.memberships_of_user(u)),
            (None, Some(g)) => Box::new(snapshot.memberships_of_group(g)),
            (None, None) => Box::new(snapshot.memberships()),
        };
        let mut seen: HashSet<(String, String)> = HashSet::new();
        let mut out = Vec::new();
        for m in local {
            seen.insert((m.user.clone(), m.group.clone()));
            if !(options.caller_reads_files && snapshot.stated_by_files(m)) {
                out.push(MembershipAnswer {
                    user: m.user.clone(),
                    group: m.group.clone(),
                });
            }
        }
        let request = Request::Memberships {
            user: user.map(str::to_owned),
            group: group.map(str::to_owned),
        };
        let answers = self.fan_out(self.varlink.usable(options.dynamic_bypass), &[request]);
        for (_, a) in &answers {
            for m in a.first().into_iter().flat_map(|r| r.iter()) {
                let (Some(u), Some(g)) = (m["userName"].as_str(), m["groupName"].as_str()) else {
                    continue;
                };
                if seen.insert((u.to_owned(), g.to_owned())) {
                    out.push(MembershipAnswer {
                        user: u.to_owned(),
                        group: g.to_owned(),
                    });
                }
            }
        }
        out
    }

    /// The gid of a group by name, for membership replies.
    pub fn gid_of(&self, group: &str, options: LookupOptions) -> Option<u32> {
        if let Some(g) = self.snapshot().group_by_name(group) {
            return Some(g.gid);
        }
        let answers = self.fan_out(
            self.varlink.usable(options.dynamic_bypass),
            &[Request::GroupByName(group.to_owned())],
        );
        let candidates = self.varlink_candidates(&answers, 0);
        let winner = self.pick(Database::Groups, candidates)?;
        Database::Groups.identity(winner.record).map(|(_, gid)| gid)
    }

    /// Every source in priority order, for status output.
    pub fn sources_status(&self) -> Vec<Value> {
        let snapshot = self.snapshot();
        let mut ranked: Vec<(Rank, Value)> = snapshot
            .sources
            .iter()
            .map(|s| {
                let status = json!({
                    "name": s.name,
                    "kind": s.kind.name(),
                    "state": "ok",
                    "users": s.users,
                    "groups": s.groups,
                    "memberships": s.memberships,
                    "problems": s.problems,
                    "latencyUSec": s.load_time.as_micros() as u64,
                });
                (self.priority.rank(&s.name, s.kind), status)
            })
            .collect();
        ranked.extend(
            self.varlink
                .all()
                .iter()
                .map(|s| (self.varlink_rank(s), s.status())),
        );
        ranked.sort_by(|a, b| a.0.cmp(&b.0));
        ranked.into_iter().map(|(_, v)| v).collect()
    }
}

/// Whether a source of `rank` is asked for a key whose best local record
/// (if any) has `local`: only sources that would win over it are.
fn outranks(rank: &Rank, local: Option<&Rank>) -> bool {
    match local {
        None => true,
        Some(local) => rank < local,
    }
}

/// A member list in first-seen order, each name once.
#[derive(Default)]
struct Members {
    names: Vec<String>,
    seen: HashSet<String>,
}

impl Members {
    fn add(&mut self, name: &str) {
        if userdb_proto::names::valid_name(name) && self.seen.insert(name.to_owned()) {
            self.names.push(name.to_owned());
        }
    }

    /// Counts `name` as listed without listing it: the caller has it from
    /// /etc/group already, and glibc's merge would repeat it.
    fn skip(&mut self, name: &str) {
        self.seen.insert(name.to_owned());
    }

    fn add_value(&mut self, name: Option<&Value>) {
        if let Some(n) = name.and_then(Value::as_str) {
            self.add(n);
        }
    }

    fn add_all(&mut self, names: Option<&Value>) {
        for n in names.and_then(Value::as_array).into_iter().flatten() {
            self.add_value(Some(n));
        }
    }

    /// The record with `members` replaced by this list (or removed).
    fn into_record(self, mut record: Value) -> Value {
        if let Some(obj) = record.as_object_mut() {
            if self.names.is_empty() {
                obj.remove("members");
            } else {
                obj.insert("members".into(), json!(self.names));
            }
        }
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VarlinkSettings;
    use crate::merge::{merge, LoadedSource};
    use crate::sources::varlink::directory;
    use crate::sources::{SourceData, SourceGroup, SourceUser};
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};
    use userdb_proto::varlink::{encode, Call, FrameBuffer, Reply};

    const DIRECTORY: &str = "io.example.Directory";

    /// How a fake service answers one call; `None` never answers.
    type Behaviour = fn(&Call) -> Option<Vec<Reply>>;

    /// Serves `behaviour` on `dir/name`; returns the count of accepted
    /// connections.
    fn fake_service(dir: &Path, name: &str, behaviour: Behaviour) -> Arc<AtomicUsize> {
        let listener = UnixListener::bind(dir.join(name)).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || serve_fake(stream, behaviour));
            }
        });
        accepted
    }

    fn serve_fake(mut stream: UnixStream, behaviour: Behaviour) {
        let mut frames = FrameBuffer::new(1 << 16);
        let mut buf = [0u8; 4096];
        loop {
            while let Ok(Some(frame)) = frames.next_frame() {
                let Ok(call) = serde_json::from_slice::<Call>(&frame) else {
                    return;
                };
                // A hung service keeps reading (so the client sees no EOF)
                // and never writes.
                for reply in behaviour(&call).into_iter().flatten() {
                    if stream.write_all(&encode(&reply)).is_err() {
                        return;
                    }
                }
            }
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => frames.push(&buf[..n]),
            }
        }
    }

    fn record(v: Value) -> Value {
        json!({ "record": v, "incomplete": false })
    }

    /// carol (5000) and a conflicting alice (6000); groups devs (700) and
    /// wheel (10, member dave); memberships carol:wheel and alice:wheel.
    fn directory_service(call: &Call) -> Option<Vec<Reply>> {
        let p = &call.parameters;
        let users = [
            json!({"userName": "carol", "uid": 5000, "service": DIRECTORY}),
            json!({"userName": "alice", "uid": 6000, "service": DIRECTORY}),
        ];
        let groups = [
            json!({"groupName": "devs", "gid": 700, "members": ["carol"], "service": DIRECTORY}),
            json!({"groupName": "wheel", "gid": 10, "members": ["dave"], "service": DIRECTORY}),
        ];
        // alice:wheel repeats what files state.
        let memberships = [
            json!({"userName": "carol", "groupName": "wheel"}),
            json!({"userName": "alice", "groupName": "wheel"}),
        ];
        let (records, name_key, id_key): (Vec<Value>, &str, &str) = match call.method.as_str() {
            "io.systemd.UserDatabase.GetUserRecord" => (users.to_vec(), "userName", "uid"),
            "io.systemd.UserDatabase.GetGroupRecord" => (groups.to_vec(), "groupName", "gid"),
            _ => {
                let matching: Vec<Value> = memberships
                    .iter()
                    .filter(|m| {
                        ["userName", "groupName"]
                            .iter()
                            .all(|k| !matches!(p.get(k), Some(v) if *v != m[*k]))
                    })
                    .cloned()
                    .collect();
                return Some(stream(matching));
            }
        };
        let matching: Vec<Value> = records
            .into_iter()
            .filter(|r| !matches!(p.get(name_key), Some(v) if *v != r[name_key]))
            .filter(|r| !matches!(p.get(id_key), Some(v) if *v != r[id_key]))
            .map(record)
            .collect();
        Some(stream(matching))
    }

    fn stream(items: Vec<Value>) -> Vec<Reply> {
        if items.is_empty() {
            return vec![Reply::error("io.systemd.UserDatabase.NoRecordFound")];
        }
        let last = items.len() - 1;
        items
            .into_iter()
            .enumerate()
            .map(|(i, v)| Reply::ok(v, i != last))
            .collect()
    }

    fn hang(_: &Call) -> Option<Vec<Reply>> {
        None
    }

    /// Wrong service name, a mismatching record, and garbage.
    fn lying_service(call: &Call) -> Option<Vec<Reply>> {
        let reply = match call.method.as_str() {
            "io.systemd.UserDatabase.GetUserRecord" => {
                record(json!({"userName": "mallory", "uid": 6666, "service": "io.systemd.Home"}))
            }
            "io.systemd.UserDatabase.GetGroupRecord" => {
                record(json!({"groupName": "other", "gid": 6667, "service": "io.example.Liar"}))
            }
            _ => json!("garbage"),
        };
        Some(vec![Reply::ok(reply, false)])
    }

    struct World {
        root: PathBuf,
        resolver: Resolver,
        varlink: Arc<VarlinkSources>,
    }

    impl Drop for World {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn local_data() -> SourceData {
        SourceData {
            users: vec![SourceUser {
                name: "alice".into(),
                uid: 1000,
                record: json!({"userName": "alice", "uid": 1000}),
                listed: true,
            }],
            groups: vec![SourceGroup {
                name: "wheel".into(),
                gid: 10,
                record: json!({"groupName": "wheel", "gid": 10, "members": ["alice"]}),
                listed: true,
            }],
            ..Default::default()
        }
    }

    /// A root with the files source above and the given services running.
    fn world(tag: &str, services: &[(&str, Behaviour)]) -> (World, Vec<Arc<AtomicUsize>>) {
        let settings = VarlinkSettings {
            timeout: Duration::from_millis(250),
            ..VarlinkSettings::default()
        };
        world_with(tag, services, settings)
    }

    fn world_with(
        tag: &str,
        services: &[(&str, Behaviour)],
        settings: VarlinkSettings,
    ) -> (World, Vec<Arc<AtomicUsize>>) {
        let root =
            std::env::temp_dir().join(format!("brokerd-resolve-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = directory(&root);
        std::fs::create_dir_all(&dir).unwrap();
        let counters = services
            .iter()
            .map(|(n, b)| fake_service(&dir, n, *b))
            .collect();
        let merged = merge(
            vec![LoadedSource {
                name: "files".into(),
                kind: SourceKind::Files,
                data: local_data(),
                load_time: Duration::ZERO,
            }],
            1,
        );
        let own_socket = root.join("own.sock");
        let varlink = Arc::new(VarlinkSources::new(dir, own_socket, settings));
        varlink.maintain();
        let resolver = Resolver::new(
            SnapshotStore::new(merged.snapshot),
            Arc::clone(&varlink),
            Priority::new(vec!["files".into(), "dropins".into()]),
        );
        (
            World {
                root,
                resolver,
                varlink,
            },
            counters,
        )
    }

    fn uid_of(p: &Picked) -> u64 {
        p.record["uid"].as_u64().unwrap()
    }

    const PLAIN: LookupOptions = LookupOptions {
        caller_reads_files: false,
        dynamic_bypass: false,
    };
    const BYPASS: LookupOptions = LookupOptions {
        caller_reads_files: false,
        dynamic_bypass: true,
    };

    #[test]
    fn hung_pid1_source_costs_one_deadline_then_nothing() {
        let (w, counters) = world(
            "breaker",
            &[
                (DIRECTORY, directory_service),
                ("io.systemd.DynamicUser", hang),
                ("io.systemd.Multiplexer", hang),
            ],
        );
        let started = Instant::now();
        let carol = w.resolver.user(Key::Name("carol"), PLAIN).unwrap();
        let first = started.elapsed();
        assert_eq!(uid_of(&carol), 5000);
        assert!(
            // One deadline (250 ms), not two: loose enough for a busy runner.
            first >= Duration::from_millis(250) && first < Duration::from_millis(450),
            "{first:?}"
        );
        let started = Instant::now();
        assert!(w.resolver.user(Key::Name("nosuchuser"), PLAIN).is_none());
        assert!(w.resolver.user(Key::Id(5000), PLAIN).is_some());
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "{:?}",
            started.elapsed()
        );
        let status = w.resolver.sources_status();
        let dynamic = status
            .iter()
            .find(|s| s["name"] == "io.systemd.DynamicUser")
            .unwrap();
        assert_eq!(dynamic["state"], "open");
        assert_eq!(dynamic["servedByPid1"], true);
        assert_eq!(
            counters[2].load(Ordering::SeqCst),
            0,
            "the multiplexer was contacted"
        );
    }

    /// Hangs until `RECOVERED` is set, then serves like the directory.
    static RECOVERED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    fn recovering(call: &Call) -> Option<Vec<Reply>> {
        if RECOVERED.load(Ordering::SeqCst) {
            directory_service(call)
        } else {
            None
        }
    }

    #[test]
    fn breaker_probes_off_the_request_path_and_restores() {
        let settings = VarlinkSettings {
            timeout: Duration::from_millis(100),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_millis(400),
            ..VarlinkSettings::default()
        };
        let (w, _) = world_with("restore", &[(DIRECTORY, recovering)], settings);
        assert!(w.resolver.user(Key::Name("carol"), PLAIN).is_none());
        assert!(
            w.varlink.usable(false).is_empty(),
            "breaker open after the timeout"
        );
        RECOVERED.store(true, Ordering::SeqCst);
        let started = Instant::now();
        while w.varlink.usable(false).is_empty() {
            assert!(started.elapsed() < Duration::from_secs(3), "never restored");
            w.varlink.maintain();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "probed before the back-off"
        );
        assert_eq!(
            uid_of(&w.resolver.user(Key::Name("carol"), PLAIN).unwrap()),
            5000
        );
    }

    #[test]
    fn dynamic_bypass_never_contacts_pid1_sources() {
        let (w, counters) = world(
            "bypass",
            &[
                (DIRECTORY, directory_service),
                ("io.systemd.DynamicUser", hang),
            ],
        );
        let started = Instant::now();
        assert_eq!(
            uid_of(&w.resolver.user(Key::Name("carol"), BYPASS).unwrap()),
            5000
        );
        assert!(w.resolver.user(Key::Name("nosuchuser"), BYPASS).is_none());
        let mut n = 0;
        w.resolver
            .users(BYPASS, &mut |_| {
                n += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(n, 2, "alice from files, carol from the directory");
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(counters[1].load(Ordering::SeqCst), 0);
    }

    #[test]
    fn priority_is_deterministic_and_members_are_a_union() {
        let (w, _) = world("priority", &[(DIRECTORY, directory_service)]);
        for _ in 0..20 {
            let alice = w.resolver.user(Key::Name("alice"), PLAIN).unwrap();
            assert_eq!((uid_of(&alice), alice.kind), (1000, SourceKind::Files));
        }
        assert!(
            w.resolver.user(Key::Id(6000), PLAIN).is_some(),
            "uid 6000 itself is not taken"
        );
        let wheel = w.resolver.group(Key::Id(10), PLAIN).unwrap();
        assert_eq!(wheel.record["members"], json!(["alice", "dave", "carol"]));
        let for_files_reader = LookupOptions {
            caller_reads_files: true,
            dynamic_bypass: false,
        };
        let wheel = w
            .resolver
            .group(Key::Name("wheel"), for_files_reader)
            .unwrap();
        assert_eq!(wheel.record["members"], json!(["dave", "carol"]));
        let carol: Vec<String> = w
            .resolver
            .memberships(Some("carol"), None, PLAIN)
            .into_iter()
            .map(|m| m.group)
            .collect();
        assert_eq!(carol, ["wheel"]);
        assert_eq!(w.resolver.gid_of("devs", PLAIN), Some(700));
        let mut groups = Vec::new();
        w.resolver
            .groups(for_files_reader, &mut |p| {
                groups.push(p.record);
                Ok(())
            })
            .unwrap();
        assert_eq!(
            groups,
            [json!({"groupName": "devs", "gid": 700, "members": ["carol"], "service": DIRECTORY})]
        );
        let mut users = Vec::new();
        w.resolver
            .users(PLAIN, &mut |p| {
                users.push(uid_of(&p));
                Ok(())
            })
            .unwrap();
        assert_eq!(users, [1000, 5000], "alice:6000 loses to files' alice");
    }

    #[test]
    fn lying_service_is_ignored_others_still_answer() {
        let (w, _) = world(
            "liar",
            &[
                (DIRECTORY, directory_service),
                ("io.example.Liar", lying_service),
            ],
        );
        assert!(w.resolver.user(Key::Name("mallory"), PLAIN).is_none());
        assert_eq!(
            uid_of(&w.resolver.user(Key::Name("carol"), PLAIN).unwrap()),
            5000
        );
        // The liar answers group "other" to every group query.
        let devs = w.resolver.group(Key::Name("devs"), PLAIN).unwrap();
        assert_eq!(devs.record["gid"], 700);
        let by_gid = w.resolver.group(Key::Id(700), PLAIN).unwrap();
        assert_eq!(by_gid.record["groupName"], "devs");
        let all = w.resolver.memberships(None, None, PLAIN);
        assert_eq!(
            all.len(),
            2,
            "alice:wheel from files, carol:wheel from the directory: {all:?}"
        );
    }

    #[test]
    fn own_socket_and_multiplexers_are_never_sources() {
        let (w, _) = world("discovery", &[(DIRECTORY, directory_service)]);
        let dir = directory(&w.root);
        let own = w.root.join("own.sock");
        let _own_listener = UnixListener::bind(&own).unwrap();
        std::fs::hard_link(&own, dir.join("io.example.AliasOfTheBroker")).unwrap();
        std::os::unix::fs::symlink(&own, dir.join("io.userdb.Broker")).unwrap();
        for name in [
            "io.systemd.Multiplexer",
            "io.systemd.NameServiceSwitch",
            "io.systemd.DropIn",
        ] {
            let _ = UnixListener::bind(dir.join(name)).unwrap();
        }
        std::fs::write(dir.join("not-a-socket"), "x").unwrap();
        w.varlink.maintain();
        let names: Vec<String> = w.varlink.all().iter().map(|s| s.name.clone()).collect();
        assert_eq!(names, [DIRECTORY]);
        std::fs::remove_file(dir.join(DIRECTORY)).unwrap();
        w.varlink.maintain();
        assert!(
            w.varlink.all().is_empty(),
            "a service that went away is dropped"
        );
    }
}
