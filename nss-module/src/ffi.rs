//! The C ABI glibc calls, and every `unsafe` block of the crate.
//!
//! Each entry point turns its raw arguments into safe values, runs its body
//! under `catch_unwind` (a panic becomes `NSS_STATUS_UNAVAIL`, it never
//! unwinds into C), restores `errno` to what it was on entry (our own
//! socket calls must not leak their errno into the caller) and then sets
//! `*errnop` only when the call failed, which is what glibc reads.

use std::ffi::{c_char, c_int, c_long, CStr};
use std::mem::size_of;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU8, Ordering};

use libc::{gid_t, uid_t};
use userdb_proto::names::ValidName;
use userdb_proto::record::{GroupRecord, Passwd, UserRecord};

use crate::answer;
use crate::client::{new_gids, Failure, Host, Key, Lookup, Status};
use crate::enumerate::{GROUPS, SHADOW, USERS};
use crate::guard::Var;
use crate::local::Step;
use crate::pack::{self, TooSmall};

extern "C" {
    // The process's environment, as getenv reads it.
    static environ: *const *const c_char;
}

/// glibc's `struct sgrp` (`<gshadow.h>`), which the libc crate lacks.
#[repr(C)]
pub struct Sgrp {
    pub sg_namp: *mut c_char,
    pub sg_passwd: *mut c_char,
    pub sg_adm: *mut *mut c_char,
    pub sg_mem: *mut *mut c_char,
}

/// A panic inside an entry point, caught before it could reach C.
const PANICKED: Failure = Failure::unavail(libc::EIO);
/// glibc passed a NULL where a struct or counter must be.
const BAD_ARGUMENT: Failure = Failure::unavail(libc::EINVAL);
/// `realloc` failed while growing the `initgroups` array (as glibc's files module).
const OUT_OF_MEMORY: Failure = Failure {
    status: Status::TryAgain,
    errno: libc::ENOMEM,
};

/// The guard's variables, found in one pass over the environment (ten
/// `getenv` calls were a third of a look-up's instructions), borrowed
/// from it: the guard copies what it keeps. As `secure_getenv`, it finds
/// none in a set-uid or set-gid process.
struct Environment<'e>([Option<&'e str>; Var::ALL.len()]);

/// AT_SECURE, read once: it cannot change in a running process.
static SECURE: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 2;

fn secure() -> bool {
    match SECURE.load(Ordering::Relaxed) {
        UNKNOWN => {
            // SAFETY: getauxval has no preconditions; AT_SECURE is what
            // secure_getenv consults.
            let secure = unsafe { libc::getauxval(libc::AT_SECURE) } != 0;
            SECURE.store(u8::from(secure), Ordering::Relaxed);
            secure
        }
        known => known == 1,
    }
}

impl Environment<'_> {
    fn read() -> Self {
        let mut values = [None; Var::ALL.len()];
        if secure() {
            return Environment(values);
        }
        // SAFETY: `environ` is libc's NULL-terminated array of
        // NUL-terminated "NAME=value" strings, read as getenv reads it. The
        // values are borrowed only while the guard decides, within this
        // call, as a pointer from getenv would be (a concurrent setenv is
        // as unsafe for both).
        unsafe {
            let mut entry = environ;
            while !entry.is_null() && !(*entry).is_null() {
                // Every variable of the list starts with one of these.
                if matches!(**entry as u8, b'U' | b'S' | b'I') {
                    let mut parts = CStr::from_ptr(*entry).to_bytes().splitn(2, |&b| b == b'=');
                    if let (Some(name), Some(value)) = (parts.next(), parts.next()) {
                        // The first definition wins, as for getenv.
                        if let Some(slot) =
                            Var::named(name).and_then(|v| values.get_mut(v as usize))
                        {
                            if slot.is_none() {
                                *slot = std::str::from_utf8(value).ok();
                            }
                        }
                    }
                }
                entry = entry.add(1);
            }
        }
        Environment(values)
    }

    fn get(&self, var: Var) -> Option<&str> {
        self.0.get(var as usize).copied().flatten()
    }
}

