//! What a careless administrator or a hostile package can put on disk:
//! FIFOs and links to devices where records belong, files of gigabytes,
//! records that conflict across sources or within one file, names that are
//! not UTF-8. Whatever is there, the broker keeps serving everything else,
//! its watcher keeps seeing changes, and no record answers for another.
//!
//! Figures print on `hostile-files | ...` lines (`--nocapture`).

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use userdb_broker_tests::fixture::{
    make_fifo, plain_passwd_line, plain_user, BASE_GROUP, BASE_PASSWD,
};
use userdb_broker_tests::nss::{BROKER_ONLY, FILES_THEN_BROKER};
use userdb_broker_tests::{exclusive, process, Broker, DropinDir, Fixture, Nss, Outcome};

/// glibc's `files` alone: what the broker must agree with.
const FILES_ONLY: &str = "\
passwd: files
group: files
shadow: files
gshadow: files
";

/// The README's promise for a change on disk.
const CHANGE_SERVED: Duration = Duration::from_secs(1);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Adds drop-in user `name` and waits until the broker serves it: the
/// watcher is alive and sees changes. How long it took, if within the bound.
fn change_served(f: &Fixture, nss: &Nss, name: &str, uid: u32) -> Option<Duration> {
    f.dropin_user(DropinDir::Etc, &plain_user(name, uid));
    nss.wait_for(
        &["getent", "passwd", name],
        Some(&plain_passwd_line(name, uid)),
        CHANGE_SERVED * 3,
    )
}

fn assert_change_served(what: &str, served: Option<Duration>) {
    assert!(
        served.is_some_and(|d| d <= CHANGE_SERVED),
        "{what}: a later change was served {}",
        served.map_or("never (within 3 s)".to_owned(), |d| format!(
            "after {:.0} ms (bound {CHANGE_SERVED:?})",
            ms(d)
        ))
    );
}

fn served_text(served: Option<Duration>) -> String {
    served.map_or("never".to_owned(), |d| format!("{:.0} ms", ms(d)))
}

/// Runs `check` with the module answering from the broker's snapshot file,
/// then again with the file removed (through the socket): both must hold.
fn on_both_paths(f: &Fixture, mut check: impl FnMut(&str)) {
    check("file");
    f.remove_snapshot();
    check("socket");
}

/// Runs `argv` (which may hold bytes that are not UTF-8) in `nss`'s namespace.
fn run_raw(nss: &Nss, argv: &[&[u8]]) -> Outcome {
    let argv: Vec<&std::ffi::OsStr> = argv
        .iter()
        .map(|a| std::ffi::OsStr::from_bytes(a))
        .collect();
    process::run(nss.command(&argv), Duration::from_secs(30))
}

#[test]
fn a_fifo_among_the_dropins_at_start_neither_blocks_the_start_nor_hides_the_rest() {
    let _serial = exclusive();
    let f = Fixture::new();
    f.dropin_user(DropinDir::Etc, &plain_user("alice", 1001));
    let fifo = f.dropin_path(DropinDir::Etc, "x.user");
    make_fifo(&fifo);
    let started = Instant::now();
    let broker = Broker::start(&f);
    let ready = started.elapsed();
    let nss = Nss::new(&f, BROKER_ONLY);
    let logged = broker
        .log()
        .lines()
        .any(|l| l.contains(&fifo.display().to_string()) && l.contains("FIFO"));
    println!(
        "hostile-files | FIFO x.user in etc/userdb at start | ready after {:.0} ms | logged: {logged}",
        ms(ready)
    );
    nss.expect_line(
        &["getent", "passwd", "alice"],
        plain_passwd_line("alice", 1001),
    );
    nss.expect_not_found(&["getent", "passwd", "x"]);
    assert!(
        logged,
        "no log line names the FIFO {}:\n{}",
        fifo.display(),
        broker.log()
    );
    assert_change_served(
        "after a FIFO at start",
        change_served(&f, &nss, "later", 1002),
    );
}

