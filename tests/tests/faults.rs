//! Issue 3: whatever the broker does, a lookup through libnss_broker.so.2
//! never waits past its bound, and the contexts that must not wait at all
//! never open a socket. Every timing row prints its measured figure as
//! `fault-matrix | row | measured | bound` (run with `--nocapture`).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use userdb_broker_tests::fake::{open_idle_connections, Behaviour};
use userdb_broker_tests::nss::{BROKER_ONLY, FILES_THEN_BROKER};
use userdb_broker_tests::probe::{self, parse_micros, Timed};
use userdb_broker_tests::{
    artifacts, exclusive, process, varlink, Backlogged, Broker, DropinDir, FakeBroker, Fixture,
    Nss, Outcome,
};

const PROBE: &str = env!("CARGO_BIN_EXE_nss-probe");

/// The deadline the hung-broker rows configure.
const DEADLINE_MS: u64 = 300;

/// Each timing row runs this many fresh processes; every run must hold the bound.
const RUNS: usize = 3;

const ALICE_LINE: &str = "alice:x:1001:1001:Alice Example:/home/alice:/bin/bash";

/// A fixture with one drop-in user and group, for rows that need a live broker.
fn fixture_with_alice() -> Fixture {
    let f = Fixture::new();
    f.dropin_user(
        DropinDir::Etc,
        &json!({
            "userName": "alice", "uid": 1001, "gid": 1001, "realName": "Alice Example",
            "homeDirectory": "/home/alice", "shell": "/bin/bash",
        }),
    );
    f.dropin_group(
        DropinDir::Etc,
        &json!({ "groupName": "alice", "gid": 1001 }),
    );
    f.dropin_membership(DropinDir::Etc, "alice", "wheel");
    f
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(row: &str, measured: &[Duration], bound_ms: f64) {
    let all: Vec<String> = measured.iter().map(|d| format!("{:.2}", ms(*d))).collect();
    let worst = measured.iter().max().copied().unwrap_or_default();
    println!(
        "fault-matrix | {row} | max {:.2} ms (runs: {} ms) | bound {bound_ms} ms",
        ms(worst),
        all.join(", ")
    );
}

/// Runs `measure` RUNS times, reports, and asserts every run within `bound_ms`.
fn assert_row(row: &str, bound_ms: f64, mut measure: impl FnMut() -> Duration) {
    let measured: Vec<Duration> = (0..RUNS).map(|_| measure()).collect();
    report(row, &measured, bound_ms);
    for d in &measured {
        assert!(
            ms(*d) <= bound_ms,
            "{row}: {:.2} ms exceeds {bound_ms} ms",
            ms(*d)
        );
    }
}

/// A failed lookup, as the probe prints it: glibc reports UNAVAIL as an
/// error code or (with another service on the line) as not found.
fn assert_failed(timed: &Timed) {
    assert!(
        timed.answer == "notfound" || timed.answer.starts_with("error "),
        "{}: expected a failed lookup, got {:?}",
        timed.query,
        timed.answer
    );
}

/// Lookups against a fake broker on the fixture's socket, deadline DEADLINE_MS.
fn against_fake(f: &Fixture) -> Nss {
    Nss::new(f, BROKER_ONLY).env("USERDB_BROKER_TIMEOUT_MS", DEADLINE_MS.to_string())
}

/// Asserts the fake saw at least one connection: the row really exercised it.
fn assert_connected(fake: &FakeBroker) {
    assert!(
        fake.accepted_after(Duration::from_millis(50)) > 0,
        "the module never connected to the fake broker"
    );
}

#[test]
fn socket_absent_fails_within_5_ms() {
    let _serial = exclusive();
    let f = Fixture::new();
    let nss = Nss::new(&f, BROKER_ONLY).socket(&f.scratch().join("absent"));
    assert_row("socket absent (first lookup in the process)", 5.0, || {
        let run = probe::time(&nss, &["passwd:nosuchuser"]);
        assert_eq!(
            run.first().answer,
            "error 2",
            "UNAVAIL with ENOENT expected"
        );
        run.first().took
    });
    let files_first = Nss::new(&f, FILES_THEN_BROKER).socket(&f.scratch().join("absent"));
    let out = files_first.run(&["getent", "passwd", "root"]);
    out.assert_code(0, "files still answer without a broker");
    assert_eq!(out.stdout, "root:x:0:0:root:/root:/bin/bash\n");
}

#[test]
fn broker_that_accepts_and_never_answers_costs_one_deadline() {
    let _serial = exclusive();
    let f = Fixture::new();
    let fake = FakeBroker::start(&f.socket_path(), Behaviour::NeverAnswer);
    let nss = against_fake(&f);
    assert_row("accepts, never answers, deadline 300 ms", 350.0, || {
        let run = probe::time(&nss, &["passwd:nosuchuser"]);
        assert_failed(run.first());
        run.first().took
    });
    assert_connected(&fake);

    let merged =
        Nss::new(&f, FILES_THEN_BROKER).env("USERDB_BROKER_TIMEOUT_MS", DEADLINE_MS.to_string());
    assert_row(
        "  same, whole `getent group daemon` process (files+merge)",
        500.0,
        || {
            let out = merged.run(&["getent", "group", "daemon"]);
            out.assert_code(0, "getent group daemon");
            assert_eq!(out.stdout, "daemon:x:1:\n");
            out.elapsed
        },
    );
    assert_row(
        "  same, whole `id daemon` process (files+merge)",
        500.0,
        || {
            let out = merged.run(&["id", "daemon"]);
            out.assert_code(0, "id daemon");
            assert_eq!(out.stdout, "uid=1(daemon) gid=1(daemon) groups=1(daemon)\n");
            out.elapsed
        },
    );
}

#[test]
fn socket_listening_but_never_accepting_costs_one_deadline() {
    let _serial = exclusive();
    let f = Fixture::new();
    let backlog = Backlogged::start(&f.socket_path());
    assert!(backlog.queued() > 0);
    let nss = against_fake(&f);
    assert_row(
        "listening, never accepting (full backlog), deadline 300 ms",
        350.0,
        || {
            let run = probe::time(&nss, &["passwd:nosuchuser"]);
            assert_failed(run.first());
            run.first().took
        },
    );
    // A full backlog leaves no trace on the listening side, so prove with
    // strace (outside the timed runs) that the module did try to connect.
    let out = nss.run(&[
        "strace",
        "-f",
        "-qq",
        "-e",
        "trace=connect",
        PROBE,
        "time",
        "passwd:nosuchuser",
    ]);
    out.assert_code(0, "probe under strace");
    let socket = f.socket_path().display().to_string();
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("connect(") && l.contains(&socket)),
        "the module never tried to connect to {socket}\n{}",
        out.describe()
    );
}

