//! Issue 2: the path `getent`/`id` → glibc → libnss_broker.so.2 →
//! userdb-brokerd → fixture files and userdb drop-ins, asserted on whole
//! output lines.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use userdb_broker_tests::fixture::{BASE_GROUP, BASE_PASSWD, BASE_SHADOW, FILESUSER_HASH};
use userdb_broker_tests::nss::{BROKER_ONLY, FILES_THEN_BROKER, NOBODY};
use userdb_broker_tests::populated::{
    big_members, dropin_group_lines, many_group_name, populated, User, ALICE, ALICE_HASH, BIG_GID,
    DAYS_19000_USEC, DEVS_GID, DEVS_HASH, DROPIN_USERS, DUAL, DUAL_SHADOWED, MANY_FIRST_GID,
    MANY_GROUPS,
};
use userdb_broker_tests::varlink;
use userdb_broker_tests::{
    artifacts, assert_line, assert_same_lines, exclusive, Broker, DropinDir, Fixture, Nss, Outcome,
};
use userdb_proto::api::userdb::{GET_GROUP_RECORD, GET_MEMBERSHIPS, GET_USER_RECORD};

/// `id` output split into (uid part, gid part, supplementary groups as a
/// set), asserting no group appears twice and the primary group comes first.
fn parse_id(line: &str) -> (String, String, BTreeSet<String>) {
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.len(), 3, "unexpected id output: {line}");
    let groups: Vec<&str> = fields[2]
        .strip_prefix("groups=")
        .unwrap_or_else(|| panic!("no groups= in {line}"))
        .split(',')
        .collect();
    let gid = fields[1].strip_prefix("gid=").unwrap_or_default();
    assert_eq!(
        groups.first(),
        Some(&gid),
        "primary group not first: {line}"
    );
    let set: BTreeSet<String> = groups.iter().map(|g| (*g).to_owned()).collect();
    assert_eq!(set.len(), groups.len(), "a group is listed twice: {line}");
    (fields[0].to_owned(), fields[1].to_owned(), set)
}

