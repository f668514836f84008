//! Progress reporting for long operations (loading, writing checkpoints). The
//! library reports; the command line draws the bars.

/// Receives progress of one long operation at a time.
pub trait Progress: Sync {
    /// A new phase: `label`, with `total` units (bytes or files) to do.
    fn start(&self, label: &str, total: u64);
    /// `done` units of the current phase are finished (absolute, not a delta).
    fn set(&self, done: u64);
    fn finish(&self);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _label: &str, _total: u64) {}
    fn set(&self, _done: u64) {}
    fn finish(&self) {}
}
