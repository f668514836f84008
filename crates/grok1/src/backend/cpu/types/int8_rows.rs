//! Int8 rows with one f32 scale per row (`Int8Rows`: the fast mode's int8
//! copy of the tied output projection) against activations quantised to int8
//! per row (`crate::backend::quantize_row_i8`): exact i32 row dots, the same
//! on every path.

pub fn dot_i8_rows_scalar(xs: &[i8], g: usize, rows: &[i8], out_t: &mut [i32]) {
    let k = xs.len() / g.max(1);
    if k == 0 {
        out_t.fill(0);
        return;
    }
    for (o, row) in out_t.chunks_exact_mut(g).zip(rows.chunks_exact(k)) {
        for (o, x) in o.iter_mut().zip(xs.chunks_exact(k)) {
            *o = dot_i8(x, row);
        }
    }
}

/// `sum(a[i] * b[i])` in i32, exact for fewer than 2^17 values (each product
/// is at most 2^14 in magnitude): the scalar row dot, and the SIMD row dots'
/// last columns.
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&a, &b)| i32::from(a) * i32::from(b))
        .sum()
}
