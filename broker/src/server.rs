//! The Unix socket listener: worker threads wait in `accept()` (the kernel
//! wakes exactly one per connection) and serve the connection they got, so a
//! request costs one thread wake-up, with no hand-off. The last waiting
//! worker never leaves `accept()`: it gives its connection to a new worker
//! and accepts on, so a burst of connections is taken as fast as threads can
//! be started. Workers left waiting after a burst exit after a while.
//!
//! Bounded everywhere: a request frame is at most [`MAX_FRAME`] bytes; at most
//! `max_connections` are held, and at the cap the longest-idle connection is
//! closed to make room; a connection idle for `idle_timeout`, or stuck in
//! the middle of a message for that long, is closed; a peer that does not
//! read its replies for `write_timeout` is dropped. Garbage gets an
//! `InvalidParameter` error and the connection is closed.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufWriter, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::json;
use userdb_proto::varlink::{encode, errors, Call, FrameBuffer, FrameError, Reply};

use crate::config::Config;
use crate::peer::Peer;
use crate::service::Service;

/// Largest request accepted; real calls are a few hundred bytes.
pub const MAX_FRAME: usize = 64 * 1024;

/// A worker waiting in `accept()` this long exits, unless it is the last one.
const WORKER_IDLE_EXIT: Duration = Duration::from_secs(60);

/// Enough for serde_json's bounded recursion and the tracing formatter.
const WORKER_STACK_SIZE: usize = 512 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
}

impl Limits {
    pub fn from_config(config: &Config) -> Self {
        Limits {
            max_connections: config.max_connections,
            idle_timeout: config.idle_timeout,
            write_timeout: config.write_timeout,
        }
    }
}

/// Creates the listening socket: parent directory (0755) if missing, a
/// stale socket file replaced, mode 0666 so every process can resolve
/// users. Refuses to replace a socket some process still listens on, or
/// anything that is not a socket.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            fs::create_dir_all(parent)?;
            fs::set_permissions(parent, fs::Permissions::from_mode(0o755))?;
        }
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    ErrorKind::AddrInUse,
                    format!("{} is in use by a running process", path.display()),
                ));
            }
            fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

pub struct Server {
    listener: UnixListener,
    service: Arc<Service>,
    limits: Limits,
    registry: Arc<Registry>,
    /// Workers waiting in `accept()`.
    waiting: AtomicUsize,
}

impl Server {
    pub fn new(listener: UnixListener, service: Arc<Service>, limits: Limits) -> Self {
        let registry = Arc::new(Registry::new(service.connection_counter()));
        Server {
            listener,
            service,
            limits,
            registry,
            waiting: AtomicUsize::new(0),
        }
    }

    /// Serves until the process ends; the calling thread is the first worker.
    pub fn serve(self) -> ! {
        // accept() honours SO_RCVTIMEO: that is how a waiting worker notices
        // it has been idle long enough to exit.
        if let Err(e) = set_accept_timeout(&self.listener, WORKER_IDLE_EXIT) {
            tracing::warn!("cannot set the accept timeout, idle workers stay: {e}");
        }
        let server = Arc::new(self);
        loop {
            server.work(true);
        }
    }

    /// Starts a worker that serves `stream`, then waits for more.
    fn start_worker(self: &Arc<Self>, stream: UnixStream) {
        let server = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .stack_size(WORKER_STACK_SIZE)
            .spawn(move || {
                server.serve_client(stream);
                server.work(false);
            });
        if let Err(e) = spawned {
            // The connection is dropped; the client sees it closed at once.
            tracing::warn!("cannot start a worker thread: {e}");
        }
    }

