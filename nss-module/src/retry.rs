//! The answer that met a too-small buffer, kept for glibc's retry.
//!
//! glibc answers `ERANGE` by doubling the buffer and calling again with the
//! same key, so a group of 100,000 members would cost a dozen round trips
//! to the broker. The first answer is kept instead, for the same key and at
//! most [`KEEP_MS`], and the retry packs it again: the same answer, one
//! round trip. It is taken by the retry, so nothing stays behind once the
//! entry fits; the lock is only ever tried, never waited for (a `fork()`
//! may have frozen it in a child).

use std::sync::Mutex;

use crate::client::Failure;

/// How long a kept answer serves a retry.
pub const KEEP_MS: u64 = 1000;

/// Which look-up an answer belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryKey {
    Name(String),
    Id(u32),
}

struct Kept<T> {
    key: RetryKey,
    at_ms: u64,
    value: T,
}

/// One kept answer per database.
pub struct Retry<T> {
    slot: Mutex<Option<Kept<T>>>,
}

impl<T> Retry<T> {
    pub const fn new() -> Self {
        Retry {
            slot: Mutex::new(None),
        }
    }

    fn take(&self, key: &RetryKey, now_ms: u64) -> Option<T> {
        let mut slot = self.slot.try_lock().ok()?;
        match slot.take() {
            Some(kept) if kept.key == *key && now_ms.saturating_sub(kept.at_ms) <= KEEP_MS => {
                Some(kept.value)
            }
            _ => None,
        }
    }

    fn keep(&self, key: RetryKey, value: T, now_ms: u64) {
        if let Ok(mut slot) = self.slot.try_lock() {
            *slot = Some(Kept {
                key,
                at_ms: now_ms,
                value,
            });
        }
    }

    /// Answers `key`: the kept answer if the previous call for it met a
    /// small buffer, otherwise `fetch`'s; `write` packs it, and an answer
    /// that does not fit is kept for the retry.
    pub fn answer(
        &self,
        key: RetryKey,
        now_ms: u64,
        fetch: impl FnOnce() -> Result<T, Failure>,
        write: impl FnOnce(&T) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        let value = match self.take(&key, now_ms) {
            Some(value) => value,
            None => fetch()?,
        };
        let written = write(&value);
        if written == Err(Failure::BUFFER_TOO_SMALL) {
            self.keep(key, value, now_ms);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn fits(limit: usize) -> impl Fn(&String) -> Result<(), Failure> {
        move |v| {
            if v.len() <= limit {
                Ok(())
            } else {
                Err(Failure::BUFFER_TOO_SMALL)
            }
        }
    }

    #[test]
    fn a_retry_after_a_small_buffer_needs_no_second_fetch() {
        let retry = Retry::new();
        let fetches = Cell::new(0);
        let fetch = || {
            fetches.set(fetches.get() + 1);
            Ok("a long answer".to_owned())
        };
        let key = RetryKey::Name("wheel".into());
        assert_eq!(
            retry.answer(key.clone(), 10, fetch, fits(4)),
            Err(Failure::BUFFER_TOO_SMALL)
        );
        assert_eq!(
            retry.answer(key.clone(), 11, fetch, fits(8)),
            Err(Failure::BUFFER_TOO_SMALL)
        );
        assert_eq!(retry.answer(key.clone(), 12, fetch, fits(64)), Ok(()));
        assert_eq!(fetches.get(), 1);
        assert_eq!(retry.answer(key, 13, fetch, fits(64)), Ok(()));
        assert_eq!(fetches.get(), 2, "once it fitted, nothing is kept");
    }

    #[test]
    fn a_kept_answer_serves_only_its_key_and_only_briefly() {
        let retry = Retry::new();
        let fetch = || Ok("answer".to_owned());
        let key = RetryKey::Id(10);
        let _ = retry.answer(key.clone(), 0, fetch, fits(1));
        let other = Cell::new(false);
        let _ = retry.answer(
            RetryKey::Id(11),
            1,
            || {
                other.set(true);
                Ok("x".into())
            },
            fits(64),
        );
        assert!(other.get(), "another key fetches its own answer");
        let _ = retry.answer(key.clone(), 2, fetch, fits(1));
        let late = Cell::new(false);
        let _ = retry.answer(
            key,
            2 + KEEP_MS + 1,
            || {
                late.set(true);
                Ok("fresh".into())
            },
            fits(64),
        );
        assert!(late.get(), "a stale answer is not reused");
    }
}
