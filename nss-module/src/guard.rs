//! The checks every call passes before any I/O, in this order: explicit
//! bypass variables, PID 1, the broker's own process, generator context,
//! the dynamic-user bypass, re-entry from the same thread.
//!
//! Bypass and re-entry answer at once, touching nothing. PID 1, the
//! broker's own unit and generators may read the snapshot file (reading
//! `/run` cannot wait on a process) but never open a socket: PID 1 and its
//! generators must not wait for anyone, and the broker must not call itself.
//!
//! The decisions are pure functions of an environment lookup and the pid, so
//! they are tested directly; `ffi` supplies `secure_getenv` and `getpid`.

use std::borrow::Cow;
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use userdb_proto::snapfile::{self, DEFAULT_SNAPSHOT_PATH};
use userdb_proto::{BROKER_SERVICE, DEFAULT_SOCKET_PATH};

/// Set by the broker in its own environment, and by anyone who wants this
/// module to stay out of the way.
pub const BYPASS_VAR: &str = "USERDB_BROKER_BYPASS";
pub const SOCKET_VAR: &str = "USERDB_BROKER_SOCKET";
pub const TIMEOUT_VAR: &str = "USERDB_BROKER_TIMEOUT_MS";
/// systemd's switch for all userdb clients: a boolean, or a colon-separated
/// list of services to skip.
pub const SYSTEMD_BYPASS_VAR: &str = "SYSTEMD_BYPASS_USERDB";
/// systemd's switch asking to leave out users and groups served by PID 1.
pub const DYNAMIC_BYPASS_VAR: &str = "SYSTEMD_NSS_DYNAMIC_BYPASS";
/// The unit the service manager is resolving `User=`/`Group=` for.
pub const ACTIVATION_UNIT_VAR: &str = "SYSTEMD_ACTIVATION_UNIT";
pub const BROKER_UNIT: &str = "userdb-brokerd.service";
/// What PID 1 gives generators, and services only (see [`is_generator`]).
const SCOPE_VAR: &str = "SYSTEMD_SCOPE";
const ARCHITECTURE_VAR: &str = "SYSTEMD_ARCHITECTURE";
const EXEC_PID_VAR: &str = "SYSTEMD_EXEC_PID";
const INVOCATION_VAR: &str = "INVOCATION_ID";

/// A variable the guard reads. The caller looks them all up in one pass
/// over the environment before the guard asks, and answers each by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    Bypass,
    Socket,
    Timeout,
    SystemdBypass,
    DynamicBypass,
    ActivationUnit,
    Scope,
    Architecture,
    ExecPid,
    Invocation,
}

impl Var {
    pub const ALL: [Var; 10] = [
        Var::Bypass,
        Var::Socket,
        Var::Timeout,
        Var::SystemdBypass,
        Var::DynamicBypass,
        Var::ActivationUnit,
        Var::Scope,
        Var::Architecture,
        Var::ExecPid,
        Var::Invocation,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Var::Bypass => BYPASS_VAR,
            Var::Socket => SOCKET_VAR,
            Var::Timeout => TIMEOUT_VAR,
            Var::SystemdBypass => SYSTEMD_BYPASS_VAR,
            Var::DynamicBypass => DYNAMIC_BYPASS_VAR,
            Var::ActivationUnit => ACTIVATION_UNIT_VAR,
            Var::Scope => SCOPE_VAR,
            Var::Architecture => ARCHITECTURE_VAR,
            Var::ExecPid => EXEC_PID_VAR,
            Var::Invocation => INVOCATION_VAR,
        }
    }

    /// The variable named `name`, if the guard reads it.
    pub fn named(name: &[u8]) -> Option<Var> {
        Var::ALL.into_iter().find(|v| v.name().as_bytes() == name)
    }
}

/// How the guard reads the environment.
pub type Env<'e> = dyn Fn(Var) -> Option<&'e str> + 'e;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);
/// `USERDB_BROKER_TIMEOUT_MS` is clamped to this range.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// The whole-call budget of a generator: PID 1 waits for it.
pub const GENERATOR_TIMEOUT: Duration = Duration::from_millis(100);
/// The longest a listing (`set*ent`) may take as long as replies keep
/// coming, each within the call's timeout.
pub const LISTING_LIMIT: Duration = Duration::from_secs(60);

