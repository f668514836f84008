//! AMX-INT8 versions of the int8 mode's prefill products (`types/int8_ckpt.rs`, 16
//! activation rows or more), bit-identical to the scalar reference: the
//! checkpoint's int8 matrices (below) and GGUF Q8_0 rows
//! ([`dot_q8_0_rows_int8_amx`], whose weight rows are the left tile as they
//! lie in the file).
//!
//! The tile multiplier's `tdpbssd` takes a 16 x 32 byte tile of activations
//! (16 rows, one block of 32 values each), an 8 x 64 byte tile of weights
//! (eight quads of the interleaved 16-column panels `int8_ckpt_i8_avx2::run_panels`
//! packs, the layout AMX calls "VNNI") and adds the 16 x 16 exact i32 sums of
//! that block into an accumulator tile: 8192 products per instruction, both
//! operands signed (no `+ 128` to take back off as in `vpdpbusd`), the
//! activations read in place from `ActI8` (zero-padded for this). Each block's
//! sums are stored, converted to f32 and folded into 16 f32 accumulators with
//! the block's activation scales, exactly as the other kernels do, while the
//! tile unit already multiplies the next block (`multiply_block`'s
//! accumulator tiles in turn).
//!
//! Linux keeps the 8 KiB of tile data off for a process until it asks
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); the request is made before the first
//! tile instruction on every thread (the permission is per process, asking
//! again is a cheap no-op, and a thread that is refused falls back to the
//! AVX-512 kernels). The tile configuration is loaded on entry and released on
//! exit, so no thread is left holding tile state.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::OnceLock;

use super::int8_ckpt_i8_avx2::{q8_block_fast_avx2, run_panels};
use super::int8_ckpt_i8_vnni::{pack_panels_512, q8_block_fast_vnni};
use super::q8_0_i8::{dot_q8_0_rows_int8_avx2, store_tile_rows};
use crate::backend::cpu::common::QUAD;
use crate::backend::cpu::types::int8_ckpt::{
    add_tail_columns, Q8Rows, SplitView, ACT_BLOCK, BLOCK_QUADS,
};
use crate::backend::cpu::types::q8_0::{Q8_0Acts, Q8_0Tiles, Q8_0_BLOCK_BYTES};

/// Activation rows per tile (AMX's maximum).
pub(super) const TILE_M: usize = 16;
/// Fewest activation rows the tiles take; fewer go to the AVX-512 kernels
/// (a tile of 16 rows on a handful of rows multiplies mostly padding).
pub(crate) const AMX_MIN_M: usize = 16;

/// `arch_prctl` codes (`asm/prctl.h`) and the tile-data state component.
const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
const XFEATURE_XTILEDATA: libc::c_ulong = 18;

/// Whether the CPU has AMX-TILE and AMX-INT8 and Linux lets this process use
/// the tile data.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // CPUID leaf 7, sub-leaf 0: EDX bit 24 is AMX-TILE, bit 25 AMX-INT8.
        #[allow(unused_unsafe)] // a safe function from Rust 1.94
        // SAFETY: every x86-64 CPU has CPUID leaf 7's sub-leaf 0 (or answers
        // zeros for leaves above its maximum).
        let leaf = unsafe { __cpuid_count(7, 0) };
        (leaf.edx >> 24) & 1 == 1 && (leaf.edx >> 25) & 1 == 1 && permitted()
    })
}

/// Asks Linux for the tile data on this thread once (see the module note).
pub(super) fn permitted() -> bool {
    thread_local!(static GRANTED: Cell<Option<bool>> = const { Cell::new(None) });
    GRANTED.with(|granted| {
        if let Some(ok) = granted.get() {
            return ok;
        }
        // SAFETY: a plain system call with integer arguments.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        granted.set(Some(rc == 0));
        rc == 0
    })
}

