//! The daemon's settings: built-in defaults, then the `--config` file, then
//! command-line flags, each overriding the one before.
//!
//! # Configuration file (TOML)
//!
//! Every key is optional; a missing key keeps its default. Unknown keys are
//! refused so that a typo does not silently keep a default.
//!
//! ```toml
//! # Where the broker listens (the --socket flag overrides it).
//! socket = "/run/userdb-broker/io.userdb.Broker"
//! # Every data path is read below this directory (--root overrides it).
//! root = "/"
//! # Log filter in tracing's env-filter syntax, used when RUST_LOG is unset
//! # (--log-level overrides it).
//! log_level = "info"
//! # Most client connections held at once (never more than the descriptor
//! # limit allows, less 256 kept for the sources); at the cap the
//! # longest-idle connection of the uid holding the most is closed.
//! max_connections = 4096
//! # Most connections one uid may hold (root is exempt); past it that uid's
//! # longest-idle connection is closed.
//! max_connections_per_uid = 1024
//! # Threads answering calls that ask Varlink services.
//! workers = 4
//! # A connection that sends nothing for this long is closed.
//! idle_timeout_ms = 30000
//! # A client that does not read its replies for this long is dropped.
//! write_timeout_ms = 10000
//! # Changes are seen through inotify; everything is also re-checked this
//! # often (what inotify cannot see: a link's target elsewhere)...
//! rescan_interval_ms = 300000
//! # ...and this often when inotify is not available.
//! poll_interval_ms = 1000
//!
//! # Priority of the sources: a user or group comes from the first source in
//! # this list that has it. "files" and "dropins" are the local sources;
//! # other entries are Varlink service names in run/systemd/userdb/.
//! # Sources not named here follow, local ones first, services by name.
//! order = ["files", "dropins"]
//! # Each Varlink service must answer a look-up within this time...
//! source_timeout_ms = 250
//! # ...and a full listing within this time.
//! enumeration_timeout_ms = 1000
//! # After a timeout a service is left out for a back-off that starts here
//! # and doubles up to the maximum; it is probed off the request path and
//! # restored as soon as it answers.
//! breaker_min_backoff_ms = 5000
//! breaker_max_backoff_ms = 60000
//! # How long answers from Varlink services are reused: found, not found.
//! cache_ttl_ms = 2000
//! negative_cache_ttl_ms = 1000
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Settings the daemon runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub socket: PathBuf,
    pub root: PathBuf,
    pub log_level: String,
    pub max_connections: usize,
    pub max_connections_per_uid: usize,
    pub workers: usize,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub rescan_interval: Duration,
    pub poll_interval: Duration,
    pub order: Vec<String>,
    pub varlink: VarlinkSettings,
}

/// How Varlink userdb services are queried.
#[derive(Debug, Clone, PartialEq)]
pub struct VarlinkSettings {
    pub timeout: Duration,
    pub enumeration_timeout: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub cache_ttl: Duration,
    pub negative_cache_ttl: Duration,
}

impl Default for VarlinkSettings {
    fn default() -> Self {
        VarlinkSettings {
            timeout: Duration::from_millis(250),
            enumeration_timeout: Duration::from_secs(1),
            min_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
            cache_ttl: Duration::from_secs(2),
            negative_cache_ttl: Duration::from_secs(1),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: PathBuf::from(userdb_proto::DEFAULT_SOCKET_PATH),
            root: PathBuf::from("/"),
            log_level: "info".to_owned(),
            max_connections: 4096,
            max_connections_per_uid: 1024,
            workers: 4,
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            rescan_interval: Duration::from_secs(300),
            poll_interval: Duration::from_secs(1),
            order: vec!["files".to_owned(), "dropins".to_owned()],
            varlink: VarlinkSettings::default(),
        }
    }
}

/// The configuration file as written; `None` keeps the value already set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    socket: Option<PathBuf>,
    root: Option<PathBuf>,
    log_level: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_uid: Option<usize>,
    workers: Option<usize>,
    idle_timeout_ms: Option<u64>,
    write_timeout_ms: Option<u64>,
    rescan_interval_ms: Option<u64>,
    poll_interval_ms: Option<u64>,
    order: Option<Vec<String>>,
    source_timeout_ms: Option<u64>,
    enumeration_timeout_ms: Option<u64>,
    breaker_min_backoff_ms: Option<u64>,
    breaker_max_backoff_ms: Option<u64>,
    cache_ttl_ms: Option<u64>,
    negative_cache_ttl_ms: Option<u64>,
}

