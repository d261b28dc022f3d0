//! What a sync brought for one room, and the gaps in a room's timeline whose state is still to
//! be checked against the homeserver's.

use std::time::{Duration, Instant};

use ruma::{events::AnySyncStateEvent, serde::Raw};

/// What a sync brought for one room.
#[derive(Clone, Debug, Default)]
pub(crate) struct RoomSync {
    /// The timeline's encrypted state events and power levels changes, in timeline order.
    pub(crate) timeline: Vec<Raw<AnySyncStateEvent>>,
    /// The encrypted state events of the sync's `state` section.
    pub(crate) state: Vec<Raw<AnySyncStateEvent>>,
    /// Whether the timeline has a gap (`limited`): what the gap held is fetched.
    pub(crate) limited: bool,
    /// Whether events rejected for a transient reason (an unknown or untrusted device) are
    /// validated again: on a device change, at start-up and on the schedule, not on every sync
    /// (each costs a decryption, and any member can post them).
    pub(crate) revalidate: bool,
}

/// A room's timeline gaps: whether the state they held is still to be checked, and when it last
/// was (checks are rate-limited).
#[derive(Debug, Default)]
pub(super) struct Gap {
    pub(super) owed: bool,
    pub(super) fetched_at: Option<Instant>,
}

impl Gap {
    /// Whether the check is owed and `interval` has passed since the last one (a member who
    /// floods the room makes every sync gappy, and each check costs the whole room state).
    pub(super) fn is_due(&self, now: Instant, interval: Duration) -> bool {
        self.owed && self.fetched_at.is_none_or(|at| now.duration_since(at) >= interval)
    }
}
