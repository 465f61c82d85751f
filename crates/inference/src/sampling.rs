//! Choosing the next token from logits, and holding back text that may turn into a
//! stop sequence.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How the next token is chosen. Defaults: greedy off (temperature 1), no top-k,
/// top-p 1, no repetition penalty, a random seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`; 1 disables.
    pub top_p: f32,
    /// Penalise tokens already in the prompt or output (llama.cpp style: logits above
    /// zero are divided by it, below zero multiplied); 1 disables.
    pub repetition_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repetition_window: usize,
    /// Seed for reproducible sampling; `None` draws one.
    pub seed: Option<u64>,
}

/// A sampler for one sequence.
pub(crate) struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    scratch: Vec<(u32, f32)>,
}

/// Matches stop sequences over streamed text, releasing only text that can no
/// longer become part of one.
#[derive(Debug, Default)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            repetition_window: 64,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..SamplingParams::default() }
    }
}

impl Sampler {
    pub(crate) fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Sampler { params, rng, scratch: Vec::new() }
    }

    /// Pick a token. `history` is the sequence so far (prompt and output).
    pub(crate) fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if (p.repetition_penalty - 1.0).abs() > f32::EPSILON && p.repetition_penalty > 0.0 {
            let window = &history[history.len().saturating_sub(p.repetition_window)..];
            let mut seen: Vec<u32> = window.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let candidates = &mut self.scratch;
        candidates.clear();
        candidates.extend(
            logits.iter().enumerate().filter_map(|(i, l)| Some((u32::try_from(i).ok()?, *l))),
        );
        if p.top_k > 0 && p.top_k < candidates.len() {
            candidates.select_nth_unstable_by(p.top_k - 1, |a, b| b.1.total_cmp(&a.1));
            candidates.truncate(p.top_k);
        }
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let max = candidates.first().map_or(0.0, |c| c.1);
        let mut total = 0f32;
        for c in candidates.iter_mut() {
            c.1 = ((c.1 - max) / p.temperature).exp();
            total += c.1;
        }
        if p.top_p < 1.0 && p.top_p > 0.0 {
            let mut acc = 0f32;
            let mut keep = candidates.len();
            for (i, c) in candidates.iter().enumerate() {
                acc += c.1 / total;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            candidates.truncate(keep);
            total = candidates.iter().map(|c| c.1).sum();
        }
        let mut r = self.rng.random::<f32>() * total;
        for c in candidates.iter() {
            r -= c.1;
            if r <= 0.0 {
                return c.0;
            }
        }
        candidates.last().map_or_else(|| argmax(logits), |c| c.0)
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, v) in logits.iter().enumerate() {
        if *v > best_v {
            best_v = *v;
            best = i;
        }
    }
    u32::try_from(best).unwrap_or(0)
}

/// What [`StopMatcher::push`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StopOutcome {
    /// Text safe to emit (may be empty); no stop sequence yet.
    Continue(String),
    /// A stop sequence appeared: emit this text (what came before it) and stop.
    Stop(String),
}

impl StopMatcher {
    pub(crate) fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Add decoded text.
    pub(crate) fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(text.to_owned());
        }
        self.held.push_str(text);
        let first = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first {
            let before = self.held[..at].to_owned();
            self.held.clear();
            return StopOutcome::Stop(before);
        }
        // Hold back the longest suffix that is a proper prefix of some stop sequence.
        let mut keep = 0;
        for s in &self.stops {
            let max = s.len().saturating_sub(1).min(self.held.len());
            for len in (1..=max).rev() {
                let start = self.held.len() - len;
                if self.held.is_char_boundary(start) && s.starts_with(&self.held[start..]) {
                    keep = keep.max(len);
                    break;
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_owned();
        self.held.drain(..cut);
        StopOutcome::Continue(out)
    }

    /// Generation ended without a stop sequence: release what was held.
    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_maximum_and_penalty_can_change_it() {
        let mut s = Sampler::new(SamplingParams::greedy());
        let mut logits = vec![0.1, 2.0, 1.9, -1.0];
        assert_eq!(s.sample(&mut logits.clone(), &[]), 1);
        let mut p = SamplingParams::greedy();
        p.repetition_penalty = 1.5;
        let mut s = Sampler::new(p);
        assert_eq!(s.sample(&mut logits, &[1]), 2);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_top_k_one_is_greedy() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let params =
            SamplingParams { temperature: 0.8, seed: Some(7), ..SamplingParams::default() };
        let run = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            (0..20).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(&params), run(&params));
        let top1 = SamplingParams { top_k: 1, ..params.clone() };
        let greedy = argmax(&logits);
        assert!(run(&top1).iter().all(|t| *t == greedy));
        let tiny_p = SamplingParams { top_p: 1e-6, ..params };
        assert!(run(&tiny_p).iter().all(|t| *t == greedy));
    }

    #[test]
    fn stop_sequence_split_across_pushes_is_never_emitted() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("hello E"), StopOutcome::Continue("hello ".into()));
        assert_eq!(m.push("N"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("Dtrailing"), StopOutcome::Stop(String::new()));
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("EN"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("x"), StopOutcome::Continue("ENx".into()));
        assert_eq!(m.push("E"), StopOutcome::Continue(String::new()));
        assert_eq!(m.finish(), "E");
    }

    proptest::proptest! {
        #[test]
        fn output_is_the_text_before_the_first_stop(
            text in "[abcS]{0,30}",
            cuts in proptest::collection::vec(0usize..31, 0..6),
        ) {
            let stop = "SS".to_owned();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            points.sort_unstable();
            let mut m = StopMatcher::new(vec![stop.clone(), "cab".into()]);
            let mut out = String::new();
            let mut last = 0;
            let mut stopped = false;
            for p in points.into_iter().chain([text.len()]) {
                match m.push(&text[last..p]) {
                    StopOutcome::Continue(s) => out.push_str(&s),
                    StopOutcome::Stop(s) => { out.push_str(&s); stopped = true; break; }
                }
                last = p;
            }
            if !stopped { out.push_str(&m.finish()); }
            let first = [text.find("SS"), text.find("cab")].into_iter().flatten().min();
            let want = first.map_or(text.as_str(), |i| &text[..i]);
            proptest::prop_assert_eq!(out, want);
        }
    }
}
