//! Quantized weights and the two kernels the model needs from them: a matrix product
//! with f32 activations, and a row lookup (token embeddings).
//!
//! Q8_0 weights, and Q4_1 weights served with the numerics of their Q8_0
//! requantisation, go through this crate's own kernels ([`kernels`]) when the CPU has
//! AVX2 (exact integer block sums, within rounding of candle's dot product, several
//! times faster); every other
//! format, and every format on other CPUs, through candle's per-block dot products
//! (`GgmlType::vec_dot`). The driver around them is ours, so the work runs on the
//! engine's own pool, and several weights that share an input (q/k/v, gate/up) run in
//! one parallel region. Everything model code needs goes through [`Weight`].

use candle_core::quantized::GgmlDType;
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K,
    BlockQ8_0, GgmlType,
};
use half::f16;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::{self, Q8Rows, Q41Rows, QuantActs};

/// A row-major `[rows, cols]` matrix of blocks: row `r` is `data[r * bpr..(r + 1) * bpr]`.
#[derive(Clone)]
pub(crate) struct Blocks<T> {
    data: Vec<T>,
    rows: usize,
    cols: usize,
}

/// A weight matrix `[rows (outputs), cols (inputs)]` in one of the GGUF formats.
#[derive(Clone)]
pub(crate) enum Weight {
    F32(Blocks<f32>),
    F16(Blocks<f16>),
    Q4_0(Blocks<BlockQ4_0>),
    Q4_1(Blocks<BlockQ4_1>),
    Q5_0(Blocks<BlockQ5_0>),
    Q5_1(Blocks<BlockQ5_1>),
    Q8_0(Blocks<BlockQ8_0>),
    Q2K(Blocks<BlockQ2K>),
    Q3K(Blocks<BlockQ3K>),
    Q4K(Blocks<BlockQ4K>),
    Q5K(Blocks<BlockQ5K>),
    Q6K(Blocks<BlockQ6K>),
    /// Q8_0 for this crate's kernels.
    Q8x(Q8Rows),
    /// Q4_1 with Q8_0 numerics, for this crate's kernels.
    Q41x(Q41Rows),
}

/// How [`Weight::load`] stores a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Formats {
    /// Q4_1/Q5_0/Q5_1 get Q8_0 numerics.
    pub(crate) requantize: bool,
    /// Use this crate's kernels where they apply (and the CPU has them).
    pub(crate) fast: bool,
    /// With `requantize` and `fast`: keep Q4_1 weights 4-bit in memory ([`Q41Rows`],
    /// the same numerics, less memory, slower decode) instead of materialising Q8_0.
    pub(crate) compact_q4_1: bool,
}

macro_rules! dispatch {
    ($w:expr, $b:ident => $body:expr) => {
        match $w {
            Weight::Q8x(_) | Weight::Q41x(_) => unreachable!("handled before dispatch"),
            Weight::F32($b) => $body,
            Weight::F16($b) => $body,
            Weight::Q4_0($b) => $body,
            Weight::Q4_1($b) => $body,
            Weight::Q5_0($b) => $body,
            Weight::Q5_1($b) => $body,
            Weight::Q8_0($b) => $body,
            Weight::Q2K($b) => $body,
            Weight::Q3K($b) => $body,
            Weight::Q4K($b) => $body,
            Weight::Q5K($b) => $body,
            Weight::Q6K($b) => $body,
        }
    };
}

/// Columns of output one parallel task computes: enough to amortise the task, few
/// enough to balance two to eight threads.
const COLS_PER_TASK: usize = 32;

impl<T: GgmlType> Blocks<T> {
    fn from_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(T::BLCK_SIZE) {
            return Err(Error::Model(format!(
                "a {:?} row of {cols} values is not a whole number of blocks",
                T::DTYPE
            )));
        }
        let count = rows * (cols / T::BLCK_SIZE);
        let size = std::mem::size_of::<T>();
        if bytes.len() != count * size {
            return Err(Error::Model(format!(
                "tensor data is {} bytes, expected {} for {rows}x{cols} {:?}",
                bytes.len(),
                count * size,
                T::DTYPE
            )));
        }
        let mut data = vec![T::zeros(); count];
        copy_bytes_into(bytes, &mut data);
        Ok(Blocks { data, rows, cols })
    }

    fn blocks_per_row(&self) -> usize {
        self.cols / T::BLCK_SIZE
    }

    fn row(&self, r: usize) -> &[T] {
        let bpr = self.blocks_per_row();
        &self.data[r * bpr..(r + 1) * bpr]
    }

    #[cfg(test)]
    fn to_q8_0(&self) -> Blocks<BlockQ8_0> {
        let bpr_out = self.cols / BlockQ8_0::BLCK_SIZE;
        let mut data = vec![BlockQ8_0::zeros(); self.rows * bpr_out];
        data.par_chunks_mut(bpr_out).enumerate().for_each_init(
            || vec![0f32; self.cols],
            |row, (r, out)| {
                T::to_float(self.row(r), row);
                BlockQ8_0::from_float(row, out);
            },
        );
        Blocks { data, rows: self.rows, cols: self.cols }
    }
}

