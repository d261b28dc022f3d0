//! Decrypting many state events at once (a join, a restart, a bundle import): each session is
//! used for all its events, and sessions are spread over the machine's cores.

use super::{DecryptedState, EncryptedStateEvent, InboundStateSession};
use crate::DecryptStateError;

/// Below this many events a batch is decrypted on the calling thread: spawning does not pay.
const PARALLEL_THRESHOLD: usize = 64;

/// Events of one session, with the session that decrypts them.
pub type SessionGroup = (InboundStateSession, Vec<EncryptedStateEvent>);

/// One event of a batch with its decryption.
pub type BatchItem = (EncryptedStateEvent, Result<DecryptedState, DecryptStateError>);

/// Decrypts every event of every group with its group's session. Groups are split across the
/// available cores (scoped threads) when the batch has at least 64 events; each session stays on
/// one thread. The result holds every event once, grouped by session.
pub fn decrypt_batch(groups: Vec<SessionGroup>) -> Vec<BatchItem> {
    let events: usize = groups.iter().map(|(_, events)| events.len()).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if events < PARALLEL_THRESHOLD || threads < 2 || groups.len() < 2 {
        return decrypt_groups(groups);
    }
    // Deal the groups out so each thread gets about the same number of events.
    let mut shares: Vec<(usize, Vec<SessionGroup>)> =
        (0..threads).map(|_| (0, Vec::new())).collect();
    let mut groups = groups;
    groups.sort_by_key(|(_, events)| std::cmp::Reverse(events.len()));
    for group in groups {
        if let Some(lightest) = shares.iter_mut().min_by_key(|(load, _)| *load) {
            lightest.0 += group.1.len();
            lightest.1.push(group);
        }
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|(_, share)| scope.spawn(move || decrypt_groups(share)))
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| {
                handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

fn decrypt_groups(groups: Vec<SessionGroup>) -> Vec<BatchItem> {
    let mut out = Vec::new();
    for (mut session, events) in groups {
        for event in events {
            let decrypted = session.decrypt(&event);
            out.push((event, decrypted));
        }
    }
    out
}
