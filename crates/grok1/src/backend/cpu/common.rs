//! What every layer of the CPU backend shares: the instruction sets the
//! kernels come in, cache-line-aligned buffers and a few constants. It
//! imports nothing from the backend (the layers are in `cpu/mod.rs`).

/// The instruction set the kernels use (which ones this CPU has:
/// `Isa::detect` in `arch/mod.rs`, beside the code that asks the CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// x86-64 AVX2 with FMA (and F16C, which every such CPU has).
    Avx2,
    /// AVX2 plus AVX-512 (F, BW, VL) with VNNI: the integer products run on
    /// `vpdpbusd` (64 byte products per instruction); everything else on the
    /// AVX2 kernels.
    Avx512Vnni,
    /// `Avx512Vnni` plus AMX-INT8 (Intel Sapphire Rapids and later): the int8
    /// mode's products over 16 activation rows or more (prefill) run on the
    /// tile multiplier (`arch/x86/amx.rs`, 16 x 16 x 32 products per
    /// instruction).
    Amx,
    /// aarch64 NEON (`arch/arm/neon.rs`): the checkpoint's int8 products, the
    /// int8 row dots, GGUF Q8_0 rows with f32 activations, attention and the
    /// GELU; the int8 mode's kernels run the scalar ones.
    Neon,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2+fma",
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Amx => "avx512-vnni+amx",
            Isa::Neon => "neon",
        }
    }
}

/// A cache line of values.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A buffer of `T` (plain numbers) starting on a cache line, so that the
/// tile kernels' 512-bit loads of its lines never straddle two (a `Vec`'s
/// 16-byte alignment made every such load two: the f32 Q8_0 tiles ran at two
/// thirds of their speed).
pub struct Aligned<T> {
    lines: Vec<Line>,
    len: usize,
    _values: std::marker::PhantomData<T>,
}

/// The plain number types [`Aligned`] holds.
///
/// # Safety
/// Every bit pattern of the type's size is a value of it, and its alignment
/// is at most 64 bytes.
pub unsafe trait Plain: Copy {}
// SAFETY: any 4 bytes are an f32 (NaNs included), any byte an i8; both align
// to at most 4.
unsafe impl Plain for f32 {}
// SAFETY: as above.
unsafe impl Plain for i8 {}

impl<T: Plain> Aligned<T> {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Self {
        let bytes = len * std::mem::size_of::<T>();
        Aligned {
            lines: vec![Line([0; 64]); bytes.div_ceil(64)],
            len,
            _values: std::marker::PhantomData,
        }
    }

    pub fn as_slice(&self) -> &[T] {
        // SAFETY: the lines hold at least `len` values' bytes, aligned for
        // any T of alignment <= 64, and every bit pattern is a T (Plain's
        // contract).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as `as_slice`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }
}

impl<T: Plain> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

/// Rows per quad: the integer kernels take weight rows four at a time (each
/// 32-bit lane of an int8 vector holds one column's four rows).
pub const QUAD: usize = 4;
/// The int8 activations' rows (`types::int8_ckpt::ActI8`, and the tiles of
/// `types::q8_0::ActQ8_0`) are padded with zeros to a multiple of this (the
/// AMX tile height).
pub const ROW_PAD: usize = 16;

/// Below this many multiply-adds a product runs on the calling thread: waking
/// the pool costs more than the work (tiny models, small batches).
pub(crate) const PARALLEL_MIN_MACS: usize = 1 << 18;
