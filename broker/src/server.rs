//! The Unix socket server: one event loop (`mio`) holds every connection,
//! and a fixed pool of workers answers the calls that may wait for a
//! Varlink service. What any client does cannot grow the broker's threads,
//! descriptors or memory past fixed bounds:
//!
//! - threads: the loop, [`Limits::workers`] workers (plus the watcher and
//!   the signal thread), whatever the load;
//! - descriptors: at most [`Limits::max_connections`] connections, and never
//!   more than the process's descriptor limit less [`RESERVED_FDS`] kept
//!   for the sources, the snapshot file and the workers' service queries;
//! - per peer uid (`SO_PEERCRED`): at most [`Limits::per_uid`] connections;
//!   past it that uid's longest-idle connection is closed. Root is never
//!   held to a quota, and at the overall cap the longest-idle connection of
//!   the uid holding the most is closed, so a flood from one uid cannot keep
//!   root or anyone else out;
//! - memory per connection: the request being read (at most [`MAX_FRAME`]
//!   bytes) and the replies not yet taken by the client; a listing is
//!   produced only as the client reads it ([`STREAM_BUDGET`] ahead), and a
//!   client that reads nothing for `write_timeout` is dropped;
//! - time: listings are produced one [`STREAM_BUDGET`] chunk per connection
//!   in turn, at most [`STREAM_CHUNKS_PER_TURN`] chunks between two looks
//!   at new events, so that many listings (read or not) cannot keep the
//!   loop from answering a new client;
//! - one call in flight per connection; the workers take calls from the
//!   peers' uids in turn, so one uid's calls cannot queue up ahead of
//!   everyone else's.
//!
//! A connection idle for `idle_timeout`, or stuck in the middle of a
//! message for that long, is closed. Garbage gets an `InvalidParameter`
//! error and the connection is closed. The socket file is re-created if it
//! is deleted while the broker runs.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use serde_json::json;
use userdb_proto::peer::Peer;
use userdb_proto::varlink::{encode, errors, Call, FrameBuffer, Reply};

use crate::config::Config;
use crate::service::{Outcome, Service, Stream};

/// Largest request accepted; real calls are a few hundred bytes.
pub const MAX_FRAME: usize = 64 * 1024;

/// Descriptors kept back from connections: listener, poll, waker, stdio,
/// the watcher's inotify and file reads, the snapshot file, and each
/// worker's connections to the Varlink services.
pub const RESERVED_FDS: usize = 256;

/// A stream is produced this far ahead of what the client has read.
pub const STREAM_BUDGET: usize = 64 * 1024;

/// Connections the kernel queues before the loop accepts them. A new
/// client waits behind every one queued before it, and during a flood the
/// queue is always full: at tens of microseconds per accepted (and evicted)
/// connection, 256 is a few milliseconds of waiting where `SOMAXCONN`
/// (4096) was over 100 ms. A client finding the queue full retries.
pub const LISTEN_BACKLOG: libc::c_int = 256;

/// Listing chunks produced between two polls for events: a few
/// milliseconds of work, whatever the number of listings in progress.
pub const STREAM_CHUNKS_PER_TURN: usize = 4;

/// Connections accepted per turn of the loop, so that a flood of new
/// connections cannot starve the ones already held.
const ACCEPTS_PER_TURN: usize = 256;

/// How often timeouts are checked and the socket file is looked at.
const TICK: Duration = Duration::from_millis(250);

/// Bytes read from a connection per `read`.
const READ_CHUNK: usize = 16 * 1024;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONNECTION: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub per_uid: usize,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub workers: usize,
}

impl Limits {
    pub fn from_config(config: &Config) -> Self {
        Limits {
            max_connections: config.max_connections,
            per_uid: config.max_connections_per_uid,
            idle_timeout: config.idle_timeout,
            write_timeout: config.write_timeout,
            workers: config.workers,
        }
    }

    /// The connections this process can hold: the configured cap, within
    /// the descriptor limit less what is kept back.
    pub fn capacity(&self) -> usize {
        let nofile = descriptor_limit();
        self.max_connections
            .min(nofile.saturating_sub(RESERVED_FDS))
            .max(1)
    }

    /// The per-uid quota within the capacity.
    pub fn quota(&self) -> usize {
        self.per_uid.min(self.capacity()).max(1)
    }
}

