//! The lazy preference order a [`Selector`] gives for one request.
//!
//! Every strategy yields each backend index exactly once: first the strategy's own
//! order over the weighted ("active") backends, then any active backend it did not
//! reach, then the drained (weight 0) ones. So a caller filtering by health always
//! finds an acceptable backend when one exists, and retries walk on down the list.

use std::sync::atomic::Ordering::Relaxed;

use crate::key::RequestKey;
use crate::rng;
use crate::selector::{Entry, Selector};
use crate::settings::StrategyKind;

/// Backend indices in preference order for one request; see [`Selector::candidates`].
///
/// Allocation-free for up to 256 backends.
#[derive(Debug)]
pub struct Candidates<'a> {
    sel: &'a Selector,
    key: RequestKey,
    seen: Bits,
    /// Backends passed over by bounded-load consistent hashing, offered after the rest.
    deferred: Bits,
    remaining: usize,
    state: State,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Init,
    /// `left` positions of `active`, from `cur`, `stride` apart (a permutation).
    Rotate {
        cur: usize,
        stride: usize,
        left: usize,
    },
    /// The smooth weighted round-robin cycle from `pos`.
    Table {
        pos: usize,
        left: usize,
    },
    /// The ring from `start`: first the backends under the load bound...
    Ring {
        start: usize,
        pos: usize,
        left: usize,
        cap: u64,
        found: usize,
    },
    /// ...then the ones that were over it, in ring order.
    RingDeferred {
        pos: usize,
        left: usize,
    },
    /// Repeated minimum of a cost: latency x load, or in-flight count.
    Least {
        latency: bool,
        first: bool,
        offset: usize,
    },
    /// Power of two choices: the better of two, then the other.
    Pair {
        first: Option<u32>,
        other: u32,
    },
    /// Whatever active backend is left, from `cur`.
    Rest {
        cur: usize,
        left: usize,
    },
    /// The drained backends.
    Standby {
        cur: usize,
        left: usize,
    },
    Done,
}

/// A set of backend indices: inline up to 256, on the heap beyond.
#[derive(Debug)]
enum Bits {
    Inline([u64; 4]),
    Heap(Vec<u64>),
}

impl<'a> Candidates<'a> {
    pub(crate) fn new(sel: &'a Selector, key: RequestKey) -> Self {
        let n = sel.entries.len();
        Candidates {
            sel,
            key,
            seen: Bits::new(n),
            deferred: Bits::new(if sel.primary == StrategyKind::ConsistentHash { n } else { 0 }),
            remaining: n,
            state: State::Init,
        }
    }

