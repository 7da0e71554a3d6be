//! The modules compared, and a fixture served by both kinds of broker, with
//! `nss-probe` run inside a namespace that uses one module.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use userdb_broker_tests::{artifacts, Broker, Fixture, Nss};
use userdb_proto::DEFAULT_SOCKET_PATH;

use crate::data;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    /// `libnss_trivial.so.2`: one constant entry, glibc's dispatch alone.
    Trivial,
    /// `broker`, answering from the snapshot file.
    FilePath,
    /// `broker` with the broker's `snapshot_file = false`: every answer a
    /// round trip over the socket.
    SocketPath,
    Files,
    Systemd,
}

impl Backend {
    pub fn label(self) -> &'static str {
        match self {
            Backend::Trivial => "trivial",
            Backend::FilePath => "file path",
            Backend::SocketPath => "socket path",
            Backend::Files => "files",
            Backend::Systemd => "systemd",
        }
    }

    /// The service name on nsswitch.conf lines.
    fn service(self) -> &'static str {
        match self {
            Backend::Trivial => "trivial",
            Backend::FilePath | Backend::SocketPath => "broker",
            Backend::Files => "files",
            Backend::Systemd => "systemd",
        }
    }
}

/// Which nsswitch.conf lines name the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lines {
    /// `passwd: S`, `group: S`.
    Alone,
    /// `passwd: files S`, `group: files [SUCCESS=merge] S`.
    AfterFilesMerged,
}

impl Lines {
    pub fn nsswitch(self, backend: Backend) -> String {
        let s = backend.service();
        match self {
            Lines::Alone => format!("passwd: {s}\ngroup: {s}\n"),
            Lines::AfterFilesMerged => {
                format!("passwd: files {s}\ngroup: files [SUCCESS=merge] {s}\n")
            }
        }
    }
}

/// Makes the fixture's drop-ins ([`data::systemd_dropins`]) visible to
/// nss-systemd at `/run/userdb` inside the namespace (a tmpfs over `/run`
/// hides everything else there, including any userdb service sockets) and,
/// when given, a broker's directory at `/run/userdb-broker`, where the
/// module finds its socket and snapshot file by default, as installed;
/// then runs the command. Every backend runs under it, so that all see the
/// same namespace.
const SHOW_DROPINS: &str = r#"set -e
mount -t tmpfs -o size=1m tmpfs /run
mkdir /run/userdb
mount --bind "$1" /run/userdb
if [ -n "$2" ]; then
    mkdir /run/userdb-broker
    mount --bind "$2" /run/userdb-broker
fi
shift 2
exec "$@"
"#;

/// One probe run may take this long (systemd's group look-ups at 100,000
/// groups take about a second each).
const PROBE_LIMIT: Duration = Duration::from_secs(600);

/// A [`data::both_forms`] fixture with a broker publishing the snapshot
/// file and one that does not, both on the same data.
pub struct Served {
    pub size: u32,
    // Declared before the fixture: the brokers stop before it is removed.
    _file_broker: Broker,
    _socket_broker: Broker,
    fixture: Fixture,
}

impl Served {
    pub fn start(size: u32) -> Served {
        let fixture = data::both_forms(size);
        let file_dir = Self::file_dir_of(&fixture);
        fs::create_dir_all(&file_dir)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", file_dir.display()));
        let socket_name = Path::new(DEFAULT_SOCKET_PATH)
            .file_name()
            .unwrap_or_default();
        let file_broker = Broker::start_at(&fixture, &file_dir.join(socket_name));
        let socket_broker = Broker::launch(&fixture).socket_only().start();
        Served {
            size,
            _file_broker: file_broker,
            _socket_broker: socket_broker,
            fixture,
        }
    }

    pub fn fixture(&self) -> &Fixture {
        &self.fixture
    }

    /// Where the file path's broker keeps its socket and snapshot file,
    /// mounted at the default place for its look-ups.
    fn file_dir_of(fixture: &Fixture) -> PathBuf {
        fixture.scratch().join("file")
    }

    fn file_dir(&self) -> PathBuf {
        Self::file_dir_of(&self.fixture)
    }

    /// The look-up namespace for `backend` named by `lines`.
    fn nss(&self, backend: Backend, lines: Lines) -> Nss {
        let nss = Nss::new(&self.fixture, &lines.nsswitch(backend)).limit(PROBE_LIMIT);
        match backend {
            Backend::FilePath => nss.default_socket(),
            Backend::Trivial => {
                link_trivial_module(&self.fixture);
                nss
            }
            _ => nss,
        }
    }

    /// Runs `program ARGS...` (the probe, or valgrind running it) with
    /// `backend`; its stdout, or why it failed.
    pub fn run(&self, backend: Backend, lines: Lines, argv: &[String]) -> Result<String, String> {
        let dropins = data::systemd_dropins(&self.fixture);
        let broker_dir = match backend {
            Backend::FilePath => self.file_dir().display().to_string(),
            _ => String::new(),
        };
        let mut full: Vec<String> = vec![
            "sh".into(),
            "-c".into(),
            SHOW_DROPINS.into(),
            "sh".into(),
            dropins.display().to_string(),
            broker_dir,
        ];
        full.extend_from_slice(argv);
        let outcome = self
            .nss(backend, lines)
            .run(&full.iter().map(String::as_str).collect::<Vec<_>>());
        if outcome.code() == Some(0) {
            Ok(outcome.stdout)
        } else {
            Err(format!(
                "{} ({} users): {} failed: {}",
                backend.label(),
                self.size,
                argv.first().map_or("", String::as_str),
                outcome.describe()
            ))
        }
    }
}

pub fn probe() -> String {
    artifacts::release_dir()
        .join("nss-probe")
        .display()
        .to_string()
}

/// `libnss_trivial.so.2` beside the broker module in the directory the
/// namespace's `LD_LIBRARY_PATH` names.
fn link_trivial_module(fixture: &Fixture) {
    let built = artifacts::release_dir().join("libnss_trivial.so");
    assert!(
        built.is_file(),
        "{} is missing: run `cargo build --release` first",
        built.display()
    );
    let link: PathBuf = fixture.scratch().join("lib").join("libnss_trivial.so.2");
    if fs::symlink_metadata(&link).is_err() {
        symlink(&built, &link).unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
    }
}
