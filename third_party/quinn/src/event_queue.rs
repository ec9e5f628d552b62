//! Contrail patch: the endpoint-to-connection event queue.
//!
//! Upstream uses a `tokio::sync::mpsc::unbounded_channel` per connection. Tokio allocates the
//! first block of such a channel (32 slots of `ConnectionEvent`, ≈ 6.5 KiB) when the channel is
//! created and keeps it for the channel's lifetime, so every idle connection held it. This
//! queue holds no event memory while empty: the endpoint pushes into a `VecDeque` under a
//! mutex and the connection driver takes the whole queue at once, so a burst of events costs
//! one allocation and one lock round per wake-up, not per event.
//!
//! It is exactly as unbounded as the channel it replaces: the endpoint driver only forwards
//! datagrams it received for the connection, bounded by its receive budget per wake-up.

use std::collections::VecDeque;
use std::fmt;
use std::mem;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

struct State<T> {
    queue: VecDeque<T>,
    waker: Option<Waker>,
    sender_alive: bool,
    receiver_alive: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // critical section is a single push, take or flag write).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates a queue with one sender and one receiver.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            waker: None,
            sender_alive: true,
            receiver_alive: true,
        }),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// The endpoint's side.
pub(crate) struct Sender<T>(Arc<Shared<T>>);

impl<T> Sender<T> {
    /// Queues `value`; gives it back when the receiver is gone.
    pub(crate) fn send(&self, value: T) -> Result<(), T> {
        let waker = {
            let mut state = self.0.lock();
            if !state.receiver_alive {
                return Err(value);
            }
            state.queue.push_back(value);
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.0.lock();
            state.sender_alive = false;
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

/// The connection driver's side.
pub(crate) struct Receiver<T>(Arc<Shared<T>>);

impl<T> Receiver<T> {
    /// Takes every queued event. `Ready(None)` once the sender is gone and the queue is empty;
    /// `Pending` (with `cx`'s waker registered) when nothing is queued.
    pub(crate) fn poll_recv_all(&mut self, cx: &mut Context<'_>) -> Poll<Option<VecDeque<T>>> {
        let mut state = self.0.lock();
        if !state.queue.is_empty() {
            return Poll::Ready(Some(mem::take(&mut state.queue)));
        }
        if !state.sender_alive {
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let queued = {
            let mut state = self.0.lock();
            state.receiver_alive = false;
            state.waker = None;
            mem::take(&mut state.queue)
        };
        // Drop queued events outside the lock.
        drop(queued);
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct CountWake(AtomicUsize);
    impl Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn delivers_in_order_wakes_and_ends() {
        let counter = Arc::new(CountWake(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let (tx, mut rx) = channel::<u32>();
        assert!(rx.poll_recv_all(&mut cx).is_pending());
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "woken once per registration");
        match rx.poll_recv_all(&mut cx) {
            Poll::Ready(Some(q)) => assert_eq!(q.into_iter().collect::<Vec<_>>(), vec![1, 2]),
            other => panic!("expected events, got {:?}", other.map(|o| o.map(|q| q.len()))),
        }
        assert!(rx.poll_recv_all(&mut cx).is_pending());
        drop(tx);
        assert_eq!(counter.0.load(Ordering::SeqCst), 2, "sender drop wakes");
        assert!(matches!(rx.poll_recv_all(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn send_after_receiver_drop_fails() {
        let (tx, rx) = channel::<u32>();
        drop(rx);
        assert_eq!(tx.send(7), Err(7));
    }
}
