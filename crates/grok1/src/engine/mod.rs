//! The serving engine: one thread that owns the model and the paged KV cache and
//! runs every active sequence through each forward step (continuous batching:
//! requests join between steps and leave when they finish or are cancelled).
//!
//! Each step decodes one token for every running sequence and spends at most
//! `prefill_chunk` tokens on prompts, so long prompts never stall running
//! streams. KV pages are taken as sequences grow; when they run out, the most
//! recently admitted sequence is preempted (its pages freed, its tokens kept and
//! recomputed later), so memory is never reserved for the worst case. Requests
//! beyond `max_batch + max_queue` are refused at submission, a group of them
//! (the choices of one HTTP request) all or none. A request whose
//! [`CancelToken`] is set (its client is gone) is dropped, with its pages,
//! before the next step, whether it is queued, prefilling or decoding.
//!
//! With the prefix cache on, every sequence publishes its full KV pages as it
//! fills them and leaves them (its partly filled last page too) when it ends;
//! a sequence entering the batch takes the pages of the longest prefix of its
//! tokens the cache holds and computes only the rest, always at least its last
//! token (whose logits it needs); one that shares a full page or more of its
//! prompt with a running sequence still computing it (the other choices of
//! a request) waits until those pages are published. Cached pages no
//! sequence holds are evicted, least recently used first, only when a
//! sequence needs a page and none is free.
//!
//! A model split over several processes (tensor parallel) runs the engine on
//! rank 0 alone: it decides each step, every cache decision included, and
//! sends it ([`plan`]) before the forward pass; the other ranks run
//! [`follow`], which replays each step on their share of the KV cache.

mod metrics;
pub mod plan;
mod sequence;
mod transfer;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grok1_tokenizer::Tokenizer;
use rayon::prelude::*;

use crate::kv_cache::{KvCache, KvType, DEFAULT_PAGE_SIZE};
use crate::model::{ForwardOptions, Grok1, LogitsRows, RowLogits, SequenceInput};
use crate::sampling::{SamplingError, SamplingParams, TokenConstraint};
use crate::Precision;
pub use metrics::{Load, Metrics};
use plan::{Plan, PlannedInput, StepPlan, Transfer};
use sequence::Sequence;

/// One sequence's share of a step's output: how many inputs it fed and the
/// logit rows (position within its input, row) it gets back.
type StepRows<'a> = (usize, Vec<(usize, &'a [f32])>);

/// Limits and scheduling of an engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences run together in one step.
    pub max_batch: usize,
    /// Requests that may wait for a batch slot; more are refused.
    pub max_queue: usize,
    /// Longest sequence (prompt + generated) accepted; at most the model's context.
    pub context: usize,
    /// KV cache capacity in tokens, over all sequences.
    pub kv_tokens: usize,
    /// Prompt tokens processed per step, over all prefilling sequences.
    pub prefill_chunk: usize,
    pub precision: Precision,
    /// Reuse the KV pages of earlier sequences' shared prefixes.
    pub prefix_cache: bool,
    /// The element type of the KV cache's pages.
    pub kv_type: KvType,
}

/// One completion to run.
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops when one of these is drawn (it is not returned): eos.
    pub stop_token_ids: Vec<u32>,
    /// Generation stops when the text contains one of these (not returned).
    pub stop_strings: Vec<String>,
    /// Return the log-probability of each generated token and this many of the
    /// most likely alternatives.
    pub logprobs: Option<usize>,
    /// Return the log-probabilities of the prompt tokens.
    pub prompt_logprobs: bool,
    /// A grammar the generated tokens must follow: only the tokens it allows
    /// are drawn, and the request stops when it is complete.
    pub constraint: Option<Box<dyn TokenConstraint>>,
    /// Receives the request's events; returning false (the client is gone)
    /// cancels the request at the next step.
    pub sink: Box<dyn FnMut(Event) -> bool + Send>,
}

/// Cancels a group of requests from outside ([`EngineHandle::submit_all`]),
/// before they have any event to send: a client that leaves while its prompt is
/// queued or prefilled. The engine reads it once per sequence per step: one
/// atomic load.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// A guard that cancels when dropped: held by whatever dies with the client
    /// (a handler's future, a response body).
    pub fn drop_guard(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }
}