#[test]
fn three_lookups_against_a_hung_broker_cost_one_deadline() {
    let _serial = exclusive();
    let f = Fixture::new();
    let fake = FakeBroker::start(&f.socket_path(), Behaviour::NeverAnswer);
    let nss = against_fake(&f);
    assert_row(
        "three lookups in one process, hung broker, deadline 300 ms",
        400.0,
        || {
            let run = probe::time(
                &nss,
                &["passwd:nosuchuser", "group:nosuchgroup", "uid:4000"],
            );
            run.lookups.iter().for_each(assert_failed);
            run.total
        },
    );
    assert_connected(&fake);
}

#[test]
fn trickled_or_unterminated_reply_costs_one_deadline() {
    let _serial = exclusive();
    for (row, behaviour) in [
        (
            "reply trickled one byte per 20 ms, deadline 300 ms",
            Behaviour::Trickle {
                interval: Duration::from_millis(20),
            },
        ),
        (
            "reply never NUL-terminated, deadline 300 ms",
            Behaviour::Unterminated,
        ),
    ] {
        let f = Fixture::new();
        let fake = FakeBroker::start(&f.socket_path(), behaviour);
        let nss = against_fake(&f);
        assert_row(row, 350.0, || {
            let run = probe::time(&nss, &["passwd:fake"]);
            assert_failed(run.first());
            run.first().took
        });
        assert_connected(&fake);
    }
}