    /// The state that starts `kind`'s order over the active backends.
    fn begin(&self, kind: StrategyKind) -> State {
        let sel = self.sel;
        let m = sel.active.len();
        if m == 0 {
            return self.standby();
        }
        match kind {
            StrategyKind::RoundRobin => {
                State::Rotate { cur: sel.counter.fetch_add(1, Relaxed) % m, stride: 1, left: m }
            }
            StrategyKind::Random => {
                let stride = sel.strides.get(rng::below(sel.strides.len())).copied().unwrap_or(1);
                State::Rotate { cur: rng::below(m), stride: stride as usize, left: m }
            }
            StrategyKind::WeightedRoundRobin if !sel.wrr.is_empty() => {
                let len = sel.wrr.len();
                State::Table { pos: sel.counter.fetch_add(1, Relaxed) % len, left: len }
            }
            StrategyKind::WeightedRoundRobin => self.begin(StrategyKind::RoundRobin),
            StrategyKind::ConsistentHash => match self.key.hash() {
                Some(point) if !sel.ring.is_empty() => {
                    let start = sel.ring.partition_point(|p| p.0 < point) % sel.ring.len();
                    let total: u64 = sel.hot.iter().map(|h| h.stats.in_flight.load(Relaxed)).sum();
                    let cap =
                        ((1.0 + sel.load_factor) * (total + 1) as f64 / m as f64).ceil() as u64;
                    State::Ring { start, pos: start, left: sel.ring.len(), cap, found: 0 }
                }
                _ => self.begin_fallback(),
            },
            StrategyKind::LeastLatency | StrategyKind::LeastConnections => State::Least {
                latency: kind == StrategyKind::LeastLatency,
                first: true,
                offset: rng::below(m),
            },
            StrategyKind::PowerOfTwoChoices if m == 1 => self.rest(),
            StrategyKind::PowerOfTwoChoices => {
                let a = rng::below(m);
                let mut b = rng::below(m - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (sel.active[a], sel.active[b]);
                let load = |i: u32| in_flight(&sel.entries[i as usize]);
                let (first, other) = if load(b) < load(a) { (b, a) } else { (a, b) };
                State::Pair { first: Some(first), other }
            }
        }
    }

    fn begin_fallback(&self) -> State {
        // `validate` guarantees the fallback always decides, so this never recurses twice.
        match self.sel.fallback {
            StrategyKind::ConsistentHash | StrategyKind::LeastLatency => {
                self.begin(StrategyKind::RoundRobin)
            }
            fallback => self.begin(fallback),
        }
    }

    fn rest(&self) -> State {
        let m = self.sel.active.len();
        if m == 0 { self.standby() } else { State::Rest { cur: rng::below(m), left: m } }
    }

    fn standby(&self) -> State {
        let s = self.sel.standby.len();
        if s == 0 { State::Done } else { State::Standby { cur: rng::below(s), left: s } }
    }

    /// Advance the state machine by one step: a candidate (possibly one already
    /// yielded, which the caller skips) or `None` after a change of state.
    fn step(&mut self) -> Option<u32> {
        let sel = self.sel;
        match self.state {
            State::Init => {
                self.state = self.begin(sel.primary);
                None
            }
            State::Done => None,
            State::Rotate { left: 0, .. } | State::Table { left: 0, .. } => {
                self.state = self.rest();
                None
            }
            State::Rotate { cur, stride, left } => {
                let m = sel.active.len();
                self.state = State::Rotate { cur: (cur + stride) % m, stride, left: left - 1 };
                Some(sel.active[cur])
            }
            State::Table { pos, left } => {
                self.state = State::Table { pos: (pos + 1) % sel.wrr.len(), left: left - 1 };
                Some(sel.wrr[pos])
            }
            State::Ring { start, pos, left, cap, found } => {
                Some(self.ring(start, pos, left, cap, found)?)
            }
            State::RingDeferred { pos, left } => {
                let len = sel.ring.len();
                let (mut pos, mut left) = (pos, left);
                while left > 0 {
                    let b = sel.ring[pos].1;
                    pos = wrap(pos + 1, len);
                    left -= 1;
                    if self.deferred.contains(b as usize) && !self.seen.contains(b as usize) {
                        self.state = State::RingDeferred { pos, left };
                        return Some(b);
                    }
                }
                self.state = self.rest();
                None
            }
            State::Least { latency, first, offset } => {
                let Some((best, any_known)) = self.least(latency, offset) else {
                    self.state = self.rest();
                    return None;
                };
                if first && latency {
                    if !any_known {
                        // No latency data at all: the fallback decides.
                        self.state = self.begin_fallback();
                        return None;
                    }
                    let m = sel.active.len();
                    if m > 1 && sel.exploration > 0.0 && rng::unit() < sel.exploration {
                        // Explore: any backend but the best, so a recovered one is measured again.
                        self.state = State::Least { latency, first: false, offset };
                        let skip = rng::below(m - 1);
                        return sel.active.iter().copied().filter(|&b| b != best).nth(skip);
                    }
                }
                self.state = State::Least { latency, first: false, offset };
                Some(best)
            }
            State::Pair { first: Some(first), other } => {
                self.state = State::Pair { first: None, other };
                Some(first)
            }
            State::Pair { first: None, other } => {
                self.state = self.rest();
                Some(other)
            }
            State::Rest { left: 0, .. } => {
                self.state = self.standby();
                None
            }
            State::Rest { cur, left } => {
                self.state = State::Rest { cur: (cur + 1) % sel.active.len(), left: left - 1 };
                Some(sel.active[cur])
            }
            State::Standby { left: 0, .. } => {
                self.state = State::Done;
                None
            }
            State::Standby { cur, left } => {
                self.state = State::Standby { cur: (cur + 1) % sel.standby.len(), left: left - 1 };
                Some(sel.standby[cur])
            }
        }
    }

    /// Walk the ring for the next backend under the load cap; `None` (after moving to
    /// the deferred pass) when every active backend has been seen or the ring is done.
    fn ring(
        &mut self,
        start: usize,
        pos: usize,
        left: usize,
        cap: u64,
        found: usize,
    ) -> Option<u32> {
        let sel = self.sel;
        let len = sel.ring.len();
        let m = sel.active.len();
        let (mut pos, mut left, mut found) = (pos, left, found);
        while left > 0 && found < m {
            let b = sel.ring[pos].1;
            pos = wrap(pos + 1, len);
            left -= 1;
            let i = b as usize;
            if self.seen.contains(i) || self.deferred.contains(i) {
                continue;
            }
            found += 1;
            if in_flight(&sel.entries[i]) < cap {
                self.state = State::Ring { start, pos, left, cap, found };
                return Some(b);
            }
            self.deferred.insert(i);
        }
        self.state = State::RingDeferred { pos: start, left: len };
        None
    }

    /// The unseen active backend of least cost, scanning from `offset` so ties spread;
    /// and whether any active backend has latency data (exact on the first call, when
    /// nothing is seen yet, which is the only time it is used).
    fn least(&self, latency: bool, offset: usize) -> Option<(u32, bool)> {
        let hot = &self.sel.hot;
        // Two plain slices instead of `(offset + k) % m`: a division per backend costs
        // more than everything else in the loop.
        let (tail, head) = hot.split_at(offset.min(hot.len()));
        let fresh = self.remaining == self.sel.entries.len();
        if !latency {
            let mut best: Option<(u32, u64)> = None;
            for h in head.iter().chain(tail) {
                if !fresh && self.seen.contains(h.index as usize) {
                    continue;
                }
                let load = h.stats.in_flight.load(Relaxed);
                if best.is_none_or(|(_, l)| load < l) {
                    best = Some((h.index, load));
                    if load == 0 {
                        break; // nothing beats idle
                    }
                }
            }
            return best.map(|(b, _)| (b, false));
        }
        // One f64 rank per backend, lowest first: -1 for untried and idle (try it now),
        // latency x load for measured ones, 1e30 x load for untried but busy ones (after
        // the rest, while their first request is out).
        let (mut best, mut best_rank, mut any_known) = (None, f64::INFINITY, false);
        for part in [head, tail] {
            for h in part {
                if !fresh && self.seen.contains(h.index as usize) {
                    continue;
                }
                let load = h.stats.in_flight.load(Relaxed);
                let latency = h
                    .model
                    .as_ref()
                    .and_then(|m| m.ewma.get())
                    .or_else(|| h.stats.latency.ewma.get());
                let rank = match latency {
                    None if load == 0 => -1.0,
                    None => 1e30 * load as f64,
                    // Peak-EWMA style: expected wait grows with queued requests, and a
                    // backend that keeps failing looks proportionally slower.
                    Some(seconds) => {
                        any_known = true;
                        let cost = seconds * (load + 1) as f64;
                        // Healthy backends sit at exactly 1.0: skip the division for them.
                        match h.stats.success.get() {
                            Some(success) if success < 1.0 => cost / success.max(0.05),
                            _ => cost,
                        }
                    }
                };
                if rank < best_rank || best.is_none() {
                    (best, best_rank) = (Some(h.index), rank);
                }
            }
        }
        best.map(|b| (b, any_known))
    }
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.remaining > 0 {
            if matches!(self.state, State::Done) {
                // Unreachable while every state covers its backends; never loop on a bug.
                self.remaining = 0;
                break;
            }
            if let Some(b) = self.step() {
                let i = b as usize;
                if self.seen.insert(i) {
                    self.remaining -= 1;
                    return Some(i);
                }
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}

/// `i % len` for `i <= len`, without a division.
fn wrap(i: usize, len: usize) -> usize {
    if i >= len { i - len } else { i }
}

fn in_flight(entry: &Entry) -> u64 {
    entry.stats.in_flight.load(Relaxed)
}

impl Bits {
    fn new(n: usize) -> Self {
        if n <= 256 { Bits::Inline([0; 4]) } else { Bits::Heap(vec![0; n.div_ceil(64)]) }
    }

    fn words(&self) -> &[u64] {
        match self {
            Bits::Inline(words) => words,
            Bits::Heap(words) => words,
        }
    }

    fn contains(&self, i: usize) -> bool {
        self.words().get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Insert `i`; whether it was new.
    fn insert(&mut self, i: usize) -> bool {
        let words: &mut [u64] = match self {
            Bits::Inline(words) => words,
            Bits::Heap(words) => words,
        };
        match words.get_mut(i / 64) {
            Some(word) => {
                let bit = 1 << (i % 64);
                let new = *word & bit == 0;
                *word |= bit;
                new
            }
            None => false,
        }
    }
}
