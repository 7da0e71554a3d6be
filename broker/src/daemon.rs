//! The daemon's process-level duties: refuse PID 1, keep NSS out of its own
//! look-ups, logging, signals (`SIGTERM`/`SIGINT` end it, `SIGHUP` reloads),
//! and `READY=1` for the service manager once the first snapshot is built.

use std::io::{self, IsTerminal};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use crate::config::Config;
use crate::merge::Priority;
use crate::publish::Publisher;
use crate::resolve::Resolver;
use crate::server::{bind, Control as ServerControl, Handle, Limits, Server};
use crate::service::Service;
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::sources::local_sources;
use crate::sources::varlink::{self, VarlinkSources};
use crate::watch::{self, Control as WatchControl, Intervals, Watcher};
use userdb_proto::snapfile;

/// Set in the daemon's own environment so that libnss_broker, should
/// anything in this process ever resolve a user, answers at once instead of
/// calling back into this daemon.
pub const BYPASS_VARIABLE: &str = "USERDB_BROKER_BYPASS";

/// Must run first in `main`, while the process is single-threaded (setting
/// environment variables is not thread-safe).
pub fn set_own_bypass() {
    std::env::set_var(BYPASS_VARIABLE, "1");
}

pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Logs to stderr, filtered by `RUST_LOG` or else `default_filter`. When
/// stderr is the journal's stream (systemd sets `$JOURNAL_STREAM` to its
/// device and inode), each line starts with its syslog priority (`<4>` for a
/// warning), which journald reads as the entry's priority, and carries no
/// timestamp or level word, since the journal records both. Otherwise lines
/// are plain text with a timestamp and level.
///
/// Priority prefixes rather than journald's native protocol: the native
/// layer puts only the message into `MESSAGE=` and every structured field
/// (`source=...`) into fields of its own that `journalctl` does not show, so
/// a warning would no longer say which source failed.
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let to_journal = is_journal_stream(
        std::env::var("JOURNAL_STREAM").ok().as_deref(),
        stderr_identity().ok(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_target(false)
        // A failed write is reported with eprintln!, which panics when stderr
        // is gone (a closed pipe, a journal stream that went away), killing
        // whichever thread logged: the signal thread then never exits the
        // daemon. A lost log line is better.
        .log_internal_errors(false);
    if to_journal {
        let plain = tracing_subscriber::fmt::format()
            .without_time()
            .with_level(false)
            .with_target(false)
            .with_ansi(false);
        builder
            .with_ansi(false)
            .event_format(SyslogPriorityPrefix(plain))
            .init();
    } else {
        builder.with_ansi(io::stderr().is_terminal()).init();
    }
}

/// Whether `$JOURNAL_STREAM` ("DEVICE:INODE", both decimal, as systemd
/// writes it) names the file stderr is: a service's stderr that the
/// administrator redirected elsewhere keeps the variable but not the stream.
fn is_journal_stream(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(value), Some(stderr)) = (journal_stream, stderr) else {
        return false;
    };
    let Some((device, inode)) = value.split_once(':') else {
        return false;
    };
    match (device.parse::<u64>(), inode.parse::<u64>()) {
        (Ok(device), Ok(inode)) => (device, inode) == stderr,
        _ => false,
    }
}

/// Device and inode of the file open as stderr (`fstat` on a duplicate).
fn stderr_identity() -> io::Result<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let stderr = std::fs::File::from(io::stderr().as_fd().try_clone_to_owned()?);
    let metadata = stderr.metadata()?;
    Ok((metadata.dev(), metadata.ino()))
}

/// Writes the event's syslog priority (sd-daemon(3): `<3>` error,
/// `<4>` warning, `<6>` info, `<7>` debug) before the inner format.
struct SyslogPriorityPrefix<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for SyslogPriorityPrefix<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

fn syslog_priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// Re-reads the configuration the daemon was started with.
pub type Reload = Box<dyn Fn() -> Result<Config, String> + Send>;

/// The parts a reload reaches.
struct Running {
    config: Config,
    service: Arc<Service>,
    varlink: Arc<VarlinkSources>,
    server: Handle,
    watcher: Sender<WatchControl>,
}

impl Running {
    /// Applies a new configuration; what cannot change without a restart
    /// is reported and kept.
    fn reload(&mut self, new: Config) {
        for (what, old, new) in [
            ("socket", &self.config.socket, &new.socket),
            ("root", &self.config.root, &new.root),
        ] {
            if old != new {
                tracing::warn!(
                    "{what} changed to {}: it takes effect at the next start",
                    new.display()
                );
            }
        }
        let priority = Priority::new(new.order.clone());
        self.service.resolver().set_priority(priority.clone());
        self.varlink.set_settings(new.varlink.clone());
        self.server
            .send(ServerControl::Limits(Limits::from_config(&new)));
        if self.watcher.send(WatchControl::Reload(priority)).is_err() {
            tracing::warn!("the watcher is gone: sources are not re-read");
        }
        self.config = Config {
            socket: self.config.socket.clone(),
            root: self.config.root.clone(),
            ..new
        };
        tracing::info!("configuration reloaded; sources are read again");
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread, and so in every thread
/// started after it, then waits for them on a thread of its own.
fn block_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: plain sigset manipulation on a local, zero-initialised set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    };
    // SAFETY: `set` is a valid signal set; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(set)
}

