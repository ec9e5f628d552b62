//! The optional on-disk spool: a bounded, crash-safe append log of unacked frames.
//!
//! Layout of the spool directory:
//!
//! * `NNNNNNNNNNNNNNNNNNNN.seg` (the first seq appended to it, zero-padded): segments of records
//!   `[data len: u32 LE][seq: u64 LE][crc32 of seq bytes + data: u32 LE][data]`, where `data` is
//!   the frame exactly as it goes on the wire (length prefix included).
//! * `ack`: the persisted ack mark, two 16-byte slots `[seq: u64 LE][crc32(seq): u32 LE][0; 4]`
//!   written alternately; the valid slot with the higher seq wins, so a torn slot write never
//!   loses the previous mark.
//!
//! Every frame is appended (handed to the OS, and synced as the [`FsyncPolicy`] says) before
//! the connection driver may write it to the network: a seq that reached the relay is always in
//! the spool, so a restarted agent never reuses it for another frame. Appends and syncs run
//! under the spool's own lock, never the agent's state lock, so an ack arriving meanwhile is not
//! held up by the disk. Acks are persisted (the mark rewritten, then segments that hold only
//! acked records deleted) by the agent's spool keeper task and before each append.
//!
//! On open the spool reads the mark and every intact record after it; a torn or corrupt tail is
//! cut off. The bound `max_bytes` counts every byte in segment files (acked records in a segment
//! that still holds unacked ones included), so the disk use never exceeds it by more than one
//! record. When it is full, [`WhenFull`] decides: wait for acks (the sender pauses), or drop the
//! oldest segment's unacked frames (counted; the agent then resumes after them).
//!
//! What a crash can lose, by [`FsyncPolicy`]:
//! * a process crash (SIGKILL, panic, OOM kill) loses nothing `send` returned for, whatever the
//!   policy: the bytes are in the OS page cache;
//! * a power cut or kernel crash loses nothing `send` returned for with `Always`; up to the
//!   interval's worth of frames with `Interval`; with `Never`, whatever the OS had not yet
//!   written back (on Linux dirty pages are written within about 30 s by default).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// When the spool's appends reach the disk (`fdatasync`); see the module documentation for what
/// each one can lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Sync every append (each `send` call) and every ack mark: survives a power cut; costs a
    /// disk flush per call.
    Always,
    /// Sync at most once per interval (and when the agent closes): a power cut loses at most
    /// the last interval's frames.
    Interval(std::time::Duration),
    /// Never sync; the OS writes back when it likes. A process crash still loses nothing.
    Never,
}

/// What `send` does when the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait for acks to make room (the caller pauses; for sources that can be paused).
    Block,
    /// Drop the oldest unacked frames (one segment, about 1/16 of the spool), counted in
    /// [`AgentStats::dropped`](super::AgentStats::dropped); the stream resumes after them.
    DropOldest,
}

/// Spool settings (see [`ClientConfig::spool`](super::ClientConfig::spool)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Directory of the spool (created when missing). One agent per directory.
    pub dir: PathBuf,
    /// Most bytes the spool's segment files may hold (at least 1024). The unacked frames are
    /// held in memory too, so this also bounds the agent's frame memory.
    pub max_bytes: u64,
    /// When appends are synced to the disk.
    pub fsync: FsyncPolicy,
    /// What `send` does when the spool is full.
    pub when_full: WhenFull,
}

impl SpoolConfig {
    /// A spool in `dir` bounded to `max_bytes`, never synced, waiting for acks when full.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        SpoolConfig {
            dir: dir.into(),
            max_bytes,
            fsync: FsyncPolicy::Never,
            when_full: WhenFull::Block,
        }
    }
}

/// Bytes of a record header.
pub(super) const RECORD_HEADER: usize = 16;
const ACK_FILE: &str = "ack";
const ACK_SLOT: u64 = 16;
const SEG_EXT: &str = "seg";
/// A record's data is one wire frame; anything longer than this in a header is corruption.
const MAX_RECORD_DATA: u32 = 64 << 20;

/// Disk bytes one record of `data_len` bytes takes.
pub(super) fn record_len(data_len: usize) -> u64 {
    (RECORD_HEADER + data_len) as u64
}

fn record_crc(seq: u64, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(data);
    h.finalize()
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    last: u64,
    bytes: u64,
}

/// What the spool held when it was opened.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    /// The persisted ack mark (0 when none).
    pub acked: u64,
    /// Unacked frames after the mark, contiguous, in seq order.
    pub frames: Vec<(u64, Bytes)>,
    /// Whether the spool held any state at all (a mark or a record).
    pub existed: bool,
}