/// Copy raw GGUF tensor bytes into a vector of block structs.
#[allow(unsafe_code)]
pub(crate) fn copy_bytes_into<T: GgmlType>(bytes: &[u8], out: &mut [T]) {
    let len = std::mem::size_of_val(out);
    assert_eq!(bytes.len(), len, "caller checked the sizes");
    // SAFETY: candle's block types (and f32/f16) are `#[repr(C)]` structs of f16 and
    // integer arrays with no padding (candle asserts their sizes equal ggml's), so every
    // byte pattern is a valid value; `out` is a live, exclusively borrowed allocation of
    // exactly `len` bytes, and the source is a distinct byte slice of the same length.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr().cast::<u8>(), len);
    }
}

impl Weight {
    /// The matrix in this crate's Q8_0 form, if it is in it.
    pub(crate) fn as_q8_mut(&mut self) -> Option<&mut Q8Rows> {
        match self {
            Weight::Q8x(q) => Some(q),
            _ => None,
        }
    }

    /// Build a weight from GGUF tensor bytes as its own format (candle's kernels).
    /// `dims` is row-major (outputs first).
    pub(crate) fn from_gguf(dtype: GgmlDType, bytes: &[u8], dims: &[usize]) -> Result<Self> {
        let (rows, cols) = matrix_dims(dims)?;
        Ok(match dtype {
            GgmlDType::F32 => Weight::F32(Blocks::from_bytes(bytes, rows, cols)?),
            GgmlDType::F16 => Weight::F16(Blocks::from_bytes(bytes, rows, cols)?),
            GgmlDType::Q4_0 => Weight::Q4_0(Blocks::from_bytes(bytes, rows, cols)?),
            GgmlDType::Q4_1 => Weight::Q4_1(Blocks::from_bytes(bytes, rows, cols)?),
            GgmlDType::Q5_0 => Weight::Q5_0(Blocks::from_bytes(bytes, rows, cols)?),
            GgmlDType::Q5_1 => Weight::Q5_1(Blocks::from_bytes(bytes, rows, cols)?),
            GgmlDType::Q8_0 => Weight::Q8_0(Blocks::from_bytes(bytes, rows, cols)?),
            GgmlDType::Q2K => Weight::Q2K(Blocks::from_bytes(bytes, rows, cols)?),
            GgmlDType::Q3K => Weight::Q3K(Blocks::from_bytes(bytes, rows, cols)?),
            GgmlDType::Q4K => Weight::Q4K(Blocks::from_bytes(bytes, rows, cols)?),
            GgmlDType::Q5K => Weight::Q5K(Blocks::from_bytes(bytes, rows, cols)?),
            GgmlDType::Q6K => Weight::Q6K(Blocks::from_bytes(bytes, rows, cols)?),
            other => {
                return Err(Error::Model(format!("unsupported tensor type {other:?}")));
            }
        })
    }

    /// Build a weight the way the engine runs it: Q4_1/Q5_0/Q5_1 with Q8_0 numerics
    /// when `formats.requantize` (materialised as Q8_0, or Q4_1 kept 4-bit when
    /// `formats.compact_q4_1`), this crate's kernels where they apply.
    pub(crate) fn load(
        dtype: GgmlDType,
        bytes: &[u8],
        dims: &[usize],
        formats: Formats,
    ) -> Result<Self> {
        let (rows, cols) = matrix_dims(dims)?;
        let fast = formats.fast && kernels::level() != kernels::Level::Portable;
        let whole_blocks = cols.is_multiple_of(kernels::QK);
        if fast && whole_blocks && dtype == GgmlDType::Q8_0 {
            return Ok(Weight::Q8x(Q8Rows::from_gguf_bytes(bytes, rows, cols)?));
        }
        if fast
            && whole_blocks
            && formats.requantize
            && formats.compact_q4_1
            && dtype == GgmlDType::Q4_1
            && let Some(w) = Q41Rows::from_gguf_bytes(bytes, rows, cols)?
        {
            return Ok(Weight::Q41x(w));
        }
        if formats.requantize
            && whole_blocks
            && let Some(q8) = requantize_to_q8_0(dtype, bytes)
        {
            return Weight::load(GgmlDType::Q8_0, &q8, dims, formats);
        }
        Weight::from_gguf(dtype, bytes, dims)
    }

