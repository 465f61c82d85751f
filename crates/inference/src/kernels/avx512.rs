//! AVX-512 VNNI kernels: two weight rows per 512-bit register, one `vpdpbusd` per pair
//! of (weight rows, activation row) blocks.
//!
//! Q8_0 weights are stored in offset binary (`w + 128`, unsigned; see [`Q8Rows`]), and
//! Q4_1 weights expanded to it, so `vpdpbusd` can multiply them with the signed
//! activation quants; starting the sum at the
//! activation block's `-128 * sum` (precomputed in [`ActBlock`]) makes each `i32` lane
//! exactly the four-product sum of candle's `vpmaddubsw`/`vpmaddwd` pair. Rows are
//! stored by pairs as `[a lo, b lo, a hi, b hi]` 16-byte quarters, and activations
//! duplicated as `[lo, lo, hi, hi]`, so one load brings two rows and lanes `0..4, 8..12`
//! of an accumulator are row `a`'s eight candle lanes, `4..8, 12..16` row `b`'s. The
//! `f32` steps (convert, scale `d_w * d_x`, one FMA per block, candle's horizontal
//! sum) run in candle's order per lane.
//!
//! Q4_1 blocks become their Q8_0 requantisation on the fly: per block a 16-entry `i32`
//! table of the quant of each nibble value, `round_ties_even(n * (d / d8) + m / d8)`
//! (checked at load against the exact `encode_q8_0(decode_block(..))`; the few blocks
//! where it differs are marked and get the exact table from the scalar reference),
//! then one `vpermt2b` looks the 64 nibbles of two rows up in their two tables.
//!
//! With one activation row (decode) the weights go straight from memory into the dot
//! products; with several, each group of four weight rows is first expanded into an
//! L1-resident scratch and then reused for every activation row.
//!
//! Unsafe code: `#[target_feature]` functions may only be called where the CPU has the
//! features (`super::level` checks them once; the entry point is `unsafe` for that), and
//! SIMD loads and stores take raw pointers, each into a slice or array that holds the
//! bytes read or written (stated at each site).
#![allow(unsafe_code)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::{
    ActBlock, FAR_PREFETCH_BYTES, PREFETCH_BYTES, Q8Rows, Q41Rows, QK, QuantActs, Source, hsum8,
};

/// Four weight rows' block `b`, ready for the dot products: offset quants of the two row
/// pairs and their scales in the matching lanes.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Expanded {
    w: [__m512i; 2],
    s: [__m512; 2],
}

/// Per-block values of one Q4_1 weight row for 16 consecutive blocks, each stored four
/// times (`[4 * j..4 * j + 4]`) so a 128-bit broadcast load spreads it over a register
/// without a shuffle.
#[derive(Clone, Copy)]
struct Params {
    /// The Q8_0 scale (f16-rounded, widened), times the activation scale in the decode
    /// path.
    sc: [f32; 64],
    /// `d * id` and `m * id`: the short form of the table.
    a: [f32; 64],
    b: [f32; 64],
    /// Blocks whose table needs the exact form (bit `j`).
    slow: u16,
}

/// Activation rows per inner loop of the scratch path.
const GROUP: usize = 4;

/// Blocks per parameter chunk.
const CHUNK: usize = 16;

/// Lanes of row `b` in a pair accumulator.
const B_LANES: __mmask16 = 0xF0F0;

const ZERO_PARAMS: Params = Params { sc: [0.0; 64], a: [0.0; 64], b: [0.0; 64], slow: 0 };

/// Per-call working space of the Q4_1 row-group loops, set up once per [`matmul`] call
/// rather than zeroed for every group of four rows. Entries of rows past the last
/// (`k >= n`) keep stale values; they only feed lanes that are never stored.
struct Work {
    /// Q4_1 parameters of the four rows.
    p: [Params; 4],
    /// Q4_1 tables of the four rows.
    tables: [[__m512i; 16]; 4],
}

