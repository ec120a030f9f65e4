//! tract's AVX-512 f32 matrix-multiply kernels again, in Rust, with a faster tile store.
//!
//! Every tract-linalg 0.23.9 kernel for x86-64 writes its tile out one value at a time
//! (`vextractps`: 192 scalar stores for a 16x12 tile, whatever the strides). For a product with
//! a short `k` that store is most of the tile: 63 of 116 ns for the generated CNN's first
//! convolution (k = 9), 55 of 158 ns for k = 32 (benches/README.md). [`run`] does what tract's
//! kernels of `16 * MV` rows and `NR` columns do for an op list, with the same operations in the
//! same order (one fused multiply-add per `k` per value, in `k` order; the fused ops with
//! tract's operand order, which decides what a NaN or a signed zero gives), so its tiles equal
//! tract's bit for bit (a NaN's payload and sign aside: LLVM may commute an add or a multiply).
//! Only the memory accesses differ: a tile whose rows are contiguous is transposed in registers
//! and stored (or, for `AddUnicast`, loaded) as whole rows with masked vector accesses of its
//! `NR` items; other strides go one item at a time. An op list with an op it does not do
//! (`LoadTile`, `AddRowColProducts`, quantized ops) is left to tract's kernel.
//!
//! Called only by `HostKernels::run` after it checked every op's ranges, as for tract's kernels.

use std::arch::x86_64::*;

use tract_linalg::mmm::{FusedKerSpec, OutputStoreKer};

/// Whether [`run`] does every op of `spec` (up to its `Done`).
pub(crate) fn supported(spec: &[FusedKerSpec<f32>]) -> bool {
    use FusedKerSpec::*;
    spec.iter().take_while(|op| !matches!(op, Done)).all(|op| {
        matches!(
            op,
            Clear
                | ScalarMin(_)
                | ScalarMax(_)
                | ScalarAdd(_)
                | ScalarMul(_)
                | ScalarSub(_)
                | ScalarSubF(_)
                | LeakyRelu(_)
                | PerRowMin(_)
                | PerRowMax(_)
                | PerRowAdd(_)
                | PerRowMul(_)
                | PerRowSub(_)
                | PerRowSubF(_)
                | PerColMin(_)
                | PerColMax(_)
                | PerColAdd(_)
                | PerColMul(_)
                | PerColSub(_)
                | PerColSubF(_)
                | AddUnicast(_)
                | Store(_)
                | AddMatMul { packing: 0, .. }
        )
    })
}

