//! Issue 4: the broker consumes Varlink userdb services as sources, with a
//! deadline and a circuit breaker each, merges them with files and drop-ins
//! by priority, and is itself a userdb service good enough for nss-systemd.
//!
//! Every source here is a real socket in the fixture root's
//! `run/systemd/userdb/`; every look-up goes through real glibc. Timing rows
//! print their measured figures as `sources | row | measured | bound` (run
//! with `--nocapture`). Every test holds [`exclusive`]: the whole file runs
//! in about two seconds serialised, and a look-up bounded at 5 ms must not
//! share two cores with another test's processes.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use userdb_broker_tests::fake::Behaviour;
use userdb_broker_tests::nss::{BROKER_ONLY, FILES_THEN_BROKER};
use userdb_broker_tests::probe::{self, Timed};
use userdb_broker_tests::userdb_service::{
    service_path, Directory, Flaw, UserdbService, IMPOSTOR_SERVICE, MISMATCH_ID_OFFSET,
    MISMATCH_SUFFIX,
};
use userdb_broker_tests::{
    artifacts, assert_line, exclusive, process, Broker, DropinDir, FakeBroker, Fixture, Nss,
    Outcome,
};

/// The broker's default per-source deadline.
const SOURCE_DEADLINE_MS: f64 = 250.0;
/// What a first look-up beside a hung source may cost beyond that deadline.
const FIRST_LOOKUP_SLACK_MS: f64 = 100.0;
/// A look-up while the hung source's breaker is open.
const BREAKER_OPEN_BOUND_MS: f64 = 5.0;
/// A look-up that must not wait for any source at all.
const NO_WAIT_BOUND_MS: f64 = 50.0;
/// How soon a service appearing or leaving must be noticed.
const DISCOVERY_BOUND: Duration = Duration::from_secs(1);

const DIRECTORY: &str = "io.example.Directory";
const DYNAMIC_USER: &str = "io.systemd.DynamicUser";
const MULTIPLEXERS: [&str; 3] = [
    "io.systemd.Multiplexer",
    "io.systemd.NameServiceSwitch",
    "io.systemd.DropIn",
];

const CAROL_LINE: &str = "carol:x:5001:5001:Carol Varlink:/home/carol:/bin/sh";
const DAVE_LINE: &str = "dave:x:5002:5002:Dave Varlink:/home/dave:/bin/sh";
const DINA_LINE: &str = "dina:x:5300:5300:Dina Dropin:/home/dina:/bin/bash";
const FILESUSER_LINE: &str = "filesuser:x:1000:1000:Files User,,,:/home/filesuser:/bin/bash";
const SVCGROUP_GID: u32 = 5100;
/// The uid the directory service gives its own `filesuser`.
const SERVICE_FILESUSER_UID: u32 = 7000;

fn user(name: &str, id: u32, real_name: &str) -> Value {
    json!({
        "userName": name, "uid": id, "gid": id, "realName": real_name,
        "homeDirectory": format!("/home/{name}"), "shell": "/bin/sh",
    })
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(u, g)| ((*u).to_owned(), (*g).to_owned()))
        .collect()
}

/// The directory service's data: carol and dave; a `filesuser` and `wheel`
/// that files also define (with other ids); memberships in wheel that files
/// (filesuser) and a drop-in (dina) state as well; carol in svcgroup both by
/// the group record's `members` and by GetMemberships, as systemd's
/// services report a membership both ways.
fn directory() -> Directory {
    Directory {
        users: vec![
            user("carol", 5001, "Carol Varlink"),
            user("dave", 5002, "Dave Varlink"),
            user("filesuser", SERVICE_FILESUSER_UID, "Varlink Filesuser"),
        ],
        groups: vec![
            json!({ "groupName": "carol", "gid": 5001 }),
            json!({ "groupName": "dave", "gid": 5002 }),
            json!({ "groupName": "svcgroup", "gid": SVCGROUP_GID, "members": ["carol"] }),
            json!({ "groupName": "wheel", "gid": 4010 }),
        ],
        memberships: pairs(&[
            ("carol", "wheel"),
            ("filesuser", "wheel"),
            ("dina", "wheel"),
            ("carol", "svcgroup"),
            ("dave", "svcgroup"),
        ]),
    }
}

