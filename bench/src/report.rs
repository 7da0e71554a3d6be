//! What a run prints: one table per measurement, then every target with
//! its figure and whether it is met.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::Duration;

use crate::backend::{Backend, Lines};
use crate::data::MANY_GROUPS;
use crate::instructions;
use crate::latency::{Item, Kind, Results};
use crate::scale::Run;
use crate::table::{count, duration, median, ratio, Table};
use crate::{Options, ID_SIZE, MERGE_SIZE};

pub const LOOKUP_BACKENDS: [Backend; 5] = [
    Backend::Trivial,
    Backend::FilePath,
    Backend::SocketPath,
    Backend::Files,
    Backend::Systemd,
];
pub const MERGE_BACKENDS: [Backend; 3] = [Backend::FilePath, Backend::SocketPath, Backend::Systemd];
pub const ID_BACKENDS: [Backend; 4] = [
    Backend::FilePath,
    Backend::SocketPath,
    Backend::Files,
    Backend::Systemd,
];
pub const INSTRUCTION_BACKENDS: [Backend; 3] =
    [Backend::Trivial, Backend::FilePath, Backend::Files];

/// The targets, each with its figure.
const FILE_VS_TRIVIAL: f64 = 1.5;
/// "Flat in database size": the largest p50 over the sizes within this
/// factor of the smallest.
const FLAT: f64 = 1.25;
const MERGE_VS_FILES: f64 = 2.0;
const ID_LIMIT_NS: f64 = 1e6;
const SERVING_LIMIT_MS: f64 = 2000.0;
const CHANGE_LIMIT_MS: f64 = 1000.0;
const BYTES_PER_USER: f64 = 1024.0;
/// "Flat across rebuilds": the RSS after them within this factor of the
/// RSS after start.
const REBUILD_GROWTH: f64 = 1.10;
const PUBLISH_LIMIT_MS: u64 = 1000;

#[derive(Debug, Default)]
pub struct Targets {
    rows: Vec<(String, String, bool)>,
}

impl Targets {
    fn add(&mut self, target: impl Into<String>, measured: impl Into<String>, met: bool) {
        self.rows.push((target.into(), measured.into(), met));
    }
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".to_owned())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn preamble(options: &Options) {
    let command: Vec<String> = std::env::args().collect();
    println!("userdb-broker-bench: {}", command.join(" "));
    println!(
        "machine: Linux {}, {} CPUs, glibc {}, {}; load average {} at the start",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        first_line("getconf", &["GNU_LIBC_VERSION"]).trim_start_matches("glibc "),
        first_line("systemctl", &["--version"]),
        load_average()
    );
    println!(
        "look-ups: each cell is one nss-probe process in a private mount namespace whose nsswitch.conf \
         names the module; the cells take turns, {} rounds, each look-up repeated for {} s per round \
         (at least 3 times) and timed call by call with CLOCK_MONOTONIC; a figure is the median over \
         the rounds of that round's p50 (or p90). The data are the same for every module: each user \
         and group is an /etc line (read by files and by the broker) and a drop-in (read by \
         nss-systemd only); `file path` and `socket path` are two brokers on them, one publishing \
         the snapshot file and one with `snapshot_file = false`.",
        options.rounds, options.seconds
    );
}

pub fn epilogue(took: Duration) {
    println!();
    println!(
        "whole run: {:.0} s; load average {} at the end",
        took.as_secs_f64(),
        load_average()
    );
}

fn heading(text: &str) {
    println!();
    println!("{text}");
}

fn cell(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), duration)
}

fn cell_ratio(value: Option<f64>, base: Option<f64>) -> String {
    match (value, base) {
        (Some(v), Some(b)) => ratio(v, b),
        _ => "-".to_owned(),
    }
}

