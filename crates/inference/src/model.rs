//! The transformer forward pass: the llama family (SmolLM2, TinyLlama, Llama 2/3,
//! Mistral), qwen2 (llama plus q/k/v biases) and gemma3 (extra norms, GELU, sliding
//! window), written directly over [`Weight`] kernels and plain f32 buffers.
//!
//! Why not candle-transformers' models: they keep an f32 copy of the embedding table,
//! build a RoPE table for the whole trained context per layer, crash on batched
//! prefill, carry gemma3 bugs (SiLU for GELU), and run candle's ops on a process-wide
//! thread pool we cannot size. Here each sequence owns its [`KvCache`] and its position,
//! which is what continuous batching ([`Model::forward_batch`]) builds on.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::kernels::{self, dot};
use crate::quant::{Formats, Weight};

/// The architectures this crate runs, from `general.architecture`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arch {
    Llama,
    Qwen2,
    Gemma3,
}

/// Which pairs of dimensions RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RopeStyle {
    /// `(2i, 2i + 1)`: llama's GGUF layout (the converter permutes q/k for it).
    Adjacent,
    /// `(i, i + d/2)`: GPT-NeoX layout (qwen2, gemma3).
    Halves,
}

/// Hyper-parameters read from the GGUF metadata.
#[derive(Clone, Debug)]
pub(crate) struct ModelConfig {
    pub(crate) arch: Arch,
    pub(crate) hidden: usize,
    pub(crate) layers: usize,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) vocab: usize,
    pub(crate) context_length: usize,
    eps: f32,
    rope_dim: usize,
    rope_base: f32,
    rope_scale: f32,
    rope_base_local: f32,
    rope_style: RopeStyle,
    sliding_window: Option<usize>,
    sliding_pattern: usize,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    bias: Option<[Vec<f32>; 3]>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Weight,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    w_gate: Weight,
    w_up: Weight,
    w_down: Weight,
    post_ffn_norm: Option<Vec<f32>>,
    /// Sliding-window layer (gemma3 local attention).
    local: bool,
}

/// A loaded model: weights plus config. Immutable and shared by every sequence.
pub(crate) struct Model {
    pub(crate) config: ModelConfig,
    embeddings: Weight,
    /// `None`: tied to `embeddings`.
    output: Option<Weight>,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    inv_freq: Vec<f32>,
    inv_freq_local: Vec<f32>,
}

/// One sequence's part of a batched forward pass ([`Model::forward_batch`]).
pub(crate) struct Segment<'a> {
    /// The tokens to run (positions `cache.len()..`).
    pub(crate) tokens: &'a [u32],
    /// The sequence's cache, appended to.
    pub(crate) cache: &'a mut KvCache,
    /// Whether to return the logits of the last token.
    pub(crate) logits: bool,
}

/// Where a segment's rows sit in a batch: rows `off..off + m`, positions
/// `start..start + m`.
#[derive(Clone, Copy)]
struct Rows {
    off: usize,
    m: usize,
    start: usize,
}

