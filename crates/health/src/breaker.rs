//! The circuit breaker as a pure state machine over one `u64`, so the registry can keep it
//! in an `AtomicU64` and move it with compare-and-swap.
//!
//! ```text
//!            N consecutive failures                 backoff elapsed, one request
//!  Closed ───────────────────────────▶ Open(until) ─────────────────────────────▶ Probing
//!    ▲                                    ▲  ▲ permit dropped unanswered: Open(now)   │
//!    │                                    │  └────────────────────────────────────────┤
//!    │                                    └── probe failed: Open(now + 2x backoff) ───┤
//!    └────────────────────────────────────────── probe succeeded ─────────────────────┘
//! ```
//!
//! "Half-open" is not stored: it is `Open` whose `until` has passed. Taking the one probe
//! permit moves it to `Probing`, which admits nothing else. Outcomes of ordinary requests
//! that arrive while `Open` or `Probing` were admitted before the circuit opened and are
//! ignored; only the permit holder decides.

use std::time::Duration;

/// Highest backoff level; `base << level` saturates long before it.
pub(crate) const MAX_LEVEL: u8 = 63;
const TAG_BITS: u32 = 2;
const LEVEL_SHIFT: u32 = TAG_BITS;
const FAILURES_SHIFT: u32 = 8;
const WIDE_SHIFT: u32 = 24;
const WIDE_MASK: u64 = (1 << 40) - 1;

const TAG_CLOSED: u64 = 0;
const TAG_OPEN: u64 = 1;
const TAG_PROBING: u64 = 2;

/// The encoded state of a closed circuit with no recent failure: the common case, which
/// the read path checks with one comparison.
pub(crate) const CLOSED: u64 = 0;

/// Whether an encoded state is closed (whatever its failure count).
pub(crate) const fn is_closed(word: u64) -> bool {
    word & ((1 << TAG_BITS) - 1) == TAG_CLOSED
}

/// One circuit's state. Times are milliseconds on the registry's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Circuit {
    /// Requests flow; `failures` consecutive failures so far (saturates at 65535).
    Closed { failures: u16 },
    /// No requests until `until`; after it, one probe may go (half-open).
    Open { until: u64, level: u8 },
    /// One probe request is out; `seq` identifies its permit.
    Probing { level: u8, seq: u64 },
}

/// What the breaker needs from the settings, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    pub(crate) threshold: u32,
    pub(crate) base_ms: u64,
    pub(crate) max_ms: u64,
}

/// How a probe permit ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProbeEnd {
    Success,
    Failure,
    /// Dropped without a verdict (client went away) or rate-limited: let another probe go.
    Released,
}

impl Circuit {
    pub(crate) fn encode(self) -> u64 {
        match self {
            Circuit::Closed { failures } => TAG_CLOSED | (u64::from(failures) << FAILURES_SHIFT),
            Circuit::Open { until, level } => {
                TAG_OPEN
                    | (u64::from(level) << LEVEL_SHIFT)
                    | ((until.min(WIDE_MASK)) << WIDE_SHIFT)
            }
            Circuit::Probing { level, seq } => {
                TAG_PROBING | (u64::from(level) << LEVEL_SHIFT) | ((seq & WIDE_MASK) << WIDE_SHIFT)
            }
        }
    }

    pub(crate) fn decode(word: u64) -> Circuit {
        let level = ((word >> LEVEL_SHIFT) & 0x3f) as u8;
        let wide = (word >> WIDE_SHIFT) & WIDE_MASK;
        match word & ((1 << TAG_BITS) - 1) {
            TAG_OPEN => Circuit::Open { until: wide, level },
            TAG_PROBING => Circuit::Probing { level, seq: wide },
            _ => Circuit::Closed { failures: ((word >> FAILURES_SHIFT) & 0xffff) as u16 },
        }
    }

