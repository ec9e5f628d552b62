//! The run's timeline, the same for every target:
//!
//! 1. start the subscriber (e2e) and wait until it is subscribed;
//! 2. start agents, spread over `ramp_up`, at most `connect_concurrency` connecting at once;
//! 3. once every agent has connected (or failed), read the relay's RSS, warm up, then measure
//!    for `duration` (counters and CPU snapshotted at both ends; latencies are recorded only for
//!    frames sent inside the window);
//! 4. stop the agents, which wait (bounded) for their acks; let the subscriber settle until it
//!    saw every acked frame or went quiet; account loss and duplicates exactly per agent.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::ctx::{AgentEnd, RunCtx};
use crate::deliveries::{losses, DeliveryBook};
use crate::hist::{new_hist, Percentiles};
use crate::report::{
    ConnectReport, E2eSplit, IdleReport, IntervalReport, RelayReport, Report, Throughput, Totals,
};
use crate::{brokers, contrail, procfs};

/// Longest wait, after the agents stop, for the subscriber to receive the acked frames.
const SETTLE_MAX: Duration = Duration::from_secs(60);

/// Longest the connect phase waits without any agent finishing its connect attempt (agents
/// bound each attempt themselves; this catches agent tasks that ended without reporting, e.g.
/// after a panic, or that hang).
const CONNECT_STALL_MAX: Duration = Duration::from_secs(60);

/// How the wait for every agent's connect attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectWait {
    /// Every agent reported its attempt.
    AllReported,
    /// Every agent task ended, `missing` of them without reporting (panicked).
    TasksEnded { missing: u64 },
    /// `missing` agents reported nothing for [`CONNECT_STALL_MAX`].
    Stalled { missing: u64 },
}

/// Waits until `n` connect attempts were reported in `done`, every task in `agents` ended, or
/// no attempt was reported for `stall`.
async fn wait_for_connects<T>(
    done: &std::sync::atomic::AtomicU64,
    n: u64,
    agents: &[JoinHandle<T>],
    stall: Duration,
) -> ConnectWait {
    let mut last = done.load(Relaxed);
    let mut last_progress = tokio::time::Instant::now();
    loop {
        let now_done = done.load(Relaxed);
        if now_done >= n {
            return ConnectWait::AllReported;
        }
        if agents.iter().all(JoinHandle::is_finished) {
            // Re-read: a task may have reported just before it ended.
            let now_done = done.load(Relaxed);
            if now_done >= n {
                return ConnectWait::AllReported;
            }
            return ConnectWait::TasksEnded {
                missing: n - now_done,
            };
        }
        if now_done != last {
            last = now_done;
            last_progress = tokio::time::Instant::now();
        } else if last_progress.elapsed() >= stall {
            return ConnectWait::Stalled {
                missing: n - now_done,
            };
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What the agents talk to.
#[derive(Clone)]
pub enum Driver {
    /// A Contrail relay.
    Contrail(contrail::Target),
    /// An MQTT broker or NATS server.
    Broker(brokers::Target),
}

impl Driver {
    fn name(&self) -> String {
        match self {
            Driver::Contrail(_) => "contrail".into(),
            Driver::Broker(b) => b.name(),
        }
    }

    fn has_acks(&self) -> bool {
        match self {
            Driver::Contrail(_) => true,
            Driver::Broker(b) => b.has_acks(),
        }
    }

    fn spawn_agent(
        &self,
        ctx: &Arc<RunCtx>,
        idx: usize,
        payload: &Arc<[u8]>,
        gate: &Arc<Semaphore>,
        stop: &watch::Receiver<bool>,
    ) -> JoinHandle<AgentEnd> {
        let (ctx, payload, gate, stop) = (ctx.clone(), payload.clone(), gate.clone(), stop.clone());
        match self {
            Driver::Contrail(t) => {
                let t = t.clone();
                tokio::spawn(
                    async move { contrail::run_agent(t, ctx, idx, payload, gate, stop).await },
                )
            }
            Driver::Broker(t) => {
                let t = t.clone();
                tokio::spawn(
                    async move { brokers::run_agent(t, ctx, idx, payload, gate, stop).await },
                )
            }
        }
    }

    /// Starts the subscriber: on a thread and single-threaded runtime of its own
    /// (`own_thread`), so that the e2e measurement does not queue behind the agents' tasks
    /// on a saturated runtime (the kernel schedules the thread as soon as it wakes), or as a
    /// task beside the agents.
    fn spawn_subscriber(
        &self,
        ctx: &Arc<RunCtx>,
        ready: oneshot::Sender<anyhow::Result<()>>,
        done: watch::Receiver<bool>,
        own_thread: bool,
    ) -> JoinHandle<anyhow::Result<DeliveryBook>> {
        let ctx = ctx.clone();
        let driver = self.clone();
        let sub = async move {
            match driver {
                Driver::Contrail(t) => contrail::run_subscriber(t, ctx, ready, done).await,
                Driver::Broker(t) => brokers::run_subscriber(t, ctx, ready, done).await,
            }
        };
        if !own_thread {
            return tokio::spawn(sub);
        }
        let (tx, rx) = oneshot::channel();
        // A failed spawn drops `ready` with the future: the run then reports no subscriber.
        let thread = std::thread::Builder::new()
            .name("lg-subscriber".into())
            .spawn(move || {
                let r = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| rt.block_on(sub));
                let _ = tx.send(r);
            });
        tokio::spawn(async move {
            let thread = thread?;
            let r = rx.await;
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            r.unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "the subscriber thread ended without a result"
                ))
            })
        })
    }
}

