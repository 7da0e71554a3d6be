//! Running `nss-probe` and reading what it measured: single timed look-ups
//! (`time`) and look-ups in a loop for a while (`watch`), both timed around
//! the libc call inside the probe, so process start-up is not counted.

use std::collections::HashMap;
use std::time::Duration;

use crate::artifacts;
use crate::nss::{as_user, Nss};
use crate::process::{self, Running};

/// One look-up as `nss-probe time` reports it.
#[derive(Debug)]
pub struct Timed {
    pub query: String,
    pub took: Duration,
    pub answer: String,
}

/// Everything one `nss-probe time` process looked up.
#[derive(Debug)]
pub struct ProbeRun {
    pub lookups: Vec<Timed>,
    pub total: Duration,
}

impl ProbeRun {
    pub fn first(&self) -> &Timed {
        &self.lookups[0]
    }
}

/// A probe's µs figure from `line`.
pub fn parse_micros(text: &str, line: &str) -> Duration {
    Duration::from_micros(
        text.parse()
            .unwrap_or_else(|_| panic!("bad µs {text:?} in probe line {line:?}")),
    )
}

fn probe_argv<'a>(mode: &'a str, args: &[&'a str]) -> Vec<String> {
    let mut argv = vec![artifacts::probe().display().to_string(), mode.to_owned()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    argv
}

/// Runs `nss-probe time QUERY...` in a fresh process (a new client: the
/// module is loaded and connects anew) and parses each look-up's time.
pub fn time(nss: &Nss, queries: &[&str]) -> ProbeRun {
    let argv = probe_argv("time", queries);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = nss.run(&argv);
    out.assert_code(0, "nss-probe time");
    let mut lookups = Vec::new();
    let mut total = None;
    for line in out.stdout.lines() {
        let fields: Vec<&str> = line.splitn(3, '\t').collect();
        match fields[..] {
            ["total", micros] => total = Some(parse_micros(micros, line)),
            [query, micros, answer] => lookups.push(Timed {
                query: query.to_owned(),
                took: parse_micros(micros, line),
                answer: answer.to_owned(),
            }),
            _ => panic!("unexpected probe line {line:?}\n{}", out.describe()),
        }
    }
    assert_eq!(lookups.len(), queries.len(), "{}", out.describe());
    ProbeRun {
        lookups,
        total: total.unwrap_or_else(|| panic!("no total line\n{}", out.describe())),
    }
}

/// The `key=value` numbers of a summary line that starts with `tag`.
pub fn summary(text: &str, tag: &str) -> HashMap<String, u64> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(tag))
        .unwrap_or_else(|| panic!("no `{tag}` line in:\n{text}"));
    line.split_whitespace()
        .skip(1)
        .filter_map(|field| {
            let (key, value) = field.split_once('=')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// `nss-probe watch` running in the background.
#[derive(Debug)]
pub struct Watch {
    running: Running,
    seconds: f64,
}

/// What a [`Watch`] saw.
#[derive(Debug, Clone)]
pub struct WatchReport {
    pub lookups: u64,
    /// Errors instead of answers.
    pub failed: u64,
    /// "Not found" for entries that exist.
    pub not_found: u64,
    /// Other entries than the ones asked for.
    pub wrong: u64,
    /// The slowest look-up.
    pub slowest: Duration,
    /// The first few problems, in words.
    pub problems: Vec<String>,
}

impl WatchReport {
    /// Every look-up that did not get the right answer.
    pub fn bad(&self) -> u64 {
        self.failed + self.not_found + self.wrong
    }
}

/// Starts looking `expectations` (`passwd:NAME=UID`, ...) up in a loop for
/// `seconds`, as root in `nss`'s namespace.
pub fn watch(nss: &Nss, seconds: f64, expectations: &[&str]) -> Watch {
    Watch::start(nss, None, seconds, expectations)
}

/// Same, as `uid` (its gid the same number).
pub fn watch_as(nss: &Nss, uid: u32, seconds: f64, expectations: &[&str]) -> Watch {
    Watch::start(nss, Some(uid), seconds, expectations)
}

impl Watch {
    fn start(nss: &Nss, uid: Option<u32>, seconds: f64, expectations: &[&str]) -> Watch {
        let seconds_text = seconds.to_string();
        let mut args = vec![seconds_text.as_str()];
        args.extend_from_slice(expectations);
        let argv = probe_argv("watch", &args);
        let command = match uid {
            Some(uid) => nss.command(&as_user(uid, &argv)),
            None => nss.command(&argv),
        };
        Watch {
            running: process::spawn(command),
            seconds,
        }
    }

    /// Waits for the loop to end and reads its summary.
    pub fn finish(self) -> WatchReport {
        let limit = Duration::from_secs_f64(self.seconds) + Duration::from_secs(90);
        let out = self.running.wait(limit);
        assert!(!out.timed_out, "nss-probe watch hung\n{}", out.describe());
        let numbers = summary(&out.stdout, "watch");
        let number = |key: &str| {
            numbers
                .get(key)
                .copied()
                .unwrap_or_else(|| panic!("no {key}= in\n{}", out.describe()))
        };
        WatchReport {
            lookups: number("lookups"),
            failed: number("failed"),
            not_found: number("notfound"),
            wrong: number("wrong"),
            slowest: Duration::from_micros(number("max_us")),
            problems: out
                .stdout
                .lines()
                .filter_map(|l| l.strip_prefix("problem: "))
                .map(str::to_owned)
                .collect(),
        }
    }
}