/// RoPE's `cos` and `sin` for a segment's positions, `[position][rope_dim / 2]`.
struct RopeTable {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// One sequence's keys and values of one layer, one vector per KV head.
type LayerKv<'a> = (&'a [Vec<f32>], &'a [Vec<f32>]);

/// One sequence's keys and values, `[position][head_dim]` per layer and KV head
/// (entry `layer * kv_heads + kv_head`): each head's keys are one contiguous stream,
/// which attention reads front to back (the hardware prefetchers follow it; a
/// `[position][kv_head][head_dim]` layout made every head's read a strided one).
/// Grows as the sequence does; nothing is preallocated for the whole context.
pub(crate) struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl ModelConfig {
    pub(crate) fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch_name = file
            .str("general.architecture")
            .ok_or_else(|| Error::Model("gguf metadata lacks `general.architecture`".into()))?;
        let arch = match arch_name {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gemma3" => Arch::Gemma3,
            other => return Err(Error::UnsupportedArchitecture(other.to_owned())),
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let hidden = file.usize(&key("embedding_length"))?;
        let heads = file.usize(&key("attention.head_count"))?;
        let kv_heads = file.opt_usize(&key("attention.head_count_kv")).unwrap_or(heads);
        let head_dim =
            file.opt_usize(&key("attention.key_length")).unwrap_or(hidden / heads.max(1));
        if heads == 0
            || kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || !head_dim.is_multiple_of(2)
        {
            return Err(Error::Model(format!(
                "unsupported attention shape: {heads} heads, {kv_heads} kv heads, head size {head_dim}"
            )));
        }
        let rope_dim =
            file.opt_usize(&key("rope.dimension_count")).unwrap_or(head_dim).min(head_dim);
        let rope_scale = match file.opt_f32(&key("rope.scaling.factor")) {
            Some(f) if f > 0.0 && file.str(&key("rope.scaling.type")) != Some("none") => 1.0 / f,
            _ => 1.0,
        };
        let (rope_style, eps_key, default_base) = match arch {
            Arch::Llama => (RopeStyle::Adjacent, "attention.layer_norm_rms_epsilon", 10_000.0),
            Arch::Qwen2 => (RopeStyle::Halves, "attention.layer_norm_rms_epsilon", 1_000_000.0),
            Arch::Gemma3 => (RopeStyle::Halves, "attention.layer_norm_rms_epsilon", 1_000_000.0),
        };
        let sliding_window = match arch {
            Arch::Gemma3 => Some(file.opt_usize(&key("attention.sliding_window")).unwrap_or(512)),
            _ => None,
        };
        Ok(ModelConfig {
            arch,
            hidden,
            layers: file.usize(&key("block_count"))?,
            heads,
            kv_heads,
            head_dim,
            vocab: 0,
            context_length: file.opt_usize(&key("context_length")).unwrap_or(2048),
            eps: file.opt_f32(&key(eps_key)).unwrap_or(1e-6),
            rope_dim,
            rope_base: file.opt_f32(&key("rope.freq_base")).unwrap_or(default_base),
            rope_scale,
            rope_base_local: 10_000.0,
            rope_style,
            sliding_window,
            sliding_pattern: 6,
        })
    }
}

impl Model {
    /// Build the model from an open file. Runs on the current rayon pool.
    pub(crate) fn load(file: &GgufFile, formats: Formats) -> Result<Self> {
        let mut config = ModelConfig::from_gguf(file)?;
        let load = |name: &str| file.weight_as(name, formats);
        let embeddings = load("token_embd.weight")?;
        config.vocab = embeddings.rows();
        if embeddings.cols() != config.hidden {
            return Err(Error::Model(format!(
                "token_embd.weight has {} columns, embedding_length is {}",
                embeddings.cols(),
                config.hidden
            )));
        }
        let output =
            if file.has_tensor("output.weight") { Some(load("output.weight")?) } else { None };
        let gemma = config.arch == Arch::Gemma3;
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let t = |name: &str| format!("blk.{i}.{name}");
            let bias = if file.has_tensor(&t("attn_q.bias")) {
                Some([
                    file.vector(&t("attn_q.bias"))?,
                    file.vector(&t("attn_k.bias"))?,
                    file.vector(&t("attn_v.bias"))?,
                ])
            } else {
                None
            };
            let opt = |name: &str| -> Result<Option<Vec<f32>>> {
                if file.has_tensor(&t(name)) { file.vector(&t(name)).map(Some) } else { Ok(None) }
            };
            let layer = Layer {
                attn_norm: file.vector(&t("attn_norm.weight"))?,
                wq: load(&t("attn_q.weight"))?,
                wk: load(&t("attn_k.weight"))?,
                wv: load(&t("attn_v.weight"))?,
                bias,
                q_norm: opt("attn_q_norm.weight")?,
                k_norm: opt("attn_k_norm.weight")?,
                wo: load(&t("attn_output.weight"))?,
                post_attn_norm: opt("post_attention_norm.weight")?,
                ffn_norm: file.vector(&t("ffn_norm.weight"))?,
                w_gate: load(&t("ffn_gate.weight"))?,
                w_up: load(&t("ffn_up.weight"))?,
                w_down: load(&t("ffn_down.weight"))?,
                post_ffn_norm: opt("post_ffw_norm.weight")?,
                local: gemma
                    && config.sliding_window.is_some()
                    && (i + 1) % config.sliding_pattern != 0,
            };
            let q_out = config.heads * config.head_dim;
            let kv_out = config.kv_heads * config.head_dim;
            if layer.wq.rows() != q_out || layer.wk.rows() != kv_out || layer.wv.rows() != kv_out {
                return Err(Error::Model(format!(
                    "layer {i}: attention weights do not match the head counts"
                )));
            }
            layers.push(layer);
        }
        let inv_freq = inv_freq(config.rope_dim, config.rope_base, config.rope_scale);
        let inv_freq_local = inv_freq_fn(config.rope_dim, config.rope_base_local);
        let output_norm = file.vector("output_norm.weight")?;
        let mut model =
            Model { config, embeddings, output, output_norm, layers, inv_freq, inv_freq_local };
        let mut q8: Vec<&mut kernels::Q8Rows> =
            model.weights_mut().filter_map(Weight::as_q8_mut).collect();
        kernels::pack(&mut q8);
        Ok(model)
    }

    /// Every weight matrix, in the order a forward pass reads them.
    fn weights_mut(&mut self) -> impl Iterator<Item = &mut Weight> {
        let layers = self.layers.iter_mut().flat_map(|l| {
            [&mut l.wq, &mut l.wk, &mut l.wv, &mut l.wo, &mut l.w_gate, &mut l.w_up, &mut l.w_down]
        });
        std::iter::once(&mut self.embeddings).chain(layers).chain(self.output.as_mut())
    }

