//! The server-wide shutdown signal, cheap enough to check on every event of every stream.
//!
//! A `CancellationToken` takes its mutex on every `is_cancelled` and every poll of its
//! `cancelled()` future; 10,000 streams checking one token per event showed up in the
//! fan-out profile as a few percent of CPU plus contention on that one lock. [`Shutdown`]
//! pairs the token with a flag that is set before the token is cancelled, and
//! [`ShutdownWait`] registers with the token once per waker and then only reads the flag.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Cheap to clone; every clone is the same signal.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    started: Arc<AtomicBool>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Starts the shutdown: every waiter wakes and sees it.
    pub fn trigger(&self) {
        // Set before the token wakes anyone, so a woken [`ShutdownWait`] finds it set.
        self.started.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// The underlying token, for code that derives child tokens or waits once.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Resolves once the shutdown starts. Build it once and poll it as often as needed.
    pub fn wait(&self) -> ShutdownWait {
        ShutdownWait {
            started: self.started.clone(),
            registration: Box::pin(self.token.clone().cancelled_owned()),
            registered_with: None,
        }
    }
}

/// A future that resolves when the shutdown starts. Re-polling it with the waker it was
/// last polled with is an atomic load.
pub struct ShutdownWait {
    started: Arc<AtomicBool>,
    registration: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The waker the token will wake; another waker must register anew.
    registered_with: Option<Waker>,
}

impl Future for ShutdownWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.started.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if self
            .registered_with
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        if self.registration.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        self.registered_with = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_waiter_polled_many_times_wakes_when_triggered() {
        let shutdown = Shutdown::new();
        let mut wait = shutdown.wait();
        for _ in 0..3 {
            assert!(futures_util::FutureExt::now_or_never(&mut wait).is_none());
        }
        assert!(!shutdown.is_triggered());
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            trigger.trigger();
        });
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("the waiter wakes");
        assert!(shutdown.is_triggered());
        assert!(shutdown.token().is_cancelled());
    }

    #[tokio::test]
    async fn a_waiter_made_after_the_trigger_is_ready_at_once() {
        let shutdown = Shutdown::new();
        shutdown.trigger();
        assert!(futures_util::FutureExt::now_or_never(shutdown.wait()).is_some());
    }
}
