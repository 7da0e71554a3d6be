//! The daemon's settings: built-in defaults, then the configuration file
//! (`--config`, else [`DEFAULT_CONFIG_FILE`] when it exists), then
//! command-line flags, each overriding the one before.
//!
//! # Configuration file (TOML)
//!
//! Every key is optional; a missing key keeps its default. Unknown keys are
//! refused so that a typo does not silently keep a default. Every key, its
//! meaning and its default are in the shipped file,
//! `packaging/userdb-brokerd.toml` (a test keeps it true).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::Brokerd;

/// Settings the daemon runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The configuration file read, if any.
    pub file: Option<PathBuf>,
    pub socket: PathBuf,
    pub root: PathBuf,
    pub log_level: String,
    pub max_connections: usize,
    pub max_connections_per_uid: usize,
    pub workers: usize,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub rescan_interval: Duration,
    /// Publish the snapshot file next to the socket.
    pub snapshot_file: bool,
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
            file: None,
            socket: PathBuf::from(userdb_proto::DEFAULT_SOCKET_PATH),
            root: PathBuf::from("/"),
            log_level: "info".to_owned(),
            max_connections: 4096,
            max_connections_per_uid: 1024,
            workers: 4,
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            rescan_interval: Duration::from_secs(300),
            snapshot_file: true,
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
    snapshot_file: Option<bool>,
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

/// The host's configuration file, read when it exists and no `--config`
/// is given. Not below `--root`: that directory is where the data are,
/// while the configuration belongs to the host running the daemon.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/userdb-broker/userdb-brokerd.toml";

impl Config {
    /// Builds the configuration from the parsed command line: defaults,
    /// then the configuration file (`--config`, else [`DEFAULT_CONFIG_FILE`]
    /// if it exists), then the flags.
    pub fn from_cli(cli: &Brokerd) -> Result<Config, ConfigError> {
        Config::from_cli_with_default(cli, Path::new(DEFAULT_CONFIG_FILE))
    }

    fn from_cli_with_default(cli: &Brokerd, default_file: &Path) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        match &cli.config {
            Some(path) => config.apply_file(path)?,
            None if default_file.exists() => config.apply_file(default_file)?,
            None => {}
        }
        if let Some(v) = &cli.socket {
            config.socket = v.clone();
        }
        if let Some(v) = &cli.root {
            config.root = v.clone();
        }
        if let Some(v) = &cli.log_level {
            config.log_level = v.clone();
        }
        if let Some(v) = cli.max_connections {
            config.max_connections = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = cli.idle_timeout_ms {
            config.idle_timeout = Duration::from_millis(v);
        }
        if let Some(v) = cli.source_timeout_ms {
            config.varlink.timeout = Duration::from_millis(v);
        }
        Ok(config)
    }

    /// Reads a TOML configuration file over the current values.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        self.apply_toml(&text)
            .map_err(|ConfigError(e)| ConfigError(format!("{}: {e}", path.display())))?;
        self.file = Some(path.to_path_buf());
        Ok(())
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
        if let Some(v) = file.snapshot_file {
            self.snapshot_file = v;
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

    use clap::Parser;

    /// The configuration from `args`, with `default_file` standing for
    /// the host's file (the tests never read the machine's /etc).
    fn from(args: &[&str], default_file: &Path) -> Result<Config, ConfigError> {
        let cli =
            Brokerd::try_parse_from(std::iter::once("userdb-brokerd").chain(args.iter().copied()))
                .map_err(|e| ConfigError(e.to_string()))?;
        Config::from_cli_with_default(&cli, default_file)
    }

    fn run(args: &[&str]) -> Result<Config, ConfigError> {
        from(args, Path::new("/nonexistent/userdb-brokerd.toml"))
    }

    /// A fresh directory for one test, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("brokerd-config-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
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
            "--max-connections",
            "7",
            "--source-timeout-ms=75",
            "--log-level",
            "debug",
        ])
        .unwrap();
        assert_eq!(c.socket, Path::new("/tmp/s"));
        assert_eq!(c.root, Path::new("/srv/r"));
        assert_eq!(c.idle_timeout, Duration::from_millis(500));
        assert_eq!(c.max_connections, 7);
        assert_eq!(c.varlink.timeout, Duration::from_millis(75));
        assert_eq!(c.log_level, "debug");
    }

    #[test]
    fn the_default_file_is_read_when_present_and_config_replaces_it() {
        let scratch = Scratch::new("default");
        let default_file = scratch.write("userdb-brokerd.toml", "max_connections = 10\n");
        let other = scratch.write("other.toml", "idle_timeout_ms = 20\n");
        assert_eq!(from(&[], &default_file).unwrap().max_connections, 10);
        let c = from(&["--config", other.to_str().unwrap()], &default_file).unwrap();
        assert_eq!(c.max_connections, Config::default().max_connections);
        assert_eq!(c.idle_timeout, Duration::from_millis(20));

        std::fs::write(&default_file, "max_connection = 10\n").unwrap();
        let e = from(&[], &default_file).unwrap_err();
        assert!(
            e.0.contains("userdb-brokerd.toml") && e.0.contains("max_connection"),
            "{e}"
        );
        let missing = scratch.0.join("missing.toml");
        let e = from(&["--config", missing.to_str().unwrap()], &default_file).unwrap_err();
        assert!(e.0.contains("missing.toml"), "{e}");
    }

    /// packaging/userdb-brokerd.toml: every key commented out with its
    /// default. As shipped it changes nothing, and with every key
    /// uncommented it still gives the defaults, so the file tells the truth.
    #[test]
    fn the_shipped_file_documents_the_defaults() {
        let shipped = include_str!("../../packaging/userdb-brokerd.toml");
        let mut c = Config::default();
        c.apply_toml(shipped).unwrap();
        assert_eq!(c, Config::default());
        let uncommented: String = shipped
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(key) if key.starts_with(|c: char| c.is_ascii_lowercase()) => key,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let keys = uncommented
            .lines()
            .filter(|l| l.contains(" = ") && !l.starts_with('#'))
            .count();
        assert!(keys >= 14, "only {keys} keys in:\n{uncommented}");
        let mut c = Config::default();
        c.apply_toml(&uncommented).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(run(&["--bogus", "1"]).is_err());
        assert!(run(&["--socket"]).is_err());
        assert!(run(&["--max-connections", "0"]).is_err());
        assert!(run(&["--idle-timeout-ms", "soon"]).is_err());
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
