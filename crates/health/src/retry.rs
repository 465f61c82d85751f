//! Retry support: a pure backoff function with jitter, and a shared retry budget.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::breaker::millis_ceil;
use crate::metrics;
use crate::settings::{BackoffSettings, RetryBudgetSettings, RetrySettings};

const SLOTS: usize = 10;
const DEPOSIT_BITS: u32 = 18;
const WITHDRAW_BITS: u32 = 14;
const MAX_DEPOSITS: u64 = (1 << DEPOSIT_BITS) - 1;
const MAX_WITHDRAWALS: u64 = (1 << WITHDRAW_BITS) - 1;

/// A retry budget shared by every request of a router (linkerd / Finagle style).
///
/// Every client request calls [`deposit`](Self::deposit) once; every retry must first win
/// [`try_withdraw`](Self::try_withdraw). Within any window of `ttl`,
/// `retries <= floor(ratio * requests + min_per_second * ttl_secs)`, so when every
/// backend fails the upstream load stays within `(1 + ratio)` x the client load plus a
/// small floor, instead of multiplying by `max_retries + 1`.
///
/// Lock-free: the window is ten time slots, each one `AtomicU64` holding its slot number,
/// deposits and withdrawals; a withdrawal is a compare-and-swap on the current slot, so
/// concurrent retries never overdraw it. Deposits are counted up to 2^18 per slot and
/// withdrawals up to 2^14; past that extra deposits are dropped and withdrawals refused,
/// which errs on the side of fewer retries.
#[derive(Debug)]
pub struct RetryBudget {
    slots: [AtomicU64; SLOTS],
    slot_ms: u64,
    ratio_milli: u64,
    reserve: u64,
    epoch: Instant,
    retries: ::metrics::Counter,
    exhausted: ::metrics::Counter,
}

/// The delay before retry number `attempt` (0 for the first retry).
///
/// `initial * multiplier^attempt`, capped at `max`; with `jitter` on, scaled by `sample`
/// (uniform in `[0, 1]`, clamped: "full jitter"), so concurrent retries spread out. Pure:
/// pass [`jitter()`] as `sample` for a random delay, or use [`RetrySettings::backoff`].
pub fn backoff(attempt: u32, settings: &BackoffSettings, sample: f64) -> Duration {
    let growth = settings.multiplier.max(1.0).powi(i32::try_from(attempt).unwrap_or(i32::MAX));
    let secs = settings.initial.as_secs_f64() * growth;
    let capped = if secs.is_finite() && secs < settings.max.as_secs_f64() {
        Duration::from_secs_f64(secs)
    } else {
        settings.max
    };
    if !settings.jitter {
        return capped;
    }
    let sample = if sample.is_nan() { 1.0 } else { sample.clamp(0.0, 1.0) };
    capped.mul_f64(sample)
}

/// A uniform sample in `[0, 1)` from a cheap per-thread generator (not for secrets).
pub fn jitter() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().build_hasher().finish() | 1);
    }
    STATE.with(|state| {
        // xorshift64*: fast, good enough to spread retries.
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    })
}

impl RetrySettings {
    /// The (jittered) delay before retry number `attempt` (0 for the first retry).
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff(attempt, &self.backoff, jitter())
    }
}

impl RetryBudget {
    /// A budget with these settings; its clock starts now (tokio's clock, so paused-time
    /// tests control it).
    pub fn new(settings: &RetryBudgetSettings) -> RetryBudget {
        let ttl_ms = millis_ceil(settings.ttl).max(SLOTS as u64);
        let ratio = if settings.ratio.is_finite() { settings.ratio.max(0.0) } else { 0.0 };
        let reserve = f64::from(settings.min_per_second) * settings.ttl.as_secs_f64();
        RetryBudget {
            slots: Default::default(),
            slot_ms: ttl_ms / SLOTS as u64,
            ratio_milli: (ratio * 1000.0).round() as u64,
            reserve: reserve.floor() as u64,
            epoch: Instant::now(),
            retries: ::metrics::counter!(metrics::RETRIES_TOTAL),
            exhausted: ::metrics::counter!(metrics::RETRY_BUDGET_EXHAUSTED_TOTAL),
        }
    }

