//! The encoders of `grok1 convert`: every encoded row decodes (with the
//! decoders checked against gguf-py) to within the type's precision.

use grok1::quant::{quantize_row, GgmlType};
use proptest::prelude::*;

/// Relative RMS error of a round trip through `t`.
fn round_trip(t: GgmlType, x: &[f32]) -> f64 {
    let mut bytes = Vec::new();
    quantize_row(t, x, &mut bytes);
    assert_eq!(Some(bytes.len()), t.row_bytes(x.len()), "{t}: encoded size");
    let mut y = vec![0f32; x.len()];
    t.dequantize_row(&bytes, &mut y);
    let err: f64 = x
        .iter()
        .zip(&y)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let norm: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (err / norm.max(1e-30)).sqrt()
}

/// Bounds: about 3x the RMS error of a uniform quantiser of that many bits on
/// Gaussian data (and exact for the float types up to their rounding).
fn bound(t: GgmlType) -> f64 {
    match t {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => 1e-3,
        GgmlType::BF16 => 5e-3,
        GgmlType::Q8_0 => 0.02,
        GgmlType::Q6K => 0.06,
        GgmlType::Q4K => 0.2,
        other => panic!("{other} is not encodable"),
    }
}

#[test]
fn gaussian_rows_round_trip_within_bounds() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let x: Vec<f32> = (0..4096)
        .map(|_| {
            let u: f32 = rng.random_range(-1.0..1.0);
            let v: f32 = rng.random_range(-1.0..1.0);
            (u + v) * 0.02
        })
        .collect();
    for t in GgmlType::ENCODABLE {
        let e = round_trip(t, &x);
        eprintln!("{t}: relative RMS error {e:.2e}");
        assert!(e <= bound(t), "{t}: {e}");
    }
    // Zeros and constant rows are exact.
    for t in GgmlType::ENCODABLE {
        let zeros = vec![0f32; 512];
        assert_eq!(round_trip(t, &zeros), 0.0, "{t}: zeros");
    }
}

proptest! {
    /// Any finite values, including outliers and mixed scales, stay finite and
    /// within the type's bound relative to the block's largest value.
    #[test]
    fn any_row_round_trips(values in proptest::collection::vec(-1e3f32..1e3, 256..=768), spike in 0usize..256) {
        let n = values.len() / 256 * 256;
        let mut x = values[..n].to_vec();
        x[spike] *= 50.0;
        for t in GgmlType::ENCODABLE {
            let mut bytes = Vec::new();
            quantize_row(t, &x, &mut bytes);
            let mut y = vec![0f32; n];
            t.dequantize_row(&bytes, &mut y);
            for (block, (xb, yb)) in x.chunks(256).zip(y.chunks(256)).enumerate() {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (a, b) in xb.iter().zip(yb) {
                    prop_assert!(b.is_finite());
                    // A 4-bit step is amax/7.5 at worst; 6-bit amax/32; 8-bit amax/127.
                    let tol = match t {
                        GgmlType::Q4K => amax / 7.0,
                        GgmlType::Q6K => amax / 20.0,
                        GgmlType::Q8_0 => amax / 100.0,
                        _ => amax * 1e-2,
                    };
                    prop_assert!((a - b).abs() <= tol, "{} block {}: {} vs {} (amax {})", t, block, a, b, amax);
                }
            }
        }
    }
}
