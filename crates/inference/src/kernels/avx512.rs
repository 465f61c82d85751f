//! AVX-512 VNNI kernels over weight panels (see [`super::Q8Rows`]): one 512-bit register
//! holds four quants of 16 weight rows, `vpdpbusd` multiplies them with four activation
//! quants broadcast to every lane, and eight such steps leave each row's exact integer
//! block sum in its lane; then one multiply (`d_w * d_x`) and one FMA per block and 16
//! rows.
//!
//! Q8_0 weights are stored in offset binary (`w + 128`, unsigned), the operand
//! `vpdpbusd` takes unsigned; the sum starts at the activation block's `-128 * sum`
//! (precomputed in [`ActBlock`]), so it is exactly `sum w x`. With one activation row
//! (decode) each step's two dependency chains per panel keep the multiply-adds busy;
//! with several, each weight step is loaded once and used for up to four activation rows.
//!
//! Q4_1 weights are requantised to Q8_0 two panels at a time into a scratch and then
//! go through the same loops: per block a 16-entry `i32` table of the quant of each
//! nibble value, `round_ties_even(n * (d / d8) + m / d8)` (checked at load against the
//! exact `encode_q8_0(decode_block(..))`; the few blocks where it differs are marked and
//! get the exact table from the scalar reference), then one `vpermt2b` looks the 64
//! nibbles of two rows up in their two tables.
//!
//! Unsafe code: `#[target_feature]` functions may only be called where the CPU has the
//! features (`super::level` checks them once; the entry point is `unsafe` for that), and
//! SIMD loads and stores take raw pointers, each into a slice or array that holds the
//! bytes read or written (stated at each site).
#![allow(unsafe_code)]

use std::arch::x86_64::*;
use std::cell::Cell;
use std::ops::Range;

use super::{
    ActBlock, FAR_PREFETCH_BYTES, PANEL, PREFETCH_BYTES, PanelBuf, Panels, Q41Rows, QK, QuantActs,
    STEPS, Source,
};

/// Per-block values of one Q4_1 weight row for 16 consecutive blocks: the table's short
/// form, each value stored four times (`[4 * j..4 * j + 4]`) so a 128-bit broadcast load
/// spreads it over a register without a shuffle, and the Q8_0 scales.
#[derive(Clone, Copy)]
struct Params {
    /// `d * id` and `m * id`: the short form of the table.
    a: [f32; 64],
    b: [f32; 64],
    /// The requantised blocks' scales (f16 bits).
    d16: [u16; 16],
    /// Blocks whose table needs the exact form (bit `j`).
    slow: u16,
}

/// Blocks per parameter chunk.
const CHUNK: usize = 16;

/// Lanes of row `b` in the pair register [`q41_pair`] makes.
const B_LANES: __mmask16 = 0xF0F0;

const ZERO_PARAMS: Params = Params { a: [0.0; 64], b: [0.0; 64], d16: [0; 16], slow: 0 };

/// The parameters and tables of a panel's 16 rows for one chunk of blocks (25 KiB).
struct Work {
    prm: [Params; PANEL],
    tables: [[__m512i; CHUNK]; PANEL],
}

thread_local! {
    /// Each compute thread's [`Work`], set up once (taken out while a panel is
    /// requantised): zeroing it for every panel cost ~8% of a Q4_1 decode step.
    /// Entries of rows past a panel's last are never read.
    static WORK: Cell<Option<Box<Work>>> = const { Cell::new(None) };
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
            && rows.start.is_multiple_of(PANEL)
            && rows.end <= w.rows()
            && out.len() >= rows.len() * m
            && x.blocks.len() >= m * nb
            && x.d.len() >= m * nb,
        "kernel shapes"
    );
    let (p0, p1) = (rows.start / PANEL, rows.end.div_ceil(PANEL));
    match w {
        Source::Q8(q) => panels(q.panels(), p0..p1, rows.len(), x, out),
        Source::Q41(q) => {
            // Two panels at a time (the prompt loop's width), requantised into a
            // scratch that stays in L1/L2 for every activation row.
            PanelBuf::with(nb, 2, |buf| {
                let mut p = p0;
                while p < p1 {
                    let g = (p1 - p).min(2);
                    for slot in 0..g {
                        requantise(q, p + slot, slot, buf);
                    }
                    let done = (p - p0) * PANEL;
                    panels(buf.panels(), 0..g, rows.len() - done, x, &mut out[done * m..]);
                    p += g;
                }
            });
        }
    }
}

