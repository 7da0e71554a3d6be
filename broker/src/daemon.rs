//! The daemon's process-level duties: refuse PID 1, keep NSS out of its own
//! look-ups, logging, signals, and `READY=1` for the service manager.

use std::io::{self, IsTerminal};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::merge::Priority;
use crate::resolve::Resolver;
use crate::server::{bind, Limits, Server};
use crate::service::Service;
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::sources::varlink::{self, VarlinkSources};
use crate::watch::Watcher;

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

pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Blocks SIGTERM and SIGINT in this thread, and so in every thread started
/// after it, then waits for them on a thread of their own: on either, the
/// socket is removed and the process exits 0.
fn handle_termination(socket: PathBuf) -> io::Result<()> {
    // SAFETY: plain sigset manipulation on a local, zero-initialised set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    };
    // SAFETY: `set` is a valid signal set; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` is valid and `signal` is writable.
            if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
                tracing::info!(signal, "terminating");
                let _ = std::fs::remove_file(&socket);
                std::process::exit(0);
            }
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
pub fn run(config: Config) -> Result<(), String> {
    handle_termination(config.socket.clone())
        .map_err(|e| format!("cannot set up signal handling: {e}"))?;
    let priority = Priority::new(config.order.clone());
    let store = SnapshotStore::new(Snapshot::empty());
    let mut watcher = Watcher::new(config.root.clone(), priority.clone(), store.clone());
    watcher.refresh();
    // Bound first: service discovery must recognise the broker's own socket.
    let listener = bind(&config.socket)
        .map_err(|e| format!("cannot listen on {}: {e}", config.socket.display()))?;
    let varlink = Arc::new(VarlinkSources::new(
        varlink::directory(&config.root),
        config.socket.clone(),
        config.varlink.clone(),
    ));
    watcher
        .with_varlink(Arc::clone(&varlink))
        .spawn(config.poll_interval)
        .map_err(|e| format!("cannot start the change watcher: {e}"))?;
    let service = Arc::new(Service::new(Resolver::new(store, varlink, priority)));
    let server = Server::new(listener, service, Limits::from_config(&config));
    tracing::info!(socket = %config.socket.display(), root = %config.root.display(), "ready");
    if let Err(e) = notify_ready() {
        tracing::warn!("cannot notify the service manager: {e}");
    }
    server.serve()
}