/// See [`super::matmul_q8`].
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/VNNI/VBMI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
pub(super) unsafe fn matmul(w: Source<'_>, rows: Range<usize>, x: &QuantActs, out: &mut [f32]) {
    let (m, nb) = (x.m, x.nb);
    assert!(
        w.nb() == nb
            && rows.start.is_multiple_of(2)
            && rows.end <= w.rows()
            && out.len() >= rows.len() * m
            && x.blocks.len() >= m * nb
            && x.d.len() >= m * nb,
        "kernel shapes"
    );
    // Q4_1's working space (7 KiB) is set up only for Q4_1 weights, once per call.
    let mut work: Option<Work> = None;
    let mut new_work = || Work { p: [ZERO_PARAMS; 4], tables: [[_mm512_setzero_si512(); 16]; 4] };
    let mut q8_sc = [[0f32; 64]; 4];
    if m == 1 {
        let mut r = rows.start;
        while r < rows.end {
            let n = (rows.end - r).min(4);
            let acc = match w {
                Source::Q8(q) => decode_q8(q, r, n, x, &mut q8_sc),
                Source::Q41(q) => decode_q41(q, r, n, x, work.get_or_insert_with(&mut new_work)),
            };
            store(&acc, &mut out[r - rows.start..], n, 1, 0);
            r += 4;
        }
        return;
    }
    if m <= GROUP {
        // A few activation rows (a decode step of a few sequences): each weight block
        // goes from memory straight into all of their dot products, no scratch.
        let mut r = rows.start;
        while r < rows.end {
            let n = (rows.end - r).min(4);
            let col = (r - rows.start) * m;
            match (w, m) {
                (Source::Q8(q), 2) => store_all(&fused_q8::<2>(q, r, n, x), &mut out[col..], n),
                (Source::Q8(q), 3) => store_all(&fused_q8::<3>(q, r, n, x), &mut out[col..], n),
                (Source::Q8(q), _) => store_all(&fused_q8::<4>(q, r, n, x), &mut out[col..], n),
                (Source::Q41(q), m) => {
                    let work = work.get_or_insert_with(&mut new_work);
                    match m {
                        2 => store_all(&fused_q41::<2>(q, r, n, x, work), &mut out[col..], n),
                        3 => store_all(&fused_q41::<3>(q, r, n, x, work), &mut out[col..], n),
                        _ => store_all(&fused_q41::<4>(q, r, n, x, work), &mut out[col..], n),
                    }
                }
            }
            r += 4;
        }
        return;
    }
    let zero = Expanded { w: [_mm512_setzero_si512(); 2], s: [_mm512_setzero_ps(); 2] };
    let mut scratch = vec![zero; nb];
    let mut r = rows.start;
    while r < rows.end {
        let n = (rows.end - r).min(4);
        match w {
            Source::Q8(q) => expand_q8(q, r, n, &mut scratch),
            Source::Q41(q) => expand_q41(q, r, n, &mut scratch),
        }
        let col = r - rows.start;
        let mut i = 0;
        while i + GROUP <= m {
            dot::<GROUP>(&scratch, x, i, &mut out[col * m..], n, m);
            i += GROUP;
        }
        match m - i {
            1 => dot::<1>(&scratch, x, i, &mut out[col * m..], n, m),
            2 => dot::<2>(&scratch, x, i, &mut out[col * m..], n, m),
            3 => dot::<3>(&scratch, x, i, &mut out[col * m..], n, m),
            _ => {}
        }
        r += 4;
    }
}

/// Horizontal sums of two pair accumulators into `out[q * m + i]` for the `n` real rows.
#[target_feature(enable = "avx512f,avx2")]
fn store(acc: &[__m512; 2], out: &mut [f32], n: usize, m: usize, i: usize) {
    for (h, a) in acc.iter().enumerate() {
        let mut lanes = [0f32; 16];
        // SAFETY: `lanes` holds 16 floats.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *a) };
        for half in 0..2 {
            let q = 2 * h + half;
            if q < n {
                let at = 4 * half;
                let l: [f32; 8] = std::array::from_fn(|t| lanes[at + t % 4 + 8 * (t / 4)]);
                out[q * m + i] = hsum8(&l);
            }
        }
    }
}

/// [`store`] for each of `G` activation rows.
#[target_feature(enable = "avx512f,avx2")]
fn store_all<const G: usize>(acc: &[[__m512; 2]; G], out: &mut [f32], n: usize) {
    for (g, pair) in acc.iter().enumerate() {
        store(pair, out, n, G, g);
    }
}

/// `G` (2..=4) activation rows against weight rows `r..r + n` (n <= 4, r even): the
/// decode loop with the weight block decoded once and dotted with every row. The
/// per-block scale is `d_w * d_x` as in [`dot`], so results are bit-identical to the
/// scratch path.
#[allow(clippy::needless_range_loop, reason = "`j` indexes a row of `tables` and the scales")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn fused_q41<const G: usize>(
    w: &Q41Rows,
    r: usize,
    n: usize,
    x: &QuantActs,
    work: &mut Work,
) -> [[__m512; 2]; G] {
    let nb = w.nb;
    let pairs = n.div_ceil(2);
    let xb: [&[ActBlock]; G] = std::array::from_fn(|g| &x.blocks[g * nb..][..nb]);
    let xd: [&[f32]; G] = std::array::from_fn(|g| &x.d[g * nb..][..nb]);
    let mut acc = [[_mm512_setzero_ps(); 2]; G];
    let Work { p, tables } = work;
    for b0 in (0..nb).step_by(CHUNK) {
        let len = (nb - b0).min(CHUNK);
        for (k, pk) in p.iter_mut().enumerate().take(n) {
            q41_params(w, r + k, b0, len, None, pk);
            q41_tables(w, r + k, b0, len, pk, &mut tables[k]);
        }
        for j in 0..len {
            let b = b0 + j;
            for h in 0..pairs {
                let (a, c) = (2 * h, 2 * h + 1);
                let wq = q41_pair(w, r / 2 + h, b, tables[a][j], tables[c][j]);
                let s = pair_scale(&p[a].sc, &p[c].sc, j);
                for (accg, (xb, xd)) in acc.iter_mut().zip(xb.iter().zip(&xd)) {
                    let (y, nc) = act(&xb[b]);
                    let q = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(nc, wq, y));
                    let sy = _mm512_mul_ps(s, _mm512_set1_ps(xd[b]));
                    accg[h] = _mm512_fmadd_ps(sy, q, accg[h]);
                }
            }
        }
    }
    acc
}

/// [`fused_q41`] for Q8_0 weights, written for the fewest instructions per block: the
/// four rows' f16 scales of a chunk are widened once into plain `f32` arrays, a row
/// pair's scale vector is one broadcast and one masked blend (both rows' scalars read
/// straight from memory), and the block loop walks plain slices. Per block, row pair
/// and activation row: a `vpdpbusd`, its conversion to `f32`, the scale
/// product `d_w * d_x` and an FMA, as in [`fused_q41`], so results are bit-identical.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn fused_q8<const G: usize>(w: &Q8Rows, r: usize, n: usize, x: &QuantActs) -> [[__m512; 2]; G] {
    if n > 2 { fused_q8_pairs::<G, 2>(w, r, n, x) } else { fused_q8_pairs::<G, 1>(w, r, n, x) }
}

