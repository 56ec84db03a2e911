//! The credit a stream's consumer gives its producer: chunks and bytes sent
//! ahead of what the consumer has taken (the NIF's streams to an Elixir
//! callback).
//!
//! Counting chunks alone bounds small chunks well but lets large ones pile
//! up (32 chunks of 64 MiB are 2 GiB in a mailbox); counting bytes too keeps
//! memory bounded whatever the chunk size. A chunk larger than the byte
//! window still goes, alone (empty chunks, which take no byte credit, may
//! travel beside it; the chunk bound holds for them too).

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Semaphore;

/// Bytes of payload sent ahead of the caller's acknowledgements. With 1 MiB
/// chunks into a slow callback, 16 MiB kept the VM's resident memory growth
/// near 32 MiB at full speed (about 1.1 GB/s here); 8 MiB halved the memory
/// but cost a quarter of the throughput (`bench/`).
pub const BYTE_WINDOW: usize = 16 * 1024 * 1024;

pub struct Window {
    chunks: Semaphore,
    bytes: Semaphore,
    /// The byte credit each unacknowledged chunk took, in the order sent.
    taken: Mutex<VecDeque<usize>>,
    byte_window: usize,
}

/// The window was closed (never happens: the semaphores are never closed).
#[derive(Debug)]
pub struct Closed;

