//! Attention over the paged KV cache: the page kernels on every instruction
//! set against the scalar ones (bit for bit), and the whole attention
//! against a plain two-pass softmax in f64, with pads, several sequences and
//! page sizes that do not divide the sequences; a prompt attended in one
//! call and row by row give the same bits.

use grok1::backend::cpu::attention::pages;
use grok1::backend::cpu::CpuBackend;
use grok1::backend::cpu::Isa;
use grok1::backend::{AttentionParams, Backend, Precision, RowPosition};
use grok1::kv_cache::{KeysPage, KvCache, KvType, ValuesPage};
use grok1::ModelConfig;
use proptest::prelude::*;

/// A deterministic value in [-1, 1) from an index, a seed and a salt.
fn val(i: usize, seed: u64, salt: u64) -> f32 {
    let h = (i as u64 ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_mul(0xBF58_476D_1CE4_E5B9)
        ^ seed;
    let h = (h ^ (h >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((h >> 40) % 2001) as f32 / 1000.0 - 1.0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn page_kernels_on_every_isa(
        g in 1usize..9,
        hd in prop_oneof![Just(5usize), Just(8), Just(12), Just(16), Just(56), Just(128)],
        ps in prop_oneof![Just(4usize), Just(8), Just(12), Just(16), Just(32)],
        fill in 0.0f64..1.0,
        seed in any::<u64>(),
    ) {
        let n = 1 + ((ps - 1) as f64 * fill) as usize;
        let q: Vec<f32> = (0..g * hd).map(|i| val(i, seed, 1) * 3.0).collect();
        let keys: Vec<f32> = (0..hd * ps).map(|i| val(i, seed, 2)).collect();
        let values: Vec<f32> = (0..n * hd).map(|i| val(i, seed, 3)).collect();
        let p: Vec<f32> = (0..g * ps).map(|i| val(i, seed, 4).abs()).collect();
        let o0: Vec<f32> = (0..g * hd).map(|i| val(i, seed, 5)).collect();
        let run = |isa: Isa| {
            let mut s = vec![f32::NAN; g * ps];
            pages::page_scores(isa, &q, g, KeysPage::F32(&keys), ps, n, &mut s);
            let s: Vec<f32> = s.chunks(ps).flat_map(|r| r[..n].to_vec()).collect();
            let mut o = o0.clone();
            pages::page_values(isa, &p, g, ps, n, ValuesPage::F32(&values), &mut o);
            (s, o)
        };
        let (s, o) = run(Isa::Scalar);
        // The scalar kernels against the definition.
        for i in 0..g {
            for j in 0..n {
                let want: f64 = (0..hd).map(|t| q[i * hd + t] as f64 * keys[t * ps + j] as f64).sum();
                prop_assert!((s[i * n + j] as f64 - want).abs() <= 1e-5 * hd as f64);
            }
            for c in 0..hd {
                let want = o0[i * hd + c] as f64
                    + (0..n).map(|j| p[i * ps + j] as f64 * values[j * hd + c] as f64).sum::<f64>();
                prop_assert!((o[i * hd + c] as f64 - want).abs() <= 1e-5 * ps as f64);
            }
        }
        for isa in Isa::available() {
            let (s2, o2) = run(isa);
            prop_assert!(s2.iter().zip(&s).all(|(a, b)| a.to_bits() == b.to_bits()), "{}: scores", isa.name());
            prop_assert!(o2.iter().zip(&o).all(|(a, b)| a.to_bits() == b.to_bits()), "{}: values", isa.name());
        }
    }

    #[test]
    fn softcap_scores_on_every_isa(n in 0usize..40, scale in 0.01f32..200.0, seed in any::<u64>(), masked in 0usize..5) {
        let raw: Vec<f32> = (0..n).map(|i| val(i, seed, 6) * scale).collect();
        let mask: Vec<bool> = (0..n).map(|j| (j + seed as usize) % 4 >= masked).collect();
        let mut want = raw.clone();
        let want_max = pages::softcap_scores_scalar(&mut want, 0.125, 30.0, &mask);
        prop_assert_eq!(want_max, want.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        for isa in Isa::available() {
            let mut s = raw.clone();
            let max = pages::softcap_scores(isa, &mut s, 0.125, 30.0, &mask);
            prop_assert_eq!(max, s.iter().copied().fold(f32::NEG_INFINITY, f32::max), "{}", isa.name());
            for ((a, b), &keep) in s.iter().zip(&want).zip(&mask) {
                prop_assert!(keep || *a == -1e30, "{}: a masked score is {}", isa.name(), a);
                prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{}: {} vs {}", isa.name(), a, b);
            }
        }
    }
}

/// One attention case: sequences of the given lengths (their last `tail`
/// positions are the query rows), `pad_every`-th token a pad.
struct Case {
    cache: KvCache,
    rows: Vec<RowPosition>,
    q: Vec<f32>,
    params: AttentionParams,
}

/// `heads` is (query heads, key heads, head dimension).
fn case(
    lens: &[usize],
    tail: usize,
    heads: (usize, usize, usize),
    ps: usize,
    pad_every: usize,
    seed: u64,
) -> Case {
    case_of(lens, tail, heads, ps, pad_every, seed, KvType::F32)
}

/// [`case`] with a cache of `kv_type`.
fn case_of(
    lens: &[usize],
    tail: usize,
    heads: (usize, usize, usize),
    ps: usize,
    pad_every: usize,
    seed: u64,
    kv_type: KvType,
) -> Case {
    let (q_heads, kv_heads, hd) = heads;
    let mut cfg = ModelConfig::tiny();
    cfg.num_layers = 2;
    (cfg.num_q_heads, cfg.num_kv_heads, cfg.key_size) = (q_heads, kv_heads, hd);
    let pages: usize = lens.iter().map(|l| l.div_ceil(ps)).sum();
    let mut cache = KvCache::with_type(&cfg, pages, ps, kv_type);
    let kvw = kv_heads * hd;
    let mut rows = Vec::new();
    for (si, &len) in lens.iter().enumerate() {
        let seq = cache.add_sequence();
        cache.reserve(seq, len).unwrap();
        for pos in 0..len {
            for layer in 0..2 {
                let at = (si * 1000 + pos) * 2 + layer;
                let k: Vec<f32> = (0..kvw).map(|i| val(at * kvw + i, seed, 7) * 2.0).collect();
                let v: Vec<f32> = (0..kvw).map(|i| val(at * kvw + i, seed, 8)).collect();
                cache.write(layer, seq, pos, &k, &v);
            }
        }
        let tokens: Vec<u32> = (0..len)
            .map(|p| {
                if pad_every > 0 && p % pad_every == pad_every - 1 {
                    0
                } else {
                    5
                }
            })
            .collect();
        cache.commit(seq, &tokens, 0);
        rows.extend((len.saturating_sub(tail)..len).map(|pos| RowPosition { seq, pos }));
    }
    let q: Vec<f32> = (0..rows.len() * q_heads * hd)
        .map(|i| val(i, seed, 9) * 2.0)
        .collect();
    let params = AttentionParams {
        num_q_heads: q_heads,
        num_kv_heads: kv_heads,
        head_dim: hd,
        multiplier: 0.3,
        softcap: 30.0,
        precision: Precision::Fast,
    };
    Case {
        cache,
        rows,
        q,
        params,
    }
}

/// Two-pass softcapped softmax attention in f64, reading the cache through
/// its accessors (keys transposed within a page).
fn reference(c: &Case, layer: usize) -> Vec<f64> {
    let (hd, ps) = (c.params.head_dim, c.cache.page_size());
    let group = c.params.num_q_heads / c.params.num_kv_heads;
    let mut out = Vec::new();
    for (r, row) in c.rows.iter().enumerate() {
        let pages = c.cache.pages(row.seq);
        let mask = c.cache.key_mask(row.seq);
        for h in 0..c.params.num_q_heads {
            let q = &c.q[(r * c.params.num_q_heads + h) * hd..][..hd];
            let kvh = h / group;
            let scores: Vec<f64> = (0..=row.pos)
                .map(|j| {
                    let keys = c.cache.keys(layer, pages[j / ps], kvh);
                    let dot: f64 = (0..hd)
                        .map(|t| q[t] as f64 * keys.get(ps, t, j % ps) as f64)
                        .sum();
                    let x = dot * c.params.multiplier as f64;
                    if mask[j] {
                        30.0 * (x / 30.0).tanh()
                    } else {
                        -1e30
                    }
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = w.iter().sum();
            for t in 0..hd {
                out.push(
                    (0..=row.pos)
                        .map(|j| {
                            let values = c.cache.values(layer, pages[j / ps], kvh);
                            w[j] / sum * values.get(hd, j % ps, t) as f64
                        })
                        .sum(),
                );
            }
        }
    }
    out
}

fn attend(isa: Isa, c: &Case, rows: &[RowPosition], q: &[f32], layer: usize) -> Vec<f32> {
    let mut out = vec![0f32; q.len()];
    CpuBackend::with_isa(isa).attention(q, rows, &c.cache, layer, &c.params, &mut out);
    out
}

fn check(c: &Case) {
    let width = c.params.num_q_heads * c.params.head_dim;
    for layer in 0..2 {
        let want = reference(c, layer);
        for isa in Isa::available() {
            let all = attend(isa, c, &c.rows, &c.q, layer);
            for (i, (a, b)) in all.iter().zip(&want).enumerate() {
                assert!(
                    (*a as f64 - b).abs() <= 2e-5,
                    "{} layer {layer} element {i}: {a} vs {b}",
                    isa.name()
                );
            }
            // Each row alone (as decoding would) gives the same bits.
            for (r, row) in c.rows.iter().enumerate() {
                let one = attend(
                    isa,
                    c,
                    std::slice::from_ref(row),
                    &c.q[r * width..(r + 1) * width],
                    layer,
                );
                assert!(
                    one.iter()
                        .zip(&all[r * width..])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{}: row {r} alone differs from the batch",
                    isa.name()
                );
            }
        }
    }
}

#[test]
fn a_long_prompt_in_tiles_matches_the_two_pass_softmax() {
    // 70 rows: four full tiles and a ragged one; pages of 16 and the last
    // one part full.
    check(&case(&[70], 70, (8, 2, 24), 16, 0, 1));
}

#[test]
fn several_sequences_with_pads_and_odd_pages() {
    // Decoding three sequences (one row each) and a prompt chunk behind a
    // cached prefix, page sizes that are not multiples of the vector width.
    for (ps, seed) in [(3usize, 2u64), (5, 3), (12, 4), (16, 5)] {
        check(&case(&[1, 19, 40], 1, (6, 2, 20), ps, 4, seed));
        check(&case(&[37, 9], 9, (4, 4, 8), ps, 3, seed));
    }
}

#[test]
fn no_rows_is_no_work() {
    let c = case(&[3], 0, (4, 2, 8), 4, 0, 7);
    assert!(c.rows.is_empty());
    for isa in Isa::available() {
        assert!(attend(isa, &c, &[], &[], 0).is_empty());
    }
}

#[test]
fn a_row_whose_keys_are_all_pads_attends_uniformly() {
    // Every token a pad: the reference's mask gives all keys equal weights
    // (the -1e30 scores tie), as here.
    check(&case(&[2, 5], 5, (2, 1, 16), 4, 1, 6));
}

/// A page of `kind` holding `keys` (`[hd, ps]`, transposed) and `values`
/// (`[ps, hd]`), written through a cache as attention's are.
fn typed_page(kind: KvType, hd: usize, ps: usize, keys: &[f32], values: &[f32]) -> KvCache {
    let mut cfg = ModelConfig::tiny();
    (cfg.num_layers, cfg.num_kv_heads, cfg.key_size) = (1, 1, hd);
    let mut cache = KvCache::with_type(&cfg, 1, ps, kind);
    let seq = cache.add_sequence();
    cache.reserve(seq, ps).unwrap();
    for j in 0..ps {
        let k: Vec<f32> = (0..hd).map(|t| keys[t * ps + j]).collect();
        cache.write(0, seq, j, &k, &values[j * hd..(j + 1) * hd]);
    }
    cache
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// bf16 and q8_0 pages: every ISA gives the scalar kernels' bits, and
    /// the scalar kernels give the f32 kernels' bits on the decoded page
    /// (their elements decode exactly), which is within the type's rounding
    /// of the f32 values written.
    #[test]
    fn compact_page_kernels_on_every_isa(
        g in 1usize..9,
        hd in prop_oneof![Just(5usize), Just(8), Just(16), Just(40), Just(56), Just(128)],
        ps in prop_oneof![Just(4usize), Just(8), Just(12), Just(16), Just(32)],
        fill in 0.0f64..1.0,
        seed in any::<u64>(),
        q8 in any::<bool>(),
    ) {
        let kind = if q8 { KvType::Q8_0 } else { KvType::Bf16 };
        let n = 1 + ((ps - 1) as f64 * fill) as usize;
        let q: Vec<f32> = (0..g * hd).map(|i| val(i, seed, 1) * 3.0).collect();
        let keys: Vec<f32> = (0..hd * ps).map(|i| val(i, seed, 2)).collect();
        let values: Vec<f32> = (0..ps * hd).map(|i| val(i, seed, 3)).collect();
        let p: Vec<f32> = (0..g * ps).map(|i| val(i, seed, 4).abs()).collect();
        let o0: Vec<f32> = (0..g * hd).map(|i| val(i, seed, 5)).collect();
        let cache = typed_page(kind, hd, ps, &keys, &values);
        let (kp, vp) = (cache.keys(0, 0, 0), cache.values(0, 0, 0));
        let dk: Vec<f32> = (0..hd * ps).map(|i| kp.get(ps, i / ps, i % ps)).collect();
        let dv: Vec<f32> = (0..ps * hd).map(|i| vp.get(hd, i / hd, i % hd)).collect();
        // The type's rounding: bf16 half an ulp (at most 2^-8 relative); q8_0 half a
        // step of its block's largest magnitude (at most 1) over 127, plus
        // the f16 scale's rounding.
        let bound = |x: f32| if q8 { (0.5 + 127.0 / 2048.0) / 127.0 } else { x.abs() / 256.0 };
        for (a, b) in dk.iter().zip(&keys).chain(dv.iter().zip(&values)) {
            prop_assert!((a - b).abs() <= bound(*b), "{:?}: {} decodes to {}", kind, b, a);
        }
        let run = |isa: Isa, keys: KeysPage, values: ValuesPage| {
            let mut s = vec![f32::NAN; g * ps];
            pages::page_scores(isa, &q, g, keys, ps, n, &mut s);
            let s: Vec<f32> = s.chunks(ps).flat_map(|r| r[..n].to_vec()).collect();
            let mut o = o0.clone();
            pages::page_values(isa, &p, g, ps, n, values, &mut o);
            (s, o)
        };
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let (s, o) = run(Isa::Scalar, kp, vp);
        let (fs, fo) = run(Isa::Scalar, KeysPage::F32(&dk), ValuesPage::F32(&dv));
        prop_assert_eq!(bits(&s), bits(&fs));
        prop_assert_eq!(bits(&o), bits(&fo));
        for isa in Isa::available() {
            let (s2, o2) = run(isa, kp, vp);
            prop_assert_eq!(bits(&s2), bits(&s), "{}: scores", isa.name());
            prop_assert_eq!(bits(&o2), bits(&o), "{}: values", isa.name());
        }
    }
}

/// q8_0 pages whose scales are every f16 bit pattern (subnormals,
/// infinities and NaNs among them, which the cache itself never writes):
/// every ISA decodes them as the scalar kernels do (a NaN as a NaN).
#[test]
fn q8_0_pages_decode_every_f16_scale_on_every_isa() {
    // One short block a row: eight elements, one vector on every ISA.
    let (hd, ps) = (8, 16);
    let same = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
    };
    // Key element t of slot j (and value column t of row j).
    let q: Vec<i8> = (0..hd * ps).map(|i| [1, -127, 0, 93][i % 4]).collect();
    let query: Vec<f32> = (0..hd).map(|t| if t == 1 { 1.0 } else { 0.0 }).collect();
    // Output i weighs value row i alone.
    let p: Vec<f32> = (0..ps * ps).map(|i| f32::from(i / ps == i % ps)).collect();
    for first in (0..=u16::MAX).step_by(ps) {
        let scales: Vec<u16> = (0..ps as u16).map(|j| first + j).collect();
        let run = |isa: Isa| {
            let mut s = vec![0f32; ps];
            let keys = KeysPage::Q8_0 {
                q: &q,
                scales: &scales,
            };
            pages::page_scores(isa, &query, 1, keys, ps, ps, &mut s);
            let mut o = vec![0f32; ps * hd];
            let values = ValuesPage::Q8_0 {
                q: &q,
                scales: &scales,
            };
            pages::page_values(isa, &p, ps, ps, ps, values, &mut o);
            (s, o)
        };
        let (s, o) = run(Isa::Scalar);
        for isa in Isa::available() {
            let (s2, o2) = run(isa);
            assert!(
                same(&s2, &s),
                "{}: scores, scales from {first:#06x}",
                isa.name()
            );
            assert!(
                same(&o2, &o),
                "{}: values, scales from {first:#06x}",
                isa.name()
            );
        }
    }
}

/// Sequence lengths, query rows per sequence, (query heads, key heads, head
/// dimension), page size, pad period.
type Shape = (&'static [usize], usize, (usize, usize, usize), usize, usize);

/// Attention over bf16 and q8_0 caches: against the f64 softmax of the
/// values they decode to (as tight as f32's), and against the same case on
/// an f32 cache within a stated bound of the types' rounding.
#[test]
fn attention_over_each_kv_type() {
    for kind in KvType::ALL {
        let shapes: [Shape; 3] = [
            (&[70], 70, (8, 2, 24), 16, 0),
            (&[1, 19, 40], 1, (6, 2, 40), 5, 4),
            (&[37, 9], 9, (4, 4, 64), 16, 3),
        ];
        for (i, &(lens, tail, heads, ps, pad)) in shapes.iter().enumerate() {
            let typed = case_of(lens, tail, heads, ps, pad, i as u64 + 11, kind);
            check(&typed);
            let exact = case_of(lens, tail, heads, ps, pad, i as u64 + 11, KvType::F32);
            let a = attend(Isa::best(), &typed, &typed.rows, &typed.q, 1);
            let b = attend(Isa::best(), &exact, &exact.rows, &exact.q, 1);
            // Values lie in [-1, 1), keys in [-2, 2): outputs move by about
            // the values' rounding plus the weights' (scores times 0.3 move by
            // hd * |q| * the keys' rounding).
            let bound = match kind {
                KvType::F32 => 0.0,
                KvType::Bf16 => 0.02,
                KvType::Q8_0 => 0.05,
            };
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= bound,
                "{kind}: {worst} from the f32 cache's attention (bound {bound})"
            );
        }
    }
}