/// Panels `panels` of `w` against every activation row: `out[r * m + i]` for output
/// rows `r < n` (counted from the first panel's first row).
///
/// Where the weights come from memory (decode: one activation row, or the few of a
/// batched step) the loops read one panel at a time: a second panel's stream read
/// alongside made a single-stream decode ~10% slower and a 4-stream step ~12%
/// (measured on the engine bench). With more rows (a prompt) the weights come from
/// cache and two panels at a time save activation loads: prefill ~10% faster.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn panels(w: Panels<'_>, panels: Range<usize>, n: usize, x: &QuantActs, out: &mut [f32]) {
    let mut p = panels.start;
    while p < panels.end {
        let r0 = (p - panels.start) * PANEL;
        if x.m == 1 {
            store(&[[decode(w, p, x)]], out, r0, n, 1, 0);
            p += 1;
        } else if x.m > 4 && p + 2 <= panels.end {
            group::<2>(w, p, x, r0, n, out);
            p += 2;
        } else {
            group::<1>(w, p, x, r0, n, out);
            p += 1;
        }
    }
}

/// `G` panels from `p` against every activation row (two or more), four rows at a
/// time.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn group<const G: usize>(
    w: Panels<'_>,
    p: usize,
    x: &QuantActs,
    r0: usize,
    n: usize,
    out: &mut [f32],
) {
    let m = x.m;
    let mut i = 0;
    while i + 4 <= m {
        store(&dot::<4, G>(w, p, x, i), out, r0, n, m, i);
        i += 4;
    }
    match m - i {
        1 => store(&dot::<1, G>(w, p, x, i), out, r0, n, m, i),
        2 => store(&dot::<2, G>(w, p, x, i), out, r0, n, m, i),
        3 => store(&dot::<3, G>(w, p, x, i), out, r0, n, m, i),
        _ => {}
    }
}

/// One activation row against panel `p`: two chains of four steps (even and odd), so
/// the multiply-adds of a block do not wait on each other.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn decode(w: Panels<'_>, p: usize, x: &QuantActs) -> __m512 {
    let mut acc = _mm512_setzero_ps();
    for (b, (blk, &dx)) in x.blocks[..w.nb].iter().zip(&x.d[..w.nb]).enumerate() {
        let wq = w.quants(p, b);
        let mut even = _mm512_set1_epi32(blk.neg_sum);
        let mut odd = _mm512_setzero_si512();
        for s in (0..STEPS).step_by(2) {
            let (a0, a1) = (_mm512_set1_epi32(blk.word(s)), _mm512_set1_epi32(blk.word(s + 1)));
            even = _mm512_dpbusd_epi32(even, streamed(&wq[s]), a0);
            odd = _mm512_dpbusd_epi32(odd, streamed(&wq[s + 1]), a1);
        }
        // The scales are a stream of their own, 1/16 the quants' rate: ask for them 16
        // blocks ahead (their loads showed as stalls in a profile of the decode loop).
        let ahead = w.scales(p, b).as_ptr().wrapping_add(16 * PANEL);
        _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
        let sum = _mm512_cvtepi32_ps(_mm512_add_epi32(even, odd));
        acc = _mm512_fmadd_ps(_mm512_mul_ps(scales(w, p, b), _mm512_set1_ps(dx)), sum, acc);
    }
    acc
}

