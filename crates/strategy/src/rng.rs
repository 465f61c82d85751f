//! A per-thread random number source for Random, PowerOfTwoChoices, exploration and
//! tie-breaking: no shared cache line between threads, no lock, no dependency.
//!
//! SplitMix64 over a thread-local counter, seeded from std's randomly keyed hasher.
//! Selection needs spread, not cryptographic strength.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

thread_local! {
    static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()));
}

/// The next random 64-bit value of this thread.
pub(crate) fn next_u64() -> u64 {
    STATE.with(|state| {
        let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A uniform value in `0..n` (`n > 0`), by Lemire's multiply-shift: the bias is below
/// n / 2^64, invisible for backend counts.
pub(crate) fn below(n: usize) -> usize {
    ((u128::from(next_u64()) * n as u128) >> 64) as usize
}

/// A uniform value in `[0, 1)`.
pub(crate) fn unit() -> f64 {
    (next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_covers_the_range_evenly() {
        let mut counts = [0u32; 5];
        for _ in 0..50_000 {
            counts[below(5)] += 1;
        }
        // Expected 10_000 each; a 1_000 deviation is over 10 standard deviations.
        for count in counts {
            assert!((9_000..11_000).contains(&count), "{counts:?}");
        }
        assert_eq!(below(1), 0);
    }

    #[test]
    fn unit_stays_in_range() {
        let mut sum = 0.0;
        for _ in 0..10_000 {
            let u = unit();
            assert!((0.0..1.0).contains(&u));
            sum += u;
        }
        assert!((4_700.0..5_300.0).contains(&sum), "{sum}");
    }
}