/// The `ldtilecfg` operand (palette 1): tiles 0 and 1 (and 4 and 5) are the
/// 16 x 16 i32 accumulators, tile 2 (and 6) the 16-row left operand (32 bytes
/// a row here), tile 3 (and 7) the right one (8 rows of 64 bytes here).
#[repr(C, align(64))]
pub(super) struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn new() -> TileConfig {
        TileConfig::with_depth(ACT_BLOCK)
    }

    /// Tiles 2 and 3 (and 6 and 7) sized for products over `depth` values (a
    /// multiple of 4, at most 64): 16 rows of `depth` bytes times `depth / 4`
    /// rows of 64.
    pub(super) fn with_depth(depth: usize) -> TileConfig {
        assert!(depth.is_multiple_of(4) && (4..=64).contains(&depth));
        let mut c = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for (t, colsb, rows) in [
            (0, 64, TILE_M),
            (1, 64, TILE_M),
            (2, depth, TILE_M),
            (3, 64, depth / 4),
            (4, 64, TILE_M),
            (5, 64, TILE_M),
            (6, depth, TILE_M),
            (7, 64, depth / 4),
        ] {
            c.colsb[t] = colsb as u16;
            c.rows[t] = rows as u8;
        }
        c
    }
}

/// AMX version of `int8_ckpt::q8_block_fast_scalar`, bit-identical to it; fewer
/// than `AMX_MIN_M` rows, or a thread refused the tile data, take the AVX-512
/// kernels.
///
/// # Safety
/// As `int8_ckpt_i8_vnni::q8_block_fast_vnni`, and the CPU has AMX-TILE and
/// AMX-INT8 (`available`).
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn q8_block_fast_amx(view: &SplitView, wb: &Q8Rows, scales: &[f32], total: &mut [f32]) {
    let m = view.act.m;
    let nb = total.len() / m;
    let full = nb / 16 * 16;
    if m < AMX_MIN_M || full == 0 || !permitted() {
        // SAFETY: the caller's bounds and features.
        return unsafe { q8_block_fast_vnni(view, wb, scales, total) };
    }
    let config = TileConfig::new();
    // SAFETY: the configuration is a valid palette-1 layout (64 bytes, reserved
    // bytes zero) and this thread may use the tile data (`permitted`).
    unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
    run_panels(
        view,
        full,
        total,
        TILE_M,
        |quads, nq, chunk, zeros, panel| {
            // SAFETY: the caller's bounds; the panel holds `chunk` quads per 16
            // columns; AVX-512 F/BW are present. Signed weights (`tdpbssd`).
            unsafe { pack_panels_512(wb, quads, nq, chunk, full, zeros, panel, false) }
        },
        |tile, i, mr, part, total| {
            let mut f = [_mm512_setzero_ps(); TILE_M];
            tile.sums_in(i, &mut f[..mr], part);
            let (b0, blocks) = (
                tile.quads.start / BLOCK_QUADS,
                tile.quads.len().div_ceil(BLOCK_QUADS),
            );
            // SAFETY: the panel holds the chunk's quads rounded up to whole
            // blocks (`run_panels`); the tiles are configured.
            unsafe { multiply(view, i, b0, blocks, tile.panel, &mut f) };
            tile.sums_out(i, &f[..mr], part, total, nb, scales);
        },
    );
    // SAFETY: AMX-TILE is present; releasing leaves the thread without tile state.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
    // The last columns (fewer than a panel) through the AVX2 kernel.
    add_tail_columns(m, full, wb, scales, total, |cols, s, t| {
        // SAFETY: AVX2 and FMA are present; the columns are a subset of the
        // caller's, so its bounds hold.
        unsafe { q8_block_fast_avx2(view, cols, s, t) }
    });
}