/// [`fused_q8`] over `P` row pairs (`n <= 2 * P`).
#[allow(clippy::needless_range_loop, reason = "`j` indexes every row's scales")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn fused_q8_pairs<const G: usize, const P: usize>(
    w: &Q8Rows,
    r: usize,
    n: usize,
    x: &QuantActs,
) -> [[__m512; 2]; G] {
    let nb = w.nb;
    let pairs = P;
    let xb: [&[ActBlock]; G] = std::array::from_fn(|g| &x.blocks[g * nb..][..nb]);
    let xd: [&[f32]; G] = std::array::from_fn(|g| &x.d[g * nb..][..nb]);
    let wq: [&[[u8; 2 * QK]]; 2] =
        std::array::from_fn(|h| if h < pairs { &w.qs[(r / 2 + h) * nb..][..nb] } else { &[] });
    let mut acc = [[_mm512_setzero_ps(); 2]; G];
    // Rows past `n` keep zero scales; their lanes are never stored.
    let mut sc = [[0f32; CHUNK]; 4];
    for b0 in (0..nb).step_by(CHUNK) {
        let len = (nb - b0).min(CHUNK);
        let k = lanes(len);
        for (row, s) in sc.iter_mut().enumerate().take(n) {
            let d = &w.d[(r + row) * nb + b0..][..len];
            // SAFETY: a masked load of the `len` scales of `d`, a store of 16 floats
            // into `s`.
            unsafe {
                let v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, d.as_ptr().cast()));
                _mm512_storeu_ps(s.as_mut_ptr(), v);
            }
        }
        for j in 0..len {
            let b = b0 + j;
            let mut wv = [_mm512_setzero_si512(); 2];
            let mut sv = [_mm512_setzero_ps(); 2];
            for h in 0..pairs {
                wv[h] = streamed(&wq[h][b]);
                sv[h] = _mm512_mask_blend_ps(
                    B_LANES,
                    _mm512_set1_ps(sc[2 * h][j]),
                    _mm512_set1_ps(sc[2 * h + 1][j]),
                );
            }
            for g in 0..G {
                let (y, nc) = act(&xb[g][b]);
                let dy = _mm512_set1_ps(xd[g][b]);
                for h in 0..pairs {
                    let q = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(nc, wv[h], y));
                    acc[g][h] = _mm512_fmadd_ps(_mm512_mul_ps(sv[h], dy), q, acc[g][h]);
                }
            }
        }
    }
    acc
}

/// Activation block quants and corrections in paired-row order.
#[inline]
#[target_feature(enable = "avx512f,avx2")]
fn act(blk: &ActBlock) -> (__m512i, __m512i) {
    // SAFETY: `ActBlock` is 64-byte aligned and `qs2`/`neg_corr2` sit at offsets 64 and
    // 128: aligned 64-byte loads inside the block.
    unsafe {
        (
            _mm512_load_si512(blk.qs2.as_ptr().cast()),
            _mm512_load_si512(blk.neg_corr2.as_ptr().cast()),
        )
    }
}

/// Store the first `len` lanes of `v` four times each: lane `j` at
/// `out[4 * j..4 * j + 4]`.
#[inline]
#[target_feature(enable = "avx512f,avx2")]
fn replicate(v: __m512, out: &mut [f32; 64], len: usize) {
    for q in 0..len.div_ceil(4).min(4) {
        let base = i32::try_from(4 * q).unwrap_or(0);
        let idx = _mm512_setr_epi32(
            base,
            base,
            base,
            base,
            base + 1,
            base + 1,
            base + 1,
            base + 1,
            base + 2,
            base + 2,
            base + 2,
            base + 2,
            base + 3,
            base + 3,
            base + 3,
            base + 3,
        );
        // SAFETY: 16 floats at `16 * q`, inside the 64.
        unsafe { _mm512_storeu_ps(out[16 * q..].as_mut_ptr(), _mm512_permutexvar_ps(idx, v)) };
    }
}

/// Entry `j` of a replicated array in every lane (a 128-bit broadcast load).
#[inline]
#[target_feature(enable = "avx512f,avx2")]
fn bcast4(a: &[f32; 64], j: usize) -> __m512 {
    let four = &a[4 * j..4 * j + 4];
    // SAFETY: four floats.
    _mm512_broadcast_f32x4(unsafe { _mm_loadu_ps(four.as_ptr()) })
}

/// Row `a`'s scale in its lanes, row `b`'s in its lanes.
#[inline]
#[target_feature(enable = "avx512f,avx2")]
fn pair_scale(a: &[f32; 64], b: &[f32; 64], j: usize) -> __m512 {
    _mm512_mask_blend_ps(B_LANES, bcast4(a, j), bcast4(b, j))
}

/// Dot products of four weight rows with activation rows `i0..i0 + G` from the scratch.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn dot<const G: usize>(
    scratch: &[Expanded],
    x: &QuantActs,
    i0: usize,
    out: &mut [f32],
    n: usize,
    m: usize,
) {
    let nb = scratch.len();
    let mut acc = [[_mm512_setzero_ps(); 2]; G];
    let xb: [&[ActBlock]; G] = std::array::from_fn(|g| &x.blocks[(i0 + g) * nb..][..nb]);
    let xd: [&[f32]; G] = std::array::from_fn(|g| &x.d[(i0 + g) * nb..][..nb]);
    for (b, e) in scratch.iter().enumerate() {
        for g in 0..G {
            let (y, nc) = act(&xb[g][b]);
            let dy = _mm512_set1_ps(xd[g][b]);
            for ((a, w), s) in acc[g].iter_mut().zip(&e.w).zip(&e.s) {
                let q = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(nc, *w, y));
                *a = _mm512_fmadd_ps(_mm512_mul_ps(*s, dy), q, *a);
            }
        }
    }
    for (g, pair) in acc.iter().enumerate() {
        store(pair, out, n, m, i0 + g);
    }
}