#[test]
fn fifos_appearing_later_as_dropin_companion_or_etc_group_block_nothing() {
    let _serial = exclusive();
    let f = Fixture::new();
    f.dropin_user(DropinDir::Etc, &plain_user("alice", 1001));
    f.dropin_user(DropinDir::Etc, &plain_user("bob", 1002));
    let mut broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    let etc_group_fifo = f.etc_path("group.fifo");
    let cases = [
        (
            "a FIFO as drop-in late.user",
            f.dropin_path(DropinDir::Etc, "late.user"),
        ),
        (
            "a FIFO as alice.user-privileged",
            f.dropin_path(DropinDir::Etc, "alice.user-privileged"),
        ),
        ("a FIFO renamed over etc/group", etc_group_fifo.clone()),
    ];
    for (i, (case, fifo)) in cases.iter().enumerate() {
        make_fifo(fifo);
        if *fifo == etc_group_fifo {
            f.rename_over_etc("group", fifo);
        }
        let served = change_served(&f, &nss, &format!("probe{i}"), 2000 + i as u32);
        println!(
            "hostile-files | {case} while running | a later change served after {}",
            served_text(served)
        );
        assert_change_served(case, served);
        nss.expect_line(&["getent", "passwd", "bob"], plain_passwd_line("bob", 1002));
        nss.expect_line(&["getent", "passwd", "filesuser"], BASE_PASSWD[5]);
    }
    // etc/group that is now a FIFO keeps its last good content.
    nss.expect_line(&["getent", "group", "wheel"], BASE_GROUP[5]);
    assert!(broker.is_running(), "the broker died:\n{}", broker.log());
}

#[test]
fn a_link_to_the_brokers_own_stdin_pipe_blocks_nothing() {
    let _serial = exclusive();
    let f = Fixture::new();
    f.dropin_user(DropinDir::Etc, &plain_user("alice", 1001));
    f.dropin_link(DropinDir::Etc, "stdin.user", "/proc/self/fd/0");
    let started = Instant::now();
    let broker = Broker::launch(&f).stdin_pipe().start();
    let ready = started.elapsed();
    let nss = Nss::new(&f, BROKER_ONLY);
    nss.expect_line(
        &["getent", "passwd", "alice"],
        plain_passwd_line("alice", 1001),
    );
    f.dropin_link(DropinDir::Etc, "later-stdin.user", "/proc/self/fd/0");
    let served = change_served(&f, &nss, "later", 1002);
    println!(
        "hostile-files | stdin.user -> /proc/self/fd/0 with stdin a pipe | ready after {:.0} ms | another such link later, then a change served after {}",
        ms(ready),
        served_text(served)
    );
    assert_change_served("after links to stdin", served);
    drop(broker);
}

/// `etc/group` as the issue found it: 2 GiB of holes, then one line.
fn write_huge_group(path: &Path) -> u64 {
    let mut file = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let holes = 2u64 << 30;
    file.set_len(holes)
        .unwrap_or_else(|e| panic!("truncate {}: {e}", path.display()));
    file.seek(SeekFrom::End(0))
        .unwrap_or_else(|e| panic!("seek {}: {e}", path.display()));
    file.write_all(b"big:x:7777:\n")
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    holes + 12
}