/// Adds rows `i0..i0 + 16` of the split's activations times one 16-column
/// panel over the split's blocks `b0..b0 + n` into `f` (`f[t] = fma(f32(block
/// sum), scale, f[t])`, block by block, as the scalar kernel orders it). The
/// tiles read `ActI8` in place: its rows are padded to 16 and each split's
/// quads to whole blocks, all with zeros.
///
/// # Safety
/// The tiles are configured (`TileConfig`); `panel` holds `n` blocks of eight
/// 64-byte quads.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn multiply(
    view: &SplitView,
    i0: usize,
    b0: usize,
    n: usize,
    panel: &[u8],
    f: &mut [__m512; TILE_M],
) {
    let act = view.act;
    let stride = act.quads * QUAD;
    // Rows i0..i0 + 16 of the (padded) values and scales; blocks b0..b0 + n of
    // the split, whole blocks of quads from its first quad q0.
    let (q, sx) = (view.q0 + b0 * BLOCK_QUADS, view.b0 + b0);
    assert!(b0 + n <= view.rows.len().div_ceil(ACT_BLOCK));
    assert!(i0 * stride + q * QUAD + (TILE_M - 1) * stride + n * ACT_BLOCK <= act.q.len());
    assert!((i0 + TILE_M - 1) * act.blocks + sx + n <= act.sx.len());
    assert!(panel.len() >= n * BLOCK_QUADS * QUAD * 16);
    let a = act.q[i0 * stride + q * QUAD..].as_ptr();
    let sx = act.sx[i0 * act.blocks + sx..].as_ptr();
    let w = panel.as_ptr();
    let mut sums = Sums([[0; 16]; TILE_M]);
    // Block `kb` multiplies into accumulator tile kb % 4 (`multiply_block`);
    // its sums are taken out after the next block's multiply is issued, so
    // the two overlap.
    for kb in 0..=n {
        if kb < n {
            // SAFETY: 16 rows of 32 bytes at `stride` from block kb of row
            // i0, 8 rows of 64 bytes from block kb of the panel (asserted).
            unsafe { multiply_block(kb, a.add(kb * ACT_BLOCK), stride, w.add(kb * 512)) };
        }
        if kb > 0 {
            let prev = kb - 1;
            // SAFETY: `sums` holds 16 rows of 64 bytes.
            unsafe { store_sums(prev, &mut sums) };
            for (t, ft) in f.iter_mut().enumerate() {
                // SAFETY: row i0 + t, block prev are inside sx (asserted).
                let s = _mm512_set1_ps(unsafe { *sx.add(t * act.blocks + prev) });
                // SAFETY: a row of `sums` is 16 i32.
                let c = unsafe { _mm512_loadu_si512(sums.0[t].as_ptr() as *const __m512i) };
                *ft = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), s, *ft);
            }
        }
    }
}

