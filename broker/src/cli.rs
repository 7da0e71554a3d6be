//! The command lines of `userdb-brokerd` and `userdb-brokerctl`, as clap
//! definitions: the binaries parse with them, and `xtask dist-assets`
//! writes the man pages and shell completions from them, so `--help`, the
//! pages and the completions cannot disagree.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_FILE;
use crate::nsswitch_config::{BACKUP_SUFFIX, DEFAULT_FILE};

/// Exit status: the command did what was asked (the name is known, the
/// file is as asked).
pub const EXIT_OK: u8 = 0;
/// Exit status: anything else that failed, `check` found a warning, or
/// `is-enabled` found no line naming `broker`.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: the broker answered that no such user or group exists.
pub const EXIT_NOT_FOUND: u8 = 2;
/// Exit status: the broker is absent or did not answer in time.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit status: not found where the broker could look, but a source was
/// down: the user or group may exist there.
pub const EXIT_INCOMPLETE: u8 = 4;
/// Exit status: the command line itself is wrong (sysexits' EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// The exit statuses of `userdb-brokerctl`, for `--help` and the man page.
pub const BROKERCTL_EXIT_STATUS: [(u8, &str); 6] = [
    (
        EXIT_OK,
        "Success: the user or group is known, the file is as asked, check found no warning.",
    ),
    (
        EXIT_FAILURE,
        "check found a warning, is-enabled found no line naming broker, or another failure \
         (an unreadable file, a broken answer).",
    ),
    (
        EXIT_NOT_FOUND,
        "The user or group is not known to the broker.",
    ),
    (
        EXIT_UNREACHABLE,
        "The broker is absent or does not answer within --timeout-ms; the message names \
         the socket.",
    ),
    (
        EXIT_INCOMPLETE,
        "Not found where the broker could look, but a source was down (status says which): \
         the user or group may exist there.",
    ),
    (EXIT_USAGE, "The command line is wrong."),
];

/// The exit statuses of `userdb-brokerd`.
pub const BROKERD_EXIT_STATUS: [(u8, &str); 3] = [
    (EXIT_OK, "Stopped by SIGTERM or SIGINT."),
    (
        EXIT_FAILURE,
        "Could not start or serve: started as PID 1, an invalid configuration file, a socket \
         that cannot be bound.",
    ),
    (EXIT_USAGE, "The command line is wrong."),
];

/// Prints what clap says about a command line it did not run (help,
/// version, or the error with a usage line) and gives the exit status:
/// 0 for help and version, [`EXIT_USAGE`] for a wrong command line.
pub fn parse_failure(error: &clap::Error) -> ExitCode {
    // Printing to a closed stdout or stderr cannot be reported anywhere.
    let _ = error.print();
    if error.use_stderr() {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::from(EXIT_OK)
    }
}

fn exit_status_help(statuses: &[(u8, &str)]) -> String {
    let mut text = String::from("Exit status:");
    for (code, meaning) in statuses {
        text.push_str(&format!("\n  {code:<3} {meaning}"));
    }
    text
}

/// `userdb-brokerd`'s command line. Every option overrides the same key of
/// the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "userdb-brokerd",
    version,
    about = "Serve users and groups to libnss_broker and userdb clients over Varlink",
    long_about = "Serve users and groups to libnss_broker and userdb clients over Varlink.\n\n\
        userdb-brokerd merges /etc/passwd, /etc/group (and shadow), systemd's JSON user and \
        group drop-ins and the Varlink userdb services in /run/systemd/userdb/, each source \
        with its own deadline and circuit breaker, and answers on one socket with \
        io.systemd.UserDatabase and io.userdb.Broker. It runs in the foreground, logs to \
        stderr, sends READY=1 to $NOTIFY_SOCKET, removes its socket on SIGTERM or SIGINT, \
        refuses to run as PID 1, and never resolves users through NSS itself.",
    after_long_help = exit_status_help(&BROKERD_EXIT_STATUS)
)]
pub struct Brokerd {
    /// Where to listen [default: /run/userdb-broker/io.userdb.Broker]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Read every data path below DIR (DIR/etc/passwd, DIR/etc/userdb/,
    /// DIR/run/systemd/userdb/, ...) [default: /]
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// The TOML configuration file [default: /etc/userdb-broker/userdb-brokerd.toml, when it exists]
    #[arg(long, value_name = "FILE", long_help = CONFIG_HELP)]
    pub config: Option<PathBuf>,
    /// Log filter when RUST_LOG is unset, e.g. "debug" or "info,userdb_broker=trace" [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Most client connections held at once; at the cap the longest-idle one is closed [default: 4096]
    #[arg(long, value_name = "N", value_parser = positive)]
    pub max_connections: Option<u64>,
    /// Close a connection silent for this long, in milliseconds [default: 30000]
    #[arg(long, value_name = "MS", value_parser = positive)]
    pub idle_timeout_ms: Option<u64>,
    /// Deadline of one look-up in each Varlink service, in milliseconds [default: 250]
    #[arg(long, value_name = "MS", value_parser = positive)]
    pub source_timeout_ms: Option<u64>,
}