fn monotonic_ms() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let millis = u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000;
    secs.saturating_mul(1000).saturating_add(millis)
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A page the kernel zeroes in the child of a `fork()` (`MADV_WIPEONFORK`),
/// holding this process's pid: the guard needs the pid on every call, and
/// `getpid` is a system call. Null when the kernel cannot (before 4.14):
/// then every call asks.
static PID_PAGE: AtomicPtr<AtomicU32> = AtomicPtr::new(std::ptr::null_mut());
static PID_PAGE_TRIED: AtomicBool = AtomicBool::new(false);

fn pid_page() -> Option<&'static AtomicU32> {
    if !PID_PAGE_TRIED.swap(true, Ordering::AcqRel) {
        // SAFETY: an anonymous private mapping of one page, owned by this
        // module for the life of the process (never unmapped); madvise on
        // exactly that mapping.
        unsafe {
            let page = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if page != libc::MAP_FAILED {
                if libc::madvise(page, 4096, libc::MADV_WIPEONFORK) == 0 {
                    PID_PAGE.store(page.cast(), Ordering::Release);
                } else {
                    libc::munmap(page, 4096);
                }
            }
        }
    }
    let page = PID_PAGE.load(Ordering::Acquire);
    // SAFETY: a non-null pointer is the start of the page mapped above,
    // zeroed memory aligned for an AtomicU32, valid for the process's life.
    (!page.is_null()).then(|| unsafe { &*page })
}

fn pid() -> u32 {
    let page = pid_page();
    if let Some(pid) = page.map(|p| p.load(Ordering::Relaxed)).filter(|&p| p != 0) {
        return pid;
    }
    // SAFETY: getpid has no preconditions and cannot fail.
    let pid = u32::try_from(unsafe { libc::getpid() }).unwrap_or(0);
    if let Some(page) = page {
        page.store(pid, Ordering::Relaxed);
    }
    pid
}

fn start_lookup() -> Result<Lookup, Failure> {
    let environment = Environment::read();
    Lookup::start(&Host {
        env: &|var| environment.get(var),
        pid: pid(),
        euid,
        now_ms: monotonic_ms,
    })
}

/// Runs an entry point's body: catches panics, keeps `errno`, reports failures.
fn run(errnop: *mut c_int, body: impl FnOnce() -> Result<(), Failure>) -> c_int {
    // SAFETY: __errno_location always returns this thread's errno slot.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: the slot is valid and only this thread uses it.
    let saved = unsafe { *errno };
    let result = catch_unwind(AssertUnwindSafe(body)).unwrap_or(Err(PANICKED));
    // SAFETY: as above. Restored first: glibc usually passes `&errno` as
    // `errnop`, and the failure's value written below must win.
    unsafe { *errno = saved };
    match result {
        Ok(()) => Status::Success as c_int,
        Err(failure) => {
            if !errnop.is_null() {
                // SAFETY: a non-NULL errnop points to an int glibc gave us to fill.
                unsafe { *errnop = failure.errno };
            }
            failure.status as c_int
        }
    }
}

/// The name argument; a NULL, non-UTF-8 or invalid name cannot exist, so it
/// is answered `NOTFOUND` without asking anyone.
fn name_arg<'a>(name: *const c_char) -> Result<ValidName<'a>, Failure> {
    if name.is_null() {
        return Err(Failure::NOT_FOUND);
    }
    // SAFETY: glibc passes a NUL-terminated string valid for the whole call.
    let name = unsafe { CStr::from_ptr(name) };
    name.to_str()
        .ok()
        .and_then(ValidName::new)
        .ok_or(Failure::NOT_FOUND)
}

/// The caller's buffer as a slice.
fn buffer<'a>(buf: *mut c_char, buflen: usize) -> &'a mut [u8] {
    if buf.is_null() || buflen == 0 {
        return &mut [];
    }
    // SAFETY: glibc hands us `buflen` writable bytes at `buf`, ours alone
    // for the duration of the call.
    unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), buflen) }
}

fn too_small(_: TooSmall) -> Failure {
    Failure::BUFFER_TOO_SMALL
}

/// Turns offsets into the buffer into the pointers glibc's structs hold.
struct Pointers(*mut u8);

impl Pointers {
    fn string(&self, offset: usize) -> *mut c_char {
        self.0.wrapping_add(offset).cast()
    }

    fn array(&self, offset: usize) -> *mut *mut c_char {
        self.0.wrapping_add(offset).cast()
    }
}