/// AMX version of `q8_0::dot_q8_0_rows_int8_scalar` (Q8_0 weight rows of a
/// GGUF against activations in Q8_0 blocks), bit-identical to it. The weight
/// rows are the tiles' left operand as they lie in the file (16 rows, one
/// block's 32 values each, the row length apart), the activations the right
/// one in the order `ActQ8_0` packs them; each 16 x 16 tile of block sums is
/// stored, converted and folded into 16 f32 accumulators (weight row `u`'s
/// sums for 16 activation rows) with `d_w * d_x`, block by block, while the
/// tile unit multiplies the next block. Weight rows past the last whole 16,
/// or a thread refused the tile data, take the AVX2 kernel.
///
/// # Safety
/// AVX2, FMA, F16C, AVX-512 F/BW/VL and AMX-TILE/INT8 (`available`); the
/// bounds `kernels::dot_q8_0_rows_int8` checks, and `act.tiles` laid out by
/// `ActQ8_0::quantize` for `act.m` rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
pub unsafe fn dot_q8_0_rows_int8_amx(act: Q8_0Acts, rows: &[u8], out_t: &mut [f32]) {
    let (m, k) = (act.m, act.k);
    let blocks = k / 32;
    let row_bytes = blocks * Q8_0_BLOCK_BYTES;
    let nrows = out_t.len() / m;
    let full = nrows / 16 * 16;
    let tiles = m.div_ceil(TILE_M);
    assert!(rows.len() >= nrows * row_bytes && blocks > 0);
    assert!(act.tiles.len() >= tiles * blocks * 512 && act.tile_s.len() >= tiles * blocks * TILE_M);
    assert_eq!(
        act.layout,
        Q8_0Tiles::Amx,
        "activations not laid out for AMX"
    );
    // Whole tiles of weight rows on the tile unit, if this thread may use it.
    let done = if full > 0 && permitted() { full } else { 0 };
    if done > 0 {
        let config = TileConfig::new();
        // SAFETY: a valid palette-1 layout, and this thread may use the tile
        // data (`permitted`).
        unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
        let mut dw = vec![0f32; blocks * 16];
        let mut sums = Sums([[0; 16]; TILE_M]);
        for c0 in (0..done).step_by(16) {
            let tile_rows = &rows[c0 * row_bytes..(c0 + 16) * row_bytes];
            for (u, row) in tile_rows.chunks_exact(row_bytes).enumerate() {
                for (b, block) in row.chunks_exact(Q8_0_BLOCK_BYTES).enumerate() {
                    dw[b * 16 + u] = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                }
            }
            // The next 16 rows, prefetched a few lines per block over this
            // tile's passes (16 rows read side by side from memory would
            // stall the first pass).
            let next = &rows[(c0 + 16) * row_bytes..(c0 + 32).min(nrows) * row_bytes];
            let lines = next.len().div_ceil(64);
            let per_step = lines.div_ceil(tiles * blocks);
            for t in 0..tiles {
                let mut f = [_mm512_setzero_ps(); 16];
                let a = tile_rows.as_ptr().wrapping_add(2) as *const i8;
                let bt = act.tiles[t * blocks * 512..].as_ptr() as *const u8;
                let st = &act.tile_s[t * blocks * TILE_M..(t + 1) * blocks * TILE_M];
                for kb in 0..=blocks {
                    if kb < blocks {
                        let step = t * blocks + kb;
                        for l in step * per_step..((step + 1) * per_step).min(lines) {
                            // SAFETY: the line starts inside `next`.
                            unsafe {
                                _mm_prefetch(next.as_ptr().add(64 * l) as *const i8, _MM_HINT_T0)
                            };
                        }
                        // SAFETY: 16 weight rows' block kb (32 bytes after the
                        // scale, row_bytes apart) and the activation tile's
                        // block kb (8 rows of 64 bytes) are inside `rows` and
                        // `act.tiles` (asserted above).
                        unsafe {
                            multiply_block(
                                kb,
                                a.add(kb * Q8_0_BLOCK_BYTES),
                                row_bytes,
                                bt.add(kb * 512),
                            )
                        };
                    }
                    if kb > 0 {
                        let prev = kb - 1;
                        // SAFETY: `sums` holds 16 rows of 64 bytes.
                        unsafe { store_sums(prev, &mut sums) };
                        // SAFETY: 16 scales of block prev (inside `st`).
                        let dx = unsafe { _mm512_loadu_ps(st[prev * TILE_M..].as_ptr()) };
                        for (u, fu) in f.iter_mut().enumerate() {
                            // d_w * d_x rounded once, as the scalar kernel does.
                            let d = _mm512_mul_ps(_mm512_set1_ps(dw[prev * 16 + u]), dx);
                            // SAFETY: a row of `sums` is 16 i32.
                            let c =
                                unsafe { _mm512_loadu_si512(sums.0[u].as_ptr() as *const __m512i) };
                            *fu = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), d, *fu);
                        }
                    }
                }
                store_tile_rows(&f, out_t, c0, m, t * TILE_M);
            }
        }
        // SAFETY: AMX-TILE is present; releasing leaves the thread without tile state.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
    if done < nrows {
        // SAFETY: AVX2, FMA and F16C are present; the rows and outputs are
        // the caller's from `done` on.
        unsafe { dot_q8_0_rows_int8_avx2(act, &rows[done * row_bytes..], &mut out_t[done * m..]) }
    }
}

/// One accumulator tile's 16 x 16 i32 sums in memory.
#[repr(C, align(64))]
pub(super) struct Sums(pub(super) [[i32; 16]; TILE_M]);

/// Accumulator tile `s % 4` (tiles 0, 1, 4, 5) = the left operand (16 rows
/// at `a`, `stride` apart: a block's activations, or weight codes) times the
/// right one (rows of 64 bytes at `w`), both signed, in the configured sizes,
/// loaded into operand pair `s % 2` (tiles 2 and 3, or 6 and 7), so that a
/// step's loads need not wait for the previous step's multiply to release
/// its operands.
///
/// # Safety
/// The tiles are configured (`TileConfig`); the memory is readable.
#[inline(always)]
pub(super) unsafe fn multiply_block(s: usize, a: *const i8, stride: usize, w: *const u8) {
    macro_rules! tiles {
        ($c:literal, $a:literal, $b:literal) => {
            // SAFETY: the caller's.
            unsafe {
                asm!(
                    concat!("tilezero tmm", $c),
                    concat!("tileloadd tmm", $a, ", [{a} + {sa}*1]"),
                    concat!("tileloadd tmm", $b, ", [{w} + {sw}*1]"),
                    concat!("tdpbssd tmm", $c, ", tmm", $a, ", tmm", $b),
                    a = in(reg) a, sa = in(reg) stride, w = in(reg) w, sw = in(reg) 64usize,
                    options(nostack, readonly),
                )
            }
        };
    }
    match s % 4 {
        0 => tiles!("0", "2", "3"),
        1 => tiles!("1", "6", "7"),
        2 => tiles!("4", "2", "3"),
        _ => tiles!("5", "6", "7"),
    }
}

