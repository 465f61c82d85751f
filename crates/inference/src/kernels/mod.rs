//! Hand-written matrix kernels behind runtime CPU-feature detection: the small
//! interface every fast weight format goes through.
//!
//! **Numerics.** Every kernel here computes the dot product of a Q8_0 weight row with
//! Q8_0-quantised activations the way ggml's reference does: per block the exact
//! integer sum of the 32 products, then `acc = (d_w * d_x) * sum + acc` (one rounding
//! for the scale product, one FMA) in block order. Integer sums are exact whichever
//! instructions compute them and the floating-point steps are the same at every level,
//! so the AVX-512, AVX2 and portable paths give the same bits (unit tests and proptests
//! check it against the scalar form), and a sequence's logits do not depend on which
//! other sequences share its batch. candle's `vec_dot_q8_0_q8_0` rounds in another
//! order (eight lane accumulators per block and a horizontal sum at the end); the tests
//! also check that every result is within that rounding of candle's.
//!
//! **Formats.**
//! - [`Q8Rows`]: Q8_0 weights (34 bytes per 32 values).
//! - [`Q41Rows`]: Q4_1 weights *as stored in the file* (20 bytes per 32 values) with the
//!   numerics of their Q8_0 requantisation: the Q8_0 block a Q4_1 block requantises to is
//!   a function of its 16 possible nibble values, so the kernel builds that 16-entry table
//!   per block (scale, `amax` and rounding exactly as `quant::encode_q8_0`), looks the
//!   nibbles up with a byte shuffle, a panel at a time, into a scratch that the Q8_0
//!   loops then read. It reads 41% fewer weight bytes than the materialised Q8_0 copy
//!   but the requantisation is compute-bound (~5 ns per block and row on AVX-512,
//!   against ~0.4 ns for the Q8_0 loop itself; a decode about a third as fast), so the
//!   engine uses it only when asked to save memory (`compact_q4_1`). Valid when each
//!   block's largest magnitude sits at nibble 0 or 15 (true of every block `llama.cpp`'s
//!   Q4_1 quantiser writes); [`Q41Rows::from_gguf_bytes`] checks every block and refuses
//!   otherwise, and the caller materialises Q8_0 instead.
//!
//! **Instructions.** AVX-512 VNNI (`vpdpbusd` on 16 weight rows per 512-bit register,
//! the activation-side offset trick `sum (w + 128) x - 128 sum x` keeping every sum
//! exact), AVX2 + FMA (candle's sign trick with `vpmaddubsw`, eight rows per register),
//! and a portable scalar path (the same arithmetic, slow; the engine materialises Q8_0
//! for candle's kernels instead on such CPUs). [`level`] picks once per process (the
//! environment variable `SWITCHYARD_KERNELS=avx2|portable` asks for a lower level, to
//! measure one).
//!
//! **Layout of a call.** [`matmul_q8`]/[`matmul_q41`] compute output columns
//! `rows.start..rows.end` for every activation row. Weights are stored in panels of 16
//! rows, four quants of each row side by side (see [`Q8Rows`]), so one register holds
//! a step of 16 rows and the integer block sums of 16 rows build up lane by lane with
//! no horizontal sums. With one activation row the weights stream from memory straight
//! into the multiply-adds; with several each weight step is loaded once and used for up
//! to four activation rows, so a weight block is read once however many sequences share
//! a decode step (a prompt's rows take two panels at a time on AVX-512).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use std::cell::Cell;
use std::ops::{Deref, Range};
use std::sync::Arc;

use half::f16;
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Which kernels this CPU runs (ordered: a CPU that runs one level runs those below).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// Scalar code (and candle's own kernels for the formats it has).
    Portable,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/DQ/VL/VNNI/VBMI (plus AVX2, FMA, F16C): Ice Lake, Zen 4 and later.
    Avx512,
}

/// Values per block (Q8_0 and Q4_1).
pub(crate) const QK: usize = 32;

/// How far ahead of the Q8_0 block being read the kernels prefetch, in bytes. Decode
/// reads every weight once per token in storage order (143 MB for SmolLM2), from L3 or
/// memory, and the one-row loop is too short for the hardware prefetchers to keep up:
/// on the development machine a 49152 x 576 Q8_0 matrix streamed at 7-10 GB/s without
/// a software prefetch and at 13-24 GB/s with one 2-16 KiB ahead (any distance in that
/// range; measured with a throw-away timing loop over `matmul_q8`, best of 8).
const PREFETCH_BYTES: usize = 4096;

/// How far ahead every Q8_0 weight read also asks for weights into L2
/// (`prefetcht2`), on top of the L1 prefetch [`PREFETCH_BYTES`] ahead. In a batched
/// decode step the weights come from memory or a shared L3 while the kernel is busy
/// with four rows' arithmetic, and the L1 prefetch alone left the loads waiting: with
/// this one the 4-stream step went 16.4-17.2 -> 14.3-14.6 ms (1 thread, alternating A/B
/// in place, 3 pairs; 16 KiB ahead gave 14.8-15.8 ms). The microbenchmark, whose matrix
/// sits in L3, does not move. The one-row decode loop had only the L1 prefetch at
/// first: on an AMD EPYC (Zen 4) machine it decoded a single stream at 58-60 tokens/s
/// (1 thread; 8 GB/s of weights, samples on the weight loads), with this one at 113-129
/// (alternating A/B, 3 pairs; 16 or 64 KiB ahead measured alike, in the 4-stream step
/// too).
const FAR_PREFETCH_BYTES: usize = 8 * PREFETCH_BYTES;

/// Set in a stored Q4_1 scale (whose sign bit is otherwise clear) when the block's
/// table must be computed the exact way: the AVX-512 kernel's short form
/// (`round_ties_even(n * (d / d8) + m / d8)`, two instructions) gives a different quant
/// for some nibble value there (about one block in 1,400 of SmolLM2). Decided at load
/// by computing both tables.
const SLOW: u16 = 0x8000;

/// One Q8_0 activation block as the kernels read it: the quants and `-128 * sum`, the
/// correction for the offset-binary weights (`sum (w + 128) x - 128 sum x = sum w x`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(4))]
pub(crate) struct ActBlock {
    qs: [i8; QK],
    neg_sum: i32,
}

impl ActBlock {
    /// The four quants `4 * s..4 * s + 4` as one little-endian word: what a weight
    /// panel's step `s` multiplies.
    #[inline]
    fn word(&self, s: usize) -> i32 {
        let q = &self.qs[4 * s..4 * s + 4];
        i32::from_le_bytes([q[0], q[1], q[2], q[3]].map(|v| v.to_le_bytes()[0]))
    }
}

const ZERO_ACT: ActBlock = ActBlock { qs: [0; QK], neg_sum: 0 };

/// Activations quantised to Q8_0 (bit-identical to candle's `from_float`), `m` rows of
/// `nb` blocks.
#[derive(Clone, Debug, Default)]
pub(crate) struct QuantActs {
    m: usize,
    nb: usize,
    /// Block scales as `f32` (the f16 value widened), `[m][nb]`.
    d: Vec<f32>,
    blocks: Vec<ActBlock>,
}

/// Q8_0 weight rows stored in panels of [`PANEL`] rows (the last one padded with zero
/// weights): for panel `p` and block `b`, [`STEPS`] 64-byte entries
/// `(p * nb + b) * STEPS + s`, entry `s` holding quants `4s..4s + 4` of the panel's 16
/// rows (bytes `4k..4k + 4` for row `k`), and 16 scales at `(p * nb + b) * PANEL + k`.
/// One 512-bit register then holds four quants of 16 rows: multiplied with the
/// activation's four quants broadcast, `vpdpbusd` adds them into one `i32` per row, and
/// eight such steps give each row's exact block sum in its own lane. Each quant `q` is
/// stored in offset binary, the byte `q + 128`: the form `vpdpbusd` multiplies.
///
/// The scales stay in an array of their own. Stored in the quants' stream instead
/// (each block pair's 64 bytes of scales before its quants), a decode step read the
/// weights no faster and a 4-stream step ran ~20% slower (the blocks no longer start
/// on 512-byte boundaries; with the scales as a header padded to keep them there, both
/// ran ~30% slower).
#[derive(Clone, Debug)]
pub(crate) struct Q8Rows {
    rows: usize,
    nb: usize,
    d: Vec<u16>,
    qs: Quants,
}

/// Rows per weight panel (see [`Q8Rows`]).
pub(crate) const PANEL: usize = 16;

/// 64-byte entries per panel and block: four quants of each row per entry.
const STEPS: usize = QK / 4;

/// One matrix's panels as the kernels read them: [`Q8Rows`]' storage, or a scratch
/// that a Q4_1 matrix's panels are requantised into.
#[derive(Clone, Copy)]
struct Panels<'a> {
    nb: usize,
    qs: &'a [[u8; 2 * QK]],
    d: &'a [u16],
}

