//! Calls glibc's reentrant lookups (and so every NSS module configured) in
//! ways `getent` cannot: timed precisely around the libc call, from many
//! threads, across `fork()`, from an `atexit` handler.
//!
//! Usage:
//!   nss-probe time QUERY...           one line per lookup: QUERY, result, µs; then `total µs`
//!   nss-probe repeat SECONDS QUERY... each QUERY in a loop for SECONDS: QUERY, calls, ns per call, result
//!   nss-probe threads T N EXPECT...   T threads × N lookups cycling through EXPECT
//!   nss-probe fork ROUNDS EXPECT...   fork ROUNDS times while 4 threads look up
//!   nss-probe atexit EXPECT...        look up in main, then again in an atexit handler
//!   nss-probe atexit-only EXPECT...   the first lookup of the process is in the handler
//!   nss-probe fds N QUERY...          open descriptors after one round of QUERY and after N more
//!   nss-probe enum passwd|group SIZE  enumerate with a SIZE-byte buffer doubled on every ERANGE
//!   nss-probe reenter OUTER INNER MS  look up OUTER; after MS ms a SIGALRM handler looks up INNER
//!   nss-probe follow QUERY            look QUERY up until stdin closes; `µs-since-start answer` on every change
//!   nss-probe spin T US EXPECT...     T threads cycle through EXPECT, pausing US µs after each
//!                                     look-up, until stdin closes
//!   nss-probe watch SECONDS EXPECT... EXPECT in a loop for SECONDS, each call timed; one summary line
//!   nss-probe hold SOCKET N SECONDS [enumerate]
//!                                     keep N connections to SOCKET open for SECONDS, connecting again
//!                                     as fast as the peer closes them; with `enumerate` each asks for a
//!                                     listing of every user and never reads the answer
//!   nss-probe forge SOCKET SECONDS    listen on SOCKET and answer every call with a forged `root`
//!   nss-probe samples SECONDS MIN QUERY...  each QUERY timed call by call: QUERY, calls, p50 ns, p90 ns, result
//!   nss-probe id NAME SECONDS MIN     the look-ups of `id NAME` (getpwnam, getgrouplist, getgrgid each), timed whole
//!   nss-probe loop N QUERY...         every QUERY once, then each N times in a function callgrind can count alone
//!   nss-probe until SECONDS QUERY LINE  QUERY every ms until its answer is LINE; when, in CLOCK_MONOTONIC ns
//!
//! QUERY is `passwd:NAME`, `uid:UID`, `group:NAME` or `gid:GID`.
//! EXPECT is `passwd:NAME=UID`, `group:NAME=GID`, `QUERY=LINE` (the whole entry, as
//! `time` prints it after `found`), or `QUERY=-` (not found).
//! The exit code is 0 when every EXPECT held, 1 otherwise, 2 on bad usage.
//! `hold` and `forge` never call NSS: they are the hostile peers of the
//! tests, run as an unprivileged user.

use std::ffi::{CStr, CString};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use userdb_broker_tests::monotonic_ns;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Database {
    Passwd,
    Group,
}

#[derive(Debug, Clone)]
enum Key {
    Name(CString),
    Id(u32),
}

#[derive(Debug, Clone)]
struct Query {
    database: Database,
    key: Key,
    text: String,
}

/// What glibc answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// The entry in passwd/group file format.
    Found {
        name: String,
        id: u32,
        line: String,
    },
    NotFound,
    /// The non-zero return value of the *_r call.
    Error(i32),
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Found { line, .. } => write!(f, "found {line}"),
            Answer::NotFound => f.write_str("notfound"),
            Answer::Error(rc) => write!(f, "error {rc}"),
        }
    }
}

fn parse_query(text: &str) -> Option<Query> {
    let (kind, key) = text.split_once(':')?;
    let (database, key) = match kind {
        "passwd" => (Database::Passwd, Key::Name(CString::new(key).ok()?)),
        "group" => (Database::Group, Key::Name(CString::new(key).ok()?)),
        "uid" => (Database::Passwd, Key::Id(key.parse().ok()?)),
        "gid" => (Database::Group, Key::Id(key.parse().ok()?)),
        _ => return None,
    };
    Some(Query {
        database,
        key,
        text: text.to_owned(),
    })
}

unsafe fn text(ptr: *const libc::c_char) -> String {
    if ptr.is_null() {
        String::new()
    } else {
        CStr::from_ptr(ptr).to_string_lossy().into_owned()
    }
}

/// Runs one lookup the way glibc's own non-reentrant wrappers do: start
/// with a small buffer and double it on ERANGE.
fn lookup(query: &Query) -> Answer {
    let mut size = 256usize;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        let rc = match query.database {
            Database::Passwd => lookup_passwd(query, &mut buf),
            Database::Group => lookup_group(query, &mut buf),
        };
        match rc {
            Err(libc::ERANGE) if size < 64 << 20 => size *= 2,
            Err(rc) => return Answer::Error(rc),
            Ok(answer) => return answer,
        }
    }
}

