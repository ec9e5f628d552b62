//! Contrail patch: the unbounded MPSC queue behind an actor's supervision and message ports.
//!
//! Upstream uses `tokio::sync::mpsc::unbounded_channel`, which allocates its first block (32
//! slots) when the channel is created and keeps it while the channel lives: ≈ 3.3 KiB for the
//! two ports of every actor, idle or not. This queue holds no slot memory while empty (the
//! `VecDeque` is released when the last queued message is taken), at the cost of a mutex per
//! send and receive, which actor messaging (never on a per-frame path) can afford.
//!
//! Semantics follow tokio's unbounded channel as ractor uses it: `send` fails once the
//! receiver is closed or dropped; `recv` yields queued messages, then `None` once the
//! receiver is closed or every sender is gone; `recv` is cancel safe.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::mpsc::error::{SendError, TryRecvError};

struct State<T> {
    queue: VecDeque<T>,
    waker: Option<Waker>,
    senders: usize,
    closed: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every critical section is a push, a pop or a flag/counter update: a panic cannot
        // leave the state inconsistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates a queue.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            waker: None,
            senders: 1,
            closed: false,
        }),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// The sending side (cloneable).
pub(crate) struct Sender<T>(Arc<Shared<T>>);

impl<T> Sender<T> {
    /// Queues `value`, or gives it back when the receiver is closed or gone.
    pub(crate) fn send(&self, value: T) -> Result<(), SendError<T>> {
        let waker = {
            let mut state = self.0.lock();
            if state.closed {
                return Err(SendError(value));
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

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.0.lock();
            state.senders -= 1;
            if state.senders == 0 {
                state.waker.take()
            } else {
                None
            }
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

/// The receiving side.
pub(crate) struct Receiver<T>(Arc<Shared<T>>);

impl<T> Receiver<T> {
    fn pop(state: &mut State<T>) -> Option<T> {
        let value = state.queue.pop_front();
        if value.is_some() && state.queue.is_empty() {
            // Release the slots: an idle actor holds no queue memory.
            state.queue = VecDeque::new();
        }
        value
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.0.lock();
        if let Some(v) = Self::pop(&mut state) {
            return Poll::Ready(Some(v));
        }
        if state.closed || state.senders == 0 {
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Receives the next message; `None` once closed (or every sender is gone) and drained.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Takes the next message if one is queued.
    pub(crate) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.0.lock();
        match Self::pop(&mut state) {
            Some(v) => Ok(v),
            None if state.closed || state.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Refuses further sends; queued messages can still be received.
    pub(crate) fn close(&mut self) {
        self.0.lock().closed = true;
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let queued = {
            let mut state = self.0.lock();
            state.closed = true;
            state.waker = None;
            std::mem::take(&mut state.queue)
        };
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

    #[tokio::test]
    async fn order_close_and_sender_drop() {
        let (tx, mut rx) = channel::<u32>();
        let tx2 = tx.clone();
        tx.send(1).unwrap();
        tx2.send(2).unwrap();
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        let waiter = tokio::spawn(async move {
            let got = rx.recv().await;
            (got, rx.recv().await)
        });
        tx.send(3).unwrap();
        drop(tx);
        drop(tx2);
        assert_eq!(waiter.await.unwrap(), (Some(3), None));
    }

    #[test]
    fn closed_receiver_refuses_but_drains() {
        let (tx, mut rx) = channel::<u32>();
        tx.send(1).unwrap();
        rx.close();
        assert!(tx.send(2).is_err());
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }
}
