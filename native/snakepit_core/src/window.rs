//! The credit a stream's consumer gives its producer: chunks and bytes sent
//! ahead of what the consumer has taken (the NIF's streams to an Elixir
//! callback).
//!
//! Counting chunks alone bounds small chunks well but lets large ones pile
//! up (32 chunks of 64 MiB are 2 GiB in a mailbox); counting bytes too keeps
//! memory bounded whatever the chunk size. A chunk larger than the byte
//! window still goes, alone.

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
        Self {
            chunks: Semaphore::new(chunks.max(1)),
            bytes: Semaphore::new(bytes.max(1)),
            taken: Mutex::new(VecDeque::new()),
            byte_window: bytes.max(1),
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
        let bytes: usize = {
            let mut taken = self.taken();
            let count = count.min(taken.len());
            taken.drain(..count).sum()
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
