//! "Acked ⇒ written, whatever fails" and "the window is counted from the acks the agent
//! received" (DESIGN.md, Contract additions), with test sinks that panic or hold writes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use contrail_protocol::proto::{control_message::Msg, ControlMessage, Register};
use contrail_protocol::{ErrorCode, FrameCodec};
use contrail_relay::sink::{Filter, Sink, SinkBatch, SinkCommon, SinkError, SinkFactory, SinkSpec};
use contrail_relay::Hooks;
use contrail_testsupport::poll_until_async;
use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;

use crate::common::raw;
use crate::common::*;

/// What a test sink saw: every seq it was asked to write (before anything could block or
/// panic) and every seq it wrote, in order, across worker restarts.
#[derive(Default)]
struct Record {
    attempted: Mutex<Vec<u64>>,
    written: Mutex<Vec<u64>>,
    writes: AtomicUsize,
}

impl Record {
    /// The highest seq `n` such that 1..=n were all written.
    fn written_prefix(&self) -> u64 {
        let mut w = self.written.lock().clone();
        w.sort_unstable();
        w.dedup();
        let mut n = 0;
        for s in w {
            if s != n + 1 {
                break;
            }
            n = s;
        }
        n
    }
}

/// A sink that panics on its `panic_on`-th write (counted across restarts, so once), before
/// writing anything of it; and that, once `hold` is set, holds every write until a permit is
/// added to `gate`.
struct TestSink {
    rec: Arc<Record>,
    panic_on: usize,
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl Sink for TestSink {
    fn write<'a>(
        &'a mut self,
        batches: &'a [Arc<SinkBatch>],
        _filter: &'a Filter,
    ) -> BoxFuture<'a, Result<usize, SinkError>> {
        async move {
            let seqs: Vec<u64> = batches
                .iter()
                .flat_map(|b| b.frames.iter().map(|f| f.seq()))
                .collect();
            self.rec.attempted.lock().extend(&seqs);
            let n = self.rec.writes.fetch_add(1, Ordering::SeqCst) + 1;
            if n == self.panic_on {
                panic!("test sink: injected panic on write {n}");
            }
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("gate open").forget();
            }
            self.rec.written.lock().extend(&seqs);
            Ok(seqs.len())
        }
        .boxed()
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        async { Ok(()) }.boxed()
    }
}

