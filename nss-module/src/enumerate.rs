//! `set*ent`/`get*ent_r`/`end*ent` state, one per database.
//!
//! `set*ent` takes a listing of the snapshot file when the file holds the
//! whole listing for the caller (one generation from `set*ent` to
//! `end*ent`, even if the file is replaced meanwhile), or else fetches the
//! whole list from the broker with one streamed call, outside any lock.
//! `get*ent_r` hands out the current entry and moves on only when that
//! succeeded, so an entry that met a too-small buffer is handed out again
//! on the retry. The lock is only ever tried: contention can only come from
//! another thread mid-`get*ent_r` or from a `fork()` that froze the lock in
//! a child, and neither is worth blocking for.

use std::sync::{Mutex, MutexGuard, TryLockError};

use userdb_proto::record::{GroupRecord, UserRecord};

use crate::client::Failure;
use crate::local::{Listing, Step};

pub static USERS: Enumeration<UserRecord> = Enumeration::new();
pub static GROUPS: Enumeration<GroupRecord> = Enumeration::new();
/// Users again, for `getspent_r`: its own position and privileged records.
pub static SHADOW: Enumeration<UserRecord> = Enumeration::new();

/// Where a listing comes from.
pub enum Opened<T> {
    File(Listing),
    Fetched(Vec<T>),
}

enum State<T> {
    /// No list: `set*ent` was not called, or `end*ent` freed it.
    Closed,
    File(Listing),
    Fetched {
        items: Vec<T>,
        next: usize,
    },
    /// `set*ent` failed; `get*ent_r` reports why.
    Failed(Failure),
}

/// The enumeration state of one database.
pub struct Enumeration<T> {
    state: Mutex<State<T>>,
}

/// Another thread holds the state: fail rather than wait.
const BUSY: Failure = Failure::unavail(libc::EAGAIN);

/// A record of the file failed its checks in the middle of a listing: it
/// ends in an error, never as a silently shorter listing.
const CORRUPT: Failure = Failure::unavail(libc::EBADMSG);

impl<T> Enumeration<T> {
    pub const fn new() -> Self {
        Enumeration {
            state: Mutex::new(State::Closed),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State<T>>, Failure> {
        match self.state.try_lock() {
            Ok(guard) => Ok(guard),
            // A panic while handing out an entry leaves the state usable.
            Err(TryLockError::Poisoned(poisoned)) => Ok(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => Err(BUSY),
        }
    }

    /// Stores the result of `open` (called without the lock held) as the
    /// list to hand out from the start.
    pub fn open(&self, open: impl FnOnce() -> Result<Opened<T>, Failure>) -> Result<(), Failure> {
        let state = match open() {
            Ok(Opened::File(listing)) => State::File(listing),
            Ok(Opened::Fetched(items)) => State::Fetched { items, next: 0 },
            Err(failure) => State::Failed(failure),
        };
        let result = match &state {
            State::Failed(failure) => Err(*failure),
            _ => Ok(()),
        };
        *self.lock()? = state;
        result
    }

    /// Hands the next entry out (`from_file` or `from_list`) and moves on
    /// only if that succeeded. Without a list (no `set*ent` before), opens
    /// one with `open` first. At the end: `NOTFOUND`/`ENOENT`.
    pub fn next<R>(
        &self,
        open: impl FnOnce() -> Result<Opened<T>, Failure>,
        from_file: impl FnOnce(&mut Listing) -> Step<Result<R, Failure>>,
        from_list: impl FnOnce(&T) -> Result<R, Failure>,
    ) -> Result<R, Failure> {
        if matches!(*self.lock()?, State::Closed) {
            // A failed open is stored and reported just below.
            let _ = self.open(open);
        }
        let mut state = self.lock()?;
        match &mut *state {
            State::Closed => Err(Failure::NOT_FOUND),
            State::Failed(failure) => Err(*failure),
            State::File(listing) => match from_file(listing) {
                Step::Handed(result) => result,
                Step::End => Err(Failure::NOT_FOUND),
                Step::Corrupt => Err(CORRUPT),
            },
            State::Fetched { items, next } => {
                let item = items.get(*next).ok_or(Failure::NOT_FOUND)?;
                let answer = from_list(item)?;
                *next += 1;
                Ok(answer)
            }
        }
    }

    /// Frees the list (and lets go of the file's generation).
    pub fn close(&self) -> Result<(), Failure> {
        *self.lock()? = State::Closed;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> Result<Opened<&'static str>, Failure> {
        Ok(Opened::Fetched(vec!["root", "alice", "bob"]))
    }

    fn no_file(_: &mut Listing) -> Step<Result<String, Failure>> {
        Step::Corrupt
    }

    fn fits(limit: usize) -> impl Fn(&&str) -> Result<String, Failure> {
        move |name| {
            if name.len() <= limit {
                Ok(name.to_string())
            } else {
                Err(Failure::BUFFER_TOO_SMALL)
            }
        }
    }

    #[test]
    fn too_small_buffer_never_skips_an_entry() {
        let e = Enumeration::new();
        e.open(list).unwrap();
        assert_eq!(e.next(list, no_file, fits(8)).unwrap(), "root");
        assert_eq!(
            e.next(list, no_file, fits(3)).unwrap_err(),
            Failure::BUFFER_TOO_SMALL
        );
        assert_eq!(
            e.next(list, no_file, fits(3)).unwrap_err(),
            Failure::BUFFER_TOO_SMALL
        );
        assert_eq!(e.next(list, no_file, fits(8)).unwrap(), "alice");
        assert_eq!(e.next(list, no_file, fits(8)).unwrap(), "bob");
        assert_eq!(
            e.next(list, no_file, fits(8)).unwrap_err(),
            Failure::NOT_FOUND
        );
        assert_eq!(
            e.next(list, no_file, fits(8)).unwrap_err(),
            Failure::NOT_FOUND
        );
    }

    #[test]
    fn open_restarts_and_close_frees() {
        let e = Enumeration::new();
        e.open(list).unwrap();
        e.next(list, no_file, fits(8)).unwrap();
        e.open(list).unwrap();
        assert_eq!(e.next(list, no_file, fits(8)).unwrap(), "root");
        e.close().unwrap();
        assert!(matches!(*e.state.lock().unwrap(), State::Closed));
    }

    #[test]
    fn next_without_open_fetches_once() {
        let e = Enumeration::new();
        let calls = std::cell::Cell::new(0);
        let counted = || {
            calls.set(calls.get() + 1);
            list()
        };
        assert_eq!(e.next(counted, no_file, fits(8)).unwrap(), "root");
        assert_eq!(e.next(counted, no_file, fits(8)).unwrap(), "alice");
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn failed_open_is_reported_by_next() {
        let e: Enumeration<&str> = Enumeration::new();
        let denied = || Err(Failure::NOT_PRIVILEGED);
        assert_eq!(e.open(denied).unwrap_err(), Failure::NOT_PRIVILEGED);
        assert_eq!(
            e.next(list, no_file, fits(8)).unwrap_err(),
            Failure::NOT_PRIVILEGED
        );
    }

    #[test]
    fn held_lock_fails_fast_instead_of_blocking() {
        let e = Enumeration::new();
        e.open(list).unwrap();
        let held = e.state.lock().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(e.next(list, no_file, fits(8)).unwrap_err(), BUSY));
        });
        drop(held);
        assert_eq!(e.next(list, no_file, fits(8)).unwrap(), "root");
    }
}
