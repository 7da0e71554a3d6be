//! `userdb-broker-bench`: libnss_broker beside glibc's `files`, systemd's
//! `systemd` and a trivial module, on the same data, through real glibc,
//! in one run; then the broker itself at scale.
//!
//! Usage: userdb-broker-bench [--sizes 100,10000,100000] [--rounds 5]
//!        [--seconds 0.05] [--scale-users 100000] [--changes 5]
//!        [--parts lookups,merge,id,instructions,scale] [--keep-callgrind DIR]
//! (as root, after `cargo build --release`; see the README's "Speed").

mod backend;
mod data;
mod floor;
mod instructions;
mod latency;
mod report;
mod scale;
mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use backend::{Backend, Lines, Served};
use latency::{Budget, Cell, Item, Kind};

/// The parts of a run, in the order they run.
const PARTS: [&str; 5] = ["lookups", "merge", "id", "instructions", "scale"];

/// The size the merge look-ups run at, and the one `id` runs at.
pub const MERGE_SIZE: u32 = 100;
pub const ID_SIZE: u32 = 10_000;

#[derive(Debug, Clone)]
pub struct Options {
    pub sizes: Vec<u32>,
    pub rounds: usize,
    pub seconds: f64,
    pub scale_users: u32,
    pub changes: u32,
    pub parts: BTreeSet<String>,
    /// Where to keep callgrind's profiles.
    pub keep_callgrind: Option<PathBuf>,
}

impl Options {
    fn part(&self, name: &str) -> bool {
        self.parts.contains(name)
    }
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        sizes: vec![100, 10_000, 100_000],
        rounds: 5,
        seconds: 0.05,
        scale_users: 100_000,
        changes: 5,
        parts: PARTS.iter().map(|p| (*p).to_owned()).collect(),
        keep_callgrind: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        let number = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("{arg}: bad number {v:?}"))
        };
        match arg.as_str() {
            "--sizes" => {
                options.sizes = value.split(',').map(number).collect::<Result<_, _>>()?;
                if options.sizes.contains(&0) {
                    return Err("--sizes: a size must be at least 1".into());
                }
            }
            "--rounds" => options.rounds = number(&value)?.max(1) as usize,
            "--seconds" => options.seconds = value.parse().map_err(|_| "bad --seconds")?,
            "--scale-users" => options.scale_users = number(&value)?.max(2),
            "--changes" => options.changes = number(&value)?,
            "--parts" => {
                options.parts = value.split(',').map(str::to_owned).collect();
                if let Some(bad) = options.parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
                    return Err(format!(
                        "--parts: unknown part {bad:?} (known: {})",
                        PARTS.join(",")
                    ));
                }
            }
            "--keep-callgrind" => options.keep_callgrind = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown option {arg}")),
        }
    }
    Ok(options)
}

/// The cells of the interleaved look-up rounds.
fn cells(options: &Options) -> Vec<Cell> {
    let mut cells = Vec::new();
    let all: Vec<Item> = Kind::ALL.iter().map(|k| Item::Lookup(*k)).collect();
    let groups: Vec<Item> = Kind::GROUPS.iter().map(|k| Item::Lookup(*k)).collect();
    if options.part("lookups") {
        for &size in &options.sizes {
            for backend in report::LOOKUP_BACKENDS {
                cells.push(Cell {
                    size,
                    backend,
                    lines: Lines::Alone,
                    items: all.clone(),
                });
            }
        }
    }
    if options.part("merge") {
        if !(options.part("lookups") && options.sizes.contains(&MERGE_SIZE)) {
            cells.push(Cell {
                size: MERGE_SIZE,
                backend: Backend::Files,
                lines: Lines::Alone,
                items: groups.clone(),
            });
        }
        for backend in report::MERGE_BACKENDS {
            cells.push(Cell {
                size: MERGE_SIZE,
                backend,
                lines: Lines::AfterFilesMerged,
                items: groups.clone(),
            });
        }
    }
    if options.part("id") {
        for backend in report::ID_BACKENDS {
            cells.push(Cell {
                size: ID_SIZE,
                backend,
                lines: Lines::Alone,
                items: vec![Item::Id],
            });
        }
    }
    cells
}

fn run(options: &Options) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (private mount namespaces, the broker's files)".into());
    }
    let started = Instant::now();
    report::preamble(options);
    let cells = cells(options);
    let mut sizes: BTreeSet<u32> = cells.iter().map(|c| c.size).collect();
    if options.part("instructions") {
        sizes.extend(&options.sizes);
    }
    if let Some(dir) = &options.keep_callgrind {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    }
    let mut served = BTreeMap::new();
    for &size in &sizes {
        let t = Instant::now();
        eprintln!(
            "userdb-broker-bench: {size} users and groups, as /etc lines and drop-ins, two brokers"
        );
        served.insert(size, Served::start(size));
        eprintln!(
            "userdb-broker-bench:   ready in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let budget = Budget {
        seconds: options.seconds,
        min_calls: 3,
        id_seconds: options.seconds * 4.0,
        id_min: 1,
    };
    let results = latency::run(&served, &cells, options.rounds, budget)?;
    let mut targets = report::Targets::default();
    if options.part("lookups") {
        report::lookups(&results, &options.sizes, &mut targets);
    }
    if options.part("merge") {
        report::merge(&results, &mut targets);
    }
    if options.part("id") {
        report::id(&results, &mut targets);
    }
    if options.part("instructions") {
        let mut counts = BTreeMap::new();
        for (&size, s) in &served {
            if !options.sizes.contains(&size) {
                continue;
            }
            for backend in report::INSTRUCTION_BACKENDS {
                eprintln!(
                    "userdb-broker-bench: callgrind, {} at {size} users",
                    backend.label()
                );
                counts.insert(
                    (size, backend),
                    instructions::count(s, backend, options.keep_callgrind.as_deref())?,
                );
            }
        }
        report::instructions(&counts, &options.sizes, &mut targets);
    }
    drop(served);
    if options.part("scale") {
        let mut runs = Vec::new();
        for form in [data::Form::EtcLines, data::Form::DropIns] {
            runs.push(scale::run(options.scale_users, form, options.changes)?);
        }
        report::scale(&runs, &mut targets);
    }
    report::targets(&targets);
    report::epilogue(started.elapsed());
    Ok(())
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
