//! A small blocking Varlink client over `AF_UNIX`, shared by the NSS module,
//! `userdb-brokerctl` and the broker's Varlink sources.
//!
//! Every connection carries one deadline that bounds everything done on it:
//! the connect (non-blocking, so a full backlog cannot hang it), every send
//! and every read. A streamed answer may also bound each wait for its next
//! reply ([`Connection::with_reply_timeout`]): a long listing then lives as
//! long as replies keep coming, up to the overall deadline. Replies are
//! capped per frame and in total, so a peer that speaks garbage, trickles
//! bytes or sends without end costs at most the deadline and a bounded
//! amount of memory. No threads, no runtime, no global state: the socket is
//! opened per connection (with `SOCK_CLOEXEC`) and closed on drop, which
//! keeps the client correct after `fork()`.
//!
//! For callers that wait on several connections at once (the broker asks
//! its services concurrently), [`Connection::start`] sends a call and
//! [`Connection::read_available`] consumes whatever replies have arrived
//! without waiting; [`Connection::fd`] is what to `poll`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::varlink::{encode, Call, FrameBuffer, Reply};

/// Largest single reply frame accepted by default: a group of a million
/// members is about 10 MiB of JSON.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;
/// Largest total of all replies to one `more` call accepted by default.
pub const DEFAULT_MAX_TOTAL: usize = 256 << 20;

/// Bytes asked of the kernel per `recv`.
const READ_CHUNK: usize = 64 << 10;
/// Pause between connect attempts while the listener's backlog is full
/// (`AF_UNIX` answers `EAGAIN` at once instead of waiting).
const BACKLOG_RETRY: Duration = Duration::from_millis(2);

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// No socket at the path (`ENOENT`, `ENOTDIR`): the broker is not running.
    Absent,
    /// A socket file exists but nothing listens on it (`ECONNREFUSED`).
    Refused,
    /// The process listening is not one the caller may believe.
    Untrusted,
    /// The deadline passed before the answer was complete.
    Timeout,
    /// A reply frame or the whole streamed answer exceeded its cap.
    Oversized,
    /// The peer sent something that is not a Varlink reply, or hung up early.
    Protocol(String),
    /// The peer answered with a Varlink error; the error's name.
    Remote(String),
    /// Any other failure of a socket call, with its errno.
    Os(i32),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Absent => f.write_str("no socket at that path (is the broker running?)"),
            ClientError::Refused => f.write_str("connection refused (stale socket?)"),
            ClientError::Untrusted => f.write_str("the listening process is not trusted"),
            ClientError::Timeout => f.write_str("timed out"),
            ClientError::Oversized => f.write_str("reply larger than allowed"),
            ClientError::Protocol(what) => write!(f, "protocol error: {what}"),
            ClientError::Remote(name) => write!(f, "error reply: {name}"),
            ClientError::Os(errno) => write!(f, "{}", std::io::Error::from_raw_os_error(*errno)),
        }
    }
}

impl std::error::Error for ClientError {}

/// Caps on what one connection accepts from its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_frame: usize,
    pub max_total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: DEFAULT_MAX_FRAME,
            max_total: DEFAULT_MAX_TOTAL,
        }
    }
}

/// The I/O-free half of a connection: the bytes received go in, whole
/// replies come out, each frame checked against the caps before it is
/// decoded and an error reply turned into `ClientError::Remote`.
#[derive(Debug)]
pub struct ReplyReader {
    frames: FrameBuffer,
    limits: Limits,
    /// Bytes of every frame of the current call, NULs included.
    total: usize,
}

impl ReplyReader {
    pub fn new(limits: Limits) -> ReplyReader {
        ReplyReader {
            frames: FrameBuffer::new(limits.max_frame),
            limits,
            total: 0,
        }
    }

    /// Starts a new call: `max_total` counts from zero again.
    pub fn begin_call(&mut self) {
        self.total = 0;
    }

