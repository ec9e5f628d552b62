//! `file` sink: NDJSON lines or length-delimited `StoredFrame` protobuf records, with rotation
//! by size. A write is accepted once the bytes are handed to the OS (and, with `fsync = true`,
//! synced to disk).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use contrail_protocol::codec::encode_stored_frame;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::{ndjson, Filter, Sink, SinkBatch, SinkError, SinkFactory};

/// On-disk record format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// One JSON object per line.
    #[default]
    Ndjson,
    /// 4-byte big-endian length + `contrail.v1.StoredFrame`, back to back.
    Protobuf,
}

/// Settings of a file sink.
#[derive(Debug, Clone)]
pub struct FileSettings {
    /// Active file; rotated files get a `.N` suffix.
    pub path: PathBuf,
    /// Record format.
    pub format: FileFormat,
    /// Rotate when the active file would exceed this many bytes (0: never).
    pub rotate_bytes: u64,
    /// `fdatasync` after every write.
    pub fsync: bool,
}

/// The file sink.
pub struct FileSink {
    settings: FileSettings,
    file: tokio::fs::File,
    size: u64,
    rotations: u64,
    buf: Vec<u8>,
    pbuf: BytesMut,
    mavlink: crate::mavlink::JsonDecoder,
}

/// Factory for a file sink.
pub fn factory(settings: FileSettings) -> SinkFactory {
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
    async fn open(settings: FileSettings) -> Result<Self, SinkError> {
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
            size,
            rotations,
            buf: Vec::with_capacity(64 * 1024),
            pbuf: BytesMut::with_capacity(64 * 1024),
            mavlink: crate::mavlink::JsonDecoder::new("file"),
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
        metrics::counter!("contrail_file_rotations_total").increment(1);
        Ok(())
    }

    fn render(&mut self, batches: &[Arc<SinkBatch>], filter: &Filter) -> usize {
        self.buf.clear();
        match self.settings.format {
            FileFormat::Ndjson => {
                ndjson::render_batches(&mut self.buf, batches, filter, &self.mavlink)
            }
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
            if self.settings.rotate_bytes > 0
                && self.size > 0
                && self.size + len > self.settings.rotate_bytes
            {
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