    /// Outputs (rows).
    pub(crate) fn rows(&self) -> usize {
        match self {
            Weight::Q8x(w) => w.rows(),
            Weight::Q41x(w) => w.rows(),
            other => dispatch!(other, b => b.rows),
        }
    }

    /// Inputs (columns).
    pub(crate) fn cols(&self) -> usize {
        match self {
            Weight::Q8x(w) => w.cols(),
            Weight::Q41x(w) => w.cols(),
            other => dispatch!(other, b => b.cols),
        }
    }

    /// The format's name, for logs and [`crate::ModelInfo::weight_types`]: the GGML
    /// type, or `Q8_0(Q4_1)` for Q4_1 weights with Q8_0 numerics.
    pub(crate) fn type_name(&self) -> String {
        fn of<T: GgmlType>(_: &Blocks<T>) -> GgmlDType {
            T::DTYPE
        }
        match self {
            Weight::Q8x(_) => "Q8_0".into(),
            Weight::Q41x(_) => "Q8_0(Q4_1)".into(),
            other => format!("{:?}", dispatch!(other, b => of(b))),
        }
    }

    /// Whether requantising to Q8_0 speeds this weight up: candle has no SIMD dot
    /// product for these formats, and Q8_0 holds their values almost exactly.
    #[cfg(test)]
    pub(crate) fn wants_q8_0(&self) -> bool {
        matches!(self, Weight::Q4_1(_) | Weight::Q5_0(_) | Weight::Q5_1(_))
            && self.cols().is_multiple_of(BlockQ8_0::BLCK_SIZE)
    }

    /// The same matrix in Q8_0, through candle's own conversions (the reference the
    /// byte-level [`requantize_to_q8_0`] is tested against).
    #[cfg(test)]
    pub(crate) fn to_q8_0(&self) -> Weight {
        match self {
            Weight::Q8_0(b) => Weight::Q8_0(b.clone()),
            Weight::Q8x(_) | Weight::Q41x(_) => unreachable!("test helper for candle formats"),
            other => Weight::Q8_0(dispatch!(other, b => b.to_q8_0())),
        }
    }

    /// The whole matrix as f32, row-major (for small tensors: norms, biases).
    pub(crate) fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows() * self.cols()];
        for (r, row) in out.chunks_mut(self.cols()).enumerate() {
            self.row_into(r, row);
        }
        out
    }

    /// Dequantise row `r` into `out` (`out.len() == cols`).
    pub(crate) fn row_into(&self, r: usize, out: &mut [f32]) {
        match self {
            Weight::Q8x(w) => w.row_into(r, out),
            Weight::Q41x(w) => w.row_into(r, out),
            other => dispatch!(other, b => to_float_row(b, r, out)),
        }
    }

    /// `out[i, j] = sum_k x[i, k] * self[j, k]` for `m` rows of `x`. Runs on the
    /// current rayon pool.
    pub(crate) fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        Weight::matmul_many(&[self], x, m).pop().unwrap_or_default()
    }

    /// Whether the weight has a SIMD kernel of its own (Q8_0 or Q4_1 laid out for it).
    fn is_fast(&self) -> bool {
        matches!(self, Weight::Q8x(_) | Weight::Q41x(_))
    }

    /// [`Weight::matmul`] with each of the `m` output rows in a vector of its own
    /// (the logits of each sequence): one copy out of the kernels' column-major layout
    /// instead of a transpose and a copy per row.
    pub(crate) fn matmul_rows(&self, x: &[f32], m: usize) -> Vec<Vec<f32>> {
        if self.is_fast() {
            let cols = matmul_fast_cols(&[self], x, m).pop().unwrap_or_default();
            return split_rows(&cols, m);
        }
        let out = self.matmul(x, m);
        out.chunks(self.rows()).map(<[f32]>::to_vec).collect()
    }

    /// Several products sharing one input, in one parallel region when the weights
    /// have the same kind of kernel (q/k/v, gate/up).
    pub(crate) fn matmul_many(weights: &[&Weight], x: &[f32], m: usize) -> Vec<Vec<f32>> {
        if weights.iter().all(|w| w.is_fast()) {
            return matmul_fast(weights, x, m);
        }
        macro_rules! same {
            ($variant:ident, $kernel:expr) => {{
                let group: Option<Vec<_>> = weights
                    .iter()
                    .map(|w| match w {
                        Weight::$variant(b) => Some(b),
                        _ => None,
                    })
                    .collect();
                if let Some(group) = group {
                    return matmul_group(&group, x, m, $kernel);
                }
            }};
        }
        match weights.first() {
            Some(Weight::Q8_0(_)) => same!(Q8_0, generic_chunk),
            Some(Weight::Q4_0(_)) => same!(Q4_0, generic_chunk),
            Some(Weight::Q4K(_)) => same!(Q4K, generic_chunk),
            Some(Weight::Q6K(_)) => same!(Q6K, generic_chunk),
            _ => {}
        }
        if weights.len() > 1 {
            return weights.iter().map(|w| w.matmul(x, m)).collect();
        }
        match weights.first() {
            Some(w) if w.is_fast() => matmul_fast(weights, x, m),
            Some(w) => {
                vec![
                    dispatch!(w, b => matmul_group(&[b], x, m, generic_chunk).pop().unwrap_or_default()),
                ]
            }
            None => Vec::new(),
        }
    }
}

