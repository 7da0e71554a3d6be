//! `libnss_broker.so.2`: the glibc NSS module that answers passwd, group,
//! shadow and gshadow look-ups from the snapshot file `userdb-brokerd`
//! publishes, and asks the broker over Varlink for what the file cannot
//! answer.
//!
//! It runs inside every process on the machine, so safety comes first:
//! the guard (`guard`) decides before any I/O what a call may do (nothing
//! with a bypass variable or on re-entry; the file but never a socket in
//! PID 1, generators and the broker's own unit); `answer` tries the file
//! (`local`, mapped by `mapped`) before the socket (`client`: one deadline
//! covering connect, send and every read, and a hung broker is not asked
//! again for a while); answers are validated again and packed into glibc's
//! buffer in safe code (`pack`); no panic crosses the C ABI and `unsafe`
//! lives only in `ffi` (the C ABI) and `mapped` (`open`/`mmap`).

#![deny(unsafe_op_in_unsafe_fn)]

#[deny(unsafe_code)]
mod answer;
#[deny(unsafe_code)]
mod client;
#[deny(unsafe_code)]
mod enumerate;
mod ffi;
#[deny(unsafe_code)]
mod guard;
#[deny(unsafe_code)]
mod local;
mod mapped;
#[deny(unsafe_code)]
mod nsswitch;
#[deny(unsafe_code)]
mod pack;
#[deny(unsafe_code)]
mod retry;
