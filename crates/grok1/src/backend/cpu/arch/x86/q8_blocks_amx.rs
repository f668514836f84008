//! GGUF's legacy and i-quant rows against activations quantised per block,
//! on the AMX tile unit for many activation rows (prompt processing),
//! bit-identical to `q8_blocks::dot_rows_q8_scalar`. (It takes the K-quants
//! too, but they measured faster on the VNNI tiles: `kernels::amx_tiled`.)
//!
//! The VNNI tiles (`q8_blocks_vnni`) broadcast one weight row's quad of codes
//! against sixteen activation rows per `vpdpbusd`: 64 products an
//! instruction, with the activations stored plus 128 and the codes' sums
//! taking the 128 back off. Here sixteen weight rows' codes, unpacked once
//! into `[16][k]` bytes (`Unpacked`, the same unpacking), are the left
//! tile as they lie (16 rows of one sub-block's `SUB` codes, `k` apart), and
//! the activation tile's quads of the same sub-block (`ActTiles` without the
//! 128: `SUB / 4` rows of 16 activation rows' quads) the right one: one
//! `tdpbssd` (both signed) gives the 16 x 16 exact sums of codes times
//! activations of that sub-block. Each is stored and folded into the block's
//! integers with the sub-block's scale (weight row `u`'s sums are row `u` of
//! the tile, one activation row per i32 lane, as in the VNNI kernel), while
//! the tile unit multiplies the next sub-blocks (`amx::multiply_block`'s four
//! accumulator tiles in turn): a product's sums are stored [`LAG`] steps
//! after it was issued and read one step after that. The sums of 16 (`ca`,
//! `cb`) and the f32 work per block are the VNNI kernel's
//! (`Unpacked::finish_block`): `acc = fma(f32(a), sa * dx, acc)`, then `acc =
//! fma(f32(b), sb * dx, acc)`.

use std::arch::asm;
use std::arch::x86_64::*;

use super::amx::{multiply_block, permitted, store_sums, Sums, TileConfig, TILE_M};
use super::q8_0_i8::store_tile_rows;
use super::q8_blocks_vnni::{dot_rows_q8_vnni, TileShape, Unpacked, VnniBlock};
use crate::backend::cpu::common::ROW_PAD;
use crate::backend::cpu::types::q8_blocks::ActQ8Rows;

/// Weight rows per group: the left tile's rows.
const GROUP: usize = TILE_M;

/// Steps between a sub-block's multiply and the fold of its sums.
const LAG: usize = 3;