    /// A human-readable summary of the weight formats, e.g. `Q8_0 x 210, F32 x 61`.
    pub(crate) fn weight_types(&self) -> String {
        let mut counts: Vec<(String, usize)> = Vec::new();
        let mut add = |w: &Weight| {
            let name = w.type_name();
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => *c += 1,
                None => counts.push((name, 1)),
            }
        };
        add(&self.embeddings);
        if let Some(o) = &self.output {
            add(o);
        }
        for l in &self.layers {
            for w in [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down] {
                add(w);
            }
        }
        counts.iter().map(|(n, c)| format!("{n} x {c}")).collect::<Vec<_>>().join(", ")
    }

    /// An empty cache for one sequence.
    pub(crate) fn new_cache(&self) -> KvCache {
        KvCache {
            k: vec![Vec::new(); self.config.layers * self.config.kv_heads],
            v: vec![Vec::new(); self.config.layers * self.config.kv_heads],
            len: 0,
        }
    }

    /// Run `tokens` (positions `cache.len()..`) through the model, appending to the
    /// cache; returns the logits of the last token when `logits` is set. Runs on the
    /// current rayon pool. (The engine always goes through [`Model::forward_batch`].)
    #[cfg(test)]
    pub(crate) fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        logits: bool,
    ) -> Result<Vec<f32>> {
        let mut segments = [Segment { tokens, cache, logits }];
        Ok(self.forward_batch(&mut segments)?.pop().unwrap_or_default())
    }

    /// One step of continuous batching: every segment's tokens (one sequence's next
    /// token, or a chunk of its prompt) go through the model in one pass. Row-wise work
    /// (norms, every matrix product, activations) runs over all the rows at once, so
    /// each weight is read once per step however many sequences share it; RoPE, the
    /// KV-cache append and attention run per segment, at that segment's positions and
    /// over its own cache. Returns one vector per segment: the logits of its last token
    /// when it asked for them, empty otherwise.
    ///
    /// A segment's results do not depend on the others in the batch: every kernel
    /// computes each activation row on its own, with the same operations in the same
    /// order (see [`crate::kernels`]), so a sequence decoded in a batch produces the
    /// same logits, bit for bit, as decoded alone (tested).
    pub(crate) fn forward_batch(&self, segments: &mut [Segment<'_>]) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let h = c.hidden;
        if segments.is_empty() || segments.iter().any(|s| s.tokens.is_empty()) {
            return Err(Error::Internal("forward called with no tokens".into()));
        }
        let rows: Vec<Rows> = {
            let mut off = 0;
            segments
                .iter()
                .map(|s| {
                    let r = Rows { off, m: s.tokens.len(), start: s.cache.len };
                    off += r.m;
                    r
                })
                .collect()
        };
        let m: usize = rows.iter().map(|r| r.m).sum();
        let mut x = vec![0f32; m * h];
        let tokens = segments.iter().flat_map(|s| s.tokens.iter());
        for (row, &tok) in x.chunks_mut(h).zip(tokens) {
            let tok = tok as usize;
            if tok >= c.vocab {
                return Err(Error::Internal(format!("token id {tok} is outside the vocabulary")));
            }
            self.embeddings.row_into(tok, row);
        }
        if c.arch == Arch::Gemma3 {
            #[allow(clippy::cast_precision_loss)]
            let scale = (h as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= scale);
        }
        let (q_dim, kv_dim) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        // RoPE's angles per segment, once per pass rather than per layer and tensor.
        let rope_global: Vec<RopeTable> =
            rows.iter().map(|r| self.rope_table(r.start, r.m, &self.inv_freq)).collect();
        let rope_local: Vec<RopeTable> = if self.layers.iter().any(|l| l.local) {
            rows.iter().map(|r| self.rope_table(r.start, r.m, &self.inv_freq_local)).collect()
        } else {
            Vec::new()
        };
        let mut normed = vec![0f32; m * h];
        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm_rows(&x, &layer.attn_norm, c.eps, &mut normed);
            let mut qkv = Weight::matmul_many(&[&layer.wq, &layer.wk, &layer.wv], &normed, m);
            let mut v = qkv.pop().unwrap_or_default();
            let mut k = qkv.pop().unwrap_or_default();
            let mut q = qkv.pop().unwrap_or_default();
            if let Some([bq, bk, bv]) = &layer.bias {
                add_bias(&mut q, bq);
                add_bias(&mut k, bk);
                add_bias(&mut v, bv);
            }
            if let Some(w) = &layer.q_norm {
                rms_norm_heads(&mut q, w, c.eps);
            }
            if let Some(w) = &layer.k_norm {
                rms_norm_heads(&mut k, w, c.eps);
            }
            let tables = if layer.local { &rope_local } else { &rope_global };
            for ((r, seg), table) in rows.iter().zip(segments.iter_mut()).zip(tables) {
                let (qs, ks) =
                    (r.off * q_dim..(r.off + r.m) * q_dim, r.off * kv_dim..(r.off + r.m) * kv_dim);
                self.rope(&mut q[qs], c.heads, table);
                self.rope(&mut k[ks.clone()], c.kv_heads, table);
                let heads = li * c.kv_heads..(li + 1) * c.kv_heads;
                for (kvh, (kc, vc)) in
                    seg.cache.k[heads.clone()].iter_mut().zip(&mut seg.cache.v[heads]).enumerate()
                {
                    for i in 0..r.m {
                        let at = ks.start + i * kv_dim + kvh * c.head_dim;
                        kc.extend_from_slice(&k[at..at + c.head_dim]);
                        vc.extend_from_slice(&v[at..at + c.head_dim]);
                    }
                }
            }
            let window = if layer.local { c.sliding_window } else { None };
            let heads = li * c.kv_heads..(li + 1) * c.kv_heads;
            let caches: Vec<LayerKv<'_>> = segments
                .iter()
                .map(|s| (&s.cache.k[heads.clone()], &s.cache.v[heads.clone()]))
                .collect();
            let attn = self.attention(&q, &rows, &caches, window);
            let mut o = layer.wo.matmul(&attn, m);
            if let Some(w) = &layer.post_attn_norm {
                rms_norm_in_place(&mut o, w, c.eps);
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

            rms_norm_rows(&x, &layer.ffn_norm, c.eps, &mut normed);
            let mut gu = Weight::matmul_many(&[&layer.w_gate, &layer.w_up], &normed, m);
            let up = gu.pop().unwrap_or_default();
            let mut gate = gu.pop().unwrap_or_default();
            let gelu = c.arch == Arch::Gemma3;
            let gated = |(g, u): (&mut [f32], &[f32])| {
                if gelu {
                    g.iter_mut().zip(u).for_each(|(g, u)| *g = gelu_tanh(*g) * u);
                } else {
                    kernels::silu_mul(g, u);
                }
            };
            // One `exp` (or `tanh`) per value: worth a parallel region for a batch of
            // sequences (several rows), not for one row. The same per-element arithmetic.
            if gate.len() >= ACT_PAR_MIN {
                let n = ACT_PAR_MIN / 4;
                gate.par_chunks_mut(n).zip(up.par_chunks(n)).for_each(gated);
            } else {
                gated((&mut gate, &up));
            }
            let mut down = layer.w_down.matmul(&gate, m);
            if let Some(w) = &layer.post_ffn_norm {
                rms_norm_in_place(&mut down, w, c.eps);
            }
            x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
        for (r, seg) in rows.iter().zip(segments.iter_mut()) {
            seg.cache.len += r.m;
        }
        // The output layer (the largest matrix) once for every sequence that samples.
        let wanted: Vec<usize> = (0..segments.len()).filter(|&i| segments[i].logits).collect();
        let mut results = vec![Vec::new(); segments.len()];
        if wanted.is_empty() {
            return Ok(results);
        }
        let mut last = vec![0f32; wanted.len() * h];
        for (out, &i) in last.chunks_mut(h).zip(&wanted) {
            let row = rows[i].off + rows[i].m - 1;
            rms_norm_rows(&x[row * h..(row + 1) * h], &self.output_norm, c.eps, out);
        }
        let out = self.output.as_ref().unwrap_or(&self.embeddings);
        for (row, &i) in out.matmul_rows(&last, wanted.len()).into_iter().zip(&wanted) {
            results[i] = row;
        }
        Ok(results)
    }

    /// The cosines and sines of positions `start..start + m` for these frequencies.
    fn rope_table(&self, start: usize, m: usize, inv_freq: &[f32]) -> RopeTable {
        let half = self.config.rope_dim / 2;
        let mut t = RopeTable { cos: vec![0f32; m * half], sin: vec![0f32; m * half] };
        if half == 0 {
            return t;
        }
        for (i, (cos, sin)) in t.cos.chunks_mut(half).zip(t.sin.chunks_mut(half)).enumerate() {
            #[allow(clippy::cast_precision_loss)]
            let pos = (start + i) as f32;
            for (j, f) in inv_freq.iter().enumerate().take(half) {
                let (s, c) = (pos * f).sin_cos();
                sin[j] = s;
                cos[j] = c;
            }
        }
        t
    }

    fn rope(&self, x: &mut [f32], heads: usize, table: &RopeTable) {
        let hd = self.config.head_dim;
        let half = self.config.rope_dim / 2;
        if half == 0 {
            return;
        }
        let rows = table.cos.chunks(half).zip(table.sin.chunks(half));
        for (row, (cos, sin)) in x.chunks_mut(heads * hd).zip(rows) {
            for head in row.chunks_mut(hd) {
                match self.config.rope_style {
                    RopeStyle::Adjacent => {
                        for j in 0..half {
                            let (a, b) = (head[2 * j], head[2 * j + 1]);
                            head[2 * j] = a * cos[j] - b * sin[j];
                            head[2 * j + 1] = a * sin[j] + b * cos[j];
                        }
                    }
                    RopeStyle::Halves => {
                        for j in 0..half {
                            let (a, b) = (head[j], head[j + half]);
                            head[j] = a * cos[j] - b * sin[j];
                            head[j + half] = a * sin[j] + b * cos[j];
                        }
                    }
                }
            }
        }
    }

    /// Causal attention of every segment's new queries (rows `off..off + m`, positions
    /// `start..start + m`) over that segment's cache, grouped-query: query head `h` reads
    /// kv head `h / (heads / kv_heads)`. One parallel region over (segment, head) pairs
    /// when there is enough work. Returns `[rows][heads][head_dim]`.
    fn attention(
        &self,
        q: &[f32],
        rows: &[Rows],
        caches: &[LayerKv<'_>],
        window: Option<usize>,
    ) -> Vec<f32> {
        let c = &self.config;
        let hd = c.head_dim;
        let group = c.heads / c.kv_heads;
        #[allow(clippy::cast_precision_loss)]
        let scale = 1.0 / (hd as f32).sqrt();
        // One job per (segment, KV head): its `group` query heads share each key and
        // value load, and their independent add chains interleave in the kernels.
        let work = |seg: usize, kvh: usize, out: &mut [f32]| {
            let Rows { off, m, start } = rows[seg];
            let (k, v) = (&caches[seg].0[kvh], &caches[seg].1[kvh]);
            let mut scores = Vec::with_capacity(group * (start + m));
            for i in 0..m {
                let pos = start + i;
                let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let n = pos + 1 - lo;
                let qs: Vec<&[f32]> = (0..group)
                    .map(|g| &q[((off + i) * c.heads + kvh * group + g) * hd..][..hd])
                    .collect();
                scores.clear();
                scores.resize(group * n, 0.0);
                kernels::dot_rows_many(&qs, &k[lo * hd..], hd, &mut scores, n);
                for sc in scores.chunks_exact_mut(n) {
                    sc.iter_mut().for_each(|s| *s *= scale);
                    let max = max_of(sc);
                    sc.iter_mut().for_each(|s| *s -= max);
                    kernels::exp_in_place(sc);
                    let sum = sc.iter().fold(0f32, |sum, s| sum + s);
                    sc.iter_mut().for_each(|s| *s /= sum);
                }
                // Head `g`'s row `i` is at `(g * m + i) * hd` of this job's block.
                let vs = &v[lo * hd..];
                let ws: Vec<&[f32]> = scores.chunks_exact(n).collect();
                let mut outs: Vec<&mut [f32; 64]> = out
                    .chunks_exact_mut(m * hd)
                    .filter_map(|o| <&mut [f32; 64]>::try_from(&mut o[i * hd..(i + 1) * hd]).ok())
                    .collect();
                if outs.len() == group && kernels::weighted_sum_64_many(&mut outs, &ws, vs, hd) {
                    continue;
                }
                drop(outs);
                for (o, w) in out.chunks_exact_mut(m * hd).zip(&ws) {
                    weighted_sum(&mut o[i * hd..(i + 1) * hd], w, vs, hd);
                }
            }
        };
        // Per segment, per head: [m][hd]; then interleave to [rows][heads][hd].
        let total: usize = rows.iter().map(|r| r.m).sum();
        let mut per_head = vec![0f32; total * c.heads * hd];
        let mut jobs: Vec<(usize, usize, &mut [f32])> = Vec::with_capacity(rows.len() * c.kv_heads);
        let mut rest = per_head.as_mut_slice();
        for (seg, r) in rows.iter().enumerate() {
            for kvh in 0..c.kv_heads {
                let (chunk, tail) = rest.split_at_mut(group * r.m * hd);
                jobs.push((seg, kvh, chunk));
                rest = tail;
            }
        }
        let cost: usize = rows.iter().map(|r| r.m * (r.start + r.m)).sum();
        if cost >= 64 {
            jobs.into_par_iter().for_each(|(seg, kvh, out)| work(seg, kvh, out));
        } else {
            jobs.into_iter().for_each(|(seg, kvh, out)| work(seg, kvh, out));
        }
        let mut out = vec![0f32; total * c.heads * hd];
        for r in rows {
            let block = &per_head[r.off * c.heads * hd..(r.off + r.m) * c.heads * hd];
            for head in 0..c.heads {
                for i in 0..r.m {
                    out[((r.off + i) * c.heads + head) * hd..][..hd]
                        .copy_from_slice(&block[(head * r.m + i) * hd..][..hd]);
                }
            }
        }
        out
    }
}

impl KvCache {
    /// Positions held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

fn inv_freq(dim: usize, base: f32, scale: f32) -> Vec<f32> {
    inv_freq_fn(dim, base).into_iter().map(|f| f * scale).collect()
}

fn inv_freq_fn(dim: usize, base: f32) -> Vec<f32> {
    #[allow(clippy::cast_precision_loss)]
    (0..dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32)).collect()
}

/// `out = sum_t w[t] * v_t` with `v_t = v[t * stride..][..out.len()]`: the same
/// operations in the same order as `out.fill(0.0)` then `out[j] += w[t] * v_t[j]` for
/// each `t` in turn, with 64 outputs at a time held in registers across `t` instead of
/// going through memory (in four 512-bit registers where the CPU has AVX-512).
fn weighted_sum(out: &mut [f32], w: &[f32], v: &[f32], stride: usize) {
    const C: usize = 64;
    for (c, oc) in out.chunks_mut(C).enumerate() {
        if let Ok(oc) = <&mut [f32; C]>::try_from(&mut *oc) {
            if kernels::weighted_sum_64(oc, w, &v[c * C..], stride) {
                continue;
            }
            let mut acc = [0f32; C];
            for (t, &wt) in w.iter().enumerate() {
                let Ok(vt) = <&[f32; C]>::try_from(&v[t * stride + c * C..][..C]) else { continue };
                for j in 0..C {
                    acc[j] += wt * vt[j];
                }
            }
            *oc = acc;
        } else {
            oc.fill(0.0);
            for (t, &wt) in w.iter().enumerate() {
                let vt = &v[t * stride + c * C..][..oc.len()];
                oc.iter_mut().zip(vt).for_each(|(a, b)| *a += wt * b);
            }
        }
    }
}

/// The largest of `v` (NaNs ignored, `-inf` when empty): `f32::max` is exact and
/// order-free apart from NaNs, which it skips whatever the order, so sixteen running
/// maxima combined at the end give the sequential fold's value and vectorise.
fn max_of(v: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = v.chunks_exact(16);
    for c in &mut chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l = l.max(*x);
        }
    }
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    lanes.iter().fold(tail, |m, &x| m.max(x))
}

fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    for (row, o) in x.chunks(h).zip(out.chunks_mut(h)) {
        let scale = rms_scale(row, eps);
        o.iter_mut().zip(row).zip(w).for_each(|((o, x), w)| *o = x * scale * w);
    }
}

fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let h = w.len();
    for row in x.chunks_mut(h) {
        let scale = rms_scale(row, eps);
        row.iter_mut().zip(w).for_each(|(x, w)| *x *= scale * w);
    }
}

/// Per-head norm (gemma3's q/k norms): `w` has `head_dim` entries.
fn rms_norm_heads(x: &mut [f32], w: &[f32], eps: f32) {
    rms_norm_in_place(x, w, eps);
}

fn rms_scale(row: &[f32], eps: f32) -> f32 {
    #[allow(clippy::cast_precision_loss)]
    let mean = dot(row, row) / row.len() as f32;
    1.0 / (mean + eps).sqrt()
}

fn add_bias(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_mut(b.len()) {
        row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
    }
}

/// Values of the gated activation from which it runs as a parallel region (three rows
/// of SmolLM2's 1536-wide feed-forward layer; one row costs ~5 us).
const ACT_PAR_MIN: usize = 4096;

fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::GgmlDType;
    use candle_core::quantized::GgmlType;
    use candle_core::quantized::k_quants::BlockQ8_0;

    use super::*;

    fn values(n: usize, seed: &mut u64, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// A random Q8_0 `[rows, cols]` weight in the form the engine runs it.
    #[allow(unsafe_code)]
    fn weight(rows: usize, cols: usize, seed: &mut u64, scale: f32, fast: bool) -> Weight {
        let w = values(rows * cols, seed, scale);
        let mut blocks = vec![BlockQ8_0::zeros(); rows * cols / 32];
        BlockQ8_0::from_float(&w, &mut blocks);
        let len = std::mem::size_of_val(blocks.as_slice());
        let mut bytes = vec![0u8; len];
        // SAFETY: candle's blocks are `#[repr(C)]` plain data; we copy their bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(blocks.as_ptr().cast::<u8>(), bytes.as_mut_ptr(), len)
        };
        let formats = Formats { requantize: true, fast, compact_q4_1: false };
        Weight::load(GgmlDType::Q8_0, &bytes, &[rows, cols], formats).unwrap()
    }

    /// A tiny random model: grouped-query attention, and for gemma3 the extra norms and
    /// a 4-token sliding window on the local layers.
    fn tiny(arch: Arch, seed: u64, fast: bool) -> Model {
        let (hidden, heads, kv_heads, head_dim, ffn, vocab, layers) = (64, 4, 2, 16, 128, 64, 3);
        let mut seed = seed;
        let gemma = arch == Arch::Gemma3;
        let config = ModelConfig {
            arch,
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            vocab,
            context_length: 256,
            eps: 1e-5,
            rope_dim: head_dim,
            rope_base: 10_000.0,
            rope_scale: 1.0,
            rope_base_local: 10_000.0,
            rope_style: if gemma { RopeStyle::Halves } else { RopeStyle::Adjacent },
            sliding_window: gemma.then_some(4),
            sliding_pattern: 2,
        };
        let norm = |seed: &mut u64, n: usize| -> Vec<f32> {
            values(n, seed, 0.2).into_iter().map(|v| 1.0 + v).collect()
        };
        let layers = (0..layers)
            .map(|i| Layer {
                attn_norm: norm(&mut seed, hidden),
                wq: weight(heads * head_dim, hidden, &mut seed, 0.3, fast),
                wk: weight(kv_heads * head_dim, hidden, &mut seed, 0.3, fast),
                wv: weight(kv_heads * head_dim, hidden, &mut seed, 0.3, fast),
                bias: None,
                q_norm: gemma.then(|| norm(&mut seed, head_dim)),
                k_norm: gemma.then(|| norm(&mut seed, head_dim)),
                wo: weight(hidden, heads * head_dim, &mut seed, 0.3, fast),
                post_attn_norm: gemma.then(|| norm(&mut seed, hidden)),
                ffn_norm: norm(&mut seed, hidden),
                w_gate: weight(ffn, hidden, &mut seed, 0.3, fast),
                w_up: weight(ffn, hidden, &mut seed, 0.3, fast),
                w_down: weight(hidden, ffn, &mut seed, 0.3, fast),
                post_ffn_norm: gemma.then(|| norm(&mut seed, hidden)),
                local: gemma && (i + 1) % 2 != 0,
            })
            .collect();
        Model {
            embeddings: weight(vocab, hidden, &mut seed, 1.0, fast),
            output: (!gemma).then(|| weight(vocab, hidden, &mut seed, 1.0, fast)),
            output_norm: norm(&mut seed, hidden),
            layers,
            inv_freq: inv_freq(head_dim, 10_000.0, 1.0),
            inv_freq_local: inv_freq_fn(head_dim, 10_000.0),
            config,
        }
    }

    fn argmax(logits: &[f32]) -> u32 {
        let mut best = 0;
        for (i, v) in logits.iter().enumerate() {
            if *v > logits[best] {
                best = i;
            }
        }
        best as u32
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// Greedy tokens and the logits bits of every step, the sequence alone.
    fn alone(model: &Model, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<Vec<u32>>) {
        let mut cache = model.new_cache();
        let mut logits = model.forward(prompt, &mut cache, true).unwrap();
        let (mut tokens, mut all) = (Vec::new(), Vec::new());
        for _ in 0..steps {
            all.push(bits(&logits));
            let t = argmax(&logits);
            tokens.push(t);
            logits = model.forward(&[t], &mut cache, true).unwrap();
        }
        (tokens, all)
    }

    /// The same sequences decoded together: sequence `i` joins at step `join[i]`, its
    /// prompt goes in chunks of `chunk` tokens beside the others' decode tokens, and it
    /// leaves after `steps` tokens.
    fn batched(
        model: &Model,
        prompts: &[Vec<u32>],
        join: &[usize],
        chunk: usize,
        steps: usize,
    ) -> Vec<(Vec<u32>, Vec<Vec<u32>>)> {
        struct Seq {
            tokens: Vec<u32>,
            cache: KvCache,
            out: Vec<u32>,
            logits: Vec<Vec<u32>>,
        }
        let mut seqs: Vec<Seq> = prompts
            .iter()
            .map(|p| Seq {
                tokens: p.clone(),
                cache: model.new_cache(),
                out: vec![],
                logits: vec![],
            })
            .collect();
        let mut max_batch = 0;
        for step in 0.. {
            let mut segments = Vec::new();
            let mut ids = Vec::new();
            for (i, s) in seqs.iter_mut().enumerate() {
                if step < join[i] || s.out.len() == steps {
                    continue;
                }
                let done = s.cache.len();
                let end = (done + chunk).min(s.tokens.len());
                let last = end == s.tokens.len();
                ids.push((i, last));
                segments.push(Segment {
                    tokens: &s.tokens[done..end],
                    cache: &mut s.cache,
                    logits: last,
                });
            }
            if segments.is_empty() && step > *join.iter().max().unwrap() {
                break;
            }
            if segments.is_empty() {
                continue;
            }
            max_batch = max_batch.max(segments.len());
            let logits = model.forward_batch(&mut segments).unwrap();
            drop(segments);
            for ((i, last), l) in ids.into_iter().zip(logits) {
                if last {
                    let s = &mut seqs[i];
                    let t = argmax(&l);
                    s.logits.push(bits(&l));
                    s.out.push(t);
                    s.tokens.push(t);
                } else {
                    assert!(l.is_empty());
                }
            }
        }
        assert!(max_batch >= 3, "the schedule must overlap sequences");
        seqs.into_iter().map(|s| (s.out, s.logits)).collect()
    }

    #[test]
    fn a_sequence_decoded_in_a_batch_matches_it_decoded_alone() {
        // Our SIMD kernels and candle's (`fast_kernels: false`).
        for (arch, seed, fast) in
            [(Arch::Llama, 7, true), (Arch::Gemma3, 11, true), (Arch::Llama, 5, false)]
        {
            let model = tiny(arch, seed, fast);
            // Where the CPU has them, `fast` weights run on this crate's kernels.
            let ours = matches!(model.layers[0].wq, Weight::Q8x(_));
            assert_eq!(ours, fast && crate::kernels::level() != crate::kernels::Level::Portable);
            let prompts: Vec<Vec<u32>> = [5usize, 9, 1, 14]
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|j| ((i * 17 + j * 5 + 3) % 64) as u32).collect())
                .collect();
            let steps = 10;
            let want: Vec<_> = prompts.iter().map(|p| alone(&model, p, steps)).collect();
            for (join, chunk) in [([0, 0, 0, 0], 64), ([0, 2, 3, 5], 4), ([4, 0, 7, 1], 3)] {
                let got = batched(&model, &prompts, &join, chunk, steps);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.0, w.0, "{arch:?} sequence {i} tokens, joins {join:?}");
                    assert_eq!(g.1, w.1, "{arch:?} sequence {i} logits, joins {join:?}");
                }
            }
        }
    }

    /// Greedy answers of llama.cpp (llama-cpp-python 0.3.36, the GGUF's own Q4_1
    /// weights, its chat template, 16 tokens) on a fixed prompt set.
    const LLAMA_CPP_ANSWERS: &[(&str, &str)] = &[
        (
            "Write one sentence about trains.",
            "The iconic train is a symbol of human ingenuity and the relentless pursuit of speed and",
        ),
        ("List three colors.", "1. Red: The most popular color among the 11 colors of the"),
        (
            "Why is the sky blue?",
            "The answer to this question lies in the intricate dance of light and color. The",
        ),
    ];

    /// How far below this model's best logit llama.cpp's token may be. Comparing greedy
    /// texts is not a test of numerics: these prompts have near-ties (top two logits
    /// 0.04-0.24 apart at some step), and with activations requantised to Q8_0 before
    /// every product a change in the last bit of one sum moves the logits by up to
    /// ~0.4 (summing candle's eight lanes in reverse order did; so did the change to
    /// exact block sums), enough to swap such a pair and send the rest of the answer
    /// elsewhere. An error in the arithmetic puts the reference tokens far below.
    const NEAR_TIE: f32 = 1.0;

    /// Feeds llama.cpp's answers token by token (teacher forcing) through the real
    /// model in each of its forms, checking at every step that llama.cpp's token is
    /// this model's choice or within [`NEAR_TIE`] of it.
    #[test]
    fn llama_cpps_greedy_answers_are_greedy_here_up_to_near_ties() {
        let Some(path) = switchyard_test_support::model_or_skip(
            crate::default_model_path(),
            crate::FETCH_COMMAND,
        ) else {
            return;
        };
        let engine = crate::Engine::load(&crate::InferenceSettings::for_model(&path)).unwrap();
        let file = crate::gguf::GgufFile::open(&path).unwrap();
        let forms = [
            ("Q8_0 requantised", Formats { requantize: true, fast: true, compact_q4_1: false }),
            ("Q4_1 kept 4-bit", Formats { requantize: true, fast: true, compact_q4_1: true }),
            ("Q4_1 on candle", Formats { requantize: false, fast: true, compact_q4_1: false }),
        ];
        for (form, formats) in forms {
            let model = Model::load(&file, formats).unwrap();
            for (prompt, answer) in LLAMA_CPP_ANSWERS {
                let turn = crate::ChatTurn { role: "user".into(), content: (*prompt).into() };
                let tokens = engine.prompt_tokens(&crate::Input::Chat(vec![turn])).unwrap();
                let answer = engine.tokenizer().encode(answer, false).unwrap();
                assert_eq!(answer.len(), 16, "{prompt:?}");
                let mut cache = model.new_cache();
                let mut logits = model.forward(&tokens, &mut cache, true).unwrap();
                for (n, &t) in answer.iter().enumerate() {
                    let best = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let got = logits[t as usize];
                    assert!(
                        got >= best - NEAR_TIE,
                        "{form}, {prompt:?}: llama.cpp's token {n} ({t}) has logit {got}, the best {best}"
                    );
                    logits = model.forward(&[t], &mut cache, true).unwrap();
                }
            }
        }
    }

    #[test]
    fn a_batch_with_an_empty_segment_is_an_error() {
        let model = tiny(Arch::Llama, 3, true);
        let (mut a, mut b) = (model.new_cache(), model.new_cache());
        let mut segments = [
            Segment { tokens: &[1, 2], cache: &mut a, logits: true },
            Segment { tokens: &[], cache: &mut b, logits: true },
        ];
        assert!(model.forward_batch(&mut segments).is_err());
        assert!(model.forward_batch(&mut []).is_err());
    }

    #[test]
    fn max_of_equals_the_sequential_fold() {
        let mut seed = 3;
        for n in [0, 1, 15, 16, 17, 40, 130] {
            let mut v = values(n, &mut seed, 5.0);
            let fold = |v: &[f32]| v.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            assert_eq!(max_of(&v).to_bits(), fold(&v).to_bits(), "n={n}");
            if n > 2 {
                v[1] = f32::NAN;
                v[n - 1] = f32::INFINITY;
                assert_eq!(max_of(&v).to_bits(), fold(&v).to_bits(), "n={n} with NaN");
            }
        }
    }

    #[test]
    fn weighted_sum_is_bit_identical_to_the_plain_loop() {
        let mut seed = 9;
        for (hd, count, stride) in
            [(64, 7, 192), (64, 1, 64), (19, 5, 40), (128, 3, 128), (80, 4, 96)]
        {
            let w = values(count, &mut seed, 1.0);
            let v = values(count * stride, &mut seed, 3.0);
            let mut want = vec![0f32; hd];
            for (t, wt) in w.iter().enumerate() {
                want.iter_mut().zip(&v[t * stride..][..hd]).for_each(|(a, b)| *a += wt * b);
            }
            let mut got = vec![f32::NAN; hd];
            weighted_sum(&mut got, &w, &v, stride);
            assert_eq!(bits(&got), bits(&want), "hd={hd} count={count}");
        }
    }

    #[test]
    fn dot_matches_naive_sum_for_odd_lengths() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.1).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
    }

    #[test]
    fn activations_have_known_values() {
        let mut g = [0.0, 2.0];
        kernels::silu_mul(&mut g, &[1.0, 1.0]);
        assert!(g[0].abs() < 1e-7);
        assert!((g[1] - 1.761_594).abs() < 1e-5);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert!((gelu_tanh(-3.0) + 0.003_637_4).abs() < 1e-5);
    }

    #[test]
    fn rms_norm_gives_unit_rms() {
        let x = [3.0f32, 4.0, 0.0, 0.0];
        let mut out = [0f32; 4];
        rms_norm_rows(&x, &[1.0; 4], 0.0, &mut out);
        let rms = (out.iter().map(|v| v * v).sum::<f32>() / 4.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-6);
    }
}