fn test_sink(
    name: &str,
    rec: &Arc<Record>,
    panic_on: usize,
    gate: Option<Arc<tokio::sync::Semaphore>>,
) -> SinkSpec {
    let rec = rec.clone();
    let factory: SinkFactory = Arc::new(move || {
        let sink = TestSink {
            rec: rec.clone(),
            panic_on,
            gate: gate.clone(),
        };
        async move { Ok(Box::new(sink) as Box<dyn Sink>) }.boxed()
    });
    let mut common = SinkCommon::new(name, true);
    // One batch per write, so the panicking write holds a batch of its own.
    common.max_batches_per_write = 1;
    SinkSpec { common, factory }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_worker_panic_never_lets_an_ack_pass_an_unwritten_frame() {
    const TOTAL: u64 = 3_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.limits.max_inflight = 64;
    let rec = Arc::new(Record::default());
    let spec = test_sink("panicky", &rec, 5, None);
    let relay = start_with(config, dir, vec![spec], Hooks::default()).await;
    let agent = relay.agent("drone-panic").await;

    // Every ack the agent receives is checked against what the sink had written by then.
    let mut acks = agent.ack_watch();
    let checker = {
        let rec = rec.clone();
        tokio::spawn(async move {
            let mut seen = 0usize;
            loop {
                let acked = *acks.borrow_and_update();
                if acked > 0 {
                    seen += 1;
                    let prefix = rec.written_prefix();
                    assert!(
                        acked <= prefix,
                        "ack {acked} ran ahead of the sink, which had written 1..={prefix} only"
                    );
                }
                if acked >= TOTAL || acks.changed().await.is_err() {
                    return seen;
                }
            }
        })
    };
    // Without redelivery the agent stalls once the lost batch was the last in its window.
    tokio::time::timeout(Duration::from_secs(30), async {
        send_n(&agent, TOTAL, b"p").await;
        agent.flush().await.expect("flush");
    })
    .await
    .expect("every frame sent and acked in time");
    let acks_seen = tokio::time::timeout(Duration::from_secs(5), checker)
        .await
        .expect("checker ends")
        .expect("no ack ran ahead of the sink");
    assert!(acks_seen > 1, "acks observed: {acks_seen}");
    assert!(
        rec.writes.load(Ordering::SeqCst) > 5,
        "the sink panicked on write 5 and went on after it"
    );
    let written = rec.written.lock().clone();
    assert_eq!(
        written,
        (1..=TOTAL).collect::<Vec<_>>(),
        "every frame written exactly once, in order (the panicked batch redelivered)"
    );
    assert_eq!(agent.stats().reconnects, 0, "the session never noticed");
}

/// A raw agent: registers, keeps the control stream, and collects every control message the
/// relay sends until the connection ends.
struct RawAgent {
    conn: quinn::Connection,
    messages: Arc<Mutex<Vec<ControlMessage>>>,
    _send: quinn::SendStream,
    reader: tokio::task::JoinHandle<()>,
}

async fn raw_agent(relay: &TestRelay, agent: &str) -> RawAgent {
    let (ep, cfg) = relay.raw_client(contrail_protocol::ALPN_AGENT);
    let conn = raw::connect(&ep, cfg, relay.relay.local_addr()).await;
    let (mut send, mut recv) = conn.open_bi().await.expect("bi");
    let mut buf = BytesMut::new();
    FrameCodec::default()
        .encode(
            &ControlMessage {
                msg: Some(Msg::Register(Register {
                    agent_id: agent.into(),
                    ..Default::default()
                })),
            },
            &mut buf,
        )
        .expect("encode");
    send.write_all(&buf).await.expect("write register");
    let messages = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let messages = messages.clone();
        tokio::spawn(async move {
            let codec = FrameCodec::default();
            let mut inbuf = BytesMut::new();
            loop {
                while let Ok(Some(m)) = codec.decode_message::<ControlMessage>(&mut inbuf) {
                    messages.lock().push(m);
                }
                match recv.read_chunk(65536, true).await {
                    Ok(Some(c)) => inbuf.extend_from_slice(&c.bytes),
                    _ => return,
                }
            }
        })
    };
    poll_until_async(Duration::from_secs(5), "Registered", async || {
        messages
            .lock()
            .iter()
            .any(|m| matches!(m.msg, Some(Msg::Registered(_))))
    })
    .await;
    RawAgent {
        conn,
        messages,
        _send: send,
        reader,
    }
}

impl RawAgent {
    fn registered(&self) -> contrail_protocol::proto::Registered {
        self.messages
            .lock()
            .iter()
            .find_map(|m| match &m.msg {
                Some(Msg::Registered(r)) => Some(r.clone()),
                _ => None,
            })
            .expect("registered")
    }

