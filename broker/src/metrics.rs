//! Calls and errors by method, with latency percentiles, for status: kept
//! in atomic counters (no lock on the request path), latencies in
//! power-of-two buckets of microseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use userdb_proto::api;

/// The methods counted apart; everything else counts as "other".
const METHODS: [&str; 11] = [
    api::userdb::GET_USER_RECORD,
    api::userdb::GET_GROUP_RECORD,
    api::userdb::GET_MEMBERSHIPS,
    api::broker::GET_USER_RECORD,
    api::broker::GET_GROUP_RECORD,
    api::broker::GET_MEMBERSHIPS,
    api::broker::GET_STATUS,
    api::broker::FLUSH,
    api::varlink_service::GET_INFO,
    api::varlink_service::GET_INTERFACE_DESCRIPTION,
    "other",
];

/// Bucket `i` counts calls that took less than 2^i µs; the last one the rest.
const BUCKETS: usize = 28;

struct MethodStats {
    calls: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

impl MethodStats {
    fn new() -> Self {
        MethodStats {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The upper bound, in µs, of the bucket holding the `q` quantile.
    fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let wanted = ((total as f64) * q).ceil() as u64;
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= wanted.max(1) {
                return 1 << i;
            }
        }
        1 << (BUCKETS - 1)
    }
}

pub struct Metrics {
    methods: Vec<MethodStats>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            methods: METHODS.iter().map(|_| MethodStats::new()).collect(),
        }
    }
}

impl Metrics {
    pub fn record(&self, method: &str, took: Duration, error: bool) {
        let index = METHODS
            .iter()
            .position(|m| *m == method)
            .unwrap_or(METHODS.len() - 1);
        let stats = &self.methods[index];
        stats.calls.fetch_add(1, Ordering::Relaxed);
        if error {
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = took.as_micros().max(1);
        let bucket = (128 - (micros - 1).leading_zeros()) as usize;
        stats.latency[bucket.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// Every method called so far, with its counts and percentiles.
    pub fn status(&self) -> Vec<Value> {
        METHODS
            .iter()
            .zip(&self.methods)
            .filter(|(_, s)| s.calls.load(Ordering::Relaxed) > 0)
            .map(|(method, s)| {
                json!({
                    "method": method,
                    "calls": s.calls.load(Ordering::Relaxed),
                    "errors": s.errors.load(Ordering::Relaxed),
                    "p50USec": s.quantile(0.5),
                    "p90USec": s.quantile(0.9),
                    "p99USec": s.quantile(0.99),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentiles_by_method() {
        let m = Metrics::default();
        for us in [3, 3, 3, 3, 3, 3, 3, 3, 100, 5000] {
            m.record(
                api::broker::GET_USER_RECORD,
                Duration::from_micros(us),
                false,
            );
        }
        m.record("com.example.Nope", Duration::from_micros(1), true);
        let status = m.status();
        assert_eq!(status.len(), 2);
        let users = &status[0];
        assert_eq!(users["calls"], 10);
        assert_eq!(users["p50USec"], 4, "3 µs falls in the bucket below 4");
        assert_eq!(users["p90USec"], 128);
        assert_eq!(users["p99USec"], 8192);
        assert_eq!(status[1]["method"], "other");
        assert_eq!(status[1]["errors"], 1);
    }
}
