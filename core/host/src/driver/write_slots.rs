//! Store writes from the driver: a bound on those queued at once, and waiting for one
//! without holding a thread.
//!
//! A hot store write is queued for a group commit and waited for as a future
//! ([`committed`]); only the writer that finds nobody committing takes a blocking thread, to
//! lead the commit for everyone queued. So hundreds of EVENTs being decided hold one thread,
//! not one each (each with its stack and allocator arena). The bound keeps the queue (and the
//! batch a commit may take) finite: writes beyond it wait for a slot.

use std::sync::Arc;

use crate::runtime::{unblock, Runtime};
use crate::store::{PendingWrite, StoreError};

/// The outcome of a queued store write, waited for without a thread. If the write must lead
/// the commit, the leading runs on a blocking thread of its own.
pub async fn committed<T>(
    runtime: &Arc<dyn Runtime>,
    mut pending: PendingWrite<T>,
) -> Result<T, StoreError> {
    if let Some(leader) = pending.take_leader() {
        let blocking = Arc::clone(runtime);
        runtime.spawn(Box::pin(async move {
            // Refused by the blocking pool, the leader is dropped, and a dropped leader
            // commits on a thread of its own.
            let _ = unblock(&*blocking, move || leader.run()).await;
        }));
    }
    pending.committed().await
}

/// At most `n` writes at once; [`WriteSlots::acquire`] waits for a free one.
pub struct WriteSlots {
    free: async_channel::Receiver<()>,
    back: async_channel::Sender<()>,
}

/// A running write's slot, given back when dropped.
pub struct WriteSlot {
    back: async_channel::Sender<()>,
}

impl WriteSlots {
    pub fn new(n: usize) -> WriteSlots {
        let n = n.max(1);
        let (back, free) = async_channel::bounded(n);
        for _ in 0..n {
            let _ = back.try_send(());
        }
        WriteSlots { free, back }
    }

    pub async fn acquire(&self) -> WriteSlot {
        // Both ends live in `self`, so the channel never closes while anyone waits.
        let _ = self.free.recv().await;
        WriteSlot {
            back: self.back.clone(),
        }
    }
}

impl Drop for WriteSlot {
    fn drop(&mut self) {
        let _ = self.back.try_send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn a_write_beyond_the_bound_waits_for_a_slot_to_be_given_back() {
        let slots = WriteSlots::new(2);
        let first = slots.acquire().now_or_never().expect("a free slot");
        let _second = slots.acquire().now_or_never().expect("a free slot");
        let mut third = Box::pin(slots.acquire());
        assert!((&mut third).now_or_never().is_none(), "no third slot");
        drop(first);
        assert!(
            third.now_or_never().is_some(),
            "the given-back slot is taken"
        );
    }
}
