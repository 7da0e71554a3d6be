//! The broker at scale: start-up, a change, memory, the snapshot file,
//! with 100,000 users and 105,000 groups written as /etc lines or as
//! drop-ins. The broker runs alone here (no other broker, no look-up
//! load), with `log_level = "debug"` so that it logs each publication of
//! the snapshot file with its cost.

use std::fs;
use std::thread;
use std::time::Duration;

use userdb_broker_tests::{monotonic_ns, Broker, DropinDir, Fixture, Nss};

use crate::backend::probe;
use crate::data::{self, Change, Form, Scale};
use crate::floor;

/// What one change cost.
#[derive(Debug, Clone)]
pub struct Changed {
    /// From the change's rename to the first look-up through the module
    /// that returned the new entry.
    pub served_ms: f64,
    /// The snapshot file publications it caused, and the slowest's cost.
    pub publications: usize,
    pub publish_ms: Option<u64>,
    pub rss_kb: u64,
}

#[derive(Debug, Clone)]
pub struct Run {
    pub form: Form,
    pub scale: Scale,
    pub ready_ms: f64,
    /// The system calls a start on the drop-ins needs, alone (the least of
    /// [`FLOOR_RUNS`]); none for /etc lines.
    pub floor_ms: Option<f64>,
    pub first_answer_ms: f64,
    pub build_ms: Option<u64>,
    pub publish_ms: Option<u64>,
    pub file_bytes: u64,
    pub rss_kb: u64,
    pub hwm_kb: u64,
    /// `VmRSS` of a broker started the same way on no data: what per-user
    /// figures are counted over, as the at-scale test counts them.
    pub empty_rss_kb: u64,
    pub changes: Vec<Changed>,
    pub final_rss_kb: u64,
    pub final_hwm_kb: u64,
    /// CPU the idle broker used over [`IDLE_WINDOW`], in % of one core.
    pub idle_cpu_percent: f64,
}

/// How long the probe may wait for an answer.
const ANSWER_LIMIT_S: &str = "20";
/// How long the broker may take to start: far above the target, so that a
/// missed target is measured rather than cut short.
const READY_LIMIT: Duration = Duration::from_secs(300);
/// How often the floor is measured.
const FLOOR_RUNS: usize = 3;
/// How long the idle broker's CPU use is watched.
const IDLE_WINDOW: Duration = Duration::from_secs(3);

/// `VmRSS` and `VmHWM` of `pid`, in kB.
fn memory_kb(pid: u32) -> Result<(u64, u64), String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("broker status: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or(format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat =
        fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("broker stat: {e}"))?;
    // Fields after the command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    match (tick(11), tick(12)) {
        (Some(user), Some(system)) => Ok(user + system),
        _ => Err(format!("unreadable /proc/{pid}/stat")),
    }
}

/// A debug line's `key=value` field.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// The broker's "snapshot file published" lines: (generation, bytes, ms).
fn publications(log: &str) -> Vec<(u64, u64, u64)> {
    log.lines()
        .filter(|l| l.contains("snapshot file published"))
        .filter_map(|l| Some((field(l, "generation")?, field(l, "bytes")?, field(l, "ms")?)))
        .collect()
}

/// Runs `until` in the look-up namespace: the moment (CLOCK_MONOTONIC ns)
/// the module first answered `query` with `line`, and when it first asked.
fn seen(nss: &Nss, query: &str, line: &str) -> Result<(u64, u64), String> {
    let outcome = nss.run(&[&probe(), "until", ANSWER_LIMIT_S, query, line]);
    let fields: Vec<&str> = outcome.stdout.trim().split('\t').collect();
    match (
        fields.first(),
        fields.get(1).and_then(|v| v.parse().ok()),
        fields.get(3).and_then(|v| v.parse().ok()),
    ) {
        (Some(&"seen"), Some(at), Some(first)) if outcome.code() == Some(0) => Ok((at, first)),
        _ => Err(format!(
            "{query} never answered {line:?}: {}",
            outcome.describe()
        )),
    }
}