/// AMX version of `q8_blocks::dot_rows_q8_scalar`, bit-identical to it (the
/// module's description), for activations with tiles stored as they are
/// (not plus 128), with their plus-128 copy (`ActTiles::q_plus_128`), which
/// a thread refused the tile data takes to the VNNI tiles.
///
/// # Safety
/// AVX2, FMA, F16C, AVX-512 F/BW/VL/VNNI and AMX-TILE/INT8 (`amx::available`);
/// the bounds `kernels::dot_rows_q8` checks, and `act.tiles` made by
/// `ActQ8::quantize` for these `act.m` rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_rows_q8_amx<T: VnniBlock>(act: ActQ8Rows, rows: &[u8], out_t: &mut [f32]) {
    let (m, k) = (act.m, act.k);
    let tiles = act
        .tiles
        .expect("dot_rows_q8_amx: activations without tiles");
    assert!(
        !tiles.plus_128,
        "dot_rows_q8_amx: activations stored plus 128"
    );
    if !permitted() {
        // SAFETY: the caller's bounds and features (AVX-512 VNNI).
        return unsafe { dot_rows_q8_vnni::<T>(act, rows, out_t) };
    }
    let TileShape {
        blocks,
        nsub: _,
        pairs,
        quads,
        row_bytes,
        nrows,
        ntiles,
    } = TileShape::checked::<T>(&act, tiles, rows, out_t.len());
    assert!(
        T::SUB.is_multiple_of(4) && T::SUB <= 64 && T::VALUES.is_multiple_of(T::SUB),
        "dot_rows_q8_amx: sub-blocks the tiles cannot take"
    );
    assert_eq!(ROW_PAD, TILE_M, "an activation tile is a tile's 16 rows");
    let config = TileConfig::with_depth(T::SUB);
    // SAFETY: a valid palette-1 layout, and this thread may use the tile
    // data (`permitted`).
    unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
    let mut w = Unpacked::<GROUP>::new::<T>(k);
    // Two buffers: a step's sums are stored into one while the other's,
    // stored a step earlier, are read (a load right after the tile store
    // waited on it).
    let mut sums = [Sums([[0; 16]; TILE_M]), Sums([[0; 16]; TILE_M])];
    // Sub-blocks in order over the whole row: step `s` multiplies sub-block
    // `s % nsub` of block `s / nsub` (nsub a constant of `T`: a shift, not
    // a division, per step).
    let nsub = T::VALUES / T::SUB;
    let steps = blocks * nsub;
    let mut c = 0;
    while c < nrows {
        let r = (nrows - c).min(GROUP);
        // SAFETY: rows c..c + r exist (TileShape::checked).
        unsafe { w.fill::<T, false>(&rows[c * row_bytes..(c + r) * row_bytes], r, row_bytes, k) };
        let codes = w.codes.as_ptr();
        // The next group's rows, prefetched over this one's passes, as the
        // VNNI kernel does.
        let next = &rows[(c + r) * row_bytes..(c + r + GROUP).min(nrows) * row_bytes];
        let lines = next.len().div_ceil(64);
        let per_step = lines.div_ceil(ntiles * steps);
        for t in 0..ntiles {
            let mut f = [_mm512_setzero_ps(); GROUP];
            let mut a = [_mm512_setzero_si512(); GROUP];
            for s in 0..steps + LAG + 1 {
                if s < steps {
                    let step = t * steps + s;
                    for l in step * per_step..((step + 1) * per_step).min(lines) {
                        // SAFETY: the line starts inside `next`.
                        unsafe {
                            _mm_prefetch(next.as_ptr().add(64 * l) as *const i8, _MM_HINT_T0)
                        };
                    }
                    let (b, j) = (s / nsub, s % nsub);
                    let tb = t * blocks + b;
                    // SAFETY: the 16 rows' codes of sub-block j of block b
                    // (SUB bytes, k apart) are inside w.codes, and tile t's
                    // quads of it (SUB / 4 rows of 64 bytes) inside tiles.q
                    // (TileShape::checked); the tiles are configured.
                    unsafe {
                        multiply_block(
                            s,
                            codes.add(b * T::VALUES + j * T::SUB),
                            k,
                            tiles.q.as_ptr().add((tb * quads + j * T::SUB / 4) * 64) as *const u8,
                        )
                    };
                }
                if s >= LAG && s < steps + LAG {
                    let p = s - LAG;
                    // SAFETY: `sums` holds 16 rows of 64 bytes; the tiles
                    // are configured.
                    unsafe { store_sums(p, &mut sums[p % 2]) };
                }
                if s <= LAG {
                    continue;
                }
                let p = s - LAG - 1;
                let (b, j) = (p / nsub, p % nsub);
                let at = (b * nsub + j) * GROUP;
                let sums = &sums[p % 2];
                for (u, a) in a.iter_mut().enumerate() {
                    // SAFETY: a row of `sums` is 16 i32.
                    let v = unsafe { _mm512_loadu_si512(sums.0[u].as_ptr() as *const __m512i) };
                    *a = if T::SCALED {
                        _mm512_add_epi32(*a, _mm512_mullo_epi32(v, _mm512_set1_epi32(w.sc[at + u])))
                    } else {
                        _mm512_add_epi32(*a, v)
                    };
                }
                if j + 1 < nsub {
                    continue;
                }
                // Block b is complete: its sums of 16 and its f32 work, as
                // the VNNI kernel does them.
                // SAFETY: tile t's scales and pairs of block b are inside
                // tiles.d and tiles.bs, block b inside w (TileShape::checked).
                unsafe { w.finish_block::<T>(tiles, (t * blocks + b, b, pairs), &mut a, &mut f) };
            }
            store_tile_rows(&f[..r], out_t, c, m, t * ROW_PAD);
        }
        c += r;
    }
    // SAFETY: AMX-TILE is present; releasing leaves the thread without tile state.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}
