//! `set*ent`/`get*ent_r`/`end*ent` state, one per database.
//!
//! `set*ent` fetches the whole list with one streamed call, outside any
//! lock, then stores it. `get*ent_r` hands out the current entry and moves on
//! only when that succeeded, so an entry that met a too-small buffer is
//! handed out again on the retry. The lock is only ever tried: contention
//! can only come from another thread mid-`get*ent_r` or from a `fork()` that
//! froze the lock in a child, and neither is worth blocking for.

use std::sync::{Mutex, MutexGuard, TryLockError};

use userdb_proto::record::{GroupRecord, UserRecord};

use crate::client::Failure;

pub static USERS: Enumeration<UserRecord> = Enumeration::new();
pub static GROUPS: Enumeration<GroupRecord> = Enumeration::new();
/// Users again, for `getspent_r`: its own position and privileged records.
pub static SHADOW: Enumeration<UserRecord> = Enumeration::new();

#[derive(Debug)]
enum State<T> {
    /// No list: `set*ent` was not called, or `end*ent` freed it.
    Closed,
    Open {
        items: Vec<T>,
        next: usize,
    },
    /// `set*ent` failed; `get*ent_r` reports why.
    Failed(Failure),
}

/// The enumeration state of one database.
#[derive(Debug)]
pub struct Enumeration<T> {
    state: Mutex<State<T>>,
}

/// Another thread holds the state: fail rather than wait.
const BUSY: Failure = Failure::unavail(libc::EAGAIN);

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

    /// Stores the result of `fetch` (called without the lock held) as the
    /// list to hand out from the start.
    pub fn open(&self, fetch: impl FnOnce() -> Result<Vec<T>, Failure>) -> Result<(), Failure> {
        let state = match fetch() {
            Ok(items) => State::Open { items, next: 0 },
            Err(failure) => State::Failed(failure),
        };
        let result = match &state {
            State::Failed(failure) => Err(*failure),
            _ => Ok(()),
        };
        *self.lock()? = state;
        result
    }

    /// Hands the next entry to `hand_out` and moves on only if it succeeded.
    /// Without a list (no `set*ent` before), opens one with `fetch` first.
    /// At the end: `NOTFOUND`/`ENOENT`.
    pub fn next<R>(
        &self,
        fetch: impl FnOnce() -> Result<Vec<T>, Failure>,
        hand_out: impl FnOnce(&T) -> Result<R, Failure>,
    ) -> Result<R, Failure> {
        if matches!(*self.lock()?, State::Closed) {
            // A failed fetch is stored and reported just below.
            let _ = self.open(fetch);
        }
        let mut state = self.lock()?;
        match &mut *state {
            State::Closed => Err(Failure::NOT_FOUND),
            State::Failed(failure) => Err(*failure),
            State::Open { items, next } => {
                let item = items.get(*next).ok_or(Failure::NOT_FOUND)?;
                let answer = hand_out(item)?;
                *next += 1;
                Ok(answer)
            }
        }
    }

    /// Frees the list.
    pub fn close(&self) -> Result<(), Failure> {
        *self.lock()? = State::Closed;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> Result<Vec<&'static str>, Failure> {
        Ok(vec!["root", "alice", "bob"])
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
        assert_eq!(e.next(list, fits(8)).unwrap(), "root");
        assert_eq!(
            e.next(list, fits(3)).unwrap_err(),
            Failure::BUFFER_TOO_SMALL
        );
        assert_eq!(
            e.next(list, fits(3)).unwrap_err(),
            Failure::BUFFER_TOO_SMALL
        );
        assert_eq!(e.next(list, fits(8)).unwrap(), "alice");
        assert_eq!(e.next(list, fits(8)).unwrap(), "bob");
        assert_eq!(e.next(list, fits(8)).unwrap_err(), Failure::NOT_FOUND);
        assert_eq!(e.next(list, fits(8)).unwrap_err(), Failure::NOT_FOUND);
    }

    #[test]
    fn open_restarts_and_close_frees() {
        let e = Enumeration::new();
        e.open(list).unwrap();
        e.next(list, fits(8)).unwrap();
        e.open(list).unwrap();
        assert_eq!(e.next(list, fits(8)).unwrap(), "root");
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
        assert_eq!(e.next(counted, fits(8)).unwrap(), "root");
        assert_eq!(e.next(counted, fits(8)).unwrap(), "alice");
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn failed_open_is_reported_by_next() {
        let e: Enumeration<&str> = Enumeration::new();
        let denied = || Err(Failure::NOT_PRIVILEGED);
        assert_eq!(e.open(denied).unwrap_err(), Failure::NOT_PRIVILEGED);
        assert_eq!(e.next(list, fits(8)).unwrap_err(), Failure::NOT_PRIVILEGED);
    }

    #[test]
    fn held_lock_fails_fast_instead_of_blocking() {
        let e = Enumeration::new();
        e.open(list).unwrap();
        let held = e.state.lock().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(e.next(list, fits(8)).unwrap_err(), BUSY));
        });
        drop(held);
        assert_eq!(e.next(list, fits(8)).unwrap(), "root");
    }
}
