//! Asking the broker: the `io.userdb.Broker` requests, their answers checked
//! again with the record model, failures mapped to NSS statuses, and the
//! back-off that makes a hung broker cost one deadline per window instead of
//! one per call.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::HashSet;
use std::ffi::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::Value;
use userdb_proto::api::{
    broker, userdb, GroupQuery, LookupOptions, MembershipQuery, MembershipReply, RecordReply,
    UserQuery,
};
use userdb_proto::client::{ClientError, Connection};
use userdb_proto::names::ValidName;
use userdb_proto::peer::Peer;
use userdb_proto::record::{GroupRecord, UserRecord};
use userdb_proto::BROKER_SERVICE;

use crate::guard::{self, Plan, Reentry, Refusal};
use crate::nsswitch::{self, Database};

/// glibc's `enum nss_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    TryAgain = -2,
    Unavail = -1,
    NotFound = 0,
    Success = 1,
}

/// A call's failure: the status to return and the value for `*errnop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub status: Status,
    pub errno: c_int,
}

impl Failure {
    pub const fn unavail(errno: c_int) -> Failure {
        Failure {
            status: Status::Unavail,
            errno,
        }
    }

    pub const NOT_FOUND: Failure = Failure {
        status: Status::NotFound,
        errno: libc::ENOENT,
    };

    /// The caller's buffer is too small; glibc retries with a larger one.
    pub const BUFFER_TOO_SMALL: Failure = Failure {
        status: Status::TryAgain,
        errno: libc::ERANGE,
    };

    /// The record lacks its privileged part: we are not root.
    pub const NOT_PRIVILEGED: Failure = Failure::unavail(libc::EACCES);

    /// The guard declined (bypass, PID 1, the broker itself, re-entry):
    /// for this caller the service is not there, as with an absent socket.
    pub const DECLINED: Failure = Failure::unavail(libc::ENOENT);

    /// Inside the back-off window after a timeout or refusal: try later.
    pub const BACKING_OFF: Failure = Failure::unavail(libc::EAGAIN);
}

/// How long a process answers `UNAVAIL` at once after a timeout or refusal.
pub const BACKOFF_WINDOW_MS: u64 = 3000;

/// Failing fast after a broker timed out or refused: until the window has
/// passed every call is declined, then exactly one call (whichever claims
/// the window first) probes again and either clears or renews it.
#[derive(Debug)]
pub struct Backoff {
    /// CLOCK_MONOTONIC milliseconds until which calls are declined; 0 = none.
    until_ms: AtomicU64,
}

impl Backoff {
    pub const fn new() -> Self {
        Backoff {
            until_ms: AtomicU64::new(0),
        }
    }

