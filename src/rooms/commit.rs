//! The event committer: assigns global stream positions and persists events with group commit.
//!
//! Rooms build and auth-check their events in parallel (each under its own lock), then hand
//! them here. One task drains everything queued, writes it as one fsynced `WriteBatch`, and
//! only then publishes the new stream position and answers the senders. So:
//!
//! - **Architecture Invariant.** Stream positions are assigned and become visible in order:
//!   a reader that sees position P has every event ≤ P available. No gaps, no reordering.
//! - **Architecture Invariant.** Each request's `apply` (the in-memory caches: room state,
//!   head, memberships) runs after its fsync and *before* the position is published, so a
//!   reader that sees position P also sees caches that include every event ≤ P.
//! - An event is acknowledged only after the fsync that made it durable (kill -9 safe).
//! - Many events share one fsync under load, so throughput is not bound by the disk's
//!   flush latency.
//! - Once a batch is durable and published, its events go to the post-commit hook (if set:
//!   push-rule evaluation), which only queues them: nothing after the fsync waits for it.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::storage::Store;
use crate::storage::rooms::EventWrite;

/// Most events written in one batch.
const MAX_BATCH: usize = 1024;

/// Updates in-memory state once the events are durable; gets the last event's position.
pub type Apply = Box<dyn FnOnce(u64) + Send>;

struct Request {
    writes: Vec<EventWrite>,
    apply: Apply,
    done: oneshot::Sender<Result<u64>>,
}

/// An event that is durable and visible, as the post-commit hook gets it.
#[derive(Debug, Clone)]
pub struct Committed {
    pub pos: u64,
    pub event_id: String,
    pub room_id: String,
}

/// Takes each committed batch, in stream order; runs in the committer, so it must only
/// queue (never wait).
pub type PostCommit = Box<dyn Fn(Vec<Committed>) + Send + Sync>;

/// A submitted request; resolves to its last stream position once durable and visible.
pub struct Pending(oneshot::Receiver<Result<u64>>);

impl Pending {
    pub async fn wait(self) -> Result<u64> {
        self.0.await.map_err(|_| Error::Internal("event committer stopped".into()))?
    }
}

/// Hands events to the commit task and tracks the committed stream position.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::UnboundedSender<Request>,
    position: watch::Receiver<u64>,
    hook: Arc<OnceLock<PostCommit>>,
}

impl Committer {
    /// Starts the commit task; `last_pos` is the highest position already stored.
    pub fn start(store: Arc<dyn Store>, last_pos: u64) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let (pos_tx, position) = watch::channel(last_pos);
        let hook = Arc::new(OnceLock::new());
        tokio::spawn(run(store, rx, pos_tx, last_pos, hook.clone()));
        Self { queue, position, hook }
    }

    /// Sets the post-commit hook (once, at start-up; later calls are ignored).
    pub fn set_post_commit(&self, hook: PostCommit) {
        let _ = self.hook.set(hook);
    }

    /// Persists the events (in order, one room's events contiguous) and returns the stream
    /// position of the last one once it is durable.
    pub async fn commit(&self, writes: Vec<EventWrite>, apply: Apply) -> Result<u64> {
        self.submit(writes, apply)?.wait().await
    }

    /// Queues events without waiting: requests are written in submission order, so a room
    /// can submit its next event before the previous one is durable.
    pub fn submit(&self, writes: Vec<EventWrite>, apply: Apply) -> Result<Pending> {
        let (done, rx) = oneshot::channel();
        self.queue
            .send(Request { writes, apply, done })
            .map_err(|_| Error::Internal("event committer stopped".into()))?;
        Ok(Pending(rx))
    }

    /// The highest stream position that is durable and visible.
    pub fn current(&self) -> u64 {
        *self.position.borrow()
    }

    /// A receiver that changes whenever the position advances.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.position.clone()
    }
}

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Request>,
    position: watch::Sender<u64>,
    mut last_pos: u64,
    hook: Arc<OnceLock<PostCommit>>,
) {
    while let Some(first) = rx.recv().await {
        let mut requests = vec![first];
        let mut count = requests[0].writes.len();
        while count < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => {
                    count += r.writes.len();
                    requests.push(r);
                }
                Err(_) => break,
            }
        }
        let mut writes = Vec::with_capacity(count);
        let mut ends = Vec::with_capacity(requests.len());
        for r in &mut requests {
            writes.append(&mut r.writes);
            ends.push(last_pos + writes.len() as u64);
        }
        let first_pos = last_pos + 1;
        let n = writes.len() as u64;
        let committed: Option<Vec<Committed>> = hook.get().map(|_| {
            (first_pos..)
                .zip(&writes)
                .map(|(pos, w)| Committed {
                    pos,
                    event_id: w.event_id.clone(),
                    room_id: w.room_id.clone(),
                })
                .collect()
        });
        let started = std::time::Instant::now();
        let result = store.append_events(writes, first_pos).await;
        metrics::histogram!("axon_event_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("axon_event_commit_batch_size").record(n as f64);
        match result {
            Ok(()) => {
                last_pos += n;
                let mut answers = Vec::with_capacity(requests.len());
                for (r, end) in requests.into_iter().zip(ends) {
                    (r.apply)(end);
                    answers.push((r.done, end));
                }
                position.send_replace(last_pos);
                for (done, end) in answers {
                    let _ = done.send(Ok(end));
                }
                if let (Some(hook), Some(committed)) = (hook.get(), committed) {
                    hook(committed);
                }
            }
            Err(e) => {
                // Events queued after these may reference them (rooms build ahead of
                // durability), so nothing more can be written safely: fail everything from
                // here on. RocksDB also turns read-only after a failed write.
                tracing::error!(error = %e, events = n, "committing events failed; refusing further writes");
                for r in requests {
                    let _ = r.done.send(Err(Error::Internal(format!("storing events: {e}"))));
                }
                rx.close();
                while let Some(r) = rx.recv().await {
                    let _ =
                        r.done.send(Err(Error::Internal("event storage failed earlier".into())));
                }
                return;
            }
        }
    }
}