    fn acks(&self) -> Vec<u64> {
        self.messages
            .lock()
            .iter()
            .filter_map(|m| match &m.msg {
                Some(Msg::Ack(a)) => Some(a.up_to_seq),
                _ => None,
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_counts_from_the_last_ack_sent_not_from_what_sinks_stored() {
    const WINDOW: u64 = 16;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.limits.max_inflight = WINDOW as u32;
    // Acks wait: 3 stored frames are below the ack-now threshold (16 / 4) and the delay is
    // far beyond the test, so the sink stores frames the agent has not been acked for.
    config.limits.idle_timeout_ms = 1_200_000;
    config.limits.ack_delay_ms = 300_000;
    let rec = Arc::new(Record::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(1)); // the first write only
    let spec = test_sink("held", &rec, usize::MAX, Some(gate.clone()));
    let relay = start_with(config, dir, vec![spec], Hooks::default()).await;
    let agent = raw_agent(&relay, "drone-window").await;
    assert_eq!(agent.registered().resume_from_seq, 0);
    assert_eq!(agent.registered().max_inflight as u64, WINDOW);
    let mut uni = agent.conn.open_uni().await.expect("uni");

    // Frames 1..=3 are stored by the sink but not acked.
    uni.write_all(&raw::frames(1, 3, b"w"))
        .await
        .expect("write");
    poll_until_async(Duration::from_secs(5), "1..=3 stored", async || {
        rec.written_prefix() == 3
    })
    .await;
    assert!(agent.acks().is_empty(), "nothing acked yet");

    // Up to last ack (0) + max_inflight = 16: accepted (forwarded to the sink, which holds
    // the write).
    uni.write_all(&raw::frames(4, WINDOW - 3, b"w"))
        .await
        .expect("write");
    poll_until_async(Duration::from_secs(5), "4..=16 forwarded", async || {
        rec.attempted.lock().last() == Some(&WINDOW)
    })
    .await;
    assert!(agent.acks().is_empty(), "still nothing acked");

    // One more: frame 17 is beyond 0 + 16, though only 16 - 3 = 13 frames are unstored.
    uni.write_all(&raw::frames(WINDOW + 1, 1, b"w"))
        .await
        .expect("write");
    let reason = match tokio::time::timeout(Duration::from_secs(5), agent.conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
            assert_eq!(
                ErrorCode::from_close_code(c.error_code.into_inner()),
                Some(ErrorCode::ProtocolViolation)
            );
            String::from_utf8_lossy(&c.reason).into_owned()
        }
        Ok(other) => panic!("expected an application close, got {other}"),
        Err(_) => panic!("frame 17 (beyond last ack 0 + max_inflight 16) was accepted"),
    };
    for part in [
        "frame 17",
        "max_inflight (16)",
        "last ack sent (0)",
        "seq <= 16",
    ] {
        assert!(
            reason.contains(part),
            "close reason {reason:?} lacks {part:?}"
        );
    }
    // The Error message arrived on the control stream before the close and says the same.
    let _ = tokio::time::timeout(Duration::from_secs(1), agent.reader).await;
    let errors: Vec<_> = agent
        .messages
        .lock()
        .iter()
        .filter_map(|m| match &m.msg {
            Some(Msg::Error(e)) => Some(e.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "one Error message before the close: {errors:?}"
    );
    assert_eq!(errors[0].code, ErrorCode::ProtocolViolation as i32);
    assert_eq!(errors[0].message, reason);
    // What was accepted is written once the sink moves on; frame 17 never is.
    gate.add_permits(1_000);
    poll_until_async(Duration::from_secs(5), "1..=16 written", async || {
        rec.written_prefix() == WINDOW
    })
    .await;
    assert_eq!(rec.written.lock().clone(), (1..=WINDOW).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_zero_is_a_protocol_violation() {
    let (relay, _rx) = start_with_channel(64).await;
    let agent = raw_agent(&relay, "drone-zero").await;
    let mut uni = agent.conn.open_uni().await.expect("uni");
    uni.write_all(&raw::frames(0, 2, b"z"))
        .await
        .expect("write");
    match tokio::time::timeout(Duration::from_secs(5), agent.conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
            assert_eq!(
                ErrorCode::from_close_code(c.error_code.into_inner()),
                Some(ErrorCode::ProtocolViolation)
            );
            let reason = String::from_utf8_lossy(&c.reason).into_owned();
            assert!(reason.contains("seq 0"), "{reason}");
        }
        Ok(other) => panic!("expected an application close, got {other}"),
        Err(_) => panic!("seq 0 was accepted"),
    }
}