/// Cancels its token when dropped.
#[derive(Debug)]
pub struct CancelOnDrop(CancelToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A token's log-probability under the model and its most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context length reached.
    Length,
    Cancelled,
    Error(String),
}

/// What a request receives, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Log-probabilities of the prompt tokens (the first has none), once the
    /// prompt has been processed.
    PromptLogprobs(Vec<Option<TokenLogprob>>),
    /// A generated token and the text it releases (text that may still become a
    /// stop string or complete a character is held back and released later).
    Token {
        token: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// The last held-back text, just before `Done`.
    Text(String),
    Done {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// Prompt tokens whose keys and values came from the prefix cache
        /// when the request entered the batch (not computed for it).
        cached_tokens: usize,
    },
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubmitError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {token} at position {position} is outside the vocabulary (ids 0..{vocab})")]
    TokenOutOfRange {
        token: u32,
        position: usize,
        vocab: usize,
    },
    #[error("this model's maximum context length is {max} tokens, but {prompt} prompt tokens and {max_tokens} max_tokens were requested ({total} in total); shorten the prompt or lower max_tokens")]
    ContextLength {
        prompt: usize,
        max_tokens: usize,
        total: usize,
        max: usize,
    },
    #[error("the request needs {needed} tokens of KV cache but the server holds {capacity}; lower max_tokens or start the server with a larger --ctx")]
    KvCapacity { needed: usize, capacity: usize },
    #[error("the server is busy: {in_flight} requests are running or queued (limit {limit}); retry later")]
    QueueFull { in_flight: usize, limit: usize },
    #[error("the request asks for {requests} completions at once but the server runs or queues at most {limit}; ask for fewer choices or prompts")]
    TooManyRequests { requests: usize, limit: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Sampling(#[from] SamplingError),
}

/// The keys and values of a run of tokens as the KV cache holds them: for
/// each position, for each layer, its keys then its values
/// (`[kv_heads * head_dim]` each). What a saved conversation keeps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KvSnapshot {
    pub tokens: Vec<u32>,
    pub kv: Vec<f32>,
}

/// Why keys and values could not be put into the cache.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SnapshotError {
    #[error("the prefix cache is off, so the cache cannot keep saved keys and values for a later request")]
    PrefixCacheOff,
    #[error("{floats} saved values for {tokens} positions, but this model keeps {per_token} values a position")]
    Shape {
        tokens: usize,
        floats: usize,
        per_token: usize,
    },
    #[error("{tokens} saved positions do not fit this engine's context of {context}")]
    TooLong { tokens: usize, context: usize },
    #[error("token id {token} at position {position} is outside the vocabulary (ids 0..{vocab})")]
    TokenOutOfRange {
        token: u32,
        position: usize,
        vocab: usize,
    },
    #[error(transparent)]
    Cache(#[from] crate::kv_cache::CacheError),
    #[error("the engine has stopped")]
    Stopped,
    /// The ranks of a split model disagree on a transfer (a bug).
    #[error("moving keys and values between ranks: {0}")]
    Ranks(String),
}

/// Why a follower rank stopped following rank 0's engine.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FollowError {
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Transfer(#[from] SnapshotError),
    #[error("rank 0's step plan does not fit this rank's KV cache: {0}")]
    Cache(#[from] crate::kv_cache::FollowError),
}

enum Command {
    /// A group admitted together (the choices of one request).
    Submit(Vec<Sequence>),
    Shutdown(Duration),
    Export(Vec<u32>, mpsc::Sender<Result<KvSnapshot, SnapshotError>>),
    Import(KvSnapshot, mpsc::Sender<Result<usize, SnapshotError>>),
}

struct Shared {
    in_flight: AtomicUsize,
    shutting_down: AtomicBool,
    metrics: Metrics,
}

/// A handle to a running engine; cheap to clone and share between threads.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    config: Arc<EngineConfig>,
    vocab: usize,
    page_size: usize,
    total_pages: usize,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl EngineHandle {
    /// Starts the engine thread, which owns `model` from now on. A model
    /// split over processes runs its engine on rank 0 and [`follow`] on the
    /// others.
    pub fn start(
        model: Grok1,
        tokenizer: Arc<Tokenizer>,
        mut config: EngineConfig,
    ) -> EngineHandle {
        config.context = config.context.min(model.config().sequence_len).max(1);
        if config.precision.int8_output() {
            // Made now, not while the first request waits.
            let _ = model.fast_output();
        }
        config.max_batch = config.max_batch.max(1);
        config.prefill_chunk = config.prefill_chunk.max(1);
        let page_size = DEFAULT_PAGE_SIZE;
        let total_pages = total_pages(&config);
        let shared = Arc::new(Shared {
            in_flight: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            metrics: Metrics::new(total_pages),
        });
        let (tx, rx) = mpsc::channel();
        let config = Arc::new(config);
        let vocab = model.config().vocab_size;
        let mut cache = model.new_paged_cache(total_pages, page_size, config.kv_type);
        let split = model.collective().size() > 1;
        if split {
            cache.record_copies();
        }
        let worker = Worker {
            cache,
            split,
            model,
            tokenizer,
            config: config.clone(),
            shared: shared.clone(),
            rx,
            waiting: VecDeque::new(),
            running: Vec::new(),
            accepting: true,
            deadline: None,
        };
        // The loop runs on a worker of a pool of its own, as wide as the global
        // one: its parallel products then start without a cross-thread hand-off
        // and the loop thread takes part in them. A pool of its own, because a
        // loop that never returns must not be a job of a shared pool: a worker
        // of that pool waiting inside a join could steal it (another engine's
        // loop) and never come back.
        let threads = rayon::current_num_threads();
        let thread = std::thread::Builder::new()
            .name("grok1-engine".into())
            .spawn(move || {
                match rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("grok1-engine-{i}"))
                    .build()
                {
                    Ok(pool) => pool.install(|| worker.run()),
                    // Without threads to spare, run on this thread (the global
                    // pool still serves the parallel products).
                    Err(_) => worker.run(),
                }
            })
            .expect("spawning the engine thread");
        EngineHandle {
            tx,
            shared,
            config,
            vocab,
            page_size,
            total_pages,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Token ids the model accepts.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Requests running or waiting.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Checks a request and queues it; its events arrive through its sink.
    pub fn submit(&self, request: Request) -> Result<(), SubmitError> {
        self.submit_all(vec![request], &CancelToken::new())
    }

    /// Checks every request and queues them all, or none: no request of a
    /// refused group runs. `cancel` ends them all at the next step.
    pub fn submit_all(
        &self,
        requests: Vec<Request>,
        cancel: &CancelToken,
    ) -> Result<(), SubmitError> {
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        for request in &requests {
            self.check(request)?;
        }
        let limit = self.config.max_batch + self.config.max_queue;
        if requests.len() > limit {
            return Err(SubmitError::TooManyRequests {
                requests: requests.len(),
                limit,
            });
        }
        let count = requests.len();
        let reserved =
            self.shared
                .in_flight
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n + count <= limit).then_some(n + count)
                });
        if let Err(in_flight) = reserved {
            return Err(SubmitError::QueueFull { in_flight, limit });
        }
        let release = || self.shared.in_flight.fetch_sub(count, Ordering::SeqCst);
        let sequences = match requests
            .into_iter()
            .map(|r| Sequence::new(r, cancel.clone()))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(sequences) => sequences,
            Err(e) => {
                release();
                return Err(e);
            }
        };
        for seq in &sequences {
            self.shared.metrics.request_received(seq.tokens.len());
        }
        if self.tx.send(Command::Submit(sequences)).is_err() {
            release();
            return Err(SubmitError::ShuttingDown);
        }
        Ok(())
    }

    /// Refusals that depend on the request alone.
    fn check(&self, request: &Request) -> Result<(), SubmitError> {
        if request.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if let Some(p) = request
            .prompt
            .iter()
            .position(|&t| t as usize >= self.vocab)
        {
            return Err(SubmitError::TokenOutOfRange {
                token: request.prompt[p],
                position: p,
                vocab: self.vocab,
            });
        }
        // Saturating: a library caller may ask for usize::MAX tokens.
        let total = request.prompt.len().saturating_add(request.max_tokens);
        if total > self.config.context {
            return Err(SubmitError::ContextLength {
                prompt: request.prompt.len(),
                max_tokens: request.max_tokens,
                total,
                max: self.config.context,
            });
        }
        let capacity = self.total_pages * self.page_size;
        if total.div_ceil(self.page_size) > self.total_pages {
            return Err(SubmitError::KvCapacity {
                needed: total,
                capacity,
            });
        }
        request.sampling.validate()?;
        Ok(())
    }

    /// The keys and values of the longest prefix of `tokens` the prefix cache
    /// holds (empty when it holds none, or is off). Runs between steps.
    pub fn export_prefix(&self, tokens: Vec<u32>) -> Result<KvSnapshot, SnapshotError> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Command::Export(tokens, tx))
            .map_err(|_| SnapshotError::Stopped)?;
        rx.recv().map_err(|_| SnapshotError::Stopped)?
    }

    /// Puts saved keys and values into the prefix cache, as if a request had
    /// computed them: a later request that starts with their tokens reuses
    /// them. Returns the positions put in. Runs between steps.
    pub fn import_prefix(&self, snapshot: KvSnapshot) -> Result<usize, SnapshotError> {
        if !self.config.prefix_cache {
            return Err(SnapshotError::PrefixCacheOff);
        }
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Command::Import(snapshot, tx))
            .map_err(|_| SnapshotError::Stopped)?;
        rx.recv().map_err(|_| SnapshotError::Stopped)?
    }

    /// Stops accepting requests, lets running ones finish for up to `grace`,
    /// cancels the rest, and waits for the engine thread to end.
    pub fn shutdown(&self, grace: Duration) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Command::Shutdown(grace));
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

