//! The snapshot file the broker publishes beside its socket, read by the
//! module through real glibc: the same answers as the socket, byte for
//! byte; no round trip where the file answers; answers where the module
//! may not talk (PID 1, generators, the broker's own unit) and while the
//! broker is frozen or gone; every republication followed, in fresh
//! processes and in a running one; and any file the module cannot believe
//! ignored in favour of the socket. Each test prints its figure as one line
//! `snapshot-file | test | figure` (run with `--nocapture`).

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use userdb_broker_tests::fixture::{BASE_GROUP, BASE_PASSWD};
use userdb_broker_tests::nss::{connections_in, BROKER_ONLY, FILES_THEN_BROKER, NOBODY};
use userdb_broker_tests::populated::{populated, ALICE, BOB, DEVS_GID};
use userdb_broker_tests::userdb_service::{Directory, Flaw, UserdbService};
use userdb_broker_tests::{exclusive, Broker, DropinDir, Fixture, Nss, Outcome};
use userdb_proto::snapfile::{path_for, CONTROL_SIZE, FLAGS_OFFSET, SUPERSEDED};

const PROBE: &str = env!("CARGO_BIN_EXE_nss-probe");

/// `files` before `broker` on both lines, without merge.
const FILES_BROKER: &str = "passwd: files broker\ngroup: files broker\n";

/// The three nsswitch.conf lines the file must answer exactly as the socket.
const LINES: [(&str, &str); 3] = [
    ("broker", BROKER_ONLY),
    ("files broker", FILES_BROKER),
    ("files [SUCCESS=merge] broker", FILES_THEN_BROKER),
];