fn lookup_passwd(query: &Query, buf: &mut [libc::c_char]) -> Result<Answer, i32> {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe {
        match &query.key {
            Key::Name(name) => libc::getpwnam_r(
                name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            ),
            Key::Id(uid) => {
                libc::getpwuid_r(*uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result)
            }
        }
    };
    if rc != 0 {
        return Err(rc);
    }
    if result.is_null() {
        return Ok(Answer::NotFound);
    }
    let name = unsafe { text(pwd.pw_name) };
    let line = unsafe {
        format!(
            "{}:{}:{}:{}:{}:{}:{}",
            name,
            text(pwd.pw_passwd),
            pwd.pw_uid,
            pwd.pw_gid,
            text(pwd.pw_gecos),
            text(pwd.pw_dir),
            text(pwd.pw_shell)
        )
    };
    Ok(Answer::Found {
        name,
        id: pwd.pw_uid,
        line,
    })
}

fn lookup_group(query: &Query, buf: &mut [libc::c_char]) -> Result<Answer, i32> {
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    let rc = unsafe {
        match &query.key {
            Key::Name(name) => libc::getgrnam_r(
                name.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            ),
            Key::Id(gid) => {
                libc::getgrgid_r(*gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut result)
            }
        }
    };
    if rc != 0 {
        return Err(rc);
    }
    if result.is_null() {
        return Ok(Answer::NotFound);
    }
    let name = unsafe { text(grp.gr_name) };
    let mut members = Vec::new();
    let mut cursor = grp.gr_mem;
    while !cursor.is_null() && unsafe { !(*cursor).is_null() } {
        members.push(unsafe { text(*cursor) });
        cursor = unsafe { cursor.add(1) };
    }
    let line = format!(
        "{}:{}:{}:{}",
        name,
        unsafe { text(grp.gr_passwd) },
        grp.gr_gid,
        members.join(",")
    );
    Ok(Answer::Found {
        name,
        id: grp.gr_gid,
        line,
    })
}

/// A lookup and the answer it must get.
#[derive(Debug, Clone)]
struct Expectation {
    query: Query,
    want: Want,
}

#[derive(Debug, Clone)]
enum Want {
    /// Found, with the name asked for and this id.
    Id(u32),
    /// Found, printing exactly this line.
    Line(String),
    Missing,
}

impl Expectation {
    fn parse(text: &str) -> Option<Expectation> {
        let (query, want) = text.split_once('=')?;
        let query = parse_query(query)?;
        let want = match want {
            "-" => Want::Missing,
            line if line.contains(':') => Want::Line(line.to_owned()),
            // The id check compares the name too.
            n if matches!(query.key, Key::Name(_)) => Want::Id(n.parse().ok()?),
            _ => return None,
        };
        Some(Expectation { query, want })
    }

    /// None when the answer is right, otherwise a description of what was wrong.
    fn check(&self) -> Option<String> {
        let answer = lookup(&self.query);
        (self.verdict(&answer) != Verdict::Right)
            .then(|| format!("{}: got {answer}", self.query.text))
    }

    fn verdict(&self, answer: &Answer) -> Verdict {
        match (answer, &self.want) {
            (Answer::Found { name, id, .. }, Want::Id(want))
                if *id == *want
                    && matches!(&self.query.key, Key::Name(wanted) if name.as_bytes() == wanted.as_bytes()) =>
            {
                Verdict::Right
            }
            (Answer::Found { line, .. }, Want::Line(want)) if line == want => Verdict::Right,
            (Answer::NotFound, Want::Missing) => Verdict::Right,
            (Answer::NotFound, _) => Verdict::NotFound,
            (Answer::Error(_), _) => Verdict::Failed,
            (Answer::Found { .. }, _) => Verdict::Wrong,
        }
    }
}

/// How an answer compares with what was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Right,
    /// An error instead of an answer.
    Failed,
    /// "Not found" for an entry that exists: the lie that matters most.
    NotFound,
    /// Another entry, or one that should not exist.
    Wrong,
}

fn parse_all<T>(args: &[String], parse: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    let items: Option<Vec<T>> = args.iter().map(|a| parse(a)).collect();
    items.filter(|v| !v.is_empty())
}

fn micros(d: Duration) -> u128 {
    d.as_micros()
}

fn cmd_time(queries: &[Query]) -> ExitCode {
    let started = Instant::now();
    for query in queries {
        let before = Instant::now();
        let answer = lookup(query);
        let took = before.elapsed();
        println!("{}\t{}\t{}", query.text, micros(took), answer);
    }
    println!("total\t{}", micros(started.elapsed()));
    ExitCode::SUCCESS
}

/// The benchmark's loop: one warm-up call, then calls until the time is up.
fn cmd_repeat(seconds: f64, queries: &[Query]) -> ExitCode {
    let budget = Duration::from_secs_f64(seconds);
    for query in queries {
        let answer = lookup(query);
        let started = Instant::now();
        let mut calls: u32 = 0;
        while started.elapsed() < budget {
            lookup(query);
            calls += 1;
        }
        let ns_per_call = started.elapsed().as_nanos() / u128::from(calls.max(1));
        let result = match answer {
            Answer::Found { .. } => "found".to_owned(),
            Answer::NotFound => "notfound".to_owned(),
            Answer::Error(rc) => format!("error{rc}"),
        };
        println!("{}\t{calls}\t{ns_per_call}\t{result}", query.text);
    }
    ExitCode::SUCCESS
}