    /// Whether a call may talk to the broker now.
    pub fn admit(&self, now_ms: u64) -> bool {
        let until = self.until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if now_ms < until {
            return false;
        }
        // The window is over: the caller that moves it forward probes,
        // everyone else keeps failing fast until that probe has an answer.
        self.until_ms
            .compare_exchange(
                until,
                now_ms + BACKOFF_WINDOW_MS,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Records how a call that was admitted ended.
    pub fn record(&self, outcome: Result<(), &ClientError>, now_ms: u64) {
        match outcome {
            Err(ClientError::Timeout | ClientError::Refused) => self
                .until_ms
                .store(now_ms + BACKOFF_WINDOW_MS, Ordering::Release),
            // Absent costs microseconds, no need to remember it; anything
            // else means the broker answered.
            Err(ClientError::Absent) => {}
            _ => self.until_ms.store(0, Ordering::Release),
        }
    }
}

static BACKOFF: Backoff = Backoff::new();
static NSSWITCH: nsswitch::Cache = nsswitch::Cache::new();

/// What the host process gives a call: its environment, pid and clock.
pub struct Host<'a> {
    pub env: &'a guard::Env<'a>,
    pub pid: u32,
    /// The effective uid (asked only when a call connects): a broker run
    /// by this uid is believed too.
    pub euid: fn() -> u32,
    pub now_ms: fn() -> u64,
}

/// One NSS call that passed the guard: it may talk to the broker until its
/// deadline. Holds the thread's re-entry mark until dropped.
pub struct Lookup {
    plan: Plan,
    /// When the call first needed a deadline, i.e. first talked: an
    /// answer from the snapshot file reads no clock for it.
    started: OnceCell<Instant>,
    euid: fn() -> u32,
    now_ms: fn() -> u64,
    _reentry: Reentry,
}

fn refused(_: Refusal) -> Failure {
    Failure::DECLINED
}

fn client_failure(error: &ClientError) -> Failure {
    match error {
        ClientError::Remote(name) if name == userdb::NO_RECORD_FOUND => Failure::NOT_FOUND,
        // Not found where the broker could look, but a source was down: the
        // name may exist, so this is no NOTFOUND.
        ClientError::Remote(name) if name == broker::SOURCES_UNAVAILABLE => {
            Failure::unavail(libc::EAGAIN)
        }
        ClientError::Absent => Failure::unavail(libc::ENOENT),
        ClientError::Refused => Failure::unavail(libc::ECONNREFUSED),
        ClientError::Untrusted => Failure::unavail(libc::EPERM),
        ClientError::Timeout => Failure::unavail(libc::ETIMEDOUT),
        ClientError::Oversized => Failure::unavail(libc::EMSGSIZE),
        ClientError::Protocol(_) | ClientError::Remote(_) => Failure::unavail(libc::EPROTO),
        ClientError::Os(errno) => Failure::unavail(*errno),
    }
}

/// A record the broker sent that the record model refuses: never packed.
const BAD_RECORD: Failure = Failure::unavail(libc::EBADMSG);

fn record_reply(params: Value) -> Result<RecordReply, Failure> {
    serde_json::from_value(params).map_err(|_| BAD_RECORD)
}

fn user_from(reply: RecordReply) -> Result<(UserRecord, bool), Failure> {
    let user = UserRecord::from_json(&reply.record).map_err(|_| BAD_RECORD)?;
    Ok((user, reply.incomplete))
}

fn group_from(reply: RecordReply) -> Result<(GroupRecord, bool), Failure> {
    let group = GroupRecord::from_json(&reply.record).map_err(|_| BAD_RECORD)?;
    Ok((group, reply.incomplete))
}

/// How to look a user or group up.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    Name(ValidName<'a>),
    Id(u32),
}

impl Lookup {
    /// Runs the guard; `Err` means answer without any I/O.
    pub fn start(host: &Host<'_>) -> Result<Lookup, Failure> {
        let plan = guard::plan(host.env, host.pid).map_err(refused)?;
        let reentry = Reentry::enter().map_err(refused)?;
        Ok(Lookup {
            plan,
            started: OnceCell::new(),
            euid: host.euid,
            now_ms: host.now_ms,
            _reentry: reentry,
        })
    }

    /// What the caller's nsswitch.conf line and environment ask of the answer.
    pub fn options(&self, database: Database) -> LookupOptions {
        LookupOptions {
            caller_reads_files: NSSWITCH.files_first(
                Path::new(nsswitch::NSSWITCH_CONF),
                database,
                (self.now_ms)(),
            ),
            dynamic_bypass: self.plan.dynamic_bypass,
        }
    }

    /// Whether this call may open a socket (not in PID 1, a generator or
    /// the broker's own unit).
    pub fn may_talk(&self) -> bool {
        self.plan.silent.is_none()
    }

