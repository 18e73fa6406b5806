//! A bound on the store writes running at once.
//!
//! A store write runs on a blocking thread and, with group commit, waits there until the
//! commit that holds it is durable. Unbounded, every EVENT being decided would hold a thread
//! of its own (hundreds under pipelined clients, each with its stack and allocator arena);
//! bounded, the writes beyond the bound wait as futures, holding no thread, and the ones
//! running still share commits.

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