fn set_of(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// `getent initgroups` output: the name padded to 21 columns, then gids.
fn parse_initgroups(line: &str, name: &str) -> BTreeSet<u32> {
    assert!(
        line.starts_with(&format!("{name:<21}")),
        "initgroups line does not start with the padded name: {line:?}"
    );
    let gids: Vec<u32> = line[21..]
        .split_whitespace()
        .map(|g| {
            g.parse()
                .unwrap_or_else(|_| panic!("bad gid {g:?} in {line:?}"))
        })
        .collect();
    let set: BTreeSet<u32> = gids.iter().copied().collect();
    assert_eq!(set.len(), gids.len(), "a gid is listed twice: {line:?}");
    set
}

#[test]
fn passwd_by_name_and_uid_from_files_and_every_dropin_dir() {
    let f = populated();
    let _broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    for line in BASE_PASSWD {
        let name = line.split(':').next().unwrap_or_default();
        let uid = line.split(':').nth(2).unwrap_or_default();
        nss.expect_line(&["getent", "passwd", name], line);
        nss.expect_line(&["getent", "passwd", uid], line);
    }
    for user in DROPIN_USERS {
        let expected = user.passwd_line();
        nss.expect_line(&["getent", "passwd", user.name], &expected);
        nss.expect_line(&["getent", "passwd", &user.uid.to_string()], &expected);
    }
    nss.expect_not_found(&["getent", "passwd", "nosuchuser"]);
    nss.expect_not_found(&["getent", "passwd", "4000"]);
}

#[test]
fn first_dropin_directory_wins_by_name_and_by_uid() {
    let f = populated();
    let _broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    let expected = DUAL.passwd_line();
    assert_ne!(expected, DUAL_SHADOWED.passwd_line());
    nss.expect_line(&["getent", "passwd", "dual"], &expected);
    nss.expect_line(&["getent", "passwd", "1003"], &expected);
}

#[test]
fn empty_file_or_dev_null_link_in_an_earlier_directory_masks_a_user() {
    let f = Fixture::new();
    let masked = User {
        name: "masked",
        uid: 1006,
        gecos: "Masked In Etc",
        home: "/home/masked",
        shell: "/bin/bash",
    };
    f.dropin_user(DropinDir::UsrLib, &masked.record());
    f.dropin_raw(DropinDir::Etc, "masked.user", b"");
    f.mask_with_dev_null(DropinDir::Etc, "1006.user");
    f.dropin_user(DropinDir::UsrLib, &ALICE.record());
    let _broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    nss.expect_not_found(&["getent", "passwd", "masked"]);
    nss.expect_not_found(&["getent", "passwd", "1006"]);
    let mut expected: Vec<String> = BASE_PASSWD.iter().map(|l| (*l).to_owned()).collect();
    expected.push(ALICE.passwd_line());
    assert_same_lines(
        "getent passwd",
        &nss.run_ok(&["getent", "passwd"]),
        &expected,
    );
}

#[test]
fn group_by_name_and_gid_from_files_and_dropins() {
    let f = populated();
    let _broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    let mut expected: Vec<String> = BASE_GROUP
        .iter()
        .map(|l| {
            if l.starts_with("wheel:") {
                "wheel:x:10:filesuser,alice".to_owned()
            } else {
                (*l).to_owned()
            }
        })
        .collect();
    expected.extend(
        dropin_group_lines()
            .into_iter()
            .filter(|l| !l.starts_with("big:")),
    );
    for line in &expected {
        let name = line.split(':').next().unwrap_or_default();
        let gid = line.split(':').nth(2).unwrap_or_default();
        nss.expect_line(&["getent", "group", name], line);
        nss.expect_line(&["getent", "group", gid], line);
    }
    nss.expect_not_found(&["getent", "group", "nosuchgroup"]);
    nss.expect_not_found(&["getent", "group", "4000"]);
}

#[test]
fn group_of_3000_members_survives_the_erange_retry() {
    let f = populated();
    let _broker = Broker::start(&f);
    let expected = format!("big:x:{BIG_GID}:{}", big_members().join(","));
    for conf in [BROKER_ONLY, FILES_THEN_BROKER] {
        let nss = Nss::new(&f, conf);
        nss.expect_line(&["getent", "group", "big"], &expected);
        nss.expect_line(&["getent", "group", &BIG_GID.to_string()], &expected);
    }
}

#[test]
fn id_and_initgroups_list_each_group_once() {
    let f = populated();
    let _broker = Broker::start(&f);
    for conf in [BROKER_ONLY, FILES_THEN_BROKER] {
        let nss = Nss::new(&f, conf);
        let (uid, gid, groups) = parse_id(&nss.one_line(&["id", "alice"]));
        assert_eq!(
            (uid.as_str(), gid.as_str()),
            ("uid=1001(alice)", "gid=1001(alice)"),
            "{conf}"
        );
        assert_eq!(
            groups,
            set_of(&["1001(alice)", "10(wheel)", "2000(devs)"]),
            "{conf}"
        );

        let (uid, gid, groups) = parse_id(&nss.one_line(&["id", "filesuser"]));
        assert_eq!(
            (uid.as_str(), gid.as_str()),
            ("uid=1000(filesuser)", "gid=1000(filesuser)"),
            "{conf}"
        );
        assert_eq!(
            groups,
            set_of(&["1000(filesuser)", "4(adm)", "10(wheel)"]),
            "{conf}"
        );

        let line = nss.one_line(&["getent", "initgroups", "alice"]);
        assert_eq!(
            parse_initgroups(&line, "alice"),
            BTreeSet::from([10, DEVS_GID]),
            "{conf}"
        );
        let line = nss.one_line(&["getent", "initgroups", "bob"]);
        assert_eq!(
            parse_initgroups(&line, "bob"),
            BTreeSet::from([DEVS_GID]),
            "{conf}"
        );
    }
}

#[test]
fn user_in_200_groups() {
    let f = populated();
    let _broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    let mut expected: BTreeSet<String> = (0..MANY_GROUPS)
        .map(|i| format!("{}({})", MANY_FIRST_GID + i, many_group_name(i)))
        .collect();
    expected.insert("1500(many)".to_owned());
    let (uid, gid, groups) = parse_id(&nss.one_line(&["id", "many"]));
    assert_eq!(
        (uid.as_str(), gid.as_str()),
        ("uid=1500(many)", "gid=1500(many)")
    );
    assert_eq!(groups, expected);

    let line = nss.one_line(&["getent", "initgroups", "many"]);
    let expected: BTreeSet<u32> = (0..MANY_GROUPS).map(|i| MANY_FIRST_GID + i).collect();
    assert_eq!(parse_initgroups(&line, "many"), expected);
}

#[test]
fn enumerations_list_every_entry_once() {
    let f = populated();
    let _broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);

    let mut expected: Vec<String> = BASE_PASSWD.iter().map(|l| (*l).to_owned()).collect();
    expected.extend(DROPIN_USERS.iter().map(|u| u.passwd_line()));
    assert_same_lines(
        "getent passwd",
        &nss.run_ok(&["getent", "passwd"]),
        &expected,
    );

    let mut expected: Vec<String> = BASE_GROUP
        .iter()
        .map(|l| {
            if l.starts_with("wheel:") {
                "wheel:x:10:filesuser,alice".to_owned()
            } else {
                (*l).to_owned()
            }
        })
        .collect();
    expected.extend(dropin_group_lines());
    assert_same_lines("getent group", &nss.run_ok(&["getent", "group"]), &expected);
}