const CONFIG_HELP: &str = "The TOML configuration file. Without this option \
    /etc/userdb-broker/userdb-brokerd.toml is read when it exists (it is the host's file, \
    never read below --root); a file named here must exist. Options given on the command \
    line override its keys.";

fn positive(value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number greater than 0".into()),
    }
}

/// `userdb-brokerctl`'s command line: options are accepted before and
/// after the command.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "userdb-brokerctl",
    version,
    about = "Look up users and groups through userdb-brokerd; review and edit nsswitch.conf",
    long_about = "Look up users and groups through userdb-brokerd, show its status, and review \
        or edit /etc/nsswitch.conf for the broker's NSS module (service name 'broker'). \
        Options are accepted before and after the command. With --json every command prints \
        one JSON document.",
    after_long_help = exit_status_help(&BROKERCTL_EXIT_STATUS),
    subcommand_value_name = "COMMAND",
    disable_help_subcommand = true,
    subcommand_help_heading = "Commands"
)]
pub struct Brokerctl {
    #[command(flatten)]
    pub options: CtlOptions,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// Options every command takes.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct CtlOptions {
    /// The broker's socket
    #[arg(long, global = true, value_name = "PATH", default_value = userdb_proto::DEFAULT_SOCKET_PATH)]
    pub socket: PathBuf,
    /// Print one JSON document instead of text
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on the broker after this many milliseconds
    #[arg(long, global = true, value_name = "MS", default_value_t = 5000, value_parser = positive)]
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum CtlCommand {
    /// One user, as a passwd line (the JSON user record with --json)
    User {
        /// A user name, or a UID (all digits)
        #[arg(value_name = "NAME|UID")]
        key: String,
    },
    /// One group, as a group line with its members merged from every source
    /// (the JSON group record with --json)
    Group {
        /// A group name, or a GID (all digits)
        #[arg(value_name = "NAME|GID")]
        key: String,
    },
    /// Every user, as passwd lines (a JSON array of user records with --json)
    Users,
    /// Every group, as group lines (a JSON array of group records with --json)
    Groups,
    /// The members of a group, one per line (a JSON array with --json)
    Members {
        /// A group name, or a GID (all digits)
        #[arg(value_name = "NAME|GID")]
        group: String,
    },
    /// The groups a user is a member of, one per line (a JSON array with --json)
    #[command(
        long_about = "The groups a user is a member of, one per line (a JSON array with \
            --json), as the broker's GetMemberships lists them: the union over every source. \
            The user's primary group is not among them unless a membership names it."
    )]
    Memberships {
        /// A user name, or a UID (all digits)
        #[arg(value_name = "NAME|UID")]
        user: String,
    },
    /// The broker's version, uptime, configuration, calls by method with latency
    /// percentiles, and every source with its state and last error
    Status,
    /// Drop the cached answers of the Varlink services (root only)
    #[command(
        long_about = "Drop the cached answers of the Varlink services, so that the next \
            look-ups ask them again (as nscd -i and sss_cache -E do). Local sources are never \
            cached: they are re-read when they change. Root only."
    )]
    Flush,
    /// Review nsswitch.conf and the daemon's configuration file; exit 1 on a warning
    #[command(
        long_about = "Review nsswitch.conf: warn about lines that can deadlock with PID 1, \
            break look-ups or hide users, and advise where the broker would serve better. \
            Also validate the daemon's configuration file (parse errors, unknown keys). Exit 1 \
            on a warning or an invalid configuration file, 0 when there is only advice."
    )]
    Check {
        #[command(flatten)]
        file: NsswitchFile,
        /// The daemon's configuration file to validate [default: /etc/userdb-broker/userdb-brokerd.toml, when it exists]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Add broker to the passwd, group, shadow and gshadow lines
    #[command(long_about = ENABLE_HELP)]
    Enable {
        #[command(flatten)]
        file: NsswitchFile,
    },
    /// Restore the lines enable replaced
    #[command(long_about = DISABLE_HELP)]
    Disable {
        #[command(flatten)]
        file: NsswitchFile,
    },
    /// Exit 0 when nsswitch.conf names broker on some line, 1 when not
    #[command(
        long_about = "Exit 0 when nsswitch.conf names broker on some line (any database, \
            effective or not), 1 when it does not or the file does not exist. For maintainer \
            scripts: the answer is the exit status; the line numbers are printed."
    )]
    IsEnabled {
        #[command(flatten)]
        file: NsswitchFile,
    },
}