/// An open spool.
#[derive(Debug)]
pub(super) struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    seg_bytes: u64,
    fsync: FsyncPolicy,
    /// When the active segment was last synced (`Interval`), and whether appends since wait.
    last_sync: std::time::Instant,
    unsynced: bool,
    segments: VecDeque<Segment>,
    active: Option<BufWriter<File>>,
    ack_file: File,
    ack_writes: u64,
    acked: u64,
    last_appended: u64,
    bytes: u64,
}

impl Spool {
    /// Opens (or creates) the spool and recovers what it holds.
    pub(super) fn open(config: &SpoolConfig) -> io::Result<(Spool, Recovered)> {
        if config.max_bytes < 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "spool max_bytes must be at least 1024",
            ));
        }
        std::fs::create_dir_all(&config.dir)?;
        let ack_path = config.dir.join(ACK_FILE);
        let ack_existed = ack_path.exists();
        let mut ack_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&ack_path)?;
        let acked = read_ack_mark(&mut ack_file)?;

        let mut seg_paths: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&config.dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(SEG_EXT) {
                continue;
            }
            if let Some(first) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
            {
                seg_paths.push((first, path));
            }
        }
        seg_paths.sort();

        let mut recovered = Recovered {
            acked,
            frames: Vec::new(),
            existed: ack_existed && acked > 0,
        };
        let mut segments = VecDeque::new();
        let mut total = 0u64;
        let mut expect = acked + 1;
        let mut broken = false;
        for (_, path) in seg_paths {
            if broken {
                // Records after a corrupt one cannot be trusted to be contiguous.
                tracing::warn!(path = %path.display(), "spool: dropping segment after a corrupt record");
                std::fs::remove_file(&path)?;
                continue;
            }
            let (records, good_len, torn) = read_segment(&path)?;
            if torn {
                tracing::warn!(path = %path.display(), good_len, "spool: cut off a torn or corrupt tail");
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(good_len)?;
                f.sync_all()?;
                broken = true;
            }
            let mut last = 0u64;
            for (seq, data) in records {
                recovered.existed = true;
                last = last.max(seq);
                if seq < expect {
                    continue; // acked already (or a stale duplicate)
                }
                if seq != expect {
                    tracing::warn!(
                        expected = expect,
                        got = seq,
                        "spool: sequence gap, dropping the rest"
                    );
                    broken = true;
                    break;
                }
                recovered.frames.push((seq, data));
                expect += 1;
            }
            if good_len == 0 || last <= acked {
                std::fs::remove_file(&path)?;
                continue;
            }
            total += good_len;
            segments.push_back(Segment {
                path,
                last,
                bytes: good_len,
            });
        }
        let last_appended = recovered.frames.last().map_or(acked, |(s, _)| *s);
        let spool = Spool {
            dir: config.dir.clone(),
            max_bytes: config.max_bytes,
            // Sixteen segments: dropping the oldest when full frees about 1/16 of the spool.
            seg_bytes: (config.max_bytes / 16).clamp(1024, 64 << 20),
            fsync: config.fsync,
            last_sync: std::time::Instant::now(),
            unsynced: false,
            segments,
            active: None,
            ack_file,
            ack_writes: 0,
            acked,
            last_appended,
            bytes: total,
        };
        Ok((spool, recovered))
    }

    /// Bytes held in segment files.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The configured bound.
    pub(super) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Whether a record of `data_len` bytes fits under the bound now.
    #[cfg(test)]
    pub(super) fn has_room(&self, data_len: usize) -> bool {
        self.bytes + record_len(data_len) <= self.max_bytes
    }

    /// Appends one record (buffered; call [`Spool::flush`] before the frame may leave).
    pub(super) fn append(&mut self, seq: u64, data: &[u8]) -> io::Result<()> {
        let need_new = match (&self.active, self.segments.back()) {
            (Some(_), Some(seg)) => seg.bytes >= self.seg_bytes,
            _ => true,
        };
        if need_new {
            self.flush()?;
            let path = self.dir.join(format!("{seq:020}.{SEG_EXT}"));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            let existing = file.metadata()?.len();
            self.bytes += existing;
            self.active = Some(BufWriter::with_capacity(64 * 1024, file));
            self.segments.push_back(Segment {
                path,
                last: seq,
                bytes: existing,
            });
        }
        let len = u32::try_from(data.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD_DATA)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
        let mut header = [0u8; RECORD_HEADER];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..12].copy_from_slice(&seq.to_le_bytes());
        header[12..].copy_from_slice(&record_crc(seq, data).to_le_bytes());
        let w = self
            .active
            .as_mut()
            .ok_or_else(|| io::Error::other("no active segment"))?;
        w.write_all(&header)?;
        w.write_all(data)?;
        let n = record_len(data.len());
        if let Some(seg) = self.segments.back_mut() {
            seg.last = seq;
            seg.bytes += n;
        }
        self.bytes += n;
        self.last_appended = seq;
        Ok(())
    }

    /// Hands buffered records to the OS, and syncs them as the policy says.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        if let Some(w) = self.active.as_mut() {
            w.flush()?;
            match self.fsync {
                FsyncPolicy::Always => w.get_ref().sync_data()?,
                FsyncPolicy::Interval(every) => {
                    self.unsynced = true;
                    if self.last_sync.elapsed() >= every {
                        self.sync()?;
                    }
                }
                FsyncPolicy::Never => {}
            }
        }
        Ok(())
    }

    /// Syncs the active segment and the ack mark if appends since the last sync wait
    /// (`Interval`: the keeper calls it every interval, and at close).
    pub(super) fn sync(&mut self) -> io::Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        if let Some(w) = self.active.as_mut() {
            w.flush()?;
            w.get_ref().sync_data()?;
        }
        self.ack_file.sync_data()?;
        self.unsynced = false;
        self.last_sync = std::time::Instant::now();
        Ok(())
    }

    /// The sync interval, with `Interval`.
    pub(super) fn sync_interval(&self) -> Option<std::time::Duration> {
        match self.fsync {
            FsyncPolicy::Interval(every) => Some(every),
            _ => None,
        }
    }

    /// Drops the oldest segment's records (acked or not): persists the mark at its last seq and
    /// deletes it. Returns that seq, or `None` when the spool holds no segment.
    pub(super) fn drop_oldest(&mut self) -> io::Result<Option<u64>> {
        let Some(last) = self.segments.front().map(|s| s.last) else {
            return Ok(None);
        };
        let last = last.max(self.acked);
        self.ack(last)?;
        Ok(Some(last))
    }

    /// Records appended and not yet acked (by the persisted mark).
    pub(super) fn frames(&self) -> u64 {
        self.last_appended.saturating_sub(self.acked)
    }

    /// Persists the ack mark `seq`, then deletes segments holding only acked records.
    pub(super) fn ack(&mut self, seq: u64) -> io::Result<()> {
        if seq <= self.acked {
            return Ok(());
        }
        self.acked = seq;
        let mut slot = [0u8; ACK_SLOT as usize];
        slot[..8].copy_from_slice(&seq.to_le_bytes());
        slot[8..12].copy_from_slice(&crc32fast::hash(&seq.to_le_bytes()).to_le_bytes());
        let offset = (self.ack_writes % 2) * ACK_SLOT;
        self.ack_writes += 1;
        self.ack_file.seek(SeekFrom::Start(offset))?;
        self.ack_file.write_all(&slot)?;
        match self.fsync {
            FsyncPolicy::Always => self.ack_file.sync_data()?,
            FsyncPolicy::Interval(_) => self.unsynced = true,
            FsyncPolicy::Never => {}
        }
        while self.segments.front().is_some_and(|s| s.last <= seq) {
            let is_active = self.segments.len() == 1 && self.active.is_some();
            if is_active {
                // Everything appended so far is acked: close the active segment too; the next
                // append starts a new one.
                if self.last_appended > seq {
                    break;
                }
                self.active = None;
            }
            if let Some(seg) = self.segments.pop_front() {
                std::fs::remove_file(&seg.path)?;
                self.bytes -= seg.bytes;
            }
        }
        Ok(())
    }
}