/// Options that are not part of the scenario.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Measure e2e with a subscriber.
    pub e2e: bool,
    /// Local relay (or broker) process to read RSS and CPU from.
    pub relay_pid: Option<u32>,
    /// No progress line.
    pub quiet: bool,
    /// The command line, for the report.
    pub command: String,
    /// Run the subscriber on a thread and runtime of its own (see `Driver::spawn_subscriber`).
    pub subscriber_thread: bool,
}

struct Snapshot {
    at_ns: u64,
    sent: u64,
    acked: u64,
    delivered: u64,
    cpu_ns: Option<u64>,
    own_cpu_ns: Option<u64>,
    udp_datagrams: Option<u64>,
    udp_rcvbuf_errors: Option<u64>,
}

fn snapshot(ctx: &RunCtx, pid: Option<u32>) -> Snapshot {
    Snapshot {
        at_ns: ctx.now_ns(),
        sent: ctx.sent.load(Relaxed),
        acked: ctx.acked.load(Relaxed),
        delivered: ctx.delivered.load(Relaxed),
        cpu_ns: pid.and_then(procfs::cpu_ns),
        own_cpu_ns: procfs::cpu_ns(std::process::id()),
        udp_datagrams: procfs::udp_in_datagrams(),
        udp_rcvbuf_errors: procfs::udp_rcvbuf_errors(),
    }
}

async fn sleep_until_ns(ctx: &RunCtx, ns: u64) {
    tokio::time::sleep_until(ctx.at(ns).into()).await;
}