    /// Where the broker publishes its snapshot file.
    pub fn snapshot_path(&self) -> Cow<'static, Path> {
        self.plan.snapshot()
    }

    pub fn now_ms(&self) -> u64 {
        (self.now_ms)()
    }

    fn started(&self) -> Instant {
        *self.started.get_or_init(Instant::now)
    }

    /// Connects, runs `exchange` and feeds the outcome to the back-off.
    fn talk<T>(
        &self,
        exchange: impl FnOnce(&mut Connection) -> Result<T, ClientError>,
    ) -> Result<T, Failure> {
        // The guard bounds the timeout to a minute: no overflow.
        self.talk_until(self.started() + self.plan.timeout, None, exchange)
    }

    /// As `talk`, for a listing: it may run until the listing limit as long
    /// as each reply comes within the call's timeout, so that a long listing
    /// on a loaded machine completes, and a stalled one fails.
    fn talk_listing<T>(
        &self,
        exchange: impl FnOnce(&mut Connection) -> Result<T, ClientError>,
    ) -> Result<T, Failure> {
        // The guard bounds the limit to a minute: no overflow.
        let deadline = self.started() + self.plan.listing_limit;
        self.talk_until(deadline, Some(self.plan.timeout), exchange)
    }

    fn talk_until<T>(
        &self,
        deadline: Instant,
        reply_timeout: Option<std::time::Duration>,
        exchange: impl FnOnce(&mut Connection) -> Result<T, ClientError>,
    ) -> Result<T, Failure> {
        if !self.may_talk() {
            return Err(Failure::DECLINED);
        }
        if !BACKOFF.admit((self.now_ms)()) {
            return Err(Failure::BACKING_OFF);
        }
        let result = Connection::connect(&self.plan.socket, deadline).and_then(|connection| {
            trusted_listener(&connection, (self.euid)())?;
            let mut connection = match reply_timeout {
                Some(t) => connection.with_reply_timeout(t),
                None => connection,
            };
            exchange(&mut connection)
        });
        BACKOFF.record(result.as_ref().map(|_| ()), (self.now_ms)());
        result.map_err(|e| client_failure(&e))
    }

    /// One user by name or uid; the answer must match the key asked for.
    pub fn user(&self, key: Key<'_>, database: Database) -> Result<(UserRecord, bool), Failure> {
        let query = UserQuery {
            uid: match key {
                Key::Id(uid) => Some(uid),
                Key::Name(_) => None,
            },
            user_name: match key {
                Key::Name(name) => Some(name.as_str().to_owned()),
                Key::Id(_) => None,
            },
            service: Some(BROKER_SERVICE.to_owned()),
            options: self.options(database),
        };
        let params = self.talk(|c| c.call(broker::GET_USER_RECORD, &query))?;
        let (user, incomplete) = user_from(record_reply(params)?)?;
        let matches = match key {
            Key::Name(name) => user.name == name.as_str(),
            Key::Id(uid) => user.uid == uid,
        };
        if !matches {
            return Err(BAD_RECORD);
        }
        Ok((user, incomplete))
    }

    /// One group by name or gid; the answer must match the key asked for.
    pub fn group(&self, key: Key<'_>, database: Database) -> Result<(GroupRecord, bool), Failure> {
        let query = GroupQuery {
            gid: match key {
                Key::Id(gid) => Some(gid),
                Key::Name(_) => None,
            },
            group_name: match key {
                Key::Name(name) => Some(name.as_str().to_owned()),
                Key::Id(_) => None,
            },
            service: Some(BROKER_SERVICE.to_owned()),
            options: self.options(database),
        };
        let params = self.talk(|c| c.call(broker::GET_GROUP_RECORD, &query))?;
        let (group, incomplete) = group_from(record_reply(params)?)?;
        let matches = match key {
            Key::Name(name) => group.name == name.as_str(),
            Key::Id(gid) => group.gid == gid,
        };
        if !matches {
            return Err(BAD_RECORD);
        }
        Ok((group, incomplete))
    }

    /// Every user, in the broker's order; records the model refuses are left out.
    pub fn all_users(&self, database: Database) -> Result<Vec<(UserRecord, bool)>, Failure> {
        let query = UserQuery {
            service: Some(BROKER_SERVICE.to_owned()),
            options: self.options(database),
            ..UserQuery::default()
        };
        self.enumerate(broker::GET_USER_RECORD, &query, |reply| {
            user_from(reply).ok()
        })
    }

    /// Every group, in the broker's order; records the model refuses are left out.
    pub fn all_groups(&self, database: Database) -> Result<Vec<(GroupRecord, bool)>, Failure> {
        let query = GroupQuery {
            service: Some(BROKER_SERVICE.to_owned()),
            options: self.options(database),
            ..GroupQuery::default()
        };
        self.enumerate(broker::GET_GROUP_RECORD, &query, |reply| {
            group_from(reply).ok()
        })
    }

    fn enumerate<Q: serde::Serialize, T>(
        &self,
        method: &str,
        query: &Q,
        convert: impl Fn(RecordReply) -> Option<T>,
    ) -> Result<Vec<T>, Failure> {
        let mut items = Vec::new();
        let streamed = self.talk_listing(|c| {
            c.call_more(method, query, |params| {
                if let Ok(reply) = serde_json::from_value::<RecordReply>(params) {
                    items.extend(convert(reply));
                }
                Ok(())
            })
        });
        match streamed {
            Ok(()) => Ok(items),
            // An empty database answers NoRecordFound: nothing to list.
            Err(failure) if failure == Failure::NOT_FOUND => Ok(Vec::new()),
            Err(failure) => Err(failure),
        }
    }

    /// The gids of every group `user` is a member of, in the broker's order.
    pub fn membership_gids(&self, user: &str) -> Result<Vec<u32>, Failure> {
        let query = MembershipQuery {
            user_name: Some(user.to_owned()),
            service: Some(BROKER_SERVICE.to_owned()),
            options: self.options(Database::Initgroups),
            ..MembershipQuery::default()
        };
        let mut gids = Vec::new();
        self.talk(|c| {
            c.call_more(broker::GET_MEMBERSHIPS, &query, |params| {
                if let Ok(MembershipReply {
                    user_name,
                    gid: Some(gid),
                    ..
                }) = serde_json::from_value(params)
                {
                    if user_name == user && userdb_proto::names::valid_id(gid) {
                        gids.push(gid);
                    }
                }
                Ok(())
            })
        })?;
        Ok(gids)
    }
}