struct Worker {
    model: Grok1,
    /// The model is split over processes: each step is sent to the others.
    split: bool,
    tokenizer: Arc<Tokenizer>,
    config: Arc<EngineConfig>,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    cache: KvCache,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    accepting: bool,
    deadline: Option<Instant>,
}

/// Ends a split model's followers when rank 0's engine loop ends: with the
/// last plan (stop) when it returns; when it panics, with the whole job, as
/// the followers may be inside a step's collectives.
struct StopFollowers(Option<Arc<dyn crate::parallel::Collective>>);

impl Drop for StopFollowers {
    fn drop(&mut self) {
        let Some(collective) = &self.0 else {
            return;
        };
        if std::thread::panicking() {
            eprintln!(
                "grok1: error (rank 0): internal error in the serving engine; ending the job"
            );
            collective.abort(4);
        }
        collective.broadcast_bytes(&mut Plan::Stop.encode());
    }
}

impl Worker {
    fn run(mut self) {
        let _followers = StopFollowers(self.split.then(|| self.model.shared_collective()));
        loop {
            if !self.receive() {
                break;
            }
            if let Some(deadline) = self.deadline {
                if Instant::now() >= deadline
                    || (self.running.is_empty() && self.waiting.is_empty())
                {
                    self.cancel_all();
                    break;
                }
            }
            self.admit();
            if !self.running.is_empty() {
                // A bug in a step must not take the server down: fail the batch, go on.
                let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step()));
                if step.is_err() && self.split {
                    // The other ranks may be inside the step's collectives.
                    eprintln!(
                        "grok1: error (rank 0): internal error in a model step; ending the job"
                    );
                    self.model.collective().abort(4);
                }
                if step.is_err() {
                    for seq in std::mem::take(&mut self.running) {
                        self.finish(
                            seq,
                            FinishReason::Error("internal error in the model step".into()),
                        );
                    }
                }
            }
            self.shared.metrics.set_queue(
                self.waiting.len(),
                self.running.len(),
                self.cache.pages_in_use(),
            );
            self.shared
                .metrics
                .set_prefix_cache(self.cache.cached_pages(), self.cache.evictions());
        }
    }

    /// Takes new commands; blocks when there is nothing to do. False: stop now.
    fn receive(&mut self) -> bool {
        let idle = self.running.is_empty() && self.waiting.is_empty();
        let first = if idle && self.deadline.is_none() {
            match self.rx.recv() {
                Ok(c) => Some(c),
                Err(_) => return false,
            }
        } else {
            None
        };
        let mut commands: Vec<Command> = first.into_iter().collect();
        commands.extend(std::iter::from_fn(|| self.rx.try_recv().ok()));
        for command in commands {
            match command {
                Command::Submit(group) if self.accepting => self.waiting.extend(group),
                Command::Submit(group) => {
                    for seq in group {
                        self.finish(seq, FinishReason::Cancelled);
                    }
                }
                Command::Shutdown(grace) => {
                    self.accepting = false;
                    self.deadline = Some(Instant::now() + grace);
                }
                Command::Export(tokens, reply) => {
                    let _ = reply.send(self.export(&tokens));
                }
                Command::Import(snapshot, reply) => {
                    let _ = reply.send(self.import(snapshot));
                }
            }
        }
        true
    }

    /// Values a position keeps in a [`KvSnapshot`].
    fn snapshot_width(&self) -> usize {
        2 * self.cache.layers() * self.model.config().kv_width()
    }

    /// Tells the other ranks of a split model to move a prefix's keys and
    /// values (with the page copies made since the last step).
    fn send_transfer(&mut self, id: crate::kv_cache::SeqId, len: usize, import: bool) {
        if !self.split {
            return;
        }
        let t = Transfer {
            copies: self.cache.take_copies(),
            pages: self
                .cache
                .followed(id)
                .expect("a sequence just added")
                .pages,
            len,
        };
        let plan = if import {
            Plan::Import(t)
        } else {
            Plan::Export(t)
        };
        self.model.collective().broadcast_bytes(&mut plan.encode());
    }

    fn export(&mut self, tokens: &[u32]) -> Result<KvSnapshot, SnapshotError> {
        let pad = self.model.config().pad_token;
        let id = self.cache.add_sequence();
        let held = self.cache.attach_prefix(id, tokens, pad).unwrap_or(0);
        let kv = if held == 0 {
            Ok(Vec::new())
        } else {
            self.send_transfer(id, held, false);
            let head_dim = self.model.config().key_size;
            transfer::Mover::new(&self.cache, self.model.collective(), head_dim).gather(
                &self.cache,
                id,
                held,
            )
        };
        let _ = self.cache.remove_sequence(id);
        Ok(KvSnapshot {
            tokens: tokens[..held].to_vec(),
            kv: kv?,
        })
    }

    fn import(&mut self, snapshot: KvSnapshot) -> Result<usize, SnapshotError> {
        let cfg = self.model.config();
        let (pad, vocab, head_dim) = (cfg.pad_token, cfg.vocab_size, cfg.key_size);
        let width = self.snapshot_width();
        let tokens = snapshot.tokens.len();
        if Some(snapshot.kv.len()) != tokens.checked_mul(width) {
            return Err(SnapshotError::Shape {
                tokens,
                floats: snapshot.kv.len(),
                per_token: width,
            });
        }
        if tokens > self.config.context {
            return Err(SnapshotError::TooLong {
                tokens,
                context: self.config.context,
            });
        }
        if let Some(p) = snapshot.tokens.iter().position(|&t| t as usize >= vocab) {
            return Err(SnapshotError::TokenOutOfRange {
                token: snapshot.tokens[p],
                position: p,
                vocab,
            });
        }
        let id = self.cache.add_sequence();
        if let Err(e) = self.cache.reserve(id, tokens) {
            let _ = self.cache.remove_sequence(id);
            return Err(e.into());
        }
        self.send_transfer(id, tokens, true);
        let mover = transfer::Mover::new(&self.cache, self.model.collective(), head_dim);
        if let Err(e) = mover.scatter(&mut self.cache, id, tokens, Some(&snapshot.kv)) {
            let _ = self.cache.remove_sequence(id);
            return Err(e);
        }
        self.cache.commit(id, &snapshot.tokens, pad);
        let _ = self.cache.remove_sequence_keeping_prefix(id);
        Ok(tokens)
    }

    /// Moves waiting sequences into the batch while there is room and KV pages.
    fn admit(&mut self) {
        self.drop_cancelled_waiting();
        while self.running.len() < self.config.max_batch {
            let Some(seq) = self.waiting.front() else {
                break;
            };
            if self.awaits_shared_prefix(seq) {
                break;
            }
            // Its first chunk, plus a page of headroom for each running sequence.
            let chunk = seq.pending().min(self.config.prefill_chunk);
            let needed = chunk.div_ceil(self.cache.page_size()) + self.running.len();
            if needed > self.cache.free_pages() && !self.running.is_empty() {
                break;
            }
            let mut seq = self.waiting.pop_front().expect("front exists");
            seq.admitted(&self.shared.metrics);
            let kv = self.cache.add_sequence();
            seq.kv = Some(kv);
            if let Some(reusable) = self.cache_reusable(&seq) {
                let pad = self.model.config().pad_token;
                let reused = self
                    .cache
                    .attach_prefix(kv, reusable, pad)
                    .expect("a sequence just added");
                seq.cached = reused;
                seq.reused(reused, &self.shared.metrics);
            }
            self.running.push(seq);
        }
    }

    /// The tokens of `seq` whose keys and values may come from the prefix
    /// cache: all but the last, which is always computed (its logits are the
    /// next token's); none where the cache is off or the sequence needs its
    /// prompt's logits.
    fn cache_reusable<'a>(&self, seq: &'a Sequence) -> Option<&'a [u32]> {
        (self.config.prefix_cache && !seq.needs_prompt_rows())
            .then(|| &seq.tokens[..seq.tokens.len() - 1])
    }

    /// Whether `seq` waits for a running sequence still computing the keys
    /// and values of a full page or more of `seq`'s prompt (another choice
    /// of the same request, or a request with the same system prompt that
    /// came at the same time): once they are published, `seq` takes them
    /// from the prefix cache instead of computing them a second time, as a
    /// request with `n` choices would otherwise compute its prompt `n`
    /// times. The sequence it waits for is running, so it gets there (or
    /// ends, or is preempted, and then nothing is waited for).
    fn awaits_shared_prefix(&self, seq: &Sequence) -> bool {
        let Some(reusable) = self.cache_reusable(seq) else {
            return false;
        };
        let page = self.cache.page_size();
        self.running.iter().any(|r| {
            let shared = reusable
                .iter()
                .zip(&r.tokens)
                .take_while(|(a, b)| a == b)
                .count();
            // Full pages are published as they are filled.
            shared / page > r.cached / page
        })
    }

    /// Finishes every queued sequence whose client is gone, wherever it is in
    /// the queue: it holds a slot that a new request would be refused for.
    fn drop_cancelled_waiting(&mut self) {
        if !self.waiting.iter().any(Sequence::cancelled) {
            return;
        }
        let (gone, kept) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(Sequence::cancelled);
        self.waiting = kept;
        for seq in Vec::from(gone) {
            self.finish(seq, FinishReason::Cancelled);
        }
    }

    /// Frees the pages of the most recently admitted sequence and puts it back at
    /// the front of the queue; its tokens are recomputed when it runs again.
    fn preempt_last(&mut self) -> bool {
        if self.running.len() <= 1 {
            return false;
        }
        let mut seq = self.running.pop().expect("more than one");
        if let Some(kv) = seq.kv.take() {
            self.release(kv, true);
        }
        seq.cached = 0;
        self.shared.metrics.preempted();
        self.waiting.push_front(seq);
        true
    }

    fn step(&mut self) {
        // Drop cancelled sequences first so their pages are free for this step.
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].cancelled() {
                let seq = self.running.remove(i);
                self.finish(seq, FinishReason::Cancelled);
            } else {
                i += 1;
            }
        }
        // Plan the step: one token per decoding sequence, prompt chunks within budget.
        let plan = loop {
            let mut budget = self.config.prefill_chunk;
            let mut plan = Vec::new();
            let mut pages_needed = 0;
            for (i, seq) in self.running.iter().enumerate() {
                let pending = seq.pending();
                let take = if pending <= 1 {
                    pending
                } else {
                    pending.min(budget)
                };
                if take == 0 {
                    continue;
                }
                if pending > 1 {
                    budget -= take;
                }
                let kv = seq.kv.expect("running sequences hold KV");
                let have = self.cache.pages(kv).len();
                pages_needed += (seq.cached + take)
                    .div_ceil(self.cache.page_size())
                    .saturating_sub(have);
                plan.push((i, take));
            }
            if pages_needed <= self.cache.free_pages() || !self.preempt_last() {
                break plan;
            }
        };
        if plan.is_empty() {
            return;
        }
        // Pages are taken here rather than inside the forward pass, so that
        // the page tables sent to the other ranks are the ones it writes.
        if let Err(e) = self.reserve(&plan) {
            let message = e.to_string();
            for seq in std::mem::take(&mut self.running) {
                self.finish(seq, FinishReason::Error(message.clone()));
            }
            return;
        }
        let logits: Vec<RowLogits> = plan
            .iter()
            .map(|&(i, take)| self.running[i].row_logits(take))
            .collect();
        if self.split {
            self.send_step(&plan, &logits);
        }
        let inputs: Vec<SequenceInput> = plan
            .iter()
            .map(|&(i, take)| {
                let seq = &self.running[i];
                SequenceInput {
                    seq: seq.kv.expect("running sequences hold KV"),
                    tokens: &seq.tokens[seq.cached..seq.cached + take],
                }
            })
            .collect();
        let options = ForwardOptions {
            precision: self.config.precision,
            logits: LogitsRows::PerInput(logits),
        };
        let started = Instant::now();
        let out = self.model.forward(&mut self.cache, &inputs, &options, None);
        drop(inputs);
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let message = e.to_string();
                for seq in std::mem::take(&mut self.running) {
                    self.finish(seq, FinishReason::Error(message.clone()));
                }
                return;
            }
        };
        self.shared.metrics.step(plan.len(), started.elapsed());
        if self.config.prefix_cache {
            for &(i, _) in &plan {
                let kv = self.running[i].kv.expect("running sequences hold KV");
                let _ = self.cache.publish(kv);
            }
        }
        // Hand each sequence its rows; sequences sample and detokenize in parallel.
        let mut work: Vec<Option<StepRows>> = (0..self.running.len()).map(|_| None).collect();
        let mut row = 0;
        for (input, &(i, take)) in plan.iter().enumerate() {
            let mut rows = Vec::new();
            while row < out.rows.len() && out.rows[row].0 == input {
                rows.push((out.rows[row].1, out.row(row)));
                row += 1;
            }
            work[i] = Some((take, rows));
        }
        let (tokenizer, context, metrics) =
            (&self.tokenizer, self.config.context, &self.shared.metrics);
        let reasons: Vec<Option<FinishReason>> = self
            .running
            .par_iter_mut()
            .zip(work)
            .map(|(seq, work)| {
                let (take, rows) = work?;
                seq.advance(take, &rows, tokenizer, context, metrics)
            })
            .collect();
        let finished: Vec<(usize, FinishReason)> = reasons
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| Some((i, r?)))
            .collect();
        for (i, reason) in finished.into_iter().rev() {
            let seq = self.running.remove(i);
            self.finish(seq, reason);
        }
    }

    /// Gives every sequence of the step its pages for the tokens it takes, or
    /// none of them any (a full cache: rank 0's planning counted them).
    fn reserve(&mut self, plan: &[(usize, usize)]) -> Result<(), crate::kv_cache::CacheError> {
        let mut done = Vec::new();
        for &(i, take) in plan {
            let seq = &self.running[i];
            let kv = seq.kv.expect("running sequences hold KV");
            if let Err(e) = self.cache.reserve(kv, seq.cached + take) {
                for (kv, len) in done {
                    let _ = self.cache.truncate(kv, len);
                }
                return Err(e);
            }
            done.push((kv, seq.cached));
        }
        Ok(())
    }

    /// Sends the step about to run to the other ranks: the page copies made
    /// since the last one, and each sequence's page table and new tokens.
    fn send_step(&mut self, plan: &[(usize, usize)], logits: &[RowLogits]) {
        let mut step = StepPlan {
            copies: self.cache.take_copies(),
            inputs: Vec::with_capacity(plan.len()),
        };
        for (&(i, take), &logits) in plan.iter().zip(logits) {
            let seq = &self.running[i];
            let kv = seq.kv.expect("running sequences hold KV");
            step.inputs.push(PlannedInput {
                cache: self
                    .cache
                    .followed(kv)
                    .expect("running sequences are in the cache"),
                tokens: seq.tokens[seq.cached..seq.cached + take].to_vec(),
                logits,
            });
        }
        self.model
            .collective()
            .broadcast_bytes(&mut Plan::Step(step).encode());
    }

    /// Lets go of a sequence's pages; with the prefix cache on, those it
    /// computed stay cached for later sequences where `keep` (not after a
    /// failed step, which may have left them half written).
    fn release(&mut self, kv: crate::kv_cache::SeqId, keep: bool) {
        let _ = if keep && self.config.prefix_cache {
            self.cache.remove_sequence_keeping_prefix(kv)
        } else {
            self.cache.remove_sequence(kv)
        };
    }

    fn finish(&mut self, mut seq: Sequence, reason: FinishReason) {
        if let Some(kv) = seq.kv.take() {
            let keep = !matches!(reason, FinishReason::Error(_));
            self.release(kv, keep);
        }
        // The slot is free before the client hears `Done`, so a client that
        // submits again at once is not refused for its own finished request.
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        seq.close(reason, &self.shared.metrics);
    }

    fn cancel_all(&mut self) {
        for seq in std::mem::take(&mut self.running) {
            self.finish(seq, FinishReason::Cancelled);
        }
        while let Some(seq) = self.waiting.pop_front() {
            self.finish(seq, FinishReason::Cancelled);
        }
    }
}