    /// Count one client request (call once per request, not per attempt).
    pub fn deposit(&self) {
        let now = self.slot_now();
        let slot = &self.slots[now as usize % SLOTS];
        let mut word = slot.load(Ordering::Relaxed);
        loop {
            let (epoch, deposits, withdrawals) = unpack(word);
            let next = if epoch == now {
                if deposits >= MAX_DEPOSITS {
                    return;
                }
                pack(now, deposits + 1, withdrawals)
            } else if is_newer(now, epoch) {
                pack(now, 1, 0)
            } else {
                return; // a racing caller already moved this slot on; drop the deposit
            };
            match slot.compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => word = actual,
            }
        }
    }

    /// Take one retry from the budget; `false` means do not retry (fail the request or
    /// fall back without another upstream attempt).
    pub fn try_withdraw(&self) -> bool {
        let now = self.slot_now();
        let index = now as usize % SLOTS;
        let slot = &self.slots[index];
        let mut word = slot.load(Ordering::Acquire);
        loop {
            let (others_d, others_w) = self.others(now, index);
            let (epoch, deposits, withdrawals) = unpack(word);
            let (deposits, withdrawals) = if epoch == now {
                (deposits, withdrawals)
            } else if is_newer(now, epoch) {
                (0, 0)
            } else {
                self.exhausted.increment(1);
                return false;
            };
            let allowed = self.ratio_milli * (others_d + deposits) / 1000 + self.reserve;
            if others_w + withdrawals >= allowed || withdrawals >= MAX_WITHDRAWALS {
                self.exhausted.increment(1);
                return false;
            }
            let next = pack(now, deposits, withdrawals + 1);
            match slot.compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.retries.increment(1);
                    return true;
                }
                Err(actual) => word = actual,
            }
        }
    }

    /// Retries the budget would allow right now.
    pub fn remaining(&self) -> u64 {
        let now = self.slot_now();
        let index = now as usize % SLOTS;
        let (d, w) = self.others(now, index);
        let (epoch, cd, cw) = unpack(self.slots[index].load(Ordering::Acquire));
        let (cd, cw) = if epoch == now { (cd, cw) } else { (0, 0) };
        (self.ratio_milli * (d + cd) / 1000 + self.reserve).saturating_sub(w + cw)
    }

    /// Deposits and withdrawals of the window's slots other than `index`.
    fn others(&self, now: u32, index: usize) -> (u64, u64) {
        let mut totals = (0, 0);
        for (i, slot) in self.slots.iter().enumerate() {
            if i == index {
                continue;
            }
            let (epoch, d, w) = unpack(slot.load(Ordering::Acquire));
            // The last SLOTS - 1 slots, or one a racing caller already opened ahead of us.
            let age = now.wrapping_sub(epoch);
            if (1..SLOTS as u32).contains(&age) || epoch.wrapping_sub(now) == 1 {
                totals.0 += d;
                totals.1 += w;
            }
        }
        totals
    }

    fn slot_now(&self) -> u32 {
        let e = self.epoch.elapsed();
        let ms = e.as_secs().saturating_mul(1000).saturating_add(u64::from(e.subsec_millis()));
        // Slot numbers wrap after 2^32 slots; comparisons below are wrapping.
        (ms / self.slot_ms) as u32
    }
}

fn pack(epoch: u32, deposits: u64, withdrawals: u64) -> u64 {
    (u64::from(epoch) << 32) | (deposits << WITHDRAW_BITS) | withdrawals
}

fn unpack(word: u64) -> (u32, u64, u64) {
    ((word >> 32) as u32, (word >> WITHDRAW_BITS) & MAX_DEPOSITS, word & MAX_WITHDRAWALS)
}