/// Load one row pair's block of stored Q8_0 quants, asking for the weights ahead of it
/// into L1 and L2. Pairs are stored one after another and every kernel walks them in
/// order, so those are the bytes it reads next; see [`PREFETCH_BYTES`] and
/// [`FAR_PREFETCH_BYTES`].
#[inline]
#[target_feature(enable = "avx512f,avx2")]
fn streamed(block: &[u8; 2 * QK]) -> __m512i {
    let at = block.as_ptr();
    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_byte_add(PREFETCH_BYTES).cast());
    _mm_prefetch::<_MM_HINT_T2>(at.wrapping_byte_add(FAR_PREFETCH_BYTES).cast());
    // SAFETY: a 64-byte unaligned load of the 64-byte block.
    unsafe { _mm512_loadu_si512(at.cast()) }
}

/// A mask of the first `len` (<= 16) lanes.
#[inline]
fn lanes(len: usize) -> __mmask16 {
    let len = u32::try_from(len.min(16)).unwrap_or(16);
    u16::try_from((1u32 << len) - 1).unwrap_or(u16::MAX)
}

/// Widened f16 scales of blocks `b0..b0 + len` of Q8_0 row `r` (`len <= 16`), times
/// the activation scales `xd` when given.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
fn q8_scales(w: &Q8Rows, r: usize, b0: usize, len: usize, xd: Option<&[f32]>, sc: &mut [f32; 64]) {
    let i = r * w.nb + b0;
    let k = lanes(len);
    let d = &w.d[i..i + len];
    // SAFETY: masked loads touch only the `len` lanes the mask selects, all inside the
    // slices.
    let mut v = _mm512_cvtph_ps(unsafe { _mm256_maskz_loadu_epi16(k, d.as_ptr().cast()) });
    if let Some(xd) = xd {
        let xd = &xd[b0..b0 + len];
        // SAFETY: as above.
        v = _mm512_mul_ps(v, unsafe { _mm512_maskz_loadu_ps(k, xd.as_ptr()) });
    }
    replicate(v, sc, len);
}

/// One activation row against Q8_0 rows `r..r + n` (n <= 4, r even).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn decode_q8(
    w: &Q8Rows,
    r: usize,
    n: usize,
    x: &QuantActs,
    sc: &mut [[f32; 64]; 4],
) -> [__m512; 2] {
    let (nb, qs) = (w.nb, &*w.qs);
    let pairs = n.div_ceil(2);
    let mut acc = [_mm512_setzero_ps(); 2];
    for b0 in (0..nb).step_by(CHUNK) {
        let len = (nb - b0).min(CHUNK);
        for (k, sk) in sc.iter_mut().enumerate().take(n) {
            q8_scales(w, r + k, b0, len, Some(&x.d), sk);
        }
        for (j, blk) in x.blocks[b0..b0 + len].iter().enumerate() {
            let (y, nc) = act(blk);
            for h in 0..pairs {
                let wq = streamed(&qs[(r / 2 + h) * nb + b0 + j]);
                let s = pair_scale(&sc[2 * h], &sc[2 * h + 1], j);
                let q = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(nc, wq, y));
                acc[h] = _mm512_fmadd_ps(s, q, acc[h]);
            }
        }
    }
    acc
}

/// Q8_0 rows `r..r + n` (n <= 4, r even; missing rows are zero weights) into the
/// scratch.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn expand_q8(w: &Q8Rows, r: usize, n: usize, scratch: &mut [Expanded]) {
    let (nb, qs) = (w.nb, &*w.qs);
    let pairs = n.div_ceil(2);
    let mut sc = [[0f32; 64]; 4];
    for b0 in (0..nb).step_by(CHUNK) {
        let len = (nb - b0).min(CHUNK);
        for (k, s) in sc.iter_mut().enumerate().take(n) {
            q8_scales(w, r + k, b0, len, None, s);
        }
        for (j, e) in scratch[b0..b0 + len].iter_mut().enumerate() {
            for h in 0..2 {
                e.w[h] = if h < pairs {
                    streamed(&qs[(r / 2 + h) * nb + b0 + j])
                } else {
                    _mm512_set1_epi8(i8::MIN)
                };
                e.s[h] = pair_scale(&sc[2 * h], &sc[2 * h + 1], j);
            }
        }
    }
}