    /// Takes one waiting place away, unless it is the last one.
    fn leave_waiting(&self) -> bool {
        self.waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n > 1).then(|| n - 1)
            })
            .is_ok()
    }

    /// Accepts and serves connections; returns when a worker that is not
    /// `permanent` has waited long enough and another worker is waiting too.
    fn work(self: &Arc<Self>, permanent: bool) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.leave_waiting() {
                        self.serve_client(stream);
                        self.waiting.fetch_add(1, Ordering::SeqCst);
                    } else {
                        self.start_worker(stream);
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if !permanent && self.leave_waiting() {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors or memory: back off briefly rather
                    // than spin; existing connections keep being served.
                    tracing::warn!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    fn serve_client(&self, stream: UnixStream) {
        if self.registry.len() >= self.limits.max_connections {
            self.registry.close_longest_idle();
        }
        let Some(connection) = self.registry.add(&stream) else {
            return;
        };
        if let Err(e) = serve_connection(
            &stream,
            &connection,
            &self.registry,
            &self.service,
            self.limits,
        ) {
            tracing::debug!("connection closed: {e}");
        }
        self.registry.remove(connection.id);
    }
}

fn set_accept_timeout(listener: &UnixListener, timeout: Duration) -> io::Result<()> {
    let value = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: 0,
    };
    // SAFETY: `value` is a valid timeval and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&value as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One open connection as the registry sees it.
struct Connection {
    id: u64,
    /// A second handle on the socket, to shut it down from another thread.
    handle: UnixStream,
    /// Milliseconds since the registry's epoch when the peer last sent data.
    last_active: AtomicU64,
}

/// Open connections, for the cap and its eviction, and the count in status.
struct Registry {
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    count: Arc<AtomicUsize>,
}

impl Registry {
    fn new(count: Arc<AtomicUsize>) -> Self {
        Registry {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            count,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn add(&self, stream: &UnixStream) -> Option<Arc<Connection>> {
        let handle = match stream.try_clone() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("dropping connection: {e}");
                return None;
            }
        };
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            handle,
            last_active: AtomicU64::new(self.now()),
        });
        let mut open = self.lock();
        open.insert(connection.id, Arc::clone(&connection));
        self.count.store(open.len(), Ordering::Relaxed);
        Some(connection)
    }

    fn remove(&self, id: u64) {
        let mut open = self.lock();
        open.remove(&id);
        self.count.store(open.len(), Ordering::Relaxed);
    }

    fn touch(&self, connection: &Connection) {
        connection.last_active.store(self.now(), Ordering::Relaxed);
    }

    /// Makes room at the cap: the worker of the closed connection notices
    /// the shutdown at its next read and ends.
    fn close_longest_idle(&self) {
        let mut open = self.lock();
        let oldest = open
            .values()
            .min_by_key(|c| c.last_active.load(Ordering::Relaxed))
            .map(|c| c.id);
        if let Some(connection) = oldest.and_then(|id| open.remove(&id)) {
            let _ = connection.handle.shutdown(Shutdown::Both);
            tracing::debug!("connection limit reached: closed the longest-idle connection");
        }
        self.count.store(open.len(), Ordering::Relaxed);
    }
}

