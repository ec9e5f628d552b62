//! One session's side of the command downlink.
//!
//! * Accepts the agent's unidirectional streams: the first is telemetry (handed to the reader),
//!   the second, for an agent with the `commands` capability, is the command output stream.
//! * Sends `Command` / `CommandCancel` through the control loop (the control stream: no
//!   telemetry credit), after polling the queue at registration and on every wake-up.
//! * Stores `CommandAccepted` / `CommandResult` (handed over by the control loop) and output
//!   chunks (bounded size; stored idempotently by command, stream and offset).
//!
//! It runs beside the telemetry reader in the session task; the reader never waits for it.
//! Only sessions that can get commands have one (the relay has a downlink and the agent the
//! `commands` capability); the others' reader accepts its streams itself (`driver.rs`).

use std::collections::HashSet;
use std::time::Duration;

use bytes::BytesMut;
use contrail_control::commands::{
    CommandId, CommandRecord, CommandStatus, OutputChunk, OutputStored, Stream,
};
use contrail_protocol::proto::{
    control_message::Msg, Command, CommandCancel, CommandStatus as WireStatus, ControlMessage,
    OutputStream,
};
use contrail_protocol::{ErrorCode, FrameCodec};
use tokio::sync::mpsc;

use super::shared::Registration;
use crate::core::End;
use crate::core::RelayCore;
use crate::downlink::{CommandRouter, Wake};

/// Messages the control loop and this task exchange, per direction.
const LINK_QUEUE: usize = 64;
/// Retry delay of a poll that failed (database down).
const POLL_RETRY: Duration = Duration::from_secs(1);

/// A uni stream accepted for the telemetry reader, or why accepting ended.
pub(crate) type UniStream = Result<quinn::RecvStream, quinn::ConnectionError>;

/// The control loop's end.
pub(crate) struct Link {
    /// `Command` / `CommandCancel` to write on the control stream.
    pub(crate) to_agent: mpsc::Receiver<Msg>,
    from_agent: mpsc::Sender<(Msg, u64)>,
}

impl Link {
    /// Hands `CommandAccepted` / `CommandResult` over (never waits: the control loop also sends
    /// acks; when full the message is dropped and counted, and the command is re-sent on the
    /// agent's next session, which answers again).
    pub(crate) fn hand_over(&self, m: Msg) {
        let at = contrail_control::commands::now_ms();
        if self.from_agent.try_send((m, at)).is_err() {
            metrics::counter!("contrail_limit_hits_total", "limit" => "command_link_queue")
                .increment(1);
        }
    }
}

/// This task's end.
pub(crate) struct Side {
    to_agent: mpsc::Sender<Msg>,
    from_agent: mpsc::Receiver<(Msg, u64)>,
    telemetry: mpsc::Sender<UniStream>,
}

/// The three channels of a session: control loop link, command side, telemetry streams.
pub(crate) fn channels() -> (Link, Side, mpsc::Receiver<UniStream>) {
    let (to_tx, to_rx) = mpsc::channel(LINK_QUEUE);
    let (from_tx, from_rx) = mpsc::channel(LINK_QUEUE);
    let (tel_tx, tel_rx) = mpsc::channel(1);
    (
        Link {
            to_agent: to_rx,
            from_agent: from_tx,
        },
        Side {
            to_agent: to_tx,
            from_agent: from_rx,
            telemetry: tel_tx,
        },
        tel_rx,
    )
}

/// Removes the session from the router however the task ends.
struct Attached<'a> {
    router: &'a CommandRouter,
    reg: &'a Registration,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.router
            .detach(self.reg.agent_id.as_str(), self.reg.session_id);
    }
}

fn wire_status(s: i32) -> CommandStatus {
    match WireStatus::try_from(s) {
        Ok(WireStatus::Running) => CommandStatus::Running,
        Ok(WireStatus::Succeeded) => CommandStatus::Succeeded,
        Ok(WireStatus::Expired) => CommandStatus::Expired,
        Ok(WireStatus::Cancelled) => CommandStatus::Cancelled,
        // Refused and anything unknown are failures (the message says why).
        _ => CommandStatus::Failed,
    }
}

struct State<'a> {
    reg: &'a Registration,
    router: Option<&'a CommandRouter>,
    to_agent: mpsc::Sender<Msg>,
    /// Commands of this drone sent on this session (resent on the next one).
    sent: HashSet<CommandId>,
    /// Commands known to belong to this drone (results and output for others are ignored).
    owned: HashSet<CommandId>,
    retry_at: Option<tokio::time::Instant>,
}