pub fn run(users: u32, form: Form, changes: u32) -> Result<Run, String> {
    eprintln!(
        "userdb-broker-bench: writing {users} users as {}",
        form.label()
    );
    let empty_rss_kb = {
        let empty = Fixture::new();
        let broker = Broker::launch(&empty)
            .config("log_level = \"debug\"\n")
            .start();
        memory_kb(broker.pid())?.0
    };
    let (fixture, scale) = data::at_scale(users, form);
    let floor_ms = match form {
        Form::DropIns => {
            let dir = fixture.root().join(DropinDir::Etc.relative());
            let runs = (0..FLOOR_RUNS)
                .map(|_| floor::start_floor_ms(&dir))
                .collect::<Result<Vec<f64>, String>>()?;
            runs.into_iter().reduce(f64::min)
        }
        Form::EtcLines => None,
    };
    eprintln!("userdb-broker-bench: starting the broker on them");
    let started = monotonic_ns();
    let broker = Broker::launch(&fixture)
        .config("log_level = \"debug\"\n")
        .ready_within(READY_LIMIT)
        .start();
    let ready_ms = (monotonic_ns() - started) as f64 / 1e6;
    let nss = Nss::new(&fixture, "passwd: broker\ngroup: broker\n");
    let last = users - 1;
    let (answered, _) = seen(
        &nss,
        &format!("passwd:{}", data::user_name(last)),
        &data::passwd_line(last, &data::default_gecos(last)),
    )?;
    let first_answer_ms = (answered - started) as f64 / 1e6;
    let (rss_kb, hwm_kb) = memory_kb(broker.pid())?;
    let log = broker.log();
    let published = publications(&log);
    let build_ms = log
        .lines()
        .find(|l| l.contains("snapshot built"))
        .and_then(|l| field(l, "merge_ms"));
    let file_bytes = fs::metadata(fixture.snapshot_path())
        .map_err(|e| format!("snapshot file: {e}"))?
        .len();
    let mut seen_generation = published.iter().map(|p| p.0).max().unwrap_or(0);
    let mut done = Vec::new();
    for n in 1..=changes {
        let i = last - n;
        let gecos = format!("Changed {n}");
        let change = Change::new(form, users, i, &gecos);
        done.push(measure_change(
            &fixture,
            &broker,
            &nss,
            &change,
            i,
            &gecos,
            &mut seen_generation,
        )?);
    }
    let before = cpu_ticks(broker.pid())?;
    thread::sleep(IDLE_WINDOW);
    let ticks = cpu_ticks(broker.pid())? - before;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let idle_cpu_percent = ticks as f64 / per_second / IDLE_WINDOW.as_secs_f64() * 100.0;
    let (final_rss_kb, final_hwm_kb) = memory_kb(broker.pid())?;
    Ok(Run {
        form,
        scale,
        ready_ms,
        floor_ms,
        first_answer_ms,
        build_ms,
        publish_ms: published.first().map(|p| p.2),
        file_bytes,
        rss_kb,
        hwm_kb,
        empty_rss_kb,
        changes: done,
        final_rss_kb,
        final_hwm_kb,
        idle_cpu_percent,
    })
}

/// Applies `change` while a probe looks user `i` up every millisecond.
fn measure_change(
    fixture: &Fixture,
    broker: &Broker,
    nss: &Nss,
    change: &Change,
    i: u32,
    gecos: &str,
    seen_generation: &mut u64,
) -> Result<Changed, String> {
    let query = format!("passwd:{}", data::user_name(i));
    let line = data::passwd_line(i, gecos);
    let watcher = {
        let nss = nss.clone();
        thread::spawn(move || seen(&nss, &query, &line))
    };
    // Time for the probe to start and look up the old entry.
    thread::sleep(Duration::from_millis(500));
    let changed = monotonic_ns();
    change.apply(fixture);
    let (at, first) = watcher
        .join()
        .map_err(|_| "the watching thread panicked".to_owned())??;
    if first >= changed {
        return Err("the probe started after the change: not a measurement".into());
    }
    // The publication is logged right after the rename that served it.
    thread::sleep(Duration::from_millis(200));
    let fresh: Vec<(u64, u64, u64)> = publications(&broker.log())
        .into_iter()
        .filter(|p| p.0 > *seen_generation)
        .collect();
    *seen_generation = fresh.iter().map(|p| p.0).max().unwrap_or(*seen_generation);
    Ok(Changed {
        served_ms: at.saturating_sub(changed) as f64 / 1e6,
        publications: fresh.len(),
        publish_ms: fresh.iter().map(|p| p.2).max(),
        rss_kb: memory_kb(broker.pid())?.0,
    })
}
