//! AVX2 + FMA kernels over weight panels (see [`super::Q8Rows`]): a 256-bit register
//! holds four quants of eight weight rows (half a panel step); candle's sign trick
//! (`vpsignb`, `vpmaddubsw`) and `vpmaddwd` add their products with four activation
//! quants broadcast into one `i32` per row, exactly, and eight steps give each row's
//! block sum. Then the AVX-512 kernels' multiply and FMA per block: the same bits.
//! Q4_1 weights are requantised to Q8_0 a panel at a time into a scratch first.
//!
//! Unsafe code: `#[target_feature]` functions may only be called where the CPU has the
//! features (`super::level` checks them once; the entry point is `unsafe` for that), and
//! SIMD loads and stores take raw pointers, each into a slice or array that holds the
//! bytes read or written (stated at each site).
#![allow(unsafe_code)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::{PANEL, PanelBuf, Panels, Q41Rows, QK, QuantActs, Source, dot_finish};

/// See [`super::matmul_q8`].
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
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
            PanelBuf::with(nb, 1, |buf| {
                for p in p0..p1 {
                    requantise(q, p, buf);
                    let done = (p - p0) * PANEL;
                    panels(buf.panels(), 0..1, rows.len() - done, x, &mut out[done * m..]);
                }
            });
        }
    }
}

/// Panels `panels` of `w` against every activation row, two rows at a time (more
/// would spill: AVX2 has 16 registers): `out[r * m + i]` for output rows `r < n`.
#[target_feature(enable = "avx2,fma,f16c")]
fn panels(w: Panels<'_>, panels: Range<usize>, n: usize, x: &QuantActs, out: &mut [f32]) {
    let m = x.m;
    for p in panels.clone() {
        let r0 = (p - panels.start) * PANEL;
        let mut i = 0;
        while i + 2 <= m {
            for (k, acc) in dot::<2>(w, p, x, i).iter().enumerate() {
                store(acc, out, r0, n, m, i + k);
            }
            i += 2;
        }
        if i < m {
            store(&dot::<1>(w, p, x, i)[0], out, r0, n, m, i);
        }
    }
}

/// `M` activation rows from `i0` against panel `p` (its two halves of eight rows).
#[target_feature(enable = "avx2,fma,f16c")]
fn dot<const M: usize>(w: Panels<'_>, p: usize, x: &QuantActs, i0: usize) -> [[__m256; 2]; M] {
    let nb = w.nb;
    let xb: [&[super::ActBlock]; M] = std::array::from_fn(|i| &x.blocks[(i0 + i) * nb..][..nb]);
    let xd: [&[f32]; M] = std::array::from_fn(|i| &x.d[(i0 + i) * nb..][..nb]);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 2]; M];
    for b in 0..nb {
        let wq = w.quants(p, b);
        let mut sum = [[_mm256_setzero_si256(); 2]; M];
        for (s, step) in wq.iter().enumerate() {
            let wv = signed(step);
            let wabs = wv.map(|v| _mm256_sign_epi8(v, v));
            for i in 0..M {
                let a = _mm256_set1_epi32(xb[i][b].word(s));
                for h in 0..2 {
                    let pairs = _mm256_maddubs_epi16(wabs[h], _mm256_sign_epi8(a, wv[h]));
                    sum[i][h] = _mm256_add_epi32(sum[i][h], _mm256_madd_epi16(pairs, ones));
                }
            }
        }
        let d = w.scales(p, b);
        // SAFETY: two 16-byte loads of the 16 f16 scales.
        let dw = unsafe {
            [
                _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr().cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(d[8..].as_ptr().cast())),
            ]
        };
        for i in 0..M {
            let dx = _mm256_set1_ps(xd[i][b]);
            for h in 0..2 {
                let q = _mm256_cvtepi32_ps(sum[i][h]);
                acc[i][h] = _mm256_fmadd_ps(_mm256_mul_ps(dw[h], dx), q, acc[i][h]);
            }
        }
    }
    acc
}

/// One panel step as signed quants (rows 0-7, rows 8-15), asking for the weights ahead
/// into L1 and L2 as the AVX-512 loads do (steps are read in storage order; see
/// [`super::PREFETCH_BYTES`] and [`super::FAR_PREFETCH_BYTES`]).
#[inline]
#[target_feature(enable = "avx2")]
fn signed(step: &[u8; 2 * QK]) -> [__m256i; 2] {
    let at = step.as_ptr();
    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_byte_add(super::PREFETCH_BYTES).cast());
    _mm_prefetch::<_MM_HINT_T2>(at.wrapping_byte_add(super::FAR_PREFETCH_BYTES).cast());
    let offset = _mm256_set1_epi8(i8::MIN);
    // SAFETY: two 32-byte unaligned loads of the step's 64 bytes.
    unsafe {
        [
            _mm256_xor_si256(_mm256_loadu_si256(at.cast()), offset),
            _mm256_xor_si256(_mm256_loadu_si256(at.wrapping_add(32).cast()), offset),
        ]
    }
}