#[test]
fn garbage_or_oversized_reply_fails_cleanly_within_the_deadline() {
    let _serial = exclusive();
    for (row, behaviour) in [
        ("garbage reply", Behaviour::Garbage),
        (
            "oversized reply (96 MiB, no terminator; cap 64 MiB a frame)",
            Behaviour::Oversized { bytes: 96 << 20 },
        ),
        (
            "connection closed mid-reply (broker killed)",
            Behaviour::CloseMidReply,
        ),
    ] {
        let f = Fixture::new();
        let fake = FakeBroker::start(&f.socket_path(), behaviour);
        let nss = against_fake(&f);
        assert_row(row, DEADLINE_MS as f64, || {
            let run = probe::time(&nss, &["passwd:fake"]);
            assert_failed(run.first());
            run.first().took
        });
        assert_connected(&fake);
    }
}

#[test]
fn broker_killed_then_restarted_answers_again() {
    let _serial = exclusive();
    let f = fixture_with_alice();
    let nss = Nss::new(&f, BROKER_ONLY);
    let mut broker = Broker::start(&f);
    let lookup = || nss.run(&["getent", "passwd", "alice"]);
    let before = lookup();
    before.assert_code(0, "live broker");
    assert_eq!(before.stdout.trim_end(), ALICE_LINE);

    broker.kill();
    // Without the snapshot file the module must ask the socket.
    f.remove_snapshot();
    let down = lookup();
    down.assert_code(2, "broker killed");
    assert_eq!(down.stdout, "");
    report(
        "broker killed: whole getent process",
        &[down.elapsed],
        100.0,
    );
    assert!(down.ms() < 100.0, "{}", down.describe());

    let _restarted = Broker::start(&f);
    let after = lookup();
    after.assert_code(0, "restarted broker");
    assert_eq!(after.stdout.trim_end(), ALICE_LINE);
}

#[test]
fn real_broker_killed_during_a_long_enumeration_leaves_only_whole_lines() {
    let _serial = exclusive();
    let f = Fixture::new();
    let users: Vec<String> = (0..100_000u32)
        .map(|i| {
            format!(
                "u{i:06}:x:{}:100:Mass User {i}:/home/u{i:06}:/bin/bash",
                100_000 + i
            )
        })
        .collect();
    let mut lines: Vec<&str> = userdb_broker_tests::fixture::BASE_PASSWD.to_vec();
    lines.extend(users.iter().map(String::as_str));
    f.replace_etc_file("passwd", &lines);
    let mut broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    let enumeration = {
        let nss = nss.clone();
        std::thread::spawn(move || nss.run(&["getent", "passwd"]))
    };
    std::thread::sleep(Duration::from_millis(150));
    let killed_at = Instant::now();
    broker.kill();
    let out = enumeration
        .join()
        .unwrap_or_else(|_| panic!("enumeration thread panicked"));
    let after_kill = out.elapsed.saturating_sub(Duration::from_millis(150));
    println!(
        "broker killed after 150 ms of a 100000-user enumeration: getent printed {} lines, ended {:?} after the kill",
        out.stdout.lines().count(),
        after_kill
    );
    assert!(
        !out.timed_out,
        "getent hung after the broker died\n{}",
        out.describe()
    );
    assert!(
        killed_at.elapsed() < Duration::from_secs(2),
        "getent outlived the kill by seconds"
    );
    let known: std::collections::HashSet<&str> = lines.iter().copied().collect();
    for line in out.stdout.lines() {
        assert!(
            known.contains(line),
            "not a whole, known passwd line: {line:?}"
        );
    }

    let _restarted = Broker::start(&f);
    let again = nss.run(&["getent", "passwd", "u099999"]);
    again.assert_code(0, "restarted broker");
    assert_eq!(again.stdout.trim_end(), users[users.len() - 1]);
}