fn figure(test: &str, text: impl std::fmt::Display) {
    println!("snapshot-file | {test} | {text}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A socket in a directory of its own, for a broker beside the one on the
/// fixture's socket (so that the two brokers' files never meet).
fn second_socket(f: &Fixture, dir: &str) -> PathBuf {
    let dir = f.scratch().join(dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
    dir.join("io.userdb.Broker")
}

/// A broker on the fixture's socket, publishing the file, and one on a
/// socket of its own that publishes none: the two paths to compare.
struct TwoPaths {
    with_file: Broker,
    socket_only: Broker,
}

impl TwoPaths {
    fn start(f: &Fixture) -> TwoPaths {
        let with_file = Broker::start(f);
        let socket_only = Broker::launch(f)
            .socket(&second_socket(f, "socket-only"))
            .socket_only()
            .start();
        assert!(f.snapshot_path().is_file(), "the broker published no file");
        assert!(
            !path_for(socket_only.socket()).exists(),
            "the socket-only broker published a file"
        );
        TwoPaths {
            with_file,
            socket_only,
        }
    }

    fn file_side(&self, f: &Fixture, nsswitch: &str) -> Nss {
        Nss::new(f, nsswitch).socket(self.with_file.socket())
    }

    fn socket_side(&self, f: &Fixture, nsswitch: &str) -> Nss {
        Nss::new(f, nsswitch).socket(self.socket_only.socket())
    }
}

// ------------------------------------------------------------ the probe

/// One look-up as `nss-probe time` reports it.
#[derive(Debug)]
struct Timed {
    query: String,
    took: Duration,
    answer: String,
}

fn parse_time(out: &Outcome, queries: usize) -> Vec<Timed> {
    out.assert_code(0, "nss-probe time");
    let timed: Vec<Timed> = out
        .stdout
        .lines()
        .filter(|l| !l.starts_with("total\t"))
        .map(|line| {
            let fields: Vec<&str> = line.splitn(3, '\t').collect();
            let [query, micros, answer] = fields[..] else {
                panic!("unexpected probe line {line:?}\n{}", out.describe());
            };
            let micros: u64 = micros
                .parse()
                .unwrap_or_else(|_| panic!("bad µs in probe line {line:?}"));
            Timed {
                query: query.to_owned(),
                took: Duration::from_micros(micros),
                answer: answer.to_owned(),
            }
        })
        .collect();
    assert_eq!(timed.len(), queries, "{}", out.describe());
    timed
}

/// `nss-probe time QUERY...` under strace: the look-ups and the
/// connections to `socket`.
fn probe_connections(nss: &Nss, queries: &[String], socket: &Path) -> (Vec<Timed>, usize) {
    let mut argv = vec![PROBE, "time"];
    argv.extend(queries.iter().map(String::as_str));
    let (out, connections) = nss.connections(&argv, socket);
    (parse_time(&out, queries.len()), connections)
}

fn probe_time(nss: &Nss, queries: &[&str]) -> Vec<Timed> {
    let mut argv = vec![PROBE, "time"];
    argv.extend_from_slice(queries);
    parse_time(&nss.run(&argv), queries.len())
}

fn answers(timed: &[Timed]) -> Vec<(String, String)> {
    timed
        .iter()
        .map(|t| (t.query.clone(), t.answer.clone()))
        .collect()
}

fn found(line: &str) -> String {
    format!("found {line}")
}

/// The n-th of `durations` in ascending order, as a fraction of the count.
fn quantile(durations: &[Duration], q: f64) -> Duration {
    let mut sorted = durations.to_vec();
    sorted.sort();
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(at).copied().unwrap_or_default()
}

/// An `nss-probe` mode that runs until its stdin is closed, its output
/// read line by line as it comes.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(nss: &Nss, argv: &[&str]) -> Running {
        Self::spawn(nss.command(argv))
    }

    fn spawn(mut command: std::process::Command) -> Running {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            stdin,
            lines,
        }
    }

    fn next_line(&self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }

    /// Closes stdin and waits (at most 30 s) for the exit; the lines not
    /// read yet.
    fn stop(mut self) -> (ExitStatus, Vec<String>) {
        drop(self.stdin.take());
        let started = Instant::now();
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "nss-probe did not stop within 30 s of its stdin closing"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let rest = self.lines.iter().collect();
        (status, rest)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------ the file

/// The file's content as the module sees it (after the control block).
fn content_u32(bytes: &[u8], at: usize) -> u32 {
    let at = CONTROL_SIZE + at;
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn set_content_u32(bytes: &mut [u8], at: usize, value: u32) {
    let at = CONTROL_SIZE + at;
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// Section `i` of the layout: (offset, length) in the content.
fn section(bytes: &[u8], i: usize) -> (usize, usize) {
    (
        content_u32(bytes, 32 + i * 8) as usize,
        content_u32(bytes, 36 + i * 8) as usize,
    )
}

const SECTION_NAMES: [&str; 10] = [
    "strings",
    "users",
    "groups",
    "lists",
    "members",
    "user_by_name",
    "user_by_uid",
    "group_by_name",
    "group_by_gid",
    "member_by_name",
];

/// The generation and coverage of the file at `path`, if one is there.
fn published(path: &Path) -> Option<(u64, u32)> {
    let bytes = fs::read(path).ok()?;
    let head = bytes.get(CONTROL_SIZE..CONTROL_SIZE + 20)?;
    let generation = u64::from_le_bytes(head[..8].try_into().ok()?);
    let coverage = u32::from_le_bytes(head[16..20].try_into().ok()?);
    Some((generation, coverage))
}

/// Waits until the file at `path` satisfies `check`; how long that took.
fn until_published(path: &Path, what: &str, check: impl Fn(u64, u32) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if let Some((generation, coverage)) = published(path) {
            if check(generation, coverage) {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the file never showed {what}: {:?}",
            published(path)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The coverage bit for calls without the dynamic bypass.
const COMPLETE_PLAIN: u32 = 1;
/// The coverage bit for calls with the dynamic bypass.
const COMPLETE_BYPASS: u32 = 2;

// ------------------------------------------------------------ fixtures

/// Users in /etc/passwd beyond the base, and drop-in users.
const FILES_USERS: u32 = 1000;
const DROPIN_USERS: u32 = 9000;
/// Groups in /etc/group listing the files users, joined by drop-in users
/// through membership drop-ins.
const TEAMS: u32 = 20;
/// Drop-in groups listing drop-in users, joined by files users through
/// membership drop-ins.
const CLUBS: u32 = 50;
const DYNAMIC_USERS: u32 = 5;

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn files_user(i: u32) -> String {
    format!("fu{i:04}")
}

fn dropin_user(i: u32) -> String {
    format!("du{i:05}")
}

fn team(t: u32) -> String {
    format!("team{t:02}")
}

fn club(c: u32) -> String {
    format!("club{c:02}")
}

/// A local-only root of 10,013 users: the base files, 1000 more users in
/// /etc/passwd, 9000 drop-in users in two directories, each with its own
/// group; teams in /etc/group joined by drop-ins and clubs from drop-ins
/// joined by files users; a drop-in user and group whose name, and one
/// whose id, /etc already has; drop-in users shadowed in a later
/// directory; and five of PID 1's dynamic users.
fn ten_thousand_users() -> Fixture {
    let f = Fixture::new();
    let mut passwd: Vec<String> = BASE_PASSWD.iter().map(|l| (*l).to_owned()).collect();
    let mut group: Vec<String> = BASE_GROUP.iter().map(|l| (*l).to_owned()).collect();
    for i in 0..FILES_USERS {
        let (name, id) = (files_user(i), 20_000 + i);
        passwd.push(format!(
            "{name}:x:{id}:{id}:Files User {i}:/home/{name}:/bin/bash"
        ));
        group.push(format!("{name}:x:{id}:"));
    }
    for t in 0..TEAMS {
        let members: Vec<String> = (t..FILES_USERS)
            .step_by(TEAMS as usize)
            .map(files_user)
            .collect();
        group.push(format!(
            "{}:x:{}:{}",
            team(t),
            25_000 + t,
            members.join(",")
        ));
    }
    f.replace_etc_file("passwd", &as_strs(&passwd));
    f.replace_etc_file("group", &as_strs(&group));

    let user_record = |name: &str, uid: u32, real_name: &str| {
        json!({
            "userName": name, "uid": uid, "gid": uid, "realName": real_name,
            "homeDirectory": format!("/home/{name}"), "shell": "/bin/sh",
        })
    };
    for i in 0..DROPIN_USERS {
        let (name, id) = (dropin_user(i), 30_000 + i);
        let dir = if i % 2 == 0 {
            DropinDir::Etc
        } else {
            DropinDir::UsrLib
        };
        f.dropin_user(dir, &user_record(&name, id, &format!("Dropin User {i}")));
        f.dropin_group(dir, &json!({ "groupName": name, "gid": id }));
        f.dropin_membership(dir, &name, &team(i % TEAMS));
    }
    for c in 0..CLUBS {
        let members: Vec<String> = (c..DROPIN_USERS)
            .step_by(CLUBS as usize)
            .map(dropin_user)
            .collect();
        f.dropin_group(
            DropinDir::UsrLib,
            &json!({ "groupName": club(c), "gid": 26_000 + c, "members": members }),
        );
    }
    for i in (0..FILES_USERS).step_by(7) {
        f.dropin_membership(DropinDir::Etc, &files_user(i), &club(i % CLUBS));
    }
    // Names and ids /etc already has, and drop-ins a directory before shadows.
    f.dropin_user(
        DropinDir::Etc,
        &user_record(&files_user(1), 40_001, "Name Taken"),
    );
    f.dropin_user(
        DropinDir::Etc,
        &user_record("uidtaken", 20_002, "Uid Taken"),
    );
    f.dropin_group(
        DropinDir::Etc,
        &json!({ "groupName": team(3), "gid": 41_003, "members": [dropin_user(1)] }),
    );
    f.dropin_group(
        DropinDir::Etc,
        &json!({ "groupName": "gidtaken", "gid": 25_004 }),
    );
    f.dropin_user(
        DropinDir::UsrLib,
        &user_record(&dropin_user(4), 30_004, "Shadowed"),
    );
    f.dropin_user(
        DropinDir::Etc,
        &user_record(&dropin_user(7), 30_007, "Shadowing"),
    );
    for d in 0..DYNAMIC_USERS {
        f.dynamic_user(&format!("dyn{d}"), 61_200 + d);
    }
    f
}

/// The populated end-to-end fixture plus a Varlink directory service with
/// users and groups of its own, a member in a drop-in group and a drop-in
/// user in one of its groups: the file then holds only part of the
/// answers, and the module must ask the socket for the rest.
fn directory_service(f: &Fixture) -> UserdbService {
    let user = |name: &str, id: u32| {
        json!({
            "userName": name, "uid": id, "gid": id, "realName": format!("Remote {name}"),
            "homeDirectory": format!("/home/{name}"), "shell": "/bin/sh",
        })
    };
    let directory = Directory {
        users: vec![user("remote1", 7001), user("remote2", 7002)],
        groups: vec![
            json!({ "groupName": "remote1", "gid": 7001 }),
            json!({ "groupName": "remotes", "gid": 7100, "members": ["remote1"] }),
        ],
        memberships: vec![
            ("remote2".into(), "remotes".into()),
            ("alice".into(), "remotes".into()),
            ("remote1".into(), "devs".into()),
        ],
    };
    UserdbService::start(f, "io.example.Directory", directory, Flaw::None)
}

// ------------------------------------------------------------ differential

/// Every user (name, uid) and group (name, gid) the broker lists.
struct Keys {
    users: Vec<(String, String)>,
    groups: Vec<(String, String)>,
}

fn keys_of(nss: &Nss) -> Keys {
    let split = |lines: Vec<String>| {
        lines
            .iter()
            .map(|l| {
                let mut fields = l.split(':');
                let name = fields.next().unwrap_or_default().to_owned();
                let id = fields.nth(1).unwrap_or_default().to_owned();
                (name, id)
            })
            .collect::<Vec<_>>()
    };
    Keys {
        users: split(nss.run_ok(&["getent", "passwd"])),
        groups: split(nss.run_ok(&["getent", "group"])),
    }
}

/// Keys that no record has.
fn misses() -> Vec<String> {
    let mut keys: Vec<String> = (0..50).map(|i| format!("nosuch{i}")).collect();
    keys.extend((0..50).map(|i| (3_000_000 + i).to_string()));
    keys.push("a:b".into());
    keys
}

/// Every command the differential runs: by name, by id and for misses in
/// batches, initgroups and id of every user, the two enumerations.
fn differential_commands(keys: &Keys) -> Vec<Vec<String>> {
    const BATCH: usize = 4000;
    let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let ids = |v: &[(String, String)]| v.iter().map(|(_, i)| i.clone()).collect::<Vec<_>>();
    let unique = |v: Vec<String>| {
        let mut seen = BTreeSet::new();
        v.into_iter()
            .filter(|k| seen.insert(k.clone()))
            .collect::<Vec<_>>()
    };
    // Each database is also asked for the other's keys: more misses, and
    // the names both have.
    let all: Vec<String> = [
        names(&keys.users),
        ids(&keys.users),
        names(&keys.groups),
        ids(&keys.groups),
        misses(),
    ]
    .concat();
    let all = unique(all);
    let users = unique([names(&keys.users), misses()].concat());
    let mut commands = Vec::new();
    let mut batched = |head: &[&str], keys: &[String]| {
        for chunk in keys.chunks(BATCH) {
            let mut argv: Vec<String> = head.iter().map(|s| (*s).to_owned()).collect();
            argv.extend_from_slice(chunk);
            commands.push(argv);
        }
    };
    batched(&["getent", "passwd", "--"], &all);
    batched(&["getent", "group", "--"], &all);
    batched(&["getent", "initgroups", "--"], &users);
    batched(&["id", "--"], &users);
    commands.push(vec!["getent".into(), "passwd".into()]);
    commands.push(vec!["getent".into(), "group".into()]);
    commands
}

/// How two outputs of one command differ, if they do.
fn difference(what: &str, file: &Outcome, socket: &Outcome) -> Option<String> {
    if file.timed_out || socket.timed_out {
        return Some(format!("{what}: timed out"));
    }
    if file.code() != socket.code() {
        return Some(format!(
            "{what}: exit {:?} with the file, {:?} without",
            file.code(),
            socket.code()
        ));
    }
    for (stream, a, b) in [
        ("stdout", &file.stdout, &socket.stdout),
        ("stderr", &file.stderr, &socket.stderr),
    ] {
        if a == b {
            continue;
        }
        let (a_lines, b_lines): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
        let at = a_lines
            .iter()
            .zip(&b_lines)
            .position(|(x, y)| x != y)
            .unwrap_or(a_lines.len().min(b_lines.len()));
        let shown = |lines: &[&str]| {
            lines
                .get(at)
                .map_or("(end)".to_owned(), |l| l.chars().take(200).collect())
        };
        return Some(format!(
            "{what}: {stream} differs at line {at} ({} lines with the file, {} without)\n  with the file: {}\n  without:       {}",
            a_lines.len(),
            b_lines.len(),
            shown(&a_lines),
            shown(&b_lines)
        ));
    }
    None
}

/// What one differential run found.
struct Compared {
    commands: usize,
    keys: usize,
    file_connections: usize,
    took: Duration,
}

/// Runs every command under each nsswitch.conf line with the file and
/// without it, two at a time (the machine has two cores), and asserts the
/// outputs identical.
fn differential(f: &Fixture, paths: &TwoPaths, keys: &Keys) -> Compared {
    let started = Instant::now();
    let commands = differential_commands(keys);
    let jobs: Vec<(&str, &str, &Vec<String>)> = LINES
        .iter()
        .flat_map(|(label, conf)| commands.iter().map(move |c| (*label, *conf, c)))
        .collect();
    let next = AtomicUsize::new(0);
    let problems = Mutex::new(Vec::new());
    let connections = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let Some((label, conf, argv)) = jobs.get(next.fetch_add(1, Ordering::SeqCst))
                else {
                    return;
                };
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                let file_side = paths.file_side(f, conf).limit(Duration::from_secs(120));
                let (file, made) = file_side.connections(&argv, paths.with_file.socket());
                let socket = paths
                    .socket_side(f, conf)
                    .limit(Duration::from_secs(120))
                    .run(&argv);
                connections.fetch_add(made, Ordering::SeqCst);
                let what = format!(
                    "[{label}] {} ({} keys)",
                    argv[..2].join(" "),
                    argv.len() - 2
                );
                if let Some(problem) = difference(&what, &file, &socket) {
                    problems.lock().expect("not poisoned").push(problem);
                }
            });
        }
    });
    let problems = problems.into_inner().expect("not poisoned");
    assert!(
        problems.is_empty(),
        "{} of {} commands print differently with the file:\n{}",
        problems.len(),
        jobs.len(),
        problems
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    Compared {
        commands: jobs.len(),
        keys: commands
            .iter()
            .map(|c| c.len().saturating_sub(3))
            .sum::<usize>()
            * LINES.len(),
        file_connections: connections.into_inner(),
        took: started.elapsed(),
    }
}

#[test]
fn answers_from_the_file_are_byte_identical_to_the_socket_for_the_end_to_end_fixture() {
    let _heavy = exclusive();
    let f = populated();
    let paths = TwoPaths::start(&f);
    let keys = keys_of(&paths.socket_side(&f, BROKER_ONLY));
    let local = differential(&f, &paths, &keys);
    assert_eq!(
        local.file_connections, 0,
        "with a file complete for every call, the module still connected"
    );

    // A Varlink service beside: the file holds only the local part, hits
    // of local users still come from it, the rest from the socket.
    let _service = directory_service(&f);
    until_published(&f.snapshot_path(), "the service in its coverage", |_, c| {
        c & COMPLETE_PLAIN == 0
    });
    let keys = keys_of(&paths.socket_side(&f, BROKER_ONLY));
    assert!(
        keys.users.iter().any(|(n, _)| n == "remote1"),
        "the socket-only broker does not list the service's users yet"
    );
    let partial = differential(&f, &paths, &keys);
    figure(
        "differential, end-to-end fixture",
        format!(
            "local only: {} commands ({} keys) identical, {} connections with the file, {:.1} s; \
             with a Varlink service: {} commands ({} keys) identical, {:.1} s",
            local.commands,
            local.keys,
            local.file_connections,
            local.took.as_secs_f64(),
            partial.commands,
            partial.keys,
            partial.took.as_secs_f64()
        ),
    );
}

#[test]
fn answers_from_the_file_are_byte_identical_to_the_socket_for_ten_thousand_users() {
    let _heavy = exclusive();
    let built = Instant::now();
    let f = ten_thousand_users();
    let built = built.elapsed();
    let paths = TwoPaths::start(&f);
    let keys = keys_of(&paths.socket_side(&f, BROKER_ONLY));
    assert!(
        keys.users.len() >= 10_000,
        "only {} users listed",
        keys.users.len()
    );
    let compared = differential(&f, &paths, &keys);
    assert_eq!(
        compared.file_connections, 0,
        "with a file complete for every call, the module still connected"
    );
    figure(
        "differential, 10,000 users",
        format!(
            "{} users, {} groups: {} commands ({} keys) identical, 0 connections with the file, \
             {:.1} s (root built in {:.1} s)",
            keys.users.len(),
            keys.groups.len(),
            compared.commands,
            compared.keys,
            compared.took.as_secs_f64(),
            built.as_secs_f64()
        ),
    );
}

// ------------------------------------------------------------ no round trip

#[test]
fn ten_thousand_hits_and_ten_thousand_misses_open_no_socket() {
    let _heavy = exclusive();
    let f = ten_thousand_users();
    let broker = Broker::start(&f);
    let quarter = 2500;
    let mut queries: Vec<String> = Vec::new();
    let spread = |n: u32| (0..quarter).map(move |k| k * n / quarter);
    queries.extend(spread(DROPIN_USERS).map(|i| format!("passwd:{}", dropin_user(i))));
    queries.extend(spread(FILES_USERS).map(|i| format!("uid:{}", 20_000 + i)));
    queries.extend(spread(DROPIN_USERS).map(|i| format!("gid:{}", 30_000 + i)));
    queries.extend((0..quarter).map(|k| match k % 3 {
        0 => format!("group:{}", team(k % TEAMS)),
        1 => format!("group:{}", club(k % CLUBS)),
        _ => format!("group:{}", files_user(k % FILES_USERS)),
    }));
    let hits = queries.len();
    queries.extend((0..quarter).map(|k| format!("passwd:absent{k}")));
    queries.extend((0..quarter).map(|k| format!("uid:{}", 3_000_000 + k)));
    queries.extend((0..quarter).map(|k| format!("group:absent{k}")));
    queries.extend((0..quarter).map(|k| format!("gid:{}", 3_100_000 + k)));
    let mut rows = Vec::new();
    for (label, conf) in [LINES[0], LINES[2]] {
        let nss = Nss::new(&f, conf);
        let (timed, connections) = probe_connections(&nss, &queries, broker.socket());
        for (i, t) in timed.iter().enumerate() {
            let hit = i < hits;
            assert_eq!(
                t.answer.starts_with("found "),
                hit,
                "[{label}] {}: {}",
                t.query,
                t.answer
            );
            assert!(
                hit || t.answer == "notfound",
                "[{label}] {}: {}",
                t.query,
                t.answer
            );
        }
        assert_eq!(connections, 0, "[{label}] the look-ups opened sockets");
        let took: Vec<Duration> = timed.iter().map(|t| t.took).collect();
        let (hit_times, miss_times) = took.split_at(hits);
        rows.push(format!(
            "[{label}] {hits} hits p50 {:.2} µs, {} misses p50 {:.2} µs, 0 connections",
            quantile(hit_times, 0.5).as_secs_f64() * 1e6,
            miss_times.len(),
            quantile(miss_times, 0.5).as_secs_f64() * 1e6,
        ));
    }
    // Memberships too: one getgrouplist per user, none of them on the socket.
    let users: Vec<String> = (0..1000).map(|k| dropin_user(k * 9)).collect();
    let mut argv = vec!["getent", "initgroups", "--"];
    argv.extend(users.iter().map(String::as_str));
    let (out, connections) = Nss::new(&f, FILES_THEN_BROKER).connections(&argv, broker.socket());
    out.assert_code(0, "getent initgroups of 1000 users");
    assert_eq!(
        out.stdout.lines().count(),
        users.len(),
        "{}",
        out.describe()
    );
    assert_eq!(connections, 0, "initgroups opened sockets");
    rows.push(format!(
        "initgroups of {} users, 0 connections",
        users.len()
    ));
    figure(
        "no round trip, local-only root of 10,000 users",
        rows.join("; "),
    );
}

// ------------------------------------------------------------ dynamic users

const DYNAMIC_USER: &str = "io.systemd.DynamicUser";

fn dynamic_line(name: &str, uid: u32) -> String {
    format!("{name}:x:{uid}:{uid}:Dynamic User:/:/usr/sbin/nologin")
}

/// Polls `getent passwd NAME` until it prints `expected` (None: not
/// found); how long that took.
fn until_answer(nss: &Nss, name: &str, expected: Option<&str>, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let out = nss.run(&["getent", "passwd", name]);
        let seen = (out.code() == Some(0)).then(|| out.stdout.trim_end().to_owned());
        if seen.as_deref() == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "[{}] after {limit:?} getent passwd {name} still gives {seen:?}, want {expected:?}",
            nss.label()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn dynamic_users_come_from_pid1s_links_through_both_paths_and_never_from_its_socket() {
    let _timing = exclusive();
    let f = Fixture::new();
    f.dynamic_user("svcdyn", 61_300);
    // What PID 1's io.systemd.DynamicUser would answer: never to be asked
    // while its directory of links exists.
    let pid1 = UserdbService::start(
        &f,
        DYNAMIC_USER,
        Directory {
            users: vec![json!({
                "userName": "viavarlink", "uid": 61_400, "gid": 61_400, "realName": "Via Varlink",
                "homeDirectory": "/", "shell": "/usr/sbin/nologin",
            })],
            groups: vec![json!({ "groupName": "viavarlink", "gid": 61_400 })],
            memberships: Vec::new(),
        },
        Flaw::None,
    );
    let paths = TwoPaths::start(&f);
    let sides = [
        (
            "file",
            paths.file_side(&f, BROKER_ONLY),
            paths.with_file.socket(),
        ),
        (
            "socket",
            paths.socket_side(&f, BROKER_ONLY),
            paths.socket_only.socket(),
        ),
    ];
    let svcdyn = dynamic_line("svcdyn", 61_300);
    for (side, nss, socket) in &sides {
        let queries = [
            "passwd:svcdyn",
            "uid:61300",
            "group:svcdyn",
            "gid:61300",
            "passwd:viavarlink",
            "gid:61400",
        ]
        .map(String::from);
        let (timed, connections) = probe_connections(nss, &queries, socket);
        assert_eq!(
            answers(&timed)
                .into_iter()
                .map(|(_, a)| a)
                .collect::<Vec<_>>(),
            [
                found(&svcdyn),
                found(&svcdyn),
                found("svcdyn:x:61300:"),
                found("svcdyn:x:61300:"),
                "notfound".to_owned(),
                "notfound".to_owned()
            ],
            "[{side}]"
        );
        if *side == "file" {
            assert_eq!(connections, 0, "the file path connected");
        } else {
            assert!(
                connections > 0,
                "the socket path never connected: proves nothing"
            );
        }
    }

    // Added while both brokers run.
    f.dynamic_user("later", 61_301);
    let later = dynamic_line("later", 61_301);
    let mut added = Vec::new();
    for (_, nss, _) in &sides {
        added.push(until_answer(
            nss,
            "later",
            Some(&later),
            Duration::from_secs(1),
        ));
    }
    // Removed: not found as soon as the broker has seen it, although it was
    // answered just before (an answer cache of 2 s would still give it).
    for (_, nss, _) in &sides {
        nss.expect_line(&["getent", "passwd", "61301"], &later);
    }
    f.remove_dynamic_user("later", 61_301);
    let mut removed = Vec::new();
    for (_, nss, _) in &sides {
        removed.push(until_answer(nss, "later", None, Duration::from_secs(1)));
        nss.expect_not_found(&["getent", "passwd", "61301"]);
        nss.expect_not_found(&["getent", "group", "later"]);
    }
    for (side, nss, _) in &sides {
        let listed = nss.run_ok(&["getent", "passwd"]);
        assert!(listed.contains(&svcdyn), "[{side}] svcdyn not listed");
        assert!(
            !listed
                .iter()
                .any(|l| l.starts_with("later:") || l.starts_with("viavarlink:")),
            "[{side}] {listed:?}"
        );
        nss.run(&["getent", "initgroups", "svcdyn"]);
    }
    assert_eq!(
        pid1.accepted(),
        0,
        "a broker connected to io.systemd.DynamicUser while PID 1's links were there"
    );

    // Control: without the directory the Varlink service is the source again.
    fs::remove_dir_all(f.dynamic_uid_dir()).expect("remove the links");
    let socket_side = &sides[1].1;
    let back = until_answer(
        socket_side,
        "viavarlink",
        Some("viavarlink:x:61400:61400:Via Varlink:/:/usr/sbin/nologin"),
        Duration::from_secs(3),
    );
    assert!(pid1.accepted() > 0, "the control never reached the service");
    figure(
        "dynamic users",
        format!(
            "served by name and uid on both paths (0 connections on the file path); added seen in {:.0}/{:.0} ms, \
             removed gone in {:.0}/{:.0} ms (file/socket); io.systemd.DynamicUser connections while the links exist: 0, \
             after their directory went: {} ({:.0} ms)",
            ms(added[0]),
            ms(added[1]),
            ms(removed[0]),
            ms(removed[1]),
            pid1.accepted(),
            ms(back)
        ),
    );
}

// ------------------------------------------------------------ no socket at all

/// The contexts that read the file but never open a socket.
fn silent_contexts(f: &Fixture, conf: &str) -> [(&'static str, Nss); 3] {
    [
        ("PID 1", Nss::new(f, conf).as_pid1()),
        ("generator", Nss::new(f, conf).as_generator()),
        (
            "the broker's unit",
            Nss::new(f, conf).env("SYSTEMD_ACTIVATION_UNIT", "userdb-brokerd.service"),
        ),
    ]
}

const SILENT_HITS: [&str; 8] = [
    "passwd:alice",
    "uid:1002",
    "passwd:filesuser",
    "group:devs",
    "gid:2000",
    "group:wheel",
    "group:g007",
    "gid:1500",
];
const SILENT_MISSES: [&str; 4] = [
    "passwd:nosuchuser",
    "uid:4000",
    "group:nosuchgroup",
    "gid:4000",
];

/// The answers of `queries` in every silent context, asserting that none of
/// them connected; `misses` checks each miss's answer there.
fn silent_answers(
    f: &Fixture,
    socket: &Path,
    conf: &str,
    queries: &[String],
) -> Vec<(&'static str, Vec<String>)> {
    silent_contexts(f, conf)
        .into_iter()
        .map(|(context, nss)| {
            let (timed, connections) = probe_connections(&nss, queries, socket);
            assert_eq!(connections, 0, "[{}] {context} connected", nss.label());
            (context, timed.into_iter().map(|t| t.answer).collect())
        })
        .collect()
}

#[test]
fn pid1_generators_and_the_brokers_unit_answer_from_the_file_and_never_connect() {
    let _serial = exclusive();
    let f = populated();
    let broker = Broker::start(&f);
    let queries: Vec<String> = SILENT_HITS
        .iter()
        .chain(&SILENT_MISSES)
        .map(|q| (*q).to_owned())
        .collect();
    let hits = SILENT_HITS.len();
    let mut rows = Vec::new();

    // A complete file: every answer as an ordinary process gets it, misses
    // NOTFOUND.
    for (label, conf) in LINES {
        let ordinary = probe_time(
            &Nss::new(&f, conf),
            &queries.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let ordinary: Vec<String> = ordinary.into_iter().map(|t| t.answer).collect();
        assert!(
            ordinary[..hits].iter().all(|a| a.starts_with("found ")),
            "[{label}] {ordinary:?}"
        );
        assert!(
            ordinary[hits..].iter().all(|a| a == "notfound"),
            "[{label}] {ordinary:?}"
        );
        for (context, got) in silent_answers(&f, broker.socket(), conf, &queries) {
            assert_eq!(got, ordinary, "[{label}] {context}");
        }
        for argv in [
            &["getent", "initgroups", "alice", "bob", "many"][..],
            &["id", "alice"],
        ] {
            let expected = Nss::new(&f, conf).run(argv);
            for (context, nss) in silent_contexts(&f, conf) {
                let (out, connections) = nss.connections(argv, broker.socket());
                assert_eq!(connections, 0, "[{label}] {context}: {argv:?} connected");
                assert_eq!(
                    (out.code(), &out.stdout),
                    (expected.code(), &expected.stdout),
                    "[{label}] {context}: {argv:?}"
                );
            }
        }
    }
    rows.push(format!(
        "complete file: {} look-ups + initgroups + id in each of PID 1, a generator, the broker's unit \
         under 3 nsswitch.conf lines answered as an ordinary process, misses NOTFOUND, 0 connections",
        queries.len()
    ));

    // A directory service the file does not hold: hits of local users still
    // come from the file, a miss is UNAVAIL (the file cannot know).
    let service = directory_service(&f);
    until_published(&f.snapshot_path(), "the service in its coverage", |_, c| {
        c & (COMPLETE_PLAIN | COMPLETE_BYPASS) == 0
    });
    // Controls: strace sees an ordinary process's connections, and the
    // process it traces as PID 1 is PID 1.
    let (_, ordinary) = probe_connections(
        &Nss::new(&f, BROKER_ONLY),
        &["passwd:nosuchuser".into()],
        broker.socket(),
    );
    assert!(
        ordinary > 0,
        "an ordinary process's miss did not connect: the count proves nothing"
    );
    let (pid, _) = Nss::new(&f, BROKER_ONLY)
        .as_pid1()
        .connections(&["sh", "-c", "echo $$"], broker.socket());
    assert_eq!(pid.stdout, "1\n", "{}", pid.describe());
    let mut remote = queries.clone();
    remote.push("passwd:remote1".into());
    for (context, got) in silent_answers(&f, broker.socket(), BROKER_ONLY, &remote) {
        assert!(
            got[..hits].iter().all(|a| a.starts_with("found ")),
            "{context}: {got:?}"
        );
        assert!(
            got[hits..].iter().all(|a| a.starts_with("error ")),
            "{context}: misses must be UNAVAIL: {got:?}"
        );
    }
    rows.push("with a Varlink service: hits from the file, misses UNAVAIL everywhere".to_owned());
    drop(service);

    // Only PID 1's own service: the file is complete for the generator
    // (which leaves PID 1's users out) and for nobody else.
    let _pid1 = UserdbService::start(&f, DYNAMIC_USER, Directory::default(), Flaw::None);
    until_published(&f.snapshot_path(), "only PID 1's service", |_, c| {
        c & (COMPLETE_PLAIN | COMPLETE_BYPASS) == COMPLETE_BYPASS
    });
    for (context, got) in silent_answers(&f, broker.socket(), BROKER_ONLY, &queries) {
        let miss_is_final = context == "generator";
        for answer in &got[hits..] {
            assert_eq!(
                answer == "notfound",
                miss_is_final,
                "{context}: {answer} (NOTFOUND only where the file is complete)"
            );
            assert!(
                answer == "notfound" || answer.starts_with("error "),
                "{context}: {answer}"
            );
        }
    }
    rows.push(
        "with io.systemd.DynamicUser: misses NOTFOUND for the generator (bypass), UNAVAIL for PID 1 \
         and the broker's unit"
            .to_owned(),
    );
    figure("PID 1, generators, the broker's unit", rows.join("; "));
}

// ------------------------------------------------------------ broker away

#[test]
fn a_frozen_or_killed_broker_leaves_every_answer_to_the_file_under_a_millisecond() {
    let _timing = exclusive();
    let f = populated();
    let mut broker = Broker::start(&f);
    // The first look-up of a process also loads the module (glibc's
    // dlopen): bounded apart, far below the 1 s a frozen broker would cost.
    let queries = [
        "passwd:alice",
        "passwd:alice",
        "uid:1002",
        "passwd:carol",
        "passwd:many",
        "group:devs",
        "gid:2000",
        "group:wheel",
        "group:g199",
        "passwd:nosuchuser",
        "uid:4000",
        "group:nosuchgroup",
    ];
    let lines = [LINES[0], LINES[2]];
    let live: Vec<Vec<(String, String)>> = lines
        .iter()
        .map(|(_, conf)| answers(&probe_time(&Nss::new(&f, conf), &queries)))
        .collect();
    let mut rows = Vec::new();
    // Not a drop-in user, reported beside: 3000 members, packed again on
    // each of glibc's doublings of its buffer from 256 bytes.
    let big = format!(
        "found big:x:5000:{}",
        userdb_broker_tests::populated::big_members().join(",")
    );
    let mut check = |state: &str| {
        let mut worst = Duration::ZERO;
        let mut first = Duration::ZERO;
        for ((label, conf), expected) in lines.iter().zip(&live) {
            let timed = probe_time(&Nss::new(&f, conf), &queries);
            assert_eq!(&answers(&timed), expected, "[{label}] broker {state}");
            assert!(
                timed[0].took < Duration::from_millis(100),
                "[{label}] broker {state}: the first look-up took {:.3} ms",
                ms(timed[0].took)
            );
            for t in &timed[1..] {
                assert!(
                    t.took < Duration::from_millis(1),
                    "[{label}] broker {state}: {} took {:.3} ms",
                    t.query,
                    ms(t.took)
                );
            }
            first = first.max(timed[0].took);
            worst = worst.max(timed[1..].iter().map(|t| t.took).max().unwrap_or_default());
        }
        let timed = probe_time(&Nss::new(&f, BROKER_ONLY), &["group:wheel", "group:big"]);
        let big_took = timed[1].took;
        assert_eq!(timed[1].answer, big, "broker {state}");
        assert!(
            big_took < Duration::from_millis(10),
            "broker {state}: group big took {:.2} ms",
            ms(big_took)
        );
        rows.push(format!(
            "broker {state}: {} look-ups each < 1 ms, max {:.1} µs (the first of a process, loading \
             the module, {:.1} µs); the group of 3000 members {:.2} ms",
            (queries.len() - 1) * lines.len(),
            worst.as_secs_f64() * 1e6,
            first.as_secs_f64() * 1e6,
            ms(big_took)
        ));
    };
    broker.signal(libc::SIGSTOP);
    check("frozen (SIGSTOP)");
    broker.signal(libc::SIGCONT);
    broker.kill();
    check("killed");
    figure("broker frozen and killed", rows.join("; "));
}

// ------------------------------------------------------------ changes

/// Reads `follow` lines until one shows `answer`; how long after `since`.
fn until_followed(follow: &Running, answer: &str, since: Instant, limit: Duration) -> Duration {
    loop {
        let left = limit.saturating_sub(since.elapsed());
        let Some(line) = follow.next_line(left) else {
            panic!("the running process did not see `{answer}` within {limit:?}");
        };
        if line.split_once('\t').map(|(_, a)| a) == Some(answer) {
            return since.elapsed();
        }
    }
}

#[test]
fn dropin_changes_reach_answers_from_the_file_within_a_second() {
    let _timing = exclusive();
    let f = Fixture::new();
    let _broker = Broker::start(&f);
    // Pointed at a socket nobody listens on, beside the file: only the file
    // can answer.
    let nss = Nss::new(&f, BROKER_ONLY).socket(&f.scratch().join("nobody-listens"));
    assert_eq!(
        path_for(&f.scratch().join("nobody-listens")),
        f.snapshot_path()
    );
    let follow = Running::start(&nss, &[PROBE, "follow", "passwd:late"]);
    let started = Instant::now();
    until_followed(&follow, "notfound", started, Duration::from_secs(10));
    let limit = Duration::from_secs(1);
    let record = |gecos: &str| {
        json!({
            "userName": "late", "uid": 1200, "gid": 1200, "realName": gecos,
            "homeDirectory": "/home/late", "shell": "/bin/bash",
        })
    };
    let line = |gecos: &str| format!("late:x:1200:1200:{gecos}:/home/late:/bin/bash");
    let mut seen = Vec::new();
    for (step, gecos) in [
        ("added", Some("Added Late")),
        ("changed", Some("Changed Late")),
        ("removed", None),
    ] {
        let changed = Instant::now();
        match gecos {
            Some(gecos) => {
                f.dropin_user(DropinDir::Etc, &record(gecos));
            }
            None => {
                f.remove_dropin(DropinDir::Etc, "late.user");
                f.remove_dropin(DropinDir::Etc, "1200.user");
            }
        }
        let expected = gecos.map(line);
        let answer = expected.as_deref().map_or("notfound".to_owned(), found);
        let running = until_followed(&follow, &answer, changed, limit);
        // A process started now maps the new file at once.
        match &expected {
            Some(expected) => nss.expect_line(&["getent", "passwd", "late"], expected),
            None => nss.expect_not_found(&["getent", "passwd", "late"]),
        }
        let fresh = until_answer(&nss, "late", expected.as_deref(), limit);
        seen.push(format!(
            "{step}: running process {:.0} ms, fresh process {:.0} ms",
            ms(running),
            ms(fresh)
        ));
    }
    let (status, rest) = follow.stop();
    assert!(status.success(), "nss-probe follow: {status}");
    figure(
        "changes through the file",
        format!(
            "{} ({})",
            seen.join(", "),
            rest.last().map_or("", String::as_str)
        ),
    );
}

/// `key=value` pairs of a probe summary line.
fn summary(line: &str, key: &str) -> u64 {
    line.split(' ')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// The mappings of `file` in process `pid` now: (inode, bytes) each,
/// replaced generations (shown as "(deleted)") included.
fn mappings_of(pid: u32, file: &Path) -> Vec<(u64, u64)> {
    let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let name = file.display().to_string();
    let deleted = format!("{name} (deleted)");
    maps.lines()
        .filter_map(|line| {
            // start-end perms offset dev inode path
            let mut fields = line.splitn(6, ' ');
            let range = fields.next()?;
            let inode = fields.nth(3)?.parse().ok()?;
            let path = fields.next()?.trim_start();
            if path != name && path != deleted {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let bytes = u64::from_str_radix(end, 16).ok()? - u64::from_str_radix(start, 16).ok()?;
            Some((inode, bytes))
        })
        .collect()
}

/// What a process had of the file mapped, sampled from outside.
#[derive(Debug, Default)]
struct Mapped {
    samples: u64,
    /// Most generations (distinct files) mapped at once, and their bytes.
    most_generations: usize,
    most_bytes: u64,
    /// Mappings seen appear: generations the process took.
    generations_taken: usize,
}

/// Samples `pid`'s mappings of `file` until `stop` is set. The maps file is
/// read a page at a time, not at one instant: a mapping gone and one made
/// during a read may both show. A mapping in two reads in a row, though,
/// was there between them, so those are counted as mapped at once.
fn sample_mappings(pid: u32, file: &Path, stop: &std::sync::atomic::AtomicBool) -> Mapped {
    let mut mapped = Mapped::default();
    let mut before = mappings_of(pid, file);
    while !stop.load(Ordering::SeqCst) {
        let now = mappings_of(pid, file);
        let both: Vec<&(u64, u64)> = now.iter().filter(|m| before.contains(m)).collect();
        let generations: BTreeSet<u64> = both.iter().map(|(inode, _)| *inode).collect();
        mapped.most_generations = mapped.most_generations.max(generations.len());
        mapped.most_bytes = mapped.most_bytes.max(both.iter().map(|(_, b)| b).sum());
        // Inodes are reused: a mapping new since the last read is a
        // generation taken, whatever its number.
        mapped.generations_taken += now
            .iter()
            .filter(|(inode, _)| !before.iter().any(|(b, _)| b == inode))
            .count();
        mapped.samples += 1;
        before = now;
        std::thread::sleep(Duration::from_micros(500));
    }
    mapped
}

/// The process strace (`tracer`) started: unshare, which became the shell,
/// which became the traced command.
fn traced_pid(tracer: u32) -> u32 {
    let started = Instant::now();
    loop {
        let children = fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children"))
            .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().find_map(|p| p.parse().ok()) {
            return pid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "strace started nothing"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sixty_four_threads_get_right_answers_while_the_file_is_republished_100_times() {
    let _heavy = exclusive();
    let f = populated();
    let churn = |i: usize| {
        json!({
            "userName": "churn", "uid": 1600, "gid": 1600, "realName": format!("Churn {i}"),
            "homeDirectory": "/home/churn", "shell": "/bin/sh",
        })
    };
    f.dropin_user(DropinDir::Etc, &churn(0));
    let broker = Broker::start(&f);
    let expectations = [
        format!("passwd:alice={}", ALICE.passwd_line()),
        format!("uid:1002={}", BOB.passwd_line()),
        format!("group:devs=devs:x:{DEVS_GID}:alice,bob"),
        "gid:10=wheel:x:10:filesuser,alice".to_owned(),
        "group:g199=g199:x:6199:many".to_owned(),
        "passwd:churn=1600".to_owned(),
        "passwd:nosuchuser=-".to_owned(),
        "gid:4000=-".to_owned(),
    ];
    // Each thread pauses 1 ms after a look-up, as a server's workers do
    // between requests: 64 threads never pausing would starve the broker
    // that republishes (a minute for the 100).
    let mut argv = vec![PROBE, "spin", "64", "1000"];
    argv.extend(expectations.iter().map(String::as_str));
    // Under strace: every look-up the file could not answer is a connection.
    let nss = Nss::new(&f, BROKER_ONLY);
    let trace = nss.trace_file();
    let probe = Running::spawn(nss.traced_command(&argv, &trace));
    std::thread::sleep(Duration::from_millis(200));
    let path = f.snapshot_path();
    let (first, _) = published(&path).expect("a published file");
    let mut generation = first;
    let mut largest = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    let mapped = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| sample_mappings(traced_pid(probe.child.id()), &path, &stop));
        for i in 1..=100 {
            f.dropin_user(DropinDir::Etc, &churn(i));
            until_published(&path, "the next generation", |g, _| g > generation);
            generation = published(&path).map_or(generation, |(g, _)| g);
            largest = largest.max(fs::metadata(&path).map(|m| m.len()).unwrap_or(0));
            // Each generation stays long enough for the process to take it.
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::SeqCst);
        sampler.join().expect("the sampler")
    });
    let republishing = started.elapsed();
    let (status, lines) = probe.stop();
    let fallbacks = connections_in(&trace, broker.socket()).expect("the strace log");
    let line = lines
        .iter()
        .find(|l| l.starts_with("lookups="))
        .unwrap_or_else(|| panic!("no summary from nss-probe spin: {lines:?}"));
    assert!(
        status.success(),
        "nss-probe spin: {status}\n{}",
        lines.join("\n")
    );
    assert_eq!(summary(line, "wrong"), 0, "{}", lines.join("\n"));
    assert_eq!(summary(line, "crashed_threads"), 0, "{line}");
    assert!(
        generation - first >= 100,
        "only {} republications",
        generation - first
    );
    let page = 4096;
    let bound = 2 * largest.div_ceil(page) * page;
    assert!(mapped.most_generations <= 2, "{mapped:?}");
    assert!(mapped.most_bytes <= bound, "{mapped:?}: bound {bound}");
    assert!(
        mapped.generations_taken >= 50,
        "the process followed too few republications to prove anything: {mapped:?}"
    );
    figure(
        "64 threads while the file is republished",
        format!(
            "{} republications in {:.1} s; {line}; {fallbacks} look-ups on the socket; at most {} generations ({} bytes) mapped at once, \
             {} generations taken by the process ({} samples; file at most {largest} bytes, bound {bound})",
            generation - first,
            republishing.as_secs_f64(),
            mapped.most_generations,
            mapped.most_bytes,
            mapped.generations_taken,
            mapped.samples
        ),
    );
}

// ------------------------------------------------------------ hostile files

/// What is put at the file's path.
enum Planted {
    File {
        bytes: Vec<u8>,
        mode: u32,
        owner: u32,
    },
    Fifo,
    Symlink(PathBuf),
    Directory,
    Sparse(u64),
}

impl Planted {
    fn root_file(bytes: Vec<u8>) -> Planted {
        Planted::File {
            bytes,
            mode: 0o644,
            owner: 0,
        }
    }
}

fn remove_any(path: &Path) {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    };
    removed.unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
}

/// Puts `what` at `path` in one rename, as a broker would publish.
fn plant(path: &Path, what: &Planted) {
    let staging = path.with_file_name(".planted");
    remove_any(&staging);
    match what {
        Planted::File { bytes, mode, owner } => {
            fs::write(&staging, bytes).expect("write the planted file");
            fs::set_permissions(&staging, fs::Permissions::from_mode(*mode)).expect("chmod");
            std::os::unix::fs::chown(&staging, Some(*owner), Some(*owner)).expect("chown");
        }
        Planted::Fifo => {
            let c = CString::new(staging.as_os_str().as_bytes()).expect("no NUL in the path");
            // SAFETY: a valid NUL-terminated path for the call.
            let made = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
            assert_eq!(made, 0, "mkfifo: {}", std::io::Error::last_os_error());
        }
        Planted::Symlink(target) => symlink(target, &staging).expect("symlink"),
        Planted::Directory => fs::create_dir(&staging).expect("mkdir"),
        Planted::Sparse(len) => fs::File::create(&staging)
            .and_then(|file| file.set_len(*len))
            .expect("a sparse file"),
    }
    remove_any(path);
    fs::rename(&staging, path).expect("rename into place");
}

/// A deterministic byte stream (a linear congruential generator).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 32) as u32
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Files that fail as a whole (the reader refuses them before any look-up):
/// made from a believable forgery, so that any use of one shows.
fn refused_files(forged: &[u8]) -> Vec<(String, Planted)> {
    let mut noise = Noise(0x5eed);
    let mut out: Vec<(String, Planted)> = (0..64)
        .map(|k| {
            let len = forged.len() * k / 64;
            (
                format!("truncated at {k}/64 ({len} bytes)"),
                Planted::root_file(forged[..len].to_vec()),
            )
        })
        .collect();
    out.push((
        "random bytes".into(),
        Planted::root_file(noise.bytes(forged.len())),
    ));
    let mut random_content = forged[..CONTROL_SIZE].to_vec();
    random_content.extend(noise.bytes(forged.len() - CONTROL_SIZE));
    out.push((
        "a valid control block over random bytes".into(),
        Planted::root_file(random_content),
    ));
    let edited = |what: &str, edit: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = forged.to_vec();
        edit(&mut bytes);
        (what.to_owned(), Planted::root_file(bytes))
    };
    let content_len = (forged.len() - CONTROL_SIZE) as u32;
    out.push(edited("wrong magic", &|b| b[0] = b'X'));
    out.push(edited("unknown version", &|b| b[8] = 2));
    out.push(edited("marked superseded", &|b| {
        b[FLAGS_OFFSET..FLAGS_OFFSET + 4].copy_from_slice(&SUPERSEDED.to_le_bytes())
    }));
    out.push(edited("content length past the end", &|b| {
        set_content_u32(b, 8, content_len + 4)
    }));
    for (at, what) in [
        (20, "user count"),
        (24, "group count"),
        (28, "member count"),
    ] {
        out.push(edited(&format!("{what} + 1"), &|b| {
            let n = content_u32(b, at);
            set_content_u32(b, at, n + 1)
        }));
        out.push(edited(&format!("{what} 2^32 - 1"), &|b| {
            set_content_u32(b, at, u32::MAX)
        }));
    }
    for (i, name) in SECTION_NAMES.iter().enumerate() {
        out.push(edited(
            &format!("{name} section starts past the end"),
            &|b| set_content_u32(b, 32 + i * 8, content_len + 4),
        ));
        out.push(edited(&format!("{name} section 2 GiB long"), &|b| {
            set_content_u32(b, 36 + i * 8, 0x7fff_fffc)
        }));
        out.push(edited(&format!("{name} section inside the header"), &|b| {
            set_content_u32(b, 32 + i * 8, 4)
        }));
        out.push(edited(&format!("{name} section unaligned"), &|b| {
            let (offset, _) = section(b, i);
            set_content_u32(b, 32 + i * 8, offset as u32 + 2)
        }));
    }
    out
}

/// Files whose header is valid but whose index or records point outside:
/// refused look-up by look-up. Made from the true file, since the intact
/// parts still answer.
fn corrupt_inside(real: &[u8]) -> Vec<(String, Planted)> {
    let mut out = Vec::new();
    let edited = |what: String, edit: &mut dyn FnMut(&mut Vec<u8>)| {
        let mut bytes = real.to_vec();
        edit(&mut bytes);
        (what, Planted::root_file(bytes))
    };
    let fill_slots = |b: &mut Vec<u8>, i: usize, value: &mut dyn FnMut() -> u32| {
        let (offset, len) = section(b, i);
        for slot in (offset + 4..offset + len).step_by(4) {
            let v = value();
            set_content_u32(b, slot, v);
        }
    };
    let mut noise = Noise(0x1dea);
    out.push(edited("every index of random slots".into(), &mut |b| {
        for i in 5..10 {
            fill_slots(b, i, &mut || noise.next() | 1 << 31);
        }
    }));
    for (i, name) in SECTION_NAMES.iter().enumerate().skip(5) {
        out.push(edited(
            format!("{name} slots all past the records"),
            &mut |b| fill_slots(b, i, &mut || u32::MAX),
        ));
    }
    out.push(edited(
        "every user's name outside the strings".into(),
        &mut |b| {
            let (offset, len) = section(b, 1);
            for user in (offset..offset + len).step_by(32) {
                set_content_u32(b, user, 0xffff_fff0);
            }
        },
    ));
    out.push(edited(
        "every group's member list outside the lists".into(),
        &mut |b| {
            let (offset, len) = section(b, 2);
            for group in (offset..offset + len).step_by(16) {
                set_content_u32(b, group + 12, 0xffff_fff0);
            }
        },
    ));
    out.push(edited(
        "every member's group list outside the lists".into(),
        &mut |b| {
            let (offset, len) = section(b, 4);
            for member in (offset..offset + len).step_by(8) {
                set_content_u32(b, member + 4, 0xffff_fff0);
            }
        },
    ));
    out
}

/// Files that are well-formed but not to be believed: not root's, writable
/// by others, not a regular file.
fn foreign_files(forged: &[u8], believable: &Path) -> Vec<(String, Planted)> {
    let file = |mode: u32, owner: u32| Planted::File {
        bytes: forged.to_vec(),
        mode,
        owner,
    };
    vec![
        ("owned by nobody".into(), file(0o644, NOBODY)),
        ("mode 0666".into(), file(0o666, 0)),
        ("mode 0664 (group-writable)".into(), file(0o664, 0)),
        ("a FIFO".into(), Planted::Fifo),
        (
            "a symlink to a believable file".into(),
            Planted::Symlink(believable.to_path_buf()),
        ),
        ("a directory".into(), Planted::Directory),
        ("a sparse 3 GiB file".into(), Planted::Sparse(3 << 30)),
    ]
}

/// Look-ups by every key and index, memberships and both listings, in one
/// process tree; the probe's timings left out.
const HOSTILE_SCRIPT: &str = r#"probe=$0
"$probe" time passwd:alice uid:1001 passwd:bob passwd:ghost uid:1666 group:wheel gid:10 group:nosuchgroup
echo "== probe $?"
getent passwd; echo "== passwd $?"
getent group; echo "== group $?"
getent initgroups alice bob ghost; echo "== initgroups $?"
"#;

fn hostile_run(nss: &Nss, socket: &Path) -> (String, usize, Outcome) {
    let (out, connections) = nss.connections(&["sh", "-c", HOSTILE_SCRIPT, PROBE], socket);
    let printed: Vec<String> = out
        .stdout
        .lines()
        .filter(|l| !l.starts_with("total\t"))
        .map(|l| match l.splitn(3, '\t').collect::<Vec<_>>()[..] {
            [query, _, answer] => format!("{query}\t{answer}"),
            _ => l.to_owned(),
        })
        .collect();
    (printed.join("\n"), connections, out)
}

#[test]
fn files_the_module_cannot_believe_are_ignored_and_the_socket_answers() {
    let _serial = exclusive();
    let f = Fixture::new();
    for user in [&ALICE, &BOB] {
        f.dropin_user(DropinDir::Etc, &user.record());
        f.dropin_group(DropinDir::Etc, &user.group_record());
    }
    f.dropin_membership(DropinDir::Etc, "alice", "wheel");
    // What a forger would publish: another alice, a ghost, no bob.
    let forgery = Fixture::new();
    let mut forged_alice = ALICE.record();
    forged_alice["realName"] = json!("Forged Alice");
    forgery.dropin_user(DropinDir::Etc, &forged_alice);
    forgery.dropin_user(
        DropinDir::Etc,
        &json!({ "userName": "ghost", "uid": 1666, "gid": 1666, "homeDirectory": "/", "shell": "/bin/sh" }),
    );
    forgery.dropin_membership(DropinDir::Etc, "ghost", "wheel");
    let read_published = |fixture: &Fixture| {
        let publisher = Broker::start_at(fixture, &second_socket(fixture, "publisher"));
        let bytes = fs::read(path_for(publisher.socket())).expect("a published file");
        assert_eq!(&bytes[..8], b"UDBSNAP\0");
        bytes
    };
    let real = read_published(&f);
    let forged = read_published(&forgery);
    let believable = f.scratch().join("believable");
    plant(&believable, &Planted::root_file(forged.clone()));

    let socket = Broker::launch(&f).socket_only().start();
    let nss = Nss::new(&f, BROKER_ONLY).limit(Duration::from_secs(20));
    let path = f.snapshot_path();
    let (expected, connected, _) = hostile_run(&nss, socket.socket());
    assert!(
        expected.contains(&ALICE.passwd_line()) && connected > 0,
        "{expected}"
    );
    // Control: the forgery, published as a broker would, is believed.
    plant(&path, &Planted::root_file(forged.clone()));
    let (believed, connections, _) = hostile_run(&nss, socket.socket());
    assert_ne!(believed, expected, "a believed forgery must show");
    assert!(believed.contains("Forged Alice"), "{believed}");
    assert_eq!(connections, 0, "a believed file must answer alone");

    let variants: Vec<(String, Planted)> = refused_files(&forged)
        .into_iter()
        .chain(corrupt_inside(&real))
        .chain(foreign_files(&forged, &believable))
        .collect();
    let mut slowest = Duration::ZERO;
    let mut failures = Vec::new();
    for (what, planted) in &variants {
        plant(&path, planted);
        let (printed, connections, out) = hostile_run(&nss, socket.socket());
        assert!(!out.timed_out, "{what}: hung\n{}", out.describe());
        slowest = slowest.max(out.elapsed);
        if printed != expected {
            failures.push(format!("{what}: printed\n{printed}\n"));
        } else if connections == 0 {
            failures.push(format!("{what}: answered without the socket"));
        }
    }
    remove_any(&path);
    assert!(
        failures.is_empty(),
        "{} of {} hostile files were not ignored (expected\n{expected}\n):\n{}",
        failures.len(),
        variants.len(),
        failures.join("\n")
    );
    assert!(slowest < Duration::from_secs(5), "slowest run {slowest:?}");
    figure(
        "hostile files",
        format!(
            "{} files ({} refused whole, {} corrupt inside, {} foreign) ignored, every answer from the socket, \
             no crash, slowest run {:.0} ms",
            variants.len(),
            refused_files(&forged).len(),
            corrupt_inside(&real).len(),
            foreign_files(&forged, &believable).len(),
            ms(slowest)
        ),
    );
}
