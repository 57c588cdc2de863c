//! Adaptive batching of concurrent work ("group commit", ADR 0030).
//!
//! Callers [`submit`](Batcher::submit) items; up to `workers` batches run at once, and a worker
//! that becomes free takes **everything queued at that moment** (up to `max_batch`) as its next
//! batch. There is no timer: a lone caller finds a free worker and runs at once, in a batch of one,
//! so it pays no extra latency; under load, items pile up while the workers are busy and the
//! batches grow with the load, by themselves. Each item carries its own way of answering (a
//! `oneshot` sender, say), so the batch function answers every item of its batch.
//!
//! Failure modes: if the batch function panics, the items of that batch are dropped (their
//! callers see their answer channel closed) and the worker slot is freed; the batcher goes on.
//! When every [`Batcher`] clone is dropped, the queue drains and the dispatcher ends.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{Semaphore, mpsc};

/// The function that runs one batch.
pub type BatchFn<T> = Arc<dyn Fn(Vec<T>) -> BoxFuture<'static, ()> + Send + Sync>;

/// Queues items and runs them in batches; see the [module](self) docs. Cheap to clone.
pub struct Batcher<T> {
    queue: mpsc::UnboundedSender<T>,
}

impl<T> Clone for Batcher<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Batcher<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Batcher").finish_non_exhaustive()
    }
}

/// The item could not be queued: the dispatcher is gone (shutting down). The item comes back.
#[derive(Debug)]
pub struct Closed<T>(pub T);

impl<T: Send + 'static> Batcher<T> {
    /// Starts the dispatcher (on the current Tokio runtime): at most `workers` batches at once,
    /// each of at most `max_batch` items (both at least 1), each run by `run`.
    pub fn start(workers: usize, max_batch: usize, run: BatchFn<T>) -> Self {
        let (queue, mut items) = mpsc::unbounded_channel::<T>();
        let slots = Arc::new(Semaphore::new(workers.max(1)));
        let max_batch = max_batch.max(1);
        tokio::spawn(async move {
            loop {
                // A free slot first, then whatever is queued: what piled up while every slot was
                // busy becomes one batch.
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let Some(first) = items.recv().await else {
                    return;
                };
                let mut batch = Vec::with_capacity(max_batch.min(items.len() + 1));
                batch.push(first);
                while batch.len() < max_batch {
                    match items.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let run = Arc::clone(&run);
                tokio::spawn(async move {
                    run(batch).await;
                    drop(slot);
                });
            }
        });
        Self { queue }
    }

    /// Queues `item` for the next free worker.
    pub fn submit(&self, item: T) -> Result<(), Closed<T>> {
        self.queue.send(item).map_err(|error| Closed(error.0))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    type Item = (u32, oneshot::Sender<usize>);

    /// A batcher whose batches answer each item with the size of its batch.
    fn sizes(workers: usize, max_batch: usize) -> Batcher<Item> {
        Batcher::start(
            workers,
            max_batch,
            Arc::new(|batch: Vec<Item>| {
                Box::pin(async move {
                    let size = batch.len();
                    for (_, answer) in batch {
                        let _ = answer.send(size);
                    }
                })
            }),
        )
    }

    #[tokio::test]
    async fn a_lone_item_runs_at_once_in_a_batch_of_one() {
        let batcher = sizes(2, 8);
        for value in 0..3 {
            let (answer, size) = oneshot::channel();
            batcher.submit((value, answer)).expect("queued");
            assert_eq!(size.await.expect("answered"), 1);
        }
    }

    #[tokio::test]
    async fn items_queued_while_the_workers_are_busy_become_one_batch_capped_at_the_maximum() {
        // The first batch starts, says so, and waits for the gate; only then are six more queued.
        let started = Arc::new(tokio::sync::Notify::new());
        let gate = Arc::new(Semaphore::new(0));
        let seen = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let batcher: Batcher<Item> = {
            let (started, gate, seen) = (Arc::clone(&started), Arc::clone(&gate), Arc::clone(&seen));
            Batcher::start(
                1,
                4,
                Arc::new(move |batch: Vec<Item>| {
                    let (started, gate, seen) = (Arc::clone(&started), Arc::clone(&gate), Arc::clone(&seen));
                    Box::pin(async move {
                        if batch[0].0 == 0 {
                            started.notify_one();
                            gate.acquire().await.expect("gate").forget();
                        }
                        let size = batch.len();
                        seen.lock()
                            .expect("lock")
                            .push(batch.iter().map(|(value, _)| *value).collect());
                        for (_, answer) in batch {
                            let _ = answer.send(size);
                        }
                    })
                }),
            )
        };
        let (answer, first) = oneshot::channel();
        batcher.submit((0, answer)).expect("queued");
        started.notified().await;
        let mut answers = Vec::new();
        for value in 1..7 {
            let (answer, size) = oneshot::channel();
            batcher.submit((value, answer)).expect("queued");
            answers.push(size);
        }
        gate.add_permits(1);
        assert_eq!(first.await.expect("answered"), 1);
        let mut sizes = Vec::new();
        for size in answers {
            sizes.push(size.await.expect("answered"));
        }
        assert_eq!(
            sizes,
            vec![4, 4, 4, 4, 2, 2],
            "the six waiting items run as 4 + 2, in order"
        );
        let batches = seen.lock().expect("lock").clone();
        assert_eq!(batches, vec![vec![0], vec![1, 2, 3, 4], vec![5, 6]]);
    }

    #[tokio::test]
    async fn a_panicking_batch_drops_its_items_and_frees_its_worker() {
        let batcher: Batcher<Item> = Batcher::start(
            1,
            8,
            Arc::new(|batch: Vec<Item>| {
                Box::pin(async move {
                    if batch.iter().any(|(value, _)| *value == 13) {
                        panic!("unlucky batch");
                    }
                    for (_, answer) in batch {
                        let _ = answer.send(1);
                    }
                })
            }),
        );
        let (answer, unlucky) = oneshot::channel();
        batcher.submit((13, answer)).expect("queued");
        assert!(
            unlucky.await.is_err(),
            "the panicking batch's item sees its channel closed"
        );
        let (answer, next) = oneshot::channel();
        batcher.submit((1, answer)).expect("queued");
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), next)
                .await
                .expect("the worker is free again"),
            Ok(1)
        );
    }
}
