//! What each matrix of a GGUF conversion is written as: one type for all
//! (llama-quantize's `--pure`), or one of llama-quantize's mixes, which give
//! some tensors more bits by their role and layer. The rules are those of
//! llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp) as they apply
//! to the `grok` architecture (a tied or separate output, attention with
//! grouped keys/values, experts merged per layer); rows that are not whole
//! blocks of the chosen type fall back as llama-quantize falls back.

use crate::model::weights::Part;
use crate::quant::GgmlType;

/// llama-quantize's mixes that `convert` writes, by llama.cpp's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    Q2KS,
    Q3KM,
    Q4KM,
    Q5KM,
}

impl Mix {
    pub const ALL: [Mix; 4] = [Mix::Q2KS, Mix::Q3KM, Mix::Q4KM, Mix::Q5KM];

    pub fn name(self) -> &'static str {
        match self {
            Mix::Q2KS => "q2_k_s",
            Mix::Q3KM => "q3_k_m",
            Mix::Q4KM => "q4_k_m",
            Mix::Q5KM => "q5_k_m",
        }
    }

    /// The type of every matrix no rule names.
    pub fn base(self) -> GgmlType {
        match self {
            Mix::Q2KS => GgmlType::Q2K,
            Mix::Q3KM => GgmlType::Q3K,
            Mix::Q4KM => GgmlType::Q4K,
            Mix::Q5KM => GgmlType::Q5K,
        }
    }
}

/// What a conversion writes its matrices as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// One type for every matrix.
    Uniform(GgmlType),
    /// A llama-quantize mix.
    Mix(Mix),
}

impl From<GgmlType> for Scheme {
    fn from(t: GgmlType) -> Self {
        Scheme::Uniform(t)
    }
}

/// Where a matrix sits in the model, as the mixes' rules ask.
#[derive(Clone, Copy, Debug)]
pub struct MatrixRole {
    pub part: Part,
    /// Its layer (0 for the embedding and output).
    pub layer: usize,
    /// Values per row.
    pub cols: usize,
}

/// The model facts the mixes' rules read.
#[derive(Clone, Copy, Debug)]
pub struct ModelShape {
    pub layers: usize,
    pub experts: usize,
    /// Query heads per key/value head.
    pub gqa: usize,
    /// Whether the file holds an output projection apart from the embedding.
    pub has_output: bool,
}

