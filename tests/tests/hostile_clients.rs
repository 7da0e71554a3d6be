//! A hostile local user against the broker: connection floods, descriptor
//! exhaustion, listings asked for and never read. The attacker is nobody
//! (`setpriv`), bounded in time and in connections; the broker runs at a
//! service's descriptor limit (`prlimit`). Whatever the attacker does,
//! root's look-ups are all answered, and rightly; a new client is answered
//! within 50 ms while the attack goes on; the broker's threads and memory
//! stay within the bounds its design states:
//!
//! - threads: the main thread (which runs the event loop), the workers
//!   (4 by default), the watcher and the signal thread;
//! - memory: per connection at most a request being read (64 KiB) and the
//!   part of a listing produced ahead of the client (64 KiB).
//!
//! Local look-ups are answered from the snapshot file without the socket,
//! so a flood cannot reach them at all; these tests turn the file off
//! (`socket_only`) wherever the server itself is under test, as it is for
//! everything the file cannot answer (Varlink sources, systemd's clients,
//! a host where the file is missing).
//!
//! Each test prints its figures on one `hostile | ...` line (`--nocapture`).

use std::time::{Duration, Instant};

use userdb_broker_tests::attacker::{self, Connections};
use userdb_broker_tests::fixture::BASE_PASSWD;
use userdb_broker_tests::nss::BROKER_ONLY;
use userdb_broker_tests::population::passwd_lines;
use userdb_broker_tests::probe::{self, WatchReport};
use userdb_broker_tests::{exclusive, process, Broker, Fixture, Nss, ProcStatus};

/// `LimitNOFILE=` of the shipped unit.
const UNIT_NOFILE: u64 = 65_536;

/// The unit's limit, or the most this machine lets the test give (the
/// broker's capacity is the same at either: `MAX_CONNECTIONS`).
fn unit_nofile() -> u64 {
    process::allowed_nofile(UNIT_NOFILE)
}
/// What a unit without `LimitNOFILE=` gets: systemd's default soft limit.
const SYSTEMD_DEFAULT_NOFILE: u64 = 1024;
/// The broker's defaults: connections, workers, descriptors kept back.
const MAX_CONNECTIONS: u64 = 4096;
const WORKERS: u64 = 4;
const RESERVED_FDS: u64 = 256;
/// Main thread (the event loop), workers, watcher, signals.
const BROKER_THREADS: u64 = 1 + WORKERS + 1 + 1;
/// The most one connection may hold: a request being read and the part of
/// a listing produced ahead of the client.
const PER_CONNECTION_KIB: u64 = 64 + 64;
/// How long each attack lasts.
const ATTACK_SECONDS: f64 = 10.0;
/// A new client must be answered within this, during the attack.
const NEW_CLIENT_MS: f64 = 50.0;

const ROOT_LOOKUPS: [&str; 2] = ["passwd:root=0", "group:root=0"];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Connections the broker can hold at descriptor limit `nofile`.
fn capacity(nofile: u64) -> u64 {
    MAX_CONNECTIONS.min(nofile - RESERVED_FDS)
}

/// What was seen of the broker while an attack went on.
#[derive(Debug, Default)]
struct DuringAttack {
    most_threads: u64,
    most_rss_kib: u64,
    most_fds: usize,
    /// Each new client's look-up time.
    new_clients: Vec<Duration>,
    /// What new clients got instead of root.
    new_client_failures: Vec<String>,
}

impl DuringAttack {
    fn slowest_new_client(&self) -> Duration {
        self.new_clients.iter().copied().max().unwrap_or_default()
    }
}