fn cmd_threads(threads: usize, per_thread: usize, expectations: Vec<Expectation>) -> ExitCode {
    let expectations = Arc::new(expectations);
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let expectations = Arc::clone(&expectations);
            thread::spawn(move || {
                let mut wrong = Vec::new();
                for i in 0..per_thread {
                    let e = &expectations[(t + i) % expectations.len()];
                    if let Some(problem) = e.check() {
                        wrong.push(problem);
                    }
                }
                wrong
            })
        })
        .collect();
    report_workers(workers, || threads * per_thread)
}

/// How long a forked child may take before it counts as hung.
const CHILD_LIMIT: Duration = Duration::from_secs(10);

/// Waits for `pid`; None if it is still running after CHILD_LIMIT (then killed).
fn wait_child(pid: libc::pid_t) -> Option<i32> {
    let started = Instant::now();
    loop {
        let mut status = 0;
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            });
        }
        if rc < 0 || started.elapsed() > CHILD_LIMIT {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn cmd_fork(rounds: usize, expectations: Vec<Expectation>) -> ExitCode {
    let expectations = Arc::new(expectations);
    let stop = Arc::new(AtomicBool::new(false));
    let background: Vec<_> = (0..4)
        .map(|t| {
            let expectations = Arc::clone(&expectations);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut wrong = 0usize;
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    wrong += usize::from(expectations[i % expectations.len()].check().is_some());
                    i += 1;
                }
                wrong
            })
        })
        .collect();
    let (mut child_failed, mut child_hung, mut parent_wrong) = (0, 0, 0);
    for _ in 0..rounds {
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // In the child only async-signal-safe work is allowed before
            // exec, but the point is to prove lookups work here anyway.
            let all_right = expectations.iter().all(|e| e.check().is_none());
            unsafe { libc::_exit(if all_right { 0 } else { 1 }) };
        }
        if pid < 0 {
            eprintln!("fork failed: {}", std::io::Error::last_os_error());
            return ExitCode::from(2);
        }
        parent_wrong += expectations.iter().filter(|e| e.check().is_some()).count();
        match wait_child(pid) {
            Some(0) => {}
            Some(_) => child_failed += 1,
            None => child_hung += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let background_wrong: usize = background
        .into_iter()
        .map(|h| h.join().unwrap_or(usize::MAX))
        .sum();
    println!(
        "rounds={rounds} child_failed={child_failed} child_hung={child_hung} parent_wrong={parent_wrong} background_wrong={background_wrong}"
    );
    if child_failed + child_hung + parent_wrong + background_wrong == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

static AT_EXIT: OnceLock<Vec<Expectation>> = OnceLock::new();

/// Written with write(2): stdout's Rust buffer may be gone during exit.
fn write_stdout(line: &str) {
    let bytes = line.as_bytes();
    unsafe { libc::write(1, bytes.as_ptr().cast(), bytes.len()) };
}

extern "C" fn lookups_at_exit() {
    if let Some(expectations) = AT_EXIT.get() {
        for e in expectations {
            let verdict = match e.check() {
                None => "right".to_owned(),
                Some(problem) => format!("wrong ({problem})"),
            };
            write_stdout(&format!("atexit {} {verdict}\n", e.query.text));
        }
    }
}

fn cmd_atexit(expectations: Vec<Expectation>, first_in_main: bool) -> ExitCode {
    if first_in_main {
        for e in &expectations {
            let verdict = e
                .check()
                .map_or("right".to_owned(), |p| format!("wrong ({p})"));
            write_stdout(&format!("main {} {verdict}\n", e.query.text));
        }
    }
    let _ = AT_EXIT.set(expectations);
    if unsafe { libc::atexit(lookups_at_exit) } != 0 {
        eprintln!("atexit registration failed");
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}

/// One step of an enumeration: Ok(None) at the end, Err on ERANGE or
/// another error code.
fn next_entry(database: Database, buf: &mut [libc::c_char]) -> Result<Option<String>, i32> {
    match database {
        Database::Passwd => {
            let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            let rc =
                unsafe { libc::getpwent_r(&mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
            match (rc, result.is_null()) {
                (0, false) => Ok(Some(unsafe {
                    format!(
                        "{}:{}:{}:{}:{}:{}:{}",
                        text(pwd.pw_name),
                        text(pwd.pw_passwd),
                        pwd.pw_uid,
                        pwd.pw_gid,
                        text(pwd.pw_gecos),
                        text(pwd.pw_dir),
                        text(pwd.pw_shell)
                    )
                })),
                (0, true) | (libc::ENOENT, _) => Ok(None),
                (rc, _) => Err(rc),
            }
        }
        Database::Group => {
            let mut grp: libc::group = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::group = std::ptr::null_mut();
            let rc =
                unsafe { libc::getgrent_r(&mut grp, buf.as_mut_ptr(), buf.len(), &mut result) };
            match (rc, result.is_null()) {
                (0, false) => {
                    let mut members = Vec::new();
                    let mut cursor = grp.gr_mem;
                    while !cursor.is_null() && unsafe { !(*cursor).is_null() } {
                        members.push(unsafe { text(*cursor) });
                        cursor = unsafe { cursor.add(1) };
                    }
                    Ok(Some(unsafe {
                        format!(
                            "{}:{}:{}:{}",
                            text(grp.gr_name),
                            text(grp.gr_passwd),
                            grp.gr_gid,
                            members.join(",")
                        )
                    }))
                }
                (0, true) | (libc::ENOENT, _) => Ok(None),
                (rc, _) => Err(rc),
            }
        }
    }
}

/// Enumerates with a buffer that starts at `start` bytes for every entry and
/// doubles on each ERANGE, so every entry larger than `start` first meets a
/// buffer too small for it; a module that skips the entry on the retry
/// loses lines here.
fn cmd_enum(database: Database, start: usize) -> ExitCode {
    let mut retries = 0usize;
    let mut size = start;
    match database {
        Database::Passwd => unsafe { libc::setpwent() },
        Database::Group => unsafe { libc::setgrent() },
    }
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        match next_entry(database, &mut buf) {
            Ok(Some(line)) => {
                println!("{line}");
                size = start;
            }
            Ok(None) => break,
            Err(libc::ERANGE) if size < 64 << 20 => {
                retries += 1;
                size *= 2;
                continue;
            }
            Err(rc) => {
                eprintln!("enumeration failed: error {rc}");
                return ExitCode::FAILURE;
            }
        }
    }
    match database {
        Database::Passwd => unsafe { libc::endpwent() },
        Database::Group => unsafe { libc::endgrent() },
    }
    eprintln!("erange_retries={retries}");
    ExitCode::SUCCESS
}

static INNER: OnceLock<Query> = OnceLock::new();
static INNER_ANSWER: OnceLock<(Answer, Duration)> = OnceLock::new();

/// Runs while the outer lookup is inside the module on the same thread:
/// exactly the re-entry the module's guard must answer at once.
extern "C" fn lookup_in_signal_handler(_: libc::c_int) {
    if let Some(query) = INNER.get() {
        let started = Instant::now();
        let answer = lookup(query);
        let _ = INNER_ANSWER.set((answer, started.elapsed()));
    }
}

fn cmd_reenter(outer: &Query, inner: Query, delay_ms: u64) -> ExitCode {
    let _ = INNER.set(inner);
    let handler: extern "C" fn(libc::c_int) = lookup_in_signal_handler;
    let timer = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: (delay_ms / 1000) as libc::time_t,
            tv_usec: ((delay_ms % 1000) * 1000) as libc::suseconds_t,
        },
    };
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut()) != 0
            || libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) != 0
        {
            eprintln!("cannot arm the timer: {}", std::io::Error::last_os_error());
            return ExitCode::from(2);
        }
    }
    let started = Instant::now();
    let answer = lookup(outer);
    println!("outer\t{}\t{}", micros(started.elapsed()), answer);
    match INNER_ANSWER.get() {
        Some((answer, took)) => println!("inner\t{}\t{}", micros(*took), answer),
        None => println!("inner\tnever ran"),
    }
    ExitCode::SUCCESS
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn cmd_fds(rounds: usize, queries: &[Query]) -> ExitCode {
    // The first round lets glibc load the module and read its configuration.
    queries.iter().for_each(|q| drop(lookup(q)));
    let before = open_descriptors();
    for _ in 0..rounds {
        queries.iter().for_each(|q| drop(lookup(q)));
    }
    println!("fds before={before} after={}", open_descriptors());
    ExitCode::SUCCESS
}