    /// Bytes as they came from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        self.frames.push(bytes);
    }

    /// The next reply, `Ok(None)` if more bytes are needed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ClientError> {
        let frame = match self.frames.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(None),
            Err(_) => return Err(ClientError::Oversized),
        };
        self.total = self.total.saturating_add(frame.len() + 1);
        if self.total > self.limits.max_total {
            return Err(ClientError::Oversized);
        }
        let reply: Reply = serde_json::from_slice(&frame)
            .map_err(|e| ClientError::Protocol(format!("reply is not a Varlink message: {e}")))?;
        match reply.error {
            Some(name) => Err(ClientError::Remote(name)),
            None => Ok(Some(reply)),
        }
    }
}

/// One connection to a Varlink service, bounded by one deadline.
#[derive(Debug)]
pub struct Connection {
    fd: OwnedFd,
    deadline: Instant,
    /// Longest wait for the next reply of a stream, if bounded apart from
    /// the deadline.
    reply_timeout: Option<Duration>,
    /// When the last reply (or the call) completed: the reply timeout runs
    /// from here.
    progress_at: Instant,
    replies: ReplyReader,
    /// Scratch space for `recv`, kept so that a long stream of replies
    /// does not allocate one per reply.
    chunk: Vec<u8>,
}

/// Whether a call that was started has had its last reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More replies are to come.
    Pending,
    /// The last reply (one without `continues`) was handed out.
    Done,
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Milliseconds left until `deadline`, rounded up so that a poll never
/// returns early and spins; `None` once it has passed.
fn remaining_ms(deadline: Instant) -> Option<libc::c_int> {
    let left = deadline.checked_duration_since(Instant::now())?;
    if left.is_zero() {
        return None;
    }
    let ms = left.as_nanos().div_ceil(1_000_000);
    Some(libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX))
}

/// Waits until `fd` is ready for `events` or the deadline passes; signals
/// restart the wait with the time that is left.
fn wait_for(fd: &OwnedFd, events: libc::c_short, deadline: Instant) -> Result<(), ClientError> {
    loop {
        let timeout = remaining_ms(deadline).ok_or(ClientError::Timeout)?;
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd that outlives the call.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout) };
        match n {
            0 => return Err(ClientError::Timeout),
            n if n > 0 => return Ok(()),
            _ => match last_errno() {
                libc::EINTR => continue,
                errno => return Err(ClientError::Os(errno)),
            },
        }
    }
}

