//! Misbehaving brokers: real `AF_UNIX` sockets served by threads of the test
//! process, each doing one thing wrong, and counting every connection.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What the fake does once it has read a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Reads the request and never writes anything.
    NeverAnswer,
    /// Sends a valid reply one byte per `interval`.
    Trickle { interval: Duration },
    /// Sends a whole valid reply without its NUL terminator, then waits.
    Unterminated,
    /// Sends bytes that are not JSON, NUL-terminated, then waits.
    Garbage,
    /// Streams one unterminated message of `bytes` bytes (or until the client goes).
    Oversized { bytes: usize },
    /// Sends half of a valid reply, then closes the connection.
    CloseMidReply,
    /// Answers every call with `io.systemd.UserDatabase.NoRecordFound`.
    NotFound,
}

/// A well-formed reply for user `fake` (uid 4242), as the real broker would send it.
fn valid_user_reply() -> Vec<u8> {
    let reply = serde_json::json!({
        "parameters": {
            "record": {
                "userName": "fake", "uid": 4242, "gid": 4242,
                "homeDirectory": "/home/fake", "shell": "/bin/sh",
                "service": "io.userdb.Broker"
            },
            "incomplete": false
        }
    });
    reply.to_string().into_bytes()
}

/// A fake broker listening on `path` until dropped.
#[derive(Debug)]
pub struct FakeBroker {
    path: PathBuf,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// State the acceptor and connection threads share with the test.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    accepted: AtomicUsize,
    /// Every request received, without its NUL.
    requests: Mutex<Vec<Vec<u8>>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// How long the acceptor sleeps in poll between checks of the stop flag.
const POLL_SLICE_MS: i32 = 5;

impl FakeBroker {
    pub fn start(path: &Path, behaviour: Behaviour) -> FakeBroker {
        let _ = std::fs::remove_file(path);
        let listener =
            UnixListener::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("nonblocking listener: {e}"));
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || accept_loop(&listener, behaviour, &shared))
        };
        FakeBroker {
            path: path.to_path_buf(),
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connections accepted so far. Call after the client has exited and
    /// `settle` has passed, so that a connection still in the backlog is counted.
    pub fn accepted_after(&self, settle: Duration) -> usize {
        thread::sleep(settle);
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// The requests received so far, parsed as JSON (unparsable ones as null).
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.shared
            .requests
            .lock()
            .map(|r| {
                r.iter()
                    .map(|bytes| serde_json::from_slice(bytes).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn wait_readable(fd: i32, timeout_ms: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
}

fn accept_loop(listener: &UnixListener, behaviour: Behaviour, shared: &Arc<Shared>) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, _)) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let shared = Arc::clone(shared);
                handlers.push(thread::spawn(move || serve(stream, behaviour, &shared)));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                wait_readable(listener.as_raw_fd(), POLL_SLICE_MS)
            }
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
    for handler in handlers {
        let _ = handler.join();
    }
}

/// Reads one NUL-terminated request and records it; false when the client
/// went away or the fake is stopping first.
fn read_request(stream: &mut UnixStream, shared: &Shared) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !shared.stopping() {
        match stream.read(&mut byte) {
            Ok(0) => return false,
            Ok(_) if byte[0] == 0 => {
                if let Ok(mut requests) = shared.requests.lock() {
                    requests.push(request);
                }
                return true;
            }
            Ok(_) => request.push(byte[0]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return false,
        }
    }
    false
}

/// Keeps the connection open, doing nothing, until the fake stops or the
/// client closes its end.
fn hold(stream: &mut UnixStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let mut sink = [0u8; 4096];
    while !shared.stopping() {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

fn serve(mut stream: UnixStream, behaviour: Behaviour, shared: &Shared) {
    if !read_request(&mut stream, shared) {
        return;
    }
    match behaviour {
        Behaviour::NeverAnswer => hold(&mut stream, shared),
        Behaviour::Trickle { interval } => {
            let mut reply = valid_user_reply();
            reply.push(0);
            for byte in reply {
                if shared.stopping() || stream.write_all(&[byte]).is_err() {
                    return;
                }
                thread::sleep(interval);
            }
            hold(&mut stream, shared);
        }
        Behaviour::Unterminated => {
            if stream.write_all(&valid_user_reply()).is_ok() {
                hold(&mut stream, shared);
            }
        }
        Behaviour::Garbage => {
            if stream.write_all(b"\xff\xfe}{ this is not json ]\0").is_ok() {
                hold(&mut stream, shared);
            }
        }
        Behaviour::Oversized { bytes } => stream_oversized(&mut stream, bytes, shared),
        Behaviour::CloseMidReply => {
            let reply = valid_user_reply();
            let _ = stream.write_all(&reply[..reply.len() / 2]);
        }
        Behaviour::NotFound => loop {
            let error = br#"{"error":"io.systemd.UserDatabase.NoRecordFound","parameters":{}}"#;
            if stream.write_all(error).is_err() || stream.write_all(&[0]).is_err() {
                return;
            }
            if !read_request(&mut stream, shared) {
                return;
            }
        },
    }
}

/// Writes the head of a reply whose user name never ends, `bytes` in all.
fn stream_oversized(stream: &mut UnixStream, bytes: usize, shared: &Shared) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(20)));
    let head = br#"{"parameters":{"record":{"userName":""#;
    if stream.write_all(head).is_err() {
        return;
    }
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = head.len();
    while sent < bytes && !shared.stopping() {
        match stream.write(&chunk[..chunk.len().min(bytes - sent)]) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
    hold(stream, shared);
}

fn sockaddr_un(path: &Path) -> (libc::sockaddr_un, libc::socklen_t) {
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(
        bytes.len() < addr.sun_path.len(),
        "socket path too long: {}",
        path.display()
    );
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    (addr, len as libc::socklen_t)
}

fn stream_socket(nonblocking: bool) -> OwnedFd {
    let flags =
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Starts a non-blocking connect to `path`; Err(errno) when it was refused
/// at once (EAGAIN: the listener's backlog is full).
fn connect_nonblocking(path: &Path) -> Result<OwnedFd, i32> {
    let fd = stream_socket(true);
    let (addr, len) = sockaddr_un(path);
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc == 0 {
        return Ok(fd);
    }
    match std::io::Error::last_os_error().raw_os_error().unwrap_or(0) {
        libc::EINPROGRESS => Ok(fd),
        errno => Err(errno),
    }
}

/// A socket that listens but never accepts, its backlog already full of
/// connections held by the test.
#[derive(Debug)]
pub struct Backlogged {
    path: PathBuf,
    _listener: OwnedFd,
    fillers: Vec<OwnedFd>,
}

impl Backlogged {
    pub fn start(path: &Path) -> Backlogged {
        let _ = std::fs::remove_file(path);
        let listener = stream_socket(false);
        let (addr, len) = sockaddr_un(path);
        let bound = unsafe {
            libc::bind(
                listener.as_raw_fd(),
                std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
                len,
            )
        };
        assert_eq!(
            bound,
            0,
            "bind {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        let listening = unsafe { libc::listen(listener.as_raw_fd(), 0) };
        assert_eq!(listening, 0, "listen: {}", std::io::Error::last_os_error());
        let mut fillers = Vec::new();
        loop {
            match connect_nonblocking(path) {
                Ok(fd) => fillers.push(fd),
                Err(libc::EAGAIN) => break,
                Err(errno) => panic!("filling backlog: errno {errno}"),
            }
            assert!(fillers.len() < 1024, "backlog of 0 never filled");
        }
        Backlogged {
            path: path.to_path_buf(),
            _listener: listener,
            fillers,
        }
    }

    /// Connections queued and never accepted.
    pub fn queued(&self) -> usize {
        self.fillers.len()
    }
}

impl Drop for Backlogged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Opens up to `count` connections to `path` that never send anything,
/// retrying a full backlog until `budget` has passed. Returns them open.
pub fn open_idle_connections(path: &Path, count: usize, budget: Duration) -> Vec<OwnedFd> {
    let started = Instant::now();
    let mut open = Vec::with_capacity(count);
    while open.len() < count && started.elapsed() < budget {
        match connect_nonblocking(path) {
            Ok(fd) => open.push(fd),
            Err(libc::EAGAIN) => thread::sleep(Duration::from_millis(1)),
            Err(errno) => panic!("idle connection {}: errno {errno}", open.len()),
        }
    }
    open
}