/// A flag raised once stdin reaches its end: the test's way of saying "stop".
fn stop_at_end_of_stdin() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let raised = Arc::clone(&stop);
    thread::spawn(move || {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        raised.store(true, Ordering::SeqCst);
    });
    stop
}

/// Looks `query` up back to back and prints each answer that differs from
/// the one before, with the µs since the start: the test changes the data
/// and reads how soon this one process sees it.
fn cmd_follow(query: &Query) -> ExitCode {
    let stop = stop_at_end_of_stdin();
    let started = Instant::now();
    let mut last: Option<Answer> = None;
    let mut lookups: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        let answer = lookup(query);
        lookups += 1;
        if last.as_ref() != Some(&answer) {
            println!("{}\t{answer}", micros(started.elapsed()));
            last = Some(answer);
        }
        thread::sleep(Duration::from_micros(200));
    }
    println!("lookups={lookups}");
    ExitCode::SUCCESS
}

/// T threads look up EXPECT in turn, each pausing `pause` after every
/// look-up, until stdin closes (the test watches the process from outside
/// meanwhile).
fn cmd_spin(threads: usize, pause: Duration, expectations: Vec<Expectation>) -> ExitCode {
    let stop = stop_at_end_of_stdin();
    let expectations = Arc::new(expectations);
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (expectations, stop, done) = (
                Arc::clone(&expectations),
                Arc::clone(&stop),
                Arc::clone(&done),
            );
            thread::spawn(move || {
                let mut wrong = Vec::new();
                let mut i = t;
                while !stop.load(Ordering::SeqCst) {
                    if let Some(problem) = expectations[i % expectations.len()].check() {
                        wrong.push(problem);
                    }
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(pause);
                }
                wrong
            })
        })
        .collect();
    report_workers(workers, || done.load(Ordering::SeqCst))
}

