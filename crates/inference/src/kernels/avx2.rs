//! AVX2 + FMA kernels: candle's own instruction sequence (sign trick, `vpmaddubsw`,
//! `vpmaddwd`, one FMA per block), with each weight block decoded once for several
//! activation rows and four weight rows in flight.
//!
//! Unsafe code: `#[target_feature]` functions may only be called where the CPU has the
//! features (`super::level` checks them once; the entry point is `unsafe` for that), and
//! SIMD loads and stores take raw pointers, each into a slice or array that holds the
//! bytes read or written (stated at each site).
#![allow(unsafe_code)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::{ActBlock, QK, QuantActs, Source, dot_finish, hsum8};

/// Four weight rows' block `b`: signed quants and scales.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Expanded {
    w: [__m256i; 4],
    s: [f32; 4],
}

/// Activation rows per inner loop (16 accumulators would spill: AVX2 has 16 registers).
const GROUP: usize = 2;

/// See [`super::matmul_q8`].
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matmul(w: Source<'_>, rows: Range<usize>, x: &QuantActs, out: &mut [f32]) {
    let (m, nb) = (x.m, x.nb);
    assert!(
        w.nb() == nb
            && rows.end <= w.rows()
            && out.len() >= rows.len() * m
            && x.blocks.len() >= m * nb
            && x.d.len() >= m * nb,
        "kernel shapes"
    );
    if let (Source::Q8(q), 1) = (w, m) {
        // Decode: the weights go from memory straight into the dot products.
        let mut r = rows.start;
        while r < rows.end {
            let n = (rows.end - r).min(4);
            let acc = decode_q8(q, r, n, x);
            for (k, a) in acc.iter().enumerate().take(n) {
                let mut lanes = [0f32; 8];
                // SAFETY: `lanes` holds 8 floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
                out[r - rows.start + k] = hsum8(&lanes);
            }
            r += 4;
        }
        return;
    }
    let zero = Expanded { w: [_mm256_setzero_si256(); 4], s: [0.0; 4] };
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
        if m > i {
            dot::<1>(&scratch, x, i, &mut out[col * m..], n, m);
        }
        r += 4;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot<const G: usize>(
    scratch: &[Expanded],
    x: &QuantActs,
    i0: usize,
    out: &mut [f32],
    n: usize,
    m: usize,
) {
    let nb = scratch.len();
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 4]; G];
    let xb: [&[ActBlock]; G] = std::array::from_fn(|g| &x.blocks[(i0 + g) * nb..][..nb]);
    let xd: [&[f32]; G] = std::array::from_fn(|g| &x.d[(i0 + g) * nb..][..nb]);
    for (b, e) in scratch.iter().enumerate() {
        for g in 0..G {
            // SAFETY: `ActBlock` is 64-byte aligned; its quants are an aligned 32-byte load.
            let y = unsafe { _mm256_load_si256(xb[g][b].qs.as_ptr().cast()) };
            let dy = xd[g][b];
            for ((a, &w), &s) in acc[g].iter_mut().zip(&e.w).zip(&e.s) {
                let dot = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(y, w));
                let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, dot));
                *a = _mm256_fmadd_ps(_mm256_set1_ps(s * dy), q, *a);
            }
        }
    }
    for (g, rows) in acc.iter().enumerate() {
        for (k, a) in rows.iter().enumerate().take(n) {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
            out[k * m + i0 + g] = hsum8(&lanes);
        }
    }
}

