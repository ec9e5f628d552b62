//! Commands from operators, agent side: a typed stream of [`IncomingCommand`]s, each with a
//! [`CommandHandle`] to report progress, output and the result.
//!
//! **Guarantee:** delivery is at least once, execution at most once. The relay may send a
//! command again (after a reconnect, or to a new relay); the agent keeps a ledger of the command
//! ids it started and finished in its state directory (`commands.log`, bounded, fsynced before a
//! command is handed out), so a repeated `Command` is answered from the ledger and never handed
//! out twice, even across agent restarts. A command that was running when the agent died is
//! reported `FAILED` ("agent restarted while the command was running") and not run again.
//!
//! ```no_run
//! use contrail_protocol::client::commands::{CommandOptions, Outcome, OutputKind};
//! use contrail_protocol::client::{Agent, ClientConfig, Trust};
//! use contrail_protocol::AgentId;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ClientConfig::new(
//!     "127.0.0.1:4433".parse()?,
//!     AgentId::new("drone-1")?,
//!     Trust::CaFile(".contrail/dev/cert.pem".into()),
//! );
//! let (agent, mut commands) =
//!     Agent::connect_with_commands(config, CommandOptions::new("/var/lib/drone-agent")).await?;
//! while let Some(cmd) = commands.next().await {
//!     let mut handle = cmd.handle;
//!     if cmd.kind == "echo" {
//!         handle.output(OutputKind::Stdout, &cmd.payload).await?;
//!         handle.finish(Outcome::succeeded(0)).await?;
//!     } else {
//!         handle.finish(Outcome::refused("unknown command type")).await?;
//!     }
//! }
//! # drop(agent);
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, watch};

use super::ClientError;
use crate::codec::FrameCodec;
use crate::proto::{
    control_message::Msg, Command, CommandAccepted, CommandOutput, CommandResult,
    CommandStatus as WireStatus, ControlMessage, OutputStream,
};

/// The capability an agent names in `Register` to receive commands.
pub const CAPABILITY: &str = "commands";

/// Settings of the agent's command side.
#[derive(Debug, Clone)]
pub struct CommandOptions {
    /// Where the ledger (`commands.log`) lives; the spool directory is a good choice.
    pub state_dir: PathBuf,
    /// Command ids remembered (oldest finished ones are forgotten first).
    pub max_remembered: usize,
    /// Commands waiting to be taken from [`Commands`].
    pub queue: usize,
    /// Largest output chunk sent (bigger writes are split).
    pub max_chunk_bytes: usize,
    /// Output kept for resending after a reconnect (oldest dropped first).
    pub retained_output_bytes: usize,
}

impl CommandOptions {
    /// Defaults with the ledger in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        CommandOptions {
            state_dir: state_dir.into(),
            max_remembered: 10_000,
            queue: 64,
            max_chunk_bytes: 16 * 1024,
            retained_output_bytes: 1024 * 1024,
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Final status (not `RUNNING`).
    pub status: WireStatus,
    /// Exit code (process exit code, MAVLink result, ...).
    pub exit_code: i32,
    /// Human-readable detail.
    pub message: String,
}

impl Outcome {
    /// Success with an exit code.
    pub fn succeeded(exit_code: i32) -> Self {
        Outcome {
            status: WireStatus::Succeeded,
            exit_code,
            message: String::new(),
        }
    }

    /// Failure with an exit code and message.
    pub fn failed(exit_code: i32, message: impl Into<String>) -> Self {
        Outcome {
            status: WireStatus::Failed,
            exit_code,
            message: message.into(),
        }
    }

    /// Refused by policy (not allowlisted, bad arguments, unknown type).
    pub fn refused(message: impl Into<String>) -> Self {
        Outcome {
            status: WireStatus::Refused,
            exit_code: -1,
            message: message.into(),
        }
    }

    /// Stopped on a `CommandCancel`.
    pub fn cancelled() -> Self {
        Outcome {
            status: WireStatus::Cancelled,
            exit_code: -1,
            message: "cancelled".into(),
        }
    }

    fn result(&self, id: &str) -> Msg {
        Msg::CommandResult(CommandResult {
            id: id.to_owned(),
            status: self.status as i32,
            exit_code: self.exit_code,
            message: self.message.clone(),
        })
    }
}