/// Joins the look-up threads, prints `lookups=N wrong=N crashed_threads=N`
/// (`lookups` counted once they are done) and the first wrong answers;
/// success only when all were right.
fn report_workers(
    workers: Vec<thread::JoinHandle<Vec<String>>>,
    lookups: impl FnOnce() -> usize,
) -> ExitCode {
    let mut wrong = Vec::new();
    let mut crashed = 0;
    for worker in workers {
        match worker.join() {
            Ok(w) => wrong.extend(w),
            Err(_) => crashed += 1,
        }
    }
    println!(
        "lookups={} wrong={} crashed_threads={crashed}",
        lookups(),
        wrong.len()
    );
    for problem in wrong.iter().take(5) {
        println!("wrong: {problem}");
    }
    if wrong.is_empty() && crashed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Looks the expectations up in turn until `seconds` have passed, timing
/// every call; one summary line, then the first few problems.
fn cmd_watch(seconds: f64, expectations: &[Expectation]) -> ExitCode {
    let budget = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let (mut lookups, mut failed, mut not_found, mut wrong) = (0u64, 0u64, 0u64, 0u64);
    let mut slowest = Duration::ZERO;
    let mut problems = Vec::new();
    let mut next = 0usize;
    while started.elapsed() < budget {
        let expectation = &expectations[next % expectations.len()];
        next += 1;
        let before = Instant::now();
        let answer = lookup(&expectation.query);
        slowest = slowest.max(before.elapsed());
        lookups += 1;
        match expectation.verdict(&answer) {
            Verdict::Right => continue,
            Verdict::Failed => failed += 1,
            Verdict::NotFound => not_found += 1,
            Verdict::Wrong => wrong += 1,
        }
        if problems.len() < 5 {
            problems.push(format!(
                "{} at {} ms: got {answer}",
                expectation.query.text,
                started.elapsed().as_millis()
            ));
        }
    }
    println!(
        "watch lookups={lookups} failed={failed} notfound={not_found} wrong={wrong} max_us={}",
        micros(slowest)
    );
    for problem in &problems {
        println!("problem: {problem}");
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `sockaddr_un` for `path`; None when the path does not fit.
fn socket_address(path: &Path) -> Option<(libc::sockaddr_un, libc::socklen_t)> {
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return None;
    }
    for (slot, byte) in addr.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Some((addr, len as libc::socklen_t))
}

/// A non-blocking connection to `path`, or the errno of the attempt
/// (`EAGAIN`: the listener's backlog is full).
fn connect_nonblocking(path: &Path) -> Result<OwnedFd, i32> {
    let (addr, len) = socket_address(path).ok_or(libc::ENAMETOOLONG)?;
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let rc = unsafe { libc::connect(raw, std::ptr::addr_of!(addr).cast(), len) };
    if rc == 0 {
        return Ok(fd);
    }
    match std::io::Error::last_os_error().raw_os_error().unwrap_or(0) {
        libc::EINPROGRESS => Ok(fd),
        errno => Err(errno),
    }
}

/// Every listing of users the broker can be asked for, on systemd's interface.
const LIST_ALL_USERS: &[u8] = b"{\"method\":\"io.systemd.UserDatabase.GetUserRecord\",\"parameters\":{\"service\":\"io.userdb.Broker\"},\"more\":true}\0";

/// The attacker: holds `count` connections for `seconds`, replacing every
/// one the peer closes at once; with `enumerate` each connection asks for
/// every user and never reads a byte.
fn cmd_hold(socket: &Path, count: usize, seconds: f64, enumerate: bool) -> ExitCode {
    let budget = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut held: Vec<OwnedFd> = Vec::with_capacity(count);
    let (mut connects, mut closed_by_peer, mut backlog_full, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let mut most = 0usize;
    while started.elapsed() < budget {
        while held.len() < count {
            match connect_nonblocking(socket) {
                Ok(fd) => {
                    if enumerate {
                        let sent = unsafe {
                            libc::send(
                                fd.as_raw_fd(),
                                LIST_ALL_USERS.as_ptr().cast(),
                                LIST_ALL_USERS.len(),
                                libc::MSG_NOSIGNAL,
                            )
                        };
                        if sent < 0 {
                            errors += 1;
                        }
                    }
                    held.push(fd);
                    connects += 1;
                }
                Err(libc::EAGAIN) => {
                    backlog_full += 1;
                    break;
                }
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
        }
        most = most.max(held.len());
        // Sleeps until the peer closes one of them (or briefly, to retry a
        // full backlog), then drops the closed ones to connect again.
        let mut fds: Vec<libc::pollfd> = held
            .iter()
            .map(|fd| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLRDHUP,
                revents: 0,
            })
            .collect();
        let wait_ms = if held.len() < count { 1 } else { 10 };
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if ready > 0 {
            let gone = libc::POLLHUP | libc::POLLERR | libc::POLLRDHUP;
            let mut index = 0;
            held.retain(|_| {
                let alive = fds[index].revents & gone == 0;
                index += 1;
                closed_by_peer += u64::from(!alive);
                alive
            });
        }
    }
    println!(
        "hold held={} most={most} connects={connects} closed_by_peer={closed_by_peer} backlog_full={backlog_full} errors={errors}",
        held.len()
    );
    ExitCode::SUCCESS
}

/// A record no real broker would send for a non-root caller to believe.
const FORGED_ROOT: &[u8] = b"{\"parameters\":{\"record\":{\"userName\":\"root\",\"uid\":0,\"gid\":0,\"realName\":\"FORGED\",\"homeDirectory\":\"/root\",\"shell\":\"/bin/sh\",\"service\":\"io.userdb.Broker\"},\"incomplete\":false}}\0";

/// A listener of whoever runs it that answers every call with [`FORGED_ROOT`].
fn cmd_forge(socket: &Path, seconds: f64) -> ExitCode {
    let _ = std::fs::remove_file(socket);
    let listener = match UnixListener::bind(socket) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", socket.display());
            return ExitCode::from(2);
        }
    };
    let _ = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666));
    if listener.set_nonblocking(true).is_err() {
        return ExitCode::from(2);
    }
    let budget = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut answered = 0u64;
    while started.elapsed() < budget {
        let Ok((mut stream, _)) = listener.accept() else {
            thread::sleep(Duration::from_millis(2));
            continue;
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        // Every NUL ends a call; each gets the forged answer.
        let mut byte = [0u8; 1];
        while let Ok(1) = stream.read(&mut byte) {
            if byte[0] == 0 && stream.write_all(FORGED_ROOT).is_ok() {
                answered += 1;
            }
        }
    }
    let _ = std::fs::remove_file(socket);
    println!("forge answered={answered}");
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!("usage: nss-probe time QUERY... | threads T N EXPECT... | fork ROUNDS EXPECT... | atexit[-only] EXPECT... | fds N QUERY... | enum passwd|group SIZE | reenter OUTER INNER MS | watch SECONDS EXPECT... | hold SOCKET N SECONDS [enumerate] | forge SOCKET SECONDS | follow QUERY | spin T US EXPECT... | samples SECONDS MIN QUERY... | id NAME SECONDS MIN | loop N QUERY... | until SECONDS QUERY LINE");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        return usage();
    };
    let number = |i: usize| rest.get(i).and_then(|s| s.parse::<usize>().ok());
    let seconds = |i: usize| {
        rest.get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
    };
    match command.as_str() {
        "time" => match parse_all(rest, parse_query) {
            Some(queries) => cmd_time(&queries),
            None => usage(),
        },
        "repeat" => match (
            seconds(0),
            parse_all(rest.get(1..).unwrap_or(&[]), parse_query),
        ) {
            (Some(s), Some(queries)) => cmd_repeat(s, &queries),
            _ => usage(),
        },
        "threads" => match (
            number(0),
            number(1),
            parse_all(rest.get(2..).unwrap_or(&[]), Expectation::parse),
        ) {
            (Some(t), Some(n), Some(e)) => cmd_threads(t, n, e),
            _ => usage(),
        },
        "fork" => match (
            number(0),
            parse_all(rest.get(1..).unwrap_or(&[]), Expectation::parse),
        ) {
            (Some(rounds), Some(e)) => cmd_fork(rounds, e),
            _ => usage(),
        },
        "enum" => match (rest.first().map(String::as_str), number(1)) {
            (Some("passwd"), Some(size)) => cmd_enum(Database::Passwd, size),
            (Some("group"), Some(size)) => cmd_enum(Database::Group, size),
            _ => usage(),
        },
        "reenter" => match (
            rest.first().and_then(|q| parse_query(q)),
            rest.get(1).and_then(|q| parse_query(q)),
            rest.get(2).and_then(|n| n.parse::<u64>().ok()),
        ) {
            (Some(outer), Some(inner), Some(ms)) => cmd_reenter(&outer, inner, ms),
            _ => usage(),
        },
        "fds" => match (
            number(0),
            parse_all(rest.get(1..).unwrap_or(&[]), parse_query),
        ) {
            (Some(rounds), Some(queries)) => cmd_fds(rounds, &queries),
            _ => usage(),
        },
        "follow" => match rest.first().and_then(|q| parse_query(q)) {
            Some(query) if rest.len() == 1 => cmd_follow(&query),
            _ => usage(),
        },
        "spin" => match (
            number(0),
            rest.get(1).and_then(|n| n.parse::<u64>().ok()),
            parse_all(rest.get(2..).unwrap_or(&[]), Expectation::parse),
        ) {
            (Some(t), Some(us), Some(e)) if t > 0 => cmd_spin(t, Duration::from_micros(us), e),
            _ => usage(),
        },
        "watch" => match (
            seconds(0),
            parse_all(rest.get(1..).unwrap_or(&[]), Expectation::parse),
        ) {
            (Some(s), Some(e)) => cmd_watch(s, &e),
            _ => usage(),
        },
        "hold" => match (
            rest.first(),
            number(1),
            seconds(2),
            rest.get(3).map(String::as_str),
        ) {
            (Some(socket), Some(n), Some(s), None) => cmd_hold(Path::new(socket), n, s, false),
            (Some(socket), Some(n), Some(s), Some("enumerate")) => {
                cmd_hold(Path::new(socket), n, s, true)
            }
            _ => usage(),
        },
        "forge" => match (rest.first(), seconds(1)) {
            (Some(socket), Some(s)) => cmd_forge(Path::new(socket), s),
            _ => usage(),
        },
        "atexit" | "atexit-only" => match parse_all(rest, Expectation::parse) {
            Some(e) => cmd_atexit(e, command == "atexit"),
            None => usage(),
        },
        other => bench_command(other, rest).unwrap_or_else(usage),
    }
}

