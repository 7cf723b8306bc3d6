//! Per-CPU event rings: one producer (the CPU's handler), one consumer (the session).
//!
//! # Design
//!
//! A ring is an array of `AtomicU64` words with two monotonically increasing word
//! positions: `head` (written only by the producer) and `tail` (written only by the
//! consumer); a position's word is `position % RING_WORDS`. A record is three
//! header words — sequence number, `probe | len << 32`, time — followed by its data
//! in `ceil(len / 8)` little-endian words; records wrap around the end of the array
//! word by word. The producer writes the words with relaxed stores and publishes
//! them by a release store of `head`; the consumer acquires `head`, copies the
//! record out and releases the space by a release store of `tail`. Relaxed atomic
//! word accesses compile to plain moves, so the ring costs what a plain buffer costs
//! and needs no `unsafe`.
//!
//! Sequence numbers are not the ring's business: the stub hands each record its
//! number (PROTOCOL.md §7.2) and the drain turns gaps into loss reports.
//!
//! # Invariants
//!
//! - `tail <= head <= tail + RING_WORDS` at every moment either side can observe.
//! - A record is either entirely in the ring or not at all.
//! - The consumer never trusts a header blindly: a length beyond [`MAX_RECORD`] or
//!   past `head` (which only memory corruption could produce) empties the ring
//!   instead of reading out of bounds.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::limits::{MAX_RECORD, RING_WORDS};

/// Words of a record header.
const HEADER_WORDS: u64 = 3;

/// One CPU's event ring.
pub(crate) struct Ring {
    head: AtomicU64,
    tail: AtomicU64,
    words: [AtomicU64; RING_WORDS],
}

/// A record taken out of a ring; its data is in the consumer's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) seq: u64,
    pub(crate) probe: u32,
    pub(crate) time_ns: u64,
    pub(crate) len: usize,
}

/// The ring has no room for a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RingFull;

impl Ring {
    /// An empty ring.
    pub(crate) const fn new() -> Self {
        Self {
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            words: [const { AtomicU64::new(0) }; RING_WORDS],
        }
    }

    fn word(&self, position: u64) -> &AtomicU64 {
        &self.words[(position % RING_WORDS as u64) as usize]
    }

    /// Appends a record. Producer only. Returns whether the ring went from less
    /// than half full to at least half full (the moment to wake the server).
    pub(crate) fn push(
        &self,
        seq: u64,
        probe: u32,
        time_ns: u64,
        data: &[u8],
    ) -> Result<bool, RingFull> {
        if data.len() > MAX_RECORD {
            return Err(RingFull);
        }
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Acquire);
        let used = head.wrapping_sub(tail);
        let need = HEADER_WORDS + data.len().div_ceil(8) as u64;
        let capacity = RING_WORDS as u64;
        if used > capacity || need > capacity - used {
            return Err(RingFull);
        }
        self.word(head).store(seq, Ordering::Relaxed);
        self.word(head + 1).store(
            u64::from(probe) | (data.len() as u64) << 32,
            Ordering::Relaxed,
        );
        self.word(head + 2).store(time_ns, Ordering::Relaxed);
        for (index, chunk) in data.chunks(8).enumerate() {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            self.word(head + HEADER_WORDS + index as u64)
                .store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        }
        self.head.store(head + need, Ordering::Release);
        let half = capacity / 2;
        Ok(used < half && used + need >= half)
    }

    /// Takes the oldest record, copying its data into `data`. Consumer only.
    pub(crate) fn pop(&self, data: &mut [u8; MAX_RECORD]) -> Option<Record> {
        let tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Acquire);
        let available = head.wrapping_sub(tail);
        if available == 0 {
            return None;
        }
        let seq = self.word(tail).load(Ordering::Relaxed);
        let shape = self.word(tail + 1).load(Ordering::Relaxed);
        let time_ns = self.word(tail + 2).load(Ordering::Relaxed);
        let probe = shape as u32;
        let len = (shape >> 32) as usize;
        let need = HEADER_WORDS + len.div_ceil(8) as u64;
        if available < HEADER_WORDS || len > MAX_RECORD || need > available {
            // Only corruption gets here: drop everything rather than misread.
            self.tail.store(head, Ordering::Release);
            return None;
        }
        for (index, chunk) in data[..len].chunks_mut(8).enumerate() {
            let word = self
                .word(tail + HEADER_WORDS + index as u64)
                .load(Ordering::Relaxed);
            chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
        }
        self.tail.store(tail + need, Ordering::Release);
        Some(Record {
            seq,
            probe,
            time_ns,
            len,
        })
    }

    /// Empties the ring. Only while no producer can run (quiescent, no probes).
    pub(crate) fn reset(&self) {
        self.head.store(0, Ordering::Relaxed);
        self.tail.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_wrap_and_come_back_whole() {
        let ring = Box::new(Ring::new());
        let mut out = [0u8; MAX_RECORD];
        let record: Vec<u8> = (0..100).collect();
        // Far more than one ring's worth, consumed as we go: exercises wrapping.
        for (seq, round) in (0..5000u64).enumerate() {
            let seq = seq as u64;
            ring.push(seq, 7, round, &record[..(round % 100) as usize])
                .unwrap();
            let popped = ring.pop(&mut out).unwrap();
            assert_eq!(popped.seq, seq);
            assert_eq!(popped.time_ns, round);
            assert_eq!(&out[..popped.len], &record[..(round % 100) as usize]);
        }
        assert!(ring.pop(&mut out).is_none());
    }

    #[test]
    fn a_full_ring_refuses_and_reports_half_full_once() {
        let ring = Box::new(Ring::new());
        let data = [0xaa; 64];
        let mut crossings = 0;
        let mut pushed = 0;
        while let Ok(crossed) = ring.push(pushed, 1, 0, &data) {
            crossings += usize::from(crossed);
            pushed += 1;
        }
        assert_eq!(crossings, 1);
        // 11 words per record.
        assert_eq!(pushed, RING_WORDS as u64 / 11);
        assert_eq!(ring.push(0, 1, 0, &data), Err(RingFull));
        let mut out = [0u8; MAX_RECORD];
        assert_eq!(ring.pop(&mut out).unwrap().seq, 0);
        assert!(ring.push(pushed, 1, 0, &[]).is_ok());
    }
}