fn write_passwd(
    out: *mut libc::passwd,
    buf: *mut c_char,
    buflen: usize,
    user: &Passwd,
) -> Result<(), Failure> {
    if out.is_null() {
        return Err(BAD_ARGUMENT);
    }
    let bytes = buffer(buf, buflen);
    let layout = pack::pack_passwd(user, bytes).map_err(too_small)?;
    let at = Pointers(bytes.as_mut_ptr());
    let entry = libc::passwd {
        pw_name: at.string(layout.name),
        pw_passwd: at.string(layout.passwd),
        pw_uid: user.uid,
        pw_gid: user.gid,
        pw_gecos: at.string(layout.gecos),
        pw_dir: at.string(layout.dir),
        pw_shell: at.string(layout.shell),
    };
    // SAFETY: `out` is non-NULL and points to the caller's struct passwd.
    unsafe { out.write(entry) };
    Ok(())
}

fn write_group(
    out: *mut libc::group,
    buf: *mut c_char,
    buflen: usize,
    (name, gid, members): (&str, u32, &[&str]),
) -> Result<(), Failure> {
    if out.is_null() {
        return Err(BAD_ARGUMENT);
    }
    let bytes = buffer(buf, buflen);
    let layout = pack::pack_group(name, members, bytes).map_err(too_small)?;
    let at = Pointers(bytes.as_mut_ptr());
    let entry = libc::group {
        gr_name: at.string(layout.name),
        gr_passwd: at.string(layout.passwd),
        gr_gid: gid,
        gr_mem: at.array(layout.members),
    };
    // SAFETY: `out` is non-NULL and points to the caller's struct group.
    unsafe { out.write(entry) };
    Ok(())
}

/// Shadow days as glibc stores them: -1 for an empty field.
fn days(value: Option<i64>) -> c_long {
    value.and_then(|d| c_long::try_from(d).ok()).unwrap_or(-1)
}

fn write_shadow(
    out: *mut libc::spwd,
    buf: *mut c_char,
    buflen: usize,
    user: &UserRecord,
    incomplete: bool,
) -> Result<(), Failure> {
    if incomplete {
        return Err(Failure::NOT_PRIVILEGED);
    }
    if out.is_null() {
        return Err(BAD_ARGUMENT);
    }
    let shadow = user.shadow.clone().unwrap_or_default();
    let bytes = buffer(buf, buflen);
    let layout = pack::pack_shadow(&user.name, shadow.hashed_password.as_deref(), bytes)
        .map_err(too_small)?;
    let at = Pointers(bytes.as_mut_ptr());
    let entry = libc::spwd {
        sp_namp: at.string(layout.name),
        sp_pwdp: at.string(layout.passwd),
        sp_lstchg: days(shadow.last_change_days),
        sp_min: days(shadow.min_days),
        sp_max: days(shadow.max_days),
        sp_warn: days(shadow.warn_days),
        sp_inact: days(shadow.inactive_days),
        sp_expire: days(shadow.expire_days),
        // An empty flag field, as glibc's own parser stores it.
        sp_flag: libc::c_ulong::MAX,
    };
    // SAFETY: `out` is non-NULL and points to the caller's struct spwd.
    unsafe { out.write(entry) };
    Ok(())
}

fn write_gshadow(
    out: *mut Sgrp,
    buf: *mut c_char,
    buflen: usize,
    group: &GroupRecord,
    incomplete: bool,
) -> Result<(), Failure> {
    if incomplete {
        return Err(Failure::NOT_PRIVILEGED);
    }
    if out.is_null() {
        return Err(BAD_ARGUMENT);
    }
    let shadow = group.shadow.clone().unwrap_or_default();
    let bytes = buffer(buf, buflen);
    let layout = pack::pack_gshadow(
        &group.name,
        shadow.hashed_password.as_deref(),
        &shadow.administrators,
        &group.members,
        bytes,
    )
    .map_err(too_small)?;
    let at = Pointers(bytes.as_mut_ptr());
    let entry = Sgrp {
        sg_namp: at.string(layout.name),
        sg_passwd: at.string(layout.passwd),
        sg_adm: at.array(layout.admins),
        sg_mem: at.array(layout.members),
    };
    // SAFETY: `out` is non-NULL and points to the caller's struct sgrp.
    unsafe { out.write(entry) };
    Ok(())
}

