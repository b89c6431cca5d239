//! Token-bucket rate limiting keyed by a string (client IP, account).

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;

use crate::config::RateLimit;
use crate::error::{Error, Result};

/// Buckets idle this long are full again and are dropped on the next sweep.
const SWEEP_EVERY: usize = 4096;

pub struct RateLimiter {
    rate: RateLimit,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    map: HashMap<String, Bucket>,
    ops: usize,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub fn new(rate: RateLimit) -> Self {
        Self { rate, buckets: Mutex::new(Buckets { map: HashMap::new(), ops: 0 }) }
    }

    /// Takes one token for `key`, or fails with `M_LIMIT_EXCEEDED` and the wait until one
    /// is available.
    pub fn check(&self, key: &str) -> Result<()> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<()> {
        let burst = f64::from(self.rate.burst);
        let mut buckets = self.buckets.lock();
        buckets.ops += 1;
        if buckets.ops.is_multiple_of(SWEEP_EVERY) {
            let per_second = self.rate.per_second;
            buckets.map.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * per_second < burst
            });
        }
        let bucket =
            buckets.map.entry(key.to_owned()).or_insert(Bucket { tokens: burst, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate.per_second).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate.per_second;
            Err(Error::LimitExceeded { retry_after_ms: (wait * 1000.0).ceil() as u64 })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_passes_then_the_bucket_refills() {
        let limiter = RateLimiter::new(RateLimit { per_second: 1.0, burst: 2 });
        let t0 = Instant::now();
        assert!(limiter.check_at("ip", t0).is_ok());
        assert!(limiter.check_at("ip", t0).is_ok());
        match limiter.check_at("ip", t0) {
            Err(Error::LimitExceeded { retry_after_ms }) => assert_eq!(retry_after_ms, 1000),
            other => panic!("expected limit, got {other:?}"),
        }
        assert!(limiter.check_at("other-ip", t0).is_ok());
        assert!(limiter.check_at("ip", t0 + Duration::from_secs(1)).is_ok());
    }
}