#[test]
fn an_etc_file_of_gigabytes_is_refused_at_once_and_the_last_good_content_kept() {
    let _serial = exclusive();
    let f = Fixture::new();
    let mut broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    let before = broker.proc_status();
    broker.reset_peak_memory();
    let staging = f.etc_path("group.huge");
    let size = write_huge_group(&staging);
    let started = Instant::now();
    f.rename_over_etc("group", &staging);
    let refused = broker.wait_for_log(Duration::from_secs(5), |l| {
        l.contains("etc/group") && l.contains("larger than")
    });
    let took = started.elapsed();
    let after = broker.proc_status();
    let log_bytes = broker.log().len();
    let longest_line = broker.log().lines().map(str::len).max().unwrap_or(0);
    println!(
        "hostile-files | etc/group replaced by a {size}-byte sparse file | refused after {:.0} ms: {} | broker peak {:.1} MB (was {:.1} MB) | log {log_bytes} bytes, longest line {longest_line}",
        ms(took),
        refused.is_some(),
        after.hwm_kib as f64 / 1024.0,
        before.rss_kib as f64 / 1024.0,
    );
    assert!(
        refused.is_some() && took < CHANGE_SERVED,
        "the 2 GiB etc/group was not refused within {CHANGE_SERVED:?}:\n{}",
        broker.log()
    );
    assert!(
        after.hwm_kib < before.rss_kib + 16 * 1024,
        "refusing the file cost {} KiB of memory",
        after.hwm_kib - before.rss_kib
    );
    assert!(longest_line < 1024, "a log line of {longest_line} bytes");
    nss.expect_line(&["getent", "group", "wheel"], BASE_GROUP[5]);
    nss.expect_not_found(&["getent", "group", "big"]);
    assert_change_served(
        "after the huge etc/group",
        change_served(&f, &nss, "later", 1002),
    );
    // Once a sane file is back, it is read again.
    let mut lines = BASE_GROUP.to_vec();
    lines.push("after:x:7778:");
    f.replace_etc_file("group", &lines);
    let back = nss.wait_for(
        &["getent", "group", "after"],
        Some("after:x:7778:"),
        CHANGE_SERVED * 3,
    );
    assert!(
        back.is_some_and(|d| d <= CHANGE_SERVED),
        "a sane etc/group after the huge one was served {}",
        served_text(back)
    );
    assert!(broker.is_running(), "the broker died:\n{}", broker.log());
}

/// The supplementary groups `id NAME` prints, as `gid(name)` strings.
fn id_groups(nss: &Nss, user: &str) -> Vec<String> {
    let line = nss.one_line(&["id", user]);
    line.split_once("groups=")
        .map(|(_, groups)| groups.split(',').map(str::to_owned).collect())
        .unwrap_or_default()
}

#[test]
fn a_group_record_that_loses_by_priority_contributes_no_members() {
    let _serial = exclusive();
    let f = Fixture::new();
    f.dropin_user(DropinDir::Etc, &plain_user("alice", 1001));
    f.dropin_user(DropinDir::Etc, &plain_user("mallory", 1666));
    f.dropin_membership(DropinDir::Etc, "alice", "wheel");
    // Loses to /etc/group's wheel:x:10: by priority, with another gid.
    f.dropin_group(
        DropinDir::Etc,
        &json!({ "groupName": "wheel", "gid": 5000, "members": ["mallory"] }),
    );
    let _broker = Broker::start(&f);
    on_both_paths(&f, |path| {
        for conf in [FILES_THEN_BROKER, BROKER_ONLY] {
            let nss = Nss::new(&f, conf);
            let wheel = nss.one_line(&["getent", "group", "wheel"]);
            let mallory = id_groups(&nss, "mallory");
            println!(
                "hostile-files | drop-in wheel.group gid 5000 listing mallory beside etc/group's wheel:x:10: | [{}] ({path}) getent group wheel: {wheel} | id mallory groups: {mallory:?}",
                nss.label()
            );
            assert_eq!(
                wheel,
                "wheel:x:10:filesuser,alice",
                "[{}] ({path})",
                nss.label()
            );
            assert!(
                !mallory
                    .iter()
                    .any(|g| g.starts_with("10(") || g.starts_with("5000(")),
                "[{}] ({path}) mallory is in wheel through the losing record: {mallory:?}",
                nss.label()
            );
        }
        Nss::new(&f, BROKER_ONLY).expect_not_found(&["getent", "group", "5000"]);
    });
}

/// Runs each command under `files` alone and under the broker alone (from
/// its file, then through its socket) and asserts the broker prints the
/// same, with the same exit code.
fn assert_like_files(f: &Fixture, commands: &[&[&str]]) {
    let files = Nss::new(f, FILES_ONLY);
    let broker = Nss::new(f, BROKER_ONLY);
    let wanted: Vec<Outcome> = commands.iter().map(|argv| files.run(argv)).collect();
    on_both_paths(f, |path| {
        for (argv, want) in commands.iter().zip(&wanted) {
            let got = broker.run(argv);
            println!(
                "hostile-files | {} | files: {:?} | broker ({path}): {:?}",
                argv.join(" "),
                want.stdout.trim_end(),
                got.stdout.trim_end()
            );
            assert_eq!(
                (got.code(), got.stdout.as_str()),
                (want.code(), want.stdout.as_str()),
                "{} ({path}): the broker differs from files",
                argv.join(" ")
            );
        }
    });
}