/// One activation row against Q8_0 rows `r..r + n` (n <= 4, r even): [`dot`]'s
/// arithmetic per row and block (the same scale products `d_w * d_x`, the same FMA
/// order, so the same bits) with each stored row pair split ([`split_pair`]) and used
/// at once instead of going through the scratch.
#[allow(clippy::needless_range_loop, reason = "`j` indexes every row's scales")]
#[target_feature(enable = "avx2,fma,f16c")]
fn decode_q8(w: &super::Q8Rows, r: usize, n: usize, x: &QuantActs) -> [__m256; 4] {
    let (nb, qs) = (w.nb, &*w.qs);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    // `sc[k][j]`: row `k`'s scale times the activation's for block `b0 + j`.
    let mut sc = [[0f32; 8]; 4];
    for b0 in (0..nb).step_by(8) {
        let len = (nb - b0).min(8);
        let mut xd = [0f32; 8];
        xd[..len].copy_from_slice(&x.d[b0..b0 + len]);
        for (k, sk) in sc.iter_mut().enumerate().take(n) {
            let mut d = [0u16; 8];
            d[..len].copy_from_slice(&w.d[(r + k) * nb + b0..][..len]);
            // SAFETY: 16 bytes of `d`, 32 of `xd` and of `sk`.
            unsafe {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr().cast()));
                _mm256_storeu_ps(sk.as_mut_ptr(), _mm256_mul_ps(v, _mm256_loadu_ps(xd.as_ptr())));
            }
        }
        for j in 0..len {
            let b = b0 + j;
            // SAFETY: `ActBlock` is 64-byte aligned; its quants are an aligned 32-byte load.
            let y = unsafe { _mm256_load_si256(x.blocks[b].qs.as_ptr().cast()) };
            for h in 0..n.div_ceil(2) {
                let rows = split_pair(&qs[(r / 2 + h) * nb + b]);
                for (t, wv) in rows.into_iter().enumerate() {
                    let k = 2 * h + t;
                    if k < n {
                        let dot =
                            _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(y, wv));
                        let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, dot));
                        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(sc[k][j]), q, acc[k]);
                    }
                }
            }
        }
    }
    acc
}

/// One stored row pair's block (`[a lo, b lo]`, `[a hi, b hi]` in offset binary) as
/// the two rows' signed quants: two 32-byte loads, two lane permutes and two XORs,
/// asking for the weights ahead into L1 and L2 as the AVX-512 loads do (pairs are read
/// in storage order; see [`super::PREFETCH_BYTES`] and [`super::FAR_PREFETCH_BYTES`]).
#[inline]
#[target_feature(enable = "avx2")]
fn split_pair(block: &[u8; 2 * QK]) -> [__m256i; 2] {
    let at = block.as_ptr();
    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_byte_add(super::PREFETCH_BYTES).cast());
    _mm_prefetch::<_MM_HINT_T2>(at.wrapping_byte_add(super::FAR_PREFETCH_BYTES).cast());
    // SAFETY: two 32-byte unaligned loads of the block's 64 bytes.
    let (lo, hi) =
        unsafe { (_mm256_loadu_si256(at.cast()), _mm256_loadu_si256(at.wrapping_add(32).cast())) };
    let offset = _mm256_set1_epi8(i8::MIN);
    [
        _mm256_xor_si256(_mm256_permute2x128_si256::<0x20>(lo, hi), offset),
        _mm256_xor_si256(_mm256_permute2x128_si256::<0x31>(lo, hi), offset),
    ]
}

/// Q8_0 rows `r..r + n` (n <= 4, r even) into the scratch as signed quants (rows past
/// `n` as zeros).
#[target_feature(enable = "avx2,fma,f16c")]
fn expand_q8(w: &super::Q8Rows, r: usize, n: usize, scratch: &mut [Expanded]) {
    let (nb, qs) = (w.nb, &*w.qs);
    for (b, e) in scratch.iter_mut().enumerate() {
        for h in 0..2 {
            let rows = if 2 * h < n {
                split_pair(&qs[(r / 2 + h) * nb + b])
            } else {
                [_mm256_setzero_si256(); 2]
            };
            for (t, row) in rows.into_iter().enumerate() {
                let k = 2 * h + t;
                e.w[k] = if k < n { row } else { _mm256_setzero_si256() };
            }
        }
        for (k, s) in e.s.iter_mut().enumerate() {
            *s = if k < n { half::f16::from_bits(w.d[(r + k) * nb + b]).to_f32() } else { 0.0 };
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn expand_q41(w: &super::Q41Rows, r: usize, n: usize, scratch: &mut [Expanded]) {
    let nb = w.nb;
    let low = _mm256_set1_epi8(0x0F);
    let iota_lo = _mm256_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0);
    let iota_hi = _mm256_setr_ps(8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0);
    let sign = _mm256_set1_ps(-0.0);
    let rounding = _mm256_set1_ps(0.499_999_97);
    for (b, e) in scratch.iter_mut().enumerate() {
        for k in 0..4 {
            if k >= n {
                e.w[k] = _mm256_setzero_si256();
                e.s[k] = 0.0;
                continue;
            }
            let i = (r + k) * nb + b;
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
            let nib = unsafe { _mm_loadu_si128(w.nibbles(r + k, b).as_ptr().cast()) };
            let idx = _mm256_and_si256(
                _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(nib), _mm_srli_epi16(nib, 4)),
                low,
            );
            e.w[k] = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(table), idx);
            e.s[k] = half::f16::from_f32(d8).to_f32();
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
