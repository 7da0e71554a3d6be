//! Build-time tasks of userdb-broker. `dist-assets OUT_DIR` writes what
//! the packages install besides the binaries, from the same clap
//! definitions the binaries parse with (`userdb_broker::cli`):
//!
//! ```text
//! OUT_DIR/man/userdb-brokerd.8
//! OUT_DIR/man/userdb-brokerctl.1
//! OUT_DIR/man/nss-broker.8                  (packaging/man/nss-broker.8, hand-written)
//! OUT_DIR/completions/bash/userdb-brokerctl
//! OUT_DIR/completions/bash/userdb-brokerd
//! OUT_DIR/completions/zsh/_userdb-brokerctl
//! OUT_DIR/completions/zsh/_userdb-brokerd
//! OUT_DIR/completions/fish/userdb-brokerctl.fish
//! OUT_DIR/completions/fish/userdb-brokerd.fish
//! ```
//!
//! The packaging installs from exactly this layout.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::{Arg, Command, CommandFactory};
use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;
use userdb_broker::cli::{self, Brokerctl, Brokerd};

/// The module's page: it has no command line to generate it from.
const NSS_BROKER_PAGE: &str = include_str!("../../packaging/man/nss-broker.8");

/// Writes every asset below `out_dir` and returns their paths, in the
/// order of the layout above.
pub fn dist_assets(out_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut write = |relative: &str, bytes: &[u8]| -> io::Result<()> {
        let path = out_dir.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, bytes)?;
        written.push(path);
        Ok(())
    };

    write("man/userdb-brokerd.8", &brokerd_page()?)?;
    write("man/userdb-brokerctl.1", &brokerctl_page()?)?;
    write("man/nss-broker.8", NSS_BROKER_PAGE.as_bytes())?;
    for (shell, directory, file_name) in [
        (Shell::Bash, "bash", "{}"),
        (Shell::Zsh, "zsh", "_{}"),
        (Shell::Fish, "fish", "{}.fish"),
    ] {
        for mut command in [Brokerctl::command(), Brokerd::command()] {
            let name = command.get_name().to_owned();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, &name, &mut script);
            if shell == Shell::Bash {
                script = fix_bash_dispatch(&script, &name);
            }
            let file = file_name.replace("{}", &name);
            write(&format!("completions/{directory}/{file}"), &script)?;
        }
    }
    Ok(written)
}

/// clap_complete's bash script names each command's state by escaping
/// the binary's name twice over: the loop reading the words escapes a `-`
/// in it as `__`, the arms matching the state as `__subcmd__`, so for a
/// name like `userdb-brokerctl` no command's options ever complete
/// (clap-rs/clap#6421, open in clap_complete 4.6.12). Spelling the arms as
/// the loop does fixes it; once clap_complete does, this changes nothing.
fn fix_bash_dispatch(script: &[u8], name: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(script);
    let arm = format!("{}__subcmd__", name.replace('-', "__subcmd__"));
    let state = format!("{}__subcmd__", name.replace('-', "__"));
    text.replace(&arm, &state).into_bytes()
}

fn brokerd_page() -> io::Result<Vec<u8>> {
    let command = Brokerd::command();
    let mut page = head(&command, "8", "System Manager's Manual")?;
    let mut roff = Roff::new();
    exit_status(&mut roff, &cli::BROKERD_EXIT_STATUS);
    files(&mut roff, &cli::brokerd_files());
    roff.control("SH", ["ENVIRONMENT"]);
    for (variable, meaning) in cli::BROKERD_ENVIRONMENT {
        roff.control("TP", []);
        roff.text([bold(variable)]);
        roff.text([roman(meaning)]);
    }
    see_also(
        &mut roff,
        &[
            ("userdb-brokerctl", "1"),
            ("nss-broker", "8"),
            ("nsswitch.conf", "5"),
            ("nss-systemd", "8"),
            ("userdbctl", "1"),
        ],
    );
    page.extend(roff.render().into_bytes());
    Man::new(command).render_version_section(&mut page)?;
    Ok(page)
}