/// Why the configuration could not be built, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

pub const USAGE: &str = "\
usage: userdb-brokerd [--socket PATH] [--root DIR] [--config FILE]
                      [--log-level FILTER] [--max-connections N]
                      [--idle-timeout-ms N] [--source-timeout-ms N]";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    Run(Box<Config>),
    Help,
}

impl Config {
    /// Builds the configuration from the command line (without the program
    /// name), reading the `--config` file first wherever it appears.
    pub fn from_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, ConfigError> {
        let mut flags = Vec::new();
        let mut config_file = None;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                return Ok(Command::Help);
            }
            let (flag, inline_value) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg, None),
            };
            let value = match inline_value.or_else(|| args.next()) {
                Some(v) => v,
                None => return Err(ConfigError(format!("{flag} needs a value\n{USAGE}"))),
            };
            if flag == "--config" {
                config_file = Some(PathBuf::from(value));
            } else {
                flags.push((flag, value));
            }
        }
        let mut config = Config::default();
        if let Some(path) = config_file {
            config.apply_file(&path)?;
        }
        for (flag, value) in flags {
            config.apply_flag(&flag, &value)?;
        }
        Ok(Command::Run(Box::new(config)))
    }

    fn apply_flag(&mut self, flag: &str, value: &str) -> Result<(), ConfigError> {
        match flag {
            "--socket" => self.socket = PathBuf::from(value),
            "--root" => self.root = PathBuf::from(value),
            "--log-level" => self.log_level = value.to_owned(),
            "--max-connections" => self.max_connections = positive(flag, value)? as usize,
            "--idle-timeout-ms" => {
                self.idle_timeout = Duration::from_millis(positive(flag, value)?)
            }
            "--source-timeout-ms" => {
                self.varlink.timeout = Duration::from_millis(positive(flag, value)?)
            }
            _ => return Err(ConfigError(format!("unknown option {flag}\n{USAGE}"))),
        }
        Ok(())
    }

    /// Reads a TOML configuration file over the current values.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        self.apply_toml(&text)
            .map_err(|ConfigError(e)| ConfigError(format!("{}: {e}", path.display())))
    }

    fn apply_toml(&mut self, text: &str) -> Result<(), ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        if let Some(v) = file.socket {
            self.socket = v;
        }
        if let Some(v) = file.root {
            self.root = v;
        }
        if let Some(v) = file.log_level {
            self.log_level = v;
        }
        if let Some(v) = file.max_connections {
            self.max_connections = nonzero("max_connections", v as u64)? as usize;
        }
        if let Some(v) = file.max_connections_per_uid {
            self.max_connections_per_uid = nonzero("max_connections_per_uid", v as u64)? as usize;
        }
        if let Some(v) = file.workers {
            self.workers = nonzero("workers", v as u64)?.min(64) as usize;
        }
        if let Some(v) = file.rescan_interval_ms {
            self.rescan_interval = Duration::from_millis(nonzero("rescan_interval_ms", v)?);
        }
        if let Some(v) = file.idle_timeout_ms {
            self.idle_timeout = Duration::from_millis(nonzero("idle_timeout_ms", v)?);
        }
        if let Some(v) = file.write_timeout_ms {
            self.write_timeout = Duration::from_millis(nonzero("write_timeout_ms", v)?);
        }
        if let Some(v) = file.poll_interval_ms {
            self.poll_interval = Duration::from_millis(nonzero("poll_interval_ms", v)?);
        }
        if let Some(order) = file.order {
            self.order = order;
        }
        let millis =
            |key: &str, value: Option<u64>, target: &mut Duration| -> Result<(), ConfigError> {
                if let Some(v) = value {
                    *target = Duration::from_millis(nonzero(key, v)?);
                }
                Ok(())
            };
        let v = &mut self.varlink;
        millis("source_timeout_ms", file.source_timeout_ms, &mut v.timeout)?;
        millis(
            "enumeration_timeout_ms",
            file.enumeration_timeout_ms,
            &mut v.enumeration_timeout,
        )?;
        millis(
            "breaker_min_backoff_ms",
            file.breaker_min_backoff_ms,
            &mut v.min_backoff,
        )?;
        millis(
            "breaker_max_backoff_ms",
            file.breaker_max_backoff_ms,
            &mut v.max_backoff,
        )?;
        millis("cache_ttl_ms", file.cache_ttl_ms, &mut v.cache_ttl)?;
        millis(
            "negative_cache_ttl_ms",
            file.negative_cache_ttl_ms,
            &mut v.negative_cache_ttl,
        )?;
        if v.max_backoff < v.min_backoff {
            return Err(ConfigError(
                "breaker_max_backoff_ms must not be less than breaker_min_backoff_ms".into(),
            ));
        }
        Ok(())
    }
}

