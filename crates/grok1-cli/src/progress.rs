//! Progress bars on stderr (hidden when stderr is not a terminal).

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Mutex;

/// Draws the library's progress reports with indicatif.
pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
    bytes: bool,
}

impl Bar {
    /// `bytes`: whether the units are bytes (shown with sizes and a rate).
    pub fn new(bytes: bool) -> Self {
        Bar {
            bar: Mutex::new(None),
            bytes,
        }
    }
}

impl grok1::progress::Progress for Bar {
    fn start(&self, label: &str, total: u64) {
        let template = if self.bytes {
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}"
        } else {
            "{msg} [{bar:30}] {pos}/{len} ETA {eta}"
        };
        let bar = ProgressBar::new(total).with_message(label.to_string());
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        if let Ok(mut slot) = self.bar.lock() {
            *slot = Some(bar);
        }
    }

    fn set(&self, done: u64) {
        if let Ok(slot) = self.bar.lock() {
            if let Some(bar) = slot.as_ref() {
                bar.set_position(done);
            }
        }
    }

    fn finish(&self) {
        if let Ok(mut slot) = self.bar.lock() {
            if let Some(bar) = slot.take() {
                bar.finish_and_clear();
            }
        }
    }
}