/// Stores accumulator tile `s % 4` (of [`multiply_block`]'s step `s`) into `sums`.
///
/// # Safety
/// The tiles are configured.
#[inline(always)]
pub(super) unsafe fn store_sums(s: usize, sums: &mut Sums) {
    let p = sums.0.as_mut_ptr();
    macro_rules! store {
        ($c:literal) => {
            // SAFETY: `sums` is 16 rows of 64 bytes.
            unsafe {
                asm!(
                    concat!("tilestored [{p} + {s}*1], tmm", $c),
                    p = in(reg) p, s = in(reg) 64usize, options(nostack),
                )
            }
        };
    }
    match s % 4 {
        0 => store!("0"),
        1 => store!("1"),
        2 => store!("4"),
        _ => store!("5"),
    }
}

/// One step of a block's digit products (`q8_blocks_amx`): accumulator pair
/// `p % 2` (tiles 0 and 1, or 4 and 5: the low and the high digits' sums),
/// zeroed first where `first`, plus the left operands (16 rows at `lo` and,
/// where `two`, at `hi`, `stride` apart; tiles 2 and 6) times the right one
/// (rows of 64 bytes at `x`; tile 3, or 7 for pair 1), all signed, in the
/// configured sizes.
///
/// # Safety
/// The tiles are configured (`TileConfig`); the memory is readable.
#[inline(always)]
pub(super) unsafe fn multiply_digits(
    p: usize,
    first: bool,
    two: bool,
    (lo, hi): (*const i8, *const i8),
    stride: usize,
    x: *const u8,
) {
    macro_rules! step {
        ($cl:literal, $ch:literal, $b:literal) => {
            // SAFETY: the caller's.
            unsafe {
                if first {
                    asm!(concat!("tilezero tmm", $cl), options(nostack, nomem));
                    if two {
                        asm!(concat!("tilezero tmm", $ch), options(nostack, nomem));
                    }
                }
                asm!(
                    concat!("tileloadd tmm", $b, ", [{x} + {sx}*1]"),
                    "tileloadd tmm2, [{lo} + {s}*1]",
                    concat!("tdpbssd tmm", $cl, ", tmm2, tmm", $b),
                    x = in(reg) x, sx = in(reg) 64usize, lo = in(reg) lo, s = in(reg) stride,
                    options(nostack, readonly),
                );
                if two {
                    asm!(
                        "tileloadd tmm6, [{hi} + {s}*1]",
                        concat!("tdpbssd tmm", $ch, ", tmm6, tmm", $b),
                        hi = in(reg) hi, s = in(reg) stride,
                        options(nostack, readonly),
                    );
                }
            }
        };
    }
    if p.is_multiple_of(2) {
        step!("0", "1", "3")
    } else {
        step!("4", "5", "7")
    }
}

/// Stores accumulator pair `p % 2` of [`multiply_digits`] into `sums` (the
/// low digits' sums, and where `two` the high ones').
///
/// # Safety
/// The tiles are configured.
#[inline(always)]
pub(super) unsafe fn store_digit_sums(p: usize, two: bool, sums: &mut [Sums; 2]) {
    let (l, h) = (sums[0].0.as_mut_ptr(), sums[1].0.as_mut_ptr());
    macro_rules! store {
        ($cl:literal, $ch:literal) => {
            // SAFETY: each of `sums` is 16 rows of 64 bytes.
            unsafe {
                asm!(
                    concat!("tilestored [{l} + {s}*1], tmm", $cl),
                    l = in(reg) l, s = in(reg) 64usize, options(nostack),
                );
                if two {
                    asm!(
                        concat!("tilestored [{h} + {s}*1], tmm", $ch),
                        h = in(reg) h, s = in(reg) 64usize, options(nostack),
                    );
                }
            }
        };
    }
    if p.is_multiple_of(2) {
        store!("0", "1")
    } else {
        store!("4", "5")
    }
}