/// The soft descriptor limit (`RLIMIT_NOFILE`).
pub fn descriptor_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

/// What the daemon tells a running server.
#[derive(Debug)]
pub enum Control {
    /// New limits after a reload (the worker count stays as started).
    Limits(Limits),
}

/// Creates the listening socket: parent directory (0755) if missing, a
/// stale socket file replaced, mode 0666 so every process can resolve
/// users. Refuses to replace a socket some process still listens on, or
/// anything that is not a socket.
pub fn bind(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            fs::create_dir_all(parent)?;
            fs::set_permissions(parent, fs::Permissions::from_mode(0o755))?;
        }
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
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
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))?;
    // SAFETY: re-listening on a bound listening socket only sets its backlog.
    unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// What a connection is doing.
enum State {
    /// Waiting for the next call.
    Idle,
    /// A worker is answering a call.
    Busy,
    /// A listing is being sent.
    Streaming(Stream),
    /// The replies written, then close (after garbage, or a message too large).
    Closing,
}

struct Connection {
    stream: UnixStream,
    peer: Peer,
    /// Distinguishes this connection from a later one in the same slot.
    serial: u64,
    frames: FrameBuffer,
    out: Vec<u8>,
    written: usize,
    state: State,
    last_active: Instant,
    /// When the oldest unanswered byte arrived: a message must be complete
    /// within the idle timeout, however slowly it trickles in.
    partial_since: Option<Instant>,
    /// When replies started waiting for the client to read them.
    blocked_since: Option<Instant>,
    peer_closed: bool,
    /// Waits in [`Server::streams`] for its next listing chunk.
    queued: bool,
}

impl Connection {
    fn pending_out(&self) -> usize {
        self.out.len() - self.written
    }

    fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle) && self.pending_out() == 0 && self.frames.pending() == 0
    }
}

/// A call for a worker.
struct Job {
    token: usize,
    serial: u64,
    call: Call,
    peer: Peer,
}

/// A worker's answer, back to the loop.
struct Done {
    token: usize,
    serial: u64,
    outcome: Outcome,
}

/// Calls waiting for a worker, taken from the peers' uids in turn.
#[derive(Default)]
struct FairQueue {
    by_uid: HashMap<u32, VecDeque<Job>>,
    turn: VecDeque<u32>,
}

impl FairQueue {
    fn push(&mut self, job: Job) {
        let uid = job.peer.uid;
        let queue = self.by_uid.entry(uid).or_default();
        if queue.is_empty() {
            self.turn.push_back(uid);
        }
        queue.push_back(job);
    }

    fn pop(&mut self) -> Option<Job> {
        let uid = self.turn.pop_front()?;
        let queue = self.by_uid.get_mut(&uid)?;
        let job = queue.pop_front();
        if queue.is_empty() {
            self.by_uid.remove(&uid);
        } else {
            self.turn.push_back(uid);
        }
        job
    }
}

struct Pool {
    queue: Mutex<FairQueue>,
    ready: Condvar,
    done: Mutex<Vec<Done>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pool {
    fn start(workers: usize, service: &Arc<Service>, waker: &Arc<Waker>) -> io::Result<Arc<Pool>> {
        let pool = Arc::new(Pool {
            queue: Mutex::default(),
            ready: Condvar::new(),
            done: Mutex::default(),
        });
        for i in 0..workers.max(1) {
            let (pool, service, waker) =
                (Arc::clone(&pool), Arc::clone(service), Arc::clone(waker));
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || pool.work(&service, &waker))?;
        }
        Ok(pool)
    }

    fn submit(&self, job: Job) {
        lock(&self.queue).push(job);
        self.ready.notify_one();
    }

    fn work(&self, service: &Service, waker: &Waker) {
        loop {
            let job = {
                let mut queue = lock(&self.queue);
                loop {
                    if let Some(job) = queue.pop() {
                        break job;
                    }
                    queue = self
                        .ready
                        .wait(queue)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            };
            let outcome = answer_call(service, &job.call, &job.peer);
            lock(&self.done).push(Done {
                token: job.token,
                serial: job.serial,
                outcome,
            });
            if let Err(e) = waker.wake() {
                tracing::warn!("cannot wake the event loop: {e}");
            }
        }
    }

    fn take_done(&self) -> Vec<Done> {
        std::mem::take(&mut *lock(&self.done))
    }
}

/// A log line at most every ten seconds, with the count of those left out.
struct RateLimited {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    const fn new() -> Self {
        RateLimited {
            last: None,
            suppressed: 0,
        }
    }