pub fn lookups(results: &Results, sizes: &[u32], targets: &mut Targets) {
    let p50 = |size, backend, kind| results.p50((size, backend, Lines::Alone, Item::Lookup(kind)));
    let p90 = |size, backend, kind| results.p90((size, backend, Lines::Alone, Item::Lookup(kind)));
    let mut header: Vec<&str> = vec!["query"];
    header.extend(LOOKUP_BACKENDS.iter().map(|b| b.label()));
    for &size in sizes {
        heading(&format!(
            "Look-ups at {} users and {} groups: p50 per call, median of {} rounds \
             (each sample includes {:.0} ns of reading the clock)",
            count(size.into()),
            count(size.into()),
            results.rounds_run,
            results.timer()
        ));
        let mut h = header.clone();
        h.extend([
            "file/trivial",
            "socket/trivial",
            "files/trivial",
            "systemd/trivial",
        ]);
        let mut t = Table::new(&h);
        for kind in Kind::ALL {
            let mut row = vec![kind.label().to_owned()];
            row.extend(LOOKUP_BACKENDS.iter().map(|&b| cell(p50(size, b, kind))));
            let floor = p50(size, Backend::Trivial, kind);
            for b in [
                Backend::FilePath,
                Backend::SocketPath,
                Backend::Files,
                Backend::Systemd,
            ] {
                row.push(cell_ratio(p50(size, b, kind), floor));
            }
            t.row(row);
        }
        t.print();
        heading(&format!(
            "Same, p90 per call ({} users)",
            count(size.into())
        ));
        let mut h = header.clone();
        h.push("file/trivial");
        let mut t = Table::new(&h);
        for kind in Kind::ALL {
            let mut row = vec![kind.label().to_owned()];
            row.extend(LOOKUP_BACKENDS.iter().map(|&b| cell(p90(size, b, kind))));
            row.push(cell_ratio(
                p90(size, Backend::FilePath, kind),
                p90(size, Backend::Trivial, kind),
            ));
            t.row(row);
        }
        t.print();
    }

    // Target: the file path within 1.5x of the trivial module.
    let mut worst: Option<(f64, Kind, u32)> = None;
    let (mut within, mut all) = (0, 0);
    for &size in sizes {
        for kind in Kind::ALL {
            if let (Some(file), Some(floor)) = (
                p50(size, Backend::FilePath, kind),
                p50(size, Backend::Trivial, kind),
            ) {
                let r = file / floor;
                all += 1;
                within += usize::from(r <= FILE_VS_TRIVIAL);
                if worst.is_none_or(|w| r > w.0) {
                    worst = Some((r, kind, size));
                }
            }
        }
    }
    if let Some((r, kind, size)) = worst {
        targets.add(
            format!(
                "file path p50 <= {FILE_VS_TRIVIAL}x the trivial module, every look-up and size"
            ),
            format!(
                "{within} of {all} within; worst {r:.2}x ({} at {} users)",
                kind.label(),
                count(size.into())
            ),
            within == all,
        );
    }

    if sizes.len() < 2 {
        return;
    }
    heading("File path p50 by database size (flat: the largest within 1.25x of the smallest)");
    let mut h: Vec<String> = vec!["query".into()];
    h.extend(
        sizes
            .iter()
            .map(|s| format!("{} users", count((*s).into()))),
    );
    h.extend([
        "largest/smallest".into(),
        "socket path, same".into(),
        "files, same".into(),
    ]);
    let mut t = Table::new(&h.iter().map(String::as_str).collect::<Vec<_>>());
    let spread = |backend, kind| {
        let v: Vec<f64> = sizes
            .iter()
            .filter_map(|&s| p50(s, backend, kind))
            .collect();
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        if v.is_empty() {
            None
        } else {
            Some(hi / lo)
        }
    };
    let mut worst: Option<(f64, Kind)> = None;
    for kind in Kind::ALL {
        let mut row = vec![kind.label().to_owned()];
        row.extend(sizes.iter().map(|&s| cell(p50(s, Backend::FilePath, kind))));
        for backend in [Backend::FilePath, Backend::SocketPath, Backend::Files] {
            row.push(spread(backend, kind).map_or("-".into(), |r| format!("{r:.2}x")));
        }
        if let Some(r) = spread(Backend::FilePath, kind) {
            if worst.is_none_or(|w| r > w.0) {
                worst = Some((r, kind));
            }
        }
        t.row(row);
    }
    t.print();
    if let Some((r, kind)) = worst {
        targets.add(
            format!("file path flat in database size (largest p50 <= {FLAT}x smallest)"),
            format!("worst {r:.2}x ({})", kind.label()),
            r <= FLAT,
        );
    }
}