impl<'a> Panels<'a> {
    /// The quants of block `b` of panel `p` ([`STEPS`] entries).
    #[inline]
    fn quants(self, p: usize, b: usize) -> &'a [[u8; 2 * QK]] {
        &self.qs[(p * self.nb + b) * STEPS..][..STEPS]
    }

    /// The 16 scales of block `b` of panel `p` (f16 bits).
    #[inline]
    fn scales(self, p: usize, b: usize) -> &'a [u16; PANEL] {
        let d = &self.d[(p * self.nb + b) * PANEL..][..PANEL];
        d.try_into().unwrap_or(&[0; PANEL])
    }
}

/// Room for a few panels of a Q4_1 matrix requantised to Q8_0 ([`Q8Rows`]' layout).
struct PanelBuf {
    nb: usize,
    qs: Vec<[u8; 2 * QK]>,
    d: Vec<u16>,
}

thread_local! {
    /// Each compute thread's [`PanelBuf`], reused from call to call (taken out while in
    /// use): a matrix product is split into tasks of a few panels, and setting up a
    /// scratch for each (up to 48 KiB) cost a tenth of a Q4_1 decode step.
    static PANEL_BUF: Cell<Option<PanelBuf>> = const { Cell::new(None) };
}

impl PanelBuf {
    /// Run `f` with room for `panels` panels of `nb` blocks (this thread's scratch).
    /// What the panels hold is left over from earlier calls; every panel is cleared or
    /// overwritten before it is read ([`PanelBuf::start`]).
    fn with<R>(nb: usize, panels: usize, f: impl FnOnce(&mut PanelBuf) -> R) -> R {
        let mut buf = PANEL_BUF.take().unwrap_or(PanelBuf { nb: 0, qs: Vec::new(), d: Vec::new() });
        buf.nb = nb;
        buf.qs.resize(panels * nb * STEPS, [OFFSET; 2 * QK]);
        buf.d.resize(panels * nb * PANEL, 0);
        let result = f(&mut buf);
        PANEL_BUF.set(Some(buf));
        result
    }

    /// Begin requantising panel `p` of `w` into slot `slot`: the number of real rows in
    /// the panel, the slot cleared to zero weights first when that is fewer than 16.
    fn start(&mut self, w: &Q41Rows, p: usize, slot: usize) -> usize {
        let n = (w.rows - p * PANEL).min(PANEL);
        if n < PANEL {
            self.clear(slot);
        }
        n
    }

    fn panels(&self) -> Panels<'_> {
        Panels { nb: self.nb, qs: &self.qs, d: &self.d }
    }

    /// Zero weights in panel `p` (for a last panel with fewer than 16 rows).
    fn clear(&mut self, p: usize) {
        let n = self.nb;
        self.qs[p * n * STEPS..(p + 1) * n * STEPS].fill([OFFSET; 2 * QK]);
        self.d[p * n * PANEL..(p + 1) * n * PANEL].fill(0);
    }

    /// The quant entries of block `b` of panel `p`.
    #[inline]
    fn quants_mut(&mut self, p: usize, b: usize) -> &mut [[u8; 2 * QK]] {
        &mut self.qs[(p * self.nb + b) * STEPS..][..STEPS]
    }

    /// Set the scale (f16 bits) of row `k` of block `b` of panel `p`.
    #[inline]
    fn set_scale(&mut self, p: usize, b: usize, k: usize, d: u16) {
        self.d[(p * self.nb + b) * PANEL + k] = d;
    }

    /// Set row `k` of block `b` of panel `p`: its offset-binary quants and f16 scale.
    #[inline]
    fn set(&mut self, p: usize, b: usize, k: usize, offset_qs: &[u8; QK], d: u16) {
        for (s, e) in self.quants_mut(p, b).iter_mut().enumerate() {
            e[4 * k..4 * k + 4].copy_from_slice(&offset_qs[4 * s..4 * s + 4]);
        }
        self.set_scale(p, b, k, d);
    }
}

/// The stored quants of a [`Q8Rows`]: entries `start..start + len` of an anonymous
/// mapping, at first the matrix's own, after [`pack`] an arena shared with the model's
/// other matrices. A mapping rather than a `Vec` so that the first copy goes back to the
/// system the moment [`pack`] replaces it, whatever the allocator does with freed memory.
#[derive(Clone, Debug)]
struct Quants {
    map: Arc<memmap2::MmapMut>,
    start: usize,
    len: usize,
}

impl Quants {
    /// A new mapping of `len` entries (zero bytes).
    fn zeroed(len: usize) -> Result<memmap2::MmapMut> {
        memmap2::MmapMut::map_anon(len * 2 * QK).map_err(|e| {
            Error::Model(format!("cannot map {} bytes for weights: {e}", len * 2 * QK))
        })
    }
}

impl Deref for Quants {
    type Target = [[u8; 2 * QK]];

    fn deref(&self) -> &Self::Target {
        &self.map.as_chunks().0[self.start..self.start + self.len]
    }
}

/// Entries per piece of [`pack`]'s parallel copy: one 2 MiB page.
const PIECE: usize = (2 << 20) / (2 * QK);

/// Bytes of matrices [`pack`] copies before unmapping their own copies.
const BATCH_BYTES: usize = 16 << 20;

/// Below this many bytes of quants [`pack`] leaves them where they are: a 2 MiB page
/// is the point of the arena.
const ARENA_MIN_BYTES: usize = 4 << 20;

/// Move the quants of `weights` into one anonymous mapping that the kernel is asked
/// to back with 2 MiB pages (`madvise(MADV_HUGEPAGE)`, honoured where transparent huge
/// pages are `always` or `madvise`, the usual default). Decode reads every weight once
/// per token: with 4 KiB pages that is a TLB miss every 4 KiB (35,000 per token for
/// SmolLM2), and a model's matrices are mostly too small (under 1 MiB each in SmolLM2)
/// to get huge pages one by one. Only where the bytes live changes; if the mapping
/// cannot be made the weights stay where they are.
pub(crate) fn pack(weights: &mut [&mut Q8Rows]) {
    pack_in_batches(weights, BATCH_BYTES);
}

/// [`pack`], copying about `batch` bytes of matrices at a time.
fn pack_in_batches(weights: &mut [&mut Q8Rows], batch: usize) {
    let total: usize = weights.iter().map(|w| w.qs.len()).sum();
    if total * 2 * QK < ARENA_MIN_BYTES {
        return;
    }
    let Ok(mut map) = memmap2::MmapMut::map_anon(total * 2 * QK) else {
        return;
    };
    // A hint: refused (an old kernel, THP `never`) the arena still works, with 4 KiB
    // pages. It has to come before the first write, which is when pages are chosen.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    // The first write to each 2 MiB page is when the kernel zeroes it (on some VMs also
    // when the host backs it, the bulk of the cost), so the copy runs on the current
    // rayon pool in page-sized pieces, a batch of matrices at a time; each matrix's own
    // mapping is unmapped once its batch is copied (its quants point at an empty
    // placeholder until the arena is shared), so the copy never holds much more than
    // one set of weights.
    let Ok(empty) = memmap2::MmapMut::map_anon(0) else {
        return;
    };
    let empty = Arc::new(empty);
    let mut lens = Vec::with_capacity(weights.len());
    let mut rest = map.as_chunks_mut::<{ 2 * QK }>().0;
    let mut i = 0;
    while i < weights.len() {
        let (mut j, mut bytes, mut pieces) = (i, 0, Vec::new());
        while j < weights.len() && (j == i || bytes < batch) {
            let src = &weights[j].qs;
            let (dst, tail) = std::mem::take(&mut rest).split_at_mut(src.len());
            rest = tail;
            pieces.extend(dst.chunks_mut(PIECE).zip(src.chunks(PIECE)));
            bytes += src.len() * 2 * QK;
            j += 1;
        }
        pieces.into_par_iter().for_each(|(dst, src)| dst.copy_from_slice(src));
        for w in &mut weights[i..j] {
            lens.push(w.qs.len());
            w.qs = Quants { map: Arc::clone(&empty), start: 0, len: 0 };
        }
        i = j;
    }
    let map = Arc::new(map);
    let mut start = 0;
    for (w, len) in weights.iter_mut().zip(lens) {
        w.qs = Quants { map: Arc::clone(&map), start, len };
        start += len;
    }
}

/// Q4_1 weight rows kept in their 20-byte form, served with Q8_0 numerics.
#[derive(Clone, Debug)]
pub(crate) struct Q41Rows {
    rows: usize,
    nb: usize,
    /// Scales (f16 bits) with [`SLOW`] marking blocks whose table needs the exact form.
    d: Vec<u16>,
    m: Vec<u16>,
    /// Nibbles by pairs of rows, `[a 16, b 16]` per block, in panel order: the eight
    /// pairs of a panel's block one after another ([`Q41Rows::pair`]), so requantising
    /// a panel reads one stream (with the pairs' own blocks in a row it read eight, and
    /// waited on them).
    qs: Vec<[u8; 32]>,
}

/// The offset-binary bias of stored Q8_0 quants: byte `q ^ 0x80` is `q + 128`.
const OFFSET: u8 = 0x80;