/// Runs `getent passwd nosuchuser` with `nss` against a counting fake and
/// returns how many connections it made.
fn connections_made(f: &Fixture, nss: &Nss) -> usize {
    let fake = FakeBroker::start(&f.socket_path(), Behaviour::NotFound);
    let out = nss.run(&["getent", "passwd", "nosuchuser"]);
    out.assert_code(2, "lookup of an unknown user");
    fake.accepted_after(Duration::from_millis(100))
}

#[test]
fn bypass_variables_broker_unit_and_pid_1_make_no_connection() {
    let _serial = exclusive();
    let f = Fixture::new();
    let plain = Nss::new(&f, BROKER_ONLY);
    assert!(
        connections_made(&f, &plain) > 0,
        "control: without a bypass the module must connect"
    );
    for (key, value) in [
        ("USERDB_BROKER_BYPASS", "1"),
        ("SYSTEMD_BYPASS_USERDB", "io.userdb.Broker"),
        (
            "SYSTEMD_BYPASS_USERDB",
            "io.systemd.DynamicUser:io.userdb.Broker",
        ),
        ("SYSTEMD_BYPASS_USERDB", "1"),
        // PID 1 resolving User= for the broker's own unit before exec.
        ("SYSTEMD_ACTIVATION_UNIT", "userdb-brokerd.service"),
    ] {
        let nss = Nss::new(&f, BROKER_ONLY).env(key, value);
        assert_eq!(connections_made(&f, &nss), 0, "{key}={value} connected");
    }
    let other_unit = Nss::new(&f, BROKER_ONLY).env("SYSTEMD_ACTIVATION_UNIT", "sshd.service");
    assert!(
        connections_made(&f, &other_unit) > 0,
        "another unit's lookups must still connect"
    );
    let pid1 = Nss::new(&f, BROKER_ONLY).as_pid1();
    assert_eq!(
        connections_made(&f, &pid1),
        0,
        "a lookup as PID 1 connected"
    );
}

/// The requests a lookup sends to a broker that knows nobody.
fn requests_made(f: &Fixture, nss: &Nss, argv: &[&str]) -> Vec<serde_json::Value> {
    let fake = FakeBroker::start(&f.socket_path(), Behaviour::NotFound);
    nss.run(argv).assert_code(2, &argv.join(" "));
    fake.accepted_after(Duration::from_millis(50));
    fake.requests()
}

#[test]
fn module_tells_the_broker_about_files_first_and_dynamic_bypass() {
    let _serial = exclusive();
    let f = Fixture::new();
    let lookup = ["getent", "group", "nosuchgroup"];
    let cases = [
        ("broker alone", Nss::new(&f, BROKER_ONLY), false, false),
        ("files first", Nss::new(&f, FILES_THEN_BROKER), true, false),
        (
            "SYSTEMD_NSS_DYNAMIC_BYPASS=1",
            Nss::new(&f, BROKER_ONLY).env("SYSTEMD_NSS_DYNAMIC_BYPASS", "1"),
            false,
            true,
        ),
    ];
    for (case, nss, reads_files, dynamic_bypass) in cases {
        let requests = requests_made(&f, &nss, &lookup);
        assert!(
            !requests.is_empty(),
            "{case}: no request reached the broker"
        );
        for request in &requests {
            let method = request["method"].as_str().unwrap_or_default();
            let params = &request["parameters"];
            assert!(method.starts_with("io.userdb.Broker."), "{case}: {request}");
            assert_eq!(params["service"], "io.userdb.Broker", "{case}: {request}");
            let flag = |key: &str| params[key].as_bool().unwrap_or(false);
            assert_eq!(flag("callerReadsFiles"), reads_files, "{case}: {request}");
            assert_eq!(flag("dynamicBypass"), dynamic_bypass, "{case}: {request}");
        }
    }
}