impl Window {
    pub fn new(chunks: usize, bytes: usize) -> Self {
        // A semaphore holds at most `Semaphore::MAX_PERMITS`.
        let chunks = chunks.clamp(1, Semaphore::MAX_PERMITS);
        let bytes = bytes.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            chunks: Semaphore::new(chunks),
            bytes: Semaphore::new(bytes),
            taken: Mutex::new(VecDeque::new()),
            byte_window: bytes,
        }
    }

    fn taken(&self) -> std::sync::MutexGuard<'_, VecDeque<usize>> {
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The byte credit of a chunk of `size` bytes (at most the window).
    fn byte_cost(&self, size: usize) -> u32 {
        // The window fits in a u32 (Semaphore permits are u32 per acquire).
        size.min(self.byte_window) as u32
    }

    /// Waits for the credit of one chunk of `size` bytes, and takes it.
    pub async fn take(&self, size: usize) -> Result<(), Closed> {
        let cost = self.byte_cost(size);
        self.chunks.acquire().await.map_err(|_| Closed)?.forget();
        self.bytes
            .acquire_many(cost)
            .await
            .map_err(|_| Closed)?
            .forget();
        self.taken().push_back(cost as usize);
        Ok(())
    }

    /// Takes the credit of one chunk of `size` bytes if it is there now.
    pub fn try_take(&self, size: usize) -> bool {
        let cost = self.byte_cost(size);
        let Ok(chunk) = self.chunks.try_acquire() else {
            return false;
        };
        let Ok(bytes) = self.bytes.try_acquire_many(cost) else {
            return false;
        };
        chunk.forget();
        bytes.forget();
        self.taken().push_back(cost as usize);
        true
    }

    /// The caller consumed `count` more chunks: their credit comes back.
    pub fn ack(&self, count: usize) {
        // More than are in flight gives back only those in flight.
        let (count, bytes) = {
            let mut taken = self.taken();
            let count = count.min(taken.len());
            (count, taken.drain(..count).sum::<usize>())
        };
        self.chunks.add_permits(count);
        self.bytes.add_permits(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_and_bytes_both_bound_what_is_sent() {
        let window = Window::new(4, 100);
        assert!(window.try_take(10));
        assert!(window.try_take(80));
        // 90 of 100 bytes are out: a 20-byte chunk waits, a 10-byte one goes.
        assert!(!window.try_take(20));
        assert!(window.try_take(10));
        assert!(window.try_take(0));
        // Four chunks are out.
        assert!(!window.try_take(0));
        window.ack(2);
        assert!(window.try_take(80));
        assert!(!window.try_take(20));
    }

    #[test]
    fn a_chunk_larger_than_the_window_goes_alone() {
        let window = Window::new(4, 100);
        assert!(window.try_take(1_000));
        assert!(!window.try_take(1));
        window.ack(1);
        assert!(window.try_take(1));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::sync::Arc;

        #[derive(Clone, Debug)]
        enum Op {
            /// Try to send a chunk of this size.
            Send(usize),
            /// Acknowledge this share (per 256) of the chunks in flight.
            Ack(u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0usize..300).prop_map(Op::Send),
                1 => any::<u8>().prop_map(Op::Ack),
            ]
        }

        /// What may be in flight: at most `chunks` chunks and `bytes` bytes,
        /// except one chunk larger than `bytes` beside only empty ones.
        fn within_bounds(flight: &VecDeque<usize>, chunks: usize, bytes: usize) -> bool {
            let total: usize = flight.iter().sum();
            let oversized_alone = flight.iter().filter(|s| **s > bytes).count() == 1
                && flight.iter().filter(|s| **s > 0).count() == 1;
            flight.len() <= chunks && (total <= bytes || oversized_alone)
        }

        proptest! {
            /// Any sends and acks: a send goes exactly when the model says
            /// there is credit, the bounds always hold, acks return exactly
            /// the credit their chunks took, and once everything is
            /// acknowledged any chunk can go (no credit is lost).
            #[test]
            fn credit_matches_the_model(chunks in 1usize..8, bytes in 1usize..200,
                                        ops in prop::collection::vec(op(), 0..64)) {
                let window = Window::new(chunks, bytes);
                let mut flight = VecDeque::new();
                for op in ops {
                    match op {
                        Op::Send(size) => {
                            let cost: usize = flight.iter().map(|s: &usize| (*s).min(bytes)).sum();
                            let fits = flight.len() < chunks && cost + size.min(bytes) <= bytes;
                            prop_assert_eq!(window.try_take(size), fits);
                            if fits {
                                flight.push_back(size);
                            }
                        }
                        Op::Ack(share) => {
                            let count = flight.len() * usize::from(share) / 255;
                            window.ack(count);
                            flight.drain(..count);
                        }
                    }
                    prop_assert!(within_bounds(&flight, chunks, bytes), "{:?}", flight);
                    let cost: usize = flight.iter().map(|s| (*s).min(bytes)).sum();
                    prop_assert_eq!(window.chunks.available_permits(), chunks - flight.len());
                    prop_assert_eq!(window.bytes.available_permits(), bytes - cost);
                }
                window.ack(flight.len());
                prop_assert!(window.try_take(usize::MAX));
            }

            /// A producer sending through the window to a consumer that acks
            /// in groups (and whatever is pending when it has nothing else to
            /// read): everything arrives, in order, without deadlock, and the
            /// bounds hold whenever the consumer looks.
            #[test]
            fn a_stream_through_the_window_loses_and_reorders_nothing(
                chunks in 1usize..6, bytes in 1usize..100, group in 1usize..10,
                sizes in prop::collection::vec(0usize..150, 0..80),
            ) {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
                let window = Arc::new(Window::new(chunks, bytes));
                let received = runtime.block_on(async {
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                    let flight = Arc::new(Mutex::new(VecDeque::new()));
                    let producer = {
                        let (window, flight, sizes) = (window.clone(), flight.clone(), sizes.clone());
                        tokio::spawn(async move {
                            for (index, size) in sizes.into_iter().enumerate() {
                                window.take(size).await.unwrap();
                                flight.lock().unwrap().push_back(size);
                                tx.send((index, size)).unwrap();
                                // Let the consumer interleave at any point.
                                if index % 3 == 0 {
                                    tokio::task::yield_now().await;
                                }
                            }
                        })
                    };
                    let consume = async {
                        let mut received = Vec::new();
                        let mut pending = 0;
                        while let Some(item) = rx.recv().await {
                            {
                                let flight = flight.lock().unwrap();
                                assert!(within_bounds(&flight, chunks, bytes), "{flight:?}");
                            }
                            received.push(item);
                            pending += 1;
                            if pending >= group || rx.is_empty() {
                                flight.lock().unwrap().drain(..pending);
                                window.ack(pending);
                                pending = 0;
                            }
                        }
                        received
                    };
                    let received = tokio::time::timeout(std::time::Duration::from_secs(2), consume)
                        .await
                        .expect("the stream deadlocked");
                    producer.await.unwrap();
                    received
                });
                let expected: Vec<(usize, usize)> = sizes.into_iter().enumerate().collect();
                prop_assert_eq!(received, expected);
            }
        }
    }

    #[tokio::test]
    async fn take_waits_for_an_ack() {
        let window = std::sync::Arc::new(Window::new(1, 100));
        window.take(50).await.unwrap();
        let waiting = {
            let window = window.clone();
            tokio::spawn(async move { window.take(50).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        window.ack(1);
        waiting.await.unwrap().unwrap();
    }
}
