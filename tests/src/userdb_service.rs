//! A real Varlink `io.systemd.UserDatabase` service, for the broker to use
//! as a source: a socket in the fixture root's `run/systemd/userdb/`, served
//! by threads of the test process from given users, groups and memberships.
//!
//! It answers `GetUserRecord`, `GetGroupRecord` and `GetMemberships` by key
//! and as enumerations with `more`, refuses calls whose `service` is not its
//! own socket name (as systemd's services do), and can get its records wrong
//! in the ways a source may ([`Flaw`]). Services that misbehave below the
//! record level (accept and never answer, send bytes that are not JSON) are
//! [`crate::fake::FakeBroker`]s started on [`service_path`].

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::{json, Value};
use userdb_proto::api::userdb;

use crate::fixture::Fixture;

/// Where a service named `name` listens for a broker running on `fixture`
/// (the directory is created).
pub fn service_path(fixture: &Fixture, name: &str) -> PathBuf {
    let dir = fixture.root().join("run/systemd/userdb");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    dir.join(name)
}

/// What the service knows. Records are JSON user/group records without
/// `service` (the service adds its own name).
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub users: Vec<Value>,
    pub groups: Vec<Value>,
    /// `(user, group)` pairs.
    pub memberships: Vec<(String, String)>,
}

/// How the service gets its records wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    /// Answers correctly.
    None,
    /// Records carry [`IMPOSTOR_SERVICE`] as `service`, not the socket name.
    WrongService,
    /// A look-up by key gets the record asked for with that key changed
    /// (the name with [`MISMATCH_SUFFIX`], the id plus [`MISMATCH_ID_OFFSET`]);
    /// memberships likewise.
    MismatchedKey,
}

pub const IMPOSTOR_SERVICE: &str = "io.example.Impostor";
pub const MISMATCH_SUFFIX: &str = "-impostor";
pub const MISMATCH_ID_OFFSET: u64 = 100_000;

/// A running service; stops and removes its socket on drop.
#[derive(Debug)]
pub struct UserdbService {
    path: PathBuf,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    directory: Directory,
    flaw: Flaw,
    stop: AtomicBool,
    accepted: AtomicUsize,
    /// Every call received, parsed.
    calls: Mutex<Vec<Value>>,
}

/// How long blocking steps wait before checking the stop flag.
const SLICE: Duration = Duration::from_millis(5);

impl UserdbService {
    /// Serves `directory` as `name` in `fixture`'s userdb directory.
    pub fn start(fixture: &Fixture, name: &str, directory: Directory, flaw: Flaw) -> Self {
        Self::start_at(&service_path(fixture, name), directory, flaw)
    }

    /// Serves on `path`; the service name is the socket's file name.
    pub fn start_at(path: &Path, directory: Directory, flaw: Flaw) -> Self {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_else(|| panic!("no service name in {}", path.display()))
            .to_owned();
        let _ = std::fs::remove_file(path);
        let listener =
            UnixListener::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("nonblocking listener: {e}"));
        let shared = Arc::new(Shared {
            name,
            directory,
            flaw,
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            calls: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || accept_loop(&listener, &shared))
        };
        UserdbService {
            path: path.to_path_buf(),
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Every call received so far.
    pub fn calls(&self) -> Vec<Value> {
        self.shared
            .calls
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }
}

impl Drop for UserdbService {
    fn drop(&mut self) {
        // The socket goes first, so no client connects to a service that stops.
        let _ = std::fs::remove_file(&self.path);
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>) {
    let mut handlers = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let shared = Arc::clone(shared);
                handlers.push(thread::spawn(move || serve(stream, &shared)));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                unsafe { libc::poll(&mut pfd, 1, SLICE.as_millis() as i32) };
            }
            Err(_) => thread::sleep(SLICE),
        }
    }
    for handler in handlers {
        let _ = handler.join();
    }
}

