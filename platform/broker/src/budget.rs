//! Memory budgets for what clients make the broker hold: request frames being read and handled, and
//! replies that are built but not yet written (issue 10 items 1 and 3).
//!
//! - Request bytes (`queued.max.request.bytes`, Kafka's name): a frame's bytes are charged as they
//!   arrive and released once its handler has returned. A frame does not begin while the budget is
//!   spent; a frame that has begun may go on to twice the budget. So many connections each sending
//!   large requests cost at most twice the budget (plus one read step each), not connections ×
//!   `socket.request.max.bytes`, and a peer that claims 100 MiB in its length prefix and sends nothing
//!   holds nothing. A reader waiting for budget is bounded by its request's deadline
//!   (`socket.request.read.timeout.ms`): partly sent frames that hold the budget and wait for more are
//!   closed at that deadline rather than wait on each other for ever.
//! - Reply bytes: bytes of built replies that have not been written to the socket yet. Each connection
//!   has one (`socket.reply.buffer.max.bytes`): its reader stops reading requests while its replies
//!   exceed it, as Kafka mutes a channel; so a peer that pipelines Fetches and never reads pins about one
//!   reply, not `queued.max.requests` of them. A Fetch reply's records are file ranges sent with
//!   `sendfile` (see `handlers::fetch`), so what it holds is file handles and a little framing, not its
//!   size in memory; its bytes are still counted, per connection for the mute and over all
//!   connections for the `sluice_fetch_reply_bytes_unsent` gauge.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// A count of bytes held against a limit. The limit is soft: a charge always succeeds (for replies the
/// bytes already exist); callers ask `available` before building more, or wait before reading more.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    used: AtomicUsize,
    max: usize,
    released: Notify,
}

impl ByteBudget {
    pub(crate) fn new(max: usize) -> Arc<ByteBudget> {
        Arc::new(ByteBudget { used: AtomicUsize::new(0), max, released: Notify::new() })
    }

    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes that may still be built before the budget is spent.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.max.saturating_sub(self.used())
    }

    /// Holds `bytes` until the returned charge is dropped.
    pub(crate) fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        self.used.fetch_add(bytes, Ordering::Relaxed);
        Charge { budget: Arc::clone(self), bytes }
    }

    /// Returns once the bytes held are within the limit.
    pub(crate) async fn wait_within(&self) {
        self.wait_until(|used| used <= self.max).await
    }

    /// Returns once a reader may read more of a request: one that has not begun to read its frame
    /// waits while the budget is spent; one that already holds part of a frame may go on to twice
    /// the budget, so frames begun before it ran out can usually finish (and release theirs) instead
    /// of waiting on each other. Readers overshoot by at most one read step each.
    pub(crate) async fn wait_for_room(&self, frame_begun: bool) {
        let limit = if frame_begun { self.max.saturating_mul(2) } else { self.max };
        self.wait_until(|used| used < limit).await
    }

    async fn wait_until(&self, ready: impl Fn(usize) -> bool) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if ready(self.used()) {
                return;
            }
            released.await;
        }
    }
}

/// Bytes held until dropped: a reply until it is written (or dropped unsent), a request until handled.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl Charge {
    /// Adds `bytes` to this charge.
    pub(crate) fn grow(&mut self, bytes: usize) {
        self.budget.used.fetch_add(bytes, Ordering::Relaxed);
        self.bytes += bytes;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
            self.budget.released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_reader_waits_until_replies_are_written() {
        let budget = ByteBudget::new(100);
        let charge = budget.charge(150);
        assert_eq!(budget.available(), 0);
        let waiter = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { budget.wait_within().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the reader went on while 150 of 100 bytes were unsent");
        drop(charge);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("the reader was not woken").unwrap();
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test]
    async fn request_bytes_are_charged_as_they_arrive_and_readers_wait_for_room() {
        let budget = ByteBudget::new(1000);
        let mut frame = budget.charge(0);
        frame.grow(600);
        frame.grow(600);
        assert_eq!(budget.used(), 1200, "a read step may overshoot");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), budget.wait_for_room(false)).await.is_err(),
            "no new frame past the budget"
        );
        tokio::time::timeout(Duration::from_secs(5), budget.wait_for_room(true))
            .await
            .expect("a begun frame may go on to twice the budget");
        frame.grow(900);
        assert!(tokio::time::timeout(Duration::from_millis(50), budget.wait_for_room(true)).await.is_err(), "not past twice the budget");
        drop(frame);
        tokio::time::timeout(Duration::from_secs(5), budget.wait_for_room(false)).await.expect("room after release");
        assert_eq!(budget.used(), 0);
    }
}
