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
//!   nss-probe samples SECONDS MIN QUERY...  each QUERY timed call by call: QUERY, calls, p50 ns, p90 ns, result
//!   nss-probe id NAME SECONDS MIN     the look-ups of `id NAME` (getpwnam, getgrouplist, getgrgid each), timed whole
//!   nss-probe loop N QUERY...         every QUERY once, then each N times in a function callgrind can count alone
//!   nss-probe until SECONDS QUERY LINE  QUERY every ms until its answer is LINE; when, in CLOCK_MONOTONIC ns
//!
//! QUERY is `passwd:NAME`, `uid:UID`, `group:NAME` or `gid:GID`.
//! EXPECT is `passwd:NAME=UID`, `group:NAME=GID`, or `passwd:NAME=-` (not found).
//! The exit code is 0 when every EXPECT held, 1 otherwise, 2 on bad usage.

use std::ffi::{CStr, CString};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

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
    /// `None`: must not be found.
    id: Option<u32>,
}

impl Expectation {
    fn parse(text: &str) -> Option<Expectation> {
        let (query, id) = text.rsplit_once('=')?;
        let query = parse_query(query)?;
        if !matches!(query.key, Key::Name(_)) {
            return None;
        }
        let id = match id {
            "-" => None,
            n => Some(n.parse().ok()?),
        };
        Some(Expectation { query, id })
    }

    /// None when the answer is right, otherwise a description of what was wrong.
    fn check(&self) -> Option<String> {
        let answer = lookup(&self.query);
        let Key::Name(wanted) = &self.query.key else {
            return Some("expectation without a name".into());
        };
        let right = match (&answer, self.id) {
            (Answer::Found { name, id, .. }, Some(want)) => {
                *id == want && name.as_bytes() == wanted.as_bytes()
            }
            (Answer::NotFound, None) => true,
            _ => false,
        };
        (!right).then(|| format!("{}: got {answer}", self.query.text))
    }
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
    let mut wrong = Vec::new();
    let mut crashed = 0;
    for worker in workers {
        match worker.join() {
            Ok(w) => wrong.extend(w),
            Err(_) => crashed += 1,
        }
    }
    println!(
        "lookups={} wrong={} crashed_threads={}",
        threads * per_thread,
        wrong.len(),
        crashed
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

fn usage() -> ExitCode {
    eprintln!("usage: nss-probe time QUERY... | threads T N EXPECT... | fork ROUNDS EXPECT... | atexit[-only] EXPECT... | fds N QUERY... | enum passwd|group SIZE | reenter OUTER INNER MS");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        return usage();
    };
    let number = |i: usize| rest.get(i).and_then(|s| s.parse::<usize>().ok());
    match command.as_str() {
        "time" => match parse_all(rest, parse_query) {
            Some(queries) => cmd_time(&queries),
            None => usage(),
        },
        "repeat" => match (
            rest.first().and_then(|s| s.parse::<f64>().ok()),
            parse_all(rest.get(1..).unwrap_or(&[]), parse_query),
        ) {
            (Some(seconds), Some(queries)) if seconds > 0.0 => cmd_repeat(seconds, &queries),
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
        "atexit" | "atexit-only" => match parse_all(rest, Expectation::parse) {
            Some(e) => cmd_atexit(e, command == "atexit"),
            None => usage(),
        },
        other => bench_command(other, rest).unwrap_or_else(usage),
    }
}

// The benchmark's measurement modes: each look-up is the bare libc call
// with a buffer allocated once, so nothing but the call itself is timed.

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process, so the
/// benchmark can compare a moment seen here with one it took itself.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
}

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
