//! The man pages and shell completions as the packages install them:
//! exactly the promised files, pages that man renders without a warning,
//! and completions each shell accepts and that complete the commands.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use userdb_broker::cli::BROKERCTL_EXIT_STATUS;

/// The assets, written into a fresh directory for one test.
fn assets(tag: &str) -> PathBuf {
    let out = std::env::temp_dir().join(format!("xtask-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&out);
    xtask::dist_assets(&out).expect("dist-assets");
    out
}

/// Runs a program the test needs; its absence is a failure, not a skip
/// (scripts/test.sh installs every one of them).
fn run(program: &str, args: &[&str], file: &Path) -> Output {
    Command::new(program)
        .args(args)
        .arg(file)
        .env("MANWIDTH", "80")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/test.sh installs it): {e}"))
}

fn assert_quiet_success(out: &Output, what: &str) {
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// man's output as plain text: without the overstrikes of bold and
/// underline (`X\u{8}X`, `_\u{8}X`), with hyphens as typed.
fn plain(rendered: &[u8]) -> String {
    let mut out: Vec<char> = Vec::new();
    for c in String::from_utf8_lossy(rendered).chars() {
        match c {
            '\u{8}' => {
                out.pop();
            }
            '\u{2010}' | '\u{2012}' => out.push('-'),
            c => out.push(c),
        }
    }
    out.into_iter().collect()
}

fn files_below(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap();
                found.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}

#[test]
fn dist_assets_writes_the_pages_and_completions_the_packages_install() {
    let out = assets("pages");
    assert_eq!(
        files_below(&out),
        [
            "completions/bash/userdb-brokerctl",
            "completions/bash/userdb-brokerd",
            "completions/fish/userdb-brokerctl.fish",
            "completions/fish/userdb-brokerd.fish",
            "completions/zsh/_userdb-brokerctl",
            "completions/zsh/_userdb-brokerd",
            "man/nss-broker.8",
            "man/userdb-brokerctl.1",
            "man/userdb-brokerd.8",
        ]
    );

    for page in ["userdb-brokerd.8", "userdb-brokerctl.1", "nss-broker.8"] {
        let path = out.join("man").join(page);
        let rendered = run("man", &["-l", "-Tutf8"], &path);
        assert_quiet_success(&rendered, &format!("man -l {page}"));
        assert!(
            rendered.stdout.len() > 1000,
            "{page} renders almost nothing"
        );
        let checked = run("groff", &["-ww", "-z", "-man"], &path);
        assert_quiet_success(&checked, &format!("groff -ww {page}"));
    }

    let page = plain(
        &run(
            "man",
            &["-l", "-Tutf8"],
            &out.join("man/userdb-brokerctl.1"),
        )
        .stdout,
    );
    for needle in [
        "memberships NAME|UID",
        "is-enabled [--file FILE]",
        "check [--file FILE] [--config FILE]",
        "EXIT STATUS",
        "/etc/nsswitch.conf.userdb-broker.bak",
    ] {
        assert!(
            page.contains(needle),
            "userdb-brokerctl.1 lacks {needle:?}:\n{page}"
        );
    }
    for (code, _) in BROKERCTL_EXIT_STATUS {
        assert!(
            page.contains(&format!("\n       {code} ")),
            "exit status {code}"
        );
    }
    assert_eq!(
        fs::read_to_string(out.join("man/nss-broker.8")).unwrap(),
        include_str!("../../packaging/man/nss-broker.8")
    );
    let _ = fs::remove_dir_all(&out);
}

/// What the bash completion offers after `words` (the last one partial).
fn bash_completes(script: &Path, words: &[&str]) -> Vec<String> {
    let function = format!("_{}", words[0].replace('-', "__"));
    let program = format!(
        "source {script}; COMP_WORDS=({words}); COMP_CWORD={last}; COMP_LINE='{line}'; \
         COMP_POINT=${{#COMP_LINE}}; {function} {command} '{current}' '{previous}'; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script = script.display(),
        words = words.join(" "),
        last = words.len() - 1,
        line = words.join(" "),
        command = words[0],
        current = words[words.len() - 1],
        previous = words[words.len() - 2],
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &program])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn completions_parse_in_their_shells_and_complete_the_commands() {
    let out = assets("completions");
    for name in ["userdb-brokerctl", "userdb-brokerd"] {
        let bash = out.join("completions/bash").join(name);
        assert_quiet_success(&run("bash", &["-n"], &bash), "bash -n");
        let zsh = out.join("completions/zsh").join(format!("_{name}"));
        assert_quiet_success(&run("zsh", &["-n"], &zsh), "zsh -n");
        let fish = out.join("completions/fish").join(format!("{name}.fish"));
        assert_quiet_success(&run("fish", &["-n"], &fish), "fish -n");
    }

    let bash = out.join("completions/bash/userdb-brokerctl");
    assert_eq!(
        bash_completes(&bash, &["userdb-brokerctl", "is-"]),
        ["is-enabled"]
    );
    let options = bash_completes(&bash, &["userdb-brokerctl", "check", "--"]);
    for option in ["--file", "--config", "--json", "--socket"] {
        assert!(options.iter().any(|o| o == option), "{option}: {options:?}");
    }
    let daemon = bash_completes(
        &out.join("completions/bash/userdb-brokerd"),
        &["userdb-brokerd", "--con"],
    );
    assert_eq!(daemon, ["--config"]);

    let fish = out.join("completions/fish/userdb-brokerctl.fish");
    let listed = Command::new("fish")
        .args(["--no-config", "-c"])
        .arg(format!(
            "source {}; complete -C 'userdb-brokerctl mem'",
            fish.display()
        ))
        .output()
        .expect("run fish");
    let listed = String::from_utf8_lossy(&listed.stdout);
    let names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split('\t').next())
        .collect();
    assert_eq!(names, ["members", "memberships"], "{listed}");
    let _ = fs::remove_dir_all(&out);
}