pub fn merge(results: &Results, targets: &mut Targets) {
    let files = |kind| results.p50((MERGE_SIZE, Backend::Files, Lines::Alone, Item::Lookup(kind)));
    let merged =
        |b, kind| results.p50((MERGE_SIZE, b, Lines::AfterFilesMerged, Item::Lookup(kind)));
    heading(&format!(
        "`group: files [SUCCESS=merge] MODULE` at {MERGE_SIZE} users, against `group: files` alone: \
         p50 per call, median of {} rounds",
        results.rounds_run
    ));
    let mut h: Vec<String> = vec!["query".into(), "files alone".into()];
    h.extend(
        MERGE_BACKENDS
            .iter()
            .map(|b| format!("files+{}", b.label())),
    );
    h.extend(
        MERGE_BACKENDS
            .iter()
            .map(|b| format!("{}/files", b.label())),
    );
    let mut t = Table::new(&h.iter().map(String::as_str).collect::<Vec<_>>());
    for kind in Kind::GROUPS {
        let mut row = vec![kind.label().to_owned(), cell(files(kind))];
        row.extend(MERGE_BACKENDS.iter().map(|&b| cell(merged(b, kind))));
        row.extend(
            MERGE_BACKENDS
                .iter()
                .map(|&b| cell_ratio(merged(b, kind), files(kind))),
        );
        t.row(row);
    }
    t.print();
    if let (Some(m), Some(f)) = (
        merged(Backend::FilePath, Kind::GrnamHit),
        files(Kind::GrnamHit),
    ) {
        targets.add(
            format!("files [SUCCESS=merge] broker getgrnam <= {MERGE_VS_FILES}x files alone ({MERGE_SIZE} users)"),
            format!("{} against {}: {}", duration(m), duration(f), ratio(m, f)),
            m <= MERGE_VS_FILES * f,
        );
    }
}

pub fn id(results: &Results, targets: &mut Targets) {
    // getpwnam, getgrouplist, then getgrgid for each group.
    let calls = f64::from(MANY_GROUPS) + 2.0;
    heading(&format!(
        "`id` of a user in {MANY_GROUPS} of {} groups (getpwnam, one getgrouplist, {MANY_GROUPS} getgrgid): \
         look-up time in the process, median of {} rounds",
        count(ID_SIZE.into()),
        results.rounds_run
    ));
    let mut t = Table::new(&["module", "p50", "p90", "per call (p50)", "/file path"]);
    let key = |b| (ID_SIZE, b, Lines::Alone, Item::Id);
    let file = results.p50(key(Backend::FilePath));
    for backend in ID_BACKENDS {
        let p50 = results.p50(key(backend));
        t.row(vec![
            backend.label().to_owned(),
            cell(p50),
            cell(results.p90(key(backend))),
            cell(p50.map(|v| v / calls)),
            cell_ratio(p50, file),
        ]);
    }
    // glibc's own cost of as many calls: the trivial module's getgrgid at
    // the same size (when the look-ups ran there), one call per look-up.
    let floor = results
        .p50((
            ID_SIZE,
            Backend::Trivial,
            Lines::Alone,
            Item::Lookup(Kind::GrgidHit),
        ))
        .map(|v| v * calls);
    t.row(vec![
        format!("glibc's floor ({calls} x trivial getgrgid)"),
        cell(floor),
        "-".to_owned(),
        cell(floor.map(|v| v / calls)),
        cell_ratio(floor, file),
    ]);
    t.print();
    if let Some(f) = file {
        targets.add(
            format!("`id` with {MANY_GROUPS} groups <= 1 ms of look-ups (file path)"),
            duration(f),
            f <= ID_LIMIT_NS,
        );
    }
}

