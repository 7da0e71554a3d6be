//! The broker's socket and process: a deleted socket file comes back, a
//! socket some other user listens on is not believed, SIGHUP re-reads the
//! configuration and the sources (keeping the running configuration when
//! the new one is bad), a broken stderr never stops it.
//!
//! Figures print on `daemon | ...` lines (`--nocapture`).

use std::os::unix::fs::chown;
use std::time::{Duration, Instant};

use userdb_broker_tests::attacker::Forger;
use userdb_broker_tests::fixture::{plain_passwd_line, plain_user, BASE_PASSWD};
use userdb_broker_tests::nss::{BROKER_ONLY, NOBODY};
use userdb_broker_tests::{artifacts, exclusive, Broker, DropinDir, Fixture, Nss};
use userdb_proto::snapfile;

/// The README's promise for a change, and what a reload gets too.
const CHANGE_SERVED: Duration = Duration::from_secs(1);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn served_text(served: Option<Duration>) -> String {
    served.map_or("never".to_owned(), |d| format!("{:.0} ms", ms(d)))
}

#[test]
fn a_deleted_socket_file_is_created_again_and_served() {
    let _serial = exclusive();
    let f = Fixture::new();
    // Without the snapshot file, which would answer with the socket gone.
    let mut broker = Broker::launch(&f).socket_only().start();
    let nss = Nss::new(&f, BROKER_ONLY);
    std::fs::remove_file(broker.socket()).unwrap_or_else(|e| panic!("rm socket: {e}"));
    let deleted = Instant::now();
    let served = nss.wait_for(
        &["getent", "passwd", "root"],
        Some(BASE_PASSWD[0]),
        CHANGE_SERVED * 3,
    );
    println!(
        "daemon | socket file deleted while running | served again after {}",
        served_text(served)
    );
    assert!(
        served.is_some_and(|d| d <= CHANGE_SERVED),
        "the socket was not back within {CHANGE_SERVED:?} of {:?} ago",
        deleted.elapsed()
    );
    assert!(broker.is_running(), "the broker died:\n{}", broker.log());
}

#[test]
fn a_socket_or_snapshot_file_of_another_user_is_not_believed() {
    let _serial = exclusive();
    let f = Fixture::new();
    let dir = f.scratch().join("nobodys");
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap_or_else(|e| panic!("chown: {e}"));
    let socket = dir.join("io.userdb.Broker");
    // A real snapshot file whose root is forged, next to nobody's socket.
    let forged = Fixture::new();
    forged.replace_etc_file("passwd", &["root:x:0:0:FORGED:/root:/bin/sh"]);
    drop(Broker::start(&forged));
    let file = snapfile::path_for(&socket);
    std::fs::copy(forged.snapshot_path(), &file)
        .unwrap_or_else(|e| panic!("copy to {}: {e}", file.display()));
    chown(&file, Some(NOBODY), Some(NOBODY)).unwrap_or_else(|e| panic!("chown: {e}"));
    let forger = Forger::start(&socket, 20.0);
    let nss = Nss::new(&f, BROKER_ONLY).socket(&socket);
    let victim = nss.run_as(1000, &["getent", "passwd", "root"]);
    let as_root = nss.run(&["getent", "passwd", "root"]);
    // The listener's own user may believe it: the forger really answers.
    let own = nss.run_as(NOBODY, &["getent", "passwd", "root"]);
    drop(forger);
    // The same file owned by root is read: only its owner kept it out.
    chown(&file, Some(0), Some(0)).unwrap_or_else(|e| panic!("chown: {e}"));
    let roots_file = nss.run_as(1000, &["getent", "passwd", "root"]);
    println!(
        "daemon | USERDB_BROKER_SOCKET at a listener of uid {NOBODY} answering a forged root, its snapshot file forged too | uid 1000 got {:?} (exit {:?}) | root got {:?} (exit {:?}) | uid {NOBODY} itself got {:?} | the file chowned to root: uid 1000 got {:?}",
        victim.stdout.trim_end(),
        victim.code(),
        as_root.stdout.trim_end(),
        as_root.code(),
        own.stdout.trim_end(),
        roots_file.stdout.trim_end()
    );
    assert!(
        own.stdout.contains("FORGED") && roots_file.stdout.contains("FORGED"),
        "the forged socket or file was never read: the test proves nothing\n{}\n{}",
        own.describe(),
        roots_file.describe()
    );
    for (who, out) in [("uid 1000", &victim), ("root", &as_root)] {
        assert!(
            !out.stdout.contains("FORGED"),
            "{who} believed a socket or file of uid {NOBODY}\n{}",
            out.describe()
        );
        assert_eq!(out.code(), Some(2), "{who}\n{}", out.describe());
    }
}

/// Writes the broker's configuration file anew and sends SIGHUP.
fn reload(broker: &Broker, config: &str) {
    std::fs::write(broker.config_path(), config)
        .unwrap_or_else(|e| panic!("write {}: {e}", broker.config_path().display()));
    broker.signal(libc::SIGHUP);
}

/// `dual` in /etc/passwd and, with another home, as a drop-in: which one
/// wins shows which `order` is in force.
const DUAL_FILES: &str = "dual:x:3100:3100::/home/from-files:/bin/sh";

fn dual_dropin_line() -> String {
    plain_passwd_line("dual", 3100)
}

