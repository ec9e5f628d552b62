//! `file` sink: NDJSON lines or length-delimited `StoredFrame` protobuf records, with rotation
//! by size (`rotate_bytes`) and by age (`rotate_interval_secs`, counted from when the relay
//! opened the active file). A write is accepted once the bytes are handed to the OS (and, with `fsync = true`,
//! synced to disk).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use contrail_protocol::codec::encode_stored_frame;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

pub mod config;

pub use config::{FileConfig, FileFormat};

use super::{ndjson, Filter, Sink, SinkBatch, SinkError, SinkFactory};

/// The file sink.
pub struct FileSink {
    settings: FileConfig,
    file: tokio::fs::File,
    opened_at: Instant,
    size: u64,
    rotations: u64,
    buf: Vec<u8>,
    pbuf: BytesMut,
}

/// Factory for a file sink.
pub fn factory(settings: FileConfig) -> SinkFactory {
    Arc::new(move || {
        let settings = settings.clone();
        async move { Ok(Box::new(FileSink::open(settings).await?) as Box<dyn Sink>) }.boxed()
    })
}

/// Rotated files of `path` (`path.1`, `path.2`, …) in rotation order, then the active file.
pub fn all_files(path: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u64, PathBuf)> = Vec::new();
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let fname = e.file_name();
                let Some(fname) = fname.to_str() else {
                    continue;
                };
                if let Some(n) = fname
                    .strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    rotated.push((n, e.path()));
                }
            }
        }
    }
    rotated.sort();
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        out.push(path.to_path_buf());
    }
    out
}

impl FileSink {
    async fn open(settings: FileConfig) -> Result<Self, SinkError> {
        if let Some(dir) = settings.path.parent() {
            if !dir.as_os_str().is_empty() {
                tokio::fs::create_dir_all(dir).await?;
            }
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&settings.path)
            .await?;
        let size = file.metadata().await?.len();
        let rotations = all_files(&settings.path)
            .iter()
            .filter_map(|p| p.extension()?.to_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        Ok(FileSink {
            settings,
            file,
            opened_at: Instant::now(),
            size,
            rotations,
            buf: Vec::with_capacity(64 * 1024),
            pbuf: BytesMut::with_capacity(64 * 1024),
        })
    }

    async fn rotate(&mut self) -> Result<(), SinkError> {
        self.file.flush().await?;
        self.file.sync_data().await?;
        self.rotations += 1;
        let mut rotated = self.settings.path.clone().into_os_string();
        rotated.push(format!(".{}", self.rotations));
        tokio::fs::rename(&self.settings.path, &rotated).await?;
        self.file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.settings.path)
            .await?;
        self.size = 0;
        self.opened_at = Instant::now();
        metrics::counter!("contrail_file_rotations_total").increment(1);
        Ok(())
    }

    fn render(&mut self, batches: &[Arc<SinkBatch>], filter: &Filter) -> usize {
        self.buf.clear();
        match self.settings.format {
            FileFormat::Ndjson => ndjson::render_batches(&mut self.buf, batches, filter),
            FileFormat::Protobuf => {
                self.pbuf.clear();
                let mut n = 0;
                for (_, b, f) in filter.admitted(batches) {
                    encode_stored_frame(
                        &mut self.pbuf,
                        b.origin.agent_id.as_str(),
                        &b.origin.session_hex,
                        b.received_unix_ns,
                        f.body(),
                    );
                    n += 1;
                }
                self.buf.extend_from_slice(&self.pbuf);
                n
            }
        }
    }
}

impl Sink for FileSink {
    fn write<'a>(
        &'a mut self,
        batches: &'a [Arc<SinkBatch>],
        filter: &'a Filter,
    ) -> BoxFuture<'a, Result<usize, SinkError>> {
        async move {
            let n = self.render(batches, filter);
            if n == 0 {
                return Ok(0);
            }
            let len = self.buf.len() as u64;
            let too_big =
                self.settings.rotate_bytes > 0 && self.size + len > self.settings.rotate_bytes;
            let too_old = self
                .settings
                .rotate_interval()
                .is_some_and(|age| self.opened_at.elapsed() >= age);
            if self.size > 0 && (too_big || too_old) {
                self.rotate().await?;
            }
            self.file.write_all(&self.buf).await?;
            self.file.flush().await?;
            if self.settings.fsync {
                self.file.sync_data().await?;
            }
            self.size += len;
            Ok(n)
        }
        .boxed()
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        async move {
            self.file.flush().await?;
            self.file.sync_data().await?;
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::BytesMut;
    use contrail_protocol::codec::encode_telemetry;
    use contrail_protocol::{AgentId, FrameCodec, SessionId};

    use super::*;
    use crate::cursor::AgentCursor;
    use crate::sink::BatchOrigin;

    fn batch(seq: u64) -> Arc<SinkBatch> {
        let mut buf = BytesMut::new();
        encode_telemetry(&mut buf, seq, 1, 1, 33, "f", b"payload", "text/plain");
        let mut metas = Vec::new();
        let decoded = FrameCodec::default()
            .decode_telemetry_batch(&mut buf, &mut metas)
            .expect("decodes")
            .expect("one frame");
        let origin = Arc::new(BatchOrigin {
            agent_id: AgentId::new("a").expect("id"),
            session_id: SessionId::from_random_bytes([1; 16]),
            session_hex: "01".repeat(16),
        });
        Arc::new(SinkBatch::new(
            origin,
            decoded,
            std::time::Instant::now(),
            0,
            0,
            Arc::new(AgentCursor::default()),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn rotates_by_age_at_the_next_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.ndjson");
        let mut cfg = FileConfig::new(&path);
        cfg.rotate_interval_secs = 60;
        let mut sink = FileSink::open(cfg).await.expect("open");
        let filter = Filter::default();
        assert_eq!(sink.write(&[batch(1)], &filter).await.expect("w1"), 1);
        tokio::time::advance(Duration::from_secs(30)).await;
        sink.write(&[batch(2)], &filter).await.expect("w2");
        assert_eq!(all_files(&path).len(), 1, "younger than the interval");
        tokio::time::advance(Duration::from_secs(31)).await;
        sink.write(&[batch(3)], &filter).await.expect("w3");
        let files = all_files(&path);
        assert_eq!(files.len(), 2, "{files:?}");
        let old = std::fs::read_to_string(&files[0]).expect("rotated");
        let new = std::fs::read_to_string(&files[1]).expect("active");
        assert_eq!(old.lines().count(), 2, "{old}");
        assert_eq!(new.lines().count(), 1, "{new}");
        assert!(new.contains("\"seq\":3"), "{new}");
    }

    #[tokio::test]
    async fn no_interval_never_rotates_by_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.ndjson");
        let mut sink = FileSink::open(FileConfig::new(&path)).await.expect("open");
        let filter = Filter::default();
        for seq in 1..=3 {
            sink.write(&[batch(seq)], &filter).await.expect("write");
        }
        assert_eq!(all_files(&path).len(), 1);
    }
}
