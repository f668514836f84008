//! A KV page's memory as raw pointers with its element type as a number,
//! for the SIMD page kernels (`arch::x86::attention`,
//! `arch::arm::attention`), which take the type as a const parameter and
//! decode the elements in registers.

use crate::kv_cache::{KeysPage, ValuesPage};

/// Page element types, as the kernels' const parameter.
pub(crate) const F32: u8 = 0;
pub(crate) const BF16: u8 = 1;
pub(crate) const Q8_0: u8 = 2;

/// A page's memory: `e` the elements (f32, bf16 bits or i8 by the type),
/// `scales` the q8_0 scales (f16 bits; null for the other types).
#[derive(Clone, Copy)]
pub(crate) struct RawPage {
    pub e: *const u8,
    pub scales: *const u16,
}

impl RawPage {
    /// A keys page and its type.
    pub fn keys(k: KeysPage) -> (u8, RawPage) {
        match k {
            KeysPage::F32(k) => (F32, RawPage::of(k.as_ptr().cast(), std::ptr::null())),
            KeysPage::Bf16(k) => (BF16, RawPage::of(k.as_ptr().cast(), std::ptr::null())),
            KeysPage::Q8_0 { q, scales } => (Q8_0, RawPage::of(q.as_ptr().cast(), scales.as_ptr())),
        }
    }

    /// A values page and its type.
    pub fn values(v: ValuesPage) -> (u8, RawPage) {
        match v {
            ValuesPage::F32(v) => (F32, RawPage::of(v.as_ptr().cast(), std::ptr::null())),
            ValuesPage::Bf16(v) => (BF16, RawPage::of(v.as_ptr().cast(), std::ptr::null())),
            ValuesPage::Q8_0 { q, scales } => {
                (Q8_0, RawPage::of(q.as_ptr().cast(), scales.as_ptr()))
            }
        }
    }

    fn of(e: *const u8, scales: *const u16) -> RawPage {
        RawPage { e, scales }
    }
}
