//! Compares `broker` with glibc's `files` and systemd's `systemd` NSS modules
//! on the same data, in one run, through real glibc.
//!
//! For each database size a fixture holds the same users and groups twice:
//! as `/etc/passwd`/`/etc/group` lines (what `files` reads) and as userdb
//! JSON drop-ins (what `nss-systemd` reads). The broker serves that fixture
//! (files win the merge; the records are identical). Every look-up runs in
//! the `nss-probe` helper inside a private mount namespace whose
//! nsswitch.conf names only the module under test, so process start-up is
//! not measured: the probe times a loop of `getpwnam_r`/`getgrnam_r` calls.
//!
//! Usage: userdb-broker-bench [--sizes 100,10000] [--seconds 0.4]
//! (needs root and `cargo build --release` first).

use std::process::ExitCode;

use serde_json::json;
use userdb_broker_tests::{artifacts, Broker, DropinDir, Fixture, Nss};

const FIRST_ID: u32 = 200_000;

/// Makes drop-ins in the fixture's `etc/userdb` visible to nss-systemd at
/// `/run/userdb` inside the namespace (a tmpfs over `/run` hides everything
/// else there, including any userdb service sockets), then runs the command.
const SHOW_DROPINS: &str = r#"set -e
mount -t tmpfs -o size=1m tmpfs /run
mkdir /run/userdb
mount --bind "$1" /run/userdb
shift
exec "$@"
"#;

struct Backend {
    name: &'static str,
    nsswitch: &'static str,
}

const BACKENDS: [Backend; 3] = [
    Backend {
        name: "files",
        nsswitch: "passwd: files\ngroup: files\n",
    },
    Backend {
        name: "systemd",
        nsswitch: "passwd: systemd\ngroup: systemd\n",
    },
    Backend {
        name: "broker",
        nsswitch: "passwd: broker\ngroup: broker\n",
    },
];

struct Options {
    sizes: Vec<u32>,
    seconds: f64,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        sizes: vec![100, 10_000],
        seconds: 0.4,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--sizes" => {
                options.sizes = value
                    .split(',')
                    .map(|s| s.parse().map_err(|_| format!("bad size {s:?}")))
                    .collect::<Result<_, _>>()?
            }
            "--seconds" => options.seconds = value.parse().map_err(|_| "bad --seconds")?,
            _ => return Err(format!("unknown option {arg}")),
        }
    }
    Ok(options)
}

/// A fixture with `size` users and groups, each both in the files and as a
/// drop-in, every user a member of its own group.
fn fixture(size: u32) -> Fixture {
    let fixture = Fixture::new();
    let mut passwd = etc_lines(&fixture, "passwd");
    let mut group = etc_lines(&fixture, "group");
    for i in 0..size {
        let id = FIRST_ID + i;
        let user = format!("benchuser{i}");
        let group_name = format!("benchgroup{i}");
        passwd.push(format!(
            "{user}:x:{id}:{id}:Bench User {i}:/home/{user}:/bin/bash"
        ));
        group.push(format!("{group_name}:x:{id}:{user}"));
        fixture.dropin_user(
            DropinDir::Etc,
            &json!({"userName": user, "uid": id, "gid": id, "realName": format!("Bench User {i}"),
                    "homeDirectory": format!("/home/{user}"), "shell": "/bin/bash"}),
        );
        fixture.dropin_group(
            DropinDir::Etc,
            &json!({"groupName": group_name, "gid": id, "members": [user]}),
        );
    }
    for (db, lines) in [("passwd", passwd), ("group", group)] {
        fixture.replace_etc_file(db, &lines.iter().map(String::as_str).collect::<Vec<_>>());
    }
    fixture
}

/// The fixture's base lines of `etc/DB`.
fn etc_lines(fixture: &Fixture, db: &str) -> Vec<String> {
    let path = fixture.root().join("etc").join(db);
    std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The queries of one size: the last entry (worst case for a linear file
/// scan), a miss, a group, a uid.
fn queries(size: u32) -> Vec<(String, String)> {
    let last = size - 1;
    vec![
        ("getpwnam hit".into(), format!("passwd:benchuser{last}")),
        ("getpwnam miss".into(), "passwd:nosuchuser".into()),
        ("getpwuid hit".into(), format!("uid:{}", FIRST_ID + last)),
        ("getgrnam hit".into(), format!("group:benchgroup{last}")),
    ]
}

/// Nanoseconds per call of each query under one backend.
fn measure(
    fixture: &Fixture,
    backend: &Backend,
    queries: &[(String, String)],
    seconds: f64,
) -> Result<Vec<f64>, String> {
    let nss = Nss::new(fixture, backend.nsswitch);
    let dropins = fixture.root().join(DropinDir::Etc.relative());
    let probe = artifacts::release_dir().join("nss-probe");
    let mut argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        SHOW_DROPINS.into(),
        "sh".into(),
        dropins.display().to_string(),
        probe.display().to_string(),
        "repeat".into(),
        seconds.to_string(),
    ];
    argv.extend(queries.iter().map(|(_, q)| q.clone()));
    let outcome = nss.run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    if outcome.code() != Some(0) {
        return Err(format!(
            "{}: probe failed: {}",
            backend.name,
            outcome.describe()
        ));
    }
    // Lines: `QUERY<TAB>CALLS<TAB>NS_PER_CALL<TAB>RESULT`.
    queries
        .iter()
        .map(|(_, q)| {
            let line = outcome
                .stdout
                .lines()
                .find(|l| l.split('\t').next() == Some(q.as_str()))
                .ok_or(format!("{}: no result for {q}", backend.name))?;
            let fields: Vec<&str> = line.split('\t').collect();
            let expect_found = !q.contains("nosuchuser");
            let found = fields.get(3) == Some(&"found");
            if found != expect_found {
                return Err(format!("{}: wrong answer for {q}: {line}", backend.name));
            }
            fields
                .get(2)
                .and_then(|ns| ns.parse().ok())
                .ok_or(format!("{}: unreadable line {line:?}", backend.name))
        })
        .collect()
}

fn run(options: &Options) -> Result<(), String> {
    println!(
        "userdb-broker-bench: ns per call through glibc (lower is better), loop of {} s per cell",
        options.seconds
    );
    for &size in &options.sizes {
        let fixture = fixture(size);
        let broker = Broker::start(&fixture);
        let queries = queries(size);
        let mut columns = Vec::new();
        for backend in &BACKENDS {
            columns.push(measure(&fixture, backend, &queries, options.seconds)?);
        }
        drop(broker);
        println!();
        println!("{size} users, {size} groups");
        println!(
            "{:<15} {:>12} {:>12} {:>12} {:>14} {:>16}",
            "query", "files", "systemd", "broker", "broker/files", "broker/systemd"
        );
        for (row, (label, _)) in queries.iter().enumerate() {
            let (files, systemd, broker) = (columns[0][row], columns[1][row], columns[2][row]);
            println!(
                "{label:<15} {:>12} {:>12} {:>12} {:>14.2} {:>16.2}",
                format_ns(files),
                format_ns(systemd),
                format_ns(broker),
                broker / files,
                broker / systemd
            );
        }
    }
    Ok(())
}

fn format_ns(ns: f64) -> String {
    if ns >= 1_000_000.0 {
        format!("{:.2} ms", ns / 1_000_000.0)
    } else {
        format!("{:.1} µs", ns / 1_000.0)
    }
}

fn main() -> ExitCode {
    match parse_options().and_then(|o| run(&o)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("userdb-broker-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