const PROBE: &str = env!("CARGO_BIN_EXE_nss-probe");

#[test]
fn enumeration_retried_after_erange_on_every_entry_skips_nothing() {
    let f = populated();
    let _broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    for database in ["passwd", "group"] {
        let expected = nss.run_ok(&["getent", database]);
        // 8 bytes: smaller than any entry.
        let out = nss.run(&[PROBE, "enum", database, "8"]);
        out.assert_code(0, "nss-probe enum");
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_same_lines(
            &format!("{database} enumeration with ERANGE retries"),
            &lines,
            &expected,
        );
        let retries = out
            .stderr
            .trim()
            .trim_start_matches("erange_retries=")
            .parse::<usize>()
            .unwrap_or(0);
        assert!(
            retries >= expected.len(),
            "{database}: only {retries} ERANGE retries: {}",
            out.stderr
        );
    }
}

/// systemd-userdbd 252 returned 52,924 of 100,000 users in one enumeration.
const MASS_USERS: u32 = 100_000;

#[test]
fn enumeration_of_100000_users_is_complete() {
    let _heavy = exclusive();
    let f = Fixture::new();
    let mass: Vec<String> = (0..MASS_USERS)
        .map(|i| {
            format!(
                "u{i:06}:x:{}:100:Mass User {i}:/home/u{i:06}:/bin/bash",
                100_000 + i
            )
        })
        .collect();
    let mut lines: Vec<&str> = BASE_PASSWD.to_vec();
    lines.extend(mass.iter().map(String::as_str));
    f.replace_etc_file("passwd", &lines);
    let _broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    let started = Instant::now();
    let listed = nss.run_ok(&["getent", "passwd"]);
    println!(
        "getent passwd listed {} entries in {:?}",
        listed.len(),
        started.elapsed()
    );
    assert_same_lines("getent passwd over 100000 users", &listed, &lines);
    nss.expect_line(&["getent", "passwd", "u099999"], &mass[mass.len() - 1]);
}

#[test]
fn merge_with_files_first_lists_every_member_and_entry_once() {
    let f = populated();
    let _broker = Broker::start(&f);
    let nss = Nss::new(&f, FILES_THEN_BROKER);

    // nss-systemd 252 prints wheel:x:10:filesuser,filesuser,alice here.
    nss.expect_line(&["getent", "group", "wheel"], "wheel:x:10:filesuser,alice");
    nss.expect_line(&["getent", "group", "10"], "wheel:x:10:filesuser,alice");
    nss.expect_line(&["getent", "group", "adm"], "adm:x:4:filesuser");
    nss.expect_line(&["getent", "group", "devs"], "devs:x:2000:alice,bob");

    // Enumeration: glibc prints the files itself, then the broker adds only
    // what the files do not have.
    let passwd = nss.run_ok(&["getent", "passwd"]);
    let dropin_passwd: Vec<String> = DROPIN_USERS.iter().map(|u| u.passwd_line()).collect();
    assert_files_then_broker("getent passwd", &passwd, &BASE_PASSWD, &dropin_passwd);
    let group = nss.run_ok(&["getent", "group"]);
    assert_files_then_broker("getent group", &group, &BASE_GROUP, &dropin_group_lines());
    let names: Vec<&str> = group
        .iter()
        .map(|l| l.split(':').next().unwrap_or_default())
        .collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "a group is enumerated twice");
}