/// # Safety
/// glibc's contract for `getpwnam_r` modules: valid or NULL pointers,
/// `buf` holding `buflen` bytes.
#[no_mangle]
pub unsafe extern "C" fn _nss_broker_getpwnam_r(
    name: *const c_char,
    result: *mut libc::passwd,
    buf: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
) -> c_int {
    run(errnop, || {
        let name = name_arg(name)?;
        answer::user(&start_lookup()?, Key::Name(name), |user| {
            write_passwd(result, buf, buflen, user)
        })
    })
}

/// # Safety
/// As `_nss_broker_getpwnam_r`.
#[no_mangle]
pub unsafe extern "C" fn _nss_broker_getpwuid_r(
    uid: uid_t,
    result: *mut libc::passwd,
    buf: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
) -> c_int {
    run(errnop, || {
        answer::user(&start_lookup()?, Key::Id(uid), |user| {
            write_passwd(result, buf, buflen, user)
        })
    })
}

#[no_mangle]
pub extern "C" fn _nss_broker_setpwent(_stayopen: c_int) -> c_int {
    run(std::ptr::null_mut(), || {
        USERS.open(|| answer::open_users(&start_lookup()?))
    })
}

/// # Safety
/// As `_nss_broker_getpwnam_r`.
#[no_mangle]
pub unsafe extern "C" fn _nss_broker_getpwent_r(
    result: *mut libc::passwd,
    buf: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
) -> c_int {
    run(errnop, || {
        USERS.next(
            || answer::open_users(&start_lookup()?),
            |listing| listing.next_user(|user| write_passwd(result, buf, buflen, &user.passwd)),
            |user| write_passwd(result, buf, buflen, &user.passwd()),
        )
    })
}

#[no_mangle]
pub extern "C" fn _nss_broker_endpwent() -> c_int {
    run(std::ptr::null_mut(), || USERS.close())
}

/// # Safety
/// glibc's contract for `getgrnam_r` modules: valid or NULL pointers,
/// `buf` holding `buflen` bytes.
#[no_mangle]
pub unsafe extern "C" fn _nss_broker_getgrnam_r(
    name: *const c_char,
    result: *mut libc::group,
    buf: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
) -> c_int {
    run(errnop, || {
        let name = name_arg(name)?;
        answer::group(&start_lookup()?, Key::Name(name), |name, gid, members| {
            write_group(result, buf, buflen, (name, gid, members))
        })
    })
}

/// # Safety
/// As `_nss_broker_getgrnam_r`.
#[no_mangle]
pub unsafe extern "C" fn _nss_broker_getgrgid_r(
    gid: gid_t,
    result: *mut libc::group,
    buf: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
) -> c_int {
    run(errnop, || {
        answer::group(&start_lookup()?, Key::Id(gid), |name, gid, members| {
            write_group(result, buf, buflen, (name, gid, members))
        })
    })
}

#[no_mangle]
pub extern "C" fn _nss_broker_setgrent(_stayopen: c_int) -> c_int {
    run(std::ptr::null_mut(), || {
        GROUPS.open(|| answer::open_groups(&start_lookup()?))
    })
}

/// # Safety
/// As `_nss_broker_getgrnam_r`.
#[no_mangle]
pub unsafe extern "C" fn _nss_broker_getgrent_r(
    result: *mut libc::group,
    buf: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
) -> c_int {
    run(errnop, || {
        GROUPS.next(
            || answer::open_groups(&start_lookup()?),
            |listing| {
                listing.next_group(|group, members| {
                    write_group(result, buf, buflen, (group.name, group.gid, members))
                })
            },
            |group| {
                let members: Vec<&str> = group.members.iter().map(String::as_str).collect();
                write_group(result, buf, buflen, (&group.name, group.gid, &members))
            },
        )
    })
}

#[no_mangle]
pub extern "C" fn _nss_broker_endgrent() -> c_int {
    run(std::ptr::null_mut(), || GROUPS.close())
}