/// Runs the plan against `driver` and returns the report.
pub async fn execute(ctx: Arc<RunCtx>, driver: Driver, opts: RunOptions) -> Report {
    let plan = ctx.plan.clone();
    let n = plan.agents;
    let pid = opts.relay_pid;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);

    // 1. Subscriber.
    let mut e2e_note = None;
    let mut subscriber = None;
    if opts.e2e {
        let (ready_tx, ready_rx) = oneshot::channel();
        let handle =
            driver.spawn_subscriber(&ctx, ready_tx, done_rx.clone(), opts.subscriber_thread);
        match ready_rx.await {
            Ok(Ok(())) => subscriber = Some(handle),
            Ok(Err(e)) => {
                e2e_note = Some(format!("no subscriber: {e:#}"));
                eprintln!("warning: e2e disabled: {e:#}");
            }
            Err(_) => e2e_note = Some("subscriber task ended before subscribing".into()),
        }
    } else {
        e2e_note = Some("disabled (--no-e2e)".into());
    }

    // 2. Agents (streaming ones start at once unless the plan has an idle phase).
    if plan.idle_phase.is_zero() {
        ctx.go.send_replace(true);
    }
    let rss_before = pid.and_then(procfs::rss_kib);
    let progress = (!opts.quiet).then(|| tokio::spawn(progress_loop(ctx.clone(), done_rx.clone())));
    let payload: Arc<[u8]> = (0..plan.payload).map(|i| (i % 251) as u8).collect();
    let gate = Arc::new(Semaphore::new(plan.connect_concurrency));
    let connect_start = ctx.now_ns();
    let connect_cpu_start = (
        pid.and_then(procfs::cpu_ns),
        procfs::cpu_ns(std::process::id()),
    );
    let spacing = plan.ramp_up.as_nanos() as u64 / n.max(1) as u64;
    let mut agents = Vec::with_capacity(n);
    for idx in 0..n {
        if spacing > 0 {
            sleep_until_ns(&ctx, connect_start + spacing * idx as u64).await;
        }
        agents.push(driver.spawn_agent(&ctx, idx, &payload, &gate, &stop_rx));
    }
    match wait_for_connects(&ctx.connects_done, n as u64, &agents, CONNECT_STALL_MAX).await {
        ConnectWait::AllReported => {}
        ConnectWait::TasksEnded { missing } => {
            eprintln!("warning: {missing} agent tasks ended without a connect result");
            (0..missing).for_each(|_| ctx.error("AGENT_TASK_ENDED"));
        }
        ConnectWait::Stalled { missing } => {
            eprintln!(
                "warning: {missing} agents reported no connect result for {CONNECT_STALL_MAX:?}; \
                 measuring without them"
            );
            (0..missing).for_each(|_| ctx.error("CONNECT_STALLED"));
        }
    }
    let connect_end = ctx.last_connect_ns.load(Relaxed).max(connect_start + 1);
    let connected = ctx.sessions_up.load(Relaxed);
    // CPU per connect (relay and loadgen): a steadier measure of handshake cost than the
    // rate, which also depends on what else the machine is doing.
    let connect_cpu_us = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if connected > 0 => {
            Some(b.saturating_sub(a) as f64 / 1e3 / connected as f64)
        }
        _ => None,
    };
    let relay_cpu_us_per_connect =
        connect_cpu_us(connect_cpu_start.0, pid.and_then(procfs::cpu_ns));
    let loadgen_cpu_us_per_connect =
        connect_cpu_us(connect_cpu_start.1, procfs::cpu_ns(std::process::id()));
    let rss_connected = match pid {
        Some(p) => {
            // Let handshakes' transient buffers go before reading the idle footprint.
            tokio::time::sleep(Duration::from_secs(2)).await;
            procfs::rss_kib(p)
        }
        None => None,
    };

    // 2b. Every agent idle (heartbeats only) for the idle phase, then streaming starts.
    let idle = if plan.idle_phase.is_zero() {
        None
    } else {
        Some(idle_phase(&ctx, pid, plan.idle_phase, connected).await)
    };
    ctx.go.send_replace(true);

    // 3. Warm-up and measured window.
    let from = ctx.now_ns() + plan.warmup.as_nanos() as u64;
    let to = from + plan.duration.as_nanos() as u64;
    ctx.set_window(from, to);
    sleep_until_ns(&ctx, from).await;
    let start = snapshot(&ctx, pid);
    let mut intervals = Vec::new();
    if !plan.interval.is_zero() {
        let step = plan.interval.as_nanos() as u64;
        let (mut prev_ack, mut prev_e2e) = (new_hist(), new_hist());
        let mut prev = snapshot(&ctx, pid);
        let mut t = from + step;
        while t <= to {
            sleep_until_ns(&ctx, t).await;
            let cur = snapshot(&ctx, pid);
            let (ack, e2e) = (ctx.ack_hist.snapshot(), ctx.e2e_hist.snapshot());
            let (mut d_ack, mut d_e2e) = (ack.clone(), e2e.clone());
            let _ = d_ack.subtract(&prev_ack);
            let _ = d_e2e.subtract(&prev_e2e);
            let secs = (cur.at_ns - prev.at_ns) as f64 / 1e9;
            let i = IntervalReport {
                at_s: (t - from) as f64 / 1e9,
                acked_per_s: (cur.acked - prev.acked) as f64 / secs,
                ack_latency: Percentiles::of(&d_ack),
                e2e_latency: Percentiles::of(&d_e2e),
                rss_kib: pid.and_then(procfs::rss_kib),
            };
            eprintln!(
                "interval {:>7.1}s  acked {:.0}/s  ack p99 {:.3} ms  e2e p99 {:.3} ms  rss {:?} KiB",
                i.at_s,
                i.acked_per_s,
                i.ack_latency.p99_us / 1e3,
                i.e2e_latency.p99_us / 1e3,
                i.rss_kib
            );
            intervals.push(i);
            (prev_ack, prev_e2e, prev) = (ack, e2e, cur);
            t += step;
        }
    }
    sleep_until_ns(&ctx, to).await;
    let end = snapshot(&ctx, pid);
    let rss_end = pid.and_then(procfs::rss_kib);

    // 4. Stop, drain, settle, account.
    let _ = stop_tx.send(true);
    let mut ends = Vec::with_capacity(n);
    for a in agents {
        ends.push(a.await.unwrap_or_default());
    }
    let has_acks = driver.has_acks();
    let reference: Vec<u64> = ends
        .iter()
        .map(|e| if has_acks { e.acked } else { e.sent })
        .collect();
    let expected: u64 = reference.iter().sum();
    if subscriber.is_some() {
        let mut last = ctx.delivered.load(Relaxed);
        let mut quiet_since = tokio::time::Instant::now();
        // Wait while deliveries still progress (a saturated run can have tens of seconds of
        // acked frames queued for the subscriber; stopping at 15 s counted them as lost),
        // stop after 2 s without progress or at the cap.
        let deadline = tokio::time::Instant::now() + SETTLE_MAX;
        while tokio::time::Instant::now() < deadline {
            let d = ctx.delivered.load(Relaxed);
            if d >= expected {
                break;
            }
            if d != last {
                last = d;
                quiet_since = tokio::time::Instant::now();
            } else if quiet_since.elapsed() > Duration::from_secs(2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = done_tx.send(true);
    if let Some(p) = progress {
        let _ = p.await;
    }
    let book = match subscriber {
        Some(h) => match h.await {
            Ok(Ok(book)) => Some(book),
            Ok(Err(e)) => {
                e2e_note = Some(format!("subscriber failed: {e:#}"));
                None
            }
            Err(e) => {
                e2e_note = Some(format!("subscriber task: {e}"));
                None
            }
        },
        None => None,
    };

    let secs = (end.at_ns - start.at_ns) as f64 / 1e9;
    // Frames the per-frame figures divide by: acked over the window (sent, without acks).
    let window_frames = if has_acks {
        end.acked - start.acked
    } else {
        end.sent - start.sent
    };
    let per_s = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / secs;
    let sent_total: u64 = ends.iter().map(|e| e.sent).sum();
    let acked_total: u64 = ends.iter().map(|e| e.acked).sum();
    let errors = ctx.errors();
    let error_count: u64 = errors.values().sum();
    let connect_secs = (connect_end - connect_start) as f64 / 1e9;
    let ack = ctx.ack_hist.snapshot();
    let e2e = ctx.e2e_hist.snapshot();
    let totals = Totals {
        sent: sent_total,
        acked: has_acks.then_some(acked_total),
        delivered: book.as_ref().map(|b| b.totals().0),
        lost: book.as_ref().map(|b| losses(b, &reference)),
        duplicates: book.as_ref().map(|b| b.totals().1),
        unacked_at_end: has_acks.then_some(sent_total.saturating_sub(acked_total)),
    };
    let relay = pid.map(|pid| {
        let before = rss_before.unwrap_or(0);
        let connected_kib = rss_connected.unwrap_or(0);
        let cpu = match (start.cpu_ns, end.cpu_ns) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        RelayReport {
            pid,
            rss_before_kib: before,
            rss_connected_kib: connected_kib,
            rss_end_kib: rss_end.unwrap_or(0),
            rss_per_session_kib: if connected > 0 {
                connected_kib.saturating_sub(before) as f64 / connected as f64
            } else {
                0.0
            },
            cpu_ns_per_frame: cpu
                .filter(|_| window_frames > 0)
                .map(|c| c as f64 / window_frames as f64),
            cpu_cores: cpu.map_or(0.0, |c| c as f64 / 1e9 / secs),
        }
    });
    let mut report = Report {
        scenario: plan.name.clone(),
        target: driver.name(),
        command: opts.command,
        agents: n,
        rate: plan.rate.to_string(),
        payload_bytes: plan.payload,
        duration_s: secs,
        sessions_connected: connected,
        connect: ConnectReport {
            per_s: connected as f64 / connect_secs,
            seconds: connect_secs,
            latency: Percentiles::of(&ctx.connect_hist.snapshot()),
            relay_cpu_us_per_connect,
            loadgen_cpu_us_per_connect,
        },
        throughput: Throughput {
            sent_per_s: per_s(start.sent, end.sent),
            acked_per_s: has_acks.then(|| per_s(start.acked, end.acked)),
            delivered_per_s: book.as_ref().map(|_| per_s(start.delivered, end.delivered)),
        },
        totals,
        ack_latency: (has_acks && !ack.is_empty()).then(|| Percentiles::of(&ack)),
        e2e_latency: book.as_ref().map(|_| Percentiles::of(&e2e)),
        e2e_split: {
            let some =
                |h: hdrhistogram::Histogram<u64>| (!h.is_empty()).then(|| Percentiles::of(&h));
            let split = E2eSplit {
                send_lag: some(ctx.send_lag_hist.snapshot()),
                handoff_to_subscriber: some(ctx.handoff_hist.snapshot()),
                to_relay: some(ctx.to_relay_hist.snapshot()),
                relay_to_subscriber: some(ctx.from_relay_hist.snapshot()),
            };
            (split.send_lag.is_some() || split.handoff_to_subscriber.is_some()).then_some(split)
        },
        e2e_note,
        error_rate: error_count as f64 / sent_total.max(1) as f64,
        errors,
        nacks: ctx.nacks.load(Relaxed),
        reconnects: ctx.reconnects.load(Relaxed),
        relay,
        loadgen_cpu_cores: match (start.own_cpu_ns, end.own_cpu_ns) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9 / secs,
            _ => 0.0,
        },
        udp_datagrams_per_frame: match (start.udp_datagrams, end.udp_datagrams) {
            (Some(a), Some(b)) => {
                (window_frames > 0).then(|| b.saturating_sub(a) as f64 / window_frames as f64)
            }
            _ => None,
        },
        udp_rcvbuf_errors: match (start.udp_rcvbuf_errors, end.udp_rcvbuf_errors) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        intervals,
        idle,
        verdict: Default::default(),
    };
    report.judge(plan.max_error_rate);
    report
}

/// Waits `len` with every agent idle and reports what the relay and this process spent.
async fn idle_phase(ctx: &RunCtx, pid: Option<u32>, len: Duration, sessions: u64) -> IdleReport {
    let a = snapshot(ctx, pid);
    eprintln!("idle phase: {sessions} sessions idle for {len:?}");
    tokio::time::sleep(len).await;
    let b = snapshot(ctx, pid);
    let secs = (b.at_ns - a.at_ns) as f64 / 1e9;
    let cores = |x: Option<u64>, y: Option<u64>| match (x, y) {
        (Some(x), Some(y)) => Some(y.saturating_sub(x) as f64 / 1e9 / secs),
        _ => None,
    };
    IdleReport {
        seconds: secs,
        sessions,
        relay_cpu_cores: cores(a.cpu_ns, b.cpu_ns),
        relay_rss_kib: pid.and_then(procfs::rss_kib),
        loadgen_cpu_cores: cores(a.own_cpu_ns, b.own_cpu_ns),
        udp_datagrams_per_s: match (a.udp_datagrams, b.udp_datagrams) {
            (Some(x), Some(y)) => Some(y.saturating_sub(x) as f64 / secs),
            _ => None,
        },
    }
}

/// One line per second on stderr: elapsed, sessions up, frames/s, p99 so far.
async fn progress_loop(ctx: Arc<RunCtx>, mut done: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut prev = snapshot(&ctx, None);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = done.wait_for(|d| *d) => return,
        }
        let cur = snapshot(&ctx, None);
        let secs = (cur.at_ns - prev.at_ns) as f64 / 1e9;
        let p99 = |h: &crate::hist::ShardedHist| {
            let s = h.snapshot();
            if s.is_empty() {
                "-".to_string()
            } else {
                format!("{:.2}ms", s.value_at_quantile(0.99) as f64 / 1e6)
            }
        };
        eprintln!(
            "[{:>6.1}s] sessions {:>6}/{}  sent {:>9.0}/s  acked {:>9.0}/s  delivered {:>9.0}/s  ack p99 {}  e2e p99 {}",
            cur.at_ns as f64 / 1e9,
            ctx.sessions_up.load(Relaxed),
            ctx.plan.agents,
            (cur.sent - prev.sent) as f64 / secs,
            (cur.acked - prev.acked) as f64 / secs,
            (cur.delivered - prev.delivered) as f64 / secs,
            p99(&ctx.ack_hist),
            p99(&ctx.e2e_hist),
        );
        prev = cur;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    #[tokio::test]
    async fn a_panicked_agent_task_does_not_hang_the_connect_phase() {
        let done = Arc::new(AtomicU64::new(0));
        let mut agents = Vec::new();
        for i in 0..3u64 {
            let done = done.clone();
            agents.push(tokio::spawn(async move {
                if i == 1 {
                    panic!("agent {i} panics before reporting");
                }
                done.fetch_add(1, Relaxed);
            }));
        }
        let r = wait_for_connects(&done, 3, &agents, Duration::from_secs(3600)).await;
        assert_eq!(r, ConnectWait::TasksEnded { missing: 1 });
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_agent_task_ends_the_wait_after_the_stall_bound() {
        let done = Arc::new(AtomicU64::new(1));
        let hung = tokio::spawn(std::future::pending::<()>());
        let agents = vec![hung];
        let r = wait_for_connects(&done, 2, &agents, Duration::from_secs(60)).await;
        assert_eq!(r, ConnectWait::Stalled { missing: 1 });
        agents[0].abort();
    }

    #[tokio::test]
    async fn every_report_ends_the_wait_at_once() {
        let done = AtomicU64::new(2);
        let agents: Vec<JoinHandle<()>> = vec![tokio::spawn(std::future::pending())];
        let r = wait_for_connects(&done, 2, &agents, Duration::from_secs(3600)).await;
        assert_eq!(r, ConnectWait::AllReported);
        agents[0].abort();
    }
}