impl State<'_> {
    /// Sends every pending command not yet sent on this session; on a store failure retries
    /// later. Returns false when the control loop is gone.
    async fn poll(&mut self) -> bool {
        let Some(router) = self.router else {
            return true;
        };
        let svc = router.service();
        let pending = match svc.pending_for(self.reg.agent_id.as_str()).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(agent = %self.reg.agent_id, error = %e, "pending command poll failed; retrying");
                self.retry_at = Some(tokio::time::Instant::now() + POLL_RETRY);
                return true;
            }
        };
        self.retry_at = None;
        for r in pending {
            self.owned.insert(r.id.clone());
            if self.sent.contains(&r.id) {
                continue;
            }
            if !self.send(&r).await {
                return false;
            }
            if let Err(e) = svc.mark_delivered(&r).await {
                tracing::debug!(command = %r.id, error = %e, "marking delivered failed");
            }
            self.sent.insert(r.id);
        }
        true
    }

    async fn send(&self, r: &CommandRecord) -> bool {
        let cmd = Msg::Command(Command {
            id: r.id.to_string(),
            r#type: r.kind.clone(),
            payload: r.payload.clone().into(),
            deadline_unix_ms: r.deadline_ms,
        });
        self.to_agent.send(cmd).await.is_ok()
    }

    /// Whether `id` is a command of this drone (looked up once, then remembered; bounded by
    /// the drone's open-command limit plus what it reports about).
    async fn owns(&mut self, id: &CommandId) -> bool {
        if self.owned.contains(id) {
            return true;
        }
        let Some(router) = self.router else {
            return false;
        };
        let cap = router.service().config().max_open_per_drone * 4;
        match router.service().get(id).await {
            Ok(Some(r)) if r.drone_id == self.reg.agent_id.as_str() => {
                if self.owned.len() >= cap {
                    self.owned.clear();
                }
                self.owned.insert(id.clone());
                true
            }
            _ => false,
        }
    }

    /// `at`: when the control loop read it (Unix ms), so a busy loop does not skew latencies.
    async fn on_agent_message(&mut self, m: Msg, at: u64) {
        let Some(router) = self.router else { return };
        let svc = router.service().clone();
        let (id, res) = match m {
            Msg::CommandAccepted(a) => {
                let Some(id) = CommandId::parse(&a.id) else {
                    return;
                };
                if !self.owns(&id).await {
                    return;
                }
                let res = svc.accepted(&id, at).await;
                (id, res)
            }
            Msg::CommandResult(r) => {
                let Some(id) = CommandId::parse(&r.id) else {
                    return;
                };
                if !self.owns(&id).await {
                    return;
                }
                let message: String = r.message.chars().take(4096).collect();
                let res = svc
                    .finish(&id, wire_status(r.status), r.exit_code, &message, at)
                    .await;
                (id, res)
            }
            _ => return,
        };
        if let Err(e) = res {
            // Not stored: the command stays open and is sent again on the agent's next
            // session, which answers again.
            tracing::warn!(command = %id, error = %e, "storing a command update failed");
        }
    }

    async fn output(&mut self, m: ControlMessage, max_chunk: usize) -> Result<(), End> {
        let Some(Msg::CommandOutput(o)) = m.msg else {
            return Err(End::new(
                ErrorCode::ProtocolViolation,
                "command output stream carries CommandOutput only",
            ));
        };
        if o.data.len() > max_chunk {
            metrics::counter!("contrail_limit_hits_total", "limit" => "command_chunk_bytes")
                .increment(1);
            return Err(End::new(
                ErrorCode::FrameTooLarge,
                "command output chunk above max_chunk_bytes",
            ));
        }
        let Some(id) = CommandId::parse(&o.id) else {
            return Ok(());
        };
        if !self.owns(&id).await {
            return Ok(());
        }
        let Some(router) = self.router else {
            return Ok(());
        };
        let stream = if o.stream == OutputStream::Stderr as i32 {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        let chunk = OutputChunk {
            stream,
            offset: o.offset,
            data: o.data.to_vec(),
        };
        match router.service().store_output(&id, chunk).await {
            Ok(OutputStored::OverLimit) => {
                metrics::counter!("contrail_limit_hits_total", "limit" => "command_output_bytes")
                    .increment(1);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(command = %id, error = %e, "storing command output failed"),
        }
        Ok(())
    }
}

/// Runs the command side of a session until the connection ends; returns only for a protocol
/// violation on the command output stream (the connection ending is the reader's to report).
pub(crate) async fn run(
    core: &RelayCore,
    conn: &quinn::Connection,
    reg: &Registration,
    side: Side,
) -> End {
    let Side {
        to_agent,
        from_agent,
        telemetry,
    } = side;
    let router = core.downlink.as_deref().filter(|_| reg.commands);
    let (out_tx, out_rx) = mpsc::channel(1);
    // Two loops in one future: accepting streams never waits for the queue, so a slow
    // database cannot hold the telemetry stream back.
    let accept = accept_streams(conn, router.is_some(), telemetry, out_tx);
    let commands = command_loop(core, reg, router, to_agent, from_agent, out_rx);
    tokio::select! {
        () = accept => std::future::pending().await,
        end = commands => end,
    }
}

/// Hands the first uni stream (and any later one from an agent without the `commands`
/// capability) to the telemetry reader, and the second one of a `commands` agent to the
/// command loop.
async fn accept_streams(
    conn: &quinn::Connection,
    commands: bool,
    telemetry: mpsc::Sender<UniStream>,
    output: mpsc::Sender<quinn::RecvStream>,
) {
    let mut output = Some(output);
    loop {
        match conn.accept_uni().await {
            Ok(s) if commands && output.is_some() && s.id().index() == 1 => {
                if let Some(tx) = output.take() {
                    let _ = tx.send(s).await;
                }
            }
            Ok(s) => {
                if telemetry.send(Ok(s)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = telemetry.send(Err(e)).await;
                return;
            }
        }
    }
}

async fn command_loop(
    core: &RelayCore,
    reg: &Registration,
    router: Option<&CommandRouter>,
    to_agent: mpsc::Sender<Msg>,
    mut from_agent: mpsc::Receiver<(Msg, u64)>,
    mut output_rx: mpsc::Receiver<quinn::RecvStream>,
) -> End {
    let mut wakes = None;
    let _attached = router.map(|r| {
        wakes = Some(r.attach(reg.agent_id.as_str(), reg.session_id));
        Attached { router: r, reg }
    });
    let mut st = State {
        reg,
        router,
        to_agent,
        sent: HashSet::new(),
        owned: HashSet::new(),
        retry_at: None,
    };
    if let Some(r) = router {
        if let Err(e) = r.service().drone_seen(reg.agent_id.as_str()).await {
            tracing::debug!(agent = %reg.agent_id, error = %e, "recording the drone failed");
        }
        if !st.poll().await {
            return std::future::pending().await;
        }
    }
    let codec = FrameCodec::new(core.config.limits.max_frame_bytes);
    let max_chunk = router.map_or(0, |r| r.service().config().max_chunk_bytes);
    let mut output: Option<quinn::RecvStream> = None;
    let mut outbuf = BytesMut::new();
    loop {
        let retry = async {
            match st.retry_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(s) = output_rx.recv(), if output.is_none() => output = Some(s),
            chunk = async {
                match output.as_mut() {
                    Some(s) => s.read_chunk(codec.max_frame_bytes() + 4, true).await,
                    None => std::future::pending().await,
                }
            } => match chunk {
                Ok(Some(c)) => {
                    outbuf.extend_from_slice(&c.bytes);
                    loop {
                        match codec.decode_message::<ControlMessage>(&mut outbuf) {
                            Ok(Some(m)) => {
                                if let Err(end) = st.output(m, max_chunk).await {
                                    return end;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                return End::new(e.code(), format!("command output stream: {e}"))
                            }
                        }
                    }
                }
                // Finished or reset: the agent may still report results on the control stream.
                Ok(None) | Err(_) => output = None,
            },
            Some(w) = async {
                match wakes.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match w {
                Wake::Poll => {
                    if !st.poll().await {
                        return std::future::pending().await;
                    }
                }
                Wake::Cancel(id) => {
                    if st.sent.contains(&id) {
                        let msg = Msg::CommandCancel(CommandCancel { id: id.to_string() });
                        if st.to_agent.send(msg).await.is_err() {
                            return std::future::pending().await;
                        }
                    }
                }
            },
            Some((m, at)) = from_agent.recv() => st.on_agent_message(m, at).await,
            _ = retry => {
                if !st.poll().await {
                    return std::future::pending().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_statuses_map_to_stored_ones() {
        assert_eq!(
            wire_status(WireStatus::Succeeded as i32),
            CommandStatus::Succeeded
        );
        assert_eq!(
            wire_status(WireStatus::Refused as i32),
            CommandStatus::Failed
        );
        assert_eq!(
            wire_status(WireStatus::Running as i32),
            CommandStatus::Running
        );
        assert_eq!(wire_status(99), CommandStatus::Failed);
    }
}