/// Panel results (two halves) of activation row `i` into `out[r * m + i]` for the rows
/// `r0..r0 + 16` below `n`.
#[target_feature(enable = "avx2")]
fn store(acc: &[__m256; 2], out: &mut [f32], r0: usize, n: usize, m: usize, i: usize) {
    let mut lanes = [0f32; PANEL];
    // SAFETY: `lanes` holds 16 floats.
    unsafe {
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc[0]);
        _mm256_storeu_ps(lanes[8..].as_mut_ptr(), acc[1]);
    }
    for (k, v) in lanes.iter().enumerate().take(n.saturating_sub(r0)) {
        out[(r0 + k) * m + i] = *v;
    }
}

/// Requantise panel `p` of a Q4_1 matrix to Q8_0 into `buf`'s first slot.
#[target_feature(enable = "avx2,fma,f16c")]
fn requantise(w: &Q41Rows, p: usize, buf: &mut PanelBuf) {
    let (nb, r0) = (w.nb, p * PANEL);
    let n = buf.start(w, p, 0);
    let low = _mm256_set1_epi8(0x0F);
    let iota_lo = _mm256_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0);
    let iota_hi = _mm256_setr_ps(8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0);
    let sign = _mm256_set1_ps(-0.0);
    let rounding = _mm256_set1_ps(0.499_999_97);
    for k in 0..n {
        for b in 0..nb {
            let i = (r0 + k) * nb + b;
            let d = half::f16::from_bits(w.d[i] & !super::SLOW).to_f32();
            let m = half::f16::from_bits(w.m[i]).to_f32();
            let d8 = super::q41_amax(d, m) / 127.0;
            let id = if d8 != 0.0 { 1.0 / d8 } else { 0.0 };
            let round = |iota: __m256| {
                let vals = _mm256_add_ps(_mm256_mul_ps(iota, _mm256_set1_ps(d)), _mm256_set1_ps(m));
                let xq = _mm256_mul_ps(vals, _mm256_set1_ps(id));
                let h = _mm256_or_ps(_mm256_and_ps(xq, sign), rounding);
                _mm256_cvttps_epi32(_mm256_add_ps(xq, h))
            };
            let (lo, hi) = (round(iota_lo), round(iota_hi));
            // i32 -> i16 (lanes interleave per 128 bits; the permute restores order) -> i8.
            let p16 = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(lo, hi));
            let table =
                _mm_packs_epi16(_mm256_castsi256_si128(p16), _mm256_extracti128_si256::<1>(p16));
            // SAFETY: a 16-byte unaligned load of one block's nibbles.
            let nib = unsafe { _mm_loadu_si128(w.nibbles(r0 + k, b).as_ptr().cast()) };
            let idx = _mm256_and_si256(
                _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(nib), _mm_srli_epi16(nib, 4)),
                low,
            );
            let q = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(table), idx);
            let mut bytes = [0u8; QK];
            // SAFETY: `bytes` holds 32 bytes.
            unsafe {
                _mm256_storeu_si256(
                    bytes.as_mut_ptr().cast(),
                    _mm256_xor_si256(q, _mm256_set1_epi8(i8::MIN)),
                );
            };
            buf.set(0, b, k, &bytes, half::f16::from_f32(d8).to_bits());
        }
    }
}

/// See [`super::dot_rows`] (which checked that `k` covers every row).
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn dot_rows(q: &[f32], k: &[f32], stride: usize, out: &mut [f32]) {
    let n = q.len();
    let mut t = 0;
    while t + 4 <= out.len() {
        let rows: [&[f32]; 4] = std::array::from_fn(|i| &k[(t + i) * stride..][..n]);
        let mut acc = [_mm256_setzero_ps(); 4];
        for (c, x) in q.chunks_exact(8).enumerate() {
            // SAFETY: `x` holds 8 floats.
            let x = unsafe { _mm256_loadu_ps(x.as_ptr()) };
            for (a, row) in acc.iter_mut().zip(&rows) {
                let y = &row[8 * c..8 * c + 8];
                // SAFETY: `y` holds 8 floats.
                *a = _mm256_add_ps(*a, _mm256_mul_ps(x, unsafe { _mm256_loadu_ps(y.as_ptr()) }));
            }
        }
        for ((o, a), row) in out[t..t + 4].iter_mut().zip(&acc).zip(&rows) {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
            *o = dot_finish(&lanes, q, row);
        }
        t += 4;
    }
    for (t, o) in out.iter_mut().enumerate().skip(t) {
        *o = super::dot(q, &k[t * stride..][..n]);
    }
}