    /// An ordinary request failed.
    pub(crate) fn on_failure(self, now: u64, policy: &Policy) -> Circuit {
        match self {
            Circuit::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if u32::from(failures) >= policy.threshold {
                    Circuit::Open { until: now.saturating_add(policy.open_ms(0)), level: 0 }
                } else {
                    Circuit::Closed { failures }
                }
            }
            other => other,
        }
    }

    /// An ordinary request succeeded.
    pub(crate) fn on_success(self) -> Circuit {
        match self {
            Circuit::Closed { .. } => Circuit::Closed { failures: 0 },
            other => other,
        }
    }

    /// Take the half-open probe permit, if the backoff has elapsed and nobody holds it.
    pub(crate) fn try_probe(self, now: u64, seq: u64) -> Option<Circuit> {
        match self {
            Circuit::Open { until, level } if until <= now => {
                Some(Circuit::Probing { level, seq: seq & WIDE_MASK })
            }
            _ => None,
        }
    }

    /// The permit number of a probing circuit.
    pub(crate) fn permit(self) -> Option<u64> {
        match self {
            Circuit::Probing { seq, .. } => Some(seq),
            _ => None,
        }
    }

    /// The probe with permit `seq` ended; `None` if that permit is stale.
    pub(crate) fn end_probe(
        self,
        seq: u64,
        end: ProbeEnd,
        now: u64,
        policy: &Policy,
    ) -> Option<Circuit> {
        match self {
            Circuit::Probing { level, seq: current } if current == seq & WIDE_MASK => {
                Some(match end {
                    ProbeEnd::Success => Circuit::Closed { failures: 0 },
                    ProbeEnd::Failure => {
                        let level = level.saturating_add(1).min(MAX_LEVEL);
                        Circuit::Open { until: now.saturating_add(policy.open_ms(level)), level }
                    }
                    ProbeEnd::Released => Circuit::Open { until: now, level },
                })
            }
            _ => None,
        }
    }

    /// Whether it keeps ordinary traffic away at `now` (open and waiting, or probing).
    pub(crate) fn is_ejecting(self, now: u64) -> bool {
        match self {
            Circuit::Closed { .. } => false,
            Circuit::Open { until, .. } => until > now,
            Circuit::Probing { .. } => true,
        }
    }
}

impl Policy {
    pub(crate) fn new(threshold: u32, base: Duration, max: Duration) -> Policy {
        Policy {
            threshold: threshold.max(1),
            base_ms: millis_ceil(base).max(1),
            max_ms: millis_ceil(max),
        }
    }

    /// How long the circuit stays open at backoff `level`: `base * 2^level`, capped.
    pub(crate) fn open_ms(&self, level: u8) -> u64 {
        let factor = 1u64.checked_shl(u32::from(level)).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(self.max_ms.max(self.base_ms))
    }
}

