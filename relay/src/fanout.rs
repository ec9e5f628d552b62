//! Fan-out of one batch to every sink's bounded queue.

use std::sync::Arc;

use crate::sink::{SinkBatch, SinkHandle};

/// The set of sinks a batch goes to.
#[derive(Debug, Clone)]
pub struct FanOut {
    sinks: Arc<[Arc<SinkHandle>]>,
    required: usize,
}

impl FanOut {
    /// Fan-out over `sinks`.
    pub fn new(sinks: Vec<Arc<SinkHandle>>) -> Self {
        let required = sinks.iter().filter(|s| s.common.required).count();
        FanOut {
            sinks: sinks.into(),
            required,
        }
    }

    /// Number of required sinks (completions a batch waits for).
    pub fn required(&self) -> usize {
        self.required
    }

    /// The sinks.
    pub fn sinks(&self) -> &[Arc<SinkHandle>] {
        &self.sinks
    }

    /// Offers `batch` to every sink: waits for room in required sinks (this is where a slow
    /// required sink throttles the reader, and through credits the agent); optional sinks apply
    /// their full-queue policy. One `Arc` clone per sink, no copy of frames.
    pub async fn dispatch(&self, batch: &Arc<SinkBatch>) {
        for sink in self.sinks.iter() {
            sink.offer(batch).await;
        }
    }
}