fn serve_connection(
    stream: &UnixStream,
    connection: &Connection,
    registry: &Registry,
    service: &Service,
    limits: Limits,
) -> io::Result<()> {
    let peer = Peer::of(stream)?;
    stream.set_write_timeout(Some(limits.write_timeout))?;
    let mut frames = FrameBuffer::new(MAX_FRAME);
    let mut writer = BufWriter::new(stream);
    let mut reader = stream;
    let mut buf = [0u8; 8192];
    // When the oldest unanswered byte arrived: a message must be complete
    // within the idle timeout, however slowly it trickles in.
    let mut partial_since: Option<Instant> = None;
    loop {
        loop {
            match frames.next_frame() {
                Ok(Some(frame)) => {
                    if !answer(&frame, &peer, service, &mut writer)? {
                        writer.flush()?;
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(FrameError::TooLarge { cap }) => {
                    send_invalid(&mut writer, &format!("message larger than {cap} bytes"))?;
                    return writer.flush();
                }
            }
        }
        writer.flush()?;
        if frames.pending() == 0 {
            partial_since = None;
        }
        let timeout = match partial_since {
            Some(since) => limits.idle_timeout.saturating_sub(since.elapsed()),
            None => limits.idle_timeout,
        };
        if timeout.is_zero() {
            send_invalid(&mut writer, "message not completed in time")?;
            return writer.flush();
        }
        stream.set_read_timeout(Some(timeout))?;
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                frames.push(&buf[..n]);
                partial_since.get_or_insert_with(Instant::now);
                registry.touch(connection);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if frames.pending() > 0 {
                    send_invalid(&mut writer, "message not completed in time")?;
                    writer.flush()?;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// Handles one frame; `false` means the connection must be closed.
fn answer(
    frame: &[u8],
    peer: &Peer,
    service: &Service,
    writer: &mut impl Write,
) -> io::Result<bool> {
    let call: Call = match serde_json::from_slice(frame) {
        Ok(call) => call,
        Err(e) => {
            send_invalid(writer, &format!("not a Varlink call: {e}"))?;
            return Ok(false);
        }
    };
    if call.oneway {
        service.handle(&call, peer, &mut |_| Ok(()))?;
    } else {
        service.handle(&call, peer, &mut |reply| writer.write_all(&encode(&reply)))?;
    }
    Ok(true)
}

fn send_invalid(writer: &mut impl Write, why: &str) -> io::Result<()> {
    let reply = Reply {
        parameters: Some(json!({ "parameter": why })),
        continues: false,
        error: Some(errors::INVALID_PARAMETER.to_owned()),
    };
    writer.write_all(&encode(&reply))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::{merge, LoadedSource, Priority};
    use crate::resolve::Resolver;
    use crate::sources::{SourceData, SourceKind, SourceUser};
    use serde_json::Value;
    use std::path::PathBuf;

    fn start(tag: &str, limits: Limits) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("brokerd-server-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("sub/io.userdb.Broker");
        let data = SourceData {
            users: (0..3)
                .map(|i| SourceUser {
                    name: format!("user{i}"),
                    uid: 1000 + i,
                    record: json!({"userName": format!("user{i}"), "uid": 1000 + i}),
                    listed: true,
                })
                .collect(),
            ..Default::default()
        };
        let merged = merge(
            vec![LoadedSource {
                name: "files".into(),
                kind: SourceKind::Files,
                data,
                load_time: Duration::ZERO,
            }],
            1,
        );
        let resolver = Resolver::local_only(merged.snapshot, Priority::new(Vec::new()));
        let service = Arc::new(Service::new(resolver));
        let server = Server::new(bind(&path).unwrap(), service, limits);
        std::thread::spawn(move || server.serve());
        path
    }

    fn limits() -> Limits {
        Limits {
            max_connections: 64,
            idle_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
        }
    }

    fn connect(path: &Path) -> UnixStream {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    /// Reads replies until `count` arrived or the peer closed.
    fn read_replies(stream: &mut UnixStream, count: usize) -> Vec<Value> {
        let mut frames = FrameBuffer::new(1 << 20);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while out.len() < count {
            while let Some(frame) = frames.next_frame().unwrap() {
                out.push(serde_json::from_slice(&frame).unwrap());
            }
            if out.len() >= count {
                break;
            }
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => frames.push(&buf[..n]),
            }
        }
        out
    }

    fn closed(stream: &mut UnixStream) -> bool {
        matches!(stream.read(&mut [0u8; 16]), Ok(0))
    }

    fn lookup(uid: u32) -> Vec<u8> {
        encode(&json!({"method": "io.systemd.UserDatabase.GetUserRecord",
                       "parameters": {"uid": uid, "service": "io.userdb.Broker"}}))
    }

    #[test]
    fn socket_is_world_accessible_and_stale_file_replaced() {
        let path = start("bind", limits());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        let parent = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(parent, 0o755);
        assert_eq!(bind(&path).unwrap_err().kind(), ErrorKind::AddrInUse);
        let stale = path.with_file_name("stale");
        drop(UnixListener::bind(&stale).unwrap());
        assert!(bind(&stale).is_ok());
        let regular = path.with_file_name("regular");
        fs::write(&regular, "x").unwrap();
        assert!(bind(&regular).is_err());
    }

    #[test]
    fn pipelined_calls_are_answered_in_order() {
        let path = start("pipeline", limits());
        let mut s = connect(&path);
        let mut batch = lookup(1002);
        batch.extend(encode(
            &json!({"method": "io.systemd.UserDatabase.GetUserRecord",
            "parameters": {"service": "io.userdb.Broker"}, "more": true}),
        ));
        batch.extend(encode(
            &json!({"method": "io.systemd.UserDatabase.GetUserRecord",
            "parameters": {"uid": 1000}, "oneway": true}),
        ));
        batch.extend(lookup(4242));
        s.write_all(&batch).unwrap();
        let replies = read_replies(&mut s, 5);
        assert_eq!(replies[0]["parameters"]["record"]["userName"], "user2");
        let listed: Vec<&Value> = replies[1..4]
            .iter()
            .map(|r| &r["parameters"]["record"]["uid"])
            .collect();
        assert_eq!(listed, [1000, 1001, 1002]);
        assert_eq!(replies[3].get("continues"), None);
        assert_eq!(replies[4]["error"], "io.systemd.UserDatabase.NoRecordFound");
        s.write_all(&lookup(1001)).unwrap();
        assert_eq!(
            read_replies(&mut s, 1)[0]["parameters"]["record"]["userName"],
            "user1"
        );
    }

    #[test]
    fn garbage_gets_an_error_and_the_connection_closes() {
        let path = start("garbage", limits());
        let mut s = connect(&path);
        s.write_all(b"this is not json\0").unwrap();
        let replies = read_replies(&mut s, 1);
        assert_eq!(replies[0]["error"], errors::INVALID_PARAMETER);
        assert!(closed(&mut s));
        let mut next = connect(&path);
        next.write_all(&lookup(1000)).unwrap();
        assert_eq!(
            read_replies(&mut next, 1)[0]["parameters"]["record"]["uid"],
            1000
        );
    }

    #[test]
    fn oversized_frame_is_refused() {
        let path = start("oversized", limits());
        let mut s = connect(&path);
        let big = vec![b'x'; MAX_FRAME + 100];
        // The server may close before taking every byte; that is the point.
        let _ = s.write_all(&big);
        let replies = read_replies(&mut s, 1);
        assert_eq!(replies[0]["error"], errors::INVALID_PARAMETER);
        assert!(replies[0]["parameters"]["parameter"]
            .as_str()
            .unwrap()
            .contains("larger"));
    }

    #[test]
    fn stalled_half_message_is_dropped_others_still_served() {
        let path = start(
            "stall",
            Limits {
                idle_timeout: Duration::from_millis(300),
                ..limits()
            },
        );
        let mut staller = connect(&path);
        staller.write_all(b"{\"method\": \"io.sys").unwrap();
        let mut other = connect(&path);
        let started = Instant::now();
        other.write_all(&lookup(1000)).unwrap();
        assert_eq!(
            read_replies(&mut other, 1)[0]["parameters"]["record"]["uid"],
            1000
        );
        assert!(started.elapsed() < Duration::from_millis(200));
        let replies = read_replies(&mut staller, 1);
        assert_eq!(replies[0]["error"], errors::INVALID_PARAMETER);
        assert!(closed(&mut staller));
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[test]
    fn at_the_cap_the_longest_idle_connection_is_closed() {
        let path = start(
            "cap",
            Limits {
                max_connections: 3,
                ..limits()
            },
        );
        let mut oldest = connect(&path);
        std::thread::sleep(Duration::from_millis(20));
        let mut kept: Vec<UnixStream> = (0..2).map(|_| connect(&path)).collect();
        for s in &mut kept {
            s.write_all(&lookup(1000)).unwrap();
            read_replies(s, 1);
        }
        let mut newest = connect(&path);
        newest.write_all(&lookup(1001)).unwrap();
        assert_eq!(
            read_replies(&mut newest, 1)[0]["parameters"]["record"]["uid"],
            1001
        );
        assert!(closed(&mut oldest));
        for s in &mut kept {
            s.write_all(&lookup(1002)).unwrap();
            assert_eq!(read_replies(s, 1)[0]["parameters"]["record"]["uid"], 1002);
        }
    }

    #[test]
    fn many_idle_connections_do_not_slow_a_new_client() {
        let path = start("flood", limits());
        let idle: Vec<UnixStream> = (0..500).map(|_| connect(&path)).collect();
        let mut s = connect(&path);
        let started = Instant::now();
        s.write_all(&lookup(1000)).unwrap();
        assert_eq!(
            read_replies(&mut s, 1)[0]["parameters"]["record"]["uid"],
            1000
        );
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "{:?}",
            started.elapsed()
        );
        drop(idle);
    }
}