/// Answers every call on the connection until the client closes it.
fn serve(mut stream: UnixStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(SLICE));
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    while !shared.stop.load(Ordering::SeqCst) {
        while let Some(end) = pending.iter().position(|&b| b == 0) {
            let frame: Vec<u8> = pending.drain(..=end).take(end).collect();
            let call: Value = serde_json::from_slice(&frame).unwrap_or_default();
            if let Ok(mut calls) = shared.calls.lock() {
                calls.push(call.clone());
            }
            for reply in shared.answer(&call) {
                let mut bytes = reply.to_string().into_bytes();
                bytes.push(0);
                if stream.write_all(&bytes).is_err() {
                    return;
                }
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

fn error(name: &str) -> Vec<Value> {
    vec![json!({ "error": name, "parameters": {} })]
}

/// The key fields of one kind of record.
struct Kind {
    name: &'static str,
    id: &'static str,
}

const USER: Kind = Kind {
    name: "userName",
    id: "uid",
};
const GROUP: Kind = Kind {
    name: "groupName",
    id: "gid",
};

impl Shared {
    fn answer(&self, call: &Value) -> Vec<Value> {
        let parameters = &call["parameters"];
        if parameters["service"].as_str() != Some(self.name.as_str()) {
            return error(userdb::BAD_SERVICE);
        }
        let found = match call["method"].as_str().unwrap_or_default() {
            userdb::GET_USER_RECORD => self.records(&self.directory.users, &USER, parameters),
            userdb::GET_GROUP_RECORD => self.records(&self.directory.groups, &GROUP, parameters),
            userdb::GET_MEMBERSHIPS => self.memberships(parameters),
            _ => return error("org.varlink.service.MethodNotFound"),
        };
        if found.is_empty() {
            return error(userdb::NO_RECORD_FOUND);
        }
        let wants_more = call["more"].as_bool().unwrap_or(false);
        let count = if wants_more { found.len() } else { 1 };
        found
            .into_iter()
            .take(count)
            .enumerate()
            .map(|(i, reply)| {
                let mut message = json!({ "parameters": reply });
                if i + 1 < count {
                    message["continues"] = json!(true);
                }
                message
            })
            .collect()
    }

    /// Record replies matching the key in `parameters` (all without a key).
    fn records(&self, records: &[Value], kind: &Kind, parameters: &Value) -> Vec<Value> {
        let name = parameters.get(kind.name).and_then(Value::as_str);
        let id = parameters.get(kind.id).and_then(Value::as_u64);
        records
            .iter()
            .filter(|r| {
                !matches!(name, Some(n) if r[kind.name] != n)
                    && !matches!(id, Some(i) if r[kind.id] != i)
            })
            .map(|r| {
                let mut record = r.clone();
                record["service"] = json!(match self.flaw {
                    Flaw::WrongService => IMPOSTOR_SERVICE,
                    _ => self.name.as_str(),
                });
                if self.flaw == Flaw::MismatchedKey {
                    if let Some(n) = name {
                        record[kind.name] = json!(format!("{n}{MISMATCH_SUFFIX}"));
                    } else if let Some(i) = id {
                        record[kind.id] = json!(i + MISMATCH_ID_OFFSET);
                    }
                }
                json!({ "record": record, "incomplete": false })
            })
            .collect()
    }

    fn memberships(&self, parameters: &Value) -> Vec<Value> {
        let user = parameters.get("userName").and_then(Value::as_str);
        let group = parameters.get("groupName").and_then(Value::as_str);
        self.directory
            .memberships
            .iter()
            .filter(|(u, g)| {
                !matches!(user, Some(x) if x != u) && !matches!(group, Some(x) if x != g)
            })
            .map(|(u, g)| {
                let (mut u, mut g) = (u.clone(), g.clone());
                if self.flaw == Flaw::MismatchedKey {
                    if user.is_some() {
                        u.push_str(MISMATCH_SUFFIX);
                    } else if group.is_some() {
                        g.push_str(MISMATCH_SUFFIX);
                    }
                }
                json!({ "userName": u, "groupName": g })
            })
            .collect()
    }
}