fn handle_signals(set: libc::sigset_t, mut running: Running, reload: Reload) -> io::Result<()> {
    let socket = running.config.socket.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` is valid and `signal` is writable.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                continue;
            }
            if signal == libc::SIGHUP {
                match reload() {
                    Ok(config) => running.reload(config),
                    Err(e) => {
                        tracing::warn!("reload failed, keeping the running configuration: {e}")
                    }
                }
                continue;
            }
            tracing::info!(signal, "terminating");
            let _ = std::fs::remove_file(&socket);
            std::process::exit(0);
        })?;
    Ok(())
}

/// Sends `READY=1` to `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
/// namespace) when it is set.
pub fn notify_ready() -> io::Result<()> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let target = target.to_string_lossy().into_owned();
    let socket = UnixDatagram::unbound()?;
    let address = match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(Path::new(&target))?,
    };
    socket.send_to_addr(b"READY=1", &address)?;
    Ok(())
}

/// Runs the daemon until a termination signal. Returns only on a startup
/// failure, with a message for the user.
pub fn run(config: Config, reload: Reload) -> Result<(), String> {
    let signals = block_signals().map_err(|e| format!("cannot set up signal handling: {e}"))?;
    let priority = Priority::new(config.order.clone());
    let store = Arc::new(SnapshotStore::new(Snapshot::empty()));
    // Bound first: service discovery must recognise the broker's own socket.
    let listener = bind(&config.socket)
        .map_err(|e| format!("cannot listen on {}: {e}", config.socket.display()))?;
    let varlink = Arc::new(VarlinkSources::new(
        varlink::directory(&config.root),
        config.socket.clone(),
        config.varlink.clone(),
    ));
    let snapshot_path = snapfile::path_for(&config.socket);
    let watcher = Watcher::new(
        &config.root,
        local_sources(&config.root),
        priority.clone(),
        Arc::clone(&store),
        Arc::clone(&varlink),
        Intervals {
            rescan: config.rescan_interval,
            poll: config.poll_interval,
        },
    );
    let mut watcher = if config.snapshot_file {
        watcher.publishing(Publisher::new(snapshot_path))
    } else {
        // A file an earlier run left would be answered from, stale.
        let _ = std::fs::remove_file(&snapshot_path);
        watcher
    };
    // Nothing is answered before every local source was read once: an
    // early "not found" for a user that exists would be a lie.
    watcher.load();
    let (watch_control, watch_commands) = watch::control();
    watcher
        .spawn(watch_commands)
        .map_err(|e| format!("cannot start the change watcher: {e}"))?;
    let service = Arc::new(Service::new(
        Resolver::new(store, Arc::clone(&varlink), priority),
        config.file.clone(),
    ));
    let (server, handle) = Server::new(
        listener,
        config.socket.clone(),
        Arc::clone(&service),
        Limits::from_config(&config),
    )
    .map_err(|e| format!("cannot start the server: {e}"))?;
    let limits = Limits::from_config(&config);
    tracing::info!(
        socket = %config.socket.display(),
        root = %config.root.display(),
        connections = limits.capacity(),
        per_uid = limits.quota(),
        workers = limits.workers,
        "ready"
    );
    handle_signals(
        signals,
        Running {
            config,
            service,
            varlink,
            server: handle,
            watcher: watch_control,
        },
        reload,
    )
    .map_err(|e| format!("cannot set up signal handling: {e}"))?;
    if let Err(e) = notify_ready() {
        tracing::warn!("cannot notify the service manager: {e}");
    }
    server.serve()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_matches_only_stderrs_own_device_and_inode() {
        let stderr = Some((9, 1339297));
        let cases = [
            (Some("9:1339297"), stderr, true),
            (Some("9:1339298"), stderr, false),
            (Some("8:1339297"), stderr, false),
            (None, stderr, false),
            (Some("9:1339297"), None, false),
            (Some(""), stderr, false),
            (Some("9"), stderr, false),
            (Some("9:"), stderr, false),
            (Some(":1339297"), stderr, false),
            (Some("9:1339297:1"), stderr, false),
            (Some(" 9:1339297"), stderr, false),
            (Some("-9:1339297"), stderr, false),
            (Some("0x9:1339297"), stderr, false),
        ];
        for (variable, identity, expected) in cases {
            assert_eq!(
                is_journal_stream(variable, identity),
                expected,
                "JOURNAL_STREAM={variable:?}, stderr {identity:?}"
            );
        }
    }

    #[test]
    fn stderr_identity_is_the_file_open_as_fd_2() {
        use std::os::unix::fs::MetadataExt;
        let proc_view = std::fs::metadata("/proc/self/fd/2").expect("stat /proc/self/fd/2");
        assert_eq!(
            stderr_identity().expect("fstat stderr"),
            (proc_view.dev(), proc_view.ino())
        );
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(syslog_priority(tracing::Level::ERROR), 3);
        assert_eq!(syslog_priority(tracing::Level::WARN), 4);
        assert_eq!(syslog_priority(tracing::Level::INFO), 6);
        assert_eq!(syslog_priority(tracing::Level::DEBUG), 7);
        assert_eq!(syslog_priority(tracing::Level::TRACE), 7);
    }
}
