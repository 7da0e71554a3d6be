//! `libnss_trivial.so.2`: an NSS module that knows one user and one group,
//! `trivial` (uid and gid 4242), held as constants. It does no I/O, reads
//! no environment and allocates nothing, so its cost through glibc is
//! glibc's own dispatch: the floor the benchmark measures every module
//! against. Every other name or id is `NOTFOUND`.
//!
//! Only the four look-ups the benchmark times are exported; glibc treats a
//! missing entry point as `UNAVAIL` and moves on.

#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::{c_char, c_int, CStr};
use std::mem::{align_of, size_of};

use libc::{gid_t, group, passwd, size_t, uid_t};

/// The constant entry's name and id.
const NAME: &[u8] = b"trivial";
const ID: u32 = 4242;

/// The passwd entry's strings, NUL-separated: name, password, gecos, home, shell.
const PASSWD_STRINGS: &[u8] = b"trivial\0x\0Trivial\0/\0/bin/sh\0";
/// Offsets of those strings in [`PASSWD_STRINGS`].
const PASSWD_FIELDS: [usize; 5] = [0, 8, 10, 18, 20];
/// The group entry's strings: name, password.
const GROUP_STRINGS: &[u8] = b"trivial\0x\0";

/// glibc's `enum nss_status`.
const SUCCESS: c_int = 1;
const NOTFOUND: c_int = 0;
const TRYAGAIN: c_int = -2;

/// `NOTFOUND` with `*errnop = ENOENT`, as glibc's own modules answer a miss.
///
/// # Safety
/// `errnop` is NULL or points to an int the caller lets us write.
unsafe fn not_found(errnop: *mut c_int) -> c_int {
    if !errnop.is_null() {
        // SAFETY: non-NULL, writable per the caller's contract.
        unsafe { *errnop = libc::ENOENT };
    }
    NOTFOUND
}

/// `TRYAGAIN` with `*errnop = ERANGE`: glibc retries with a larger buffer.
///
/// # Safety
/// As [`not_found`].
unsafe fn too_small(errnop: *mut c_int) -> c_int {
    if !errnop.is_null() {
        // SAFETY: non-NULL, writable per the caller's contract.
        unsafe { *errnop = libc::ERANGE };
    }
    TRYAGAIN
}

/// Whether `name` is the constant entry's name.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string valid for the call.
unsafe fn is_ours(name: *const c_char) -> bool {
    // SAFETY: non-NULL, NUL-terminated per the caller's contract.
    !name.is_null() && unsafe { CStr::from_ptr(name) }.to_bytes() == NAME
}

/// Copies the constant passwd entry into `buf` and points `pwd` at it.
///
/// # Safety
/// glibc's contract for `getpw*_r`: `pwd` is a writable struct, `buf`
/// holds `buflen` writable bytes, `errnop` is writable.
unsafe fn fill_passwd(
    pwd: *mut passwd,
    buf: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> c_int {
    if pwd.is_null() || buf.is_null() || buflen < PASSWD_STRINGS.len() {
        // SAFETY: as this function's contract.
        return unsafe { too_small(errnop) };
    }
    // SAFETY: `buf` has room for the strings (checked) and cannot overlap
    // a constant.
    unsafe {
        std::ptr::copy_nonoverlapping(PASSWD_STRINGS.as_ptr(), buf.cast(), PASSWD_STRINGS.len())
    };
    let at = |i: usize| buf.wrapping_add(PASSWD_FIELDS[i]);
    let entry = passwd {
        pw_name: at(0),
        pw_passwd: at(1),
        pw_uid: ID,
        pw_gid: ID,
        pw_gecos: at(2),
        pw_dir: at(3),
        pw_shell: at(4),
    };
    // SAFETY: `pwd` is non-NULL and the caller's struct to fill.
    unsafe { pwd.write(entry) };
    SUCCESS
}

/// Copies the constant group entry (no members) into `buf` and points
/// `grp` at it; the member array is aligned for pointers, as glibc needs.
///
/// # Safety
/// As [`fill_passwd`], for `getgr*_r`.
unsafe fn fill_group(
    grp: *mut group,
    buf: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> c_int {
    let pad = buf.align_offset(align_of::<*mut c_char>());
    let array = pad
        + GROUP_STRINGS
            .len()
            .next_multiple_of(align_of::<*mut c_char>());
    if grp.is_null() || buf.is_null() || buflen < array + size_of::<*mut c_char>() {
        // SAFETY: as this function's contract.
        return unsafe { too_small(errnop) };
    }
    let strings = buf.wrapping_add(pad);
    // SAFETY: `buf` has room for the padding, the strings and one pointer
    // (checked); `strings` and `members` lie inside it, `members` aligned.
    let members = unsafe {
        std::ptr::copy_nonoverlapping(GROUP_STRINGS.as_ptr(), strings.cast(), GROUP_STRINGS.len());
        let members = buf.wrapping_add(array).cast::<*mut c_char>();
        members.write(std::ptr::null_mut());
        members
    };
    let entry = group {
        gr_name: strings,
        gr_passwd: strings.wrapping_add(8),
        gr_gid: ID,
        gr_mem: members,
    };
    // SAFETY: `grp` is non-NULL and the caller's struct to fill.
    unsafe { grp.write(entry) };
    SUCCESS
}

/// # Safety
/// glibc's NSS contract for this entry point.
#[no_mangle]
pub unsafe extern "C" fn _nss_trivial_getpwnam_r(
    name: *const c_char,
    pwd: *mut passwd,
    buf: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> c_int {
    // SAFETY: glibc's contract, passed on.
    unsafe {
        if is_ours(name) {
            fill_passwd(pwd, buf, buflen, errnop)
        } else {
            not_found(errnop)
        }
    }
}

/// # Safety
/// glibc's NSS contract for this entry point.
#[no_mangle]
pub unsafe extern "C" fn _nss_trivial_getpwuid_r(
    uid: uid_t,
    pwd: *mut passwd,
    buf: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> c_int {
    // SAFETY: glibc's contract, passed on.
    unsafe {
        if uid == ID {
            fill_passwd(pwd, buf, buflen, errnop)
        } else {
            not_found(errnop)
        }
    }
}

/// # Safety
/// glibc's NSS contract for this entry point.
#[no_mangle]
pub unsafe extern "C" fn _nss_trivial_getgrnam_r(
    name: *const c_char,
    grp: *mut group,
    buf: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> c_int {
    // SAFETY: glibc's contract, passed on.
    unsafe {
        if is_ours(name) {
            fill_group(grp, buf, buflen, errnop)
        } else {
            not_found(errnop)
        }
    }
}

/// # Safety
/// glibc's NSS contract for this entry point.
#[no_mangle]
pub unsafe extern "C" fn _nss_trivial_getgrgid_r(
    gid: gid_t,
    grp: *mut group,
    buf: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> c_int {
    // SAFETY: glibc's contract, passed on.
    unsafe {
        if gid == ID {
            fill_group(grp, buf, buflen, errnop)
        } else {
            not_found(errnop)
        }
    }
}