/// The kernel level this process runs (decided once): the best this CPU has, or a
/// lower one named by `SWITCHYARD_KERNELS` (`avx2` or `portable`), to measure or rule
/// out a kernel on a machine that has a better one.
pub(crate) fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let best = detect();
        let Ok(asked) = std::env::var("SWITCHYARD_KERNELS") else { return best };
        match parse_level(&asked) {
            Some(level) => level.min(best),
            None => {
                tracing::warn!(
                    value = asked,
                    "SWITCHYARD_KERNELS is not one of avx512, avx2, portable; using the best level"
                );
                best
            }
        }
    })
}

impl Level {
    /// The level's name, as `SWITCHYARD_KERNELS` takes it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Level::Avx512 => "avx512",
            Level::Avx2 => "avx2",
            Level::Portable => "portable",
        }
    }
}

/// A level by the name `SWITCHYARD_KERNELS` takes ([`Level::name`], any case).
fn parse_level(name: &str) -> Option<Level> {
    let name = name.trim();
    [Level::Avx512, Level::Avx2, Level::Portable]
        .into_iter()
        .find(|level| level.name().eq_ignore_ascii_case(name))
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    let avx512 = avx2
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vbmi");
    if avx512 {
        Level::Avx512
    } else if avx2 {
        Level::Avx2
    } else {
        Level::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Portable
}

impl QuantActs {
    /// Quantise `m` rows of `k` values (`k` a multiple of 32).
    pub(crate) fn new(x: &[f32], m: usize, k: usize) -> Self {
        let mut q = QuantActs::default();
        q.fill(x, m, k);
        q
    }

    /// Quantise into this value, reusing its buffers.
    pub(crate) fn fill(&mut self, x: &[f32], m: usize, k: usize) {
        debug_assert!(k.is_multiple_of(QK) && x.len() >= m * k);
        let nb = k / QK;
        self.m = m;
        self.nb = nb;
        self.d.clear();
        self.d.resize(m * nb, 0.0);
        self.blocks.clear();
        self.blocks.resize(m * nb, ZERO_ACT);
        let mut bytes = [0u8; 34];
        let fast = cfg!(target_arch = "x86_64") && level() == Level::Avx512;
        for ((vals, d), block) in x[..m * k].chunks_exact(QK).zip(&mut self.d).zip(&mut self.blocks)
        {
            let Ok(vals) = <&[f32; QK]>::try_from(vals) else { continue };
            #[cfg(target_arch = "x86_64")]
            if fast {
                // SAFETY: `level` checked AVX-512 (which includes F16C here).
                #[allow(unsafe_code)]
                let bits = unsafe { avx512::quantize_block(vals, &mut block.qs) };
                *d = f16::from_bits(bits).to_f32();
            }
            if !fast {
                crate::quant::encode_q8_0(vals, &mut bytes);
                *d = f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
                for (q, b) in block.qs.iter_mut().zip(&bytes[2..]) {
                    *q = i8::from_le_bytes([*b]);
                }
            }
            block.neg_sum = -128 * block.qs.iter().map(|&v| i32::from(v)).sum::<i32>();
        }
    }
}

impl Q8Rows {
    /// From GGUF Q8_0 bytes (34 per block: f16 scale, 32 quants), `rows x cols`.
    pub(crate) fn from_gguf_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        let nb = blocks_of(cols)?;
        check_len(bytes, rows * nb, 34, "Q8_0")?;
        let panels = rows.div_ceil(PANEL);
        let mut d = vec![0u16; panels * nb * PANEL];
        let len = panels * nb * STEPS;
        let mut map = Quants::zeroed(len)?;
        // Panels in parallel (on the loading pool); a last panel with fewer than 16
        // rows is padded with zero quants (offset 128) and zero scales.
        let dst = map.as_chunks_mut::<{ 2 * QK }>().0.par_chunks_mut(nb * STEPS);
        let src = bytes[..rows * nb * 34].par_chunks(PANEL * nb * 34);
        dst.zip(d.par_chunks_mut(nb * PANEL)).zip(src).for_each(|((qs, d), src)| {
            if src.len() < PANEL * nb * 34 {
                qs.fill([OFFSET; 2 * QK]);
            }
            for (i, blk) in src.chunks_exact(34).enumerate() {
                let (k, b) = (i / nb, i % nb);
                d[b * PANEL + k] = u16::from_le_bytes([blk[0], blk[1]]);
                for (s, e) in qs[b * STEPS..(b + 1) * STEPS].iter_mut().enumerate() {
                    for t in 0..4 {
                        e[4 * k + t] = blk[2 + 4 * s + t] ^ OFFSET;
                    }
                }
            }
        });
        Ok(Q8Rows { rows, nb, d, qs: Quants { map: Arc::new(map), start: 0, len } })
    }

    /// Outputs.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Inputs.
    pub(crate) fn cols(&self) -> usize {
        self.nb * QK
    }

    /// The stored panels.
    fn panels(&self) -> Panels<'_> {
        Panels { nb: self.nb, qs: &self.qs, d: &self.d }
    }

    /// The quants of block `b` of row `r`.
    fn quants(&self, r: usize, b: usize) -> [i8; QK] {
        let entries = self.panels().quants(r / PANEL, b);
        let k = 4 * (r % PANEL);
        std::array::from_fn(|j| i8::from_le_bytes([entries[j / 4][k + j % 4] ^ OFFSET]))
    }

    /// The scale (f16 bits) of block `b` of row `r`.
    fn scale(&self, r: usize, b: usize) -> u16 {
        self.panels().scales(r / PANEL, b)[r % PANEL]
    }

    /// Dequantise row `r` (candle's `to_float`: `q * d`).
    pub(crate) fn row_into(&self, r: usize, out: &mut [f32]) {
        for (b, o) in out.chunks_exact_mut(QK).enumerate().take(self.nb) {
            let d = f16::from_bits(self.scale(r, b)).to_f32();
            for (o, q) in o.iter_mut().zip(self.quants(r, b)) {
                *o = f32::from(q) * d;
            }
        }
    }
}

/// Where block `b` of row pair `pair` of a Q4_1 matrix of `nb` blocks per row is stored.
fn pair_index(nb: usize, pair: usize, b: usize) -> usize {
    let pairs = PANEL / 2;
    ((pair / pairs) * nb + b) * pairs + pair % pairs
}

impl Q41Rows {
    /// From GGUF Q4_1 bytes (20 per block: f16 scale, f16 min, 16 nibble pairs).
    /// `None` when some block's Q8_0 requantisation is not determined by its scale and
    /// min alone (its largest magnitude is not at nibble 0 or 15) or its scale is
    /// negative: the caller materialises Q8_0 then.
    pub(crate) fn from_gguf_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Option<Self>> {
        let nb = blocks_of(cols)?;
        check_len(bytes, rows * nb, 20, "Q4_1")?;
        let mut d = Vec::with_capacity(rows * nb);
        let mut m = Vec::with_capacity(rows * nb);
        let mut qs = vec![[0u8; 32]; rows.div_ceil(PANEL) * nb * PANEL / 2];
        for (i, b) in bytes.chunks_exact(20).enumerate() {
            let (bd, bm) = (u16::from_le_bytes([b[0], b[1]]), u16::from_le_bytes([b[2], b[3]]));
            let mut q = [0u8; 16];
            q.copy_from_slice(&b[4..20]);
            if bd & SLOW != 0 || !extremes_at_ends(bd, bm, &q) {
                return Ok(None);
            }
            let exact = q41_table(bd, bm).0;
            let fast = q41_fast_table(bd, bm);
            let same = exact.iter().zip(&fast).all(|(&e, &f)| i32::from(e) == f);
            d.push(if same { bd } else { bd | SLOW });
            m.push(bm);
            let (r, blk) = (i / nb, i % nb);
            let o = 16 * (r % 2);
            qs[pair_index(nb, r / 2, blk)][o..o + 16].copy_from_slice(&q);
        }
        Ok(Some(Q41Rows { rows, nb, d, m, qs }))
    }

    /// Outputs.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Inputs.
    pub(crate) fn cols(&self) -> usize {
        self.nb * QK
    }

    /// The nibbles of block `b` of row pair `pair` (rows `2 * pair` and `2 * pair + 1`).
    fn pair(&self, pair: usize, b: usize) -> &[u8; 32] {
        &self.qs[pair_index(self.nb, pair, b)]
    }

    /// The 16 nibble bytes of block `b` of row `r`.
    fn nibbles(&self, r: usize, b: usize) -> &[u8; 16] {
        let o = 16 * (r % 2);
        self.pair(r / 2, b)[o..o + 16].try_into().unwrap_or(&[0; 16])
    }

    /// Row `r` as the Q8_0 requantisation dequantises it (what the kernels compute with).
    pub(crate) fn row_into(&self, r: usize, out: &mut [f32]) {
        for (b, o) in out.chunks_exact_mut(QK).enumerate().take(self.nb) {
            let i = r * self.nb + b;
            let (table, scale) = q41_table(self.d[i], self.m[i]);
            let qs = self.nibbles(r, b);
            for j in 0..16 {
                o[j] = f32::from(table[usize::from(qs[j] & 0x0F)]) * scale;
                o[j + 16] = f32::from(table[usize::from(qs[j] >> 4)]) * scale;
            }
        }
    }
}