// The benchmark's measurement modes: each look-up is the bare libc call
// with a buffer allocated once, so nothing but the call itself is timed.

/// One look-up into `buf` (doubled on ERANGE): whether it found an entry,
/// or the call's error code; the entry itself is not read.
fn bare_lookup(query: &Query, buf: &mut Vec<libc::c_char>) -> Result<bool, i32> {
    loop {
        let rc = match query.database {
            Database::Passwd => {
                let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
                let mut result: *mut libc::passwd = std::ptr::null_mut();
                let rc = unsafe {
                    match &query.key {
                        Key::Name(name) => libc::getpwnam_r(
                            name.as_ptr(),
                            &mut pwd,
                            buf.as_mut_ptr(),
                            buf.len(),
                            &mut result,
                        ),
                        Key::Id(uid) => libc::getpwuid_r(
                            *uid,
                            &mut pwd,
                            buf.as_mut_ptr(),
                            buf.len(),
                            &mut result,
                        ),
                    }
                };
                (rc, !result.is_null())
            }
            Database::Group => {
                let mut grp: libc::group = unsafe { std::mem::zeroed() };
                let mut result: *mut libc::group = std::ptr::null_mut();
                let rc = unsafe {
                    match &query.key {
                        Key::Name(name) => libc::getgrnam_r(
                            name.as_ptr(),
                            &mut grp,
                            buf.as_mut_ptr(),
                            buf.len(),
                            &mut result,
                        ),
                        Key::Id(gid) => libc::getgrgid_r(
                            *gid,
                            &mut grp,
                            buf.as_mut_ptr(),
                            buf.len(),
                            &mut result,
                        ),
                    }
                };
                (rc, !result.is_null())
            }
        };
        match rc {
            (libc::ERANGE, _) if buf.len() < 64 << 20 => {
                let doubled = buf.len() * 2;
                buf.resize(doubled, 0);
            }
            (0, found) => return Ok(found),
            (rc, _) => return Err(rc),
        }
    }
}