fn matrix_dims(dims: &[usize]) -> Result<(usize, usize)> {
    match *dims {
        [cols] => Ok((1, cols)),
        [rows, cols] => Ok((rows, cols)),
        _ => Err(Error::Model(format!("expected a matrix, got shape {dims:?}"))),
    }
}

/// Bytes of one Q8_0 block: f16 scale, 32 signed quants.
const Q8_0_BYTES: usize = 34;

/// Convert raw Q4_1/Q5_0/Q5_1 GGUF bytes straight to Q8_0 bytes, block by block, on the
/// current rayon pool: the same values candle's `to_float` then `from_float` produce,
/// in loops LLVM vectorises. `None` for other types.
pub(crate) fn requantize_to_q8_0(dtype: GgmlDType, bytes: &[u8]) -> Option<Vec<u8>> {
    let size = match dtype {
        GgmlDType::Q4_1 => 20,
        GgmlDType::Q5_0 => 22,
        GgmlDType::Q5_1 => 24,
        _ => return None,
    };
    if !bytes.len().is_multiple_of(size) {
        return None;
    }
    let blocks = bytes.len() / size;
    let mut out = vec![0u8; blocks * Q8_0_BYTES];
    const PER_TASK: usize = 1024;
    out.par_chunks_mut(PER_TASK * Q8_0_BYTES).zip(bytes.par_chunks(PER_TASK * size)).for_each(
        |(dst, src)| {
            let mut vals = [0f32; 32];
            for (o, b) in dst.chunks_exact_mut(Q8_0_BYTES).zip(src.chunks_exact(size)) {
                decode_block(dtype, b, &mut vals);
                encode_q8_0(&vals, o);
            }
        },
    );
    Some(out)
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dequantise one block as ggml does.
fn decode_block(dtype: GgmlDType, b: &[u8], vals: &mut [f32; 32]) {
    match dtype {
        GgmlDType::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let Ok(qs) = <&[u8; 16]>::try_from(&b[4..20]) else { return };
            for j in 0..16 {
                vals[j] = f32::from(qs[j] & 0x0F) * d + m;
                vals[j + 16] = f32::from(qs[j] >> 4) * d + m;
            }
        }
        GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
            let q5_1 = dtype == GgmlDType::Q5_1;
            let d = f16_at(b, 0);
            let (m, off) = if q5_1 { (f16_at(b, 2), 4) } else { (0.0, 2) };
            let qh = u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]);
            let qs = &b[off + 4..off + 20];
            for j in 0..16 {
                let hi0 = ((qh >> j) << 4) & 0x10;
                let hi1 = (qh >> (j + 12)) & 0x10;
                let x0 = u32::from(qs[j] & 0x0F) | hi0;
                let x1 = u32::from(qs[j] >> 4) | hi1;
                #[allow(clippy::cast_precision_loss, clippy::cast_possible_wrap)]
                if q5_1 {
                    vals[j] = x0 as f32 * d + m;
                    vals[j + 16] = x1 as f32 * d + m;
                } else {
                    vals[j] = (x0 as i32 - 16) as f32 * d;
                    vals[j + 16] = (x1 as i32 - 16) as f32 * d;
                }
            }
        }
        _ => vals.fill(0.0),
    }
}