/// The base fixture plus drop-in user and group `dina` (5300), member of
/// wheel through a `.membership` drop-in.
fn fixture() -> Fixture {
    let f = Fixture::new();
    f.dropin_user(
        DropinDir::Etc,
        &json!({
            "userName": "dina", "uid": 5300, "gid": 5300, "realName": "Dina Dropin",
            "homeDirectory": "/home/dina", "shell": "/bin/bash",
        }),
    );
    f.dropin_group(DropinDir::Etc, &json!({ "groupName": "dina", "gid": 5300 }));
    f.dropin_membership(DropinDir::Etc, "dina", "wheel");
    f
}

/// The names of the sources `userdb-brokerctl status` lists.
fn source_names(broker: &Broker) -> BTreeSet<String> {
    broker.status()["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until the broker lists every service in `names` as a source; its
/// watcher discovers services off the request path.
fn wait_for_sources(broker: &Broker, names: &[&str]) {
    let started = Instant::now();
    loop {
        let known = source_names(broker);
        if names.iter().all(|n| known.contains(*n)) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the broker never listed {names:?}; it lists {known:?}\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `nss-probe time QUERY...`: each look-up timed around the libc call.
fn probe_time(nss: &Nss, queries: &[&str]) -> Vec<Timed> {
    probe::time(nss, queries).lookups
}

fn ms(timed: &Timed) -> f64 {
    timed.took.as_secs_f64() * 1000.0
}

fn assert_found(timed: &Timed, line: &str) {
    assert_eq!(timed.answer, format!("found {line}"), "{}", timed.query);
}

fn report(row: &str, measured: &[f64], bound_ms: f64) {
    let all: Vec<String> = measured.iter().map(|ms| format!("{ms:.2}")).collect();
    let worst = measured.iter().copied().fold(0.0, f64::max);
    println!(
        "sources | {row} | max {worst:.2} ms (each: {} ms) | bound {bound_ms} ms",
        all.join(", ")
    );
    assert!(
        worst <= bound_ms,
        "{row}: {worst:.2} ms exceeds {bound_ms} ms"
    );
}

/// A broker on `f` once it lists every service in `services`.
fn broker_with(f: &Fixture, services: &[&str]) -> Broker {
    let broker = Broker::start(f);
    wait_for_sources(&broker, services);
    broker
}

#[test]
fn hung_pid1_source_costs_one_deadline_then_nothing_while_its_breaker_is_open() {
    let _serial = exclusive();
    let f = fixture();
    let _directory = UserdbService::start(&f, DIRECTORY, directory(), Flaw::None);
    let hung = FakeBroker::start(&service_path(&f, DYNAMIC_USER), Behaviour::NeverAnswer);
    let broker = broker_with(&f, &[DIRECTORY, DYNAMIC_USER]);
    let nss = Nss::new(&f, BROKER_ONLY);

    let first = probe_time(&nss, &["passwd:carol", "passwd:carol", "passwd:dave"]);
    assert_found(&first[0], CAROL_LINE);
    report(
        "first lookup beside hung PID-1 source",
        &[ms(&first[0])],
        SOURCE_DEADLINE_MS + FIRST_LOOKUP_SLACK_MS,
    );
    assert!(
        hung.accepted_after(Duration::ZERO) > 0,
        "the hung io.systemd.DynamicUser was never asked: the row proves nothing"
    );

    // Later look-ups, in this process and in a fresh one, other keys included.
    let second = probe_time(
        &nss,
        &["passwd:carol", "uid:5002", "group:svcgroup", "gid:5001"],
    );
    assert_found(&first[1], CAROL_LINE);
    assert_found(&first[2], DAVE_LINE);
    assert_found(&second[0], CAROL_LINE);
    assert_found(&second[1], DAVE_LINE);
    assert_found(&second[2], &format!("svcgroup:x:{SVCGROUP_GID}:carol,dave"));
    assert_found(&second[3], "carol:x:5001:");
    let later: Vec<f64> = first[1..].iter().chain(&second).map(ms).collect();
    report(
        "lookups while the breaker is open",
        &later,
        BREAKER_OPEN_BOUND_MS,
    );
    assert!(
        broker.log().contains("no answer within"),
        "{}",
        broker.log()
    );
}

#[test]
fn dynamic_bypass_waits_for_nothing_and_never_contacts_the_hung_pid1_source() {
    let _serial = exclusive();
    let f = fixture();
    let _directory = UserdbService::start(&f, DIRECTORY, directory(), Flaw::None);
    let hung = FakeBroker::start(&service_path(&f, DYNAMIC_USER), Behaviour::NeverAnswer);
    let _broker = broker_with(&f, &[DIRECTORY, DYNAMIC_USER]);
    let nss = Nss::new(&f, BROKER_ONLY).env("SYSTEMD_NSS_DYNAMIC_BYPASS", "1");

    let timed = probe_time(&nss, &["passwd:carol", "group:svcgroup", "uid:5002"]);
    assert_found(&timed[0], CAROL_LINE);
    assert_found(&timed[1], &format!("svcgroup:x:{SVCGROUP_GID}:carol,dave"));
    assert_found(&timed[2], DAVE_LINE);
    let measured: Vec<f64> = timed.iter().map(ms).collect();
    report(
        "lookups with SYSTEMD_NSS_DYNAMIC_BYPASS=1 beside hung PID-1 source",
        &measured,
        NO_WAIT_BOUND_MS,
    );
    for argv in [
        &["id", "carol"][..],
        &["getent", "initgroups", "carol"],
        &["getent", "passwd"],
        &["getent", "group"],
    ] {
        let out = nss.run(argv);
        out.assert_code(0, &argv.join(" "));
        assert!(
            out.ms() < SOURCE_DEADLINE_MS,
            "{}: {:.1} ms, as if a source deadline was paid",
            argv.join(" "),
            out.ms()
        );
    }
    assert_eq!(
        hung.accepted_after(Duration::from_millis(100)),
        0,
        "io.systemd.DynamicUser was contacted despite SYSTEMD_NSS_DYNAMIC_BYPASS=1"
    );
}

#[test]
fn multiplexer_sockets_and_the_brokers_own_socket_are_never_contacted() {
    let _serial = exclusive();
    let f = fixture();
    let _directory = UserdbService::start(&f, DIRECTORY, directory(), Flaw::None);
    // Each would answer for muxuser if it were ever asked.
    let multiplexers: Vec<UserdbService> = MULTIPLEXERS
        .iter()
        .map(|name| {
            let data = Directory {
                users: vec![user("muxuser", 6100, "Multiplexed")],
                groups: vec![json!({ "groupName": "muxgroup", "gid": 6100 })],
                memberships: pairs(&[("carol", "muxgroup")]),
            };
            UserdbService::start(&f, name, data, Flaw::None)
        })
        .collect();
    let broker = broker_with(&f, &[DIRECTORY]);
    // The broker's own socket under another name: the same inode.
    let own = service_path(&f, "io.example.Loop");
    std::fs::hard_link(broker.socket(), &own)
        .unwrap_or_else(|e| panic!("link {}: {e}", own.display()));
    let _late = UserdbService::start(&f, "io.example.Late", Directory::default(), Flaw::None);
    wait_for_sources(&broker, &["io.example.Late"]);

    for conf in [BROKER_ONLY, FILES_THEN_BROKER] {
        let nss = Nss::new(&f, conf);
        nss.expect_line(&["getent", "passwd", "carol"], CAROL_LINE);
        nss.expect_not_found(&["getent", "passwd", "muxuser"]);
        nss.expect_not_found(&["getent", "passwd", "6100"]);
        nss.expect_not_found(&["getent", "group", "muxgroup"]);
        let id = nss.one_line(&["id", "carol"]);
        assert!(!id.contains("muxgroup"), "{id}");
        let users = nss.run_ok(&["getent", "passwd"]).join("\n");
        assert!(
            users.contains("carol:") && !users.contains("muxuser"),
            "{users}"
        );
        let groups = nss.run_ok(&["getent", "group"]).join("\n");
        assert!(
            groups.contains("svcgroup:") && !groups.contains("muxgroup"),
            "{groups}"
        );
    }
    for service in &multiplexers {
        assert_eq!(
            service.accepted(),
            0,
            "{} was contacted: {:?}",
            service.path().display(),
            service.calls()
        );
    }
    let sources = source_names(&broker);
    for never in MULTIPLEXERS.iter().chain(&["io.example.Loop"]) {
        assert!(
            !sources.contains(*never),
            "{never} is a source: {sources:?}"
        );
    }
}

/// 20 look-ups of filesuser, then two enumerations: every answer is `expected`.
fn assert_filesuser_always(nss: &Nss, expected: &str) {
    for i in 0..20 {
        let answer = nss.one_line(&["getent", "passwd", "filesuser"]);
        assert_line(&format!("lookup {i} of filesuser"), &answer, expected);
    }
    for round in 0..2 {
        let users = nss.run_ok(&["getent", "passwd"]);
        let listed: Vec<&String> = users
            .iter()
            .filter(|l| l.starts_with("filesuser:"))
            .collect();
        assert_eq!(listed, [expected], "enumeration {round}");
    }
}

/// Log lines reporting the filesuser conflict with `winner` first.
fn conflict_lines(log: &str, winner: &str, loser: &str) -> usize {
    let wanted = format!("conflict: user {winner} wins over user {loser}");
    log.lines().filter(|l| l.contains(&wanted)).count()
}

#[test]
fn files_record_wins_over_a_service_record_every_time() {
    let _serial = exclusive();
    let f = fixture();
    let _directory = UserdbService::start(&f, DIRECTORY, directory(), Flaw::None);
    let broker = broker_with(&f, &[DIRECTORY]);
    let nss = Nss::new(&f, BROKER_ONLY);
    assert_filesuser_always(&nss, FILESUSER_LINE);
    nss.expect_line(&["getent", "passwd", "1000"], FILESUSER_LINE);
    wheel_line(&nss);
    let log = broker.log();
    assert_eq!(
        conflict_lines(
            &log,
            "filesuser:1000 from files",
            &format!("filesuser:{SERVICE_FILESUSER_UID} from {DIRECTORY}")
        ),
        1,
        "the conflict must be logged once, not per look-up:\n{log}"
    );
}

#[test]
fn configured_order_puts_a_service_before_files() {
    let _serial = exclusive();
    let f = fixture();
    let _directory = UserdbService::start(&f, DIRECTORY, directory(), Flaw::None);
    let broker = Broker::start_with_config(
        &f,
        &format!("order = [\"{DIRECTORY}\", \"files\", \"dropins\"]\n"),
    );
    let nss = Nss::new(&f, BROKER_ONLY);
    // carol exists only in the service: found once the broker is up and
    // has discovered it.
    time_until(&nss, "carol", true);
    let service_line = format!(
        "filesuser:x:{SERVICE_FILESUSER_UID}:{SERVICE_FILESUSER_UID}:Varlink Filesuser:/home/filesuser:/bin/sh"
    );
    assert_filesuser_always(&nss, &service_line);
    let wheel = nss.one_line(&["getent", "group", "wheel"]);
    assert!(wheel.starts_with("wheel:x:4010:"), "{wheel}");
    let log = broker.log();
    assert_eq!(
        conflict_lines(
            &log,
            &format!("filesuser:{SERVICE_FILESUSER_UID} from {DIRECTORY}"),
            "filesuser:1000 from files"
        ),
        1,
        "the conflict must be logged once, not per look-up:\n{log}"
    );
}

/// `getent group wheel`, asserting gid 10 from files and no member twice.
fn wheel_line(nss: &Nss) -> String {
    let line = nss.one_line(&["getent", "group", "wheel"]);
    assert!(line.starts_with("wheel:x:10:"), "{line}");
    line
}

/// The member list of a group line, asserting each member appears once.
fn members(line: &str) -> BTreeSet<String> {
    let list: Vec<&str> = line
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .split(',')
        .filter(|m| !m.is_empty())
        .collect();
    let set: BTreeSet<String> = list.iter().map(|m| (*m).to_owned()).collect();
    assert_eq!(set.len(), list.len(), "a member is listed twice: {line}");
    set
}

fn set_of(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The groups `id USER` lists, asserting each appears once.
fn id_groups(line: &str) -> BTreeSet<String> {
    let list: Vec<&str> = line
        .split_once("groups=")
        .unwrap_or_else(|| panic!("no groups= in {line}"))
        .1
        .split(',')
        .collect();
    let set: BTreeSet<String> = list.iter().map(|g| (*g).to_owned()).collect();
    assert_eq!(set.len(), list.len(), "a group is listed twice: {line}");
    set
}

#[test]
fn memberships_are_the_union_of_files_dropins_and_services_each_listed_once() {
    let _serial = exclusive();
    let f = fixture();
    let _directory = UserdbService::start(&f, DIRECTORY, directory(), Flaw::None);
    let _broker = broker_with(&f, &[DIRECTORY]);
    // files: filesuser; drop-in: dina; service: carol, and filesuser and
    // dina again.
    let wheel = set_of(&["filesuser", "dina", "carol"]);
    for conf in [BROKER_ONLY, FILES_THEN_BROKER] {
        let nss = Nss::new(&f, conf);
        let what = format!("[{}]", nss.label());
        assert_eq!(
            members(&wheel_line(&nss)),
            wheel,
            "{what} getent group wheel"
        );
        assert_eq!(
            members(&nss.one_line(&["getent", "group", "10"])),
            wheel,
            "{what} getent group 10"
        );
        let listed: Vec<String> = nss
            .run_ok(&["getent", "group"])
            .into_iter()
            .filter(|l| l.starts_with("wheel:"))
            .collect();
        assert_eq!(
            listed.len(),
            1,
            "{what} enumeration lists wheel once: {listed:?}"
        );
        // glibc merges look-ups by key, never enumerations: with files
        // first, the listed wheel is the one /etc/group has.
        let enumerated = if conf == BROKER_ONLY {
            wheel.clone()
        } else {
            set_of(&["filesuser"])
        };
        assert_eq!(members(&listed[0]), enumerated, "{what} enumerated wheel");

        let expected_ids = [
            ("carol", &["5001(carol)", "10(wheel)", "5100(svcgroup)"][..]),
            ("dina", &["5300(dina)", "10(wheel)"]),
            ("filesuser", &["1000(filesuser)", "4(adm)", "10(wheel)"]),
            ("dave", &["5002(dave)", "5100(svcgroup)"]),
        ];
        for (name, groups) in expected_ids {
            let line = nss.one_line(&["id", name]);
            assert_eq!(id_groups(&line), set_of(groups), "{what} id {name}: {line}");
        }
    }
}

#[test]
fn a_burst_of_lookups_asks_a_service_once() {
    let _serial = exclusive();
    let f = fixture();
    let directory = UserdbService::start(&f, DIRECTORY, directory(), Flaw::None);
    let _broker = broker_with(&f, &[DIRECTORY]);
    let nss = Nss::new(&f, BROKER_ONLY);
    let burst: Vec<&str> = ["passwd:carol", "passwd:nosuchuser"].repeat(25);
    let timed = probe_time(&nss, &burst);
    for t in &timed {
        let expected = if t.query == "passwd:carol" {
            format!("found {CAROL_LINE}")
        } else {
            "notfound".to_owned()
        };
        assert_eq!(t.answer, expected, "{}", t.query);
    }
    let asked = |name: &str| {
        directory
            .calls()
            .iter()
            .filter(|c| c["parameters"]["userName"] == name)
            .count()
    };
    // Found and not found are both cached (TTLs 2 s and 1 s by default).
    assert_eq!(asked("carol"), 1, "{:?}", directory.calls());
    assert_eq!(asked("nosuchuser"), 1, "{:?}", directory.calls());
}

/// Lines of the broker's log that name `service` and contain `reason`.
fn log_lines(broker: &Broker, service: &str, reason: &str) -> Vec<String> {
    broker
        .log()
        .lines()
        .filter(|l| l.contains(service) && l.contains(reason))
        .map(str::to_owned)
        .collect()
}

#[test]
fn bad_replies_are_ignored_with_a_log_line_while_other_sources_answer() {
    let _serial = exclusive();
    let f = fixture();
    let _directory = UserdbService::start(&f, DIRECTORY, directory(), Flaw::None);
    let _garbage = FakeBroker::start(&service_path(&f, "io.example.Garbage"), Behaviour::Garbage);
    let frank = Directory {
        users: vec![user("frank", 5401, "Frank Wrong Service")],
        ..Directory::default()
    };
    let gina = Directory {
        users: vec![user("gina", 5402, "Gina Mismatch")],
        ..Directory::default()
    };
    let _wrong = UserdbService::start(&f, "io.example.Wrong", frank, Flaw::WrongService);
    let _mismatch = UserdbService::start(&f, "io.example.Mismatch", gina, Flaw::MismatchedKey);
    let broker = broker_with(
        &f,
        &[
            DIRECTORY,
            "io.example.Garbage",
            "io.example.Wrong",
            "io.example.Mismatch",
        ],
    );
    let nss = Nss::new(&f, BROKER_ONLY);

    nss.expect_line(&["getent", "passwd", "carol"], CAROL_LINE);
    nss.expect_not_found(&["getent", "passwd", "frank"]);
    nss.expect_not_found(&["getent", "passwd", "gina"]);
    nss.expect_not_found(&["getent", "passwd", "5402"]);
    nss.expect_not_found(&["getent", "passwd", &format!("gina{MISMATCH_SUFFIX}")]);
    nss.expect_not_found(&["getent", "passwd", &(5402 + MISMATCH_ID_OFFSET).to_string()]);
    nss.expect_line(&["getent", "passwd", "5002"], DAVE_LINE);
    let users = nss.run_ok(&["getent", "passwd"]).join("\n");
    assert!(
        users.contains(CAROL_LINE) && !users.contains("frank"),
        "{users}"
    );

    for (service, reason) in [
        ("io.example.Garbage", "query failed"),
        ("io.example.Wrong", IMPOSTOR_SERVICE),
        ("io.example.Mismatch", "does not match the query"),
    ] {
        let lines = log_lines(&broker, service, reason);
        assert!(
            !lines.is_empty(),
            "no log line names {service} with {reason:?}:\n{}",
            broker.log()
        );
    }
}

/// How long until `getent passwd NAME` is found (or, with `found` false,
/// not found), polled from now.
fn time_until(nss: &Nss, name: &str, found: bool) -> Duration {
    let started = Instant::now();
    loop {
        let out = nss.run(&["getent", "passwd", name]);
        if out.code() == Some(if found { 0 } else { 2 }) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < 3 * DISCOVERY_BOUND,
            "getent passwd {name} still {}found after {:?}\n{}",
            if found { "not " } else { "" },
            started.elapsed(),
            out.describe()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn service_appearing_is_used_within_a_second_and_one_leaving_is_dropped() {
    let _serial = exclusive();
    let f = fixture();
    let broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    nss.expect_not_found(&["getent", "passwd", "carol"]);

    let service = UserdbService::start(&f, DIRECTORY, directory(), Flaw::None);
    let appeared = time_until(&nss, "carol", true);
    nss.expect_line(&["getent", "passwd", "carol"], CAROL_LINE);
    drop(service);
    let left = time_until(&nss, "carol", false);
    println!(
        "sources | service appearing, then leaving, noticed after | {:.0} ms, {:.0} ms | bound {} ms",
        appeared.as_secs_f64() * 1000.0,
        left.as_secs_f64() * 1000.0,
        DISCOVERY_BOUND.as_millis()
    );
    assert!(appeared <= DISCOVERY_BOUND, "appearing took {appeared:?}");
    assert!(left <= DISCOVERY_BOUND, "leaving took {left:?}");
    let started = Instant::now();
    while source_names(&broker).contains(DIRECTORY) {
        assert!(
            started.elapsed() < DISCOVERY_BOUND,
            "status still lists {DIRECTORY} after it left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn brokerctl_status_shows_each_source_and_its_state() {
    let _serial = exclusive();
    let f = fixture();
    let _directory = UserdbService::start(&f, DIRECTORY, directory(), Flaw::None);
    let _hung = FakeBroker::start(&service_path(&f, DYNAMIC_USER), Behaviour::NeverAnswer);
    let broker = broker_with(&f, &[DIRECTORY, DYNAMIC_USER]);
    let nss = Nss::new(&f, BROKER_ONLY);
    nss.expect_line(&["getent", "passwd", "carol"], CAROL_LINE);

    let status = broker.status();
    let sources = status["sources"].as_array().cloned().unwrap_or_default();
    let state_of = |name: &str| -> Value {
        sources
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("status lists no {name}: {status}"))
    };
    for (name, kind, state) in [
        ("files", "files", "ok"),
        ("dropins", "dropins", "ok"),
        (DIRECTORY, "varlink", "ok"),
        (DYNAMIC_USER, "varlink", "failing, next try in "),
    ] {
        let s = state_of(name);
        assert_eq!(s["kind"].as_str(), Some(kind), "{s}");
        let said = s["state"].as_str().unwrap_or_default();
        assert!(
            said == state || (state.ends_with(' ') && said.starts_with(state)),
            "{s}"
        );
    }
    assert_eq!(state_of(DYNAMIC_USER)["servedByPid1"], true);
    assert!(state_of(DIRECTORY)["latencyUSec"].is_u64(), "{status}");

    let mut command = Command::new(artifacts::brokerctl());
    command.arg("--socket").arg(broker.socket()).arg("status");
    let out: Outcome = process::run(command, Duration::from_secs(10));
    out.assert_code(0, "userdb-brokerctl status");
    let line_of = |name: &str| -> String {
        out.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{}", out.stdout))
            .to_owned()
    };
    let hung_line = line_of(DYNAMIC_USER);
    assert!(
        hung_line.contains("failing, next try in") && hung_line.contains("PID 1"),
        "{hung_line}"
    );
    assert!(
        line_of(DIRECTORY).contains(" ok "),
        "{}",
        line_of(DIRECTORY)
    );
    for local in ["files", "dropins"] {
        assert!(line_of(local).contains(" ok "), "{}", line_of(local));
    }
}

/// Runs `argv` with a private /run (a tmpfs, in the lookup namespace only)
/// whose `systemd/userdb/` is `userdb_dir`, where the broker's socket is:
/// so nss-systemd finds the broker and nothing else.
fn with_private_userdb(nss: &Nss, userdb_dir: &std::path::Path, argv: &[&str]) -> Outcome {
    const SCRIPT: &str = r#"set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/userdb
mount --bind "$0" /run/systemd/userdb
exec "$@"
"#;
    let dir = userdb_dir
        .to_str()
        .unwrap_or_else(|| panic!("path not UTF-8"));
    let mut full = vec!["sh", "-c", SCRIPT, dir];
    full.extend_from_slice(argv);
    nss.run(&full)
}

#[test]
fn nss_systemd_resolves_files_dropins_and_services_through_the_broker() {
    let _serial = exclusive();
    let f = fixture();
    let _directory = UserdbService::start(&f, DIRECTORY, directory(), Flaw::None);
    // The broker's socket is the only entry of the userdb directory that
    // nss-systemd sees; dina's drop-in lives in the fixture root, which
    // nss-systemd does not read, and carol exists only in the service.
    let userdb_dir = f.scratch().join("userdb");
    std::fs::create_dir_all(&userdb_dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let broker = Broker::start_at(&f, &userdb_dir.join("io.userdb.Broker"));
    wait_for_sources(&broker, &[DIRECTORY]);
    let systemd = Nss::new(&f, "passwd: systemd\ngroup: systemd\n");

    let systemd_line = |argv: &[&str]| -> String {
        let out = with_private_userdb(&systemd, &userdb_dir, argv);
        out.assert_code(0, &format!("nss-systemd: {}", argv.join(" ")));
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "nss-systemd {}: {lines:?}", argv.join(" "));
        lines[0].to_owned()
    };
    for (key, line) in [
        ("carol", CAROL_LINE),
        ("5001", CAROL_LINE),
        ("dina", DINA_LINE),
        ("filesuser", FILESUSER_LINE),
    ] {
        assert_line(
            &format!("nss-systemd getent passwd {key}"),
            &systemd_line(&["getent", "passwd", key]),
            line,
        );
    }
    let wheel = systemd_line(&["getent", "group", "wheel"]);
    assert!(wheel.starts_with("wheel:x:10:"), "{wheel}");
    assert_eq!(
        members(&wheel),
        set_of(&["filesuser", "dina", "carol"]),
        "nss-systemd getent group wheel"
    );
    assert_line(
        "nss-systemd getent group svcgroup",
        &systemd_line(&["getent", "group", "svcgroup"]),
        &format!("svcgroup:x:{SVCGROUP_GID}:carol,dave"),
    );
    for (name, groups, gids) in [
        (
            "carol",
            &["5001(carol)", "10(wheel)", "5100(svcgroup)"][..],
            &[10, SVCGROUP_GID][..],
        ),
        ("dina", &["5300(dina)", "10(wheel)"], &[10]),
        (
            "filesuser",
            &["1000(filesuser)", "4(adm)", "10(wheel)"],
            &[4, 10],
        ),
    ] {
        let id = systemd_line(&["id", name]);
        assert_eq!(id_groups(&id), set_of(groups), "nss-systemd: {id}");
        let initgroups = systemd_line(&["getent", "initgroups", name]);
        let listed: Vec<&str> = initgroups.split_whitespace().skip(1).collect();
        let expected: Vec<String> = gids.iter().map(u32::to_string).collect();
        assert_eq!(
            listed.iter().copied().collect::<BTreeSet<_>>(),
            expected.iter().map(String::as_str).collect::<BTreeSet<_>>(),
            "nss-systemd: {initgroups}"
        );
        assert_eq!(listed.len(), gids.len(), "a gid listed twice: {initgroups}");
    }
    // Without the private /run, nss-systemd knows none of them: the answers
    // above came through the broker. (userdbctl, from systemd-userdbd, is
    // not installed here, so only nss-systemd is checked as a client.)
    for name in ["carol", "dina", "filesuser"] {
        let out = systemd.run(&["getent", "passwd", name]);
        assert_eq!(out.code(), Some(2), "{name}: {}", out.describe());
    }
}

/// `userdb-brokerctl` against `broker`, optionally as nobody.
fn brokerctl(broker: &Broker, args: &[&str], as_nobody: bool) -> Outcome {
    let mut command = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(artifacts::brokerctl());
        c
    } else {
        Command::new(artifacts::brokerctl())
    };
    command.arg("--socket").arg(broker.socket()).args(args);
    process::run(command, Duration::from_secs(10))
}

#[test]
fn a_miss_while_a_source_is_down_is_no_miss() {
    let _serial = exclusive();
    let f = fixture();
    let _hung = FakeBroker::start(&service_path(&f, DIRECTORY), Behaviour::NeverAnswer);
    let broker = broker_with(&f, &[DIRECTORY]);
    let nss = Nss::new(&f, BROKER_ONLY);
    // The first look-up times out on the service and opens its breaker;
    // from then on the service is down for every look-up.
    for _ in 0..2 {
        let miss = probe_time(&nss, &["passwd:nosuchuser"]);
        assert!(
            miss[0].answer.starts_with("error "),
            "a miss beside a down source must not be NOTFOUND: {}",
            miss[0].answer
        );
    }
    let ctl = brokerctl(&broker, &["user", "nosuchuser"], false);
    ctl.assert_code(4, "userdb-brokerctl user, a source down");
    assert!(
        ctl.stderr.contains("could not be asked"),
        "{}",
        ctl.describe()
    );
    let found = brokerctl(&broker, &["user", "filesuser"], false);
    found.assert_code(0, "userdb-brokerctl user of a files user, a source down");
    println!("sources | miss beside a down service | module UNAVAIL, brokerctl exit 4");
}

#[test]
fn flush_drops_the_services_cached_answers_for_root_only() {
    let _serial = exclusive();
    let f = fixture();
    let directory = UserdbService::start(&f, DIRECTORY, directory(), Flaw::None);
    let broker = broker_with(&f, &[DIRECTORY]);
    let asked_for_carol = || {
        directory
            .calls()
            .iter()
            .filter(|c| c["parameters"]["userName"] == "carol")
            .count()
    };
    let nss = Nss::new(&f, BROKER_ONLY);
    let lookup = || assert_found(&probe_time(&nss, &["passwd:carol"])[0], CAROL_LINE);
    lookup();
    lookup();
    assert_eq!(
        asked_for_carol(),
        1,
        "the second look-up was answered from the cache"
    );
    let denied = brokerctl(&broker, &["flush"], true);
    denied.assert_code(1, "userdb-brokerctl flush as nobody");
    assert!(
        denied.stderr.contains("PermissionDenied"),
        "{}",
        denied.describe()
    );
    lookup();
    assert_eq!(asked_for_carol(), 1, "nobody's flush dropped the cache");
    brokerctl(&broker, &["flush"], false).assert_code(0, "userdb-brokerctl flush as root");
    lookup();
    assert_eq!(
        asked_for_carol(),
        2,
        "after the flush the service is asked again"
    );
}
