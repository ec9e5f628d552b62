//! Heap bytes per idle session for three ways of keeping "every session is a supervised unit":
//!
//! - `ractor`: what the relay does (relay/src/session): a ractor actor per session, spawned
//!   linked to a supervisor actor, owning its driver task (a tokio task) and hearing from it by
//!   `cast` when it ends; the supervisor gets `ActorTerminated` / `ActorFailed` events.
//! - `task`: a lighter design with the same guarantees: the driver task itself is the session,
//!   wrapped in `catch_unwind`; how it ended goes to the supervisor over one channel shared by
//!   all sessions; the supervisor keeps an `AbortHandle` and a stop handle per session.
//! - `bare`: the driver task alone, unsupervised (the floor both of the above sit on).
//!
//! Every session's driver is the same idle future (it waits for its stop signal), so the
//! differences are the cost of the supervision machinery. Whether the ractor under test is the
//! registry's or third_party/ractor is decided by how this crate is built (see
//! benches/scripts/actor-mem.sh). Heap figures come from dhat (bytes live after N sessions are
//! up, minus before, divided by N). CPU per session start+stop is measured first, before the
//! dhat profiler starts (dhat only records while a profiler is live): CPU time of the one
//! runtime thread (`/proc/thread-self/schedstat`) over N starts and stops, median of 5 rounds.
//!
//!     cargo run --release -- [N]    (default 10000)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// What a session's driver would share with the rest of the relay (as `SessionShared`).
#[derive(Default)]
struct Shared {
    stop: Notify,
}

/// The idle driver: waits until told to stop.
async fn driver(shared: Arc<Shared>) {
    shared.stop.notified().await;
}

// ---- ractor: the relay's shape -------------------------------------------------------------

struct Supervisor;

impl Actor for Supervisor {
    type Msg = ();
    type State = usize;
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<usize, ActorProcessingErr> {
        Ok(0)
    }
    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        ev: SupervisionEvent,
        ended: &mut usize,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorTerminated(..) | SupervisionEvent::ActorFailed(..) = ev {
            *ended += 1;
        }
        Ok(())
    }
}

enum SessionMsg {
    DriverEnded,
}

struct SessionActor;

struct SessionState {
    _shared: Arc<Shared>,
    driver: Option<tokio::task::JoinHandle<()>>,
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = Arc<Shared>;
    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        shared: Arc<Shared>,
    ) -> Result<SessionState, ActorProcessingErr> {
        let me = myself.clone();
        let task = tokio::spawn(
            std::panic::AssertUnwindSafe(driver(shared.clone()))
                .catch_unwind()
                .map(move |_| {
                    let _ = me.cast(SessionMsg::DriverEnded);
                }),
        );
        Ok(SessionState {
            _shared: shared,
            driver: Some(task),
        })
    }
    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::DriverEnded => {
                state.driver = None;
                myself.stop(None);
            }
        }
        Ok(())
    }
}

// ---- task: a lighter design ----------------------------------------------------------------

/// How a session ended, as the supervisor hears it.
struct Ended {
    id: u64,
    _panicked: bool,
}

/// The supervisor's entry per session.
struct Entry {
    _abort: AbortHandle,
    shared: Arc<Shared>,
}

fn spawn_task_session(id: u64, shared: Arc<Shared>, ended: mpsc::UnboundedSender<Ended>) -> Entry {
    let task = tokio::spawn(
        std::panic::AssertUnwindSafe(driver(shared.clone()))
            .catch_unwind()
            .map(move |res| {
                let _ = ended.send(Ended {
                    id,
                    _panicked: res.is_err(),
                });
            }),
    );
    Entry {
        _abort: task.abort_handle(),
        shared,
    }
}

// ---- measurement ---------------------------------------------------------------------------

/// CPU time of this thread, ns (the runtime is single-threaded).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Whether the dhat profiler runs (its stats may only be read then).
static PROFILING: AtomicBool = AtomicBool::new(false);

