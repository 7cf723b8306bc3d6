//! The workload's fixed parameters and the exact totals they produce.
//!
//! # Design
//!
//! The workload (`workload.rs`) is deterministic in its totals, whatever the
//! interleaving of its threads on the CPUs, so tests can compare probe counts with
//! ground truth. This module holds what makes it so — the per-round pattern of every
//! client — and the closed formulas for the totals, as plain host-tested code. For
//! `N` rounds and `C` = [`CLIENTS`] clients, each round of each client:
//!
//! 1. `touch`: a store at [`touch_address`]`(round)` in its own address space. Pages
//!    are touched in order; after every [`AGE_INTERVAL`] rounds the map is aged, so
//!    in each window of `2P` rounds (`P` = [`PAGES_PER_CLIENT`]) the first `P` touches
//!    fault and the next `P` do not. The first `P` faults of a client are major, all
//!    later ones minor;
//! 2. `send` a request (id [`request_id`], size [`request_size`]) to the server;
//! 3. `receive` the server's reply ([`REPLY_SIZE`] bytes) and check it;
//! 4. `yield` after every [`YIELD_INTERVAL`]th round.
//!
//! The server receives each request and sends the reply, both through the
//! syscall-like interface. Hence, with `W = N / 2P` whole windows and `R = N % 2P`:
//!
//! | total      | formula                                           |
//! |------------|---------------------------------------------------|
//! | `sends`    | `2·C·N` (requests and replies)                    |
//! | `receives` | `2·C·N`                                           |
//! | `faults`   | `C·(W·P + min(R, P))`                             |
//! | `major`    | `C·min(N, P)`                                     |
//! | `minor`    | `faults − major`                                  |
//! | `syscalls` | `C·(3·N + ⌊N / YIELD_INTERVAL⌋) + 2·C·N`          |
//! | `bytes`    | `Σ request sizes + C·N·REPLY_SIZE`                |

/// Client threads (alternating over the CPUs).
pub(crate) const CLIENTS: usize = 4;
/// Pages of each client's address space that the pattern touches.
pub(crate) const PAGES_PER_CLIENT: u32 = 16;
/// Rounds between two page-out scans of a client's map.
pub(crate) const AGE_INTERVAL: u32 = 2 * PAGES_PER_CLIENT;
/// A client yields after every this many rounds.
pub(crate) const YIELD_INTERVAL: u32 = 8;
/// First address of every client's simulated region.
pub(crate) const CLIENT_VM_BASE: u64 = 0x0000_4000_0000_0000;
/// Size field of every reply.
pub(crate) const REPLY_SIZE: u32 = 16;
/// Messages the request port holds before senders block (small on purpose, so
/// senders do block).
pub(crate) const REQUEST_QUEUE_LIMIT: usize = 2;
/// Messages a reply port holds.
pub(crate) const REPLY_QUEUE_LIMIT: usize = 1;

/// The address a client stores to in `round`.
pub(crate) fn touch_address(round: u32) -> u64 {
    let page = u64::from(round % PAGES_PER_CLIENT);
    CLIENT_VM_BASE + page * crate::vm::PAGE_SIZE + u64::from(round % 512) * 8
}

/// Whether a client ages its map after `round`.
pub(crate) fn ages_after(round: u32) -> bool {
    (round + 1).is_multiple_of(AGE_INTERVAL)
}

/// Whether a client yields after `round`.
pub(crate) fn yields_after(round: u32) -> bool {
    (round + 1).is_multiple_of(YIELD_INTERVAL)
}

/// The id of `client`'s request in `round` (unique over the run).
pub(crate) fn request_id(round: u32, client: usize) -> u32 {
    round
        .wrapping_mul(CLIENTS as u32)
        .wrapping_add(client as u32)
}

/// The size field of `client`'s request in `round`: 8, 16, 24 or 32 bytes.
pub(crate) fn request_size(round: u32, client: usize) -> u32 {
    8 * (1 + (round.wrapping_add(client as u32)) % 4)
}

/// The value the server returns for a request: a digest of its id and payload.
pub(crate) fn digest(id: u32, payload: &[u64; 4]) -> u64 {
    payload
        .iter()
        .fold(u64::from(id) ^ 0x5bd1_e995, |accumulator, &word| {
            accumulator.rotate_left(13) ^ word.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        })
}

/// Fault counts of one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FaultCounts {
    pub(crate) minor: u64,
    pub(crate) major: u64,
}

/// The faults one client takes in `rounds` rounds (see the module docs).
pub(crate) fn expected_faults_per_client(rounds: u32) -> FaultCounts {
    let (rounds, pages, window) = (
        u64::from(rounds),
        u64::from(PAGES_PER_CLIENT),
        u64::from(AGE_INTERVAL),
    );
    let faults = rounds / window * pages + (rounds % window).min(pages);
    let major = rounds.min(pages);
    FaultCounts {
        minor: faults - major,
        major,
    }
}

/// The exact totals of a whole run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) sends: u64,
    pub(crate) receives: u64,
    pub(crate) faults: u64,
    pub(crate) minor: u64,
    pub(crate) major: u64,
    pub(crate) syscalls: u64,
    pub(crate) bytes: u64,
}

/// The totals `rounds` rounds produce (see the module docs).
pub(crate) fn expected_totals(rounds: u32) -> Totals {
    let clients = CLIENTS as u64;
    let n = u64::from(rounds);
    let per_client = expected_faults_per_client(rounds);
    let request_bytes: u64 = (0..CLIENTS)
        .flat_map(|client| (0..rounds).map(move |round| u64::from(request_size(round, client))))
        .sum();
    Totals {
        sends: 2 * clients * n,
        receives: 2 * clients * n,
        faults: clients * (per_client.minor + per_client.major),
        minor: clients * per_client.minor,
        major: clients * per_client.major,
        syscalls: clients * (3 * n + n / u64::from(YIELD_INTERVAL)) + 2 * clients * n,
        bytes: request_bytes + clients * n * u64::from(REPLY_SIZE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_for_the_default_thousand_rounds() {
        let totals = expected_totals(1000);
        assert_eq!(totals.sends, 8000);
        assert_eq!(totals.receives, 8000);
        // 31 whole windows of 32 rounds (16 faults each) and 8 more faulting rounds.
        assert_eq!(totals.faults, 4 * (31 * 16 + 8));
        assert_eq!(totals.major, 4 * 16);
        assert_eq!(totals.minor, totals.faults - totals.major);
        assert_eq!(totals.syscalls, 4 * (3000 + 125) + 8000);
        // Request sizes cycle through 8, 16, 24, 32 (250 times each per client).
        assert_eq!(totals.bytes, 4 * 250 * 80 + 4 * 1000 * 16);
    }

    #[test]
    fn request_ids_are_unique_and_sizes_fit_a_message() {
        let mut ids: Vec<u32> = (0..100)
            .flat_map(|round| (0..CLIENTS).map(move |client| request_id(round, client)))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 100 * CLIENTS);
        assert!((0..8).all(|round| (8..=32).contains(&request_size(round, 1))));
    }

    #[test]
    fn touches_stay_inside_the_client_region() {
        let end = CLIENT_VM_BASE + u64::from(PAGES_PER_CLIENT) * crate::vm::PAGE_SIZE;
        assert!((0..2000).all(|round| (CLIENT_VM_BASE..end).contains(&touch_address(round))));
    }
}