/// The Q8_0 requantisation's parameters for blocks `b0..b0 + len` of Q4_1 row `r`:
/// `d8 = amax / 127`, `id = 1 / d8` and the f16-rounded `d8` exactly as
/// `quant::encode_q8_0` computes them, the short-form table coefficients, and the
/// slow marks; the scale times the activation scales `xd` when given.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn q41_params(w: &Q41Rows, r: usize, b0: usize, len: usize, xd: Option<&[f32]>, p: &mut Params) {
    let i = r * w.nb + b0;
    let k = lanes(len);
    let (d, m) = (&w.d[i..i + len], &w.m[i..i + len]);
    // SAFETY: masked loads touch only the `len` lanes the mask selects, all inside `d`
    // and `m`.
    let (draw, mh) = unsafe {
        (
            _mm256_maskz_loadu_epi16(k, d.as_ptr().cast()),
            _mm256_maskz_loadu_epi16(k, m.as_ptr().cast()),
        )
    };
    p.slow = _mm256_movepi16_mask(draw);
    let flag = _mm256_set1_epi16(super::SLOW.cast_signed());
    let dv = _mm512_cvtph_ps(_mm256_andnot_si256(flag, draw));
    let mv = _mm512_cvtph_ps(mh);
    let f15 = _mm512_fmadd_ps(_mm512_set1_ps(15.0), dv, mv);
    let amax = _mm512_max_ps(_mm512_abs_ps(mv), _mm512_abs_ps(f15));
    let d8 = _mm512_div_ps(amax, _mm512_set1_ps(127.0));
    let nonzero = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(d8, _mm512_setzero_ps());
    let id = _mm512_maskz_div_ps(nonzero, _mm512_set1_ps(1.0), d8);
    let mut sc =
        _mm512_cvtph_ps(_mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(d8));
    if let Some(xd) = xd {
        let xd = &xd[b0..b0 + len];
        // SAFETY: a masked load of the `len` floats of `xd`.
        sc = _mm512_mul_ps(sc, unsafe { _mm512_maskz_loadu_ps(k, xd.as_ptr()) });
    }
    replicate(sc, &mut p.sc, len);
    replicate(_mm512_mul_ps(dv, id), &mut p.a, len);
    replicate(_mm512_mul_ps(mv, id), &mut p.b, len);
}

/// The exact table of block `i` (blocks marked slow), through the scalar reference.
#[cold]
#[inline(never)]
#[target_feature(enable = "avx512f,avx2")]
fn q41_exact_table(w: &Q41Rows, i: usize) -> __m512i {
    let (table, _) = super::q41_table(w.d[i], w.m[i]);
    let bytes: [u8; 16] = std::array::from_fn(|n| table[n].to_le_bytes()[0]);
    // SAFETY: 16 bytes.
    _mm512_cvtepi8_epi32(unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) })
}

/// The tables (`i32` quant per nibble value) of blocks `b0..b0 + len` of Q4_1 row `r`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
fn q41_tables(w: &Q41Rows, r: usize, b0: usize, len: usize, p: &Params, out: &mut [__m512i; 16]) {
    let iota = _mm512_setr_ps(
        0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
    );
    for (j, t) in out.iter_mut().enumerate().take(len) {
        let x = _mm512_fmadd_ps(iota, bcast4(&p.a, j), bcast4(&p.b, j));
        *t = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    }
    let mut slow = p.slow & lanes(len);
    while slow != 0 {
        let j = slow.trailing_zeros() as usize;
        out[j] = q41_exact_table(w, r * w.nb + b0 + j);
        slow &= slow - 1;
    }
}

/// Offset quants of Q4_1 row pair `pair`, block `b`, from the two rows' tables.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx2")]
fn q41_pair(w: &Q41Rows, pair: usize, b: usize, ta: __m512i, tb: __m512i) -> __m512i {
    // Nibbles `[a, b]`, broadcast to `[a, b, a, b]`.
    // SAFETY: a 32-byte unaligned load of one pair's block.
    let nib = _mm512_broadcast_i64x4(unsafe {
        _mm256_loadu_si256(w.qs[pair * w.nb + b].as_ptr().cast())
    });
    // Byte i of lanes 0 and 1: the low nibble of byte i, times 4 (its table entry's
    // low byte); of lanes 2 and 3: the high nibble. The bit offsets select bits
    // 8i - 2 .. 8i + 5 (low) and 8i + 2 .. 8i + 9 (high) of each quadword.
    let ctrl = _mm512_set_epi64(
        0x3a32_2a22_1a12_0a02,
        0x3a32_2a22_1a12_0a02,
        0x3a32_2a22_1a12_0a02,
        0x3a32_2a22_1a12_0a02,
        0x362e_261e_160e_063e,
        0x362e_261e_160e_063e,
        0x362e_261e_160e_063e,
        0x362e_261e_160e_063e,
    );
    let shifted = _mm512_multishift_epi64_epi8(ctrl, nib);
    // (shifted & 0x3c) | (64 in row b's lanes: its table is vpermt2b's second source).
    let bias = _mm512_maskz_mov_epi32(B_LANES, _mm512_set1_epi8(64));
    let idx = _mm512_ternarylogic_epi32::<0xEA>(shifted, _mm512_set1_epi8(0x3c), bias);
    _mm512_xor_si512(_mm512_permutex2var_epi8(ta, idx, tb), _mm512_set1_epi8(i8::MIN))
}

/// One activation row against Q4_1 rows `r..r + n` (n <= 4, r even).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn decode_q41(w: &Q41Rows, r: usize, n: usize, x: &QuantActs, work: &mut Work) -> [__m512; 2] {
    let nb = w.nb;
    let pairs = n.div_ceil(2);
    let Work { p, tables } = work;
    let mut acc = [_mm512_setzero_ps(); 2];
    for b0 in (0..nb).step_by(CHUNK) {
        let len = (nb - b0).min(CHUNK);
        for k in 0..n {
            q41_params(w, r + k, b0, len, Some(&x.d), &mut p[k]);
            q41_tables(w, r + k, b0, len, &p[k], &mut tables[k]);
        }
        for (j, blk) in x.blocks[b0..b0 + len].iter().enumerate() {
            let (y, nc) = act(blk);
            for (h, acc) in acc.iter_mut().enumerate().take(pairs) {
                let (a, c) = (2 * h, 2 * h + 1);
                let wq = q41_pair(w, r / 2 + h, b0 + j, tables[a][j], tables[c][j]);
                let s = pair_scale(&p[a].sc, &p[c].sc, j);
                let q = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(nc, wq, y));
                *acc = _mm512_fmadd_ps(s, q, *acc);
            }
        }
    }
    acc
}