const ENABLE_HELP: &str = "Make the passwd, group, shadow and gshadow lines (and an \
    initgroups line, if there is one) read 'files broker', with [SUCCESS=merge] before broker \
    on the group line only; a missing line is added. 'systemd' is removed from those lines \
    (the broker serves its users and groups with deadlines, and a generator's look-up must \
    not wait on PID 1), [SUCCESS=merge] outside the group line is removed (glibc fails such \
    look-ups), other services stay where they are. Above each line it writes, a comment \
    records the line as it was, for disable. Before the first edit the file is copied to \
    FILE.userdb-broker.bak, which later edits never overwrite. The file is replaced \
    atomically, keeping its mode and owner.";

const DISABLE_HELP: &str = "Restore, byte for byte, each line enable replaced and remove \
    each line it added, where the line is still as enable wrote it. A line naming broker \
    that was changed since, or written by hand, only loses broker (and a [SUCCESS=merge] \
    left with no service after it).";

/// The nsswitch.conf a command reads or edits.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct NsswitchFile {
    /// The nsswitch.conf to use
    #[arg(long, value_name = "FILE", default_value = DEFAULT_FILE)]
    pub file: PathBuf,
}

/// The files `userdb-brokerctl` reads and writes, for the man page.
pub fn brokerctl_files() -> Vec<(String, &'static str)> {
    vec![
        (
            DEFAULT_FILE.to_owned(),
            "What check, enable, disable and is-enabled read by default.",
        ),
        (
            format!("{DEFAULT_FILE}{BACKUP_SUFFIX}"),
            "The file as it was before the first edit by enable or disable; never overwritten.",
        ),
        (
            DEFAULT_CONFIG_FILE.to_owned(),
            "The daemon's configuration file, validated by check.",
        ),
        (
            userdb_proto::DEFAULT_SOCKET_PATH.to_owned(),
            "The broker's socket.",
        ),
    ]
}

/// The environment variables `userdb-brokerd` reads or sets, for the man page.
pub const BROKERD_ENVIRONMENT: [(&str, &str); 3] = [
    (
        "RUST_LOG",
        "The log filter (tracing's env-filter syntax); when unset, --log-level or the \
         configuration file's log_level applies.",
    ),
    (
        "NOTIFY_SOCKET",
        "Where to send READY=1 once the socket listens (set by systemd for Type=notify).",
    ),
    (
        "USERDB_BROKER_BYPASS",
        "Set to 1 by the daemon in its own environment before anything else runs, so that \
         libnss_broker never calls back into it from its own process.",
    ),
];

