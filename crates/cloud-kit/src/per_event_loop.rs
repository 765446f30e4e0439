//! State kept once per event loop, so that what every request updates is never written by two
//! cores.
//!
//! An atomic read-modify-write on a cache line the other core wrote last costs 35 to 80 ns on
//! this project's machines, against 2 to 5 ns on a line the core owns
//! (`bench/gateway/cacheline.sh`): a reference count, a lock or a counter shared by the
//! [`EventLoops::PerCore`](crate::EventLoops::PerCore) threads costs that on each request, and
//! instruction counts do not show it. Each slot here sits on cache lines of its own, and a
//! thread uses the slot of the event loop it runs ([`crate::server::current_event_loop`]); every
//! other thread (the main runtime, tests, `EventLoops::Shared`) shares one extra slot.

use axum::http::HeaderValue;
use bytes::Bytes;

use crate::server::{current_event_loop, per_core_event_loops};

/// One `T` per event loop, plus one for every other thread.
#[derive(Debug)]
pub struct PerEventLoop<T> {
    loops: Box<[Padded<T>]>,
    /// For threads that are no event loop.
    other: Padded<T>,
}

/// 128 bytes: Intel's adjacent-line prefetcher pulls cache lines in pairs, so two slots on one
/// 128-byte pair would still bounce between the cores.
#[derive(Debug)]
#[repr(align(128))]
struct Padded<T>(T);

impl<T> PerEventLoop<T> {
    /// Makes each slot with `make`.
    pub fn new(mut make: impl FnMut() -> T) -> Self {
        Self {
            loops: (0..per_core_event_loops())
                .map(|_| Padded(make()))
                .collect(),
            other: Padded(make()),
        }
    }

    /// The calling thread's slot.
    pub fn get(&self) -> &T {
        let slot = current_event_loop()
            .and_then(|index| self.loops.get(index))
            .unwrap_or(&self.other);
        &slot.0
    }

    /// Every slot, for a reader that sums them (a metrics scrape).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        std::iter::once(&self.other.0).chain(self.loops.iter().map(|slot| &slot.0))
    }
}

impl<T: Default> Default for PerEventLoop<T> {
    fn default() -> Self {
        Self::new(T::default)
    }
}

/// A header value that every request clones (a route's upstream `Host`, a rate limit's
/// `RateLimit-Limit`), with a copy of its own bytes per event loop: a clone of a `HeaderValue`
/// made at run time is an atomic increment of its bytes' reference count, contended when both
/// loops clone the same one.
#[derive(Debug)]
pub struct LoopHeaderValue(PerEventLoop<HeaderValue>);

impl LoopHeaderValue {
    pub fn new(value: &HeaderValue) -> Self {
        Self(PerEventLoop::new(|| {
            let mut copy = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(value.as_bytes()))
                .unwrap_or_else(|_| value.clone());
            copy.set_sensitive(value.is_sensitive());
            copy
        }))
    }

    /// The calling event loop's copy.
    pub fn get(&self) -> &HeaderValue {
        self.0.get()
    }
}

impl Clone for LoopHeaderValue {
    fn clone(&self) -> Self {
        Self::new(self.get())
    }
}

impl PartialEq for LoopHeaderValue {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for LoopHeaderValue {}

impl PartialEq<HeaderValue> for LoopHeaderValue {
    fn eq(&self, other: &HeaderValue) -> bool {
        self.get() == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn slots_are_on_cache_line_pairs_of_their_own() {
        let slots = PerEventLoop::<AtomicU64>::default();
        let addresses: Vec<usize> = slots
            .iter()
            .map(|s| std::ptr::from_ref(s) as usize)
            .collect();
        assert_eq!(addresses.len(), per_core_event_loops() + 1);
        for (i, a) in addresses.iter().enumerate() {
            assert_eq!(a % 128, 0, "{addresses:?}");
            for b in &addresses[i + 1..] {
                assert!(a.abs_diff(*b) >= 128, "{addresses:?}");
            }
        }
    }

    #[test]
    fn a_loop_header_value_copies_its_bytes_per_slot() {
        let value = HeaderValue::from_str("upstream.internal:8080").unwrap();
        let per_loop = LoopHeaderValue::new(&value);
        let copies: Vec<&HeaderValue> = per_loop.0.iter().collect();
        assert!(copies.iter().all(|copy| **copy == value));
        for (i, a) in copies.iter().enumerate() {
            for b in &copies[i + 1..] {
                assert_ne!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr(), "shared bytes");
            }
        }
        let mut secret = HeaderValue::from_static("secret");
        secret.set_sensitive(true);
        assert!(LoopHeaderValue::new(&secret).get().is_sensitive());
    }

    #[test]
    fn each_event_loop_has_its_own_slot_and_other_threads_share_one() {
        let slots = std::sync::Arc::new(PerEventLoop::<AtomicU64>::default());
        slots.get().fetch_add(1, Ordering::Relaxed);
        let loops = per_core_event_loops();
        for index in 0..loops {
            let slots = slots.clone();
            std::thread::spawn(move || {
                crate::server::set_current_event_loop(index);
                slots
                    .get()
                    .fetch_add(10 * (index as u64 + 1), Ordering::Relaxed);
            })
            .join()
            .unwrap();
        }
        let values: Vec<u64> = slots.iter().map(|s| s.load(Ordering::Relaxed)).collect();
        let expected: Vec<u64> = std::iter::once(1)
            .chain((0..loops).map(|i| 10 * (i as u64 + 1)))
            .collect();
        assert_eq!(values, expected);
    }
}
