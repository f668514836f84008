//! Engine counters and latency histograms, rendered in the Prometheus text
//! format (hand-written: a few counters, gauges and fixed-bucket histograms).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::FinishReason;

#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (c, &b) in self.counts.iter_mut().zip(self.bounds) {
            if v <= b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (c, b) in self.counts.iter().zip(self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

const LATENCY: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Whole requests run from milliseconds to many minutes.
const E2E: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Debug)]
struct Histograms {
    ttft: Histogram,
    per_token: Histogram,
    step: Histogram,
    batch: Histogram,
    queue: Histogram,
    e2e: Histogram,
}

/// The engine's load at its last step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    pub waiting: u64,
    pub running: u64,
    pub kv_pages_used: u64,
    pub kv_pages_total: u64,
    /// Tokens sampled since the engine started, by running and finished requests.
    pub sampled_tokens: u64,
}

/// What the engine has done since it started.
#[derive(Debug)]
pub struct Metrics {
    requests: AtomicU64,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    finished: [AtomicU64; 4],
    preemptions: AtomicU64,
    queue: AtomicU64,
    running: AtomicU64,
    kv_pages_used: AtomicU64,
    kv_pages_peak: AtomicU64,
    kv_pages_total: u64,
    sampled_tokens: AtomicU64,
    prefix_lookups: AtomicU64,
    prefix_hits: AtomicU64,
    prefix_hit_tokens: AtomicU64,
    prefix_cached_pages: AtomicU64,
    prefix_evictions: AtomicU64,
    histograms: Mutex<Histograms>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(0)
    }
}

impl Metrics {
    /// Metrics of an engine whose KV cache holds `kv_pages_total` pages.
    pub fn new(kv_pages_total: usize) -> Self {
        Metrics {
            requests: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            finished: Default::default(),
            preemptions: AtomicU64::new(0),
            queue: AtomicU64::new(0),
            running: AtomicU64::new(0),
            kv_pages_used: AtomicU64::new(0),
            kv_pages_peak: AtomicU64::new(0),
            kv_pages_total: kv_pages_total as u64,
            sampled_tokens: AtomicU64::new(0),
            prefix_lookups: AtomicU64::new(0),
            prefix_hits: AtomicU64::new(0),
            prefix_hit_tokens: AtomicU64::new(0),
            prefix_cached_pages: AtomicU64::new(0),
            prefix_evictions: AtomicU64::new(0),
            histograms: Mutex::new(Histograms {
                ttft: Histogram::new(LATENCY),
                per_token: Histogram::new(LATENCY),
                step: Histogram::new(LATENCY),
                batch: Histogram::new(BATCH),
                queue: Histogram::new(LATENCY),
                e2e: Histogram::new(E2E),
            }),
        }
    }
}

const REASONS: [&str; 4] = ["stop", "length", "cancelled", "error"];