fn socket_address(path: &Path) -> Result<(libc::sockaddr_un, libc::socklen_t), ClientError> {
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.contains(&0) {
        return Err(ClientError::Os(libc::EINVAL));
    }
    // Keep room for the terminating NUL.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() {
        return Err(ClientError::Os(libc::ENAMETOOLONG));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

fn connect_error(errno: i32) -> ClientError {
    match errno {
        libc::ENOENT | libc::ENOTDIR => ClientError::Absent,
        libc::ECONNREFUSED => ClientError::Refused,
        errno => ClientError::Os(errno),
    }
}

/// The socket, for `SO_PEERCRED` (who listens on it) and for `poll`.
impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Connection {
    /// Connects to the socket at `path`; the connection and every call made
    /// on it must finish by `deadline`.
    pub fn connect(path: &Path, deadline: Instant) -> Result<Connection, ClientError> {
        let (addr, addr_len) = socket_address(path)?;
        // SAFETY: plain socket(2) call; the result is checked below.
        let raw = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if raw < 0 {
            return Err(ClientError::Os(last_errno()));
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        loop {
            // SAFETY: `addr` is a valid sockaddr_un of `addr_len` bytes.
            let rc = unsafe {
                libc::connect(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
                    addr_len,
                )
            };
            if rc == 0 {
                break;
            }
            match last_errno() {
                libc::EINTR => continue,
                libc::EAGAIN => {
                    // The backlog is full; try again shortly, within the deadline.
                    let left = deadline
                        .checked_duration_since(Instant::now())
                        .filter(|d| !d.is_zero())
                        .ok_or(ClientError::Timeout)?;
                    std::thread::sleep(left.min(BACKLOG_RETRY));
                }
                libc::EINPROGRESS => {
                    wait_for(&fd, libc::POLLOUT, deadline)?;
                    let errno = socket_error(&fd)?;
                    if errno != 0 {
                        return Err(connect_error(errno));
                    }
                    break;
                }
                errno => return Err(connect_error(errno)),
            }
        }
        Ok(Connection::over(fd, deadline))
    }

    fn over(fd: OwnedFd, deadline: Instant) -> Connection {
        Connection {
            fd,
            deadline,
            reply_timeout: None,
            progress_at: Instant::now(),
            replies: ReplyReader::new(Limits::default()),
            chunk: vec![0u8; READ_CHUNK],
        }
    }

    /// Connects with a deadline `timeout` from now (a timeout too large to
    /// represent is cut to a day).
    pub fn connect_timeout(path: &Path, timeout: Duration) -> Result<Connection, ClientError> {
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        Connection::connect(path, deadline)
    }

    /// Replaces the default caps on replies.
    pub fn with_limits(mut self, limits: Limits) -> Connection {
        self.replies = ReplyReader::new(limits);
        self
    }

    /// Bounds each wait for the next reply by `timeout` as well as by the
    /// deadline, so that a stream may outlive `timeout` as long as it keeps
    /// moving.
    pub fn with_reply_timeout(mut self, timeout: Duration) -> Connection {
        self.reply_timeout = Some(timeout);
        self
    }

    /// The descriptor to `poll` for `POLLIN` while a call is pending.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// When everything done on this connection must be over.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Calls `method` and returns the parameters of its single reply.
    pub fn call<P: Serialize>(
        &mut self,
        method: &str,
        parameters: &P,
    ) -> Result<Value, ClientError> {
        self.start(method, parameters, false)?;
        let reply = self.read_reply(true)?;
        if reply.continues {
            return Err(ClientError::Protocol("unexpected 'continues' reply".into()));
        }
        Ok(reply.parameters.unwrap_or(Value::Null))
    }

    /// Calls `method` with `more` set and hands the parameters of every reply
    /// to `each`, in order, until the last one. An error from `each` stops the
    /// call and is returned.
    pub fn call_more<P: Serialize>(
        &mut self,
        method: &str,
        parameters: &P,
        mut each: impl FnMut(Value) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        self.start(method, parameters, true)?;
        loop {
            let reply = self.read_reply(true)?;
            each(reply.parameters.unwrap_or(Value::Null))?;
            if !reply.continues {
                return Ok(());
            }
        }
    }

    /// Sends a call without waiting for its answer; the replies are then
    /// taken with [`Connection::read_available`].
    pub fn start<P: Serialize>(
        &mut self,
        method: &str,
        parameters: &P,
        more: bool,
    ) -> Result<(), ClientError> {
        let parameters = serde_json::to_value(parameters)
            .map_err(|e| ClientError::Protocol(format!("cannot encode parameters: {e}")))?;
        let call = Call {
            method: method.to_owned(),
            parameters,
            more,
            oneway: false,
        };
        self.replies.begin_call();
        self.send_all(&encode(&call))?;
        self.progress_at = Instant::now();
        Ok(())
    }

    /// Hands every reply that has arrived to `each`, without waiting for
    /// more; `Done` once the last one was handed out. Errors as for
    /// [`Connection::call_more`], and `Timeout` once the deadline passed.
    pub fn read_available(
        &mut self,
        mut each: impl FnMut(Value) -> Result<(), ClientError>,
    ) -> Result<Progress, ClientError> {
        loop {
            if self.wait_deadline() <= Instant::now() {
                return Err(ClientError::Timeout);
            }
            match self.next_reply(false)? {
                Some(reply) => {
                    each(reply.parameters.unwrap_or(Value::Null))?;
                    if !reply.continues {
                        return Ok(Progress::Done);
                    }
                }
                None => return Ok(Progress::Pending),
            }
        }
    }

    /// Until when the next read may wait.
    fn wait_deadline(&self) -> Instant {
        match self.reply_timeout {
            Some(t) => self
                .progress_at
                .checked_add(t)
                .map_or(self.deadline, |d| d.min(self.deadline)),
            None => self.deadline,
        }
    }

    fn send_all(&mut self, mut bytes: &[u8]) -> Result<(), ClientError> {
        while !bytes.is_empty() {
            // SAFETY: `bytes` is a valid readable buffer of its length.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                bytes = &bytes[n as usize..];
                continue;
            }
            match last_errno() {
                libc::EINTR => continue,
                libc::EAGAIN => wait_for(&self.fd, libc::POLLOUT, self.deadline)?,
                libc::EPIPE | libc::ECONNRESET => {
                    return Err(ClientError::Protocol("peer closed the connection".into()))
                }
                errno => return Err(ClientError::Os(errno)),
            }
        }
        Ok(())
    }

    /// Reads the next reply, waiting for it; an error reply becomes
    /// `ClientError::Remote`.
    fn read_reply(&mut self, wait: bool) -> Result<Reply, ClientError> {
        match self.next_reply(wait)? {
            Some(reply) => Ok(reply),
            None => Err(ClientError::Timeout),
        }
    }

    /// The next reply; `None` when `wait` is false and none is complete yet.
    fn next_reply(&mut self, wait: bool) -> Result<Option<Reply>, ClientError> {
        loop {
            if let Some(reply) = self.replies.next_reply()? {
                self.progress_at = Instant::now();
                return Ok(Some(reply));
            }
            // SAFETY: `self.chunk` is a valid writable buffer of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.chunk.as_mut_ptr().cast(),
                    self.chunk.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => return Err(ClientError::Protocol("peer closed the connection".into())),
                n if n > 0 => self.replies.push(&self.chunk[..n as usize]),
                _ => match last_errno() {
                    libc::EINTR => continue,
                    libc::EAGAIN if !wait => return Ok(None),
                    libc::EAGAIN => wait_for(&self.fd, libc::POLLIN, self.wait_deadline())?,
                    libc::ECONNRESET => {
                        return Err(ClientError::Protocol("peer reset the connection".into()))
                    }
                    errno => return Err(ClientError::Os(errno)),
                },
            }
        }
    }
}

