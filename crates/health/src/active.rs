//! Active-check bookkeeping for one backend as a pure state machine: probe results in,
//! state changes and the next probe delay out. The checker task owns the timing; this
//! owns the counting.

use std::time::Duration;

use serde::Serialize;

use crate::settings::ResolvedCheck;

/// What active checks say about a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ActiveState {
    /// Checks are on but the first probe has not answered yet: not routed to.
    Unknown,
    /// Probes pass.
    Healthy,
    /// Probes failed `unhealthy_threshold` times in a row (or the first one failed).
    Unhealthy,
    /// Checks are off for this backend: it counts as healthy.
    Unchecked,
}

/// One probe's result, as the tracker counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProbeResult {
    Ok,
    /// The backend said it is warming up (503 / overloaded): a failure, probed faster.
    Warming,
    Failed,
}

/// Consecutive counts and the current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tracker {
    pub(crate) state: ActiveState,
    pub(crate) successes: u32,
    pub(crate) failures: u32,
    /// Set by a warming answer, cleared when the backend turns healthy or fails otherwise.
    pub(crate) warming: bool,
}

impl ActiveState {
    pub(crate) const fn to_u8(self) -> u8 {
        match self {
            ActiveState::Unknown => 0,
            ActiveState::Healthy => 1,
            ActiveState::Unhealthy => 2,
            ActiveState::Unchecked => 3,
        }
    }

    pub(crate) const fn from_u8(v: u8) -> ActiveState {
        match v {
            1 => ActiveState::Healthy,
            2 => ActiveState::Unhealthy,
            3 => ActiveState::Unchecked,
            _ => ActiveState::Unknown,
        }
    }

    /// Whether active checks let traffic through.
    pub const fn is_up(self) -> bool {
        matches!(self, ActiveState::Healthy | ActiveState::Unchecked)
    }

    /// The name used in snapshots and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            ActiveState::Unknown => "unknown",
            ActiveState::Healthy => "healthy",
            ActiveState::Unhealthy => "unhealthy",
            ActiveState::Unchecked => "unchecked",
        }
    }
}

impl Tracker {
    pub(crate) fn new(checked: bool) -> Tracker {
        let state = if checked { ActiveState::Unknown } else { ActiveState::Unchecked };
        Tracker { state, successes: 0, failures: 0, warming: false }
    }

    /// Count one result; returns the new state if it changed.
    ///
    /// The first result decides alone (a dead backend is out from the start, a live one
    /// in); after that a state flips only after its threshold of consecutive results.
    pub(crate) fn observe(
        &mut self,
        result: ProbeResult,
        cfg: &ResolvedCheck,
    ) -> Option<ActiveState> {
        let before = self.state;
        if result == ProbeResult::Ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            let flip = match before {
                ActiveState::Unknown => true,
                ActiveState::Unhealthy => self.successes >= cfg.healthy_threshold,
                ActiveState::Healthy | ActiveState::Unchecked => false,
            };
            if flip {
                self.state = ActiveState::Healthy;
                self.warming = false;
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            self.warming = result == ProbeResult::Warming;
            let flip = match before {
                ActiveState::Unknown => true,
                ActiveState::Healthy => self.failures >= cfg.unhealthy_threshold,
                ActiveState::Unhealthy | ActiveState::Unchecked => false,
            };
            if flip {
                self.state = ActiveState::Unhealthy;
            }
        }
        (self.state != before).then_some(self.state)
    }

    /// When to probe next, counted from the start of the probe just done.
    pub(crate) fn next_interval(&self, cfg: &ResolvedCheck) -> Duration {
        if self.warming { cfg.warmup_interval } else { cfg.interval }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cfg(unhealthy: u32, healthy: u32) -> ResolvedCheck {
        ResolvedCheck {
            enabled: true,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
            warmup_interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn first_result_decides_then_thresholds_apply() {
        let c = cfg(3, 2);
        let mut t = Tracker::new(true);
        assert_eq!(t.observe(ProbeResult::Failed, &c), Some(ActiveState::Unhealthy));
        assert_eq!(t.observe(ProbeResult::Ok, &c), None);
        assert_eq!(t.observe(ProbeResult::Ok, &c), Some(ActiveState::Healthy));
        assert_eq!(t.observe(ProbeResult::Failed, &c), None);
        assert_eq!(t.observe(ProbeResult::Failed, &c), None);
        assert_eq!(t.observe(ProbeResult::Ok, &c), None, "streak broken");
        assert_eq!(t.observe(ProbeResult::Failed, &c), None);
        assert_eq!(t.observe(ProbeResult::Failed, &c), None);
        assert_eq!(t.observe(ProbeResult::Failed, &c), Some(ActiveState::Unhealthy));
        let mut t = Tracker::new(true);
        assert_eq!(t.observe(ProbeResult::Ok, &c), Some(ActiveState::Healthy));
    }

    #[test]
    fn warming_probes_faster_until_healthy() {
        let c = cfg(3, 2);
        let mut t = Tracker::new(true);
        t.observe(ProbeResult::Warming, &c);
        assert_eq!(t.state, ActiveState::Unhealthy);
        assert_eq!(t.next_interval(&c), c.warmup_interval);
        t.observe(ProbeResult::Ok, &c);
        assert_eq!(t.next_interval(&c), c.warmup_interval, "still warming until healthy");
        t.observe(ProbeResult::Ok, &c);
        assert_eq!(t.state, ActiveState::Healthy);
        assert_eq!(t.next_interval(&c), c.interval);
        t.observe(ProbeResult::Failed, &c);
        assert_eq!(t.next_interval(&c), c.interval, "plain failures keep the interval");
    }

    proptest! {
        /// The state equals what the last run of identical results implies.
        #[test]
        fn state_flips_only_after_consecutive_results(
            unhealthy in 1u32..6,
            healthy in 1u32..6,
            results in proptest::collection::vec(0u8..3, 1..200),
        ) {
            let c = cfg(unhealthy, healthy);
            let mut t = Tracker::new(true);
            let mut history: Vec<bool> = Vec::new();
            for r in results {
                let r = [ProbeResult::Ok, ProbeResult::Warming, ProbeResult::Failed][usize::from(r)];
                let before = t.state;
                let changed = t.observe(r, &c);
                history.push(r == ProbeResult::Ok);
                let run = history.iter().rev().take_while(|&&ok| ok == (r == ProbeResult::Ok)).count();
                let run = u32::try_from(run).unwrap();
                if let Some(to) = changed {
                    prop_assert_ne!(to, before);
                    if before != ActiveState::Unknown {
                        let need = if to == ActiveState::Healthy { healthy } else { unhealthy };
                        prop_assert_eq!(run, need, "flipped after {} not {}", run, need);
                    }
                }
                prop_assert_eq!(t.state == ActiveState::Healthy, r == ProbeResult::Ok
                    && (before == ActiveState::Healthy || before == ActiveState::Unknown || run >= healthy)
                    || r != ProbeResult::Ok && before == ActiveState::Healthy && run < unhealthy);
            }
        }
    }
}