#[test]
fn broker_drops_bad_clients_and_keeps_serving_the_others() {
    let _serial = exclusive();
    let f = fixture_with_alice();
    let mut broker = Broker::start(&f);
    let socket = broker.socket().to_path_buf();
    let limit = Duration::from_secs(5);

    let garbage = varlink::exchange(&socket, b"}{ not json at all\0", limit);
    assert!(
        !garbage.timed_out,
        "garbage request left hanging: {garbage:?}"
    );
    assert!(
        garbage.closed || garbage.replies.iter().any(|r| r["error"].is_string()),
        "garbage request got neither an error nor a close: {garbage:?}"
    );

    let unknown = varlink::call(
        &socket,
        "io.systemd.UserDatabase.NoSuchMethod",
        json!({}),
        false,
    );
    assert_eq!(
        unknown.replies.first().and_then(|r| r["error"].as_str()),
        Some("org.varlink.service.MethodNotFound"),
        "{unknown:?}"
    );

    let oversized = varlink::exchange(&socket, &vec![b' '; 16 << 20], limit);
    assert!(
        !oversized.timed_out,
        "a 16 MiB request without end was not refused: {oversized:?}"
    );

    // A client that sends half a message and stalls holds its connection;
    // nobody else may notice.
    let mut stalled =
        std::os::unix::net::UnixStream::connect(&socket).unwrap_or_else(|e| panic!("connect: {e}"));
    std::io::Write::write_all(
        &mut stalled,
        br#"{"method":"io.systemd.UserDatabase.GetUserRecord","param"#,
    )
    .unwrap_or_else(|e| panic!("write: {e}"));
    let nss = Nss::new(&f, BROKER_ONLY);
    assert_row(
        "new client beside garbage, oversized and stalled clients",
        50.0,
        || {
            let run = probe::time(&nss, &["passwd:alice"]);
            assert_eq!(run.first().answer, format!("found {ALICE_LINE}"));
            run.first().took
        },
    );
    assert!(broker.is_running(), "broker died:\n{}", broker.log());
}

#[test]
fn no_descriptor_leaks_across_a_thousand_lookups() {
    let _serial = exclusive();
    let f = fixture_with_alice();
    let queries = [
        "passwd:alice",
        "uid:0",
        "group:wheel",
        "passwd:nosuchuser",
        "gid:4000",
    ];
    let fds = |nss: &Nss| -> String {
        let mut argv = vec![PROBE, "fds", "1000"];
        argv.extend_from_slice(&queries);
        let out = nss.run(&argv);
        out.assert_code(0, "nss-probe fds");
        out.stdout
    };
    let counts = |text: &str| -> (String, String) {
        let mut words = text.split_whitespace().skip(1);
        let before = words
            .next()
            .unwrap_or_default()
            .trim_start_matches("before=")
            .to_owned();
        let after = words
            .next()
            .unwrap_or_default()
            .trim_start_matches("after=")
            .to_owned();
        (before, after)
    };
    {
        let _broker = Broker::start(&f);
        let (before, after) = counts(&fds(&Nss::new(&f, BROKER_ONLY)));
        assert_eq!(before, after, "live broker: descriptors leaked");
    }
    let _hung = FakeBroker::start(&f.socket_path(), Behaviour::NeverAnswer);
    let nss = against_fake(&f);
    let (before, after) = counts(&fds(&nss));
    assert_eq!(before, after, "hung broker: descriptors leaked");
}

