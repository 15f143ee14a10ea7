//! The API client's rate limit (`clientConnection.qps` and `burst`, `--kube-api-qps` and
//! `--kube-api-burst`): a token bucket in front of every request, as client-go's.
//!
//! A request waits in `poll_ready` until a token is free; the bucket holds `burst` tokens
//! and refills `qps` per second. Long watches count once, when they start.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// A token bucket: `capacity` tokens, refilled at `rate` per second.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    capacity: f64,
    rate: f64,
    last: Option<Instant>,
}

impl Bucket {
    /// A full bucket of `burst` tokens (at least one) refilled at `qps` per second.
    pub fn new(qps: f32, burst: u32) -> Self {
        let capacity = f64::from(burst.max(1));
        Bucket {
            tokens: capacity,
            capacity,
            rate: f64::from(qps),
            last: None,
        }
    }

    /// Takes a token at `now`: `None` when one was free, else how long until one is.
    pub fn take(&mut self, now: Instant) -> Option<Duration> {
        if self.rate <= 0.0 {
            return None;
        }
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.capacity);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return None;
        }
        Some(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }
}

/// Wraps a service in [`RateLimit`].
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    qps: f32,
    burst: u32,
}

impl RateLimitLayer {
    /// At most `qps` requests per second after a burst of `burst` (no limit when `qps` is
    /// not positive).
    pub fn new(qps: f32, burst: u32) -> Self {
        RateLimitLayer { qps, burst }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            bucket: Bucket::new(self.qps, self.burst),
            sleep: None,
            reserved: false,
        }
    }
}

/// A service whose requests wait for a token of its [`Bucket`].
pub struct RateLimit<S> {
    inner: S,
    bucket: Bucket,
    sleep: Option<Pin<Box<Sleep>>>,
    /// A token is taken for the next `call`.
    reserved: bool,
}

impl<S, R> Service<R> for RateLimit<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.reserved {
            if let Some(sleep) = &mut self.sleep {
                ready!(sleep.as_mut().poll(cx));
                self.sleep = None;
            }
            match self.bucket.take(Instant::now()) {
                None => self.reserved = true,
                Some(wait) => self.sleep = Some(Box::pin(tokio::time::sleep(wait))),
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.reserved = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_qps() {
        let start = Instant::now();
        let mut bucket = Bucket::new(5.0, 2);
        assert_eq!(bucket.take(start), None);
        assert_eq!(bucket.take(start), None);
        let wait = bucket.take(start).expect("empty");
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-9, "{wait:?}");
        let later = start + Duration::from_millis(200);
        assert_eq!(bucket.take(later), None, "refilled one token");
        let much_later = later + Duration::from_secs(60);
        for _ in 0..2 {
            assert_eq!(bucket.take(much_later), None);
        }
        assert!(bucket.take(much_later).is_some(), "capped at burst");
        let mut unlimited = Bucket::new(0.0, 0);
        for _ in 0..100 {
            assert_eq!(unlimited.take(start), None);
        }
    }
}