#[test]
fn duplicate_group_names_give_each_line_its_own_members() {
    let _serial = exclusive();
    let f = Fixture::new();
    for (name, uid) in [("x1", 1104), ("x2", 1105)] {
        f.passwd_line(&format!("{name}:x:{uid}:{uid}::/home/{name}:/bin/sh"));
    }
    let mut groups = BASE_GROUP.to_vec();
    groups.extend(["dupg:x:1004:x1", "dupg:x:1005:x2"]);
    f.replace_etc_file("group", &groups);
    let _broker = Broker::start(&f);
    assert_like_files(
        &f,
        &[
            &["id", "x1"],
            &["id", "x2"],
            &["getent", "group", "dupg"],
            &["getent", "group", "1005"],
        ],
    );
}

#[test]
fn duplicate_user_names_and_uids_in_etc_passwd_are_found_as_files_finds_them() {
    let _serial = exclusive();
    let f = Fixture::new();
    for line in [
        "dup:x:3020:3020::/home/dup1:/bin/sh",
        "dup:x:3021:3021::/home/dup2:/bin/sh",
        "same1:x:3022:3022::/home/same1:/bin/sh",
        "same2:x:3022:3022::/home/same2:/bin/sh",
    ] {
        f.passwd_line(line);
    }
    let _broker = Broker::start(&f);
    assert_like_files(
        &f,
        &[
            &["getent", "passwd", "dup"],
            &["getent", "passwd", "3020"],
            &["getent", "passwd", "3021"],
            &["getent", "passwd", "same1"],
            &["getent", "passwd", "same2"],
            &["getent", "passwd", "3022"],
        ],
    );
}

#[test]
fn an_invalid_member_or_a_relative_home_does_not_drop_the_whole_entry() {
    let _serial = exclusive();
    let f = Fixture::new();
    f.passwd_line("rel:x:3010:3010::relhome:/bin/sh");
    let mut groups = BASE_GROUP.to_vec();
    groups.push("odd:x:3011:ok,-bad,also");
    f.replace_etc_file("group", &groups);
    let _broker = Broker::start(&f);
    assert_like_files(
        &f,
        &[&["getent", "passwd", "rel"], &["getent", "passwd", "3010"]],
    );
    let nss = Nss::new(&f, BROKER_ONLY);
    let odd = nss.one_line(&["getent", "group", "odd"]);
    println!("hostile-files | odd:x:3011:ok,-bad,also | broker: {odd}");
    assert_eq!(
        odd, "odd:x:3011:ok,also",
        "the group or its valid members lost"
    );
}

