//! A `select!` branch that is polled only when its own waker fired.
//!
//! `tokio::select!` polls every branch whenever the task wakes. A relay session's control
//! loop wakes for acks far more often than its agent writes on the control stream, and an
//! agent's session task wakes for every frame it writes while acks arrive a few times a
//! second; each poll of a quinn stream read locks the connection, looks the stream up and
//! re-registers a waker (≈ 5% of relay CPU in `fleet`). A [`WakeGate`] gives the read a waker
//! of its own and skips the poll while that waker has not fired.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// Whether the gated branch was woken since it last returned `Pending`, and the task to wake.
#[derive(Debug)]
pub struct WakeGate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl WakeGate {
    /// A gate whose first poll goes through.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        })
    }

    /// Polls `fut` if its waker fired since it last returned `Pending` (or it never ran);
    /// otherwise returns `Pending` at once. After `Ready` the next future is polled: it may
    /// find data the previous one left buffered.
    fn poll<F: Future>(
        self: &Arc<Self>,
        fut: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<F::Output> {
        // Register first: a wake between here and the poll below then reaches this task.
        self.task.register(cx.waker());
        if !self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(self.clone());
        let out = fut.poll(&mut Context::from_waker(&waker));
        if out.is_ready() {
            self.woken.store(true, Ordering::Release);
        }
        out
    }

    /// `fut`, polled only through this gate.
    pub fn run<F: Future>(self: &Arc<Self>, fut: F) -> Gated<'_, F> {
        Gated { gate: self, fut }
    }
}

pin_project_lite::pin_project! {
    /// A future polled through a [`WakeGate`] ([`WakeGate::run`]). A struct rather than an
    /// `async fn`: an async wrapper would hold the wrapped future twice (argument and pinned
    /// local), which every idle session's task pays for.
    #[must_use = "futures do nothing unless polled"]
    pub struct Gated<'a, F> {
        gate: &'a Arc<WakeGate>,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for Gated<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.gate.poll(this.fut, cx)
    }
}

impl Wake for WakeGate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A future that counts its polls and is ready once `ready` is set (waking whoever polled).
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn the_inner_future_is_polled_only_after_its_own_wake() {
        let gate = WakeGate::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let inner_waker = Arc::new(std::sync::Mutex::new(None));
        let mut probe = Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: inner_waker.clone(),
        };
        let task_wakes = Arc::new(CountWakes::default());
        let task_waker = Waker::from(task_wakes.clone());
        let mut cx = Context::from_waker(&task_waker);

        assert!(gate.poll(Pin::new(&mut probe), &mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "the first poll goes through"
        );
        for _ in 0..5 {
            // The task woke for another branch: the probe is not polled.
            assert!(gate.poll(Pin::new(&mut probe), &mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);

        ready.store(true, Ordering::SeqCst);
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(
            task_wakes.0.load(Ordering::SeqCst),
            1,
            "its wake reaches the task"
        );
        assert!(gate.poll(Pin::new(&mut probe), &mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        // After Ready the next future is polled straight away (it may find buffered data).
        assert!(gate.poll(Pin::new(&mut probe), &mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }

    #[derive(Default)]
    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
