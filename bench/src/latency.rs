//! Time per call through glibc: every (fixture, module, nsswitch.conf)
//! cell runs in its own `nss-probe` process, and the cells take turns,
//! round after round, so that whatever else the machine does hits every
//! module alike. A cell's figure is the median over rounds of the p50 (and
//! of the p90) of its calls in that round.

use std::collections::{BTreeMap, HashMap};

use crate::backend::{probe, Backend, Lines, Served};
use crate::data::{self, FIRST_ID, MANY_GROUPS, MANY_USER};
use crate::table::median;

/// A uid and gid no fixture holds.
const MISSING_ID: u32 = 3_999_999;
/// The trivial module's one entry.
const TRIVIAL_NAME: &str = "trivial";
const TRIVIAL_ID: u32 = 4242;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    PwnamHit,
    PwnamMiss,
    PwuidHit,
    PwuidMiss,
    GrnamHit,
    GrnamMiss,
    GrgidHit,
    GrgidMiss,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::PwnamHit,
        Kind::PwnamMiss,
        Kind::PwuidHit,
        Kind::PwuidMiss,
        Kind::GrnamHit,
        Kind::GrnamMiss,
        Kind::GrgidHit,
        Kind::GrgidMiss,
    ];

    pub const GROUPS: [Kind; 4] = [
        Kind::GrnamHit,
        Kind::GrnamMiss,
        Kind::GrgidHit,
        Kind::GrgidMiss,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::PwnamHit => "getpwnam hit",
            Kind::PwnamMiss => "getpwnam miss",
            Kind::PwuidHit => "getpwuid hit",
            Kind::PwuidMiss => "getpwuid miss",
            Kind::GrnamHit => "getgrnam hit",
            Kind::GrnamMiss => "getgrnam miss",
            Kind::GrgidHit => "getgrgid hit",
            Kind::GrgidMiss => "getgrgid miss",
        }
    }

    pub fn hit(self) -> bool {
        matches!(
            self,
            Kind::PwnamHit | Kind::PwuidHit | Kind::GrnamHit | Kind::GrgidHit
        )
    }

    /// The probe's query: a hit is the last generated entry (the worst
    /// case for a linear scan); the trivial module's hit is its constant.
    pub fn query(self, size: u32, backend: Backend) -> String {
        let last = size - 1;
        let trivial = backend == Backend::Trivial;
        let (name, group, id) = if trivial {
            (TRIVIAL_NAME.to_owned(), TRIVIAL_NAME.to_owned(), TRIVIAL_ID)
        } else {
            (
                data::user_name(last),
                data::group_name(last),
                FIRST_ID + last,
            )
        };
        match self {
            Kind::PwnamHit => format!("passwd:{name}"),
            Kind::PwnamMiss => "passwd:nosuchuser".to_owned(),
            Kind::PwuidHit => format!("uid:{id}"),
            Kind::PwuidMiss => format!("uid:{MISSING_ID}"),
            Kind::GrnamHit => format!("group:{group}"),
            Kind::GrnamMiss => "group:nosuchgroup".to_owned(),
            Kind::GrgidHit => format!("gid:{id}"),
            Kind::GrgidMiss => format!("gid:{MISSING_ID}"),
        }
    }
}

/// What a cell measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Item {
    Lookup(Kind),
    /// The look-ups of `id MANY_USER`, timed whole.
    Id,
}

#[derive(Debug, Clone)]
pub struct Cell {
    pub size: u32,
    pub backend: Backend,
    pub lines: Lines,
    pub items: Vec<Item>,
}

/// Identifies one measured figure.
pub type Key = (u32, Backend, Lines, Item);

/// One round's p50 and p90, in ns.
pub type Figure = (f64, f64);

/// A figure's p50 and p90 in each round, in ns.
#[derive(Debug, Default)]
pub struct Results {
    rounds: HashMap<Key, Vec<Figure>>,
    /// What reading the clock twice costs, in every sample (median, ns).
    timer: Vec<f64>,
    pub rounds_run: usize,
}

impl Results {
    pub fn p50(&self, key: Key) -> Option<f64> {
        let r = self.rounds.get(&key)?;
        Some(median(&r.iter().map(|s| s.0).collect::<Vec<_>>()))
    }

    pub fn p90(&self, key: Key) -> Option<f64> {
        let r = self.rounds.get(&key)?;
        Some(median(&r.iter().map(|s| s.1).collect::<Vec<_>>()))
    }