/// Adds the groups `user` is a member of to glibc's array, as glibc's
/// files module does: `*start` entries are in use out of `*size`, the array
/// grows with `realloc` (doubling, capped at `limit` when `limit > 0`).
///
/// # Safety
/// glibc's contract for `initgroups_dyn`: `start`, `size` and `groupsp`
/// valid, `*groupsp` a malloc'd array of `*size` gids, `*start` of them set.
#[no_mangle]
pub unsafe extern "C" fn _nss_broker_initgroups_dyn(
    user: *const c_char,
    group: gid_t,
    start: *mut c_long,
    size: *mut c_long,
    groupsp: *mut *mut gid_t,
    limit: c_long,
    errnop: *mut c_int,
) -> c_int {
    run(errnop, || {
        let user = name_arg(user)?;
        if start.is_null() || size.is_null() || groupsp.is_null() {
            return Err(BAD_ARGUMENT);
        }
        let found = answer::gids(&start_lookup()?, user.as_str())?;
        if found.is_empty() {
            return Err(Failure::NOT_FOUND);
        }
        // SAFETY: the three pointers are non-NULL and glibc's to share.
        let (mut filled, mut capacity, mut groups) = unsafe { (*start, *size, *groupsp) };
        if filled < 0 || capacity < filled || (groups.is_null() && capacity > 0) {
            return Err(BAD_ARGUMENT);
        }
        let present: &[gid_t] = if groups.is_null() {
            &[]
        } else {
            // SAFETY: the first `*start` entries of the array are set gids.
            unsafe { std::slice::from_raw_parts(groups, filled as usize) }
        };
        for gid in new_gids(&found, group, present) {
            if filled == capacity {
                if limit > 0 && capacity >= limit {
                    break;
                }
                let mut grown_to = capacity.saturating_mul(2).max(1);
                if limit > 0 {
                    grown_to = grown_to.min(limit);
                }
                let bytes = usize::try_from(grown_to)
                    .ok()
                    .and_then(|n| n.checked_mul(size_of::<gid_t>()))
                    .ok_or(OUT_OF_MEMORY)?;
                // SAFETY: `groups` is NULL or glibc's malloc'd array; on
                // failure realloc leaves it untouched and still ours to keep.
                let grown = unsafe { libc::realloc(groups.cast(), bytes) }.cast::<gid_t>();
                if grown.is_null() {
                    return Err(OUT_OF_MEMORY);
                }
                groups = grown;
                capacity = grown_to;
                // SAFETY: the pointers are valid (checked above); glibc must
                // see the new array and size even if a later step fails.
                unsafe {
                    *groupsp = groups;
                    *size = capacity;
                }
            }
            // SAFETY: `filled < capacity`, so the slot lies inside the array.
            unsafe {
                groups.add(filled as usize).write(gid);
                filled += 1;
                *start = filled;
            }
        }
        Ok(())
    })
}

/// # Safety
/// glibc's contract for `getspnam_r` modules: valid or NULL pointers,
/// `buf` holding `buflen` bytes.
#[no_mangle]
pub unsafe extern "C" fn _nss_broker_getspnam_r(
    name: *const c_char,
    result: *mut libc::spwd,
    buf: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
) -> c_int {
    run(errnop, || {
        let name = name_arg(name)?;
        answer::shadow(&start_lookup()?, name, |user, incomplete| {
            write_shadow(result, buf, buflen, user, incomplete)
        })
    })
}

#[no_mangle]
pub extern "C" fn _nss_broker_setspent(_stayopen: c_int) -> c_int {
    run(std::ptr::null_mut(), || {
        SHADOW.open(|| answer::open_shadow(&start_lookup()?))
    })
}

/// # Safety
/// As `_nss_broker_getspnam_r`.
#[no_mangle]
pub unsafe extern "C" fn _nss_broker_getspent_r(
    result: *mut libc::spwd,
    buf: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
) -> c_int {
    run(errnop, || {
        SHADOW.next(
            || answer::open_shadow(&start_lookup()?),
            // The file never holds privileged data: no shadow listing from it.
            |_| Step::End,
            |user| write_shadow(result, buf, buflen, user, false),
        )
    })
}

#[no_mangle]
pub extern "C" fn _nss_broker_endspent() -> c_int {
    run(std::ptr::null_mut(), || SHADOW.close())
}

