//! Poll a condition until it holds or a deadline passes: how tests wait, never a fixed sleep.

use std::time::Duration;

/// How often [`poll_until`] and [`poll_until_async`] re-evaluate their condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A condition result: either "not yet" or "ready with a value".
///
/// Implemented for `bool` (ready when `true`, yields `()`) and `Option<T>` (ready when `Some`,
/// yields the `T`).
pub trait Ready {
    /// The value handed back once the condition holds.
    type Output;
    /// `Some(output)` when the condition holds, `None` to keep polling.
    fn into_ready(self) -> Option<Self::Output>;
}

impl Ready for bool {
    type Output = ();
    fn into_ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Output = T;
    fn into_ready(self) -> Option<T> {
        self
    }
}

fn timed_out(deadline: Duration, what: &str, attempts: u64) -> ! {
    panic!("timed out after {deadline:?} ({attempts} attempts) waiting for {what}")
}

/// Calls `f` every [`POLL_INTERVAL`] until it reports ready, returning its value.
///
/// `f` is always called at least once. Blocks the current thread; from async code use
/// [`poll_until_async`].
///
/// # Panics
/// When `deadline` passes before the condition holds; the message names `what`.
pub fn poll_until<R: Ready>(deadline: Duration, what: &str, mut f: impl FnMut() -> R) -> R::Output {
    let end = std::time::Instant::now() + deadline;
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        if let Some(out) = f().into_ready() {
            return out;
        }
        if std::time::Instant::now() >= end {
            timed_out(deadline, what, attempts);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Async variant of [`poll_until`]: awaits `f()` every [`POLL_INTERVAL`] until it reports ready.
///
/// Accepts an async closure (`async || ...`) or a closure returning a future (`|| async { ... }`).
/// Uses tokio's clock, so it also works (and advances instantly) under a paused clock.
///
/// # Panics
/// When `deadline` passes before the condition holds; the message names `what`.
pub async fn poll_until_async<R: Ready>(
    deadline: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> R,
) -> R::Output {
    let end = tokio::time::Instant::now() + deadline;
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        if let Some(out) = f().await.into_ready() {
            return out;
        }
        if tokio::time::Instant::now() >= end {
            timed_out(deadline, what, attempts);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn sync_bool_returns_once_true() {
        let mut n = 0;
        poll_until(Duration::from_secs(5), "counter to reach 3", || {
            n += 1;
            n >= 3
        });
        assert_eq!(n, 3);
    }

    #[test]
    fn sync_option_yields_value() {
        let mut n = 0;
        let v = poll_until(Duration::from_secs(5), "value", || {
            n += 1;
            (n == 2).then_some(n * 10)
        });
        assert_eq!(v, 20);
    }

    #[test]
    #[should_panic(expected = "waiting for the impossible")]
    fn sync_panics_naming_what() {
        poll_until(Duration::from_millis(30), "the impossible", || false);
    }

    #[tokio::test]
    async fn async_closure_returning_future() {
        let hits = Arc::new(AtomicU32::new(0));
        let v = poll_until_async(Duration::from_secs(5), "third hit", || {
            let hits = hits.clone();
            async move {
                let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
                (n == 3).then_some(n)
            }
        })
        .await;
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn async_closure_syntax() {
        let mut n = 0u32;
        poll_until_async(Duration::from_secs(5), "n to reach 2", async || {
            n += 1;
            n >= 2
        })
        .await;
        assert_eq!(n, 2);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out after 1s")]
    async fn async_panics_at_deadline_under_paused_clock() {
        poll_until_async(Duration::from_secs(1), "never", async || false).await;
    }
}
