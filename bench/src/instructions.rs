//! Instructions per look-up, counted by `valgrind --tool=callgrind`: the
//! same count on a busy machine as on an idle one.
//!
//! The probe's `loop` mode looks every query up once (loading the module,
//! mapping files, reading nsswitch.conf), then each query N times inside
//! one function, `counted_lookups`. Callgrind counts only inside that
//! function (`--collect-atstart=no --toggle-collect`) and writes one
//! profile per call of it (`--dump-before`), so each query's count is its
//! own profile's total divided by N: user-space instructions of glibc and
//! the module together (a system call's kernel work is not counted).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use crate::backend::{probe, Backend, Lines, Served};
use crate::latency::Kind;

/// How many times each query is repeated: fewer where `files` scans
/// every line, so that one run stays within a minute under valgrind.
pub fn repeats(backend: Backend, size: u32) -> u32 {
    match backend {
        Backend::Files => (300_000 / size).clamp(3, 1000),
        _ => 1000,
    }
}

/// Instructions per look-up of each kind, for `backend` on `served`; each
/// query's profile is kept in `keep` (as `BACKEND-SIZE-QUERY.callgrind`)
/// for `callgrind_annotate`, if given.
pub fn count(
    served: &Served,
    backend: Backend,
    keep: Option<&Path>,
) -> Result<HashMap<Kind, f64>, String> {
    let dir = served
        .fixture()
        .scratch()
        .join(format!("callgrind-{backend:?}"));
    fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let out_file = dir.join("out");
    let n = repeats(backend, served.size);
    let mut argv: Vec<String> = vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        "--collect-atstart=no".into(),
        "--toggle-collect=*counted_lookups".into(),
        "--dump-before=*counted_lookups".into(),
        format!("--callgrind-out-file={}", out_file.display()),
        probe(),
        "loop".into(),
        n.to_string(),
    ];
    argv.extend(Kind::ALL.iter().map(|k| k.query(served.size, backend)));
    let out = served.run(backend, Lines::Alone, &argv)?;
    let answers: Vec<&str> = out
        .trim()
        .rsplit('\t')
        .next()
        .unwrap_or_default()
        .split(',')
        .collect();
    let mut counts = HashMap::new();
    for (i, kind) in Kind::ALL.iter().enumerate() {
        let want = if kind.hit() { "found" } else { "notfound" };
        if answers.get(i) != Some(&want) {
            return Err(format!(
                "{} under callgrind: {} answered {:?}",
                backend.label(),
                kind.label(),
                answers.get(i)
            ));
        }
        // Dump 1 is everything before the first counted call (nothing
        // counted); dump i+2 ends the i-th query's loop; the last query's
        // loop ends in the profile written at exit.
        let profile = if i + 1 < Kind::ALL.len() {
            dir.join(format!("out.{}", i + 2))
        } else {
            out_file.clone()
        };
        let text =
            fs::read_to_string(&profile).map_err(|e| format!("read {}: {e}", profile.display()))?;
        let total: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("totals:"))
            .and_then(|t| t.trim().parse().ok())
            .ok_or(format!("{}: no totals line", profile.display()))?;
        counts.insert(*kind, total / f64::from(n));
        if let Some(keep) = keep {
            let name = format!(
                "{backend:?}-{}-{}.callgrind",
                served.size,
                kind.label().replace(' ', "-")
            );
            fs::copy(&profile, keep.join(&name)).map_err(|e| format!("keep {name}: {e}"))?;
        }
    }
    let _ = fs::remove_dir_all(&dir);
    Ok(counts)
}
