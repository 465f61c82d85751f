//! Hand-written SIMD kernels, behind runtime CPU-feature detection, each bit-identical
//! to the candle kernel it replaces (so swapping them never changes an answer).
//!
//! `dot4_q8_0`: four Q8_0 weight rows against one Q8_0 activation row. It performs, per
//! row, exactly the operations of candle's AVX2 `vec_dot_q8_0_q8_0` (sign trick,
//! pairwise multiply-add, one FMA per block into 8 lanes, the same horizontal sum), but
//! loads the activation block once for the four rows and keeps four independent FMA
//! chains in flight. (An AVX-512 VNNI variant, one `vpdpbusd` for the two multiply-add
//! steps, needs Rust 1.89; the workspace MSRV is 1.88.)

use candle_core::quantized::GgmlType;
use candle_core::quantized::k_quants::BlockQ8_0;

/// Which kernel this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    /// candle's kernels only.
    Portable,
    /// AVX2 + FMA.
    Avx2,
}

/// The best kernel level of this CPU (detected once).
pub(crate) fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    // Unoptimised builds (tests) run intrinsics many times slower than candle's already
    // optimised kernels: use those there. The kernels' own tests call them directly.
    if cfg!(debug_assertions) || std::env::var_os("SWITCHYARD_PORTABLE_KERNELS").is_some() {
        return Level::Portable;
    }
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Level::Avx2
    } else {
        Level::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Portable
}

/// `[dot(w[0], x), .., dot(w[3], x)]` over `k` values (all rows `k / 32` blocks).
pub(crate) fn dot4_q8_0(k: usize, w: [&[BlockQ8_0]; 4], x: &[BlockQ8_0]) -> [f32; 4] {
    let nb = k / 32;
    debug_assert!(w.iter().all(|r| r.len() >= nb) && x.len() >= nb);
    #[cfg(target_arch = "x86_64")]
    {
        match level() {
            // SAFETY: the CPU has the features these functions are compiled for
            // (checked by `level`), and every slice holds at least `nb` blocks.
            #[allow(unsafe_code)]
            Level::Avx2 => return unsafe { x86::dot4_avx2(nb, w, x) },
            Level::Portable => {}
        }
    }
    [
        BlockQ8_0::vec_dot(k, w[0], x),
        BlockQ8_0::vec_dot(k, w[1], x),
        BlockQ8_0::vec_dot(k, w[2], x),
        BlockQ8_0::vec_dot(k, w[3], x),
    ]
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;

    use candle_core::quantized::k_quants::BlockQ8_0;
    use half::f16;

    /// Bytes of a block: an f16 scale then 32 signed quants (`#[repr(C)]`, size 34,
    /// asserted by candle).
    const SCALE_BYTES: usize = 2;

    /// The scale of block `i` of `row`.
    ///
    /// # Safety
    /// `i < row.len()`.
    #[inline(always)]
    unsafe fn scale(row: &[BlockQ8_0], i: usize) -> f32 {
        // SAFETY: in bounds per the caller; a block starts with its f16 scale.
        let p = unsafe { row.as_ptr().add(i).cast::<u8>() };
        let bytes = unsafe { [*p, *p.add(1)] };
        f16::from_le_bytes(bytes).to_f32()
    }

    /// The 32 quants of block `i` of `row`.
    ///
    /// # Safety
    /// `i < row.len()`, and AVX is available.
    #[inline(always)]
    unsafe fn quants(row: &[BlockQ8_0], i: usize) -> __m256i {
        // SAFETY: in bounds per the caller; the quants follow the scale.
        unsafe { _mm256_loadu_si256(row.as_ptr().add(i).cast::<u8>().add(SCALE_BYTES).cast()) }
    }

    /// candle's `hsum_float_8`, operation for operation.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(x: __m256) -> f32 {
        let res = _mm256_extractf128_ps(x, 1);
        let res = _mm_add_ps(res, _mm256_castps256_ps128(x));
        let res = _mm_add_ps(res, _mm_movehl_ps(res, res));
        let res = _mm_add_ss(res, _mm_movehdup_ps(res));
        _mm_cvtss_f32(res)
    }

    /// # Safety
    /// AVX2 and FMA are available; every slice holds at least `nb` blocks.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot4_avx2(nb: usize, w: [&[BlockQ8_0]; 4], x: &[BlockQ8_0]) -> [f32; 4] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in 0..nb {
            // SAFETY: i < nb <= len of every slice.
            let (dy, by) = unsafe { (scale(x, i), quants(x, i)) };
            for r in 0..4 {
                let (dx, bx) = unsafe { (scale(w[r], i), quants(w[r], i)) };
                let d = _mm256_set1_ps(dx * dy);
                let ax = _mm256_sign_epi8(bx, bx);
                let sy = _mm256_sign_epi8(by, bx);
                let dot = _mm256_maddubs_epi16(ax, sy);
                let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, dot));
                acc[r] = _mm256_fmadd_ps(d, q, acc[r]);
            }
        }
        [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(n: usize, seed: u32) -> Vec<BlockQ8_0> {
        let mut s = seed.max(1);
        let vals: Vec<f32> = (0..n * 32)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 8.0 - 4.0
            })
            .collect();
        let mut out = vec![BlockQ8_0::zeros(); n];
        BlockQ8_0::from_float(&vals, &mut out);
        out
    }

    #[test]
    fn four_row_kernel_is_bit_identical_to_candles_dot_product() {
        for nb in [1, 2, 18, 48] {
            let k = nb * 32;
            let rows: Vec<Vec<BlockQ8_0>> = (0..4).map(|r| blocks(nb, 10 + r)).collect();
            let x = blocks(nb, 99);
            let got = dot4_q8_0(k, [&rows[0], &rows[1], &rows[2], &rows[3]], &x);
            let w = [rows[0].as_slice(), &rows[1], &rows[2], &rows[3]];
            let mut variants = vec![("dispatched", got)];
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            {
                // SAFETY: each variant runs only where the CPU has its features.
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    variants.push(("avx2", unsafe { x86::dot4_avx2(nb, w, &x) }));
                }
            }
            for (name, got) in variants {
                for r in 0..4 {
                    let want = BlockQ8_0::vec_dot(k, &rows[r], &x);
                    assert_eq!(got[r].to_bits(), want.to_bits(), "{name} nb={nb} row={r}");
                }
            }
        }
    }
}