/// `out[(j - rows.start) * m + i] = w[j] . x[i]` for `j` in `rows`, every activation row
/// `i` (column-major, so a task owns one contiguous slice). `rows.start` must be a
/// multiple of [`PANEL`] (rows are stored by panels).
pub(crate) fn matmul_q8(w: &Q8Rows, rows: Range<usize>, x: &QuantActs, out: &mut [f32]) {
    debug_assert!(rows.end <= w.rows && x.nb == w.nb);
    matmul(Source::Q8(w), rows, x, out);
}

/// [`matmul_q8`] for Q4_1 weights with their Q8_0 numerics.
pub(crate) fn matmul_q41(w: &Q41Rows, rows: Range<usize>, x: &QuantActs, out: &mut [f32]) {
    debug_assert!(rows.end <= w.rows && x.nb == w.nb);
    matmul(Source::Q41(w), rows, x, out);
}

/// Both formats' entry: the best kernel this CPU has.
fn matmul(w: Source<'_>, rows: Range<usize>, x: &QuantActs, out: &mut [f32]) {
    assert!(rows.start.is_multiple_of(PANEL), "kernel ranges start at a panel");
    debug_assert!(out.len() >= rows.len() * x.m);
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: `level` checked the CPU features; the function checks its bounds.
        #[allow(unsafe_code)]
        Level::Avx512 => return unsafe { avx512::matmul(w, rows, x, out) },
        // SAFETY: as above.
        #[allow(unsafe_code)]
        Level::Avx2 => return unsafe { avx2::matmul(w, rows, x, out) },
        Level::Portable => {}
    }
    portable(w, rows, x, out);
}

/// A weight the kernels read.
#[derive(Clone, Copy)]
enum Source<'a> {
    Q8(&'a Q8Rows),
    Q41(&'a Q41Rows),
}

impl Source<'_> {
    fn rows(&self) -> usize {
        match self {
            Source::Q8(w) => w.rows,
            Source::Q41(w) => w.rows,
        }
    }

    fn nb(&self) -> usize {
        match self {
            Source::Q8(w) => w.nb,
            Source::Q41(w) => w.nb,
        }
    }

    /// Block `b` of row `r` as Q8_0 quants and their scale (widened f16).
    fn block(&self, r: usize, b: usize) -> ([i8; QK], f32) {
        match self {
            Source::Q8(w) => (w.quants(r, b), f16::from_bits(w.scale(r, b)).to_f32()),
            Source::Q41(w) => {
                let i = r * w.nb + b;
                let (table, scale) = q41_table(w.d[i], w.m[i]);
                let nib = w.nibbles(r, b);
                let mut q = [0i8; QK];
                for j in 0..16 {
                    q[j] = table[usize::from(nib[j] & 0x0F)];
                    q[j + 16] = table[usize::from(nib[j] >> 4)];
                }
                (q, scale)
            }
        }
    }
}

fn blocks_of(cols: usize) -> Result<usize> {
    if cols > 0 && cols.is_multiple_of(QK) {
        Ok(cols / QK)
    } else {
        Err(Error::Model(format!("a row of {cols} values is not a whole number of blocks")))
    }
}

fn check_len(bytes: &[u8], blocks: usize, size: usize, name: &str) -> Result<()> {
    if bytes.len() == blocks * size {
        Ok(())
    } else {
        Err(Error::Model(format!(
            "{name} tensor data is {} bytes, expected {}",
            bytes.len(),
            blocks * size
        )))
    }
}

/// The value of nibble `n` as `quant::decode_block` computes it.
fn q41_value(n: u8, d: f32, m: f32) -> f32 {
    f32::from(n) * d + m
}

/// `amax` of a Q4_1 block as its Q8_0 requantisation computes it, assuming the extremes
/// sit at nibbles 0 and 15 (the values are monotonic in the nibble).
fn q41_amax(d: f32, m: f32) -> f32 {
    let (a, b) = (q41_value(0, d, m).abs(), q41_value(15, d, m).abs());
    if a > b { a } else { b }
}

/// Whether [`q41_amax`] is the block's true `amax`.
fn extremes_at_ends(d: u16, m: u16, qs: &[u8; 16]) -> bool {
    let (d, m) = (f16::from_bits(d).to_f32(), f16::from_bits(m).to_f32());
    let mut amax = 0f32;
    for &q in qs {
        for n in [q & 0x0F, q >> 4] {
            let a = q41_value(n, d, m).abs();
            amax = if a > amax { a } else { amax };
        }
    }
    amax.to_bits() == q41_amax(d, m).to_bits()
}

/// The Q8_0 quant of each nibble value and the Q8_0 scale (widened) of a Q4_1 block:
/// `quant::encode_q8_0` applied to `quant::decode_block`'s values.
#[allow(clippy::cast_possible_truncation)]
fn q41_table(d: u16, m: u16) -> ([i8; 16], f32) {
    let (d, m) = (f16::from_bits(d & !SLOW).to_f32(), f16::from_bits(m).to_f32());
    let d8 = q41_amax(d, m) / 127.0;
    let id = if d8 != 0.0 { 1.0 / d8 } else { 0.0 };
    let mut table = [0i8; 16];
    for (n, t) in (0u8..16).zip(&mut table) {
        let x = q41_value(n, d, m) * id;
        *t = (x + 0.499_999_97f32.copysign(x)).trunc() as i8;
    }
    (table, f16::from_f32(d8).to_f32())
}

/// The AVX-512 kernel's short form of [`q41_table`] (as `i32`, before narrowing):
/// `round_ties_even(fma(n, d * id, m * id))`. Equal to the exact table for all but a
/// few blocks, which [`SLOW`] marks.
#[allow(clippy::cast_possible_truncation)]
fn q41_fast_table(d: u16, m: u16) -> [i32; 16] {
    let (d, m) = (f16::from_bits(d & !SLOW).to_f32(), f16::from_bits(m).to_f32());
    let d8 = q41_amax(d, m) / 127.0;
    let id = if d8 != 0.0 { 1.0 / d8 } else { 0.0 };
    let (a, b) = (d * id, m * id);
    std::array::from_fn(|n| {
        #[allow(clippy::cast_precision_loss)]
        let x = (n as f32).mul_add(a, b).round_ties_even();
        // `vcvtps2dq`: out-of-range and NaN give i32::MIN.
        if x.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&x) {
            i32::MIN
        } else {
            x as i32
        }
    })
}

/// `f32` dot product in eight independent lanes (so LLVM vectorises it): lane `j` sums
/// `a[8c + j] * b[8c + j]` over the chunks `c`, then [`dot_finish`]. The attention
/// kernels ([`dot_rows`]) compute exactly this, lane for lane.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    dot_finish(&acc, a, b)
}