    pub fn timer(&self) -> f64 {
        median(&self.timer)
    }
}

/// How long each look-up is repeated per round, and at least how often.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub seconds: f64,
    pub min_calls: usize,
    pub id_seconds: f64,
    pub id_min: usize,
}

/// Runs every cell once per round, each round starting one cell further
/// on, and collects the figures.
pub fn run(
    served: &BTreeMap<u32, Served>,
    cells: &[Cell],
    rounds: usize,
    budget: Budget,
) -> Result<Results, String> {
    let mut results = Results::default();
    for round in 0..rounds {
        eprintln!(
            "userdb-broker-bench: look-ups, round {} of {rounds}",
            round + 1
        );
        for i in 0..cells.len() {
            let cell = &cells[(i + round) % cells.len()];
            let served = served
                .get(&cell.size)
                .ok_or(format!("no fixture of {} users", cell.size))?;
            let t = std::time::Instant::now();
            let figures = run_cell(served, cell, budget, &mut results.timer)?;
            eprintln!(
                "userdb-broker-bench:   {} users, {}, {}: {:.1} s",
                cell.size,
                cell.lines.nsswitch(cell.backend).replace('\n', "; "),
                if cell.items.contains(&Item::Id) {
                    "id"
                } else {
                    "look-ups"
                },
                t.elapsed().as_secs_f64()
            );
            for (item, figures) in figures {
                results
                    .rounds
                    .entry((cell.size, cell.backend, cell.lines, item))
                    .or_default()
                    .push(figures);
            }
        }
    }
    results.rounds_run = rounds;
    Ok(results)
}

fn run_cell(
    served: &Served,
    cell: &Cell,
    budget: Budget,
    timer: &mut Vec<f64>,
) -> Result<Vec<(Item, Figure)>, String> {
    let kinds: Vec<Kind> = cell
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Lookup(k) => Some(*k),
            Item::Id => None,
        })
        .collect();
    let mut figures = Vec::new();
    if !kinds.is_empty() {
        let mut argv = vec![
            probe(),
            "samples".into(),
            budget.seconds.to_string(),
            budget.min_calls.to_string(),
        ];
        argv.extend(kinds.iter().map(|k| k.query(cell.size, cell.backend)));
        let out = served.run(cell.backend, cell.lines, &argv)?;
        let wrong = |line: &str| {
            format!(
                "{} ({} users): unexpected probe line {line:?}",
                cell.backend.label(),
                cell.size
            )
        };
        for line in out.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            if fields[0] == "timer" {
                timer.push(
                    fields
                        .get(1)
                        .and_then(|t| t.parse().ok())
                        .ok_or_else(|| wrong(line))?,
                );
                continue;
            }
            let kind = kinds
                .iter()
                .find(|k| k.query(cell.size, cell.backend) == fields[0])
                .ok_or_else(|| wrong(line))?;
            let want = if kind.hit() { "found" } else { "notfound" };
            if fields.get(4) != Some(&want) {
                return Err(format!(
                    "{} ({} users, {:?}): {} answered {:?}, expected {want}",
                    cell.backend.label(),
                    cell.size,
                    cell.lines,
                    fields[0],
                    fields.get(4)
                ));
            }
            let number = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .ok_or_else(|| wrong(line))
            };
            figures.push((Item::Lookup(*kind), (number(2)?, number(3)?)));
        }
        if figures.len() != kinds.len() {
            return Err(format!(
                "{} ({} users): the probe answered {} of {} queries",
                cell.backend.label(),
                cell.size,
                figures.len(),
                kinds.len()
            ));
        }
    }
    if cell.items.contains(&Item::Id) {
        let argv = vec![
            probe(),
            "id".into(),
            MANY_USER.into(),
            budget.id_seconds.to_string(),
            budget.id_min.to_string(),
        ];
        let out = served.run(cell.backend, cell.lines, &argv)?;
        // `id REPS GROUPS FOUND P50 P90`
        let fields: Vec<&str> = out.trim().split('\t').collect();
        let number = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        let expected = f64::from(MANY_GROUPS);
        match (number(2), number(3), number(4), number(5)) {
            (Some(groups), Some(found), Some(p50), Some(p90))
                if groups == expected && found == expected =>
            {
                figures.push((Item::Id, (p50, p90)))
            }
            _ => {
                return Err(format!(
                "{}: `id {MANY_USER}` must see {MANY_GROUPS} groups, each found by gid: {out:?}",
                cell.backend.label()
            ))
            }
        }
    }
    Ok(figures)
}