#[test]
fn module_socket_is_close_on_exec_and_never_raises_sigpipe() {
    let _serial = exclusive();
    let f = fixture_with_alice();
    let _broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    // Shadow data never come from the snapshot file: this one asks the socket.
    let out = nss.run(&[
        "strace",
        "-qq",
        "-e",
        "trace=socket,connect,write,writev,send,sendto,sendmsg,close",
        "getent",
        "shadow",
        "alice",
    ]);
    out.assert_code(0, "probe under strace");
    let socket = f.socket_path().display().to_string();
    let lines: Vec<&str> = out.stderr.lines().collect();
    let mut checked = 0;
    for (at, line) in lines.iter().enumerate() {
        if !(line.starts_with("connect(") && line.contains(&socket)) {
            continue;
        }
        let fd = line["connect(".len()..]
            .split(',')
            .next()
            .unwrap_or_default();
        let created = lines[..at]
            .iter()
            .rev()
            .find(|l| l.starts_with("socket(") && l.ends_with(&format!("= {fd}")))
            .unwrap_or_else(|| panic!("no socket() for fd {fd}\n{}", out.stderr));
        assert!(
            created.contains("SOCK_CLOEXEC"),
            "not close-on-exec: {created}"
        );
        // Up to the close: after it the number may name another file.
        for later in lines[at..]
            .iter()
            .take_while(|l| !l.starts_with(&format!("close({fd})")))
        {
            let on_fd = |call: &str| later.starts_with(&format!("{call}({fd},"));
            assert!(
                !on_fd("write") && !on_fd("writev"),
                "write(2) on the socket can raise SIGPIPE: {later}"
            );
            if on_fd("sendto") || on_fd("sendmsg") || on_fd("send") {
                assert!(
                    later.contains("MSG_NOSIGNAL"),
                    "send without MSG_NOSIGNAL: {later}"
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 0,
        "saw no send on the broker socket\n{}",
        out.stderr
    );
}

#[test]
fn lookup_reentered_from_a_signal_handler_fails_at_once() {
    let _serial = exclusive();
    let f = Fixture::new();
    let fake = FakeBroker::start(&f.socket_path(), Behaviour::NeverAnswer);
    let nss = against_fake(&f);
    let out = nss.run(&[
        PROBE,
        "reenter",
        "passwd:nosuchuser",
        "group:nosuchgroup",
        "50",
    ]);
    out.assert_code(0, "nss-probe reenter");
    let field = |name: &str| -> Timed {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name}\t")))
            .unwrap_or_else(|| panic!("no {name} line\n{}", out.describe()));
        let parts: Vec<&str> = line.splitn(3, '\t').collect();
        assert_eq!(
            parts.len(),
            3,
            "the {name} lookup never ran\n{}",
            out.describe()
        );
        Timed {
            query: name.to_owned(),
            took: parse_micros(parts[1], line),
            answer: parts[2].to_owned(),
        }
    };
    let (outer, inner) = (field("outer"), field("inner"));
    report(
        "lookup re-entered from a signal handler (inner)",
        &[inner.took],
        5.0,
    );
    report(
        "  the interrupted outer lookup, deadline 300 ms",
        &[outer.took],
        350.0,
    );
    assert_failed(&inner);
    assert_failed(&outer);
    assert!(
        ms(inner.took) < 5.0,
        "re-entered lookup took {:.2} ms",
        ms(inner.took)
    );
    assert!(
        ms(outer.took) <= 350.0,
        "interrupted lookup took {:.2} ms",
        ms(outer.took)
    );
    assert_eq!(
        fake.accepted_after(Duration::from_millis(50)),
        1,
        "the re-entered lookup opened a connection of its own"
    );
}

#[test]
fn generator_context_never_connects_and_answers_from_the_file() {
    let _serial = exclusive();
    let f = fixture_with_alice();
    {
        let fake = FakeBroker::start(&f.socket_path(), Behaviour::NeverAnswer);
        let nss = Nss::new(&f, BROKER_ONLY).as_generator();
        assert_row("generator environment, hung broker, no file", 5.0, || {
            let run = probe::time(&nss, &["group:nosuchgroup"]);
            assert_failed(run.first());
            run.first().took
        });
        assert_eq!(
            fake.accepted_after(Duration::from_millis(50)),
            0,
            "a generator connected"
        );
    }
    let broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY).as_generator();
    let (out, connections) = nss.connections(&["getent", "passwd", "alice"], broker.socket());
    out.assert_code(0, "generator, live broker");
    assert_eq!(out.stdout.trim_end(), ALICE_LINE);
    assert_eq!(connections, 0, "a generator connected\n{}", out.describe());
    let merged = Nss::new(&f, FILES_THEN_BROKER).as_generator();
    let out = merged.run(&["getent", "group", "wheel"]);
    out.assert_code(0, "generator, live broker, merge");
    assert_eq!(out.stdout, "wheel:x:10:filesuser,alice\n");
}

/// Lookups with known answers for the probe's threads/fork/atexit modes.
const EXPECTATIONS: [&str; 6] = [
    "passwd:alice=1001",
    "passwd:root=0",
    "group:wheel=10",
    "group:alice=1001",
    "passwd:nosuchuser=-",
    "group:nosuchgroup=-",
];

fn probe(nss: &Nss, mode: &[&str]) -> Outcome {
    let mut argv = vec![PROBE];
    argv.extend_from_slice(mode);
    argv.extend_from_slice(&EXPECTATIONS);
    nss.run(&argv)
}

#[test]
fn sixty_four_threads_times_ten_thousand_lookups_are_all_correct() {
    let _serial = exclusive();
    let f = fixture_with_alice();
    let _broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY).limit(Duration::from_secs(240));
    let out = probe(&nss, &["threads", "64", "10000"]);
    println!(
        "64 threads x 10000 lookups: {:.1} s, {}",
        out.elapsed.as_secs_f64(),
        out.stdout.trim()
    );
    out.assert_code(0, "every answer correct");
    assert_eq!(out.stdout, "lookups=640000 wrong=0 crashed_threads=0\n");
}