/// # Safety
/// glibc's contract for `getsgnam_r` modules: valid or NULL pointers,
/// `buf` holding `buflen` bytes.
#[no_mangle]
pub unsafe extern "C" fn _nss_broker_getsgnam_r(
    name: *const c_char,
    result: *mut Sgrp,
    buf: *mut c_char,
    buflen: usize,
    errnop: *mut c_int,
) -> c_int {
    run(errnop, || {
        let name = name_arg(name)?;
        answer::gshadow(&start_lookup()?, name, |group, incomplete| {
            write_gshadow(result, buf, buflen, group, incomplete)
        })
    })
}

#[cfg(test)]
mod tests {
    //! The entry points against an in-process fake broker on a real socket.

    use super::*;
    use serde_json::{json, Value};
    use std::ffi::CString;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::OnceLock;

    const TRYAGAIN: c_int = Status::TryAgain as c_int;
    const UNAVAIL: c_int = Status::Unavail as c_int;
    const NOTFOUND: c_int = Status::NotFound as c_int;
    const SUCCESS: c_int = Status::Success as c_int;

    fn answer(call: &Value) -> Vec<Value> {
        let params = &call["parameters"];
        let no_record = json!({"error": "io.systemd.UserDatabase.NoRecordFound", "parameters": {}});
        let record = |record: Value| json!({"parameters": {"record": record, "incomplete": false}});
        match (call["method"].as_str(), params["userName"].as_str()) {
            (Some("io.userdb.Broker.GetUserRecord"), Some("alice")) => vec![record(json!({
                "userName": "alice", "uid": 60100, "realName": "Alice",
                "homeDirectory": "/home/alice", "shell": "/bin/zsh", "service": "io.userdb.Broker"
            }))],
            // Answers a different user than asked for.
            (Some("io.userdb.Broker.GetUserRecord"), Some("liar")) => {
                vec![record(json!({"userName": "root", "uid": 0}))]
            }
            // A colon in realName would forge passwd fields.
            (Some("io.userdb.Broker.GetUserRecord"), Some("forger")) => vec![record(json!({
                "userName": "forger", "uid": 60200, "realName": "x:0:0::/root:/bin/sh"
            }))],
            (Some("io.userdb.Broker.GetMemberships"), Some("alice")) => [5u32, 100, 6, 5, 7, 8]
                .iter()
                .enumerate()
                .map(|(i, gid)| {
                    json!({
                        "parameters": {"userName": "alice", "groupName": format!("g{gid}"), "gid": gid},
                        "continues": i < 5
                    })
                })
                .collect(),
            _ => vec![no_record],
        }
    }

    fn serve(mut stream: UnixStream) {
        let mut call = Vec::new();
        let mut byte = [0u8; 1];
        while stream.read(&mut byte).unwrap_or(0) == 1 && byte[0] != 0 {
            call.push(byte[0]);
        }
        let Ok(call) = serde_json::from_slice::<Value>(&call) else {
            return;
        };
        for reply in answer(&call) {
            let mut bytes = serde_json::to_vec(&reply).unwrap();
            bytes.push(0);
            let _ = stream.write_all(&bytes);
        }
    }