pub fn instructions(
    counts: &BTreeMap<(u32, Backend), HashMap<Kind, f64>>,
    sizes: &[u32],
    _targets: &mut Targets,
) {
    for &size in sizes {
        let get = |b: Backend, k: Kind| counts.get(&(size, b)).and_then(|c| c.get(&k)).copied();
        heading(&format!(
            "Instructions per look-up at {} users (callgrind, user space; repeats: trivial and file path {}, files {})",
            count(size.into()),
            instructions::repeats(Backend::FilePath, size),
            instructions::repeats(Backend::Files, size)
        ));
        let mut h: Vec<&str> = vec!["query"];
        h.extend(INSTRUCTION_BACKENDS.iter().map(|b| b.label()));
        h.extend(["file/trivial", "files/file"]);
        let mut t = Table::new(&h);
        for kind in Kind::ALL {
            let mut row = vec![kind.label().to_owned()];
            row.extend(
                INSTRUCTION_BACKENDS
                    .iter()
                    .map(|&b| get(b, kind).map_or("-".into(), |v| count(v.round() as u64))),
            );
            row.push(cell_ratio(
                get(Backend::FilePath, kind),
                get(Backend::Trivial, kind),
            ));
            row.push(cell_ratio(
                get(Backend::Files, kind),
                get(Backend::FilePath, kind),
            ));
            t.row(row);
        }
        t.print();
    }
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

/// Bytes per user of `kb` resident, over what an empty broker holds.
fn per_user(r: &Run, kb: u64) -> f64 {
    kb.saturating_sub(r.empty_rss_kb) as f64 * 1024.0 / f64::from(r.scale.users)
}

pub fn scale(runs: &[Run], targets: &mut Targets) {
    let Some(first) = runs.first() else {
        return;
    };
    heading(&format!(
        "The broker at scale: {} users, {} groups, {} memberships, written as /etc lines \
         (passwd and group lines, members on the group lines) or as drop-ins (.user and .group \
         files with their id links, one .membership file per membership); the broker alone, \
         log_level = \"debug\" (publication costs are its own log lines); a change rewrites \
         one user's comment (/etc/passwd or its .user file, written beside and renamed over)",
        count(first.scale.users.into()),
        count(first.scale.groups.into()),
        count(first.scale.memberships.into())
    ));
    let mut h = vec!["".to_owned()];
    h.extend(runs.iter().map(|r| r.form.label().to_owned()));
    let mut t = Table::new(&h.iter().map(String::as_str).collect::<Vec<_>>());
    let mut row = |label: &str, f: &dyn Fn(&Run) -> String| {
        let mut cells = vec![label.to_owned()];
        cells.extend(runs.iter().map(f));
        t.row(cells);
    };
    row("drop-in files", &|r| count(r.scale.dropin_files as u64));
    row("start -> READY=1", &|r| format!("{:.0} ms", r.ready_ms));
    row("its system calls alone (floor; READY=1 at)", &|r| {
        r.floor_ms.map_or("-".into(), |f| {
            format!("{f:.0} ms ({:.2}x)", r.ready_ms / f)
        })
    });
    row("start -> first answer (probe started at READY=1)", &|r| {
        format!("{:.0} ms", r.first_answer_ms)
    });
    row("first snapshot: merge", &|r| {
        r.build_ms.map_or("-".into(), |m| format!("{m} ms"))
    });
    row("first snapshot file: publish", &|r| {
        r.publish_ms.map_or("-".into(), |m| format!("{m} ms"))
    });
    row("snapshot file size", &|r| {
        format!(
            "{} ({:.0} B/user)",
            mib(r.file_bytes / 1024),
            r.file_bytes as f64 / f64::from(r.scale.users)
        )
    });
    row("RSS of a broker on no data", &|r| mib(r.empty_rss_kb));
    row("RSS after start (B/user over it)", &|r| {
        format!("{} ({:.0})", mib(r.rss_kb), per_user(r, r.rss_kb))
    });
    row("peak RSS after start", &|r| mib(r.hwm_kb));
    for (i, _) in first.changes.iter().enumerate() {
        row(
            &format!("change {}: served after (publications, slowest)", i + 1),
            &|r| {
                r.changes.get(i).map_or("-".into(), |c| {
                    format!(
                        "{:.0} ms ({}, {})",
                        c.served_ms,
                        c.publications,
                        c.publish_ms.map_or("-".into(), |m| format!("{m} ms"))
                    )
                })
            },
        );
    }
    row("RSS after each change", &|r| {
        r.changes
            .iter()
            .map(|c| format!("{:.0}", c.rss_kb as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(" ")
            + " MiB"
    });
    row(
        &format!(
            "RSS after {} rebuilds (B/user over it)",
            first.changes.len()
        ),
        &|r| {
            format!(
                "{} ({:.0})",
                mib(r.final_rss_kb),
                per_user(r, r.final_rss_kb)
            )
        },
    );
    row("peak RSS at the end", &|r| mib(r.final_hwm_kb));
    row("idle CPU (3 s after the changes)", &|r| {
        format!("{:.1} %", r.idle_cpu_percent)
    });
    t.print();

    for r in runs {
        let form = r.form.label();
        targets.add(
            format!(
                "serving within {:.0} s of start ({form})",
                SERVING_LIMIT_MS / 1000.0
            ),
            format!(
                "READY=1 {:.0} ms, first answer {:.0} ms",
                r.ready_ms, r.first_answer_ms
            ),
            r.first_answer_ms <= SERVING_LIMIT_MS,
        );
        let slowest = r.changes.iter().map(|c| c.served_ms).fold(0.0, f64::max);
        let served: Vec<f64> = r.changes.iter().map(|c| c.served_ms).collect();
        targets.add(
            format!("a change served within 1 s ({form})"),
            format!(
                "median {:.0} ms, slowest {slowest:.0} ms of {}",
                median(&served),
                served.len()
            ),
            slowest <= CHANGE_LIMIT_MS,
        );
        let (start, end) = (per_user(r, r.rss_kb), per_user(r, r.final_rss_kb));
        targets.add(
            format!("memory <= 1 KB per user over an empty broker ({form})"),
            format!(
                "{start:.0} B after start, {end:.0} B after {} rebuilds",
                r.changes.len()
            ),
            start <= BYTES_PER_USER && end <= BYTES_PER_USER,
        );
        targets.add(
            format!(
                "memory flat across rebuilds (within {:.0} %, {form})",
                (REBUILD_GROWTH - 1.0) * 100.0
            ),
            format!("{} -> {}", mib(r.rss_kb), mib(r.final_rss_kb)),
            r.final_rss_kb as f64 <= r.rss_kb as f64 * REBUILD_GROWTH,
        );
        let publish = r
            .publish_ms
            .into_iter()
            .chain(r.changes.iter().filter_map(|c| c.publish_ms))
            .max();
        if let Some(p) = publish {
            targets.add(
                format!("snapshot file published within 1 s ({form})"),
                format!("slowest {p} ms; file {}", mib(r.file_bytes / 1024)),
                p <= PUBLISH_LIMIT_MS,
            );
        }
    }
}

pub fn targets(targets: &Targets) {
    if targets.rows.is_empty() {
        return;
    }
    heading("Targets");
    let mut t = Table::new(&["target", "measured", "met"]);
    for (target, measured, met) in &targets.rows {
        t.row(vec![
            target.clone(),
            measured.clone(),
            if *met { "yes" } else { "NO" }.to_owned(),
        ]);
    }
    t.print();
}