/// Runs `spec` (ending with `Done`, every op [`supported`]) for a tile of `16 * MV` rows and
/// `NR` columns, as tract's kernel of that shape would.
///
/// # Safety
/// As tract's kernels: every pointer in `spec` valid for what the op reads or writes (`k`
/// packed records of `16 * MV` and `NR` values for `AddMatMul`, `16 * MV` or `NR` values for
/// per-row and per-column operands, the tile's items at the store's strides), and the CPU has
/// AVX-512F.
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
// `v` indexes the inner dimension of `acc[j][v]` (row blocks), across all columns.
#[allow(clippy::needless_range_loop)]
pub(crate) unsafe fn run<const MV: usize, const NR: usize>(spec: &[FusedKerSpec<f32>]) {
    use FusedKerSpec::*;
    // SAFETY: the caller's, op by op.
    unsafe {
        // acc[j][v]: column j, rows 16v..16v + 16.
        let mut acc = [[_mm512_setzero_ps(); MV]; NR];
        // The lanes of a row of the tile, for row-contiguous stores and loads.
        let row_mask: __mmask16 = (1u32 << NR).wrapping_sub(1) as u16;
        // tract's scalar, per-row and per-column ops compute `op(operand, acc)` (`op acc,
        // operand, acc`), the flipped subtractions `acc - operand`.
        for op in spec {
            match *op {
                Done => break,
                Clear => acc = [[_mm512_setzero_ps(); MV]; NR],
                AddMatMul { k, pa, pb, .. } => {
                    let (pa, pb) = (pa.cast::<f32>(), pb.cast::<f32>());
                    for kk in 0..k {
                        let a: [__m512; MV] =
                            std::array::from_fn(|v| _mm512_loadu_ps(pa.add(kk * 16 * MV + 16 * v)));
                        for (j, col) in acc.iter_mut().enumerate() {
                            let b = _mm512_set1_ps(*pb.add(kk * NR + j));
                            for (v, acc) in col.iter_mut().enumerate() {
                                *acc = _mm512_fmadd_ps(a[v], b, *acc);
                            }
                        }
                    }
                }
                ScalarMin(s) => scalar(&mut acc, s, |s, x| _mm512_min_ps(s, x)),
                ScalarMax(s) => scalar(&mut acc, s, |s, x| _mm512_max_ps(s, x)),
                ScalarAdd(s) => scalar(&mut acc, s, |s, x| _mm512_add_ps(s, x)),
                ScalarMul(s) => scalar(&mut acc, s, |s, x| _mm512_mul_ps(s, x)),
                ScalarSub(s) => scalar(&mut acc, s, |s, x| _mm512_sub_ps(s, x)),
                ScalarSubF(s) => scalar(&mut acc, s, |s, x| _mm512_sub_ps(x, s)),
                LeakyRelu(alpha) => scalar(&mut acc, alpha, |alpha, x| {
                    let negative = _mm512_cmp_ps_mask::<_CMP_LT_OS>(x, _mm512_setzero_ps());
                    _mm512_mask_mul_ps(x, negative, x, alpha)
                }),
                PerRowMin(p) => per_row(&mut acc, p, |r, x| _mm512_min_ps(r, x)),
                PerRowMax(p) => per_row(&mut acc, p, |r, x| _mm512_max_ps(r, x)),
                PerRowAdd(p) => per_row(&mut acc, p, |r, x| _mm512_add_ps(r, x)),
                PerRowMul(p) => per_row(&mut acc, p, |r, x| _mm512_mul_ps(r, x)),
                PerRowSub(p) => per_row(&mut acc, p, |r, x| _mm512_sub_ps(r, x)),
                PerRowSubF(p) => per_row(&mut acc, p, |r, x| _mm512_sub_ps(x, r)),
                PerColMin(p) => per_col(&mut acc, p, |c, x| _mm512_min_ps(c, x)),
                PerColMax(p) => per_col(&mut acc, p, |c, x| _mm512_max_ps(c, x)),
                PerColAdd(p) => per_col(&mut acc, p, |c, x| _mm512_add_ps(c, x)),
                PerColMul(p) => per_col(&mut acc, p, |c, x| _mm512_mul_ps(c, x)),
                PerColSub(p) => per_col(&mut acc, p, |c, x| _mm512_sub_ps(c, x)),
                PerColSubF(p) => per_col(&mut acc, p, |c, x| _mm512_sub_ps(x, c)),
                AddUnicast(s) if s.col_byte_stride == 4 => {
                    // tract gathers each column's rows and adds them: `acc + x`. Here whole rows
                    // are loaded (`NR` lanes) and transposed into columns.
                    for v in 0..MV {
                        let rows: [__m512; 16] = std::array::from_fn(|i| {
                            _mm512_maskz_loadu_ps(row_mask, item(&s, 16 * v + i, 0).cast_const())
                        });
                        let cols = transpose(rows);
                        for (acc, x) in acc.iter_mut().zip(cols) {
                            acc[v] = _mm512_add_ps(acc[v], x);
                        }
                    }
                }
                AddUnicast(s) => {
                    // tract gathers each column's rows and adds them: `acc + x`.
                    let mut sum = spill(&acc);
                    for (j, col) in sum.iter_mut().enumerate() {
                        // The tile's 16 * MV rows only: `spill` pads to the tallest kernel.
                        for (i, v) in col.iter_mut().take(16 * MV).enumerate() {
                            *v += item(&s, i, j).read_unaligned();
                        }
                    }
                    acc = std::array::from_fn(|j| {
                        std::array::from_fn(|v| _mm512_loadu_ps(sum[j][16 * v..].as_ptr()))
                    });
                }
                Store(s) if s.col_byte_stride == 4 => {
                    // Rows of the tile are contiguous: transpose each block of 16 rows in
                    // registers and store whole rows, `NR` lanes each.
                    for v in 0..MV {
                        let cols: [__m512; 16] =
                            std::array::from_fn(|j| if j < NR { acc[j][v] } else { _mm512_setzero_ps() });
                        for (i, row) in transpose(cols).into_iter().enumerate() {
                            _mm512_mask_storeu_ps(item(&s, 16 * v + i, 0), row_mask, row);
                        }
                    }
                }
                Store(s) => {
                    let tile = spill(&acc);
                    for i in 0..16 * MV {
                        for (j, col) in tile.iter().enumerate() {
                            item(&s, i, j).write_unaligned(col[i]);
                        }
                    }
                }
                // Not `supported`: never reached.
                LoadTile(..)
                | AddRowColProducts(..)
                | QScale(..)
                | RoundingShiftRight(..)
                | ShiftLeft(..) => {}
            }
        }
    }
}

