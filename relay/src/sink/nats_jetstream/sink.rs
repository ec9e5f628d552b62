//! The JetStream `Sink`: pipelined publishes with in-order ack checks.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue, NATS_MESSAGE_ID};
use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use async_nats::Subject;
use bytes::{Bytes, BytesMut};
use contrail_protocol::codec::encode_stored_frame;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::{subject_token, JetStreamSettings};
use crate::sink::{Filter, Sink, SinkBatch, SinkError};

/// Header carrying the exact agent id.
pub const HEADER_AGENT: HeaderName = HeaderName::from_static("Contrail-Agent");
/// Header carrying the frame's seq.
pub const HEADER_SEQ: HeaderName = HeaderName::from_static("Contrail-Seq");
/// Header carrying the frame's kind.
pub const HEADER_KIND: HeaderName = HeaderName::from_static("Contrail-Kind");

/// The 4-byte length prefix `encode_stored_frame` writes (not part of a NATS payload).
const LEN_PREFIX: usize = 4;

/// Why a JetStream connect or write failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JetStreamError {
    /// Connecting to the server failed or timed out.
    #[error("connecting to nats: {0}")]
    Connect(#[from] async_nats::ConnectError),
    /// The stream could not be looked up or created.
    #[error("ensuring stream {stream}: {source}")]
    Stream {
        /// Stream name.
        stream: String,
        /// Cause.
        source: jetstream::context::CreateStreamError,
    },
    /// A publish could not be sent, or its ack was an error or timed out.
    #[error("jetstream publish: {0}")]
    Publish(#[from] PublishError),
}

impl From<JetStreamError> for SinkError {
    fn from(e: JetStreamError) -> Self {
        SinkError::Backend(e.to_string())
    }
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    batch: usize,
    seq: u64,
    kind: u32,
    start: usize,
    end: usize,
}

/// Publishes frames to JetStream.
pub struct JetStreamSink {
    settings: Arc<JetStreamSettings>,
    js: jetstream::Context,
    buf: BytesMut,
    metas: Vec<Meta>,
    pending: VecDeque<PublishAckFuture>,
    token: String,
    subject: String,
}

impl JetStreamSink {
    /// Connects and makes sure the stream exists (created with the template's subjects and
    /// the configured duplicate window when missing).
    pub async fn connect(settings: Arc<JetStreamSettings>) -> Result<Self, JetStreamError> {
        contrail_protocol::client::config::install_default_crypto_provider();
        let mut opts = async_nats::ConnectOptions::new()
            .connection_timeout(settings.timeout)
            .request_timeout(Some(settings.timeout))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64).saturating_mul(100).min(2_000))
            });
        if let Some(token) = &settings.token {
            opts = opts.token(token.clone());
        }
        let client = opts.connect(settings.url.as_str()).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(settings.timeout)
            .ack_timeout(settings.timeout)
            .max_ack_inflight(settings.max_pending_acks)
            .backpressure_on_inflight(true)
            .build(client);
        js.get_or_create_stream(stream::Config {
            name: settings.stream.clone(),
            subjects: vec![settings.stream_subjects.clone()],
            duplicate_window: settings.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(|source| JetStreamError::Stream {
            stream: settings.stream.clone(),
            source,
        })?;
        Ok(JetStreamSink {
            settings,
            js,
            buf: BytesMut::with_capacity(64 * 1024),
            metas: Vec::with_capacity(1024),
            pending: VecDeque::new(),
            token: String::with_capacity(64),
            subject: String::with_capacity(64),
        })
    }

    /// Encodes every admitted frame as a length-prefixed `StoredFrame` into one buffer.
    fn encode(&mut self, batches: &[Arc<SinkBatch>], filter: &Filter) -> Bytes {
        self.metas.clear();
        self.buf.clear();
        for (i, b, f) in filter.admitted(batches) {
            let start = self.buf.len() + LEN_PREFIX;
            encode_stored_frame(
                &mut self.buf,
                b.origin.agent_id.as_str(),
                &b.origin.session_hex,
                b.received_unix_ns,
                f.body(),
            );
            self.metas.push(Meta {
                batch: i,
                seq: f.seq(),
                kind: f.kind(),
                start,
                end: self.buf.len(),
            });
        }
        self.buf.split().freeze()
    }

    async fn publish_all(
        &mut self,
        batches: &[Arc<SinkBatch>],
        bytes: &Bytes,
    ) -> Result<(), JetStreamError> {
        let max_pending = self.settings.max_pending_acks.max(1);
        let mut current = usize::MAX;
        let mut subject = Subject::from_static("");
        for i in 0..self.metas.len() {
            let m = self.metas[i];
            let agent = batches[m.batch].origin.agent_id.as_str();
            if m.batch != current {
                current = m.batch;
                subject_token(agent, &mut self.token);
                self.settings
                    .subject
                    .render_into(&mut self.subject, &self.token);
                subject = Subject::from(self.subject.as_str());
            }
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, format!("{agent}:{}", m.seq));
            headers.insert(HEADER_AGENT, agent);
            headers.insert(HEADER_SEQ, HeaderValue::from(m.seq));
            headers.insert(HEADER_KIND, HeaderValue::from(m.kind));
            if self.pending.len() >= max_pending {
                if let Some(ack) = self.pending.pop_front() {
                    ack.await?;
                }
            }
            let ack = self
                .js
                .send_publish(
                    subject.clone(),
                    PublishMessage::build()
                        .payload(bytes.slice(m.start..m.end))
                        .headers(headers),
                )
                .await?;
            self.pending.push_back(ack);
        }
        while let Some(ack) = self.pending.pop_front() {
            ack.await?;
        }
        Ok(())
    }
}

impl Sink for JetStreamSink {
    fn write<'a>(
        &'a mut self,
        batches: &'a [Arc<SinkBatch>],
        filter: &'a Filter,
    ) -> BoxFuture<'a, Result<usize, SinkError>> {
        async move {
            let bytes = self.encode(batches, filter);
            let n = self.metas.len();
            if n == 0 {
                return Ok(0);
            }
            if let Err(e) = self.publish_all(batches, &bytes).await {
                // Abandon the rest; the worker retries the whole write and the server drops
                // whatever was already stored (same Nats-Msg-Id within the duplicate window).
                self.pending.clear();
                return Err(e.into());
            }
            Ok(n)
        }
        .boxed()
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        // A write returns only after every ack; the client's outbound buffer is empty then.
        async move {
            self.js
                .client()
                .flush()
                .await
                .map_err(|e| SinkError::Backend(format!("nats flush: {e}")))
        }
        .boxed()
    }
}