/// Quantise 32 values to one Q8_0 block (ggml's `quantize_row_q8_0_ref`). Rounds half
/// away from zero like `f32::round`, written so LLVM vectorises it (lane-wise maxima,
/// no `roundf` calls).
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn encode_q8_0(vals: &[f32; 32], out: &mut [u8]) {
    let mut lanes = [0f32; 8];
    for chunk in vals.chunks_exact(8) {
        for (l, v) in lanes.iter_mut().zip(chunk) {
            let a = v.abs();
            *l = if a > *l { a } else { *l };
        }
    }
    let mut amax = 0f32;
    for l in lanes {
        amax = if l > amax { l } else { amax };
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    let mut q = [0i8; 32];
    for (q, v) in q.iter_mut().zip(vals) {
        let x = v * id;
        *q = (x + 0.499_999_97f32.copysign(x)).trunc() as i8;
    }
    for (o, q) in out[2..34].iter_mut().zip(q) {
        *o = q.to_le_bytes()[0];
    }
}

fn to_float_row<T: GgmlType>(b: &Blocks<T>, r: usize, out: &mut [f32]) {
    T::to_float(b.row(r), out);
}

/// Computes output columns `col0..` (all `m` rows each, column-major) of one weight.
type ChunkKernel<T> =
    fn(&Blocks<T>, usize, &mut [f32], &[<T as GgmlType>::VecDotType], usize, usize);

/// Any block type: candle's dot product per (column, row).
fn generic_chunk<T: GgmlType>(
    w: &Blocks<T>,
    col0: usize,
    chunk: &mut [f32],
    xq: &[T::VecDotType],
    k: usize,
    m: usize,
) {
    let vbpr = k / T::VecDotType::BLCK_SIZE;
    for (j, col_out) in chunk.chunks_mut(m).enumerate() {
        let wrow = w.row(col0 + j);
        for (i, y) in col_out.iter_mut().enumerate() {
            *y = T::vec_dot(k, wrow, &xq[i * vbpr..(i + 1) * vbpr]);
        }
    }
}

/// Quantise `m` rows of `k` activations to `V`, in parallel for big inputs. Q8_0 (the
/// dot-product type of Q8_0 and Q4_0 weights) goes through [`encode_q8_0`], which gives
/// candle's `from_float` result without its per-element `roundf` calls.
fn quantize_activations<V: GgmlType>(x: &[f32], m: usize, k: usize) -> Vec<V> {
    let vbpr = k / V::BLCK_SIZE;
    let mut xq = vec![V::zeros(); m * vbpr];
    if V::DTYPE == GgmlDType::Q8_0 && std::mem::size_of::<V>() == Q8_0_BYTES {
        let mut bytes = vec![0u8; m * vbpr * Q8_0_BYTES];
        let encode = |(out, vals): (&mut [u8], &[f32])| {
            if let Ok(vals) = <&[f32; 32]>::try_from(vals) {
                encode_q8_0(vals, out);
            }
        };
        if m * k >= 8192 {
            bytes.par_chunks_mut(Q8_0_BYTES).zip(x.par_chunks(32)).for_each(encode);
        } else {
            bytes.chunks_mut(Q8_0_BYTES).zip(x.chunks(32)).for_each(encode);
        }
        copy_bytes_into(&bytes, &mut xq);
        return xq;
    }
    if m * k >= 8192 {
        xq.par_chunks_mut(vbpr).zip(x.par_chunks(k)).for_each(|(q, row)| V::from_float(row, q));
    } else {
        for (q, row) in xq.chunks_mut(vbpr).zip(x.chunks(k)) {
            V::from_float(row, q);
        }
    }
    xq
}

/// The driver for this crate's kernels: quantise the activations once, then compute
/// output columns in parallel tasks over all the weights.
fn matmul_fast(weights: &[&Weight], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    if m > 1 && m <= SCATTER_MAX_ROWS {
        return matmul_fast_scatter(weights, x, m);
    }
    let mut outs = matmul_fast_cols(weights, x, m);
    if m > 1 {
        for out in &mut outs {
            *out = transpose(out, m);
        }
    }
    outs
}

/// What both fast paths start from: the activations quantised once and a zeroed output
/// per weight (`rows * m` values); `None` for no weights.
fn fast_setup(weights: &[&Weight], x: &[f32], m: usize) -> Option<(QuantActs, Vec<Vec<f32>>)> {
    let k = weights.first()?.cols();
    debug_assert!(weights.iter().all(|w| w.cols() == k));
    debug_assert_eq!(x.len(), m * k);
    let outs = weights.iter().map(|w| vec![0f32; w.rows() * m]).collect();
    Some((QuantActs::new(x, m, k), outs))
}

/// Up to this many activation rows (a batched decode step), each task of
/// [`matmul_fast`] turns its column-major block into row-major itself, from a buffer on
/// its stack: the transpose runs inside the parallel region, on data still in L1.
const SCATTER_MAX_ROWS: usize = 8;

/// [`matmul_fast`] for `2..=SCATTER_MAX_ROWS` rows: the same tasks and kernel calls,
/// each task writing its columns straight into the row-major outputs.
fn matmul_fast_scatter(weights: &[&Weight], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    let Some((acts, mut outs)) = fast_setup(weights, x, m) else { return Vec::new() };
    {
        // Task `t` of a weight owns columns [t * COLS, (t + 1) * COLS) of each of the
        // `m` output rows: `m` consecutive entries of `slices`.
        let mut tasks: Vec<(&Weight, usize)> = Vec::new();
        let mut slices: Vec<&mut [f32]> = Vec::new();
        for (w, out) in weights.iter().zip(outs.iter_mut()) {
            let n = w.rows();
            let mut rows: Vec<_> = out.chunks_mut(n).map(|r| r.chunks_mut(COLS_PER_TASK)).collect();
            for t in 0..n.div_ceil(COLS_PER_TASK) {
                tasks.push((w, t * COLS_PER_TASK));
                slices.extend(rows.iter_mut().filter_map(Iterator::next));
            }
        }
        let acts = &acts;
        tasks.into_par_iter().zip(slices.par_chunks_mut(m)).for_each(|((w, col0), rows)| {
            let ncols = rows.first().map_or(0, |r| r.len());
            let mut buf = [0f32; COLS_PER_TASK * SCATTER_MAX_ROWS];
            let chunk = &mut buf[..ncols * m];
            let cols = col0..col0 + ncols;
            fast_kernel(w, cols, acts, chunk);
            for (i, row) in rows.iter_mut().enumerate() {
                for (o, col) in row.iter_mut().zip(chunk.chunks_exact(m)) {
                    *o = col[i];
                }
            }
        });
    }
    outs
}

/// The fast kernel of `w` over output columns `cols` (nothing for other kinds, which
/// never reach the fast paths: see [`Weight::is_fast`]).
fn fast_kernel(w: &Weight, cols: std::ops::Range<usize>, acts: &QuantActs, out: &mut [f32]) {
    match w {
        Weight::Q8x(q) => kernels::matmul_q8(q, cols, acts, out),
        Weight::Q41x(q) => kernels::matmul_q41(q, cols, acts, out),
        _ => {}
    }
}

/// [`matmul_fast`] without the final transpose: each output column-major `[n][m]`.
fn matmul_fast_cols(weights: &[&Weight], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    let Some((acts, mut outs)) = fast_setup(weights, x, m) else { return Vec::new() };
    {
        let mut tasks: Vec<(&Weight, usize, &mut [f32])> = Vec::new();
        for (w, out) in weights.iter().zip(outs.iter_mut()) {
            for (t, chunk) in out.chunks_mut(COLS_PER_TASK * m).enumerate() {
                tasks.push((w, t * COLS_PER_TASK, chunk));
            }
        }
        let acts = &acts;
        tasks.into_par_iter().for_each(|(w, col0, chunk)| {
            let cols = col0..col0 + chunk.len() / m;
            fast_kernel(w, cols, acts, chunk);
        });
    }
    outs
}

/// Column-major `[n][m]` to row-major `[m][n]`.
fn transpose(colmajor: &[f32], m: usize) -> Vec<f32> {
    let mut t = Vec::with_capacity(colmajor.len());
    // Row by row, each a strided read of the (cache-resident) source: no zero fill of
    // the fresh buffer, no per-element bounds check.
    for i in 0..m.min(colmajor.len()) {
        t.extend(colmajor[i..].iter().step_by(m).copied());
    }
    t
}

/// Column-major `[n][m]` to `m` separate rows of `n` values.
fn split_rows(colmajor: &[f32], m: usize) -> Vec<Vec<f32>> {
    (0..m.min(colmajor.len())).map(|i| colmajor[i..].iter().step_by(m).copied().collect()).collect()
}

/// The shared driver: quantise the activations once to each weight's dot-product
/// type, then compute output columns in parallel tasks over all the weights.
fn matmul_group<T: GgmlType>(
    weights: &[&Blocks<T>],
    x: &[f32],
    m: usize,
    kernel: ChunkKernel<T>,
) -> Vec<Vec<f32>> {
    let Some(first) = weights.first() else { return Vec::new() };
    let k = first.cols;
    debug_assert!(weights.iter().all(|w| w.cols == k));
    debug_assert_eq!(x.len(), m * k);
    let xq = quantize_activations::<T::VecDotType>(x, m, k);
    // Column-major scratch: task `t` owns columns [t * COLS, (t + 1) * COLS) of one
    // weight, all m rows, so tasks write disjoint slices.
    let mut outs: Vec<Vec<f32>> = weights.iter().map(|w| vec![0f32; w.rows * m]).collect();
    {
        let mut tasks: Vec<(&Blocks<T>, usize, &mut [f32])> = Vec::new();
        for (w, out) in weights.iter().zip(outs.iter_mut()) {
            for (t, chunk) in out.chunks_mut(COLS_PER_TASK * m).enumerate() {
                tasks.push((w, t * COLS_PER_TASK, chunk));
            }
        }
        let xq = &xq;
        tasks.into_par_iter().for_each(|(w, col0, chunk)| kernel(w, col0, chunk, xq, k, m));
    }
    if m > 1 {
        for out in &mut outs {
            *out = transpose(out, m);
        }
    }
    outs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(w: &[f32], rows: usize, cols: usize, x: &[f32], m: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * rows];
        for i in 0..m {
            for j in 0..rows {
                out[i * rows + j] = (0..cols).map(|c| x[i * cols + c] * w[j * cols + c]).sum();
            }
        }
        out
    }

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn f32_weight(w: &[f32], rows: usize, cols: usize) -> Weight {
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        Weight::from_gguf(GgmlDType::F32, &bytes, &[rows, cols]).unwrap()
    }

    #[test]
    fn f32_matmul_matches_reference_for_one_and_many_rows() {
        let (rows, cols) = (70, 64);
        let w = pseudo_random(rows * cols, 1);
        let weight = f32_weight(&w, rows, cols);
        for m in [1, 3] {
            let x = pseudo_random(m * cols, 2 + m as u32);
            let got = weight.matmul(&x, m);
            let want = reference(&w, rows, cols, &x, m);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn q8_0_requantisation_stays_close_and_grouped_matmul_agrees() {
        let (rows, cols) = (40, 64);
        let w = pseudo_random(rows * cols, 7);
        let mut q4 = vec![BlockQ4_1::zeros(); rows * cols / 32];
        BlockQ4_1::from_float(&w, &mut q4);
        let weight = Weight::Q4_1(Blocks { data: q4, rows, cols });
        assert!(weight.wants_q8_0());
        let dense = weight.to_f32();
        let q8 = weight.to_q8_0();
        assert!(matches!(q8, Weight::Q8_0(_)));
        let dense8 = q8.to_f32();
        let max_err = dense.iter().zip(&dense8).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max_err < 0.01, "requantisation error {max_err}");
        let x = pseudo_random(2 * cols, 9);
        let single = q8.matmul(&x, 2);
        let grouped = Weight::matmul_many(&[&q8, &q8], &x, 2);
        assert_eq!(grouped[0], single);
        assert_eq!(grouped[1], single);
        let want = reference(&dense8, rows, cols, &x, 2);
        for (a, b) in single.iter().zip(&want) {
            assert!((a - b).abs() < 0.05, "{a} vs {b}");
        }
    }

    #[test]
    fn byte_level_requantisation_equals_candles_round_trip() {
        let (rows, cols) = (8, 64);
        let w = pseudo_random(rows * cols, 11);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1] {
            let weight = match dtype {
                GgmlDType::Q4_1 => {
                    let mut b = vec![BlockQ4_1::zeros(); rows * cols / 32];
                    BlockQ4_1::from_float(&w, &mut b);
                    Weight::Q4_1(Blocks { data: b, rows, cols })
                }
                GgmlDType::Q5_0 => {
                    let mut b = vec![BlockQ5_0::zeros(); rows * cols / 32];
                    BlockQ5_0::from_float(&w, &mut b);
                    Weight::Q5_0(Blocks { data: b, rows, cols })
                }
                _ => {
                    let mut b = vec![BlockQ5_1::zeros(); rows * cols / 32];
                    BlockQ5_1::from_float(&w, &mut b);
                    Weight::Q5_1(Blocks { data: b, rows, cols })
                }
            };
            let raw = dispatch!(&weight, b => raw_bytes(b));
            let q8 = requantize_to_q8_0(dtype, &raw).unwrap();
            let direct = Weight::from_gguf(GgmlDType::Q8_0, &q8, &[rows, cols]).unwrap();
            assert_eq!(direct.to_f32(), weight.to_q8_0().to_f32(), "{dtype:?}");
            assert_eq!(direct.to_f32().len(), rows * cols);
        }
        assert!(requantize_to_q8_0(GgmlDType::Q8_0, &[0; 34]).is_none());
    }

    #[test]
    fn fast_activation_quantisation_equals_candles() {
        for (m, k) in [(1, 64), (3, 576), (16, 1536)] {
            let x: Vec<f32> = pseudo_random(m * k, m as u32 + 5).iter().map(|v| v * 40.0).collect();
            let fast = quantize_activations::<BlockQ8_0>(&x, m, k);
            let mut slow = vec![BlockQ8_0::zeros(); m * k / 32];
            BlockQ8_0::from_float(&x, &mut slow);
            assert!(fast == slow, "m={m} k={k}");
        }
    }

    #[test]
    fn matmul_rows_equals_the_rows_of_matmul() {
        let (rows, cols) = (70, 64);
        let w = pseudo_random(rows * cols, 11);
        let dense = f32_weight(&w, rows, cols);
        let raw = dispatch!(&dense.to_q8_0(), b => raw_bytes(b));
        let formats = Formats { requantize: true, fast: true, compact_q4_1: false };
        let fast = Weight::load(GgmlDType::Q8_0, &raw, &[rows, cols], formats).unwrap();
        if kernels::level() != kernels::Level::Portable {
            assert!(matches!(fast, Weight::Q8x(_)));
        }
        for weight in [&dense, &fast] {
            for m in [1, 3, 4] {
                let x = pseudo_random(m * cols, 12 + m as u32);
                let whole = weight.matmul(&x, m);
                let split = weight.matmul_rows(&x, m);
                assert_eq!(split.len(), m);
                for (got, want) in split.iter().zip(whole.chunks(rows)) {
                    assert_eq!(got.as_slice(), want, "m={m}");
                }
            }
        }
    }

    #[test]
    fn scattered_matmul_equals_the_transposed_one() {
        let (rows, cols) = (70, 64);
        let w = pseudo_random(rows * cols, 13);
        let raw = dispatch!(&f32_weight(&w, rows, cols).to_q8_0(), b => raw_bytes(b));
        let formats = Formats { requantize: true, fast: true, compact_q4_1: false };
        let fast = Weight::load(GgmlDType::Q8_0, &raw, &[rows, cols], formats).unwrap();
        if !matches!(fast, Weight::Q8x(_)) {
            return;
        }
        for m in 2..=SCATTER_MAX_ROWS + 1 {
            let x = pseudo_random(m * cols, 20 + m as u32);
            let want = transpose(&matmul_fast_cols(&[&fast], &x, m)[0], m);
            let got = Weight::matmul_many(&[&fast, &fast], &x, m);
            assert_eq!(got[0], want, "m={m}");
            assert_eq!(got[1], want, "m={m}");
        }
    }

    #[test]
    fn split_rows_turns_column_major_into_rows() {
        for (n, m) in [(1, 1), (5, 3), (17, 4), (40, 33)] {
            let colmajor: Vec<f32> = (0..n * m).map(|v| v as f32).collect();
            let rows = split_rows(&colmajor, m);
            assert_eq!(rows.len(), m);
            for (i, row) in rows.iter().enumerate() {
                let want: Vec<f32> = (0..n).map(|col| colmajor[col * m + i]).collect();
                assert_eq!(row, &want, "n={n} m={m}");
            }
        }
    }

    #[test]
    fn transpose_turns_column_major_into_row_major() {
        for (n, m) in [(1, 1), (5, 3), (17, 4), (40, 33)] {
            let colmajor: Vec<f32> = (0..n * m).map(|v| v as f32).collect();
            let t = transpose(&colmajor, m);
            for i in 0..m {
                for col in 0..n {
                    assert_eq!(t[i * n + col], colmajor[col * m + i], "n={n} m={m}");
                }
            }
        }
    }

    #[allow(unsafe_code)]
    fn raw_bytes<T: GgmlType>(b: &Blocks<T>) -> Vec<u8> {
        let len = std::mem::size_of_val(b.data.as_slice());
        let mut out = vec![0u8; len];
        // SAFETY: test-only inverse of `copy_bytes_into`, same reasoning.
        unsafe {
            std::ptr::copy_nonoverlapping(b.data.as_ptr().cast::<u8>(), out.as_mut_ptr(), len)
        };
        out
    }

    #[test]
    fn wrong_sizes_are_errors_not_panics() {
        assert!(Weight::from_gguf(GgmlDType::Q8_0, &[0u8; 33], &[1, 32]).is_err());
        assert!(Weight::from_gguf(GgmlDType::Q8_0, &[0u8; 34], &[1, 31]).is_err());
        assert!(Weight::from_gguf(GgmlDType::F32, &[0u8; 8], &[1, 1, 2]).is_err());
    }
}