/// `M` activation rows from `i0` against panels `p..p + G`: each weight step is loaded
/// once for all of them.
#[allow(clippy::needless_range_loop, reason = "`s` indexes every panel's steps")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot<const M: usize, const G: usize>(
    w: Panels<'_>,
    p: usize,
    x: &QuantActs,
    i0: usize,
) -> [[__m512; G]; M] {
    let nb = w.nb;
    let xb: [&[ActBlock]; M] = std::array::from_fn(|i| &x.blocks[(i0 + i) * nb..][..nb]);
    let xd: [&[f32]; M] = std::array::from_fn(|i| &x.d[(i0 + i) * nb..][..nb]);
    let mut acc = [[_mm512_setzero_ps(); G]; M];
    for b in 0..nb {
        let wq: [&[[u8; 2 * QK]]; G] = std::array::from_fn(|g| w.quants(p + g, b));
        let mut sum: [[__m512i; G]; M] =
            std::array::from_fn(|i| [_mm512_set1_epi32(xb[i][b].neg_sum); G]);
        for s in 0..STEPS {
            let wv: [__m512i; G] = std::array::from_fn(|g| streamed(&wq[g][s]));
            for i in 0..M {
                let a = _mm512_set1_epi32(xb[i][b].word(s));
                for g in 0..G {
                    sum[i][g] = _mm512_dpbusd_epi32(sum[i][g], wv[g], a);
                }
            }
        }
        for g in 0..G {
            let dw = scales(w, p + g, b);
            for i in 0..M {
                let s = _mm512_mul_ps(dw, _mm512_set1_ps(xd[i][b]));
                acc[i][g] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(sum[i][g]), acc[i][g]);
            }
        }
    }
    acc
}

/// The 16 scales of block `b` of panel `p`, widened.
#[inline]
#[target_feature(enable = "avx512f,avx2,f16c")]
fn scales(w: Panels<'_>, p: usize, b: usize) -> __m512 {
    // SAFETY: a 32-byte load of the 16 f16 scales.
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(w.scales(p, b).as_ptr().cast()) })
}

/// Panel results of activation rows `i..i + M` into `out[r * m + i]` for the rows
/// `r0..r0 + 16 * G` below `n`.
#[inline]
#[target_feature(enable = "avx512f,avx2")]
fn store<const M: usize, const G: usize>(
    acc: &[[__m512; G]; M],
    out: &mut [f32],
    r0: usize,
    n: usize,
    m: usize,
    i: usize,
) {
    for (k, panels) in acc.iter().enumerate() {
        for (g, a) in panels.iter().enumerate() {
            let r = r0 + g * PANEL;
            if m == 1 && r + PANEL <= n {
                let o = &mut out[r..r + PANEL];
                // SAFETY: `o` holds 16 floats.
                unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *a) };
                continue;
            }
            let mut lanes = [0f32; PANEL];
            // SAFETY: `lanes` holds 16 floats.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *a) };
            for (t, v) in lanes.iter().enumerate().take(n.saturating_sub(r)) {
                out[(r + t) * m + i + k] = *v;
            }
        }
    }
}

/// Requantise panel `p` of a Q4_1 matrix to Q8_0 into slot `slot` of `buf`: per block,
/// one register per row pair from the two rows' tables, then an 8 x 8 transpose of
/// 8-byte words turns the eight pair registers into the panel's eight steps, each
/// stored whole.
#[allow(clippy::needless_range_loop, reason = "`j` and `k` index several rows' arrays")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx2,fma,f16c")]
fn requantise(w: &Q41Rows, p: usize, slot: usize, buf: &mut PanelBuf) {
    let (nb, r0) = (w.nb, p * PANEL);
    let n = buf.start(w, p, slot);
    // Dword `j` of a pair register holds row `a`'s words 0-3, row `b`'s 0-3, `a`'s 4-7,
    // `b`'s 4-7: this order puts word `s` of both rows in quadword `s`.
    let by_step = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
    let zero_quants = _mm512_set1_epi8(i8::MIN);
    let mut work = match WORK.take() {
        Some(work) => work,
        None => Box::new(Work {
            prm: [ZERO_PARAMS; PANEL],
            tables: [[_mm512_setzero_si512(); CHUNK]; PANEL],
        }),
    };
    let Work { prm, tables } = &mut *work;
    for b0 in (0..nb).step_by(CHUNK) {
        let len = (nb - b0).min(CHUNK);
        for k in 0..n {
            q41_params(w, r0 + k, b0, len, &mut prm[k]);
            q41_tables(w, r0 + k, b0, len, &prm[k], &mut tables[k]);
        }
        for j in 0..len {
            let b = b0 + j;
            let mut pairs = [zero_quants; STEPS];
            for (h, v) in pairs.iter_mut().enumerate().take(n.div_ceil(2)) {
                // An odd last row's partner: zero nibbles looked up in a zero table.
                let tb = if 2 * h + 1 < n { tables[2 * h + 1][j] } else { _mm512_setzero_si512() };
                let pair = q41_pair(w, r0 / 2 + h, b, tables[2 * h][j], tb);
                *v = _mm512_permutexvar_epi32(by_step, pair);
            }
            let steps = transpose8x8(pairs);
            for (e, v) in buf.quants_mut(slot, b).iter_mut().zip(steps) {
                // SAFETY: a 64-byte store into the 64-byte entry.
                unsafe { _mm512_storeu_si512(e.as_mut_ptr().cast(), v) };
            }
            for k in 0..n {
                buf.set_scale(slot, b, k, prm[k].d16[j]);
            }
        }
    }
    WORK.set(Some(work));
}