/// Why a call does no I/O at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `USERDB_BROKER_BYPASS` or `SYSTEMD_BYPASS_USERDB`.
    Bypassed,
    /// A lookup started while this thread was already inside one.
    Reentered,
}

/// Why a call reads the snapshot file but opens no socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// We are PID 1: the broker may need PID 1, so never wait for it.
    Init,
    /// We are the broker (or PID 1 resolving the broker's own unit).
    Broker,
    /// A generator (or what it started): PID 1 waits for us.
    Generator,
}

/// How a call that passed the guard may talk to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Borrowed for the default path, so that a call allocates nothing
    /// for it.
    pub socket: Cow<'static, Path>,
    /// Set when the call may not open a socket, with the reason.
    pub silent: Option<Silence>,
    /// The deadline of one call, and of each wait for the next reply of a
    /// listing.
    pub timeout: Duration,
    /// The longest a whole listing may take.
    pub listing_limit: Duration,
    /// Ask the broker to leave out every source served by PID 1.
    pub dynamic_bypass: bool,
}

impl Plan {
    /// Where the broker on `socket` publishes its snapshot file: asked only
    /// when a file is to be mapped, not on every call.
    pub fn snapshot(&self) -> Cow<'static, Path> {
        if self.socket == Path::new(DEFAULT_SOCKET_PATH) {
            Cow::Borrowed(Path::new(DEFAULT_SNAPSHOT_PATH))
        } else {
            Cow::Owned(snapfile::path_for(&self.socket))
        }
    }
}

