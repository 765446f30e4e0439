//! A per-route circuit breaker: closed while the error ratio in the current window stays below
//! the threshold (or too few requests were seen), open for `open_for` once it is reached, then
//! half-open: one probe request decides whether it closes again or re-opens.
//!
//! A probe whose outcome is never reported (the client went away and its request future was
//! dropped) hands the probe slot back when its [`Permit`] drops; otherwise the breaker would
//! stay half-open with a probe "in flight" forever and refuse every request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cloud_kit::PerEventLoop;

use crate::config::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// The requests and failures of the current window, as one event loop counted them.
#[derive(Debug)]
struct Window {
    start: Instant,
    requests: u32,
    failures: u32,
}

impl Window {
    fn new(start: Instant) -> Self {
        Self {
            start,
            requests: 0,
            failures: 0,
        }
    }
}

/// While closed, a request reads `closed` and counts its outcome in its event loop's window:
/// nothing every request writes is written by two cores (a lock shared by the loops was two
/// contended atomics per request, 35 to 80 ns each here, `bench/gateway/cacheline.sh`). A
/// failure adds up the loops' windows to decide whether to open; the phase lock is taken only
/// for that and while not closed. So the breaker opens on a failure, the one that brings the
/// ratio to the threshold with at least `min_requests` counted; each loop's window starts on
/// its own clock.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    closed: AtomicBool,
    phase: Mutex<Phase>,
    windows: PerEventLoop<Mutex<Window>>,
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
            let mut phase = self.breaker.phase();
            if *phase == (Phase::HalfOpen { probing: true }) {
                *phase = Phase::HalfOpen { probing: false };
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent under a panic elsewhere: every update is a plain store.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        let now = Instant::now();
        Self {
            config,
            closed: AtomicBool::new(true),
            phase: Mutex::new(Phase::Closed),
            windows: PerEventLoop::new(|| Mutex::new(Window::new(now))),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        lock(&self.phase)
    }

    /// Sets the phase (under its lock) and the flag the requests read.
    fn set_phase(&self, phase: &mut Phase, to: Phase) {
        *phase = to;
        self.closed.store(to == Phase::Closed, Ordering::Release);
    }

    /// `Err(retry_after)` while open.
    pub fn acquire(&self) -> Result<Permit<'_>, Duration> {
        let permit = |probe| Permit {
            breaker: self,
            probe,
            recorded: false,
        };
        if !self.config.enabled || self.closed.load(Ordering::Acquire) {
            return Ok(permit(false));
        }
        let now = Instant::now();
        let mut phase = self.phase();
        match *phase {
            Phase::Closed => Ok(permit(false)),
            Phase::Open { until } if now < until => Err(until - now),
            Phase::Open { .. } | Phase::HalfOpen { probing: false } => {
                self.set_phase(&mut phase, Phase::HalfOpen { probing: true });
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
        if probe {
            let mut phase = self.phase();
            if success {
                tracing::info!("circuit breaker closed again after a successful probe");
                self.reset_windows(now);
                self.set_phase(&mut phase, Phase::Closed);
            } else {
                self.set_phase(
                    &mut phase,
                    Phase::Open {
                        until: now + self.config.open_for,
                    },
                );
            }
            return;
        }
        if !self.closed.load(Ordering::Acquire) {
            return;
        }
        {
            let mut window = lock(self.windows.get());
            if now.duration_since(window.start) > self.config.window {
                *window = Window::new(now);
            }
            window.requests += 1;
            if success {
                return;
            }
            window.failures += 1;
        }
        let (mut requests, mut failures) = (0u32, 0u32);
        for window in self.windows.iter() {
            let window = lock(window);
            if now.duration_since(window.start) <= self.config.window {
                requests = requests.saturating_add(window.requests);
                failures = failures.saturating_add(window.failures);
            }
        }
        if requests >= self.config.min_requests
            && f64::from(failures) >= self.config.error_ratio * f64::from(requests)
        {
            let mut phase = self.phase();
            if *phase != Phase::Closed {
                return;
            }
            tracing::warn!(requests, failures, open_for = ?self.config.open_for, "circuit breaker opened");
            self.set_phase(
                &mut phase,
                Phase::Open {
                    until: now + self.config.open_for,
                },
            );
        }
    }

    fn reset_windows(&self, now: Instant) {
        for window in self.windows.iter() {
            *lock(window) = Window::new(now);
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(*self.phase(), Phase::Open { until } if Instant::now() < until)
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

    /// Each event loop counts in a window of its own; a failure adds them all up.
    #[test]
    fn failures_counted_on_different_event_loops_add_up() {
        let b = std::sync::Arc::new(breaker());
        for _ in 0..2 {
            b.acquire().unwrap().record(false);
        }
        let on_loop = b.clone();
        std::thread::spawn(move || {
            cloud_kit::server::set_current_event_loop(0);
            on_loop.acquire().unwrap().record(false);
            assert!(!on_loop.is_open(), "three failures are below min_requests");
            on_loop.acquire().unwrap().record(false);
        })
        .join()
        .unwrap();
        assert!(b.is_open());
        assert!(b.acquire().is_err());
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