fn bare_result(result: Result<bool, i32>) -> String {
    match result {
        Ok(true) => "found".to_owned(),
        Ok(false) => "notfound".to_owned(),
        Err(rc) => format!("error{rc}"),
    }
}

/// The value below which `share` of `sorted` lie (nearest rank).
fn percentile(sorted: &[u64], share: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 * share).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Times `once` until `seconds` have passed and it ran at least `min`
/// times; the sorted durations in ns.
fn sample(seconds: f64, min: usize, mut once: impl FnMut()) -> Vec<u64> {
    let budget = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut samples = Vec::with_capacity(1 << 16);
    while samples.len() < min || started.elapsed() < budget {
        let before = monotonic_ns();
        once();
        samples.push(monotonic_ns() - before);
    }
    samples.sort_unstable();
    samples
}

/// `samples SECONDS MIN QUERY...`: each QUERY timed call by call; first a
/// `timer` line with the cost of reading the clock twice.
fn cmd_samples(seconds: f64, min: usize, queries: &[Query]) -> ExitCode {
    let timer = sample(0.01, 1000, || {});
    println!("timer\t{}", percentile(&timer, 0.5));
    let mut buf = vec![0 as libc::c_char; 4096];
    for query in queries {
        // Untimed: the first call loads the module and reads its files.
        let result = bare_lookup(query, &mut buf);
        let samples = sample(seconds, min, || {
            let _ = bare_lookup(query, &mut buf);
        });
        println!(
            "{}\t{}\t{}\t{}\t{}",
            query.text,
            samples.len(),
            percentile(&samples, 0.5),
            percentile(&samples, 0.9),
            bare_result(result)
        );
    }
    ExitCode::SUCCESS
}