fn live_bytes() -> u64 {
    if PROFILING.load(Ordering::Relaxed) {
        dhat::HeapStats::get().curr_bytes as u64
    } else {
        0
    }
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

async fn measure_ractor(n: usize) -> (f64, f64) {
    let (sup, _) = Actor::spawn(None, Supervisor, ())
        .await
        .expect("supervisor");
    let cell: ActorCell = sup.get_cell();
    let mut shared = Vec::with_capacity(n);
    let mut refs = Vec::with_capacity(n);
    for _ in 0..n {
        shared.push(Arc::new(Shared::default()));
    }
    settle().await;
    let before = live_bytes();
    let t0 = Instant::now();
    let c0 = thread_cpu_ns();
    for s in &shared {
        let (r, _) = Actor::spawn_linked(None, SessionActor, s.clone(), cell.clone())
            .await
            .expect("spawn");
        refs.push(r);
    }
    settle().await;
    let per = (live_bytes() - before) as f64 / n as f64;
    for s in &shared {
        s.stop.notify_one();
    }
    for r in refs.drain(..) {
        // As the supervisor's registry would, wait for each session to be gone.
        while r.get_status() != ractor::ActorStatus::Stopped {
            tokio::task::yield_now().await;
        }
    }
    let cpu = (thread_cpu_ns() - c0) as f64 / 1e3 / n as f64;
    let _wall = t0.elapsed();
    sup.stop(None);
    (per, cpu)
}

async fn measure_task(n: usize) -> (f64, f64) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Ended>();
    let mut shared = Vec::with_capacity(n);
    for _ in 0..n {
        shared.push(Arc::new(Shared::default()));
    }
    // Grown as sessions come, as ractor's child map is.
    let mut registry: HashMap<u64, Entry> = HashMap::new();
    settle().await;
    let before = live_bytes();
    let t0 = Instant::now();
    let c0 = thread_cpu_ns();
    for (i, s) in shared.iter().enumerate() {
        registry.insert(
            i as u64,
            spawn_task_session(i as u64, s.clone(), tx.clone()),
        );
    }
    settle().await;
    let per = (live_bytes() - before) as f64 / n as f64;
    for e in registry.values() {
        e.shared.stop.notify_one();
    }
    while !registry.is_empty() {
        let ended = rx.recv().await.expect("ended");
        registry.remove(&ended.id);
    }
    let cpu = (thread_cpu_ns() - c0) as f64 / 1e3 / n as f64;
    let _wall = t0.elapsed();
    (per, cpu)
}

async fn measure_bare(n: usize) -> f64 {
    let mut shared = Vec::with_capacity(n);
    for _ in 0..n {
        shared.push(Arc::new(Shared::default()));
    }
    let mut handles = Vec::with_capacity(n);
    settle().await;
    let before = live_bytes();
    for s in &shared {
        handles.push(tokio::spawn(driver(s.clone())));
    }
    settle().await;
    let per = (live_bytes() - before) as f64 / n as f64;
    for s in &shared {
        s.stop.notify_one();
    }
    for h in handles {
        let _ = h.await;
    }
    per
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // CPU first, without the profiler (heap figures from these rounds are not read).
        let (mut task_cpu, mut actor_cpu) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            task_cpu.push(measure_task(n).await.1);
            actor_cpu.push(measure_ractor(n).await.1);
        }
        let (task_us, actor_us) = (median(task_cpu), median(actor_cpu));
        let _profiler = dhat::Profiler::builder().testing().build();
        PROFILING.store(true, Ordering::Relaxed);
        let bare = measure_bare(n).await;
        let task = measure_task(n).await.0;
        let actor = measure_ractor(n).await.0;
        println!("sessions: {n}");
        println!("bare driver task        heap/session {bare:7.0} B");
        println!(
            "supervised task         heap/session {task:7.0} B  (+{:.0} B over bare)  CPU per start+stop {task_us:.1} us",
            task - bare
        );
        println!(
            "ractor actor + driver   heap/session {actor:7.0} B  (+{:.0} B over bare)  CPU per start+stop {actor_us:.1} us",
            actor - bare
        );
    });
}
