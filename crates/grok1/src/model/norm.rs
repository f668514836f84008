//! RMSNorm and the activation functions, written as the reference computes them.

use crate::backend::Precision;

/// RMSNorm over each row of `x` (`[rows, d]`), in f32 whatever the activation
/// dtype: `y = x / sqrt(mean(x^2) + eps) * scale`, cast back to the activation
/// dtype. No offset.
pub fn rms_norm(x: &[f32], scale: &[f32], eps: f32, precision: Precision) -> Vec<f32> {
    let d = scale.len();
    let mut out = vec![0f32; x.len()];
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (mean_sq + eps).sqrt();
        for ((o, &v), &s) in o.iter_mut().zip(row).zip(scale) {
            *o = s * (v * inv);
        }
    }
    precision.cast(&mut out);
    out
}

/// GELU, tanh approximation (JAX's default `jax.nn.gelu`):
/// `x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`.
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let cdf = 0.5 * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * (x * x * x))).tanh());
    x * cdf
}

/// Softmax of one row in place, as `jax.nn.softmax`: `exp(x - max) / sum`.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_of_a_constant_row_is_the_scale() {
        let y = rms_norm(&[3.0; 4], &[1.0, 2.0, 0.5, -1.0], 0.0, Precision::F32);
        assert_eq!(y, vec![1.0, 2.0, 0.5, -1.0]);
    }

    #[test]
    fn gelu_matches_known_values() {
        assert_eq!(gelu_tanh(0.0), 0.0);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-6);
        assert!((gelu_tanh(-3.0) + 0.003_637_4).abs() < 1e-6);
    }
}