/// `lines` is the files' lines in file order followed by `from_broker` in any order.
fn assert_files_then_broker(what: &str, lines: &[String], files: &[&str], from_broker: &[String]) {
    let mut expected: Vec<String> = files.iter().map(|l| (*l).to_owned()).collect();
    expected.extend_from_slice(from_broker);
    assert_same_lines(what, lines, &expected);
    for (at, (actual, wanted)) in lines.iter().zip(files).enumerate() {
        assert_line(
            &format!("{what}, line {at} (from the files)"),
            actual,
            wanted,
        );
    }
}

#[test]
fn shadow_hash_only_for_root() {
    let f = populated();
    let _broker = Broker::start(&f);
    let alice_shadow = format!("alice:{ALICE_HASH}:19000::::::");
    let filesuser_shadow = BASE_SHADOW[5];
    for conf in [BROKER_ONLY, FILES_THEN_BROKER] {
        let nss = Nss::new(&f, conf);
        nss.expect_line(&["getent", "shadow", "alice"], &alice_shadow);
        nss.expect_line(&["getent", "shadow", "filesuser"], filesuser_shadow);

        for argv in [
            &["getent", "shadow", "alice"][..],
            &["getent", "shadow", "filesuser"],
            &["getent", "shadow"],
        ] {
            let out = nss.run_as_nobody(argv);
            assert!(!out.timed_out, "{}", out.describe());
            for hash in [ALICE_HASH, FILESUSER_HASH] {
                assert!(
                    !out.stdout.contains(hash),
                    "{conf} {argv:?} as nobody revealed a hash\n{}",
                    out.describe()
                );
            }
        }
    }
}

#[test]
fn gshadow_merges_members_and_hides_the_hash_from_others() {
    let f = populated();
    let _broker = Broker::start(&f);
    for conf in [BROKER_ONLY, FILES_THEN_BROKER] {
        let nss = Nss::new(&f, conf);
        nss.expect_line(
            &["getent", "gshadow", "devs"],
            format!("devs:{DEVS_HASH}::alice,bob"),
        );
        let out = nss.run_as_nobody(&["getent", "gshadow", "devs"]);
        assert!(!out.timed_out, "{}", out.describe());
        assert!(
            !out.stdout.contains(DEVS_HASH),
            "[{}] getent gshadow devs as nobody revealed the hash\n{}",
            nss.label(),
            out.describe()
        );
    }
    let nss = Nss::new(&f, BROKER_ONLY);
    nss.expect_line(&["getent", "gshadow", "wheel"], "wheel:!::filesuser,alice");
}

#[test]
fn keys_no_record_can_have_are_not_found() {
    let f = populated();
    let mut broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    let long = "a".repeat(10_000);
    for key in [
        "65535",
        "4294967295",
        "a:b",
        "a,b",
        "-x",
        " alice",
        "alice ",
        long.as_str(),
    ] {
        // `--`: keys such as -x are not options.
        nss.expect_not_found(&["getent", "--", "passwd", key]);
        nss.expect_not_found(&["getent", "--", "group", key]);
    }
    assert!(broker.is_running(), "broker died:\n{}", broker.log());
}

