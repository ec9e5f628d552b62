//! In-process `channel` sink: hands batches to a bounded tokio channel. Used by tests and by
//! embedders that consume frames in the same process. A full channel makes `write` wait, so a
//! slow consumer behind a required channel sink throttles agents through credits.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::mpsc;

use super::{Filter, Sink, SinkBatch, SinkError, SinkFactory};

/// The channel sink. Batches are delivered whole (filters are applied by the consumer with
/// [`Filter`] if needed; the sink passes only batches whose agent the filter admits).
pub struct ChannelSink {
    tx: mpsc::Sender<Arc<SinkBatch>>,
}

/// Factory for a channel sink feeding `tx`.
pub fn factory(tx: mpsc::Sender<Arc<SinkBatch>>) -> SinkFactory {
    Arc::new(move || {
        let tx = tx.clone();
        async move { Ok(Box::new(ChannelSink { tx }) as Box<dyn Sink>) }.boxed()
    })
}

impl Sink for ChannelSink {
    fn write<'a>(
        &'a mut self,
        batches: &'a [Arc<SinkBatch>],
        filter: &'a Filter,
    ) -> BoxFuture<'a, Result<usize, SinkError>> {
        async move {
            let mut n = 0;
            for b in batches {
                if !filter.admits_agent(&b.origin.agent_id) {
                    continue;
                }
                self.tx
                    .send(b.clone())
                    .await
                    .map_err(|_| SinkError::Backend("channel receiver dropped".into()))?;
                n += b.frames.len();
            }
            Ok(n)
        }
        .boxed()
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        async { Ok(()) }.boxed()
    }
}