/// What `id NAME` asks glibc: the user, its groups (one `getgrouplist`),
/// then each group by gid (only the first `limit`). The number of groups,
/// and how many of those looked up were found; `None` if the user is not
/// found.
fn id_lookups(
    name: &CStr,
    limit: usize,
    buf: &mut Vec<libc::c_char>,
    gids: &mut Vec<libc::gid_t>,
) -> Option<(usize, usize)> {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    let gid = pwd.pw_gid;
    loop {
        let mut count = gids.len() as libc::c_int;
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, gids.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            gids.truncate(count as usize);
            break;
        }
        gids.resize((count as usize).max(gids.len() * 2), 0);
    }
    let mut found = 0;
    for &gid in gids.iter().take(limit) {
        let query = Query {
            database: Database::Group,
            key: Key::Id(gid),
            text: String::new(),
        };
        found += usize::from(bare_lookup(&query, buf) == Ok(true));
    }
    Some((gids.len(), found))
}

/// `id NAME SECONDS MIN`: the total look-up time of `id NAME` in one
/// process, repeated.
fn cmd_id(name: &CStr, seconds: f64, min: usize) -> ExitCode {
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut gids = vec![0; 1024];
    // Untimed: loads the modules of both databases, with one group only
    // (a slow module's whole `id` takes seconds).
    let _ = id_lookups(name, 1, &mut buf, &mut gids);
    let mut last = None;
    let samples = sample(seconds, min, || {
        gids.resize(1024, 0);
        last = id_lookups(name, usize::MAX, &mut buf, &mut gids);
    });
    let Some((groups, found)) = last else {
        println!("id\tnotfound");
        return ExitCode::FAILURE;
    };
    println!(
        "id\t{}\t{groups}\t{found}\t{}\t{}",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.9)
    );
    ExitCode::SUCCESS
}

/// N look-ups of `query`: the only code callgrind counts in `loop` mode
/// (`--toggle-collect=*counted_lookups*`, a dump after each call).
#[inline(never)]
fn counted_lookups(query: &Query, rounds: usize, buf: &mut Vec<libc::c_char>) {
    for _ in 0..rounds {
        let _ = std::hint::black_box(bare_lookup(query, buf));
    }
}

/// `loop N QUERY...`: every QUERY once (loading the modules, mapping
/// files), then each QUERY N times in [`counted_lookups`].
fn cmd_loop(rounds: usize, queries: &[Query]) -> ExitCode {
    let mut buf = vec![0 as libc::c_char; 4096];
    let results: Vec<String> = queries
        .iter()
        .map(|q| bare_result(bare_lookup(q, &mut buf)))
        .collect();
    for query in queries {
        counted_lookups(query, rounds, &mut buf);
    }
    println!("loop\t{rounds}\t{}", results.join(","));
    ExitCode::SUCCESS
}

/// `until SECONDS QUERY LINE`: looks QUERY up every millisecond until the
/// answer is LINE (`notfound` for none); prints when it first was (and
/// when the first look-up was), CLOCK_MONOTONIC ns.
fn cmd_until(seconds: f64, query: &Query, expected: &str) -> ExitCode {
    let budget = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let first = monotonic_ns();
    let mut tries = 0u64;
    loop {
        let answer = lookup(query);
        tries += 1;
        let line = match &answer {
            Answer::Found { line, .. } => line.clone(),
            other => other.to_string(),
        };
        if line == expected {
            println!("seen\t{}\t{tries}\t{first}", monotonic_ns());
            return ExitCode::SUCCESS;
        }
        if started.elapsed() > budget {
            println!("timeout\t{tries}\t{line}");
            return ExitCode::FAILURE;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// The benchmark's modes; `None` for a command that is not one of them.
fn bench_command(command: &str, rest: &[String]) -> Option<ExitCode> {
    let seconds = |i: usize| {
        rest.get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s >= 0.0)
    };
    let count = |i: usize| rest.get(i).and_then(|s| s.parse::<usize>().ok());
    let outcome = match command {
        "samples" => match (
            seconds(0),
            count(1),
            parse_all(rest.get(2..).unwrap_or(&[]), parse_query),
        ) {
            (Some(s), Some(min), Some(queries)) => cmd_samples(s, min, &queries),
            _ => usage(),
        },
        "id" => match (
            rest.first().and_then(|n| CString::new(n.as_str()).ok()),
            seconds(1),
            count(2),
        ) {
            (Some(name), Some(s), Some(min)) => cmd_id(&name, s, min),
            _ => usage(),
        },
        "loop" => match (
            count(0),
            parse_all(rest.get(1..).unwrap_or(&[]), parse_query),
        ) {
            (Some(n), Some(queries)) => cmd_loop(n, &queries),
            _ => usage(),
        },
        "until" => match (
            seconds(0),
            rest.get(1).and_then(|q| parse_query(q)),
            rest.get(2),
        ) {
            (Some(s), Some(query), Some(line)) => cmd_until(s, &query, line),
            _ => usage(),
        },
        _ => return None,
    };
    Some(outcome)
}