/// Bad drop-ins: the file name and what is wrong with its content.
fn hostile_dropins() -> Vec<(&'static str, Vec<u8>)> {
    let huge = "A".repeat(1 << 20);
    vec![
        (
            "broken.user",
            br#"{"userName": "broken", "uid": 1100,"#.to_vec(),
        ),
        (
            "mismatch.user",
            br#"{"userName": "someoneelse", "uid": 1101}"#.to_vec(),
        ),
        (
            "huge.user",
            json!({ "userName": "huge", "uid": 1102, "realName": huge })
                .to_string()
                .into_bytes(),
        ),
        (
            "rawnul.user",
            b"{\"userName\": \"rawnul\", \"uid\": 1103, \"realName\": \"a\0b\"}".to_vec(),
        ),
        (
            "escnul.user",
            br#"{"userName": "escnul", "uid": 1104, "realName": "x\u0000y"}"#.to_vec(),
        ),
        (
            "colon.user",
            br#"{"userName": "colon", "uid": 1105, "realName": "Evil:0:0:root:/root:/bin/sh"}"#
                .to_vec(),
        ),
        (
            "negative.user",
            br#"{"userName": "negative", "uid": -1}"#.to_vec(),
        ),
        (
            "badmember.group",
            br#"{"groupName": "badmember", "gid": 1106, "members": ["ok", "evil:member"]}"#
                .to_vec(),
        ),
    ]
}

#[test]
fn hostile_dropins_are_skipped_with_one_log_line_each_and_the_rest_is_served() {
    let f = Fixture::new();
    f.dropin_user(DropinDir::Etc, &ALICE.record());
    for (file_name, bytes) in hostile_dropins() {
        f.dropin_raw(DropinDir::Etc, file_name, &bytes);
    }
    let mut broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);

    nss.expect_line(&["getent", "passwd", "alice"], ALICE.passwd_line());
    for name in [
        "privinuser",
        "idmismatch",
        "broken",
        "someoneelse",
        "mismatch",
        "huge",
        "rawnul",
        "escnul",
        "colon",
        "negative",
    ] {
        nss.expect_not_found(&["getent", "passwd", name]);
    }
    for uid in (1100..=1105).chain([1107, 1234, 1235]) {
        nss.expect_not_found(&["getent", "passwd", &uid.to_string()]);
    }
    nss.expect_not_found(&["getent", "group", "badmember"]);

    let passwd = nss.run_ok(&["getent", "passwd"]);
    for line in &passwd {
        assert_eq!(
            line.split(':').count(),
            7,
            "passwd line with wrong field count: {line:?}"
        );
    }
    let mut expected: Vec<String> = BASE_PASSWD.iter().map(|l| (*l).to_owned()).collect();
    expected.push(ALICE.passwd_line());
    assert_same_lines("getent passwd", &passwd, &expected);
    assert_same_lines(
        "getent group",
        &nss.run_ok(&["getent", "group"]),
        &BASE_GROUP,
    );

    // A rebuild caused by another file must not log the broken ones again.
    let late = User {
        name: "late",
        uid: 1200,
        gecos: "Added Late",
        home: "/home/late",
        shell: "/bin/bash",
    };
    f.dropin_user(DropinDir::Etc, &late.record());
    time_until(
        &nss,
        "late",
        Some(&late.passwd_line()),
        Duration::from_secs(2),
    );

    assert!(broker.is_running(), "broker died:\n{}", broker.log());
    let log = broker.log();
    for (file_name, _) in hostile_dropins() {
        let path = f
            .dropin_path(DropinDir::Etc, file_name)
            .display()
            .to_string();
        let naming: Vec<&str> = log.lines().filter(|l| l.contains(&path)).collect();
        assert!(
            naming.len() == 1,
            "expected one log line naming {path}, got {}:\n{log}",
            naming.len()
        );
    }
}

/// Polls `getent passwd NAME` until it prints `expected` (None: not found);
/// returns how long that took after the change.
fn time_until(nss: &Nss, name: &str, expected: Option<&str>, limit: Duration) -> Duration {
    nss.wait_for(&["getent", "passwd", name], expected, limit)
        .unwrap_or_else(|| {
            panic!("after {limit:?} getent passwd {name} still does not give {expected:?}")
        })
}