fn read_ack_mark(file: &mut File) -> io::Result<u64> {
    let mut buf = Vec::with_capacity(2 * ACK_SLOT as usize);
    file.seek(SeekFrom::Start(0))?;
    Read::by_ref(file)
        .take(2 * ACK_SLOT)
        .read_to_end(&mut buf)?;
    let mut best = 0u64;
    for slot in buf.chunks_exact(ACK_SLOT as usize) {
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&slot[..8]);
        let mut crc_bytes = [0u8; 4];
        crc_bytes.copy_from_slice(&slot[8..12]);
        if crc32fast::hash(&seq_bytes) == u32::from_le_bytes(crc_bytes) {
            best = best.max(u64::from_le_bytes(seq_bytes));
        }
    }
    Ok(best)
}

/// The intact records of one segment, the length of the intact prefix, and whether a torn or
/// corrupt tail followed it.
type SegmentRead = (Vec<(u64, Bytes)>, u64, bool);

/// Reads the intact records of one segment.
fn read_segment(path: &Path) -> io::Result<SegmentRead> {
    let data = Bytes::from(std::fs::read(path)?);
    let mut records = Vec::new();
    let mut pos = 0usize;
    let mut torn = false;
    while pos < data.len() {
        let Some(header) = data.get(pos..pos + RECORD_HEADER) else {
            torn = true;
            break;
        };
        let mut b4 = [0u8; 4];
        let mut b8 = [0u8; 8];
        b4.copy_from_slice(&header[..4]);
        let len = u32::from_le_bytes(b4);
        b8.copy_from_slice(&header[4..12]);
        let seq = u64::from_le_bytes(b8);
        b4.copy_from_slice(&header[12..16]);
        let crc = u32::from_le_bytes(b4);
        let start = pos + RECORD_HEADER;
        let end = start.saturating_add(len as usize);
        if len > MAX_RECORD_DATA || end > data.len() {
            torn = true;
            break;
        }
        let body = data.slice(start..end);
        if record_crc(seq, &body) != crc {
            torn = true;
            break;
        }
        records.push((seq, body));
        pos = end;
    }
    Ok((records, pos as u64, torn))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, max: u64) -> SpoolConfig {
        SpoolConfig::new(dir, max)
    }

    fn frame(seq: u64) -> Vec<u8> {
        let mut v = vec![0u8; 40];
        v[..8].copy_from_slice(&seq.to_be_bytes());
        v
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "contrail-spool-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn reopen_returns_unacked_frames_after_the_mark() {
        let dir = tempdir();
        {
            let (mut s, rec) = Spool::open(&cfg(&dir, 1 << 20)).expect("open");
            assert!(!rec.existed);
            for seq in 1..=100 {
                s.append(seq, &frame(seq)).expect("append");
            }
            s.flush().expect("flush");
            s.ack(40).expect("ack");
        }
        let (_s, rec) = Spool::open(&cfg(&dir, 1 << 20)).expect("reopen");
        assert!(rec.existed);
        assert_eq!(rec.acked, 40);
        let seqs: Vec<u64> = rec.frames.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (41..=100).collect::<Vec<_>>());
        assert_eq!(&rec.frames[0].1[..], &frame(41)[..]);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn torn_tail_is_ignored_and_cut() {
        let dir = tempdir();
        {
            let (mut s, _) = Spool::open(&cfg(&dir, 1 << 20)).expect("open");
            for seq in 1..=10 {
                s.append(seq, &frame(seq)).expect("append");
            }
            s.flush().expect("flush");
        }
        let seg = std::fs::read_dir(&dir)
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().and_then(|e| e.to_str()) == Some(SEG_EXT))
            .expect("a segment");
        let full = std::fs::metadata(&seg).expect("stat").len();
        // A half-written 11th record: header and part of the data.
        let mut f = OpenOptions::new()
            .append(true)
            .open(&seg)
            .expect("open seg");
        let mut header = [0u8; RECORD_HEADER];
        header[..4].copy_from_slice(&40u32.to_le_bytes());
        header[4..12].copy_from_slice(&11u64.to_le_bytes());
        f.write_all(&header).expect("write");
        f.write_all(&[1, 2, 3]).expect("write");
        drop(f);
        let (mut s, rec) = Spool::open(&cfg(&dir, 1 << 20)).expect("reopen");
        assert_eq!(rec.frames.len(), 10);
        assert_eq!(std::fs::metadata(&seg).expect("stat").len(), full);
        // Appending continues after the intact records.
        s.append(11, &frame(11)).expect("append");
        s.flush().expect("flush");
        drop(s);
        let (_s, rec) = Spool::open(&cfg(&dir, 1 << 20)).expect("reopen again");
        assert_eq!(rec.frames.last().map(|(s, _)| *s), Some(11));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn corrupt_record_stops_recovery_there() {
        let dir = tempdir();
        {
            let (mut s, _) = Spool::open(&cfg(&dir, 1 << 20)).expect("open");
            for seq in 1..=10 {
                s.append(seq, &frame(seq)).expect("append");
            }
            s.flush().expect("flush");
        }
        let seg = std::fs::read_dir(&dir)
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().and_then(|e| e.to_str()) == Some(SEG_EXT))
            .expect("a segment");
        let mut bytes = std::fs::read(&seg).expect("read");
        let sixth = 5 * record_len(40) as usize + RECORD_HEADER + 20;
        bytes[sixth] ^= 0xff;
        std::fs::write(&seg, &bytes).expect("write");
        let (_s, rec) = Spool::open(&cfg(&dir, 1 << 20)).expect("reopen");
        let seqs: Vec<u64> = rec.frames.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=5).collect::<Vec<_>>());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn acks_delete_segments_and_keep_the_bound() {
        let dir = tempdir();
        let max = 32 * 1024;
        let (mut s, _) = Spool::open(&cfg(&dir, max)).expect("open");
        let mut seq = 0u64;
        // Fill to the bound.
        while s.has_room(40) {
            seq += 1;
            s.append(seq, &frame(seq)).expect("append");
        }
        s.flush().expect("flush");
        assert!(s.bytes() <= max);
        assert!(!s.has_room(40), "full");
        let segs_before = s.segments.len();
        assert!(segs_before > 1, "several segments ({segs_before})");
        // Acking the first half frees whole segments.
        s.ack(seq / 2).expect("ack");
        assert!(s.segments.len() < segs_before);
        assert!(s.has_room(40));
        // Acking everything empties the spool.
        s.ack(seq).expect("ack all");
        assert_eq!(s.bytes(), 0);
        let files = std::fs::read_dir(&dir)
            .expect("ls")
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some(SEG_EXT))
            .count();
        assert_eq!(files, 0);
        drop(s);
        let (_s, rec) = Spool::open(&cfg(&dir, max)).expect("reopen");
        assert_eq!(rec.acked, seq);
        assert!(rec.frames.is_empty());
        assert!(rec.existed);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn torn_ack_slot_falls_back_to_the_other() {
        let dir = tempdir();
        {
            let (mut s, _) = Spool::open(&cfg(&dir, 1 << 20)).expect("open");
            for seq in 1..=10 {
                s.append(seq, &frame(seq)).expect("append");
            }
            s.flush().expect("flush");
            s.ack(3).expect("ack"); // slot 0
            s.ack(7).expect("ack"); // slot 1
        }
        let ack = dir.join(ACK_FILE);
        let mut bytes = std::fs::read(&ack).expect("read");
        bytes[ACK_SLOT as usize + 9] ^= 0xff; // corrupt slot 1
        std::fs::write(&ack, &bytes).expect("write");
        let (_s, rec) = Spool::open(&cfg(&dir, 1 << 20)).expect("reopen");
        assert_eq!(rec.acked, 3);
        assert_eq!(rec.frames.first().map(|(s, _)| *s), Some(4));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn drop_oldest_frees_the_oldest_segment_and_persists_the_mark() {
        let dir = tempdir();
        let max = 32 * 1024;
        let (mut s, _) = Spool::open(&cfg(&dir, max)).expect("open");
        let mut seq = 0u64;
        while s.has_room(40) {
            seq += 1;
            s.append(seq, &frame(seq)).expect("append");
        }
        s.flush().expect("flush");
        let before = s.bytes();
        let through = s.drop_oldest().expect("drop").expect("a segment");
        assert!(
            through > 0 && through < seq,
            "dropped a prefix: 1..={through} of {seq}"
        );
        assert!(s.bytes() < before);
        assert!(s.has_room(40));
        assert_eq!(s.frames(), seq - through);
        drop(s);
        // A restart resumes after the dropped frames, with every later one intact.
        let (_s, rec) = Spool::open(&cfg(&dir, max)).expect("reopen");
        assert_eq!(rec.acked, through);
        let seqs: Vec<u64> = rec.frames.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (through + 1..=seq).collect::<Vec<_>>());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn interval_policy_syncs_only_when_due() {
        let dir = tempdir();
        let mut c = cfg(&dir, 1 << 20);
        c.fsync = FsyncPolicy::Interval(std::time::Duration::from_secs(3600));
        let (mut s, _) = Spool::open(&c).expect("open");
        s.append(1, &frame(1)).expect("append");
        s.flush().expect("flush");
        assert!(s.unsynced, "not due yet: waits for the keeper");
        s.sync().expect("sync");
        assert!(!s.unsynced);
        assert_eq!(
            s.sync_interval(),
            Some(std::time::Duration::from_secs(3600))
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