/// Q4_1 rows `r..r + n` (n <= 4, r even; missing rows are zero weights) into the
/// scratch.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn expand_q41(w: &Q41Rows, r: usize, n: usize, scratch: &mut [Expanded]) {
    let nb = w.nb;
    let pairs = n.div_ceil(2);
    let mut p = [ZERO_PARAMS; 4];
    let mut tables = [[_mm512_setzero_si512(); 16]; 4];
    for b0 in (0..nb).step_by(CHUNK) {
        let len = (nb - b0).min(CHUNK);
        for k in 0..n {
            q41_params(w, r + k, b0, len, None, &mut p[k]);
            q41_tables(w, r + k, b0, len, &p[k], &mut tables[k]);
        }
        for (j, e) in scratch[b0..b0 + len].iter_mut().enumerate() {
            for h in 0..2 {
                let (a, c) = (2 * h, 2 * h + 1);
                e.w[h] = if h < pairs {
                    q41_pair(w, r / 2 + h, b0 + j, tables[a][j], tables[c][j])
                } else {
                    _mm512_set1_epi8(i8::MIN)
                };
                e.s[h] = pair_scale(&p[a].sc, &p[c].sc, j);
            }
        }
    }
}

const _: () = assert!(std::mem::size_of::<ActBlock>() == 192 && QK == 32);

/// One block of activations quantised to Q8_0 exactly as `quant::encode_q8_0` does it
/// (the largest magnitude of the values that are not NaN, `d = amax / 127`,
/// `id = 1 / d`, quants `trunc(v * id + copysign(0.49999997, v * id))`): the f16 bits
/// of `d` and the quants.
/// Quantising the activations runs once per matrix product and activation row; the
/// scalar form cost ~50 ns a block, a visible share of a batched decode step.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
pub(super) unsafe fn quantize_block(vals: &[f32; QK], qs: &mut [i8; QK]) -> u16 {
    // SAFETY: two 16-float loads inside `vals`.
    let (a, b) = unsafe { (_mm512_loadu_ps(vals.as_ptr()), _mm512_loadu_ps(vals[16..].as_ptr())) };
    // NaN lanes count as zero, as in the scalar form (whose `a > max` skips them):
    // `vmaxps` would pass a NaN on depending on the operand order. The maximum of the
    // rest does not depend on the order of comparisons.
    let magnitude =
        |v: __m512| _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v), _mm512_abs_ps(v));
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(magnitude(a), magnitude(b)));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let idv = _mm512_set1_ps(id);
    let sign = _mm512_set1_epi32(i32::MIN);
    let half = _mm512_set1_epi32(0.499_999_97f32.to_bits().cast_signed());
    for (h, v) in [a, b].into_iter().enumerate() {
        let x = _mm512_mul_ps(v, idv);
        // `0.49999997` with `x`'s sign, added, then truncated towards zero.
        let bias = _mm512_castsi512_ps(_mm512_ternarylogic_epi32::<0xEA>(
            _mm512_castps_si512(x),
            sign,
            half,
        ));
        let q = _mm512_cvttps_epi32(_mm512_add_ps(x, bias));
        // SAFETY: 16 bytes at `16 * h`, inside `qs`.
        unsafe { _mm_storeu_si128(qs[16 * h..].as_mut_ptr().cast(), _mm512_cvtepi32_epi8(q)) };
    }
    half::f16::from_f32(d).to_bits()
}

/// See [`super::weighted_sum_64`] (which checked that `v` covers every row).
///
/// # Safety
/// The CPU has AVX-512 F.
#[target_feature(enable = "avx512f,avx2")]
pub(super) unsafe fn weighted_sum_64(out: &mut [f32; 64], w: &[f32], v: &[f32], stride: usize) {
    let mut acc = [_mm512_setzero_ps(); 4];
    for (t, &wt) in w.iter().enumerate() {
        let row = v[t * stride..].as_ptr();
        let wv = _mm512_set1_ps(wt);
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: 16 floats at `16 * j` of row `t`, inside `v` (checked by the caller).
            let x = unsafe { _mm512_loadu_ps(row.add(16 * j)) };
            *a = _mm512_add_ps(*a, _mm512_mul_ps(wv, x));
        }
    }
    for (j, a) in acc.iter().enumerate() {
        // SAFETY: 16 floats at `16 * j`, inside `out`.
        unsafe { _mm512_storeu_ps(out[16 * j..].as_mut_ptr(), *a) };
    }
}

/// [`weighted_sum_64`] for `G` heads sharing the values (the query heads of one KV
/// group): each head's sums in the same order as alone, the `G` heads' independent
/// add chains interleaved (one head alone waits on its adds' latency).
///
/// # Safety
/// The CPU has AVX-512 F.
#[target_feature(enable = "avx512f,avx2")]
pub(super) unsafe fn weighted_sum_64_many<const G: usize>(
    out: [&mut [f32; 64]; G],
    w: [&[f32]; G],
    v: &[f32],
    stride: usize,
) {
    let n = w.iter().map(|w| w.len()).min().unwrap_or(0);
    let mut acc = [[_mm512_setzero_ps(); 4]; G];
    for t in 0..n {
        let row = v[t * stride..].as_ptr();
        // The cache is read front to back once per step, mostly from memory (a head's
        // values are contiguous when `stride == 64`): fetch a few KiB ahead.
        for l in 0..4 {
            _mm_prefetch::<_MM_HINT_T0>(
                row.wrapping_add(16 * l).wrapping_byte_add(PREFETCH_BYTES).cast(),
            );
        }
        // SAFETY: 64 floats of row `t`, inside `v` (checked by the caller).
        let x: [__m512; 4] = std::array::from_fn(|j| unsafe { _mm512_loadu_ps(row.add(16 * j)) });
        for (a, w) in acc.iter_mut().zip(&w) {
            let wv = _mm512_set1_ps(w[t]);
            for (a, x) in a.iter_mut().zip(&x) {
                *a = _mm512_add_ps(*a, _mm512_mul_ps(wv, *x));
            }
        }
    }
    for (o, a) in out.into_iter().zip(&acc) {
        for (j, a) in a.iter().enumerate() {
            // SAFETY: 16 floats at `16 * j`, inside `o`.
            unsafe { _mm512_storeu_ps(o[16 * j..].as_mut_ptr(), *a) };
        }
    }
}