/// Pages of an engine's KV cache (the same on every rank of a split model).
fn total_pages(config: &EngineConfig) -> usize {
    config.kv_tokens.div_ceil(DEFAULT_PAGE_SIZE).max(1)
}

/// A rank other than 0 of a model split over processes, while rank 0 runs an
/// engine with the same `config`: runs every step rank 0 sends on this
/// rank's share of the KV cache, until rank 0's engine stops. Returns the
/// steps run.
pub fn follow(model: &Grok1, config: &EngineConfig) -> Result<u64, FollowError> {
    let collective = model.collective();
    let mut cache = model.new_paged_cache(total_pages(config), DEFAULT_PAGE_SIZE, config.kv_type);
    let mut steps = 0;
    loop {
        let mut message = Vec::new();
        // Rank 0 may wait for requests for as long as it likes.
        collective.wait_for_broadcast(&mut message);
        let step = match Plan::decode(&message)? {
            Plan::Stop => return Ok(steps),
            Plan::Step(step) => step,
            Plan::Export(t) => {
                let id = cache.follow(&t.copies, &[t.sequence()])?[0];
                transfer::Mover::new(&cache, collective, model.config().key_size)
                    .gather(&cache, id, t.len)?;
                continue;
            }
            Plan::Import(t) => {
                let id = cache.follow(&t.copies, &[t.sequence()])?[0];
                let mover = transfer::Mover::new(&cache, collective, model.config().key_size);
                mover.scatter(&mut cache, id, t.len, None)?;
                continue;
            }
        };
        let tables: Vec<_> = step.inputs.iter().map(|i| i.cache.clone()).collect();
        let ids = cache.follow(&step.copies, &tables)?;
        let inputs: Vec<SequenceInput> = ids
            .iter()
            .zip(&step.inputs)
            .map(|(&seq, i)| SequenceInput {
                seq,
                tokens: &i.tokens,
            })
            .collect();
        let options = ForwardOptions {
            precision: config.precision,
            logits: LogitsRows::PerInput(step.inputs.iter().map(|i| i.logits).collect()),
        };
        // A step rank 0's forward pass refused before its collectives (a bad
        // input) is refused here alike, and rank 0 reports it to the request;
        // a step refused here alone leaves rank 0 waiting, up to its limit,
        // and this line says why.
        if let Err(e) = model.forward(&mut cache, &inputs, &options, None) {
            eprintln!(
                "grok1: rank {}: step {steps} refused (rank 0 should have refused it too): {e}",
                collective.rank()
            );
        }
        steps += 1;
    }
}