/// The 8 x 8 transpose of 8-byte words: word `s` of output `h` is word `h` of input `s`.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose8x8(v: [__m512i; 8]) -> [__m512i; 8] {
    // Pairs of inputs interleaved: `lo[i]` holds words 0, 2, 4, 6 of inputs 2i and
    // 2i + 1, `hi[i]` words 1, 3, 5, 7.
    let lo: [__m512i; 4] = std::array::from_fn(|i| _mm512_unpacklo_epi64(v[2 * i], v[2 * i + 1]));
    let hi: [__m512i; 4] = std::array::from_fn(|i| _mm512_unpackhi_epi64(v[2 * i], v[2 * i + 1]));
    // Then four inputs: words (0, 4) / (2, 6) of inputs 4i..4i + 4 from `lo`, (1, 5) /
    // (3, 7) from `hi`.
    let even = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
    let odd = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    let four = |x: &[__m512i; 4], i: usize, idx: __m512i| {
        _mm512_permutex2var_epi64(x[2 * i], idx, x[2 * i + 1])
    };
    // `q[w][i]`: words `w` and `w + 4` of inputs 4i..4i + 4, for w = 0, 1, 2, 3.
    let q: [[__m512i; 2]; 4] = [
        [four(&lo, 0, even), four(&lo, 1, even)],
        [four(&hi, 0, even), four(&hi, 1, even)],
        [four(&lo, 0, odd), four(&lo, 1, odd)],
        [four(&hi, 0, odd), four(&hi, 1, odd)],
    ];
    // Finally all eight: the low halves give word `w`, the high halves word `w + 4`.
    std::array::from_fn(|s| {
        let [a, b] = q[s % 4];
        if s < 4 {
            _mm512_shuffle_i64x2::<0b01_00_01_00>(a, b)
        } else {
            _mm512_shuffle_i64x2::<0b11_10_11_10>(a, b)
        }
    })
}

/// Scales, short-form table values and slow marks of blocks `b0..b0 + len` of Q4_1
/// row `r` (`len <= 16`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn q41_params(w: &Q41Rows, r: usize, b0: usize, len: usize, p: &mut Params) {
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
    let d16 = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(d8);
    // SAFETY: a 32-byte store into the 16 scales.
    unsafe { _mm256_storeu_si256(p.d16.as_mut_ptr().cast(), d16) };
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
    let nib =
        _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(w.pair(pair, b).as_ptr().cast()) });
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

/// Load one 64-byte step of a weight panel, asking for the weights ahead of it into L1
/// and L2. Every kernel walks a panel's steps in storage order, so those are the bytes
/// it reads next; see [`PREFETCH_BYTES`] and
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

const _: () = assert!(std::mem::size_of::<ActBlock>() == 36 && QK == 32 && PANEL == 16);

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