fn brokerctl_page() -> io::Result<Vec<u8>> {
    let command = Brokerctl::command();
    let mut page = head(&command, "1", "User Commands")?;
    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    for sub in command.get_subcommands() {
        subcommand(&mut roff, sub);
    }
    exit_status(&mut roff, &cli::BROKERCTL_EXIT_STATUS);
    files(&mut roff, &cli::brokerctl_files());
    see_also(
        &mut roff,
        &[
            ("userdb-brokerd", "8"),
            ("nss-broker", "8"),
            ("nsswitch.conf", "5"),
            ("userdbctl", "1"),
        ],
    );
    page.extend(roff.render().into_bytes());
    Man::new(command).render_version_section(&mut page)?;
    Ok(page)
}

/// Title, NAME, SYNOPSIS, DESCRIPTION and OPTIONS, as clap_mangen writes
/// them; the exit statuses get their own section instead of the `--help`
/// text that also lists them.
fn head(command: &Command, section: &str, manual: &str) -> io::Result<Vec<u8>> {
    let man = Man::new(command.clone().after_long_help(None::<&str>))
        .section(section)
        .date(page_date())
        .manual(manual)
        .source(format!("userdb-broker {}", env!("CARGO_PKG_VERSION")));
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    Ok(page)
}

/// The date in the pages' title line: `SOURCE_DATE_EPOCH` when set (as
/// package builds do, for reproducible output), else today; YYYY-MM-DD.
fn page_date() -> String {
    let seconds = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    let (year, month, day) = civil_from_days(seconds / 86_400);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days since the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// One command of userdb-brokerctl: its synopsis, description and own
/// options (the global ones are in OPTIONS).
fn subcommand(roff: &mut Roff, sub: &Command) {
    let own: Vec<&Arg> = sub
        .get_arguments()
        .filter(|a| !a.is_global_set() && a.get_id() != "help")
        .collect();
    let mut synopsis = vec![bold(sub.get_name())];
    for arg in &own {
        synopsis.push(roman(" "));
        synopsis.extend(usage_of(arg));
    }
    roff.control("SS", []);
    roff.text(synopsis);
    let about = sub
        .get_long_about()
        .or_else(|| sub.get_about())
        .map(ToString::to_string)
        .unwrap_or_default();
    roff.text([roman(about)]);
    for arg in own.iter().filter(|a| !a.is_positional()) {
        roff.control("TP", []);
        roff.text(usage_of(arg));
        let mut help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(ToString::to_string)
            .unwrap_or_default();
        if let Some(default) = arg.get_default_values().first() {
            help.push_str(&format!(" [default: {}]", default.to_string_lossy()));
        }
        roff.text([roman(help)]);
    }
}

/// `--file FILE`, `[--config FILE]` or `NAME|UID`, as a synopsis shows it.
fn usage_of(arg: &Arg) -> Vec<Inline> {
    let value = arg
        .get_value_names()
        .and_then(|names| names.first())
        .map(ToString::to_string)
        .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
    match arg.get_long() {
        Some(long) => vec![
            roman("["),
            bold(format!("--{long}")),
            roman(" "),
            italic(value),
            roman("]"),
        ],
        None => vec![italic(value)],
    }
}

fn exit_status(roff: &mut Roff, statuses: &[(u8, &str)]) {
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in statuses {
        roff.control("TP", []);
        roff.text([bold(code.to_string())]);
        roff.text([roman(*meaning)]);
    }
}

fn files(roff: &mut Roff, files: &[(String, &str)]) {
    roff.control("SH", ["FILES"]);
    for (path, meaning) in files {
        roff.control("TP", []);
        roff.text([italic(path.as_str())]);
        roff.text([roman(*meaning)]);
    }
}

fn see_also(roff: &mut Roff, pages: &[(&str, &str)]) {
    roff.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (i, (name, section)) in pages.iter().enumerate() {
        if i > 0 {
            line.push(roman(", "));
        }
        line.push(bold(*name));
        line.push(roman(format!("({section})")));
    }
    roff.text(line);
}