#[test]
fn names_that_are_not_utf8_are_never_served_as_replacement_characters() {
    let _serial = exclusive();
    let f = Fixture::new();
    let mut passwd: Vec<u8> = BASE_PASSWD
        .iter()
        .flat_map(|l| format!("{l}\n").into_bytes())
        .collect();
    passwd.extend_from_slice(b"latin\xe9:x:2001:2001::/home/a:/bin/sh\n");
    passwd.extend_from_slice(b"latin\xe8:x:2002:2002::/home/b:/bin/sh\n");
    // Only the real name is Latin-1: the user exists, whatever its name says.
    passwd.extend_from_slice(b"jose:x:2005:2005:Jos\xe9:/home/jose:/bin/sh\n");
    f.replace_etc_bytes("passwd", &passwd);
    let mut group: Vec<u8> = BASE_GROUP
        .iter()
        .flat_map(|l| format!("{l}\n").into_bytes())
        .collect();
    group.extend_from_slice(b"gr\xe9:x:2003:\n");
    group.extend_from_slice(b"members:x:2004:ok,m\xe9\n");
    f.replace_etc_bytes("group", &group);
    let _broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    on_both_paths(&f, |path| {
        let passwd = nss.run_ok(&["getent", "passwd"]);
        let groups = nss.run_ok(&["getent", "group"]);
        let names_replaced: Vec<&String> = passwd
            .iter()
            .chain(&groups)
            .filter(|l| l.split(':').next().is_some_and(|n| n.contains('\u{fffd}')))
            .collect();
        let jose = nss.run(&["getent", "passwd", "jose"]);
        let members = nss.run(&["getent", "group", "members"]);
        println!(
            "hostile-files | latin\\xe9 and latin\\xe8 in etc/passwd, gr\\xe9 in etc/group | broker ({path}) lists {} users, {} groups, {} names with U+FFFD | jose (real name Jos\\xe9): {:?} | members (ok,m\\xe9): {:?}",
            passwd.len(),
            groups.len(),
            names_replaced.len(),
            jose.stdout.trim_end(),
            members.stdout.trim_end(),
        );
        assert!(
            names_replaced.is_empty(),
            "({path}) names served with U+FFFD: {names_replaced:?}"
        );
        jose.assert_code(
            0,
            "[broker] getent passwd jose: a Latin-1 real name dropped the user",
        );
        assert!(
            jose.stdout.starts_with("jose:x:2005:2005:")
                && jose.stdout.trim_end().ends_with(":/home/jose:/bin/sh"),
            "{}",
            jose.describe()
        );
        members.assert_code(
            0,
            "[broker] getent group members: a member that is not UTF-8 dropped the group",
        );
        assert_eq!(members.stdout.trim_end(), "members:x:2004:ok");
        for uid in ["2001", "2002"] {
            nss.expect_not_found(&["getent", "passwd", uid]);
        }
        nss.expect_not_found(&["getent", "passwd", "latin\u{fffd}"]);
        nss.expect_not_found(&["getent", "group", "2003"]);
    });
    // files itself still serves both lines as they are, each once.
    let files = Nss::new(&f, FILES_THEN_BROKER);
    for (name, uid) in [(&b"latin\xe9"[..], "2001"), (&b"latin\xe8"[..], "2002")] {
        let out = run_raw(&files, &[b"getent", b"passwd", name]);
        assert_eq!(out.code(), Some(0), "{}", out.describe());
        assert!(
            out.stdout.contains(&format!(":x:{uid}:")),
            "{}",
            out.describe()
        );
    }
    let all = files.run_ok(&["getent", "passwd"]);
    let latin = all.iter().filter(|l| l.starts_with("latin")).count();
    assert_eq!(latin, 2, "[files then broker] getent passwd: {all:?}");
}

#[test]
fn a_privileged_companion_is_privileged_whatever_it_holds() {
    let _serial = exclusive();
    let f = Fixture::new();
    let hash = "$6$topsalt$TopLevelHashInACompanionOnlyRootMaySee";
    f.dropin_user(DropinDir::Etc, &plain_user("carol", 1003));
    f.dropin_raw(
        DropinDir::Etc,
        "carol.user-privileged",
        json!({ "hashedPassword": [hash] }).to_string().as_bytes(),
    );
    let broker = Broker::start(&f);
    let as_nobody = broker.user_record("carol", Some(userdb_broker_tests::nss::NOBODY));
    let as_root = broker.user_record("carol", None);
    let nobody_sees = as_nobody.to_string().contains(hash);
    let root_sees = as_root.to_string().contains(hash);
    println!(
        "hostile-files | carol.user-privileged with a top-level hashedPassword | nobody sees it: {nobody_sees} | root sees it: {root_sees}"
    );
    let in_file = std::fs::read(f.snapshot_path())
        .unwrap_or_else(|e| panic!("read {}: {e}", f.snapshot_path().display()))
        .windows(hash.len())
        .any(|w| w == hash.as_bytes());
    println!("hostile-files | the world-readable snapshot file holds the hash: {in_file}");
    assert!(!nobody_sees, "nobody got the companion's hash: {as_nobody}");
    assert!(!in_file, "the world-readable snapshot file holds the hash");
    assert!(
        root_sees,
        "root did not get the companion's hash: {as_root}"
    );
}