/// systemd's `parse_boolean`.
fn parse_boolean(value: &str) -> Option<bool> {
    match value {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

fn is_true(value: Option<&str>) -> bool {
    value.and_then(parse_boolean) == Some(true)
}

/// `SYSTEMD_BYPASS_USERDB` as systemd's userdb client reads it: a true
/// boolean skips every service, any other non-boolean value is a list of
/// the services to skip.
fn systemd_bypasses_us(value: Option<&str>) -> bool {
    let Some(value) = value else {
        return false;
    };
    match parse_boolean(value) {
        Some(bypass) => bypass,
        None => value.split(':').any(|service| service == BROKER_SERVICE),
    }
}

/// Whether we run as a generator (or something a generator started), where
/// PID 1 waits for us synchronously.
///
/// What PID 1 puts in a generator's environment (`build_generator_environment`
/// in `src/core/manager.c`; checked against systemd 252's manager.c and the
/// strings in Debian 12's `libsystemd-core-252.so`): `SYSTEMD_SCOPE`
/// (always), `SYSTEMD_ARCHITECTURE` (always), `SYSTEMD_IN_INITRD` and
/// `SYSTEMD_FIRST_BOOT` (system manager), `SYSTEMD_VIRTUALIZATION` (when
/// virtualised); newer releases add `SYSTEMD_SOFT_REBOOTS_COUNT` and
/// `SYSTEMD_CONFIDENTIAL_VIRTUALIZATION`. `execute_directories()` also sets
/// `SYSTEMD_EXEC_PID` for generators and environment generators.
///
/// `SYSTEMD_EXEC_PID` alone does not mean "generator": PID 1 sets it for
/// every service process too. Services, though, always get `INVOCATION_ID`,
/// which PID 1 never gives generators. So the rule is: `SYSTEMD_SCOPE` and
/// `SYSTEMD_ARCHITECTURE` together (the pair only generators get, in 252
/// and since), or `SYSTEMD_EXEC_PID` without `INVOCATION_ID` (environment
/// generators, which get no `SYSTEMD_SCOPE`). A false positive only costs a
/// shorter deadline and answers without PID 1's dynamic users.
pub fn is_generator(env: &Env<'_>) -> bool {
    let unit_generator = env(Var::Scope).is_some() && env(Var::Architecture).is_some();
    let spawned_not_service = env(Var::ExecPid).is_some() && env(Var::Invocation).is_none();
    unit_generator || spawned_not_service
}

fn timeout(value: Option<&str>) -> Duration {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .map_or(DEFAULT_TIMEOUT, |t| t.clamp(MIN_TIMEOUT, MAX_TIMEOUT))
}

/// The guard's decision, except re-entry (see `Reentry`).
pub fn plan(env: &Env<'_>, pid: u32) -> Result<Plan, Refusal> {
    if is_true(env(Var::Bypass)) || systemd_bypasses_us(env(Var::SystemdBypass)) {
        return Err(Refusal::Bypassed);
    }
    let generator = is_generator(env);
    let silent = if pid == 1 {
        Some(Silence::Init)
    } else if env(Var::ActivationUnit) == Some(BROKER_UNIT) {
        Some(Silence::Broker)
    } else if generator {
        Some(Silence::Generator)
    } else {
        None
    };
    let mut timeout = timeout(env(Var::Timeout));
    if generator {
        timeout = timeout.min(GENERATOR_TIMEOUT);
    }
    let socket = match env(Var::Socket).filter(|path| !path.is_empty()) {
        Some(path) => Cow::Owned(PathBuf::from(path)),
        None => Cow::Borrowed(Path::new(DEFAULT_SOCKET_PATH)),
    };
    Ok(Plan {
        socket,
        silent,
        timeout,
        // A generator's whole listing gets no more than one call: PID 1 waits.
        listing_limit: if generator { timeout } else { LISTING_LIMIT },
        dynamic_bypass: generator || is_true(env(Var::DynamicBypass)),
    })
}

thread_local! {
    // A const-initialised Cell<bool> needs no destructor, so no
    // thread-local destructor is ever registered in the host process.
    static IN_LOOKUP: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as inside a lookup until dropped.
#[derive(Debug)]
pub struct Reentry(());

impl Reentry {
    pub fn enter() -> Result<Reentry, Refusal> {
        IN_LOOKUP.with(|flag| {
            if flag.replace(true) {
                Err(Refusal::Reentered)
            } else {
                Ok(Reentry(()))
            }
        })
    }
}

impl Drop for Reentry {
    fn drop(&mut self) {
        IN_LOOKUP.with(|flag| flag.set(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(Var) -> Option<&'a str> + 'a {
        move |var| {
            pairs
                .iter()
                .find(|(k, _)| *k == var.name())
                .map(|(_, v)| *v)
        }
    }

    #[test]
    fn every_variable_is_listed_once_at_its_own_index() {
        for (index, var) in Var::ALL.into_iter().enumerate() {
            assert_eq!(var as usize, index, "{var:?}");
            assert_eq!(Var::named(var.name().as_bytes()), Some(var));
        }
        assert_eq!(Var::named(b"USERDB_BROKER"), None);
    }

    #[test]
    fn defaults_without_environment() {
        let plan = plan(&env_of(&[]), 4242).unwrap();
        assert_eq!(plan.socket, Path::new(DEFAULT_SOCKET_PATH));
        assert_eq!(
            plan.snapshot(),
            snapfile::path_for(Path::new(DEFAULT_SOCKET_PATH))
        );
        assert_eq!(plan.timeout, DEFAULT_TIMEOUT);
        assert_eq!(plan.listing_limit, LISTING_LIMIT);
        assert_eq!(plan.silent, None);
        assert!(!plan.dynamic_bypass);
    }

    #[test]
    fn bypass_variables_refuse() {
        for pairs in [
            [(BYPASS_VAR, "1")],
            [(SYSTEMD_BYPASS_VAR, "yes")],
            [(SYSTEMD_BYPASS_VAR, "true")],
            [(
                SYSTEMD_BYPASS_VAR,
                "io.systemd.DynamicUser:io.userdb.Broker",
            )],
            [(SYSTEMD_BYPASS_VAR, "io.userdb.Broker")],
        ] {
            assert_eq!(
                plan(&env_of(&pairs), 4242),
                Err(Refusal::Bypassed),
                "{pairs:?}"
            );
        }
        for pairs in [
            [(BYPASS_VAR, "0")],
            [(SYSTEMD_BYPASS_VAR, "0")],
            [(SYSTEMD_BYPASS_VAR, "io.systemd.DynamicUser")],
            [(SYSTEMD_BYPASS_VAR, "io.userdb.BrokerX")],
        ] {
            assert!(plan(&env_of(&pairs), 4242).is_ok(), "{pairs:?}");
        }
    }

    #[test]
    fn bypass_comes_before_the_pid_check() {
        assert_eq!(
            plan(&env_of(&[(BYPASS_VAR, "1")]), 1),
            Err(Refusal::Bypassed)
        );
        assert_eq!(plan(&env_of(&[]), 1).unwrap().silent, Some(Silence::Init));
    }

    #[test]
    fn broker_unit_activation_refuses() {
        let env = env_of(&[(ACTIVATION_UNIT_VAR, BROKER_UNIT)]);
        assert_eq!(plan(&env, 4242).unwrap().silent, Some(Silence::Broker));
        let other = env_of(&[(ACTIVATION_UNIT_VAR, "sshd.service")]);
        assert_eq!(plan(&other, 4242).unwrap().silent, None);
    }

    #[test]
    fn generator_gets_a_short_deadline_and_the_dynamic_bypass() {
        let generator = env_of(&[
            ("SYSTEMD_SCOPE", "system"),
            ("SYSTEMD_ARCHITECTURE", "x86-64"),
            ("SYSTEMD_IN_INITRD", "0"),
            ("SYSTEMD_EXEC_PID", "77"),
        ]);
        let plan_g = plan(&generator, 77).unwrap();
        assert_eq!(plan_g.silent, Some(Silence::Generator));
        assert_eq!(plan_g.timeout, GENERATOR_TIMEOUT);
        assert_eq!(plan_g.listing_limit, GENERATOR_TIMEOUT);
        assert!(plan_g.dynamic_bypass);
        let env_generator = env_of(&[("SYSTEMD_EXEC_PID", "77")]);
        assert!(plan(&env_generator, 77).unwrap().dynamic_bypass);
        let short = env_of(&[
            ("SYSTEMD_SCOPE", "system"),
            ("SYSTEMD_ARCHITECTURE", "x86-64"),
            (TIMEOUT_VAR, "30"),
        ]);
        assert_eq!(plan(&short, 77).unwrap().timeout, Duration::from_millis(30));
    }

    #[test]
    fn a_service_is_not_a_generator() {
        let service = env_of(&[("SYSTEMD_EXEC_PID", "77"), ("INVOCATION_ID", "0123abcd")]);
        let plan = plan(&service, 77).unwrap();
        assert_eq!(plan.timeout, DEFAULT_TIMEOUT);
        assert!(!plan.dynamic_bypass);
        assert!(!is_generator(&env_of(&[("SYSTEMD_SCOPE", "system")])));
    }

    #[test]
    fn dynamic_bypass_variable_is_passed_on() {
        let env = env_of(&[(DYNAMIC_BYPASS_VAR, "1")]);
        let plan = plan(&env, 4242).unwrap();
        assert!(plan.dynamic_bypass);
        assert_eq!(plan.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn timeout_and_socket_come_from_the_environment_within_bounds() {
        let env = env_of(&[(TIMEOUT_VAR, "250"), (SOCKET_VAR, "/tmp/x.sock")]);
        let p = plan(&env, 4242).unwrap();
        assert_eq!(p.timeout, Duration::from_millis(250));
        assert_eq!(p.socket, Path::new("/tmp/x.sock"));
        assert_eq!(p.snapshot(), Path::new("/tmp/snapshot"));
        for (value, expected) in [
            ("0", MIN_TIMEOUT),
            ("999999999", MAX_TIMEOUT),
            ("-5", DEFAULT_TIMEOUT),
            ("soon", DEFAULT_TIMEOUT),
        ] {
            assert_eq!(
                plan(&env_of(&[(TIMEOUT_VAR, value)]), 4242)
                    .unwrap()
                    .timeout,
                expected
            );
        }
    }

    #[test]
    fn reentry_is_refused_until_the_outer_lookup_ends() {
        let outer = Reentry::enter().unwrap();
        assert_eq!(Reentry::enter().unwrap_err(), Refusal::Reentered);
        drop(outer);
        let again = Reentry::enter();
        assert!(again.is_ok());
        // Another thread is not affected by this one's flag.
        std::thread::spawn(|| assert!(Reentry::enter().is_ok()))
            .join()
            .unwrap();
    }
}