fn positive(flag: &str, value: &str) -> Result<u64, ConfigError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| ConfigError(format!("{flag} needs a positive number, not {value:?}")))
}

fn nonzero(key: &str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        Err(ConfigError(format!("{key} must be greater than 0")))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, ConfigError> {
        match Config::from_args(args.iter().map(|s| s.to_string()))? {
            Command::Run(c) => Ok(*c),
            Command::Help => Err(ConfigError("help".into())),
        }
    }

    #[test]
    fn defaults_without_arguments() {
        assert_eq!(run(&[]).unwrap(), Config::default());
        assert_eq!(
            Config::default().socket,
            Path::new("/run/userdb-broker/io.userdb.Broker")
        );
    }

    #[test]
    fn flags_in_both_spellings() {
        let c = run(&[
            "--socket",
            "/tmp/s",
            "--root=/srv/r",
            "--idle-timeout-ms",
            "500",
        ])
        .unwrap();
        assert_eq!(c.socket, Path::new("/tmp/s"));
        assert_eq!(c.root, Path::new("/srv/r"));
        assert_eq!(c.idle_timeout, Duration::from_millis(500));
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(run(&["--bogus", "1"]).is_err());
        assert!(run(&["--socket"]).is_err());
        assert!(run(&["--max-connections", "0"]).is_err());
        assert!(run(&["--idle-timeout-ms", "soon"]).is_err());
        assert_eq!(
            Config::from_args(["--help".to_string()]).unwrap(),
            Command::Help
        );
    }

    #[test]
    fn file_then_flags_override() {
        let dir = std::env::temp_dir().join(format!("brokerd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("broker.toml");
        std::fs::write(
            &file,
            "socket = \"/from/file\"\nroot = \"/r\"\nmax_connections = 10\nwrite_timeout_ms = 20\npoll_interval_ms = 100\n",
        )
        .unwrap();
        let c = run(&["--socket", "/from/flag", "--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(c.socket, Path::new("/from/flag"));
        assert_eq!(c.root, Path::new("/r"));
        assert_eq!(c.max_connections, 10);
        assert_eq!(c.write_timeout, Duration::from_millis(20));
        assert_eq!(c.poll_interval, Duration::from_millis(100));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn varlink_settings_and_order_from_file() {
        let mut c = Config::default();
        c.apply_toml(
            "order = [\"io.systemd.Home\", \"files\"]\nsource_timeout_ms = 100\nenumeration_timeout_ms = 900\nbreaker_min_backoff_ms = 10\nbreaker_max_backoff_ms = 20\ncache_ttl_ms = 30\nnegative_cache_ttl_ms = 40\n",
        )
        .unwrap();
        assert_eq!(c.order, ["io.systemd.Home", "files"]);
        let v = &c.varlink;
        assert_eq!(
            [
                v.timeout,
                v.enumeration_timeout,
                v.min_backoff,
                v.max_backoff,
                v.cache_ttl,
                v.negative_cache_ttl
            ],
            [100, 900, 10, 20, 30, 40].map(Duration::from_millis)
        );
        assert!(c
            .apply_toml("breaker_min_backoff_ms = 100\nbreaker_max_backoff_ms = 50")
            .is_err());
        let flag = run(&["--source-timeout-ms", "75"]).unwrap();
        assert_eq!(flag.varlink.timeout, Duration::from_millis(75));
    }

    #[test]
    fn file_errors_name_the_problem() {
        let mut c = Config::default();
        let e = c.apply_toml("sokcet = \"/x\"").unwrap_err();
        assert!(e.0.contains("sokcet"), "{e}");
        assert!(c.apply_toml("idle_timeout_ms = 0").is_err());
        assert!(c.apply_toml("max_connections = \"many\"").is_err());
        assert!(c.apply_file(Path::new("/nonexistent/broker.toml")).is_err());
    }
}
