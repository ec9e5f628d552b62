//! `stdout` sink: NDJSON, one line per frame. The default when nothing is configured.

pub mod config;

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::io::AsyncWriteExt;

pub use config::StdoutConfig;

use super::{ndjson, Filter, Sink, SinkBatch, SinkError, SinkFactory};

/// Writes NDJSON to standard output.
pub struct StdoutSink {
    out: tokio::io::Stdout,
    buf: Vec<u8>,
}

/// Factory for the stdout sink.
pub fn factory() -> SinkFactory {
    Arc::new(|| {
        async {
            Ok(Box::new(StdoutSink {
                out: tokio::io::stdout(),
                buf: Vec::with_capacity(64 * 1024),
            }) as Box<dyn Sink>)
        }
        .boxed()
    })
}

impl Sink for StdoutSink {
    fn write<'a>(
        &'a mut self,
        batches: &'a [Arc<SinkBatch>],
        filter: &'a Filter,
    ) -> BoxFuture<'a, Result<usize, SinkError>> {
        async move {
            self.buf.clear();
            let n = ndjson::render_batches(&mut self.buf, batches, filter);
            self.out.write_all(&self.buf).await?;
            self.out.flush().await?;
            Ok(n)
        }
        .boxed()
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        async move { Ok(self.out.flush().await?) }.boxed()
    }
}