#[test]
fn dropin_added_changed_removed_while_running_is_served_within_a_second() {
    let _timing = exclusive();
    let f = Fixture::new();
    let _broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    nss.expect_not_found(&["getent", "passwd", "late"]);
    let mut late = User {
        name: "late",
        uid: 1200,
        gecos: "Added Late",
        home: "/home/late",
        shell: "/bin/bash",
    };
    let limit = Duration::from_secs(1);

    f.dropin_user(DropinDir::Etc, &late.record());
    let added = time_until(&nss, "late", Some(&late.passwd_line()), limit);
    late.gecos = "Changed Late";
    f.dropin_user(DropinDir::Etc, &late.record());
    let changed = time_until(&nss, "late", Some(&late.passwd_line()), limit);
    f.remove_dropin(DropinDir::Etc, "late.user");
    f.remove_dropin(DropinDir::Etc, "1200.user");
    let removed = time_until(&nss, "late", None, limit);
    println!("drop-in reload: added {added:?}, changed {changed:?}, removed {removed:?}");
}

const SERVICE: &str = "io.userdb.Broker";

fn error_of(exchange: &varlink::Exchange) -> Option<&str> {
    exchange.replies.first().and_then(|r| r["error"].as_str())
}

/// Every reply of a `more` call but the last carries `continues: true`.
fn assert_streamed(what: &str, exchange: &varlink::Exchange) {
    assert!(!exchange.timed_out, "{what}: no final reply");
    let flags: Vec<bool> = exchange
        .replies
        .iter()
        .map(|r| r["continues"].as_bool().unwrap_or(false))
        .collect();
    let Some((last, rest)) = flags.split_last() else {
        panic!("{what}: no reply at all");
    };
    assert!(
        !last && rest.iter().all(|c| *c),
        "{what}: continues flags {flags:?}"
    );
}