/// `lock()` that shrugs off poisoning (a panicking handler must not wedge the agent).
trait LockExt<T> {
    fn lock_(&self) -> MutexGuard<'_, T>;
}

impl<T> LockExt<T> for Mutex<T> {
    fn lock_(&self) -> MutexGuard<'_, T> {
        self.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A command handed to the application. Run it, then report through `handle`.
#[derive(Debug)]
pub struct IncomingCommand {
    /// Command id (32 hex chars).
    pub id: String,
    /// Type, e.g. `run_command`.
    pub kind: String,
    /// Type-specific payload (JSON).
    pub payload: Bytes,
    /// Unix ms after which it must not start (0: none).
    pub deadline_unix_ms: u64,
    /// Reports progress, output and the result.
    pub handle: CommandHandle,
}

/// The stream of commands for this agent.
pub struct Commands {
    rx: mpsc::Receiver<IncomingCommand>,
}

impl Commands {
    /// The next command (`None` once the agent is closed).
    pub async fn next(&mut self) -> Option<IncomingCommand> {
        self.rx.recv().await
    }

    /// A command if one is waiting, without waiting.
    pub fn try_next(&mut self) -> Option<IncomingCommand> {
        self.rx.try_recv().ok()
    }
}

/// Reports for one running command. Dropping it without [`finish`](Self::finish) reports the
/// command failed.
#[derive(Debug)]
pub struct CommandHandle {
    hub: Arc<Hub>,
    id: String,
    offsets: [u64; 2],
    cancel: watch::Receiver<bool>,
    finished: bool,
}

impl CommandHandle {
    /// The command id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sends output (split into chunks at increasing offsets of its stream).
    pub async fn output(&mut self, kind: OutputKind, data: &[u8]) -> Result<(), ClientError> {
        let (idx, stream) = match kind {
            OutputKind::Stdout => (0, OutputStream::Stdout),
            OutputKind::Stderr => (1, OutputStream::Stderr),
        };
        for piece in data.chunks(self.hub.opts.max_chunk_bytes.max(1)) {
            let chunk = CommandOutput {
                id: self.id.clone(),
                stream: stream as i32,
                offset: self.offsets[idx],
                data: Bytes::copy_from_slice(piece),
            };
            self.offsets[idx] += piece.len() as u64;
            self.hub.retain(&chunk);
            self.hub.send_report(Msg::CommandOutput(chunk)).await?;
        }
        Ok(())
    }

    /// Reports that it is still running, with a message.
    pub async fn progress(&self, message: impl Into<String>) -> Result<(), ClientError> {
        self.hub
            .send_report(Msg::CommandResult(CommandResult {
                id: self.id.clone(),
                status: WireStatus::Running as i32,
                exit_code: 0,
                message: message.into(),
            }))
            .await
    }

    /// Resolves when the relay asked to cancel this command.
    pub async fn cancelled(&mut self) {
        let _ = self.cancel.wait_for(|c| *c).await;
    }

    /// Whether a cancel was asked for.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Records the outcome in the ledger and reports it.
    pub async fn finish(mut self, outcome: Outcome) -> Result<(), ClientError> {
        self.finished = true;
        self.hub
            .record(&self.id, Entry::Done(outcome.clone()))
            .await?;
        self.hub.send_report(outcome.result(&self.id)).await
    }
}

impl Drop for CommandHandle {
    fn drop(&mut self) {
        if !self.finished {
            let outcome = Outcome::failed(-1, "the agent dropped the command without a result");
            if self.hub.finish(&self.id, &outcome).is_ok() {
                let _ = self.hub.reports.try_send(outcome.result(&self.id));
            }
        }
    }
}

/// What the ledger knows about a command id.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// Handed to the application (by this process or a previous one).
    Started,
    /// Finished with this outcome.
    Done(Outcome),
}

/// Append-only, fsynced, bounded record of command ids and outcomes.
#[derive(Debug)]
struct Ledger {
    path: PathBuf,
    file: std::fs::File,
    entries: HashMap<String, Entry>,
    order: VecDeque<String>,
    lines: usize,
    max: usize,
}

fn status_name(s: WireStatus) -> &'static str {
    s.as_str_name()
}

