//! A per-route circuit breaker: closed while the error ratio in the current window stays below
//! the threshold (or too few requests were seen), open for `open_for` once it is reached, then
//! half-open: one probe request decides whether it closes again or re-opens.
//!
//! A probe whose outcome is never reported (the client went away and its request future was
//! dropped) hands the probe slot back when its [`Permit`] drops; otherwise the breaker would
//! stay half-open with a probe "in flight" forever and refuse every request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct State {
    phase: Phase,
    window_start: Instant,
    requests: u32,
    failures: u32,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

/// Admission to send one request; report its outcome with [`Permit::record`].
#[derive(Debug)]
#[must_use = "report the outcome with Permit::record"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    recorded: bool,
}

impl Permit<'_> {
    pub fn record(mut self, success: bool) {
        self.recorded = true;
        self.breaker.record(self.probe, success);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            let mut state = self.breaker.lock();
            if state.phase == (Phase::HalfOpen { probing: true }) {
                state.phase = Phase::HalfOpen { probing: false };
            }
        }
    }
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State {
                phase: Phase::Closed,
                window_start: Instant::now(),
                requests: 0,
                failures: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent under a panic elsewhere: every update is a plain store.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(retry_after)` while open.
    pub fn acquire(&self) -> Result<Permit<'_>, Duration> {
        let permit = |probe| Permit {
            breaker: self,
            probe,
            recorded: false,
        };
        if !self.config.enabled {
            return Ok(permit(false));
        }
        let now = Instant::now();
        let mut state = self.lock();
        match state.phase {
            Phase::Closed => Ok(permit(false)),
            Phase::Open { until } if now < until => Err(until - now),
            Phase::Open { .. } | Phase::HalfOpen { probing: false } => {
                state.phase = Phase::HalfOpen { probing: true };
                Ok(permit(true))
            }
            Phase::HalfOpen { probing: true } => Err(Duration::from_secs(1)),
        }
    }

    fn record(&self, probe: bool, success: bool) {
        if !self.config.enabled {
            return;
        }
        let now = Instant::now();
        let mut state = self.lock();
        if probe {
            if success {
                tracing::info!("circuit breaker closed again after a successful probe");
                *state = State {
                    phase: Phase::Closed,
                    window_start: now,
                    requests: 0,
                    failures: 0,
                };
            } else {
                state.phase = Phase::Open {
                    until: now + self.config.open_for,
                };
            }
            return;
        }
        if state.phase != Phase::Closed {
            return;
        }
        if now.duration_since(state.window_start) > self.config.window {
            state.window_start = now;
            state.requests = 0;
            state.failures = 0;
        }
        state.requests += 1;
        if !success {
            state.failures += 1;
        }
        if state.requests >= self.config.min_requests
            && f64::from(state.failures) >= self.config.error_ratio * f64::from(state.requests)
        {
            tracing::warn!(requests = state.requests, failures = state.failures, open_for = ?self.config.open_for, "circuit breaker opened");
            state.phase = Phase::Open {
                until: now + self.config.open_for,
            };
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.lock().phase, Phase::Open { until } if Instant::now() < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            enabled: true,
            min_requests: 4,
            error_ratio: 0.5,
            window: Duration::from_secs(60),
            open_for: Duration::from_millis(50),
        })
    }

    #[test]
    fn opens_at_the_error_ratio_and_recovers_after_a_good_probe() {
        let b = breaker();
        for ok in [true, false, true, false] {
            let p = b.acquire().unwrap();
            p.record(ok);
        }
        assert!(b.acquire().is_err());
        std::thread::sleep(Duration::from_millis(60));
        let probe = b.acquire().unwrap();
        assert!(b.acquire().is_err(), "only one probe at a time");
        probe.record(true);
        assert!(b.acquire().is_ok());
    }

    /// Four failures (the minimum, all failed) open it; then `open_for` passes.
    fn open_and_wait_out(b: &Breaker) {
        for _ in 0..4 {
            let p = b.acquire().unwrap();
            p.record(false);
        }
        assert!(b.is_open());
        std::thread::sleep(Duration::from_millis(60));
    }

    #[test]
    fn stays_closed_below_min_requests() {
        let b = breaker();
        for _ in 0..3 {
            let p = b.acquire().unwrap();
            p.record(false);
        }
        assert!(b.acquire().is_ok());
    }

    #[test]
    fn a_failed_probe_reopens() {
        let b = breaker();
        open_and_wait_out(&b);
        let probe = b.acquire().unwrap();
        probe.record(false);
        assert!(b.is_open());
    }

    /// Found by review after the upstream-faults drill: a probe whose client disconnected
    /// was never reported, and the breaker refused every request from then on.
    #[test]
    fn a_probe_dropped_without_an_outcome_lets_the_next_request_probe() {
        let b = breaker();
        open_and_wait_out(&b);
        let probe = b.acquire().unwrap();
        assert!(b.acquire().is_err(), "one probe at a time");
        drop(probe);
        let next = b.acquire().expect("the dropped probe's slot is free again");
        next.record(true);
        assert!(b.acquire().is_ok(), "closed after the new probe succeeded");
    }
}