/// [`super::dot_rows`] for `G` queries sharing the keys, `out[g * n + t]` for `t` in
/// `0..n`: per query the same lane sums as [`super::dot`], the queries' independent
/// add chains interleaved four keys at a time.
///
/// # Safety
/// The CPU has AVX-512 F/VL (32 vector registers), and `k` covers every row.
#[target_feature(enable = "avx512f,avx512vl,avx2")]
pub(super) unsafe fn dot_rows_many<const G: usize>(
    q: [&[f32]; G],
    k: &[f32],
    stride: usize,
    out: &mut [f32],
    n: usize,
) {
    let hd = q[0].len();
    let mut t = 0;
    while t + 4 <= n {
        let rows: [&[f32]; 4] = std::array::from_fn(|i| &k[(t + i) * stride..][..hd]);
        // As in `weighted_sum_64_many`: the keys stream from memory, fetch ahead.
        for row in rows {
            for l in 0..hd.div_ceil(16) {
                let at = row.as_ptr().wrapping_add(16 * l).wrapping_byte_add(PREFETCH_BYTES);
                _mm_prefetch::<_MM_HINT_T0>(at.cast());
            }
        }
        let mut acc = [[_mm256_setzero_ps(); 4]; G];
        for c in 0..hd / 8 {
            // SAFETY: 8 floats at `8 * c` of each key row (`hd` long).
            let y: [__m256; 4] =
                std::array::from_fn(|i| unsafe { _mm256_loadu_ps(rows[i][8 * c..].as_ptr()) });
            for (a, q) in acc.iter_mut().zip(&q) {
                // SAFETY: 8 floats at `8 * c` of the query (`hd` long).
                let x = unsafe { _mm256_loadu_ps(q[8 * c..].as_ptr()) };
                for (a, y) in a.iter_mut().zip(&y) {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(x, *y));
                }
            }
        }
        for (g, a) in acc.iter().enumerate() {
            for (i, (a, row)) in a.iter().zip(&rows).enumerate() {
                let mut lanes = [0f32; 8];
                // SAFETY: `lanes` holds 8 floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
                out[g * n + t + i] = super::dot_finish(&lanes, q[g], row);
            }
        }
        t += 4;
    }
    for (g, q) in q.iter().enumerate() {
        for t in t..n {
            out[g * n + t] = super::dot(q, &k[t * stride..][..hd]);
        }
    }
}

/// `expf` as glibc (2.27 and later, the build it selects on CPUs with FMA) computes it
/// for `|x| < 85`, eight lanes at a time in double precision, the same operations in
/// the same order: `k = round(x * 32 / ln 2)` through the `SHIFT` trick, `r` by a
/// fused multiply-subtract, `2^(k / 32)` from its 32-entry table, a cubic in `r`
/// evaluated with FMAs, one product, one rounding to `f32`. (The constants are the
/// published ones of that algorithm: `2^(i / 32)` per entry, `32 / ln 2`, and the
/// scaled polynomial.) Other lanes (`|x| >= 85`, infinities, NaN) are left for the
/// caller, which sends them to `f32::exp`.
mod expf {
    pub(super) const INV_LN2_N: u64 = 0x4047_1547_652b_82fe;
    pub(super) const SHIFT: u64 = 0x4338_0000_0000_0000;
    pub(super) const C0: u64 = 0x3ebc_6af8_4b91_2394;
    pub(super) const C1: u64 = 0x3f2e_bfce_50fa_c4f3;
    pub(super) const C2: u64 = 0x3f96_2e42_ff0c_52d6;
    /// `bits(2^(i / 32)) - (i << 47)`.
    pub(super) const TABLE: [u64; 32] = [
        0x3ff0_0000_0000_0000,
        0x3fef_d9b0_d315_8574,
        0x3fef_b558_6cf9_890f,
        0x3fef_9301_d012_5b51,
        0x3fef_72b8_3c7d_517b,
        0x3fef_5487_3168_b9aa,
        0x3fef_387a_6e75_6238,
        0x3fef_1e9d_f51f_dee1,
        0x3fef_06fe_0a31_b715,
        0x3fee_f1a7_373a_a9cb,
        0x3fee_dea6_4c12_3422,
        0x3fee_ce08_6061_892d,
        0x3fee_bfda_d536_2a27,
        0x3fee_b42b_569d_4f82,
        0x3fee_ab07_dd48_5429,
        0x3fee_a47e_b03a_5585,
        0x3fee_a09e_667f_3bcd,
        0x3fee_9f75_e8ec_5f74,
        0x3fee_a114_73eb_0187,
        0x3fee_a589_994c_ce13,
        0x3fee_ace5_422a_a0db,
        0x3fee_b737_b0cd_c5e5,
        0x3fee_c491_82a3_f090,
        0x3fee_d503_b23e_255d,
        0x3fee_e89f_995a_d3ad,
        0x3fee_ff76_f2fb_5e47,
        0x3fef_199b_dd85_529c,
        0x3fef_3720_dcef_9069,
        0x3fef_5818_dcfb_a487,
        0x3fef_7c97_337b_9b5f,
        0x3fef_a4af_a2a4_90da,
        0x3fef_d076_5b6e_4540,
    ];
    /// `|x| >= 85` (or not finite) as the bits of `|x|`: glibc's slow-path test.
    pub(super) const SLOW_ABS_BITS: u32 = 0x42a0_0000;
}