impl Ledger {
    fn open(dir: &Path, max: usize) -> std::io::Result<Ledger> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("commands.log");
        let mut entries = HashMap::new();
        let mut order = VecDeque::new();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        for line in text.lines() {
            let mut f = line.splitn(5, ' ');
            match (f.next(), f.next()) {
                (Some("S"), Some(id)) if !entries.contains_key(id) => {
                    entries.insert(id.to_owned(), Entry::Started);
                    order.push_back(id.to_owned());
                }
                (Some("D"), Some(id)) => {
                    let status = f
                        .next()
                        .and_then(WireStatus::from_str_name)
                        .unwrap_or(WireStatus::Failed);
                    let exit_code = f.next().and_then(|c| c.parse().ok()).unwrap_or(-1);
                    let message = f
                        .next()
                        .and_then(|m| hex::decode(m).ok())
                        .map(|m| String::from_utf8_lossy(&m).into_owned())
                        .unwrap_or_default();
                    let done = Entry::Done(Outcome {
                        status,
                        exit_code,
                        message,
                    });
                    if entries.insert(id.to_owned(), done).is_none() {
                        order.push_back(id.to_owned());
                    }
                }
                // A torn last line (crash mid-write) or garbage: skipped.
                _ => {}
            }
        }
        let mut ledger = Ledger {
            file: std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?,
            path,
            entries,
            order,
            lines: 0,
            max: max.max(1),
        };
        ledger.evict();
        ledger.compact()?;
        Ok(ledger)
    }

    fn line(id: &str, e: &Entry) -> String {
        match e {
            Entry::Started => format!("S {id}\n"),
            Entry::Done(o) => format!(
                "D {id} {} {} {}\n",
                status_name(o.status),
                o.exit_code,
                hex::encode(o.message.as_bytes())
            ),
        }
    }

    /// Forgets the oldest entries beyond `max` (finished ones first).
    fn evict(&mut self) {
        while self.order.len() > self.max {
            let pos = self
                .order
                .iter()
                .position(|id| matches!(self.entries.get(id), Some(Entry::Done(_))))
                .unwrap_or(0);
            if let Some(id) = self.order.remove(pos) {
                self.entries.remove(&id);
            }
        }
    }

    /// Rewrites the file with one line per remembered id.
    fn compact(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("log.tmp");
        let mut out = String::new();
        for id in &self.order {
            if let Some(e) = self.entries.get(id) {
                out.push_str(&Self::line(id, e));
            }
        }
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(out.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        self.file = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        self.lines = self.order.len();
        Ok(())
    }

    fn record(&mut self, id: &str, e: Entry) -> std::io::Result<()> {
        self.file.write_all(Self::line(id, &e).as_bytes())?;
        self.file.sync_data()?;
        self.lines += 1;
        if self.entries.insert(id.to_owned(), e).is_none() {
            self.order.push_back(id.to_owned());
        }
        self.evict();
        if self.lines > 2 * self.max {
            self.compact()?;
        }
        Ok(())
    }
}

/// Shared between the agent's driver and the application's handles.
#[derive(Debug)]
pub(crate) struct Hub {
    opts: CommandOptions,
    ledger: Mutex<Ledger>,
    /// Ids handed out by this process and not finished.
    running: Mutex<HashMap<String, watch::Sender<bool>>>,
    deliver: mpsc::Sender<IncomingCommand>,
    /// CommandAccepted / CommandResult for the control stream and CommandOutput for the
    /// command output stream, in one queue: a command's output is written before its result.
    reports: mpsc::Sender<Msg>,
    reports_rx: tokio::sync::Mutex<mpsc::Receiver<Msg>>,
    /// Output kept for resending on the next session.
    retained: Mutex<(VecDeque<CommandOutput>, usize)>,
    /// Commands from the relay, waiting for the session task.
    inbox: mpsc::Sender<Msg>,
    inbox_rx: tokio::sync::Mutex<mpsc::Receiver<Msg>>,
}