/// The end of [`dot`]: the lanes summed in order, then the tail past the last whole
/// chunk, one product at a time.
#[inline]
fn dot_finish(lanes: &[f32; 8], a: &[f32], b: &[f32]) -> f32 {
    let mut sum: f32 = lanes.iter().sum();
    for i in a.len() / 8 * 8..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

/// `out[t] = dot(q, k[t * stride..][..q.len()])` for every `t` in `0..out.len()`:
/// attention scores of one query over a KV cache's keys. Bit-identical to [`dot`]
/// (the same lane sums, multiply then add, in the same order), four keys at a time
/// with AVX2 where the CPU has it. Panics if `k` is too short.
pub(crate) fn dot_rows(q: &[f32], k: &[f32], stride: usize, out: &mut [f32]) {
    if let Some(last) = out.len().checked_sub(1) {
        assert!(last * stride + q.len() <= k.len(), "keys cover every row");
    }
    #[cfg(target_arch = "x86_64")]
    if level() != Level::Portable {
        // SAFETY: `level` checked AVX2 (both non-portable levels have it).
        #[allow(unsafe_code)]
        return unsafe { avx2::dot_rows(q, k, stride, out) };
    }
    for (t, o) in out.iter_mut().enumerate() {
        *o = dot(q, &k[t * stride..][..q.len()]);
    }
}

/// `v[i] = v[i].exp()` for every value: the same values as `f32::exp` (glibc's `expf`
/// where the CPU has FMA), sixteen at a time where the CPU has AVX-512 (one `expf` call
/// per value cost ~4 ns, several percent of a batched decode step in the gated
/// activation and the attention softmax).
pub(crate) fn exp_in_place(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 {
        // SAFETY: `level` checked AVX-512 (F, DQ) and FMA.
        #[allow(unsafe_code)]
        unsafe {
            avx512::exp_in_place(v)
        };
        return;
    }
    v.iter_mut().for_each(|x| *x = x.exp());
}

/// SiLU-gated values, `g[i] = g[i] / (1 + exp(-g[i])) * u[i]`: the same operations per
/// value as the scalar form (the exponential as [`exp_in_place`] computes it).
pub(crate) fn silu_mul(g: &mut [f32], u: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 {
        // SAFETY: `level` checked AVX-512 (F, DQ) and FMA.
        #[allow(unsafe_code)]
        unsafe {
            avx512::silu_mul(g, u)
        };
        return;
    }
    g.iter_mut().zip(u).for_each(|(g, u)| *g = *g / (1.0 + (-*g).exp()) * u);
}

/// `out = sum_t w[t] * v[t * stride..][..64]` with the model's weighted-sum arithmetic
/// (`out[j] = 0.0`, then `out[j] += w[t] * v_t[j]` for each `t` in turn, multiply then
/// add) in 512-bit registers, when the CPU has AVX-512; returns false (and leaves
/// `out` alone) otherwise, for the caller's portable loop. Panics if `v` is too short.
pub(crate) fn weighted_sum_64(out: &mut [f32; 64], w: &[f32], v: &[f32], stride: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 {
        if let Some(last) = w.len().checked_sub(1) {
            assert!(last * stride + 64 <= v.len(), "values cover every row");
        }
        // SAFETY: `level` checked AVX-512; the assertion above covers the loads.
        #[allow(unsafe_code)]
        unsafe {
            avx512::weighted_sum_64(out, w, v, stride)
        };
        return true;
    }
    let _ = (out, w, v, stride);
    false
}

/// [`dot_rows`] for several queries over the same keys (the query heads of one KV
/// group): `out[g * n + t] = dot(qs[g], k[t * stride..])` for `t` in `0..n`, bit-identical
/// to [`dot_rows`] per query. One query's dot products wait on the latency of their
/// adds; 2-4 queries at once interleave independent chains (AVX-512 CPUs), so the
/// group costs about what one query did. Panics if `k` is too short or the queries
/// differ in length.
pub(crate) fn dot_rows_many(qs: &[&[f32]], k: &[f32], stride: usize, out: &mut [f32], n: usize) {
    let hd = qs.first().map_or(0, |q| q.len());
    assert!(qs.iter().all(|q| q.len() == hd) && out.len() >= qs.len() * n, "query shapes");
    if let Some(last) = n.checked_sub(1) {
        assert!(last * stride + hd <= k.len(), "keys cover every row");
    }
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 {
        // SAFETY (all arms): `level` checked AVX-512 F/VL; the assertions above cover
        // the key rows.
        #[allow(unsafe_code)]
        match *qs {
            [a, b] => return unsafe { avx512::dot_rows_many([a, b], k, stride, out, n) },
            [a, b, c] => return unsafe { avx512::dot_rows_many([a, b, c], k, stride, out, n) },
            [a, b, c, d] => {
                return unsafe { avx512::dot_rows_many([a, b, c, d], k, stride, out, n) };
            }
            _ => {}
        }
    }
    for (q, o) in qs.iter().zip(out.chunks_mut(n.max(1))) {
        dot_rows(q, k, stride, &mut o[..n]);
    }
}

/// [`weighted_sum_64`] for 2-4 heads sharing the values, each with its own weights
/// (the same arithmetic per head; their add chains interleaved). Returns false, doing
/// nothing, where the CPU lacks AVX-512 or the head count is outside 2-4.
pub(crate) fn weighted_sum_64_many(
    out: &mut [&mut [f32; 64]],
    w: &[&[f32]],
    v: &[f32],
    stride: usize,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 && out.len() == w.len() {
        let n = w.iter().map(|w| w.len()).min().unwrap_or(0);
        assert!(w.iter().all(|w| w.len() == n), "weights of one length");
        if let Some(last) = n.checked_sub(1) {
            assert!(last * stride + 64 <= v.len(), "values cover every row");
        }
        // SAFETY (all arms): `level` checked AVX-512; the assertions cover the loads.
        #[allow(unsafe_code)]
        match (out, w) {
            ([a, b], &[wa, wb]) => {
                unsafe { avx512::weighted_sum_64_many([a, b], [wa, wb], v, stride) };
                return true;
            }
            ([a, b, c], &[wa, wb, wc]) => {
                unsafe { avx512::weighted_sum_64_many([a, b, c], [wa, wb, wc], v, stride) };
                return true;
            }
            ([a, b, c, d], &[wa, wb, wc, wd]) => {
                unsafe {
                    avx512::weighted_sum_64_many([a, b, c, d], [wa, wb, wc, wd], v, stride);
                };
                return true;
            }
            _ => {}
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (out, w, v, stride);
    false
}

/// The reference: the same arithmetic as the SIMD kernels, one value at a time.
fn portable(w: Source<'_>, rows: Range<usize>, x: &QuantActs, out: &mut [f32]) {
    let (m, nb) = (x.m, x.nb);
    for (jo, r) in rows.enumerate() {
        for i in 0..m {
            let mut acc = 0f32;
            for b in 0..nb {
                let (q, dw) = w.block(r, b);
                let xq = &x.blocks[i * nb + b].qs;
                let sum: i32 = q.iter().zip(xq).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
                // Exact: |sum| <= 32 * 128 * 127 < 2^24.
                #[allow(clippy::cast_precision_loss)]
                let sum = sum as f32;
                acc = (dw * x.d[i * nb + b]).mul_add(sum, acc);
            }
            out[jo * m + i] = acc;
        }
    }
    debug_assert!(w.rows() >= 1 && w.nb() == nb);
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::GgmlType;
    use candle_core::quantized::k_quants::{BlockQ4_1, BlockQ8_0};
    use proptest::prelude::*;

    use super::*;

    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed.max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    #[allow(unsafe_code)]
    fn raw<T>(blocks: &[T]) -> Vec<u8> {
        let len = std::mem::size_of_val(blocks);
        let mut out = vec![0u8; len];
        // SAFETY: candle's blocks are `#[repr(C)]` plain data; we copy their bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(blocks.as_ptr().cast::<u8>(), out.as_mut_ptr(), len)
        };
        out
    }

    fn q8_blocks(bytes: &[u8]) -> Vec<BlockQ8_0> {
        let mut out = vec![BlockQ8_0::zeros(); bytes.len() / 34];
        crate::quant::copy_bytes_into(bytes, &mut out);
        out
    }

    /// candle's dot products of every (weight row, activation row) pair.
    fn candle_reference(w8: &[BlockQ8_0], rows: usize, x: &[f32], m: usize, k: usize) -> Vec<f32> {
        let nb = k / QK;
        let mut xq = vec![BlockQ8_0::zeros(); m * nb];
        BlockQ8_0::from_float(x, &mut xq);
        let mut out = vec![0f32; rows * m];
        for j in 0..rows {
            for i in 0..m {
                out[j * m + i] =
                    BlockQ8_0::vec_dot(k, &w8[j * nb..(j + 1) * nb], &xq[i * nb..(i + 1) * nb]);
            }
        }
        out
    }

    /// The kernels' arithmetic written out over GGUF Q8_0 bytes: per block the exact
    /// integer sum, then `acc = (d_w * d_x).mul_add(sum, acc)` in block order. Also
    /// the magnitude of the terms candle adds (per block eight lane sums of four
    /// products), to bound how far its order of rounding may land.
    fn exact_reference(bytes: &[u8], rows: usize, x: &QuantActs) -> (Vec<f32>, Vec<f32>) {
        let (m, nb) = (x.m, x.nb);
        let mut out = vec![0f32; rows * m];
        let mut mag = vec![0f32; rows * m];
        for r in 0..rows {
            for i in 0..m {
                let (mut acc, mut abs) = (0f32, 0f32);
                for b in 0..nb {
                    let blk = &bytes[(r * nb + b) * 34..][..34];
                    let dw = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    let xq = &x.blocks[i * nb + b].qs;
                    let sum: i32 = blk[2..]
                        .iter()
                        .zip(xq)
                        .map(|(&w, &a)| i32::from(w as i8) * i32::from(a))
                        .sum();
                    let s = dw * x.d[i * nb + b];
                    acc = s.mul_add(sum as f32, acc);
                    let lanes: i32 = (0..8)
                        .map(|l| {
                            let four = (4 * l..4 * l + 4)
                                .map(|t| i32::from(blk[2 + t] as i8) * i32::from(xq[t]));
                            four.sum::<i32>().abs()
                        })
                        .sum();
                    abs += (s * lanes as f32).abs();
                }
                out[r * m + i] = acc;
                mag[r * m + i] = abs;
            }
        }
        (out, mag)
    }

    /// Whether `got` is within the rounding of a sum of `nb` block terms whose
    /// magnitudes add up to `mag` (candle rounds in another order).
    fn close(got: f32, want: f32, mag: f32, nb: usize) -> bool {
        (got - want).abs() <= 2.0 * (nb + 4) as f32 * f32::EPSILON * mag + f32::MIN_POSITIVE
    }

    fn every_level() -> Vec<Level> {
        let mut levels = vec![Level::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if matches!(level(), Level::Avx2 | Level::Avx512) {
                levels.push(Level::Avx2);
            }
            if level() == Level::Avx512 {
                levels.push(Level::Avx512);
            }
        }
        levels
    }

    #[allow(unsafe_code)]
    fn run(level: Level, w: Source<'_>, rows: Range<usize>, x: &QuantActs) -> Vec<f32> {
        let mut out = vec![f32::NAN; rows.len() * x.m];
        match level {
            Level::Portable => portable(w, rows, x, &mut out),
            // SAFETY: `every_level` only lists levels this CPU has.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { avx2::matmul(w, rows, x, &mut out) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe { avx512::matmul(w, rows, x, &mut out) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!(),
        }
        out
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    fn check_q8(rows: usize, nb: usize, m: usize, seed: u64) {
        let k = nb * QK;
        let w = values(rows * k, seed, 2.0);
        let mut wq = vec![BlockQ8_0::zeros(); rows * nb];
        BlockQ8_0::from_float(&w, &mut wq);
        let bytes = raw(&wq);
        let packed = Q8Rows::from_gguf_bytes(&bytes, rows, k).unwrap();
        let x = values(m * k, seed + 1, 30.0);
        let acts = QuantActs::new(&x, m, k);
        let (want, mag) = exact_reference(&bytes, rows, &acts);
        let candle = candle_reference(&wq, rows, &x, m, k);
        for (j, (w, c)) in want.iter().zip(&candle).enumerate() {
            assert!(close(*w, *c, mag[j], nb), "output {j}: {w} vs candle's {c}");
        }
        for level in every_level() {
            let got = run(level, Source::Q8(&packed), 0..rows, &acts);
            assert_eq!(bits(&got), bits(&want), "{level:?} rows={rows} nb={nb} m={m}");
            // A sub-range (from a panel's start, ending inside one) writes the same values.
            let start = if rows > PANEL + 1 { PANEL } else { 0 };
            if rows > 1 {
                let got = run(level, Source::Q8(&packed), start..rows - 1, &acts);
                let want = &want[start * m..(rows - 1) * m];
                assert_eq!(bits(&got), bits(want), "{level:?} sub-range");
            }
        }
        // Rows read back as stored.
        check_rows(|r, out| packed.row_into(r, out), &wq, rows, nb);
    }

    /// Each of `rows` rows that `row_into` gives is bit for bit candle's dequantisation
    /// of the Q8_0 blocks `want`.
    fn check_rows(
        row_into: impl Fn(usize, &mut [f32]),
        want: &[BlockQ8_0],
        rows: usize,
        nb: usize,
    ) {
        let mut row = vec![0f32; nb * QK];
        let mut deq = vec![0f32; nb * QK];
        for r in 0..rows {
            row_into(r, &mut row);
            BlockQ8_0::to_float(&want[r * nb..(r + 1) * nb], &mut deq);
            assert_eq!(bits(&row), bits(&deq), "row {r}");
        }
    }

    fn check_q41(rows: usize, nb: usize, m: usize, seed: u64, wscale: f32, offset: f32) {
        let k = nb * QK;
        let w: Vec<f32> = values(rows * k, seed, wscale).iter().map(|v| v + offset).collect();
        let mut w4 = vec![BlockQ4_1::zeros(); rows * nb];
        BlockQ4_1::from_float(&w, &mut w4);
        let bytes = raw(&w4);
        let Some(packed) = Q41Rows::from_gguf_bytes(&bytes, rows, k).unwrap() else {
            panic!("candle's Q4_1 quantiser put an extreme inside a block")
        };
        let q8_bytes =
            crate::quant::requantize_to_q8_0(candle_core::quantized::GgmlDType::Q4_1, &bytes)
                .unwrap();
        let q8 = q8_blocks(&q8_bytes);
        let x = values(m * k, seed + 1, 3.0);
        let acts = QuantActs::new(&x, m, k);
        let (want, _) = exact_reference(&q8_bytes, rows, &acts);
        for level in every_level() {
            let got = run(level, Source::Q41(&packed), 0..rows, &acts);
            assert_eq!(bits(&got), bits(&want), "{level:?} rows={rows} nb={nb} m={m}");
        }
        // Dequantised rows equal the requantised Q8_0 rows.
        check_rows(|r, out| packed.row_into(r, out), &q8, rows, nb);
    }

    #[test]
    fn activation_quantisation_equals_candles() {
        for (m, k) in [(1, 32), (3, 576), (5, 1536)] {
            let x = values(m * k, m as u64 + 3, 20.0);
            let acts = QuantActs::new(&x, m, k);
            let mut want = vec![BlockQ8_0::zeros(); m * k / QK];
            BlockQ8_0::from_float(&x, &mut want);
            let want = raw(&want);
            for (i, b) in acts.blocks.iter().enumerate() {
                let w = &want[i * 34..(i + 1) * 34];
                assert_eq!(
                    f16::from_le_bytes([w[0], w[1]]).to_f32().to_bits(),
                    acts.d[i].to_bits()
                );
                assert!(b.qs.iter().zip(&w[2..]).all(|(q, v)| q.to_le_bytes()[0] == *v));
                let s: i32 = b.qs.iter().map(|&v| i32::from(v)).sum();
                assert_eq!(b.neg_sum, -128 * s);
            }
        }
    }

    #[test]
    fn activation_quantisation_is_bit_identical_to_encode_q8_0_at_this_cpus_level() {
        // On an AVX-512 CPU this checks `avx512::quantize_block` (through `fill`, as the
        // matmuls use it); elsewhere `fill`'s own conversion of `encode_q8_0`'s bytes.
        let mut blocks: Vec<[f32; QK]> = Vec::new();
        for (seed, scale) in [(1, 1.0), (2, 1e-6), (3, 3e4), (4, 0.5), (5, 1e-30)] {
            let v = values(QK * 64, seed, scale);
            blocks.extend(v.chunks_exact(QK).map(|c| <[f32; QK]>::try_from(c).unwrap()));
        }
        blocks.push([0.0; QK]);
        blocks.push([-0.0; QK]);
        // Exact halves after scaling, the extreme at either sign, a lone value.
        blocks.push(std::array::from_fn(|i| (i as f32 - 16.0) * 0.5));
        blocks.push(std::array::from_fn(|i| if i == 7 { -127.0 } else { i as f32 }));
        blocks.push(std::array::from_fn(|i| if i == 31 { 1e-3 } else { 0.0 }));
        // NaN is no magnitude, wherever it sits (first, last, beside the maximum).
        for at in [0, 15, 16, 31] {
            let mut nan: [f32; QK] = std::array::from_fn(|i| i as f32 - 10.0);
            nan[at] = f32::NAN;
            blocks.push(nan);
        }
        blocks.push([f32::NAN; QK]);
        let flat: Vec<f32> = blocks.iter().flatten().copied().collect();
        let acts = QuantActs::new(&flat, blocks.len(), QK);
        assert_eq!(acts.blocks.len(), blocks.len());
        for ((vals, block), d) in blocks.iter().zip(&acts.blocks).zip(&acts.d) {
            let mut want = [0u8; 34];
            crate::quant::encode_q8_0(vals, &mut want);
            let want_d = f16::from_le_bytes([want[0], want[1]]).to_f32();
            assert_eq!(d.to_bits(), want_d.to_bits(), "{vals:?}");
            let got: Vec<u8> = block.qs.iter().map(|q| q.to_le_bytes()[0]).collect();
            assert_eq!(got, want[2..], "{vals:?}");
        }
    }

    #[test]
    fn dot_rows_many_is_bit_identical_to_dot_per_query() {
        for (hd, n, stride, g) in [
            (64, 9, 64, 3),
            (64, 4, 192, 2),
            (64, 130, 64, 4),
            (19, 6, 23, 3),
            (8, 1, 8, 5),
            (64, 0, 64, 3),
            (64, 7, 64, 1),
        ] {
            let q = values(g * hd, (hd + n) as u64, 2.0);
            let qs: Vec<&[f32]> = q.chunks_exact(hd).collect();
            let k = values(n * stride + hd, n as u64 + 11, 2.0);
            let mut got = vec![f32::NAN; g * n];
            dot_rows_many(&qs, &k, stride, &mut got, n);
            let want: Vec<f32> = qs
                .iter()
                .flat_map(|q| (0..n).map(|t| dot(q, &k[t * stride..][..hd])).collect::<Vec<_>>())
                .collect();
            assert_eq!(bits(&got), bits(&want), "hd={hd} n={n} g={g}");
        }
    }

    #[test]
    fn weighted_sums_of_a_kv_group_are_bit_identical_to_the_plain_loop() {
        for (n, stride, g) in [(7, 64, 3), (1, 192, 2), (130, 64, 4), (0, 64, 3), (5, 64, 5)] {
            let v = values(n * stride + 64, n as u64 + 5, 3.0);
            let w = values(g * n, g as u64 + 1, 1.0);
            let ws: Vec<&[f32]> = if n == 0 { vec![&[]; g] } else { w.chunks_exact(n).collect() };
            let want: Vec<Vec<f32>> = ws
                .iter()
                .map(|w| {
                    let mut o = vec![0f32; 64];
                    for (t, wt) in w.iter().enumerate() {
                        o.iter_mut().zip(&v[t * stride..][..64]).for_each(|(a, b)| *a += wt * b);
                    }
                    o
                })
                .collect();
            let mut got = vec![[f32::NAN; 64]; g];
            let mut outs: Vec<&mut [f32; 64]> = got.iter_mut().collect();
            let done = weighted_sum_64_many(&mut outs, &ws, &v, stride);
            let mut one = [f32::NAN; 64];
            let single = weighted_sum_64(&mut one, ws[0], &v, stride);
            // The kernels serve 2-4 heads (one head) on AVX-512 and decline elsewhere,
            // leaving the caller's plain loop (tested in `model`).
            let fast = level() == Level::Avx512;
            assert_eq!(done, fast && (2..=4).contains(&g), "g={g}");
            assert_eq!(single, fast);
            if done {
                for (got, want) in got.iter().zip(&want) {
                    assert_eq!(bits(got), bits(want), "n={n} g={g}");
                }
            }
            if single {
                assert_eq!(bits(&one), bits(&want[0]), "n={n} one head");
            }
        }
    }

    #[test]
    fn dot_rows_is_bit_identical_to_dot() {
        for (n, count, stride) in
            [(64, 9, 192), (64, 4, 64), (19, 6, 23), (8, 1, 8), (5, 3, 7), (64, 0, 64)]
        {
            let q = values(n, n as u64 + 1, 2.0);
            let k = values(count * stride + n, count as u64 + 7, 2.0);
            let want: Vec<f32> = (0..count).map(|t| dot(&q, &k[t * stride..][..n])).collect();
            let mut got = vec![f32::NAN; count];
            dot_rows(&q, &k, stride, &mut got);
            assert_eq!(bits(&got), bits(&want), "n={n} count={count}");
            // The scalar path, whatever this CPU has.
            let lanes: Vec<f32> = (0..count)
                .map(|t| {
                    let row = &k[t * stride..][..n];
                    let mut acc = [0f32; 8];
                    for c in 0..n / 8 {
                        for j in 0..8 {
                            acc[j] += q[8 * c + j] * row[8 * c + j];
                        }
                    }
                    dot_finish(&acc, &q, row)
                })
                .collect();
            assert_eq!(bits(&lanes), bits(&want));
        }
    }

    /// Weight blocks with zero, huge, tiny, infinite and NaN scales and the extreme
    /// quants (-128, 127), against activation blocks that are zero, huge, tiny, or
    /// sit on rounding ties (huge: scales near the f16 limit): every level and every activation-row count (the 2-4-row
    /// kernels included) gives candle's values (NaN for NaN, any payload).
    #[test]
    fn q8_kernels_agree_on_extreme_blocks() {
        let (rows, nb) = (7, 6);
        let k = nb * QK;
        // Row 5 has a NaN-scaled block and row 6 an infinite one; the other rows mix
        // zero, huge, tiny and plain scales.
        let scales = [0.0, 65504.0, 6.0e-8, 0.5, -1.25, 0.01];
        let scale = |r: usize, b: usize| match (r, b) {
            (5, 2) => f32::NAN,
            (6, 4) => f32::INFINITY,
            _ => scales[(r * 3 + b) % scales.len()],
        };
        let mut bytes = vec![0u8; rows * nb * 34];
        let mut seed = 5u64;
        for (i, blk) in bytes.chunks_exact_mut(34).enumerate() {
            let d = half::f16::from_f32(scale(i / nb, i % nb));
            blk[..2].copy_from_slice(&d.to_le_bytes());
            for (j, q) in blk[2..].iter_mut().enumerate() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *q = match (i + j) % 7 {
                    0 => 0x80,
                    1 => 0x7f,
                    _ => (seed >> 56) as u8,
                };
            }
        }
        let packed = Q8Rows::from_gguf_bytes(&bytes, rows, k).unwrap();
        for m in 1..=5 {
            let mut x = values(m * k, 77 + m as u64, 3.0);
            for (b, block) in x.chunks_mut(QK).enumerate() {
                match (b + m) % 5 {
                    0 => block.fill(0.0),
                    1 => block.iter_mut().for_each(|v| *v *= 1.0e5),
                    2 => block.iter_mut().for_each(|v| *v *= 1.0e-30),
                    // Multiples of amax / 254: quants exactly half-way before rounding.
                    3 => block.iter_mut().enumerate().for_each(|(j, v)| {
                        *v = (j as f32 - 15.5) * (127.0 / 254.0) * 2.0 / 31.0 * 127.0
                    }),
                    _ => {}
                }
            }
            let acts = QuantActs::new(&x, m, k);
            let (want, _) = exact_reference(&bytes, rows, &acts);
            assert!(want[..5 * m].iter().all(|v| v.is_finite()), "rows 0-4 stay finite");
            assert!(want[5 * m..].iter().all(|v| !v.is_finite()), "rows 5-6 do not");
            for level in every_level() {
                let got = run(level, Source::Q8(&packed), 0..rows, &acts);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                        "{level:?} m={m} output {i}: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// Whether `f32::exp` here is glibc's FMA build of `expf`, which [`exp_in_place`]
    /// reproduces bit for bit (elsewhere it is within one ulp of it).
    fn libm_is_glibc_fma() -> bool {
        cfg!(all(target_env = "gnu", target_arch = "x86_64")) && level() == Level::Avx512
    }

    fn ulps(a: f32, b: f32) -> u32 {
        let key = |v: f32| {
            let b = v.to_bits().cast_signed();
            if b < 0 { i32::MIN - b } else { b }
        };
        key(a).abs_diff(key(b))
    }

    /// Inputs for the exponential: a sweep over the whole float range (every 4099th
    /// bit pattern), the edges of the fast range (85), overflow and underflow
    /// boundaries, zeros, infinities, NaN, and values near multiples of `ln 2 / 32`
    /// (table boundaries, where `round` ties would bite).
    fn exp_inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (0..u32::MAX / 4099).map(|i| f32::from_bits(i * 4099)).collect();
        v.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::MIN_POSITIVE,
            1.0e-45,
            84.999_99,
            85.0,
            -85.0,
            88.72,
            88.73,
            -103.0,
            -104.0,
            -87.5,
            f32::MAX,
            f32::MIN,
        ]);
        for k in -3000..3000 {
            let x = k as f32 * (std::f32::consts::LN_2 / 32.0);
            v.extend([x, f32::from_bits(x.to_bits() + 1), f32::from_bits(x.to_bits().max(1) - 1)]);
        }
        v
    }

    /// Bit-identical where libm is glibc's FMA `expf` (what the vector form
    /// reproduces), within `max_ulps` elsewhere; NaN matches NaN.
    fn agrees(got: f32, want: f32, max_ulps: u32) -> bool {
        (got.is_nan() && want.is_nan())
            || if libm_is_glibc_fma() {
                got.to_bits() == want.to_bits()
            } else {
                ulps(got, want) <= max_ulps
            }
    }

    #[test]
    fn exp_in_place_equals_libm_expf() {
        let x = exp_inputs();
        for len in [x.len(), 1, 15, 17, 33] {
            let mut got = x[..len].to_vec();
            exp_in_place(&mut got);
            for (i, (g, x)) in got.iter().zip(&x).enumerate() {
                let want = x.exp();
                assert!(agrees(*g, want, 1), "exp({x:e}) = {g:e}, libm {want:e} (input {i})");
            }
        }
    }

    #[test]
    fn silu_mul_equals_the_scalar_form() {
        let x = exp_inputs();
        let u = values(x.len(), 3, 4.0);
        for len in [x.len(), 1, 7, 16, 31] {
            let mut got = x[..len].to_vec();
            silu_mul(&mut got, &u[..len]);
            for (i, ((g, x), u)) in got.iter().zip(&x).zip(&u).enumerate() {
                let want = x / (1.0 + (-x).exp()) * u;
                assert!(
                    agrees(*g, want, 2),
                    "silu({x:e}) * {u} = {g:e}, scalar {want:e} (input {i})"
                );
            }
        }
    }

    /// Every one of the 2^32 inputs: bit-identical to glibc's FMA `expf` where this
    /// build reproduces it, within one ulp elsewhere.
    #[test]
    #[ignore = "all 2^32 inputs, ~1 minute in release: run with --run-ignored only"]
    fn exp_in_place_equals_libm_expf_for_every_input() {
        let mut buf = vec![0f32; 1 << 16];
        let mut bad = 0u64;
        for hi in 0..=u16::MAX {
            let base = u32::from(hi) << 16;
            for (i, b) in buf.iter_mut().enumerate() {
                *b = f32::from_bits(base | i as u32);
            }
            exp_in_place(&mut buf);
            for (i, g) in buf.iter().enumerate() {
                let want = f32::from_bits(base | i as u32).exp();
                if !agrees(*g, want, 1) {
                    bad += 1;
                }
            }
        }
        assert_eq!(bad, 0);
    }

    #[test]
    fn q8_kernels_are_exact_block_sums_close_to_candles() {
        // Row counts with and without a tail panel, one to three panels (the kernels
        // take two at a time); one to nine activation rows (tails of the four-row
        // activation groups).
        for (rows, nb) in [(1, 1), (4, 2), (7, 18), (13, 48), (37, 5), (64, 3)] {
            for m in [1, 2, 3, 4, 5, 9] {
                check_q8(rows, nb, m, (rows * 100 + nb * 10 + m) as u64);
            }
        }
    }

    #[test]
    fn q41_kernels_are_bit_identical_to_the_requantised_q8_0() {
        for (rows, nb) in [(1, 1), (4, 2), (7, 18), (13, 48), (32, 3), (37, 5)] {
            for m in [1, 3, 4, 6] {
                check_q41(rows, nb, m, (rows * 7 + nb * 3 + m) as u64, 0.5, 0.0);
            }
        }
        // All-positive and all-negative blocks (amax at one end), tiny and big scales.
        check_q41(8, 4, 2, 5, 0.01, 0.03);
        check_q41(8, 4, 2, 6, 0.01, -0.03);
        check_q41(8, 4, 2, 7, 1e-4, 0.0);
        check_q41(8, 4, 2, 8, 300.0, 100.0);
    }

    #[test]
    fn kernel_levels_are_named_and_ordered() {
        assert_eq!(parse_level("AVX2 "), Some(Level::Avx2));
        assert_eq!(parse_level("portable"), Some(Level::Portable));
        assert_eq!(parse_level("avx512"), Some(Level::Avx512));
        assert_eq!(parse_level("sse4"), None);
        for l in [Level::Portable, Level::Avx2, Level::Avx512] {
            assert_eq!(parse_level(l.name()), Some(l));
        }
        // A level asked for never exceeds what the CPU has.
        assert_eq!(Level::Avx512.min(Level::Avx2), Level::Avx2);
        assert!(Level::Portable < Level::Avx2 && Level::Avx2 < Level::Avx512);
    }

    #[test]
    fn packed_weights_read_and_multiply_as_before() {
        // Three matrices, 6 MiB of quants in all (past ARENA_MIN_BYTES), the first with
        // a row count that leaves its last panel one row and 15 rows of zeros, and a
        // little over one 2 MiB piece of the copy.
        let shapes = [(1025usize, 2048usize), (1024, 2048), (1024, 2048)];
        let mut mats: Vec<(Vec<BlockQ8_0>, Q8Rows)> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(rows, k))| {
                let w = values(rows * k, 7 + i as u64, 2.0);
                let mut wq = vec![BlockQ8_0::zeros(); rows * k / QK];
                BlockQ8_0::from_float(&w, &mut wq);
                let q = Q8Rows::from_gguf_bytes(&raw(&wq), rows, k).unwrap();
                (wq, q)
            })
            .collect();
        let x = values(2 * 2048, 99, 30.0);
        let acts = QuantActs::new(&x, 2, 2048);
        let before: Vec<Vec<f32>> =
            mats.iter().map(|(_, q)| run(level(), Source::Q8(q), 0..q.rows(), &acts)).collect();
        let mut refs: Vec<&mut Q8Rows> = mats.iter_mut().map(|(_, q)| q).collect();
        // Batches of one matrix, so own copies are unmapped between batches.
        pack_in_batches(&mut refs, 1);
        let first = &mats[0].1.qs.map;
        for ((wq, q), want) in mats.iter().zip(&before) {
            assert!(Arc::ptr_eq(&q.qs.map, first), "every matrix lives in the one arena");
            let got = run(level(), Source::Q8(q), 0..q.rows(), &acts);
            assert_eq!(bits(&got), bits(want));
            let k = q.cols();
            let mut row = vec![0f32; k];
            q.row_into(q.rows() - 1, &mut row);
            let mut deq = vec![0f32; k];
            BlockQ8_0::to_float(&wq[(q.rows() - 1) * k / QK..], &mut deq);
            assert_eq!(bits(&row), bits(&deq), "the last row dequantises as before");
        }
        assert_eq!(first.len(), mats.iter().map(|(_, q)| q.qs.len() * 2 * QK).sum::<usize>());
    }

    #[test]
    fn small_models_keep_their_own_buffers() {
        let w = values(64 * 64, 3, 1.0);
        let mut wq = vec![BlockQ8_0::zeros(); 64 * 2];
        BlockQ8_0::from_float(&w, &mut wq);
        let mut a = Q8Rows::from_gguf_bytes(&raw(&wq), 64, 64).unwrap();
        let mut b = a.clone();
        let (ma, mb) = (Arc::clone(&a.qs.map), Arc::clone(&b.qs.map));
        pack(&mut [&mut a, &mut b]);
        assert!(Arc::ptr_eq(&a.qs.map, &ma) && Arc::ptr_eq(&b.qs.map, &mb));
    }

    #[test]
    fn q41_refuses_blocks_whose_extremes_are_inside() {
        // d = 1, m = 0, nibbles 1..14 only: amax 14 is not at nibble 0 or 15.
        let mut block = vec![0u8; 20];
        block[..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        block[2..4].copy_from_slice(&f16::from_f32(0.0).to_le_bytes());
        for (i, b) in block[4..].iter_mut().enumerate() {
            *b = (1 + (i as u8 % 14)) | ((14 - (i as u8 % 14)) << 4);
        }
        assert!(Q41Rows::from_gguf_bytes(&block, 1, 32).unwrap().is_none());
        block[4] = 0xF0; // nibbles 0 and 15 present: accepted
        assert!(Q41Rows::from_gguf_bytes(&block, 1, 32).unwrap().is_some());
        assert!(Q41Rows::from_gguf_bytes(&block, 1, 33).is_err());
        assert!(Q41Rows::from_gguf_bytes(&block[..19], 1, 32).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn q8_kernels_match_candle_on_random_shapes(
            rows in 1usize..50, nb in 1usize..8, m in 1usize..10, seed in 1u64..u64::MAX,
        ) {
            check_q8(rows, nb, m, seed);
        }

        #[test]
        fn q41_kernels_match_the_requantised_q8_0_on_random_shapes(
            rows in 1usize..50, nb in 1usize..8, m in 1usize..10, seed in 1u64..u64::MAX,
            scale in 1e-3f32..50.0, offset in -1.0f32..1.0,
        ) {
            check_q41(rows, nb, m, seed, scale, offset * scale);
        }
    }
}

#[cfg(test)]
mod devbench {
    use super::*;
    use candle_core::quantized::GgmlType;
    use candle_core::quantized::k_quants::{BlockQ4_1, BlockQ8_0};

    fn time<F: FnMut()>(mut f: F, iters: usize) -> f64 {
        let mut best = f64::MAX;
        for _ in 0..7 {
            let t = std::time::Instant::now();
            for _ in 0..iters {
                f();
            }
            best = best.min(t.elapsed().as_secs_f64() / iters as f64);
        }
        best
    }

    /// Per-call timings of the kernels at every level, printed: a development aid for
    /// comparing kernels in place, not a test and not a benchmark of record (those are
    /// `cargo bench -p switchyard-inference`).
    #[test]
    #[ignore = "a timing aid: cargo nextest run --cargo-profile release --run-ignored only devbench --no-capture"]
    fn devbench_kernels() {
        let (rows, k) = (1536usize, 576usize);
        let nb = k / 32;
        let mut st = 0x9E37_79B9_7F4A_7C15u64;
        let w: Vec<f32> = (0..rows * k)
            .map(|_| {
                st ^= st << 13;
                st ^= st >> 7;
                st ^= st << 17;
                ((st >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        let mut w4 = vec![BlockQ4_1::zeros(); rows * nb];
        BlockQ4_1::from_float(&w, &mut w4);
        let bytes: Vec<u8> = {
            let len = std::mem::size_of_val(w4.as_slice());
            let mut out = vec![0u8; len];
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::copy_nonoverlapping(w4.as_ptr().cast::<u8>(), out.as_mut_ptr(), len)
            };
            out
        };
        let q41 = Q41Rows::from_gguf_bytes(&bytes, rows, k).unwrap().unwrap();
        let slow = q41.d.iter().filter(|&&d| d & SLOW != 0).count();
        eprintln!("slow blocks: {slow} of {}", q41.d.len());
        let q8b = crate::quant::requantize_to_q8_0(candle_core::quantized::GgmlDType::Q4_1, &bytes)
            .unwrap();
        let q8 = Q8Rows::from_gguf_bytes(&q8b, rows, k).unwrap();
        let mut c8 = vec![BlockQ8_0::zeros(); rows * nb];
        crate::quant::copy_bytes_into(&q8b, &mut c8);
        for m in [1usize, 4, 16] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 31 % 97) as f32 / 50.0) - 1.0).collect();
            let acts = QuantActs::new(&x, m, k);
            let mut out = vec![0f32; rows * m];
            let iters = 200 / m.max(1) + 10;
            let t41 = time(|| matmul_q41(&q41, 0..rows, &acts, &mut out), iters);
            let t8 = time(|| matmul_q8(&q8, 0..rows, &acts, &mut out), iters);
            let mut xq = vec![BlockQ8_0::zeros(); m * nb];
            BlockQ8_0::from_float(&x, &mut xq);
            let tc = time(
                || {
                    for j in 0..rows {
                        for i in 0..m {
                            out[j * m + i] = BlockQ8_0::vec_dot(
                                k,
                                &c8[j * nb..(j + 1) * nb],
                                &xq[i * nb..(i + 1) * nb],
                            );
                        }
                    }
                },
                iters,
            );
            let blocks = (rows * nb * m) as f64;
            eprintln!(
                "m={m}: q41 {:.2} ns/blk-row, q8 {:.2}, candle {:.2}  (per weight block: q41 {:.2} ns)",
                t41 / blocks * 1e9,
                t8 / blocks * 1e9,
                tc / blocks * 1e9,
                t41 / (rows * nb) as f64 * 1e9
            );
        }
    }
}
