//! Replays every file of `fuzz/corpus/<target>/` (what fuzzing found,
//! minimised) and `fuzz/regressions/<target>/` (every input that ever failed
//! a check, which minimising must not drop) through its target's check on the
//! stable toolchain, so `cargo test` checks them all.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use userdb_fuzz_checks::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_input_passes_its_check() {
    let mut failed = Vec::new();
    for target in TARGETS {
        let corpus = files_in(&fuzz_dir().join("corpus").join(target.name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{} is empty", target.name);
        let regressions = fuzz_dir().join("regressions").join(target.name);
        let mut files = corpus;
        if regressions.exists() {
            files.extend(files_in(&regressions));
        }
        for file in &files {
            let data = std::fs::read(file).unwrap();
            if catch_unwind(AssertUnwindSafe(|| (target.check)(&data))).is_err() {
                failed.push(file.display().to_string());
            }
        }
        println!("{}: {} inputs", target.name, files.len());
    }
    assert!(failed.is_empty(), "checks failed on: {failed:#?}");
}

/// The names of the targets `cargo fuzz` builds, from `fuzz/Cargo.toml`.
fn fuzz_binaries() -> BTreeSet<String> {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let manifest: toml::Table = manifest.parse().unwrap();
    manifest["bin"]
        .as_array()
        .unwrap()
        .iter()
        .map(|bin| bin["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_target_is_a_fuzz_binary_with_a_corpus() {
    let registered: BTreeSet<String> = TARGETS.iter().map(|t| t.name.to_owned()).collect();
    assert_eq!(
        fuzz_binaries(),
        registered,
        "fuzz/Cargo.toml against TARGETS"
    );
    let names_in = |dir: &str, suffix: &str| -> BTreeSet<String> {
        files_in(&fuzz_dir().join(dir))
            .iter()
            .filter_map(|p| {
                p.file_name()?
                    .to_str()?
                    .strip_suffix(suffix)
                    .map(str::to_owned)
            })
            .collect()
    };
    assert_eq!(
        names_in("fuzz_targets", ".rs"),
        registered,
        "fuzz/fuzz_targets/"
    );
    assert_eq!(names_in("corpus", ""), registered, "fuzz/corpus/");
    let unknown: Vec<String> = names_in("regressions", "")
        .difference(&registered)
        .cloned()
        .collect();
    assert!(
        unknown.is_empty(),
        "fuzz/regressions/ of no target: {unknown:?}"
    );
}
