//! `libnss_broker.so.2`: the glibc NSS module that answers passwd, group,
//! shadow and gshadow look-ups by asking `userdb-brokerd` over Varlink.
//!
//! It runs inside every process on the machine, so safety comes first:
//! the guard (`guard`) decides before any I/O whether a call may talk at
//! all (never in PID 1, generators get a short deadline, bypass variables,
//! no re-entry); every call has one deadline covering connect, send and
//! every read, and a hung broker is not asked again for a while (`client`);
//! answers are validated again and packed into glibc's buffer in safe code
//! (`pack`); no panic crosses the C ABI and all `unsafe` lives in `ffi`.

#![deny(unsafe_op_in_unsafe_fn)]

#[deny(unsafe_code)]
mod client;
#[deny(unsafe_code)]
mod enumerate;
mod ffi;
#[deny(unsafe_code)]
mod guard;
#[deny(unsafe_code)]
mod nsswitch;
#[deny(unsafe_code)]
mod pack;
#[deny(unsafe_code)]
mod retry;