#[test]
fn fork_from_a_threaded_process_keeps_lookups_working_in_parent_and_child() {
    let _serial = exclusive();
    let f = fixture_with_alice();
    let _broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    let out = probe(&nss, &["fork", "50"]);
    out.assert_code(0, "fork");
    assert_eq!(
        out.stdout,
        "rounds=50 child_failed=0 child_hung=0 parent_wrong=0 background_wrong=0\n"
    );
}

#[test]
fn lookup_from_an_atexit_handler_does_not_crash() {
    let _serial = exclusive();
    let f = fixture_with_alice();
    let _broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    let lines = |prefix: &str| -> String {
        EXPECTATIONS
            .iter()
            .map(|e| {
                format!(
                    "{prefix} {} right\n",
                    e.rsplit_once('=').map_or(*e, |(q, _)| q)
                )
            })
            .collect()
    };
    let out = probe(&nss, &["atexit"]);
    out.assert_code(0, "atexit after lookups in main");
    assert_eq!(out.stdout, lines("main") + &lines("atexit"));
    let out = probe(&nss, &["atexit-only"]);
    out.assert_code(0, "first lookup in atexit");
    assert_eq!(out.stdout, lines("atexit"));
}

#[test]
fn broker_refuses_to_run_as_pid_1() {
    let _serial = exclusive();
    let f = Fixture::new();
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--kill-child", "--mount-proc"])
        .arg(artifacts::brokerd())
        .arg("--root")
        .arg(f.root())
        .arg("--socket")
        .arg(f.socket_path());
    let out = process::run(command, Duration::from_secs(10));
    assert!(
        !out.timed_out,
        "the broker kept running as PID 1\n{}",
        out.describe()
    );
    assert!(
        !out.status.success(),
        "exit status must be non-zero\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("PID 1"),
        "no clear message naming PID 1\n{}",
        out.describe()
    );
    assert!(
        !f.socket_path().exists(),
        "the broker created its socket as PID 1"
    );
}