    fn warn(&mut self, message: impl std::fmt::Display) {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            tracing::warn!("{message} ({} more like it left out)", self.suppressed);
        } else {
            tracing::warn!("{message}");
        }
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

pub struct Server {
    poll: Poll,
    listener: UnixListener,
    socket_path: PathBuf,
    service: Arc<Service>,
    limits: Limits,
    pool: Arc<Pool>,
    control: Receiver<Control>,
    slots: Vec<Option<Connection>>,
    free: Vec<usize>,
    per_uid: HashMap<u32, usize>,
    open: usize,
    next_serial: u64,
    counter: Arc<AtomicUsize>,
    /// Kept open so that, out of descriptors, one can be freed to accept
    /// and close a connection instead of leaving the backlog to spin.
    spare_fd: Option<fs::File>,
    accept_backlog: bool,
    accept_errors: RateLimited,
    /// Listings whose client can take more, in turn: `(slot, serial)`.
    streams: VecDeque<(usize, u64)>,
}

/// What a connection needs after a round of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// An event: more to read, room to write, a worker's answer.
    Wait,
    /// Its next listing chunk, when its turn comes.
    Chunk,
    Close,
}

/// A way to reach a running server from another thread.
#[derive(Clone)]
pub struct Handle {
    waker: Arc<Waker>,
    control: Sender<Control>,
}

impl Handle {
    pub fn send(&self, control: Control) {
        if self.control.send(control).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

impl Server {
    pub fn new(
        listener: std::os::unix::net::UnixListener,
        socket_path: PathBuf,
        service: Arc<Service>,
        limits: Limits,
    ) -> io::Result<(Server, Handle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listener = UnixListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let pool = Pool::start(limits.workers, &service, &waker)?;
        let (sender, control) = std::sync::mpsc::channel();
        let counter = service.connection_counter();
        Ok((
            Server {
                poll,
                listener,
                socket_path,
                service,
                limits,
                pool,
                control,
                slots: Vec::new(),
                free: Vec::new(),
                per_uid: HashMap::new(),
                open: 0,
                next_serial: 0,
                counter,
                spare_fd: fs::File::open("/dev/null").ok(),
                accept_backlog: false,
                accept_errors: RateLimited::new(),
                streams: VecDeque::new(),
            },
            Handle {
                waker,
                control: sender,
            },
        ))
    }

    /// Serves until the process ends.
    pub fn serve(mut self) -> ! {
        let mut events = Events::with_capacity(1024);
        let mut last_tick = Instant::now();
        loop {
            let timeout = if self.accept_backlog || !self.streams.is_empty() {
                Duration::ZERO
            } else {
                TICK
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::warn!("poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_backlog = true,
                    WAKER => {}
                    Token(t) => self.pump(t - FIRST_CONNECTION),
                }
            }
            self.finish_jobs();
            self.apply_control();
            if self.accept_backlog {
                self.accept();
            }
            self.produce_chunks();
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.expire();
                self.keep_socket();
            }
        }
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.accept_backlog = false;
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                    self.accept_errors.warn(format_args!("accept failed: {e}"));
                    if out_of_fds && self.spare_fd.take().is_some() {
                        // Take the waiting connection off the backlog and
                        // close it: the client sees it closed at once.
                        drop(self.listener.accept());
                        self.spare_fd = fs::File::open("/dev/null").ok();
                        continue;
                    }
                    self.accept_backlog = false;
                    return;
                }
            }
        }
    }

    /// Takes a new connection in, making room by the quota rules.
    fn admit(&mut self, mut stream: UnixStream) {
        let peer = match Peer::of(&stream) {
            Ok(peer) => peer,
            Err(e) => {
                tracing::debug!("dropping a connection without credentials: {e}");
                return;
            }
        };
        let quota = self.limits.quota();
        let over_quota =
            peer.uid != 0 && self.per_uid.get(&peer.uid).copied().unwrap_or(0) >= quota;
        if over_quota && !self.evict(Some(peer.uid)) {
            return;
        }
        if self.open >= self.limits.capacity() && !self.evict(None) {
            return;
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(index + FIRST_CONNECTION),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!("cannot watch a connection: {e}");
            self.free.push(index);
            return;
        }
        self.next_serial += 1;
        self.slots[index] = Some(Connection {
            stream,
            peer,
            serial: self.next_serial,
            frames: FrameBuffer::new(MAX_FRAME),
            out: Vec::new(),
            written: 0,
            state: State::Idle,
            last_active: Instant::now(),
            partial_since: None,
            blocked_since: None,
            peer_closed: false,
            queued: false,
        });
        *self.per_uid.entry(peer.uid).or_default() += 1;
        self.open += 1;
        self.counter.store(self.open, Ordering::Relaxed);
        self.pump(index);
    }

    /// Closes the longest-idle connection of `uid`, or (for `None`) of the
    /// uid holding the most connections. Returns whether one was closed.
    fn evict(&mut self, uid: Option<u32>) -> bool {
        let uid = match uid {
            Some(uid) => uid,
            None => match self.per_uid.iter().max_by_key(|(_, n)| **n) {
                Some((&uid, _)) => uid,
                None => return false,
            },
        };
        let victim = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
            .filter(|(_, c)| c.peer.uid == uid)
            .min_by_key(|(_, c)| (!c.is_idle(), c.last_active))
            .map(|(i, _)| i);
        match victim {
            Some(index) => {
                tracing::debug!(
                    uid,
                    "connection limit reached: closed the longest-idle connection"
                );
                self.close(index);
                true
            }
            None => false,
        }
    }

    fn close(&mut self, index: usize) {
        let Some(mut connection) = self.slots.get_mut(index).and_then(Option::take) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut connection.stream);
        if let Some(n) = self.per_uid.get_mut(&connection.peer.uid) {
            *n -= 1;
            if *n == 0 {
                self.per_uid.remove(&connection.peer.uid);
            }
        }
        self.free.push(index);
        self.open -= 1;
        self.counter.store(self.open, Ordering::Relaxed);
    }

    /// Does everything a connection can do now: read, answer, write; queues
    /// it for its next listing chunk; closes it when it is done.
    fn pump(&mut self, index: usize) {
        let Some(connection) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        match step(connection, index, &self.service, &self.pool) {
            Next::Wait => {}
            Next::Chunk => {
                if !connection.queued {
                    connection.queued = true;
                    self.streams.push_back((index, connection.serial));
                }
            }
            Next::Close => self.close(index),
        }
    }

    /// Produces the next chunk of the listings waiting in turn, up to
    /// [`STREAM_CHUNKS_PER_TURN`], each connection once per round.
    fn produce_chunks(&mut self) {
        for _ in 0..STREAM_CHUNKS_PER_TURN {
            let Some((index, serial)) = self.streams.pop_front() else {
                return;
            };
            let Some(c) = self.slots.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            if c.serial != serial {
                continue;
            }
            c.queued = false;
            let nothing_pending = c.pending_out() == 0;
            if let State::Streaming(stream) = &mut c.state {
                if nothing_pending {
                    c.out.clear();
                    c.written = 0;
                    if stream.fill(&mut c.out, STREAM_BUDGET) {
                        c.state = State::Idle;
                    }
                }
            }
            self.pump(index);
        }
    }

    fn finish_jobs(&mut self) {
        for done in self.pool.take_done() {
            let index = done.token;
            let Some(connection) = self.slots.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            if connection.serial != done.serial {
                continue;
            }
            deliver(connection, done.outcome);
            self.pump(index);
        }
    }

    fn apply_control(&mut self) {
        while let Ok(control) = self.control.try_recv() {
            match control {
                Control::Limits(limits) => {
                    tracing::info!(
                        capacity = limits.capacity(),
                        per_uid = limits.quota(),
                        "connection limits reloaded"
                    );
                    self.limits = Limits {
                        workers: self.limits.workers,
                        ..limits
                    };
                }
            }
        }
    }

    /// Closes connections past their idle or write timeout.
    fn expire(&mut self) {
        let limits = self.limits;
        let expired: Vec<(usize, bool)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let c = c.as_ref()?;
                let stalled = c
                    .blocked_since
                    .is_some_and(|t| t.elapsed() >= limits.write_timeout);
                let trickled = c
                    .partial_since
                    .is_some_and(|t| t.elapsed() >= limits.idle_timeout);
                let idle = c.is_idle() && c.last_active.elapsed() >= limits.idle_timeout;
                (stalled || trickled || idle).then_some((i, trickled && !stalled))
            })
            .collect();
        for (index, tell) in expired {
            if tell {
                if let Some(c) = self.slots[index].as_mut() {
                    send_invalid(c, "message not completed in time");
                    let _ = flush(c);
                }
            }
            self.close(index);
        }
    }

    /// Re-creates the socket file if someone deleted it.
    fn keep_socket(&mut self) {
        if identity(&self.socket_path).is_some() {
            return;
        }
        match bind(&self.socket_path) {
            Ok(listener) => {
                let mut listener = UnixListener::from_std(listener);
                let registry = self.poll.registry();
                if registry
                    .register(&mut listener, LISTENER, Interest::READABLE)
                    .is_ok()
                {
                    let _ = registry.deregister(&mut self.listener);
                    self.listener = listener;
                    self.accept_backlog = true;
                    tracing::warn!(
                        socket = %self.socket_path.display(),
                        "the socket file was deleted: created it again"
                    );
                }
            }
            Err(e) => self.accept_errors.warn(format_args!(
                "cannot re-create {}: {e}",
                self.socket_path.display()
            )),
        }
    }
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_socket())
        .map(|m| (m.dev(), m.ino()))
}