impl Metrics {
    pub(super) fn request_received(&self, prompt_tokens: usize) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.prompt_tokens
            .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
    }

    /// A request ended `latency` after its submission.
    pub(super) fn request_done(&self, reason: &FinishReason, generated: usize, latency: Duration) {
        let i = match reason {
            FinishReason::Stop => 0,
            FinishReason::Length => 1,
            FinishReason::Cancelled => 2,
            FinishReason::Error(_) => 3,
        };
        self.finished[i].fetch_add(1, Ordering::Relaxed);
        self.generated_tokens
            .fetch_add(generated as u64, Ordering::Relaxed);
        self.with(|h| h.e2e.observe(latency.as_secs_f64()));
    }

    /// A request left the queue for the batch `waited` after its submission.
    pub(super) fn admitted(&self, waited: Duration) {
        self.with(|h| h.queue.observe(waited.as_secs_f64()));
    }

    pub(super) fn preempted(&self) {
        self.preemptions.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn set_queue(&self, waiting: usize, running: usize, kv_pages_used: usize) {
        self.queue.store(waiting as u64, Ordering::Relaxed);
        self.running.store(running as u64, Ordering::Relaxed);
        self.kv_pages_used
            .store(kv_pages_used as u64, Ordering::Relaxed);
        self.kv_pages_peak
            .fetch_max(kv_pages_used as u64, Ordering::Relaxed);
    }

    /// A sequence entering the batch looked up its prefix and took `tokens`.
    pub(super) fn prefix_lookup(&self, tokens: usize) {
        self.prefix_lookups.fetch_add(1, Ordering::Relaxed);
        if tokens > 0 {
            self.prefix_hits.fetch_add(1, Ordering::Relaxed);
            self.prefix_hit_tokens
                .fetch_add(tokens as u64, Ordering::Relaxed);
        }
    }

    /// The prefix cache now: idle cached pages and evictions so far.
    pub(super) fn set_prefix_cache(&self, cached_pages: usize, evictions: u64) {
        self.prefix_cached_pages
            .store(cached_pages as u64, Ordering::Relaxed);
        self.prefix_evictions.store(evictions, Ordering::Relaxed);
    }

    fn with(&self, f: impl FnOnce(&mut Histograms)) {
        if let Ok(mut h) = self.histograms.lock() {
            f(&mut h);
        }
    }

    pub(super) fn first_token(&self, d: Duration) {
        self.sampled_tokens.fetch_add(1, Ordering::Relaxed);
        self.with(|h| h.ttft.observe(d.as_secs_f64()));
    }

    pub(super) fn next_token(&self, d: Duration) {
        self.sampled_tokens.fetch_add(1, Ordering::Relaxed);
        self.with(|h| h.per_token.observe(d.as_secs_f64()));
    }

    pub(super) fn step(&self, sequences: usize, d: Duration) {
        self.with(|h| {
            h.batch.observe(sequences as f64);
            h.step.observe(d.as_secs_f64());
        });
    }

    /// Tokens generated by finished requests.
    pub fn generated_tokens(&self) -> u64 {
        self.generated_tokens.load(Ordering::Relaxed)
    }

    /// The queue, the batch and the KV cache now, and the tokens sampled so far.
    pub fn load(&self) -> Load {
        Load {
            waiting: self.queue.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            kv_pages_used: self.kv_pages_used.load(Ordering::Relaxed),
            kv_pages_total: self.kv_pages_total,
            sampled_tokens: self.sampled_tokens.load(Ordering::Relaxed),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "grok1_requests_total",
            "Requests accepted.",
            self.requests.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP grok1_requests_finished_total Requests finished, by reason.\n# TYPE grok1_requests_finished_total counter");
        for (reason, n) in REASONS.iter().zip(&self.finished) {
            let _ = writeln!(
                out,
                "grok1_requests_finished_total{{reason=\"{reason}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "grok1_prompt_tokens_total",
            "Prompt tokens of accepted requests.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "grok1_generation_tokens_total",
            "Tokens generated by finished requests.",
            self.generated_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "grok1_preemptions_total",
            "Sequences preempted for want of KV pages.",
            self.preemptions.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "grok1_queue_depth",
            "Requests waiting for a batch slot.",
            self.queue.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "grok1_running_sequences",
            "Sequences in the batch.",
            self.running.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "grok1_kv_cache_used_pages",
            "KV cache pages held by sequences.",
            self.kv_pages_used.load(Ordering::Relaxed),
        );
        // Sizing `--kv-tokens` wants the most ever held, which a scrape
        // between steps can miss.
        gauge(
            &mut out,
            "grok1_kv_cache_peak_used_pages",
            "Most KV cache pages held by sequences at once since the engine started.",
            self.kv_pages_peak.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "grok1_kv_cache_total_pages",
            "KV cache pages the engine holds in all.",
            self.kv_pages_total,
        );
        gauge(
            &mut out,
            "grok1_kv_cache_cached_pages",
            "KV cache pages no sequence holds, kept by the prefix cache for reuse.",
            self.prefix_cached_pages.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "grok1_prefix_cache_queries_total",
            "Sequences that looked up their prefix on entering the batch (a preempted one again on re-entering).",
            self.prefix_lookups.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "grok1_prefix_cache_hits_total",
            "Lookups that reused at least one cached token.",
            self.prefix_hits.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "grok1_prefix_cache_hit_tokens_total",
            "Tokens whose keys and values were reused instead of computed.",
            self.prefix_hit_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "grok1_prefix_cache_evicted_pages_total",
            "Cached pages evicted to make room.",
            self.prefix_evictions.load(Ordering::Relaxed),
        );
        self.with(|h| {
            h.batch
                .render(&mut out, "grok1_batch_size", "Sequences per forward step.");
            h.step.render(
                &mut out,
                "grok1_step_seconds",
                "Duration of a forward step.",
            );
            h.ttft.render(
                &mut out,
                "grok1_time_to_first_token_seconds",
                "From submission to the first generated token.",
            );
            h.per_token.render(
                &mut out,
                "grok1_time_per_output_token_seconds",
                "Between consecutive generated tokens of a request.",
            );
            h.queue.render(
                &mut out,
                "grok1_request_queue_seconds",
                "From submission to the first admission into the batch.",
            );
            h.e2e.render(
                &mut out,
                "grok1_e2e_request_latency_seconds",
                "From submission to the end of a request, whatever its finish reason.",
            );
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_time_latency_and_kv_pages_are_rendered() {
        let m = Metrics::new(12);
        m.set_queue(1, 2, 7);
        m.set_queue(1, 2, 5);
        m.admitted(Duration::from_millis(250));
        m.first_token(Duration::from_millis(300));
        m.next_token(Duration::from_millis(10));
        m.request_done(&FinishReason::Stop, 2, Duration::from_secs(2));
        m.prefix_lookup(0);
        m.prefix_lookup(32);
        m.set_prefix_cache(3, 4);
        let load = m.load();
        assert_eq!(
            load,
            Load {
                waiting: 1,
                running: 2,
                kv_pages_used: 5,
                kv_pages_total: 12,
                sampled_tokens: 2,
            }
        );
        let text = m.render();
        for line in [
            "grok1_kv_cache_used_pages 5",
            "grok1_kv_cache_peak_used_pages 7",
            "grok1_kv_cache_total_pages 12",
            "grok1_request_queue_seconds_bucket{le=\"0.25\"} 1",
            "grok1_request_queue_seconds_bucket{le=\"0.1\"} 0",
            "grok1_request_queue_seconds_count 1",
            "grok1_e2e_request_latency_seconds_sum 2",
            "grok1_e2e_request_latency_seconds_bucket{le=\"1\"} 0",
            "grok1_e2e_request_latency_seconds_bucket{le=\"2.5\"} 1",
            "grok1_kv_cache_cached_pages 3",
            "grok1_prefix_cache_queries_total 2",
            "grok1_prefix_cache_hits_total 1",
            "grok1_prefix_cache_hit_tokens_total 32",
            "grok1_prefix_cache_evicted_pages_total 4",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