/// Open connections the broker reports, less the status query's own.
fn open_connections(broker: &Broker) -> u64 {
    broker.status()["connections"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(1)
}

#[test]
fn broker_answers_a_new_client_within_50_ms_under_2000_idle_connections() {
    let _serial = exclusive();
    let f = fixture_with_alice();
    let mut broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    let flood_started = Instant::now();
    let idle = open_idle_connections(broker.socket(), 2000, Duration::from_secs(10));
    assert_eq!(idle.len(), 2000, "could not even queue 2000 connections");

    // Arriving while the broker is still taking in the flood: must be
    // answered correctly (within the module's deadline); the time is reported.
    let during = probe::time(&nss, &["passwd:alice"]);
    assert_eq!(during.first().answer, format!("found {ALICE_LINE}"));
    report(
        "new client while 2000 connections arrive",
        &[during.first().took],
        1000.0,
    );

    while open_connections(&broker) < 2000 {
        assert!(
            flood_started.elapsed() < Duration::from_secs(20),
            "the broker took in only {} of 2000 connections",
            open_connections(&broker)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "broker held all 2000 connections {:?} after the flood began",
        flood_started.elapsed()
    );
    assert_row("new client under 2000 idle connections", 50.0, || {
        let run = probe::time(&nss, &["passwd:alice"]);
        assert_eq!(run.first().answer, format!("found {ALICE_LINE}"));
        run.first().took
    });
    assert!(
        broker.is_running(),
        "broker died under the flood:\n{}",
        broker.log()
    );
}

#[test]
fn broker_starts_and_serves_with_broker_in_its_own_nsswitch_conf() {
    let _serial = exclusive();
    let f = fixture_with_alice();
    let own = Nss::new(&f, BROKER_ONLY);
    let _broker = Broker::start_under(&f, &own);
    let out = Nss::new(&f, BROKER_ONLY).run(&["getent", "passwd", "alice"]);
    out.assert_code(0, "served");
    assert_eq!(out.stdout.trim_end(), ALICE_LINE);
}

#[test]
fn broker_binary_imports_no_nss_lookup_functions() {
    let _serial = exclusive();
    let mut nm = Command::new("nm");
    nm.args(["--dynamic", "--undefined-only", "--format=posix"])
        .arg(artifacts::brokerd());
    let out = process::run(nm, Duration::from_secs(30));
    out.assert_code(0, "nm");
    let forbidden = [
        "getpw",
        "getgr",
        "getsp",
        "getsg",
        "initgroups",
        "getgrouplist",
        "setpwent",
        "setgrent",
    ];
    let imported: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split(' ').next())
        .filter(|sym| forbidden.iter().any(|f| sym.starts_with(f)))
        .collect();
    assert!(!out.stdout.is_empty(), "nm listed no imports at all");
    assert_eq!(
        imported,
        Vec::<&str>::new(),
        "the broker can resolve users through NSS"
    );
}

fn valgrind(nss: &Nss, argv: &[&str], ok_codes: &[i32]) {
    let mut full = vec![
        "valgrind",
        "--error-exitcode=99",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite",
        "--track-fds=no",
    ];
    full.extend_from_slice(argv);
    let out = nss.run(&full);
    let code = out.code().unwrap_or(-1);
    assert!(
        ok_codes.contains(&code),
        "valgrind {argv:?}: exit {code}, want one of {ok_codes:?}\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("ERROR SUMMARY: 0 errors"),
        "valgrind {argv:?} reported errors\n{}",
        out.describe()
    );
}

#[test]
fn lookups_under_valgrind_show_no_invalid_access_or_definite_leak() {
    let _serial = exclusive();
    let f = fixture_with_alice();
    {
        let _broker = Broker::start(&f);
        for conf in [BROKER_ONLY, FILES_THEN_BROKER] {
            let nss = Nss::new(&f, conf);
            for argv in [
                &["getent", "passwd", "alice"][..],
                &["getent", "passwd", "1001"],
                &["getent", "group", "wheel"],
                &["getent", "group", "1001"],
                &["getent", "initgroups", "alice"],
                &["getent", "shadow", "alice"],
                &["getent", "passwd"],
                &["getent", "group"],
                &["id", "alice"],
            ] {
                valgrind(&nss, argv, &[0]);
            }
            valgrind(&nss, &["getent", "passwd", "nosuchuser"], &[2]);
        }
    }
    f.remove_snapshot();
    for behaviour in [
        Behaviour::Garbage,
        Behaviour::Oversized { bytes: 96 << 20 },
        Behaviour::NeverAnswer,
        Behaviour::CloseMidReply,
    ] {
        let _fake = FakeBroker::start(&f.socket_path(), behaviour);
        let nss = against_fake(&f);
        valgrind(&nss, &["getent", "passwd", "alice"], &[2]);
    }
}