/// Whether the process listening on the broker's socket may be believed:
/// root's, or this process's own user's (a socket named by
/// `USERDB_BROKER_SOCKET` that another user runs could forge any record).
fn trusted_listener(connection: &Connection, euid: u32) -> Result<(), ClientError> {
    let peer =
        Peer::of(connection).map_err(|e| ClientError::Os(e.raw_os_error().unwrap_or(libc::EIO)))?;
    if peer.uid == 0 || peer.uid == euid {
        Ok(())
    } else {
        Err(ClientError::Untrusted)
    }
}

/// The gids `initgroups_dyn` adds: in order, without `primary` and without
/// any already in `present` or seen earlier; linear in their number.
pub fn new_gids(found: &[u32], primary: u32, present: &[u32]) -> Vec<u32> {
    let mut seen: HashSet<u32> = present.iter().copied().collect();
    seen.insert(primary);
    found
        .iter()
        .copied()
        .filter(|gid| seen.insert(*gid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_declines_for_the_window_then_admits_one_probe() {
        let backoff = Backoff::new();
        assert!(backoff.admit(1_000));
        backoff.record(Err(&ClientError::Timeout), 1_000);
        assert!(!backoff.admit(1_001));
        assert!(!backoff.admit(1_000 + BACKOFF_WINDOW_MS - 1));
        let end = 1_000 + BACKOFF_WINDOW_MS;
        assert!(backoff.admit(end), "first call after the window probes");
        assert!(!backoff.admit(end), "a second caller does not probe too");
        backoff.record(Ok(()), end + 5);
        assert!(backoff.admit(end + 6));
        assert!(backoff.admit(end + 7));
    }

    #[test]
    fn failed_probe_renews_the_window() {
        let backoff = Backoff::new();
        backoff.record(Err(&ClientError::Refused), 0);
        assert!(backoff.admit(BACKOFF_WINDOW_MS));
        backoff.record(Err(&ClientError::Timeout), BACKOFF_WINDOW_MS + 100);
        assert!(!backoff.admit(2 * BACKOFF_WINDOW_MS));
        assert!(backoff.admit(2 * BACKOFF_WINDOW_MS + 100));
    }

    #[test]
    fn absent_socket_and_answers_do_not_start_a_window() {
        let backoff = Backoff::new();
        backoff.record(Err(&ClientError::Absent), 10);
        assert!(backoff.admit(11));
        backoff.record(
            Err(&ClientError::Remote(userdb::NO_RECORD_FOUND.into())),
            12,
        );
        assert!(backoff.admit(13));
    }

    #[test]
    fn errors_map_to_nss_statuses() {
        let not_found = client_failure(&ClientError::Remote(userdb::NO_RECORD_FOUND.into()));
        assert_eq!(
            not_found,
            Failure {
                status: Status::NotFound,
                errno: libc::ENOENT
            }
        );
        assert_eq!(
            client_failure(&ClientError::Absent),
            Failure::unavail(libc::ENOENT)
        );
        assert_eq!(
            client_failure(&ClientError::Timeout).status,
            Status::Unavail
        );
        assert_eq!(
            client_failure(&ClientError::Oversized).status,
            Status::Unavail
        );
        let bad_service = client_failure(&ClientError::Remote(userdb::BAD_SERVICE.into()));
        assert_eq!(bad_service.status, Status::Unavail);
    }

    #[test]
    fn a_lying_record_is_refused_not_packed() {
        let reply = RecordReply {
            record: serde_json::json!({"userName": "evil", "uid": 1, "realName": "x:0:0::/:/bin/sh"}),
            incomplete: false,
        };
        assert_eq!(user_from(reply).unwrap_err(), BAD_RECORD);
    }

    #[test]
    fn new_gids_skip_primary_present_and_repeats() {
        assert_eq!(new_gids(&[10, 100, 20, 10, 30, 20], 100, &[30]), [10, 20]);
        assert!(new_gids(&[], 1, &[]).is_empty());
    }
}