#[test]
fn broker_serves_the_systemd_userdb_varlink_api() {
    let f = populated();
    let broker = Broker::start(&f);
    let socket = broker.socket();

    for key in [json!({ "userName": "alice" }), json!({ "uid": 1001 })] {
        let mut params = key.clone();
        params["service"] = json!(SERVICE);
        let got = varlink::call(socket, GET_USER_RECORD, params, false);
        assert_eq!(got.replies.len(), 1, "{key}: {:?}", got.replies);
        let reply = &got.replies[0]["parameters"];
        assert_eq!(reply["record"]["userName"], "alice", "{key}: {reply}");
        assert_eq!(reply["record"]["uid"], 1001, "{key}: {reply}");
        assert_eq!(reply["record"]["service"], SERVICE, "{key}: {reply}");
        // The test runs as root: the privileged part comes along.
        assert_eq!(
            reply["record"]["privileged"]["hashedPassword"][0], ALICE_HASH,
            "{reply}"
        );
        assert_eq!(reply["incomplete"], false, "{reply}");
    }

    let unknown = varlink::call(
        socket,
        GET_USER_RECORD,
        json!({ "userName": "nosuchuser", "service": SERVICE }),
        false,
    );
    assert_eq!(
        error_of(&unknown),
        Some("io.systemd.UserDatabase.NoRecordFound")
    );
    let unknown = varlink::call(
        socket,
        GET_GROUP_RECORD,
        json!({ "gid": 4000, "service": SERVICE }),
        false,
    );
    assert_eq!(
        error_of(&unknown),
        Some("io.systemd.UserDatabase.NoRecordFound")
    );
    let wrong = varlink::call(
        socket,
        GET_USER_RECORD,
        json!({ "userName": "alice", "service": "io.systemd.Other" }),
        false,
    );
    assert_eq!(error_of(&wrong), Some("io.systemd.UserDatabase.BadService"));

    let group = varlink::call(
        socket,
        GET_GROUP_RECORD,
        json!({ "groupName": "devs", "service": SERVICE }),
        false,
    );
    assert_eq!(
        group.replies[0]["parameters"]["record"]["gid"], DEVS_GID,
        "{:?}",
        group.replies
    );
    assert_eq!(group.replies[0]["parameters"]["record"]["service"], SERVICE);

    let members = varlink::call(
        socket,
        GET_MEMBERSHIPS,
        json!({ "groupName": "devs", "service": SERVICE }),
        true,
    );
    assert_streamed("memberships of devs", &members);
    let pairs: Vec<String> = members
        .replies
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["parameters"]["userName"].as_str().unwrap_or("?"),
                r["parameters"]["groupName"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_same_lines("memberships of devs", &pairs, &["alice:devs", "bob:devs"]);

    let of_many = varlink::call(
        socket,
        GET_MEMBERSHIPS,
        json!({ "userName": "many", "service": SERVICE }),
        true,
    );
    assert_streamed("memberships of many", &of_many);
    assert_eq!(of_many.replies.len(), MANY_GROUPS as usize);

    let users = varlink::call(socket, GET_USER_RECORD, json!({ "service": SERVICE }), true);
    assert_streamed("user enumeration", &users);
    let names: Vec<String> = users
        .replies
        .iter()
        .map(|r| {
            r["parameters"]["record"]["userName"]
                .as_str()
                .unwrap_or("?")
                .to_owned()
        })
        .collect();
    let mut expected: Vec<String> = BASE_PASSWD
        .iter()
        .map(|l| l.split(':').next().unwrap_or_default().to_owned())
        .collect();
    expected.extend(DROPIN_USERS.iter().map(|u| u.name.to_owned()));
    assert_same_lines("user enumeration", &names, &expected);
}

#[test]
fn etc_passwd_changed_while_running_is_served_within_a_second() {
    let _timing = exclusive();
    let f = Fixture::new();
    let _broker = Broker::start(&f);
    let nss = Nss::new(&f, BROKER_ONLY);
    let limit = Duration::from_secs(1);
    let appended = "appended:x:1300:1300:Appended In Place:/home/appended:/bin/bash";
    f.passwd_line(appended);
    let in_place = time_until(&nss, "appended", Some(appended), limit);

    let renamed = "renamed:x:1301:1301:Written And Renamed:/home/renamed:/bin/bash";
    let mut lines: Vec<&str> = BASE_PASSWD.to_vec();
    lines.push(renamed);
    f.replace_etc_file("passwd", &lines);
    let replaced = time_until(&nss, "renamed", Some(renamed), limit);
    time_until(&nss, "appended", None, limit);
    println!("/etc/passwd reload: appended {in_place:?}, replaced {replaced:?}");
}

#[test]
fn unprivileged_peer_gets_the_record_without_privileged_data() {
    let f = populated();
    let broker = Broker::start(&f);
    let full = broker.user_record("alice", None);
    assert_eq!(
        full["privileged"]["hashedPassword"][0], ALICE_HASH,
        "{full}"
    );
    assert_eq!(full["lastPasswordChangeUSec"], DAYS_19000_USEC, "{full}");
    let mut expected = full.clone();
    if let Some(record) = expected.as_object_mut() {
        record.remove("privileged");
        record.remove("lastPasswordChangeUSec");
    }
    assert_eq!(broker.user_record("alice", Some(NOBODY)), expected);
}

/// DESIGN.md: exactly these symbols are public.
const EXPORTED: [&str; 16] = [
    "_nss_broker_endgrent",
    "_nss_broker_endpwent",
    "_nss_broker_endspent",
    "_nss_broker_getgrent_r",
    "_nss_broker_getgrgid_r",
    "_nss_broker_getgrnam_r",
    "_nss_broker_getpwent_r",
    "_nss_broker_getpwnam_r",
    "_nss_broker_getpwuid_r",
    "_nss_broker_getsgnam_r",
    "_nss_broker_getspent_r",
    "_nss_broker_getspnam_r",
    "_nss_broker_initgroups_dyn",
    "_nss_broker_setgrent",
    "_nss_broker_setpwent",
    "_nss_broker_setspent",
];

#[test]
fn module_exports_exactly_the_nss_entry_points() {
    let mut nm = Command::new("nm");
    nm.args(["--dynamic", "--defined-only", "--format=posix"])
        .arg(artifacts::module());
    let out: Outcome = userdb_broker_tests::process::run(nm, Duration::from_secs(30));
    out.assert_code(0, "nm");
    let exported: BTreeSet<&str> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            let name = parts.next()?;
            let kind = parts.next()?;
            // Text and data symbols; the version node of the library is type A.
            matches!(kind, "T" | "D" | "B" | "R" | "W" | "V").then_some(name)
        })
        .collect();
    assert_eq!(exported, EXPORTED.into_iter().collect::<BTreeSet<&str>>());
}