/// Milliseconds, rounded up so a deadline is never early.
pub(crate) fn millis_ceil(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn policy() -> Policy {
        Policy::new(3, Duration::from_millis(100), Duration::from_millis(1000))
    }

    #[test]
    fn opens_after_exactly_the_threshold_and_a_success_resets_the_count() {
        let p = policy();
        let mut c = Circuit::Closed { failures: 0 };
        c = c.on_failure(10, &p).on_failure(10, &p);
        assert_eq!(c, Circuit::Closed { failures: 2 });
        c = c.on_success();
        assert_eq!(c.encode(), CLOSED);
        c = c.on_failure(10, &p).on_failure(10, &p).on_failure(10, &p);
        assert_eq!(c, Circuit::Open { until: 110, level: 0 });
        assert!(c.is_ejecting(109));
        assert!(!c.is_ejecting(110));
    }

    #[test]
    fn backoff_doubles_per_failed_probe_up_to_the_cap_and_resets_on_success() {
        let p = policy();
        let mut c = Circuit::Open { until: 0, level: 0 };
        let mut now = 0;
        let mut opens = Vec::new();
        for seq in 0..6 {
            c = c.try_probe(now, seq).unwrap();
            c = c.end_probe(seq, ProbeEnd::Failure, now, &p).unwrap();
            let Circuit::Open { until, .. } = c else { panic!("{c:?}") };
            opens.push(until - now);
            now = until;
        }
        assert_eq!(opens, [200, 400, 800, 1000, 1000, 1000]);
        c = c.try_probe(now, 9).unwrap();
        assert_eq!(
            c.end_probe(9, ProbeEnd::Success, now, &p),
            Some(Circuit::Closed { failures: 0 })
        );
    }

    #[test]
    fn stale_permits_and_early_probes_change_nothing() {
        let p = policy();
        let open = Circuit::Open { until: 50, level: 2 };
        assert_eq!(open.try_probe(49, 1), None);
        let probing = open.try_probe(50, 7).unwrap();
        assert_eq!(probing.try_probe(1000, 8), None, "only one permit");
        assert_eq!(probing.end_probe(6, ProbeEnd::Success, 60, &p), None);
        assert_eq!(
            probing.end_probe(7, ProbeEnd::Released, 60, &p),
            Some(Circuit::Open { until: 60, level: 2 })
        );
        assert_eq!(probing.on_failure(60, &p), probing, "ordinary outcomes are stale");
        assert_eq!(probing.on_success(), probing);
    }

    fn any_circuit() -> impl Strategy<Value = Circuit> {
        prop_oneof![
            any::<u16>().prop_map(|failures| Circuit::Closed { failures }),
            (0..WIDE_MASK, 0..=MAX_LEVEL).prop_map(|(until, level)| Circuit::Open { until, level }),
            (0..WIDE_MASK, 0..=MAX_LEVEL).prop_map(|(seq, level)| Circuit::Probing { level, seq }),
        ]
    }

    #[derive(Clone, Copy, Debug)]
    enum Event {
        Fail,
        Succeed,
        Probe,
        EndProbe(u8),
        Tick(u16),
    }

    fn any_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Event::Fail),
            Just(Event::Succeed),
            Just(Event::Probe),
            (0u8..3).prop_map(Event::EndProbe),
            any::<u16>().prop_map(Event::Tick),
        ]
    }

    proptest! {
        #[test]
        fn encoding_round_trips(c in any_circuit()) {
            prop_assert_eq!(Circuit::decode(c.encode()), c);
        }

        /// Whatever happens, at most one permit is out at a time, open times stay within
        /// [base, max], a closed circuit opens only after `threshold` failures in a row,
        /// and the state is always one that decodes back to itself.
        #[test]
        fn invariants_hold_over_any_event_sequence(
            threshold in 1u32..8,
            base in 1u64..500,
            factor in 1u64..100,
            events in proptest::collection::vec(any_event(), 0..200),
        ) {
            let p = Policy::new(threshold, Duration::from_millis(base), Duration::from_millis(base * factor));
            let mut c = Circuit::Closed { failures: 0 };
            let mut now = 0u64;
            let mut seq = 0u64;
            let mut permits_out: Vec<u64> = Vec::new();
            let mut failures_in_a_row = 0u32;
            for e in events {
                let before = c;
                match e {
                    Event::Fail => c = c.on_failure(now, &p),
                    Event::Succeed => c = c.on_success(),
                    Event::Probe => {
                        seq += 1;
                        if let Some(next) = c.try_probe(now, seq) {
                            prop_assert!(permits_out.is_empty(), "second permit while one is out");
                            permits_out.push(seq);
                            c = next;
                        }
                    }
                    Event::EndProbe(kind) => {
                        let end = [ProbeEnd::Success, ProbeEnd::Failure, ProbeEnd::Released][usize::from(kind)];
                        if let Some(s) = permits_out.pop() {
                            c = c.end_probe(s, end, now, &p).unwrap();
                        }
                    }
                    Event::Tick(ms) => now += u64::from(ms),
                }
                prop_assert_eq!(Circuit::decode(c.encode()), c);
                if let (Circuit::Closed { .. }, Event::Fail) = (before, e) {
                    failures_in_a_row += 1;
                } else if matches!(before, Circuit::Closed { .. }) && matches!(e, Event::Succeed) {
                    failures_in_a_row = 0;
                }
                match (before, c) {
                    (Circuit::Closed { .. }, Circuit::Open { until, level }) => {
                        prop_assert_eq!(failures_in_a_row, threshold);
                        prop_assert_eq!(level, 0);
                        prop_assert_eq!(until - now, p.base_ms);
                    }
                    (Circuit::Probing { level: l0, .. }, Circuit::Open { until, level }) if until > now => {
                        prop_assert_eq!(level, l0.saturating_add(1).min(MAX_LEVEL));
                        prop_assert!(until - now >= p.base_ms && until - now <= p.max_ms);
                    }
                    _ => {}
                }
                if matches!(c, Circuit::Closed { .. }) && !matches!(before, Circuit::Closed { .. }) {
                    failures_in_a_row = 0;
                }
                prop_assert_eq!(matches!(c, Circuit::Probing { .. }), !permits_out.is_empty());
            }
        }
    }
}