impl Hub {
    /// Opens the ledger and returns the hub and the application's command stream.
    pub(crate) fn open(opts: CommandOptions) -> Result<(Arc<Hub>, Commands), ClientError> {
        let ledger = Ledger::open(&opts.state_dir, opts.max_remembered)
            .map_err(|e| ClientError::CommandLedger(Arc::new(e)))?;
        let (deliver, rx) = mpsc::channel(opts.queue.max(1));
        let (reports, reports_rx) = mpsc::channel(256);
        let (inbox, inbox_rx) = mpsc::channel(256);
        let hub = Arc::new(Hub {
            opts,
            ledger: Mutex::new(ledger),
            running: Mutex::default(),
            deliver,
            reports,
            reports_rx: tokio::sync::Mutex::new(reports_rx),
            retained: Mutex::default(),
            inbox,
            inbox_rx: tokio::sync::Mutex::new(inbox_rx),
        });
        Ok((hub, Commands { rx }))
    }

    /// A `Command` or `CommandCancel` read from the control stream (never blocks the reader:
    /// when the inbox is full the message is dropped; the relay sends the command again on the
    /// next session).
    pub(crate) fn on_relay_message(&self, m: Msg) {
        if self.inbox.try_send(m).is_err() {
            tracing::warn!("command inbox full; a command will be redelivered later");
        }
    }

    async fn send_report(&self, m: Msg) -> Result<(), ClientError> {
        self.reports.send(m).await.map_err(|_| ClientError::Closed)
    }

    fn retain(&self, chunk: &CommandOutput) {
        let mut g = self.retained.lock_();
        g.1 += chunk.data.len();
        g.0.push_back(chunk.clone());
        while g.1 > self.opts.retained_output_bytes {
            match g.0.pop_front() {
                Some(old) => g.1 -= old.data.len(),
                None => break,
            }
        }
    }

    /// Records in the ledger off the async threads (each record is an fsync).
    async fn record(self: &Arc<Self>, id: &str, e: Entry) -> Result<(), ClientError> {
        if matches!(e, Entry::Done(_)) {
            self.running.lock_().remove(id);
        }
        let hub = self.clone();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || hub.ledger.lock_().record(&id, e))
            .await
            .map_err(|e| ClientError::CommandLedger(Arc::new(std::io::Error::other(e))))?
            .map_err(|e| ClientError::CommandLedger(Arc::new(e)))
    }

    fn finish(&self, id: &str, outcome: &Outcome) -> Result<(), ClientError> {
        self.running.lock_().remove(id);
        self.ledger
            .lock_()
            .record(id, Entry::Done(outcome.clone()))
            .map_err(|e| ClientError::CommandLedger(Arc::new(e)))
    }

    /// Decides what to do with a `Command`; replies go to the report queue.
    async fn on_command(self: &Arc<Self>, c: Command) {
        let accepted = Msg::CommandAccepted(CommandAccepted { id: c.id.clone() });
        let known = self.ledger.lock_().entries.get(&c.id).cloned();
        match known {
            Some(Entry::Done(o)) => {
                let _ = self.reports.send(accepted).await;
                let _ = self.reports.send(o.result(&c.id)).await;
            }
            Some(Entry::Started) => {
                if self.running.lock_().contains_key(&c.id) {
                    let _ = self.reports.send(accepted).await;
                } else {
                    // Started by an earlier run of this agent that died: never run it again.
                    let o = Outcome::failed(
                        -1,
                        "agent restarted while the command was running; not run again",
                    );
                    if self.record(&c.id, Entry::Done(o.clone())).await.is_ok() {
                        let _ = self.reports.send(accepted).await;
                        let _ = self.reports.send(o.result(&c.id)).await;
                    }
                }
            }
            None => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                if c.deadline_unix_ms != 0 && c.deadline_unix_ms < now {
                    let o = Outcome {
                        status: WireStatus::Expired,
                        exit_code: -1,
                        message: "deadline passed before the agent could start it".into(),
                    };
                    if self.record(&c.id, Entry::Done(o.clone())).await.is_ok() {
                        let _ = self.reports.send(o.result(&c.id)).await;
                    }
                    return;
                }
                // Recorded (fsynced) before anything runs: at most once, even across restarts.
                if let Err(e) = self.record(&c.id, Entry::Started).await {
                    tracing::error!(error = %e, "cannot record a command in the ledger; not running it");
                    return;
                }
                let (cancel_tx, cancel_rx) = watch::channel(false);
                self.running.lock_().insert(c.id.clone(), cancel_tx);
                let _ = self.reports.send(accepted).await;
                let incoming = IncomingCommand {
                    id: c.id.clone(),
                    kind: c.r#type,
                    payload: c.payload,
                    deadline_unix_ms: c.deadline_unix_ms,
                    handle: CommandHandle {
                        hub: self.clone(),
                        id: c.id,
                        offsets: [0, 0],
                        cancel: cancel_rx,
                        finished: false,
                    },
                };
                if self.deliver.send(incoming).await.is_err() {
                    tracing::debug!("command stream dropped by the application");
                }
            }
        }
    }

    fn on_cancel(&self, id: &str) {
        if let Some(tx) = self.running.lock_().get(id) {
            let _ = tx.send(true);
        }
    }

    /// Serves one session: handles commands from the relay, writes reports on the control
    /// stream and output on the command output stream (opened on first use, after telemetry's).
    /// Returns when writing fails (the session is over).
    pub(crate) async fn session(
        self: &Arc<Self>,
        conn: &quinn::Connection,
        ctl_tx: &tokio::sync::Mutex<quinn::SendStream>,
    ) {
        let codec = FrameCodec::default();
        let mut out: Option<quinn::SendStream> = None;
        let mut inbox = self.inbox_rx.lock().await;
        let mut reports = self.reports_rx.lock().await;
        // Output kept from earlier sessions goes again: the relay stores each chunk once.
        let resend: Vec<CommandOutput> = self.retained.lock_().0.iter().cloned().collect();
        for chunk in resend {
            if !write_output(conn, &mut out, &codec, chunk).await {
                return;
            }
        }
        loop {
            tokio::select! {
                Some(m) = inbox.recv() => match m {
                    Msg::Command(c) => self.on_command(c).await,
                    Msg::CommandCancel(c) => self.on_cancel(&c.id),
                    _ => {}
                },
                Some(m) = reports.recv() => match m {
                    Msg::CommandOutput(chunk) => {
                        if !write_output(conn, &mut out, &codec, chunk).await {
                            return;
                        }
                    }
                    r => {
                        let mut buf = BytesMut::new();
                        if codec.encode(&ControlMessage { msg: Some(r) }, &mut buf).is_err() {
                            continue;
                        }
                        if ctl_tx.lock().await.write_all(&buf).await.is_err() {
                            return;
                        }
                    }
                },
            }
        }
    }
}