    /// Starts the fake broker once and points the module at it.
    fn fake_broker() {
        static STARTED: OnceLock<()> = OnceLock::new();
        STARTED.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("nss-broker-ffi-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let socket = dir.join("broker.sock");
            let _ = std::fs::remove_file(&socket);
            let listener = UnixListener::bind(&socket).unwrap();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    serve(stream);
                }
            });
            std::env::set_var("USERDB_BROKER_SOCKET", &socket);
        });
    }

    /// Name, uid, gecos and shell of a passwd entry.
    type Entry = (String, u32, String, String);

    fn getpwnam(name: &str, buf: &mut [u8]) -> (c_int, c_int, Option<Entry>) {
        let name = CString::new(name).unwrap();
        let mut pwd = std::mem::MaybeUninit::<libc::passwd>::zeroed();
        let mut errno: c_int = 0;
        // SAFETY: every pointer is valid for the call; `buf` holds its length.
        let status = unsafe {
            _nss_broker_getpwnam_r(
                name.as_ptr(),
                pwd.as_mut_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut errno,
            )
        };
        if status != SUCCESS {
            return (status, errno, None);
        }
        // SAFETY: on success the struct is filled with pointers into `buf`.
        let pwd = unsafe { pwd.assume_init() };
        // SAFETY: the pointers are NUL-terminated strings inside `buf`.
        let text = |p: *mut c_char| unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned();
        let entry = (
            text(pwd.pw_name),
            pwd.pw_uid,
            text(pwd.pw_gecos),
            text(pwd.pw_shell),
        );
        (status, errno, Some(entry))
    }

    /// Status and errno of a failed getpwnam_r.
    fn outcome(name: &str, buf: &mut [u8]) -> (c_int, c_int) {
        let (status, errno, _) = getpwnam(name, buf);
        (status, errno)
    }

    #[test]
    fn getpwnam_r_buffer_contract() {
        fake_broker();
        let mut big = vec![0u8; 1024];
        let (status, _, entry) = getpwnam("alice", &mut big);
        assert_eq!(status, SUCCESS);
        let expected = (
            "alice".to_owned(),
            60100,
            "Alice".to_owned(),
            "/bin/zsh".to_owned(),
        );
        assert_eq!(entry, Some(expected.clone()));
        let needed = "alice x Alice /home/alice /bin/zsh ".len();
        for size in 0..needed {
            let mut small = vec![0u8; size];
            assert_eq!(
                outcome("alice", &mut small),
                (TRYAGAIN, libc::ERANGE),
                "size {size}"
            );
        }
        let mut exact = vec![0u8; needed];
        assert_eq!(getpwnam("alice", &mut exact).2, Some(expected));
    }

    #[test]
    fn lying_or_forged_records_are_not_packed() {
        fake_broker();
        let mut buf = vec![0u8; 1024];
        assert_eq!(outcome("liar", &mut buf), (UNAVAIL, libc::EBADMSG));
        assert_eq!(outcome("forger", &mut buf), (UNAVAIL, libc::EBADMSG));
        assert_eq!(outcome("nosuchuser", &mut buf), (NOTFOUND, libc::ENOENT));
        assert_eq!(outcome("bad:name", &mut buf), (NOTFOUND, libc::ENOENT));
    }

    #[test]
    fn errno_is_left_alone_on_success() {
        fake_broker();
        // SAFETY: this thread's errno slot.
        unsafe { *libc::__errno_location() = 1234 };
        let (status, _, _) = getpwnam("alice", &mut [0u8; 1024]);
        assert_eq!(status, SUCCESS);
        // SAFETY: as above.
        assert_eq!(unsafe { *libc::__errno_location() }, 1234);
    }

    /// Runs initgroups_dyn for alice (primary gid 100) on a malloc'd array.
    fn initgroups(present: &[gid_t], size: c_long, limit: c_long) -> (c_int, Vec<gid_t>, c_long) {
        let user = CString::new("alice").unwrap();
        // SAFETY: a fresh malloc'd array of `size` gids, as glibc passes it.
        let mut groups =
            unsafe { libc::malloc(size as usize * size_of::<gid_t>()) }.cast::<gid_t>();
        assert!(!groups.is_null());
        for (i, gid) in present.iter().enumerate() {
            // SAFETY: i < present.len() <= size.
            unsafe { groups.add(i).write(*gid) };
        }
        let (mut start, mut size) = (present.len() as c_long, size);
        let mut errno = 0;
        // SAFETY: valid pointers to the counters and the array, as glibc passes them.
        let status = unsafe {
            _nss_broker_initgroups_dyn(
                user.as_ptr(),
                100,
                &mut start,
                &mut size,
                &mut groups,
                limit,
                &mut errno,
            )
        };
        // SAFETY: the first `start` entries are set; the array is ours to free.
        let got = unsafe { std::slice::from_raw_parts(groups, start as usize) }.to_vec();
        // SAFETY: `groups` came from malloc/realloc.
        unsafe { libc::free(groups.cast()) };
        (status, got, size)
    }

    #[test]
    fn initgroups_dyn_grows_skips_and_honours_limit() {
        fake_broker();
        let (status, groups, size) = initgroups(&[100], 1, -1);
        assert_eq!(status, SUCCESS);
        assert_eq!(groups, [100, 5, 6, 7, 8]);
        assert!(size >= 5);
        let (_, groups, size) = initgroups(&[100, 6], 2, 3);
        assert_eq!((groups.as_slice(), size), (&[100, 6, 5][..], 3));
        let (status, groups, _) = initgroups(&[100, 5, 6, 7, 8], 8, 0);
        assert_eq!((status, groups.len()), (SUCCESS, 5));
    }
}
