//! Coalescing of concurrent calls to one operation whose answer is only valid for callers that
//! arrived before it started: the leader's read-index confirmation. Each confirmation costs a
//! round of messages to the other voters; under load many reads share one.
//!
//! A caller joins the next batch. When no run is in flight, a run starts at once for the
//! batch; while one is in flight, callers gather for the run after it. Every caller thus gets
//! the answer of a run that began after it arrived, which is what linearizability needs: the
//! confirmed read index covers every write acknowledged before the read began. Runs happen on
//! a task of their own, so a caller that goes away (a client hanging up) stalls no one.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

type Op<T> = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = T> + Send>> + Send + Sync>;

/// Shares runs of an operation among concurrent callers.
pub struct Coalescer<T> {
    op: Op<T>,
    pending: Arc<Mutex<Pending<T>>>,
}

struct Pending<T> {
    running: bool,
    waiters: Vec<oneshot::Sender<T>>,
}

impl<T: Clone + Send + 'static> Coalescer<T> {
    /// Coalesces calls to `op`.
    pub fn new<F, Fut>(op: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        Coalescer { op: Arc::new(move || Box::pin(op())), pending: Arc::new(Mutex::new(Pending { running: false, waiters: Vec::new() })) }
    }

    /// The result of a run of the operation that started after this call; None if that run
    /// panicked.
    pub async fn call(&self) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut p = self.pending.lock().unwrap();
            p.waiters.push(tx);
            !std::mem::replace(&mut p.running, true)
        };
        if start {
            tokio::spawn(drive(self.op.clone(), self.pending.clone()));
        }
        rx.await.ok()
    }
}

/// Runs the operation for each gathered batch until no one is waiting.
async fn drive<T: Clone>(op: Op<T>, pending: Arc<Mutex<Pending<T>>>) {
    let _reset = ResetOnPanic(pending.clone());
    loop {
        let batch = {
            let mut p = pending.lock().unwrap();
            if p.waiters.is_empty() {
                p.running = false;
                return;
            }
            std::mem::take(&mut p.waiters)
        };
        let result = op().await;
        for waiter in batch {
            let _ = waiter.send(result.clone());
        }
    }
}

/// If a run panics, lets the next caller start a new one (waiters of the failed run get None).
struct ResetOnPanic<T>(Arc<Mutex<Pending<T>>>);

impl<T> Drop for ResetOnPanic<T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
            p.running = false;
            p.waiters.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    /// A stand-in for the read index: each run returns how many runs had started before it
    /// began and takes 20 ms, like a round trip to the voters.
    fn counting() -> (Arc<AtomicU64>, Coalescer<u64>) {
        let started = Arc::new(AtomicU64::new(0));
        let s = started.clone();
        let c = Coalescer::new(move || {
            let n = s.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                n
            }
        });
        (started, c)
    }

    #[tokio::test]
    async fn concurrent_callers_share_runs() {
        let (started, c) = counting();
        let c = Arc::new(c);
        let calls: Vec<_> = (0..200).map(|_| tokio::spawn({ let c = c.clone(); async move { c.call().await } })).collect();
        for call in calls {
            assert!(call.await.unwrap().is_some());
        }
        let runs = started.load(Ordering::SeqCst);
        assert!((1..=2).contains(&runs), "200 simultaneous callers needed {runs} runs");
    }

    #[tokio::test]
    async fn every_answer_comes_from_a_run_that_started_after_the_call() {
        let (started, c) = counting();
        let c = Arc::new(c);
        let mut tasks = Vec::new();
        for i in 0..50u64 {
            let c = c.clone();
            let started = started.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 3)).await;
                let runs_before = started.load(Ordering::SeqCst);
                let run = c.call().await.unwrap();
                assert!(run > runs_before, "answered by run {run}, which had started before the call (runs then: {runs_before})");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_panicking_run_does_not_wedge_later_callers() {
        let first = Arc::new(AtomicU64::new(0));
        let f = first.clone();
        let c = Coalescer::new(move || {
            let panic = f.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                assert!(!panic, "first run fails");
                7u64
            }
        });
        assert_eq!(c.call().await, None);
        assert_eq!(c.call().await, Some(7));
    }
}