/// Until `until`: samples the broker's threads, memory and descriptors
/// every 100 ms, and every 500 ms starts a new client (a fresh process)
/// that looks root up.
fn observe(broker: &Broker, nss: &Nss, until: Instant) -> DuringAttack {
    let mut seen = DuringAttack::default();
    let mut next_client = Instant::now();
    while Instant::now() < until {
        let status = broker.proc_status();
        seen.most_threads = seen.most_threads.max(status.threads);
        seen.most_rss_kib = seen.most_rss_kib.max(status.rss_kib);
        seen.most_fds = seen.most_fds.max(broker.open_fds());
        if Instant::now() >= next_client {
            let run = probe::time(nss, &["passwd:root"]);
            let lookup = run.first();
            if !lookup.answer.starts_with("found root:x:0:0:") {
                seen.new_client_failures.push(format!(
                    "{} after {:.1} ms",
                    lookup.answer,
                    ms(lookup.took)
                ));
            }
            seen.new_clients.push(lookup.took);
            next_client = Instant::now() + Duration::from_millis(500);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    seen
}

/// Waits until the broker holds more than `count` descriptors: the attack
/// has reached it.
fn wait_for_descriptors(broker: &Broker, count: usize) {
    let started = Instant::now();
    while broker.open_fds() <= count {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the attack never reached the broker: {} descriptors open",
            broker.open_fds()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_all_right(who: &str, report: &WatchReport) {
    assert!(report.lookups > 0, "{who}: no look-up ran");
    assert_eq!(
        report.bad(),
        0,
        "{who}: {} failed, {} not found, {} wrong of {} look-ups: {:?}",
        report.failed,
        report.not_found,
        report.wrong,
        report.lookups,
        report.problems
    );
}

fn assert_bounded(seen: &DuringAttack, before: ProcStatus, connections: u64) {
    assert!(
        seen.new_client_failures.is_empty(),
        "new clients during the attack did not get root: {:?}",
        seen.new_client_failures
    );
    assert!(
        seen.most_threads <= BROKER_THREADS,
        "the broker ran {} threads (bound {BROKER_THREADS})",
        seen.most_threads
    );
    let bound_kib = before.rss_kib + connections * PER_CONNECTION_KIB;
    assert!(
        seen.most_rss_kib <= bound_kib,
        "the broker grew to {:.1} MiB resident (bound {:.1} MiB: {:.1} MiB before + {connections} connections × {PER_CONNECTION_KIB} KiB)",
        mib(seen.most_rss_kib),
        mib(bound_kib),
        mib(before.rss_kib)
    );
    assert!(
        seen.slowest_new_client() < Duration::from_secs_f64(NEW_CLIENT_MS / 1000.0),
        "a new client waited {:.1} ms during the attack (bound {NEW_CLIENT_MS} ms; all: {:?})",
        ms(seen.slowest_new_client()),
        seen.new_clients
    );
}

/// One flood from nobody while root looks up in a loop; returns what the
/// root watcher, the observer and the attacker saw.
fn flood_and_watch(
    broker: &Broker,
    nss: &Nss,
    count: usize,
    connections: Connections,
) -> (WatchReport, DuringAttack, attacker::FloodReport, ProcStatus) {
    let before = broker.proc_status();
    let fds_before = broker.open_fds();
    broker.reset_peak_memory();
    let started = Instant::now();
    let flood = attacker::flood(broker.socket(), count, ATTACK_SECONDS, connections);
    wait_for_descriptors(broker, fds_before + 200);
    let left = ATTACK_SECONDS - 1.0 - started.elapsed().as_secs_f64();
    let root = probe::watch(nss, left, &ROOT_LOOKUPS);
    let seen = observe(broker, nss, Instant::now() + Duration::from_secs_f64(left));
    let root = root.finish();
    let flood = flood.finish();
    (root, seen, flood, before)
}

#[test]
fn a_connection_flood_from_nobody_leaves_root_lookups_right_and_the_broker_bounded() {
    let _serial = exclusive();
    let f = Fixture::new();
    let nofile = unit_nofile();
    let mut broker = Broker::launch(&f).nofile(nofile).socket_only().start();
    let nss = Nss::new(&f, BROKER_ONLY);
    let count = 6000;
    let (root, seen, flood, before) = flood_and_watch(&broker, &nss, count, Connections::Idle);
    let after = broker.proc_status();
    println!(
        "hostile | flood {count} conns uid 65534 for {ATTACK_SECONDS} s, nofile {nofile} | {} connects, {} closed by the broker | root lookups {} failed {} not-found {} wrong of {}, slowest {:.1} ms | max new-client {:.1} ms ({} clients, {} failed, bound {NEW_CLIENT_MS} ms) | threads {} (bound {BROKER_THREADS}) | rss {:.1} MB before, {:.1} MB max, hwm {:.1} MB (bound {:.1} MB) | fds max {}",
        flood.connects,
        flood.closed_by_peer,
        root.failed,
        root.not_found,
        root.wrong,
        root.lookups,
        ms(root.slowest),
        ms(seen.slowest_new_client()),
        seen.new_clients.len(),
        seen.new_client_failures.len(),
        seen.most_threads,
        mib(before.rss_kib),
        mib(seen.most_rss_kib),
        mib(after.hwm_kib),
        mib(before.rss_kib + capacity(nofile) * PER_CONNECTION_KIB),
        seen.most_fds,
    );
    assert!(
        flood.connects > count as u64,
        "the attacker made only {} connections: no flood happened",
        flood.connects
    );
    assert_all_right("root during the flood", &root);
    assert_bounded(&seen, before, capacity(nofile));
    assert!(
        seen.most_fds as u64 <= capacity(nofile) + RESERVED_FDS,
        "the broker held {} descriptors, more than its {} connections and {RESERVED_FDS} reserved",
        seen.most_fds,
        capacity(nofile)
    );
    assert!(broker.is_running(), "the broker died:\n{}", broker.log());
}

#[test]
fn at_systemds_default_descriptor_limit_idle_connections_cannot_lock_others_out() {
    let _serial = exclusive();
    let f = Fixture::new();
    let mut broker = Broker::launch(&f)
        .nofile(SYSTEMD_DEFAULT_NOFILE)
        .socket_only()
        .start();
    let nss = Nss::new(&f, BROKER_ONLY);
    // More than the broker can hold at this limit: its cap and eviction must act.
    let count = 1000;
    let filesuser = probe::watch_as(&nss, 1000, ATTACK_SECONDS, &["passwd:filesuser=1000"]);
    let (root, seen, flood, before) = flood_and_watch(&broker, &nss, count, Connections::Idle);
    let filesuser = filesuser.finish();
    let capacity = capacity(SYSTEMD_DEFAULT_NOFILE);
    println!(
        "hostile | {count} idle conns uid 65534 for {ATTACK_SECONDS} s, nofile {SYSTEMD_DEFAULT_NOFILE} (capacity {capacity}) | {} connects, {} closed by the broker | root lookups {} failed {} not-found {} wrong of {}, slowest {:.1} ms | uid 1000 lookups {} bad of {} | max new-client {:.1} ms ({} clients, {} failed) | threads {} | rss {:.1} MB max | fds max {}",
        flood.connects,
        flood.closed_by_peer,
        root.failed,
        root.not_found,
        root.wrong,
        root.lookups,
        ms(root.slowest),
        filesuser.bad(),
        filesuser.lookups,
        ms(seen.slowest_new_client()),
        seen.new_clients.len(),
        seen.new_client_failures.len(),
        seen.most_threads,
        mib(seen.most_rss_kib),
        seen.most_fds,
    );
    assert!(
        flood.most >= capacity,
        "the attacker never held more than {} connections: the cap was not reached",
        flood.most
    );
    assert_all_right("root at 1024 descriptors", &root);
    assert_all_right("uid 1000 at 1024 descriptors", &filesuser);
    assert_bounded(&seen, before, capacity);
    assert!(
        (seen.most_fds as u64) < SYSTEMD_DEFAULT_NOFILE,
        "the broker ran out of descriptors ({} open)",
        seen.most_fds
    );
    assert!(broker.is_running(), "the broker died:\n{}", broker.log());
}

#[test]
fn out_of_descriptors_a_changed_file_keeps_its_last_good_content() {
    let _serial = exclusive();
    let f = Fixture::new();
    let mut broker = Broker::launch(&f).nofile(unit_nofile()).start();
    let nss = Nss::new(&f, BROKER_ONLY);
    nss.expect_line(&["getent", "passwd", "root"], BASE_PASSWD[0]);

    // Not one descriptor left (stdin, stdout and stderr take the three
    // below the limit), and /etc/passwd replaced: the watcher sees the
    // change and cannot open the file.
    broker.set_soft_nofile(3);
    let newcomer = "newcomer:x:2000:2000::/home/newcomer:/bin/sh";
    let mut lines = BASE_PASSWD.to_vec();
    lines.push(newcomer);
    f.replace_etc_file("passwd", &lines);
    let failure = broker.wait_for_log(Duration::from_secs(5), |line| {
        line.contains("passwd") && line.contains("Too many open files")
    });
    broker.set_soft_nofile(unit_nofile() as usize);
    let restored = Instant::now();
    assert!(
        failure.is_some(),
        "the watcher never failed to read etc/passwd:\n{}",
        broker.log()
    );

    let first = probe::time(&nss, &["passwd:root", "uid:0"]);
    let root = probe::watch(&nss, 1.5, &["passwd:root=0", "passwd:daemon=1"]).finish();
    let served = loop {
        let out = nss.run(&["getent", "passwd", "newcomer"]);
        if out.code() == Some(0) {
            break Some(restored.elapsed());
        }
        if restored.elapsed() > Duration::from_secs(5) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "hostile | etc/passwd replaced with no descriptor left | root just after: {} / {} in {:.1} ms | root and daemon for 1.5 s: {} bad of {} | the new content served {} (bound 2 s)",
        first.lookups[0].answer,
        first.lookups[1].answer,
        ms(first.total),
        root.bad(),
        root.lookups,
        served.map_or("never within 5 s".to_owned(), |d| format!("after {:.2} s", d.as_secs_f64())),
    );
    for lookup in &first.lookups {
        assert!(
            lookup.answer.starts_with("found root:x:0:0:"),
            "{} right after the descriptors came back: {}",
            lookup.query,
            lookup.answer
        );
    }
    assert_all_right("root after descriptor exhaustion", &root);
    assert!(
        served.is_some_and(|d| d <= Duration::from_secs(2)),
        "the change that could not be read while out of descriptors was not served within 2 s of them coming back"
    );
    assert!(broker.is_running(), "the broker died:\n{}", broker.log());
}

#[test]
fn listings_asked_for_and_never_read_cost_a_bounded_amount_of_memory() {
    let _serial = exclusive();
    let f = Fixture::new();
    let users = 100_000;
    let mut lines: Vec<String> = BASE_PASSWD.iter().map(|l| (*l).to_owned()).collect();
    lines.extend(passwd_lines("many", users));
    f.replace_etc_file("passwd", &lines);
    let mut broker = Broker::launch(&f)
        .nofile(unit_nofile())
        .socket_only()
        .start();
    let nss = Nss::new(&f, BROKER_ONLY);
    let count = 600;
    let (root, seen, flood, before) =
        flood_and_watch(&broker, &nss, count, Connections::UnreadListings);
    // Once the attacker is gone the memory must be given back.
    std::thread::sleep(Duration::from_secs(1));
    let after = broker.proc_status();
    let bound_kib = before.rss_kib + count as u64 * PER_CONNECTION_KIB;
    println!(
        "hostile | {count} unread listings of {users} users, uid 65534, for {ATTACK_SECONDS} s | {} connects | root lookups {} bad of {}, slowest {:.1} ms | max new-client {:.1} ms ({} failed) | threads {} | rss {:.1} MB before, {:.1} MB max ({:.0} KiB per connection), hwm {:.1} MB, {:.1} MB after (bound {:.1} MB)",
        flood.connects,
        root.bad(),
        root.lookups,
        ms(root.slowest),
        ms(seen.slowest_new_client()),
        seen.new_client_failures.len(),
        seen.most_threads,
        mib(before.rss_kib),
        mib(seen.most_rss_kib),
        seen.most_rss_kib.saturating_sub(before.rss_kib) as f64 / count as f64,
        mib(after.hwm_kib),
        mib(after.rss_kib),
        mib(bound_kib),
    );
    assert_all_right("root during unread listings", &root);
    assert_bounded(&seen, before, count as u64);
    assert!(
        after.hwm_kib <= bound_kib,
        "the broker's peak was {:.1} MiB (bound {:.1} MiB)",
        mib(after.hwm_kib),
        mib(bound_kib)
    );
    assert!(
        after.rss_kib <= bound_kib,
        "the broker still holds {:.1} MiB after the attacker left",
        mib(after.rss_kib)
    );
    assert!(broker.is_running(), "the broker died:\n{}", broker.log());
}

#[test]
fn connections_their_clients_closed_are_let_go_at_once() {
    let _serial = exclusive();
    let f = Fixture::new();
    let broker = Broker::launch(&f).socket_only().start();
    let nss = Nss::new(&f, BROKER_ONLY);
    let fds_before = broker.open_fds();
    // A few hundred look-ups, each on a connection of its own, all closed.
    let report = probe::watch(&nss, 1.0, &ROOT_LOOKUPS).finish();
    std::thread::sleep(Duration::from_millis(300));
    let fds_after = broker.open_fds();
    println!(
        "hostile | {} look-ups, each connection closed by its client | broker descriptors {fds_before} before, {fds_after} 300 ms after",
        report.lookups
    );
    assert_all_right("root", &report);
    assert!(
        fds_after <= fds_before,
        "the broker still holds {} connections its clients closed",
        fds_after - fds_before
    );
}
