//! Fixed-window rate limiting with the headers of express-rate-limit's draft-6 mode, which the
//! reference client understands (`RateLimit-*` on limited routes, `Retry-After` on 429).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};

/// The outcome of counting one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    pub reset_secs: u64,
    pub window_secs: u64,
}

impl RateDecision {
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let policy = format!("{};w={}", self.limit, self.window_secs);
        headers.insert(
            "ratelimit-policy",
            HeaderValue::from_str(&policy).expect("ascii"),
        );
        headers.insert("ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("ratelimit-reset", HeaderValue::from(self.reset_secs));
    }
}

pub struct RateLimiter {
    limit: u32,
    window: Duration,
    buckets: Mutex<HashMap<String, (Instant, u32)>>,
}

/// Above this many tracked keys, expired windows are swept.
const SWEEP_AT: usize = 50_000;

impl RateLimiter {
    pub fn per_minute(limit: u32) -> Self {
        Self::new(limit, Duration::from_secs(60))
    }

    pub fn new(limit: u32, window: Duration) -> Self {
        RateLimiter {
            limit,
            window,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn check(&self, key: &str) -> RateDecision {
        self.check_at(key, Instant::now())
    }

    pub fn check_at(&self, key: &str, now: Instant) -> RateDecision {
        let mut buckets = self.buckets.lock().expect("rate buckets");
        if buckets.len() > SWEEP_AT {
            let window = self.window;
            buckets.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let bucket = buckets.entry(key.to_string()).or_insert((now, 0));
        if now.duration_since(bucket.0) >= self.window {
            *bucket = (now, 0);
        }
        bucket.1 = bucket.1.saturating_add(1);
        let reset = self.window.saturating_sub(now.duration_since(bucket.0));
        RateDecision {
            allowed: bucket.1 <= self.limit,
            limit: self.limit,
            remaining: self.limit.saturating_sub(bucket.1),
            reset_secs: reset.as_secs_f64().ceil() as u64,
            window_secs: self.window.as_secs(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key_and_resets_after_the_window() {
        let limiter = RateLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(limiter.check_at("a", t0).allowed);
        let second = limiter.check_at("a", t0);
        assert!(second.allowed);
        assert_eq!(second.remaining, 0);
        assert!(!limiter.check_at("a", t0).allowed);
        assert!(limiter.check_at("b", t0).allowed, "keys are independent");
        assert!(limiter.check_at("a", t0 + Duration::from_secs(61)).allowed);
    }
}
