//! Rotary position embedding, rotate-half (non-interleaved) layout.

/// The per-lane inverse frequencies `1 / base^(2i/hd)`, computed in f32 as the
/// reference does.
#[derive(Clone, Debug)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, base: f64) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| {
                let exponent = (2 * i) as f32 / head_dim as f32;
                1.0 / (base.powf(exponent as f64) as f32)
            })
            .collect();
        Rope { inv_freq }
    }

    /// `(cos, sin)` of the phases `pos * inv_freq` (phase in f32, as the reference).
    pub fn phases(&self, pos: usize) -> (Vec<f32>, Vec<f32>) {
        self.inv_freq
            .iter()
            .map(|&f| {
                let phase = (pos as f32 * f) as f64;
                (phase.cos() as f32, phase.sin() as f32)
            })
            .unzip()
    }

    /// Rotates every head of `x` (`[heads * hd]`):
    /// `x * cos + rotate_half(x) * sin` with `rotate_half([x1, x2]) = [-x2, x1]`.
    pub fn apply(&self, x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = self.inv_freq.len();
        for head in x.chunks_exact_mut(2 * half) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * cos[i] + -b * sin[i];
                x2[i] = b * cos[i] + a * sin[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_the_identity() {
        let rope = Rope::new(8, 10000.0);
        let mut x: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let before = x.clone();
        let (c, s) = rope.phases(0);
        rope.apply(&mut x, &c, &s);
        assert_eq!(x, before);
    }

    #[test]
    fn rotation_preserves_pair_norms() {
        let rope = Rope::new(4, 10000.0);
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        let (c, s) = rope.phases(7);
        rope.apply(&mut x, &c, &s);
        assert!(((x[0] * x[0] + x[2] * x[2]) - 10.0).abs() < 1e-5);
        assert!(((x[1] * x[1] + x[3] * x[3]) - 20.0).abs() < 1e-5);
        // Lane 0 rotates by 7 radians.
        assert!((x[0] - (7f32.cos() - 3.0 * 7f32.sin())).abs() < 1e-5);
    }
}