/// Whether slot number `a` is after `b`, modulo wrapping.
fn is_newer(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < u32::MAX / 2
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    fn budget(ratio: f64, min: u32, ttl_ms: u64) -> RetryBudget {
        RetryBudget::new(&RetryBudgetSettings {
            ratio,
            min_per_second: min,
            ttl: Duration::from_millis(ttl_ms),
        })
    }

    fn drain(b: &RetryBudget) -> u64 {
        let mut n = 0;
        while b.try_withdraw() {
            n += 1;
        }
        n
    }

    #[test]
    fn backoff_grows_by_the_multiplier_caps_and_jitters_within_bounds() {
        let mut s = BackoffSettings {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            multiplier: 2.0,
            jitter: false,
        };
        let plain: Vec<u128> = (0..6).map(|a| backoff(a, &s, 0.3).as_millis()).collect();
        assert_eq!(plain, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(u32::MAX, &s, 0.3), s.max);
        s.multiplier = 3.0;
        assert_eq!(backoff(2, &s, 0.0), Duration::from_millis(900));
        s.jitter = true;
        assert_eq!(backoff(2, &s, 0.0), Duration::ZERO);
        assert_eq!(backoff(2, &s, 0.5), Duration::from_millis(450));
        assert_eq!(backoff(2, &s, 7.0), Duration::from_millis(900), "samples are clamped");
        let settings = RetrySettings { backoff: s.clone(), ..Default::default() };
        for attempt in 0..8 {
            let d = settings.backoff(attempt);
            assert!(d <= backoff(attempt, &s, 1.0), "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn jitter_is_uniformish_in_unit_interval() {
        let samples: Vec<f64> = (0..10_000).map(|_| jitter()).collect();
        assert!(samples.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!((0.45..0.55).contains(&mean), "mean {mean}");
        let below_tenth = samples.iter().filter(|&&x| x < 0.1).count();
        assert!((700..1300).contains(&below_tenth), "{below_tenth}");
    }

    #[tokio::test(start_paused = true)]
    async fn budget_allows_ratio_of_requests_plus_the_floor() {
        let b = budget(0.2, 3, 1000);
        assert_eq!(drain(&b), 3, "the floor alone with no traffic");
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(b.remaining(), 20);
        assert_eq!(drain(&b), 20);
        assert!(!b.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_and_withdrawals_expire_after_the_ttl() {
        let b = budget(0.5, 0, 1000);
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(drain(&b), 5);
        tokio::time::advance(Duration::from_millis(500)).await;
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(drain(&b), 5, "the first slot still counts, withdrawals too");
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(b.remaining(), 0, "first slot expired with its deposits and withdrawals");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(b.remaining(), 0);
        b.deposit();
        b.deposit();
        assert_eq!(drain(&b), 1, "a fresh window");
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_stay_within_one_point_two_x_plus_the_floor_under_total_failure() {
        // Every request fails and is retried up to 3 times as long as the budget lets it.
        let b = budget(0.2, 3, 1000);
        let (mut requests, mut attempts) = (0u64, 0u64);
        for tick in 0..50u64 {
            for _ in 0..40 {
                b.deposit();
                requests += 1;
                attempts += 1;
                for _ in 0..3 {
                    if !b.try_withdraw() {
                        break;
                    }
                    attempts += 1;
                }
            }
            if tick % 5 == 4 {
                tokio::time::advance(Duration::from_millis(100)).await;
            }
        }
        // 50 ticks of 40 requests over 1 s: one window.
        assert_eq!(requests, 2000);
        assert!(attempts <= requests * 12 / 10 + 3, "{attempts} attempts for {requests} requests");
        assert!(attempts >= requests * 12 / 10, "the budget is usable: {attempts}");
    }

    #[test]
    fn concurrent_withdrawals_never_overdraw() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let b = rt.block_on(async { Arc::new(budget(0.25, 0, 60_000)) });
        for _ in 0..4000 {
            b.deposit();
        }
        let granted: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let b = Arc::clone(&b);
                    s.spawn(move || (0..1000).filter(|_| b.try_withdraw()).count() as u64)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(granted, 1000);
    }

    proptest! {
        /// Against a model: a withdrawal is granted exactly when the withdrawals already in
        /// the window (the current slot and the nine before it) are fewer than
        /// floor(ratio x deposits in the window) + the floor.
        #[test]
        fn grants_match_the_window_model(
            ratio_pct in 0u64..100,
            min in 0u32..5,
            ops in proptest::collection::vec((0u8..3, 0u64..250), 1..300),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            rt.block_on(async move {
                let b = budget(ratio_pct as f64 / 100.0, min, 1000);
                let start = Instant::now();
                let mut log: Vec<(u64, bool)> = Vec::new(); // (ms, is_withdrawal)
                for (op, ms) in ops {
                    let t = u64::try_from(start.elapsed().as_millis()).unwrap();
                    let window_start = (t / 100 * 100).saturating_sub(900);
                    let in_window = log.iter().filter(|(at, _)| *at >= window_start);
                    let (w, d): (Vec<&(u64, bool)>, Vec<_>) = in_window.partition(|(_, w)| *w);
                    let model_allows = (w.len() as u64) < ratio_pct * d.len() as u64 / 100 + u64::from(min);
                    match op {
                        0 => { b.deposit(); log.push((t, false)); }
                        1 => {
                            let granted = b.try_withdraw();
                            prop_assert_eq!(granted, model_allows, "t={} w={} d={}", t, w.len(), d.len());
                            if granted { log.push((t, true)); }
                        }
                        _ => tokio::time::advance(Duration::from_millis(ms)).await,
                    }
                }
                Ok(())
            })?;
        }
    }
}