/// Eight lanes of the double-precision core of [`expf`].
#[inline]
#[target_feature(enable = "avx512f,avx512dq,fma")]
fn expf_core(x: __m256) -> __m256 {
    let pd = |bits: u64| _mm512_castsi512_pd(_mm512_set1_epi64(bits.cast_signed()));
    let tab = |i: usize| {
        // SAFETY: eight entries at `8 * i` of the 32.
        unsafe { _mm512_loadu_si512(expf::TABLE[8 * i..].as_ptr().cast()) }
    };
    let shift = pd(expf::SHIFT);
    let inv = pd(expf::INV_LN2_N);
    let xd = _mm512_cvtps_pd(x);
    let kds = _mm512_fmadd_pd(inv, xd, shift);
    let ki = _mm512_castpd_si512(kds);
    let kd = _mm512_sub_pd(kds, shift);
    let r = _mm512_fmsub_pd(inv, xd, kd);
    // Entry `ki % 32`: bits 0-3 pick within a 16-entry half, bit 4 the half.
    let lo = _mm512_permutex2var_epi64(tab(0), ki, tab(1));
    let hi = _mm512_permutex2var_epi64(tab(2), ki, tab(3));
    let upper = _mm512_test_epi64_mask(ki, _mm512_set1_epi64(16));
    let t = _mm512_mask_blend_epi64(upper, lo, hi);
    let s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64::<47>(ki)));
    let z = _mm512_fmadd_pd(r, pd(expf::C0), pd(expf::C1));
    let r2 = _mm512_mul_pd(r, r);
    let y = _mm512_fmadd_pd(r, pd(expf::C2), _mm512_set1_pd(1.0));
    let y = _mm512_fmadd_pd(z, r2, y);
    _mm512_cvtpd_ps(_mm512_mul_pd(y, s))
}

/// Sixteen lanes of `f32::exp` (glibc's value), with the lanes outside the fast range
/// sent to `f32::exp`.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,fma")]
fn exp16(x: __m512) -> __m512 {
    let abs = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MAX));
    let slow = _mm512_cmpge_epu32_mask(abs, _mm512_set1_epi32(expf::SLOW_ABS_BITS.cast_signed()));
    let lo = expf_core(_mm512_castps512_ps256(x));
    let hi = expf_core(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x))));
    let y = _mm512_insertf32x8::<1>(_mm512_castps256_ps512(lo), hi);
    if slow == 0 {
        return y;
    }
    let mut xs = [0f32; 16];
    let mut ys = [0f32; 16];
    // SAFETY: 16 floats each.
    unsafe {
        _mm512_storeu_ps(xs.as_mut_ptr(), x);
        _mm512_storeu_ps(ys.as_mut_ptr(), y);
    }
    for (i, (y, x)) in ys.iter_mut().zip(xs).enumerate() {
        if slow & (1 << i) != 0 {
            *y = x.exp();
        }
    }
    // SAFETY: 16 floats.
    unsafe { _mm512_loadu_ps(ys.as_ptr()) }
}

/// See [`super::exp_in_place`].
///
/// # Safety
/// The CPU has AVX-512 F/DQ and FMA.
#[target_feature(enable = "avx512f,avx512dq,fma")]
pub(super) unsafe fn exp_in_place(v: &mut [f32]) {
    let mut chunks = v.chunks_exact_mut(16);
    for c in &mut chunks {
        // SAFETY: 16 floats in and out of `c`.
        unsafe { _mm512_storeu_ps(c.as_mut_ptr(), exp16(_mm512_loadu_ps(c.as_ptr()))) };
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let k = lanes(rest.len());
        // SAFETY: masked load and store of the `rest.len()` floats of `rest`.
        unsafe {
            let x = _mm512_maskz_loadu_ps(k, rest.as_ptr());
            _mm512_mask_storeu_ps(rest.as_mut_ptr(), k, exp16(x));
        }
    }
}

/// See [`super::silu_mul`].
///
/// # Safety
/// The CPU has AVX-512 F/DQ and FMA.
#[target_feature(enable = "avx512f,avx512dq,fma")]
pub(super) unsafe fn silu_mul(g: &mut [f32], u: &[f32]) {
    let n = g.len().min(u.len());
    let one = _mm512_set1_ps(1.0);
    let mut i = 0;
    while i < n {
        let k = lanes(n - i);
        // SAFETY: masked loads and store of the `min(16, n - i)` floats at `i`, inside
        // both slices.
        unsafe {
            let x = _mm512_maskz_loadu_ps(k, g[i..].as_ptr());
            let up = _mm512_maskz_loadu_ps(k, u[i..].as_ptr());
            let e = exp16(_mm512_xor_ps(x, _mm512_set1_ps(-0.0)));
            let y = _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, e)), up);
            _mm512_mask_storeu_ps(g[i..].as_mut_ptr(), k, y);
        }
        i += 16;
    }
}