impl Scheme {
    /// Every name `from_name` accepts.
    pub fn names() -> Vec<&'static str> {
        GgmlType::ENCODABLE
            .iter()
            .map(|t| t.name())
            .chain(Mix::ALL.iter().map(|m| m.name()))
            .collect()
    }

    pub fn from_name(name: &str) -> Option<Scheme> {
        let name = name.to_ascii_lowercase();
        GgmlType::ENCODABLE
            .into_iter()
            .find(|t| t.name() == name)
            .map(Scheme::Uniform)
            .or_else(|| {
                Mix::ALL
                    .into_iter()
                    .find(|m| m.name() == name)
                    .map(Scheme::Mix)
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            Scheme::Uniform(t) => t.name(),
            Scheme::Mix(m) => m.name(),
        }
    }

    /// The type most matrices get.
    pub fn base(self) -> GgmlType {
        match self {
            Scheme::Uniform(t) => t,
            Scheme::Mix(m) => m.base(),
        }
    }

    /// llama.cpp's `general.file_type` (its `llama_ftype`) for this scheme;
    /// a uniform K-quant is named as the mix closest to it (its `_S`).
    pub fn file_type(self) -> u32 {
        match self {
            Scheme::Mix(Mix::Q2KS) => 21,
            Scheme::Mix(Mix::Q3KM) => 12,
            Scheme::Mix(Mix::Q4KM) => 15,
            Scheme::Mix(Mix::Q5KM) => 17,
            Scheme::Uniform(t) => match t {
                GgmlType::F32 => 0,
                GgmlType::F16 => 1,
                GgmlType::Q4_0 => 2,
                GgmlType::Q8_0 => 7,
                GgmlType::Q5_0 => 8,
                GgmlType::Q5_1 => 9,
                GgmlType::Q2K => 10,
                GgmlType::Q3K => 11,
                GgmlType::Q4K => 14,
                GgmlType::Q5K => 16,
                GgmlType::Q6K => 18,
                GgmlType::IQ4_NL => 25,
                GgmlType::IQ4_XS => 30,
                GgmlType::BF16 => 32,
                _ => 0,
            },
        }
    }

    /// The type of one matrix.
    pub fn matrix_type(self, role: MatrixRole, model: ModelShape) -> GgmlType {
        let chosen = match self {
            Scheme::Uniform(t) => t,
            Scheme::Mix(mix) => mix_type(mix, role, model),
        };
        fallback(chosen, role.cols)
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and
/// every third one between.
fn use_more_bits(layer: usize, layers: usize) -> bool {
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2
}

fn mix_type(mix: Mix, role: MatrixRole, model: ModelShape) -> GgmlType {
    use GgmlType::{Q4K, Q5K, Q6K, Q8_0};
    let base = mix.base();
    let (layer, layers) = (role.layer, model.layers);
    let eight_experts = model.experts == 8;
    match role.part {
        // The output projection, which a tied model reads from the embedding.
        Part::Output => output_type(role.cols),
        Part::Embedding if !model.has_output => output_type(role.cols),
        Part::Value => {
            // attn_v, counted in layer order (one per layer).
            if eight_experts {
                return Q8_0;
            }
            match mix {
                Mix::Q2KS if model.gqa >= 4 => Q4K,
                Mix::Q3KM if layer < 2 => Q5K,
                Mix::Q3KM => Q4K,
                Mix::Q4KM | Mix::Q5KM if use_more_bits(layer, layers) => Q6K,
                _ => base,
            }
        }
        Part::Key if eight_experts => Q8_0,
        Part::Down => match mix {
            Mix::Q2KS if layer < layers / 8 => Q4K,
            Mix::Q3KM if layer < layers / 16 => Q5K,
            Mix::Q3KM => Q4K,
            Mix::Q4KM | Mix::Q5KM if use_more_bits(layer, layers) => Q6K,
            _ => base,
        },
        Part::AttnOut => match mix {
            Mix::Q3KM | Mix::Q4KM if eight_experts => Q5K,
            Mix::Q3KM => Q4K,
            _ => base,
        },
        _ => base,
    }
}

/// The output projection of a K-quant mix: Q6_K, or Q8_0 for rows that are
/// not whole 256-value blocks.
fn output_type(cols: usize) -> GgmlType {
    if cols.is_multiple_of(crate::quant::QK_K) {
        GgmlType::Q6K
    } else {
        GgmlType::Q8_0
    }
}

/// `t`, or for rows that are not whole blocks of it the type llama-quantize
/// falls back to (a 32-value block of about the same bits), then F16.
pub fn fallback(t: GgmlType, cols: usize) -> GgmlType {
    if cols.is_multiple_of(t.block_size()) {
        return t;
    }
    let smaller = match t {
        GgmlType::Q2K | GgmlType::Q3K | GgmlType::IQ4_XS => GgmlType::IQ4_NL,
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if cols.is_multiple_of(smaller.block_size()) {
        smaller
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grok-1's own shape: 64 layers, 8 experts, 48 query heads over 8
    /// key/value heads, the output tied to the embedding.
    const GROK1: ModelShape = ModelShape {
        layers: 64,
        experts: 8,
        gqa: 6,
        has_output: false,
    };

    fn t(mix: Mix, part: Part, layer: usize) -> GgmlType {
        Scheme::Mix(mix).matrix_type(
            MatrixRole {
                part,
                layer,
                cols: 6144,
            },
            GROK1,
        )
    }

    #[test]
    fn grok1_mixes_choose_as_llama_quantize() {
        use GgmlType::*;
        for mix in Mix::ALL {
            // The tied embedding is the output: Q6_K; attn_k/attn_v Q8_0 for 8 experts.
            assert_eq!(t(mix, Part::Embedding, 0), Q6K, "{mix:?}");
            assert_eq!(t(mix, Part::Key, 5), Q8_0, "{mix:?}");
            assert_eq!(t(mix, Part::Value, 0), Q8_0, "{mix:?}");
            assert_eq!(t(mix, Part::Query, 5), mix.base(), "{mix:?}");
            assert_eq!(t(mix, Part::Gate, 5), mix.base(), "{mix:?}");
            assert_eq!(t(mix, Part::Up, 63), mix.base(), "{mix:?}");
        }
        // ffn_down by layer: Q2_K_S the first eighth in Q4_K.
        let downs = |mix| -> Vec<GgmlType> { (0..64).map(|l| t(mix, Part::Down, l)).collect() };
        let q2 = downs(Mix::Q2KS);
        assert!(q2[..8].iter().all(|&x| x == Q4K) && q2[8..].iter().all(|&x| x == Q2K));
        // Q3_K_M: the first sixteenth Q5_K, the rest Q4_K.
        let q3 = downs(Mix::Q3KM);
        assert!(q3[..4].iter().all(|&x| x == Q5K) && q3[4..].iter().all(|&x| x == Q4K));
        // Q4_K_M / Q5_K_M: Q6_K on layers 0-7, 56-63 and every third from 10.
        let more: Vec<usize> = (0..64).filter(|&l| downs(Mix::Q4KM)[l] == Q6K).collect();
        let want: Vec<usize> = (0..8).chain((10..56).step_by(3)).chain(56..64).collect();
        assert_eq!(more, want);
        assert_eq!(
            (0..64)
                .filter(|&l| downs(Mix::Q5KM)[l] == Q6K)
                .collect::<Vec<_>>(),
            want
        );
        assert!(downs(Mix::Q4KM)
            .iter()
            .enumerate()
            .all(|(l, &x)| x == if want.contains(&l) { Q6K } else { Q4K }));
        // attn_output: Q5_K in Q3_K_M and Q4_K_M (8 experts), the base otherwise.
        assert_eq!(t(Mix::Q3KM, Part::AttnOut, 9), Q5K);
        assert_eq!(t(Mix::Q4KM, Part::AttnOut, 9), Q5K);
        assert_eq!(t(Mix::Q2KS, Part::AttnOut, 9), Q2K);
        assert_eq!(t(Mix::Q5KM, Part::AttnOut, 9), Q5K);
    }

    #[test]
    fn other_shapes_follow_the_other_rules() {
        use GgmlType::*;
        let four = ModelShape {
            layers: 16,
            experts: 4,
            gqa: 2,
            has_output: true,
        };
        let role = |part, layer| MatrixRole {
            part,
            layer,
            cols: 512,
        };
        let mt = |mix, part, layer| Scheme::Mix(mix).matrix_type(role(part, layer), four);
        assert_eq!(mt(Mix::Q4KM, Part::Output, 0), Q6K);
        assert_eq!(mt(Mix::Q4KM, Part::Embedding, 0), Q4K);
        assert_eq!(mt(Mix::Q3KM, Part::Value, 1), Q5K);
        assert_eq!(mt(Mix::Q3KM, Part::Value, 2), Q4K);
        assert_eq!(mt(Mix::Q4KM, Part::Value, 0), Q6K);
        assert_eq!(mt(Mix::Q4KM, Part::Value, 3), Q4K);
        assert_eq!(mt(Mix::Q2KS, Part::Value, 3), Q2K);
        assert_eq!(mt(Mix::Q4KM, Part::Key, 3), Q4K);
        assert_eq!(mt(Mix::Q3KM, Part::AttnOut, 3), Q4K);
        assert_eq!(mt(Mix::Q4KM, Part::AttnOut, 3), Q4K);
    }

    #[test]
    fn rows_that_are_not_whole_blocks_fall_back() {
        use GgmlType::*;
        assert_eq!(fallback(Q2K, 64), IQ4_NL);
        assert_eq!(fallback(IQ4_XS, 96), IQ4_NL);
        assert_eq!(fallback(Q4K, 64), Q5_0);
        assert_eq!(fallback(Q5K, 64), Q5_1);
        assert_eq!(fallback(Q6K, 64), Q8_0);
        assert_eq!(fallback(Q4K, 88), F16);
        assert_eq!(fallback(Q8_0, 88), F16);
        assert_eq!(fallback(Q4K, 512), Q4K);
        // The tied output of a narrow model: Q8_0, as llama-quantize writes it.
        let narrow = ModelShape {
            layers: 2,
            experts: 8,
            gqa: 2,
            has_output: false,
        };
        let role = MatrixRole {
            part: Part::Embedding,
            layer: 0,
            cols: 64,
        };
        assert_eq!(Scheme::Mix(Mix::Q4KM).matrix_type(role, narrow), Q8_0);
        for name in Scheme::names() {
            assert_eq!(Scheme::from_name(name).unwrap().name(), name);
        }
        assert_eq!(Scheme::from_name("Q4_K_M"), Some(Scheme::Mix(Mix::Q4KM)));
        assert_eq!(Scheme::from_name("q4_k_l"), None);
    }
}
