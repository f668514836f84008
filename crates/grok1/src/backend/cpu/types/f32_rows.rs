//! f32 weight rows: the tied embedding as stored (`F32Matrix`, little-endian
//! bytes: [`dot_f32_bytes_scalar`]) and the GGUF block types that have no
//! fused kernels, decoded to f32 a few rows at a time ([`dot_rows_scalar`]).

pub fn dot_f32_bytes_scalar(x: &[f32], m: usize, d: usize, e: &[u8], out_t: &mut [f32]) {
    for (col, row) in out_t.chunks_exact_mut(m).zip(e.chunks_exact(d * 4)) {
        for (i, o) in col.iter_mut().enumerate() {
            *o = x[i * d..(i + 1) * d]
                .iter()
                .zip(row.chunks_exact(4))
                .map(|(a, b)| a * f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .sum();
        }
    }
}

pub fn dot_rows_scalar(q: &[f32], keys: &[f32], scores: &mut [f32]) {
    let hd = q.len();
    for (s, k) in scores.iter_mut().zip(keys.chunks_exact(hd)) {
        *s = q.iter().zip(k).map(|(a, b)| a * b).sum();
    }
}