#[test]
fn sighup_rereads_configuration_and_sources_and_keeps_a_good_configuration_over_a_bad_one() {
    let _serial = exclusive();
    let f = Fixture::new();
    f.passwd_line(DUAL_FILES);
    f.dropin_user(DropinDir::Etc, &plain_user("dual", 3100));
    // A drop-in linked to a file outside the watched directories: only a
    // full re-read sees that file change.
    let outside = f.scratch().join("outside.json");
    let write_outside = |real_name: &str| {
        let mut record = plain_user("ext", 3101);
        record["realName"] = real_name.into();
        std::fs::write(&outside, record.to_string())
            .unwrap_or_else(|e| panic!("write {}: {e}", outside.display()));
    };
    write_outside("Before");
    f.dropin_link(DropinDir::Etc, "ext.user", &outside.display().to_string());
    let mut broker = Broker::launch(&f)
        .config("order = [\"files\", \"dropins\"]\n")
        .start();
    let nss = Nss::new(&f, BROKER_ONLY);
    nss.expect_line(&["getent", "passwd", "dual"], DUAL_FILES);

    reload(&broker, "order = [\"dropins\", \"files\"]\n");
    let new_order = nss.wait_for(
        &["getent", "passwd", "dual"],
        Some(&dual_dropin_line()),
        CHANGE_SERVED * 3,
    );
    let survived_first = broker.is_running();
    assert!(
        survived_first,
        "SIGHUP ended the broker: {:?}\n{}",
        broker.exit_status(),
        broker.log()
    );

    write_outside("After");
    let ext_after = "ext:x:3101:3101:After:/home/ext:/bin/sh";
    // inotify does not see the file behind the link; the periodic rescan
    // is minutes away. Only the reload can make it visible now.
    std::thread::sleep(Duration::from_millis(500));
    let before_reload = nss.run(&["getent", "passwd", "ext"]);
    reload(&broker, "order = [\"dropins\", \"files\"]\n");
    let sources_reread = nss.wait_for(
        &["getent", "passwd", "ext"],
        Some(ext_after),
        CHANGE_SERVED * 3,
    );

    reload(&broker, "order = \"not a list\"\nno_such_key = 1\n");
    let refused = broker.wait_for_log(Duration::from_secs(3), |l| {
        l.contains("reload failed") && l.contains("keeping")
    });
    std::thread::sleep(Duration::from_millis(300));
    let after_bad = nss.run(&["getent", "passwd", "dual"]);
    let running = broker.is_running();
    println!(
        "daemon | SIGHUP | running after it: {survived_first} | new order served after {} | a change behind a link served after {} (before the reload: {:?}) | bad configuration: logged {:?}, still running: {running}, dual now {:?}",
        served_text(new_order),
        served_text(sources_reread),
        before_reload.stdout.trim_end(),
        refused.as_deref().unwrap_or("nothing"),
        after_bad.stdout.trim_end()
    );
    assert!(
        new_order.is_some_and(|d| d <= CHANGE_SERVED),
        "the new order was not served within {CHANGE_SERVED:?} of SIGHUP"
    );
    assert!(
        before_reload.stdout.contains(":Before:"),
        "the change behind the link was seen before any reload: the test proves nothing\n{}",
        before_reload.describe()
    );
    assert!(
        sources_reread.is_some_and(|d| d <= CHANGE_SERVED),
        "SIGHUP did not re-read the sources within {CHANGE_SERVED:?}"
    );
    assert!(
        running,
        "a bad configuration ended the broker:\n{}",
        broker.log()
    );
    assert!(
        refused.is_some(),
        "the bad configuration was not reported:\n{}",
        broker.log()
    );
    assert_eq!(
        after_bad.stdout.trim_end(),
        dual_dropin_line(),
        "the running configuration was not kept"
    );
    assert!(broker.socket().exists(), "the socket is gone");
}

#[test]
fn the_shipped_unit_reloads_with_sighup_and_raises_the_descriptor_limit() {
    let unit = artifacts::workspace_root().join("packaging/systemd/userdb-brokerd.service");
    let text =
        std::fs::read_to_string(&unit).unwrap_or_else(|e| panic!("read {}: {e}", unit.display()));
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
    };
    println!(
        "daemon | {} | ExecReload={:?} | LimitNOFILE={:?}",
        unit.display(),
        value("ExecReload"),
        value("LimitNOFILE")
    );
    assert!(
        value("ExecReload").is_some_and(|v| v.contains("-HUP") && v.contains("$MAINPID")),
        "the unit has no ExecReload= sending SIGHUP"
    );
    assert_eq!(
        value("LimitNOFILE"),
        Some("65536"),
        "the unit does not set the descriptor limit the flood tests run the broker at"
    );
}

#[test]
fn a_broken_stderr_never_stops_the_broker() {
    let _serial = exclusive();
    let f = Fixture::new();
    let mut broker = Broker::launch(&f).broken_stderr().socket_only().start();
    let nss = Nss::new(&f, BROKER_ONLY);
    // Things that log: a broken drop-in, a reload, then more changes.
    f.dropin_raw(DropinDir::Etc, "broken.user", b"{ not json");
    broker.signal(libc::SIGHUP);
    f.dropin_user(DropinDir::Etc, &plain_user("late", 3200));
    let served = nss.wait_for(
        &["getent", "passwd", "late"],
        Some(&plain_passwd_line("late", 3200)),
        CHANGE_SERVED * 3,
    );
    let running = broker.is_running();
    println!(
        "daemon | stderr a pipe nobody reads | running after several log lines: {running} | a change served after {}",
        served_text(served)
    );
    assert!(running, "the broker died of a broken stderr");
    assert!(served.is_some(), "the broker stopped serving");
    nss.expect_line(&["getent", "passwd", "root"], BASE_PASSWD[0]);
}