async fn write_output(
    conn: &quinn::Connection,
    out: &mut Option<quinn::SendStream>,
    codec: &FrameCodec,
    chunk: CommandOutput,
) -> bool {
    if out.is_none() {
        match conn.open_uni().await {
            Ok(s) => *out = Some(s),
            Err(_) => return false,
        }
    }
    let Some(s) = out.as_mut() else { return false };
    let mut buf = BytesMut::new();
    if codec
        .encode(
            &ControlMessage {
                msg: Some(Msg::CommandOutput(chunk)),
            },
            &mut buf,
        )
        .is_err()
    {
        return true;
    }
    s.write_all(&buf).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_survives_reopen_and_stays_bounded() {
        let dir = std::env::temp_dir().join(format!("contrail-ledger-{}", rand::random::<u64>()));
        {
            let mut l = Ledger::open(&dir, 3).expect("open");
            l.record("a", Entry::Started).expect("a");
            l.record("a", Entry::Done(Outcome::failed(2, "no such file")))
                .expect("a done");
            l.record("b", Entry::Started).expect("b");
        }
        let l = Ledger::open(&dir, 3).expect("reopen");
        assert_eq!(
            l.entries.get("a"),
            Some(&Entry::Done(Outcome::failed(2, "no such file")))
        );
        assert_eq!(l.entries.get("b"), Some(&Entry::Started));
        drop(l);
        let mut l = Ledger::open(&dir, 3).expect("reopen");
        for id in ["c", "d"] {
            l.record(id, Entry::Started).expect("record");
        }
        assert_eq!(l.entries.len(), 3, "bounded");
        // Finished ones are forgotten first: the started "b" is still known.
        assert!(l.entries.contains_key("b"));
        assert!(!l.entries.contains_key("a"));
        assert!(l.entries.contains_key("d"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