/// The pending error of a socket whose non-blocking connect finished.
fn socket_error(fd: &OwnedFd) -> Result<i32, ClientError> {
    let mut errno: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `errno` and `len` are valid for writes and sized as SO_ERROR needs.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut errno as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(ClientError::Os(last_errno()));
    }
    Ok(errno)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    /// A fresh directory for one test's socket, removed on drop.
    struct SocketDir(PathBuf);

    impl SocketDir {
        fn new() -> SocketDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "proto-client-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            SocketDir(dir)
        }

        fn socket(&self) -> PathBuf {
            self.0.join("s")
        }
    }

    impl Drop for SocketDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Starts a one-connection server that reads one call and then runs `answer`.
    fn serve(
        path: &Path,
        answer: impl FnOnce(&mut UnixStream) + Send + 'static,
    ) -> thread::JoinHandle<()> {
        let listener = UnixListener::bind(path).unwrap();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut call = Vec::new();
            let mut byte = [0u8; 1];
            while stream.read(&mut byte).unwrap_or(0) == 1 && byte[0] != 0 {
                call.push(byte[0]);
            }
            serde_json::from_slice::<Call>(&call).unwrap();
            answer(&mut stream);
        })
    }

    fn elapsed_between(start: Instant, low: Duration, high: Duration) {
        let took = start.elapsed();
        assert!(
            took >= low && took <= high,
            "took {took:?}, expected {low:?}..{high:?}"
        );
    }

    const METHOD: &str = "io.systemd.UserDatabase.GetUserRecord";

    #[test]
    fn absent_socket_fails_fast() {
        let dir = SocketDir::new();
        let start = Instant::now();
        let err = Connection::connect_timeout(&dir.socket(), Duration::from_secs(5)).unwrap_err();
        assert_eq!(err, ClientError::Absent);
        elapsed_between(start, Duration::ZERO, Duration::from_millis(50));
        let missing_dir = dir.0.join("no-such-dir").join("s");
        assert_eq!(
            Connection::connect_timeout(&missing_dir, Duration::from_secs(5)).unwrap_err(),
            ClientError::Absent
        );
    }

    #[test]
    fn stale_socket_is_refused() {
        let dir = SocketDir::new();
        drop(UnixListener::bind(dir.socket()).unwrap());
        let err = Connection::connect_timeout(&dir.socket(), Duration::from_secs(5)).unwrap_err();
        assert_eq!(err, ClientError::Refused);
    }

    #[test]
    fn overlong_path_is_refused() {
        let path = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
        let err = Connection::connect_timeout(&path, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err, ClientError::Os(libc::ENAMETOOLONG));
    }

    #[test]
    fn single_reply_round_trip() {
        let dir = SocketDir::new();
        let server = serve(&dir.socket(), |s| {
            s.write_all(b"{\"parameters\":{\"record\":{\"userName\":\"a\"}}}\0")
                .unwrap();
        });
        let mut conn = Connection::connect_timeout(&dir.socket(), Duration::from_secs(5)).unwrap();
        let value = conn
            .call(METHOD, &serde_json::json!({"userName": "a"}))
            .unwrap();
        assert_eq!(value["record"]["userName"], "a");
        server.join().unwrap();
    }

    #[test]
    fn error_reply_names_the_error() {
        let dir = SocketDir::new();
        let server = serve(&dir.socket(), |s| {
            s.write_all(
                b"{\"error\":\"io.systemd.UserDatabase.NoRecordFound\",\"parameters\":{}}\0",
            )
            .unwrap();
        });
        let mut conn = Connection::connect_timeout(&dir.socket(), Duration::from_secs(5)).unwrap();
        let err = conn.call(METHOD, &serde_json::json!({})).unwrap_err();
        assert_eq!(
            err,
            ClientError::Remote("io.systemd.UserDatabase.NoRecordFound".into())
        );
        server.join().unwrap();
    }

    #[test]
    fn silent_peer_times_out_at_the_deadline() {
        let dir = SocketDir::new();
        let listener = UnixListener::bind(dir.socket()).unwrap();
        let start = Instant::now();
        let mut conn =
            Connection::connect_timeout(&dir.socket(), Duration::from_millis(200)).unwrap();
        let err = conn.call(METHOD, &serde_json::json!({})).unwrap_err();
        assert_eq!(err, ClientError::Timeout);
        elapsed_between(
            start,
            Duration::from_millis(200),
            Duration::from_millis(300),
        );
        drop(listener);
    }

    #[test]
    fn full_backlog_times_out_at_the_deadline() {
        let dir = SocketDir::new();
        let listener = UnixListener::bind(dir.socket()).unwrap();
        // SAFETY: re-listening on a valid listening socket only lowers its backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        // Fill the backlog with connections nobody accepts.
        let mut held = Vec::new();
        let start = Instant::now();
        let err = loop {
            match Connection::connect_timeout(&dir.socket(), Duration::from_millis(200)) {
                Ok(conn) => held.push(conn),
                Err(e) => break e,
            }
            assert!(held.len() < 16, "backlog never filled");
        };
        assert_eq!(err, ClientError::Timeout);
        elapsed_between(
            start,
            Duration::from_millis(200),
            Duration::from_millis(300),
        );
    }

    #[test]
    fn trickled_reply_within_deadline_is_read() {
        let dir = SocketDir::new();
        let server = serve(&dir.socket(), |s| {
            for byte in b"{\"parameters\":{\"n\":1}}\0" {
                s.write_all(&[*byte]).unwrap();
                thread::sleep(Duration::from_millis(2));
            }
        });
        let mut conn = Connection::connect_timeout(&dir.socket(), Duration::from_secs(5)).unwrap();
        assert_eq!(conn.call(METHOD, &serde_json::json!({})).unwrap()["n"], 1);
        server.join().unwrap();
    }

    #[test]
    fn endless_trickle_times_out_at_the_deadline() {
        let dir = SocketDir::new();
        let server = serve(&dir.socket(), |s| {
            // Stops once the client has hung up.
            while s.write_all(b" ").is_ok() {
                thread::sleep(Duration::from_millis(5));
            }
        });
        let start = Instant::now();
        let mut conn =
            Connection::connect_timeout(&dir.socket(), Duration::from_millis(200)).unwrap();
        assert_eq!(
            conn.call(METHOD, &serde_json::json!({})).unwrap_err(),
            ClientError::Timeout
        );
        elapsed_between(
            start,
            Duration::from_millis(200),
            Duration::from_millis(300),
        );
        drop(conn);
        server.join().unwrap();
    }

    #[test]
    fn oversized_frame_is_refused() {
        let dir = SocketDir::new();
        let server = serve(&dir.socket(), |s| {
            let _ = s.write_all(&vec![b'x'; 1 << 20]);
        });
        let limits = Limits {
            max_frame: 64 << 10,
            max_total: 1 << 20,
        };
        let mut conn = Connection::connect_timeout(&dir.socket(), Duration::from_secs(5))
            .unwrap()
            .with_limits(limits);
        assert_eq!(
            conn.call(METHOD, &serde_json::json!({})).unwrap_err(),
            ClientError::Oversized
        );
        drop(conn);
        server.join().unwrap();
    }

    #[test]
    fn oversized_stream_is_refused() {
        let dir = SocketDir::new();
        let server = serve(&dir.socket(), |s| {
            let frame = b"{\"parameters\":{\"pad\":\"0123456789\"},\"continues\":true}\0";
            while s.write_all(frame).is_ok() {}
        });
        let limits = Limits {
            max_frame: 1 << 10,
            max_total: 64 << 10,
        };
        let mut conn = Connection::connect_timeout(&dir.socket(), Duration::from_secs(5))
            .unwrap()
            .with_limits(limits);
        let mut seen = 0usize;
        let err = conn
            .call_more(METHOD, &serde_json::json!({}), |_| {
                seen += 1;
                Ok(())
            })
            .unwrap_err();
        assert_eq!(err, ClientError::Oversized);
        assert!(seen > 0 && seen * 50 <= 64 << 10, "saw {seen} replies");
        drop(conn);
        server.join().unwrap();
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let dir = SocketDir::new();
        let server = serve(&dir.socket(), |s| {
            s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n\0").unwrap();
        });
        let mut conn = Connection::connect_timeout(&dir.socket(), Duration::from_secs(5)).unwrap();
        assert!(matches!(
            conn.call(METHOD, &serde_json::json!({})).unwrap_err(),
            ClientError::Protocol(_)
        ));
        server.join().unwrap();
    }

    #[test]
    fn hang_up_mid_reply_is_a_protocol_error() {
        let dir = SocketDir::new();
        let server = serve(&dir.socket(), |s| {
            s.write_all(b"{\"parameters\":").unwrap();
        });
        let mut conn = Connection::connect_timeout(&dir.socket(), Duration::from_secs(5)).unwrap();
        let err = conn.call(METHOD, &serde_json::json!({})).unwrap_err();
        assert_eq!(
            err,
            ClientError::Protocol("peer closed the connection".into())
        );
        server.join().unwrap();
    }

    #[test]
    fn streamed_replies_arrive_in_order_until_the_last() {
        let dir = SocketDir::new();
        let server = serve(&dir.socket(), |s| {
            s.write_all(
                b"{\"parameters\":{\"n\":1},\"continues\":true}\0\
                  {\"parameters\":{\"n\":2},\"continues\":true}\0\
                  {\"parameters\":{\"n\":3}}\0",
            )
            .unwrap();
        });
        let mut conn = Connection::connect_timeout(&dir.socket(), Duration::from_secs(5)).unwrap();
        let mut got = Vec::new();
        conn.call_more(METHOD, &serde_json::json!({}), |v| {
            got.push(v["n"].as_u64().unwrap_or(0));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, [1, 2, 3]);
        server.join().unwrap();
    }

    #[test]
    fn a_moving_stream_outlives_its_reply_timeout() {
        let dir = SocketDir::new();
        let server = serve(&dir.socket(), |s| {
            for n in 0..10 {
                let frame = format!("{{\"parameters\":{{\"n\":{n}}},\"continues\":{}}}\0", n < 9);
                s.write_all(frame.as_bytes()).unwrap();
                thread::sleep(Duration::from_millis(30));
            }
        });
        let mut conn = Connection::connect_timeout(&dir.socket(), Duration::from_secs(5))
            .unwrap()
            .with_reply_timeout(Duration::from_millis(100));
        let start = Instant::now();
        let mut seen = 0;
        conn.call_more(METHOD, &serde_json::json!({}), |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 10);
        assert!(start.elapsed() >= Duration::from_millis(250));
        server.join().unwrap();
    }

    #[test]
    fn a_stalled_stream_fails_at_its_reply_timeout() {
        let dir = SocketDir::new();
        let server = serve(&dir.socket(), |s| {
            s.write_all(b"{\"parameters\":{},\"continues\":true}\0")
                .unwrap();
            thread::sleep(Duration::from_millis(400));
        });
        let mut conn = Connection::connect_timeout(&dir.socket(), Duration::from_secs(5))
            .unwrap()
            .with_reply_timeout(Duration::from_millis(100));
        let start = Instant::now();
        let mut seen = 0;
        let err = conn
            .call_more(METHOD, &serde_json::json!({}), |_| {
                seen += 1;
                Ok(())
            })
            .unwrap_err();
        assert_eq!((err, seen), (ClientError::Timeout, 1));
        elapsed_between(
            start,
            Duration::from_millis(100),
            Duration::from_millis(250),
        );
        server.join().unwrap();
    }

    #[test]
    fn read_available_takes_what_arrived_without_waiting() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let mut conn = Connection::over(
            OwnedFd::from(client),
            Instant::now() + Duration::from_secs(5),
        );
        conn.start(METHOD, &serde_json::json!({}), true).unwrap();
        let mut got = Vec::new();
        let mut take = |v: Value| {
            got.push(v["n"].as_u64().unwrap_or(0));
            Ok(())
        };
        assert_eq!(conn.read_available(&mut take).unwrap(), Progress::Pending);
        server
            .write_all(b"{\"parameters\":{\"n\":1},\"continues\":true}\0{\"param")
            .unwrap();
        assert_eq!(conn.read_available(&mut take).unwrap(), Progress::Pending);
        server.write_all(b"eters\":{\"n\":2}}\0").unwrap();
        assert_eq!(conn.read_available(&mut take).unwrap(), Progress::Done);
        assert_eq!(got, [1, 2]);
    }

    #[test]
    fn reply_reader_counts_the_total_cap_per_call() {
        let frame = b"{\"parameters\":{}}\0";
        let mut reader = ReplyReader::new(Limits {
            max_frame: 64,
            max_total: frame.len(),
        });
        reader.push(frame);
        assert!(reader.next_reply().unwrap().is_some());
        reader.push(frame);
        assert_eq!(reader.next_reply(), Err(ClientError::Oversized));
        reader.begin_call();
        reader.push(frame);
        assert!(reader.next_reply().unwrap().is_some());
        assert_eq!(reader.next_reply(), Ok(None));
    }

    #[test]
    fn the_call_is_one_nul_terminated_varlink_message() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let mut conn = Connection::over(
            OwnedFd::from(client),
            Instant::now() + Duration::from_secs(5),
        );
        server.write_all(b"{\"parameters\":{}}\0").unwrap();
        conn.call(METHOD, &serde_json::json!({"uid": 0})).unwrap();
        drop(conn);
        let mut sent = Vec::new();
        server.read_to_end(&mut sent).unwrap();
        assert_eq!(sent.last(), Some(&0));
        let call: Call = serde_json::from_slice(&sent[..sent.len() - 1]).unwrap();
        assert_eq!(call.method, METHOD);
        assert_eq!(call.parameters, serde_json::json!({"uid": 0}));
        assert!(!call.more);
    }
}