/// The files `userdb-brokerd` reads and writes, for the man page.
pub fn brokerd_files() -> Vec<(String, &'static str)> {
    vec![
        (
            DEFAULT_CONFIG_FILE.to_owned(),
            "The configuration file, read when it exists and no --config is given.",
        ),
        (
            userdb_proto::DEFAULT_SOCKET_PATH.to_owned(),
            "The socket, created at start and removed on SIGTERM or SIGINT.",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    fn ctl(args: &[&str]) -> Result<Brokerctl, clap::Error> {
        Brokerctl::try_parse_from(std::iter::once("userdb-brokerctl").chain(args.iter().copied()))
    }

    #[test]
    fn definitions_are_consistent() {
        Brokerctl::command().debug_assert();
        Brokerd::command().debug_assert();
    }

    #[test]
    fn options_before_and_after_the_command_mean_the_same() {
        let expected =
            ctl(&["--socket", "/tmp/s", "--json", "--timeout-ms=250", "status"]).unwrap();
        assert_eq!(expected.options.socket, PathBuf::from("/tmp/s"));
        assert!(expected.options.json);
        assert_eq!(expected.options.timeout_ms, 250);
        for args in [
            ["status", "--socket", "/tmp/s", "--json", "--timeout-ms=250"],
            ["--json", "status", "--socket=/tmp/s", "--timeout-ms", "250"],
        ] {
            assert_eq!(ctl(&args).unwrap(), expected, "{args:?}");
        }
        let check = ctl(&["check", "--json", "--file", "/x", "--socket", "/s"]).unwrap();
        assert_eq!(
            check.command,
            CtlCommand::Check {
                file: NsswitchFile {
                    file: PathBuf::from("/x")
                },
                config: None
            }
        );
    }

    #[test]
    fn defaults_and_bad_values() {
        let plain = ctl(&["user", "alice"]).unwrap();
        assert_eq!(
            plain.options.socket,
            PathBuf::from(userdb_proto::DEFAULT_SOCKET_PATH)
        );
        assert_eq!(plain.options.timeout_ms, 5000);
        assert_eq!(
            ctl(&["is-enabled"]).unwrap().command,
            CtlCommand::IsEnabled {
                file: NsswitchFile {
                    file: PathBuf::from("/etc/nsswitch.conf")
                }
            }
        );
        let kind = |args: &[&str]| ctl(args).unwrap_err().kind();
        assert_eq!(
            kind(&["--timeout-ms", "0", "status"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(kind(&["user"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["frobnicate"]), ErrorKind::InvalidSubcommand);
        assert_eq!(kind(&["status", "--bogus"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["enable", "--file"]), ErrorKind::InvalidValue);
        assert_eq!(kind(&["users", "extra"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["--version"]), ErrorKind::DisplayVersion);
        assert_eq!(kind(&["check", "--help"]), ErrorKind::DisplayHelp);
    }

    #[test]
    fn help_lists_the_exit_statuses() {
        let help = Brokerctl::command().render_long_help().to_string();
        for (code, _) in BROKERCTL_EXIT_STATUS {
            assert!(help.contains(&format!("\n  {code:<3} ")), "{code}: {help}");
        }
    }

    #[test]
    fn brokerd_options() {
        let parse = |args: &[&str]| {
            Brokerd::try_parse_from(std::iter::once("userdb-brokerd").chain(args.iter().copied()))
        };
        let parsed = parse(&[
            "--socket",
            "/tmp/s",
            "--root=/srv/r",
            "--idle-timeout-ms",
            "500",
        ])
        .unwrap();
        assert_eq!(parsed.socket, Some(PathBuf::from("/tmp/s")));
        assert_eq!(parsed.root, Some(PathBuf::from("/srv/r")));
        assert_eq!(parsed.idle_timeout_ms, Some(500));
        assert_eq!(parsed.config, None);
        assert!(parse(&["--max-connections", "0"]).is_err());
        assert!(parse(&["--idle-timeout-ms", "soon"]).is_err());
        assert!(parse(&["--socket"]).is_err());
        assert!(parse(&["--bogus", "1"]).is_err());
        assert_eq!(
            parse(&["--version"]).unwrap_err().kind(),
            ErrorKind::DisplayVersion
        );
    }
}