/// `op(broadcast(s), acc)` for every accumulator.
#[target_feature(enable = "avx512f")]
#[inline]
fn scalar<const MV: usize, const NR: usize>(
    acc: &mut [[__m512; MV]; NR],
    s: f32,
    op: impl Fn(__m512, __m512) -> __m512,
) {
    let s = _mm512_set1_ps(s);
    for col in acc.iter_mut() {
        for x in col.iter_mut() {
            *x = op(s, *x);
        }
    }
}

/// `op(rows, acc)` with the 16 * MV row values at `p`, for every column.
///
/// # Safety
/// `p` valid for `16 * MV` reads.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(unsafe_code)]
unsafe fn per_row<const MV: usize, const NR: usize>(
    acc: &mut [[__m512; MV]; NR],
    p: *const f32,
    op: impl Fn(__m512, __m512) -> __m512,
) {
    // SAFETY: the caller's.
    let rows: [__m512; MV] = std::array::from_fn(|v| unsafe { _mm512_loadu_ps(p.add(16 * v)) });
    for col in acc.iter_mut() {
        for (v, x) in col.iter_mut().enumerate() {
            *x = op(rows[v], *x);
        }
    }
}

/// `op(broadcast(p[j]), acc)` for column `j`.
///
/// # Safety
/// `p` valid for `NR` reads.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(unsafe_code)]
unsafe fn per_col<const MV: usize, const NR: usize>(
    acc: &mut [[__m512; MV]; NR],
    p: *const f32,
    op: impl Fn(__m512, __m512) -> __m512,
) {
    for (j, col) in acc.iter_mut().enumerate() {
        // SAFETY: the caller's.
        let c = _mm512_set1_ps(unsafe { *p.add(j) });
        for x in col.iter_mut() {
            *x = op(c, *x);
        }
    }
}

/// The most rows a tile may have, in vectors of 16: the tallest kernel taken is 80 rows.
const MAX_MV: usize = 5;

/// The accumulators as plain values, `[column][row]`, by vector stores.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(unsafe_code)]
fn spill<const MV: usize, const NR: usize>(acc: &[[__m512; MV]; NR]) -> [[f32; 16 * MAX_MV]; NR] {
    const { assert!(MV <= MAX_MV) };
    // Rows beyond 16 * MV stay unused.
    let mut tile = [[0f32; 16 * MAX_MV]; NR];
    for (col, out) in acc.iter().zip(tile.iter_mut()) {
        for (v, x) in col.iter().enumerate() {
            // SAFETY: `out` holds 16 * MAX_MV values, `16 * v + 16 <= 16 * MV <= 16 * MAX_MV`.
            unsafe { _mm512_storeu_ps(out[16 * v..].as_mut_ptr(), *x) };
        }
    }
    tile
}

/// The 16x16 transpose of `r`: lane `j` of row `i` of the result is lane `i` of `r[j]`. Four
/// rounds of 16 shuffles.
#[target_feature(enable = "avx512f")]
#[inline]
fn transpose(r: [__m512; 16]) -> [__m512; 16] {
    // t[2i], t[2i + 1]: rows 2i and 2i + 1 interleaved, per 128-bit block.
    let mut t = r;
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4i + c], block k: column 4k + c of rows 4i..4i + 4.
    let mut u = t;
    let pd = _mm512_castps_pd;
    for i in 0..4 {
        let (a, b, c, d) = (pd(t[4 * i]), pd(t[4 * i + 1]), pd(t[4 * i + 2]), pd(t[4 * i + 3]));
        u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    // Row 4k + c of the result: block k of u[c], u[4 + c], u[8 + c], u[12 + c].
    let mut out = u;
    for c in 0..4 {
        let v1 = _mm512_shuffle_f32x4::<0x44>(u[c], u[4 + c]);
        let v2 = _mm512_shuffle_f32x4::<0xEE>(u[c], u[4 + c]);
        let v3 = _mm512_shuffle_f32x4::<0x44>(u[8 + c], u[12 + c]);
        let v4 = _mm512_shuffle_f32x4::<0xEE>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
        out[4 + c] = _mm512_shuffle_f32x4::<0xDD>(v1, v3);
        out[8 + c] = _mm512_shuffle_f32x4::<0x88>(v2, v4);
        out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(v2, v4);
    }
    out
}

/// The address of tile item `(i, j)` of store `s`.
#[inline(always)]
fn item(s: &OutputStoreKer, i: usize, j: usize) -> *mut f32 {
    s.ptr.wrapping_offset(i as isize * s.row_byte_stride + j as isize * s.col_byte_stride).cast()
}