/// One round of work on a connection: writes what is pending, takes the
/// next calls; a listing's next chunk waits for its turn.
fn step(c: &mut Connection, index: usize, service: &Arc<Service>, pool: &Pool) -> Next {
    loop {
        match flush(c) {
            Ok(()) => {}
            Err(_) => return Next::Close,
        }
        if c.pending_out() > 0 {
            return Next::Wait;
        }
        match c.state {
            State::Streaming(_) => return Next::Chunk,
            State::Closing => return Next::Close,
            State::Busy => return Next::Wait,
            State::Idle => {}
        }
        match c.frames.next_frame() {
            Ok(Some(frame)) => {
                dispatch(c, index, &frame, service, pool);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                send_invalid(c, &e.to_string());
                c.state = State::Closing;
                continue;
            }
        }
        if c.frames.pending() == 0 {
            c.partial_since = None;
        }
        if c.peer_closed {
            return Next::Close;
        }
        match read_some(c) {
            Ok(true) => continue,
            Ok(false) => return Next::Wait,
            Err(_) => return Next::Close,
        }
    }
}

/// Reads what has arrived; `Ok(false)` when nothing more is there now.
fn read_some(c: &mut Connection) -> io::Result<bool> {
    let mut buf = [0u8; READ_CHUNK];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => {
                // Once what was sent before is answered, the connection
                // is closed: no further event will come for it.
                c.peer_closed = true;
                return Ok(true);
            }
            Ok(n) => {
                c.frames.push(&buf[..n]);
                c.last_active = Instant::now();
                c.partial_since.get_or_insert_with(Instant::now);
                return Ok(true);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// Writes pending replies until the socket is full.
fn flush(c: &mut Connection) -> io::Result<()> {
    while c.pending_out() > 0 {
        match c.stream.write(&c.out[c.written..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                c.written += n;
                c.blocked_since = None;
                c.last_active = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                c.blocked_since.get_or_insert_with(Instant::now);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    c.out.clear();
    c.written = 0;
    c.blocked_since = None;
    Ok(())
}

fn dispatch(c: &mut Connection, index: usize, frame: &[u8], service: &Arc<Service>, pool: &Pool) {
    c.partial_since = (c.frames.pending() > 0).then(Instant::now);
    let call: Call = match serde_json::from_slice(frame) {
        Ok(call) => call,
        Err(e) => {
            send_invalid(c, &format!("not a Varlink call: {e}"));
            c.state = State::Closing;
            return;
        }
    };
    if service.may_wait(&call) {
        c.state = State::Busy;
        pool.submit(Job {
            token: index,
            serial: c.serial,
            call,
            peer: c.peer,
        });
    } else {
        deliver(c, answer_call(service, &call, &c.peer));
    }
}

/// The service's answer; a panic in it becomes an error reply, and the
/// loop or the worker goes on.
fn answer_call(service: &Service, call: &Call, peer: &Peer) -> Outcome {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| service.handle(call, peer)))
        .unwrap_or_else(|_| {
            tracing::error!(method = %call.method, "a call panicked; answered with an error");
            Outcome::Replies {
                bytes: encode(&Reply::error(errors::INVALID_PARAMETER)),
                failed: true,
            }
        })
}

fn deliver(c: &mut Connection, outcome: Outcome) {
    match outcome {
        Outcome::Replies { bytes, .. } => {
            c.out.extend_from_slice(&bytes);
            c.state = State::Idle;
        }
        Outcome::Stream(stream) => c.state = State::Streaming(stream),
    }
}

fn send_invalid(c: &mut Connection, why: &str) {
    let reply = Reply {
        parameters: Some(json!({ "parameter": why })),
        continues: false,
        error: Some(errors::INVALID_PARAMETER.to_owned()),
    };
    c.out.extend(encode(&reply));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::User;
    use crate::service::tests::resolver_over;
    use crate::sources::{SourceData, SourceKind};
    use serde_json::Value;
    use std::os::unix::net::UnixStream as StdStream;
    use userdb_proto::record::UserRecord;

    fn start(tag: &str, limits: Limits) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("brokerd-server-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("sub/io.userdb.Broker");
        let data = SourceData {
            users: (0..3)
                .map(|i| {
                    Arc::new(User::from_nss(
                        UserRecord {
                            name: format!("user{i}"),
                            uid: 1000 + i,
                            gid: 1000 + i,
                            gecos: String::new(),
                            home: "/".into(),
                            shell: "/bin/sh".into(),
                            shadow: None,
                        },
                        true,
                    ))
                })
                .collect(),
            ..Default::default()
        };
        let service = Arc::new(Service::new(
            resolver_over(vec![(SourceKind::Files, data)]),
            None,
        ));
        let (server, _) = Server::new(bind(&path).unwrap(), path.clone(), service, limits).unwrap();
        std::thread::spawn(move || server.serve());
        path
    }

    fn limits() -> Limits {
        Limits {
            max_connections: 64,
            per_uid: 64,
            idle_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            workers: 2,
        }
    }

    fn connect(path: &Path) -> StdStream {
        let s = StdStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    /// Reads replies until `count` arrived or the peer closed.
    fn read_replies(stream: &mut StdStream, count: usize) -> Vec<Value> {
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

    fn closed(stream: &mut StdStream) -> bool {
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
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(bind(&stale).is_ok());
        let regular = path.with_file_name("regular");
        fs::write(&regular, "x").unwrap();
        assert!(bind(&regular).is_err());
    }

    #[test]
    fn a_deleted_socket_file_is_created_again() {
        let path = start("recreate", limits());
        fs::remove_file(&path).unwrap();
        let started = Instant::now();
        while !path.exists() {
            assert!(started.elapsed() < Duration::from_secs(3), "not re-created");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut s = connect(&path);
        s.write_all(&lookup(1001)).unwrap();
        assert_eq!(
            read_replies(&mut s, 1)[0]["parameters"]["record"]["userName"],
            "user1"
        );
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
    fn at_the_quota_the_longest_idle_connection_of_that_uid_is_closed() {
        let path = start(
            "cap",
            Limits {
                max_connections: 3,
                per_uid: 3,
                ..limits()
            },
        );
        let mut oldest = connect(&path);
        std::thread::sleep(Duration::from_millis(20));
        let mut kept: Vec<StdStream> = (0..2).map(|_| connect(&path)).collect();
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
        let path = start(
            "flood",
            Limits {
                max_connections: 1024,
                per_uid: 1024,
                ..limits()
            },
        );
        let idle: Vec<StdStream> = (0..500).map(|_| connect(&path)).collect();
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

    #[test]
    fn fair_queue_takes_uids_in_turn() {
        let job = |uid: u32, token: usize| Job {
            token,
            serial: 0,
            call: Call {
                method: String::new(),
                parameters: Value::Null,
                more: false,
                oneway: false,
            },
            peer: Peer {
                pid: 1,
                uid,
                gid: uid,
            },
        };
        let mut queue = FairQueue::default();
        for t in 0..100 {
            queue.push(job(65534, t));
        }
        queue.push(job(0, 1000));
        let first_two: Vec<usize> = (0..2)
            .filter_map(|_| queue.pop())
            .map(|j| j.token)
            .collect();
        assert_eq!(first_two, [0, 1000], "root's call comes second, not 101st");
    }
}
