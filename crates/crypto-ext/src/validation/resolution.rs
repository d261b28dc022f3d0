//! Which authorised event holds a slot, and which events replay an older one (DESIGN section 6,
//! rule 5).
//!
//! Order comes from the room, never from `origin_server_ts` (any homeserver sets it freely, so
//! it could pin or roll a slot back): each event a client processes gets the next *position* in
//! its room, in the order the room delivers its state events (a sync's timeline in order, then
//! the current state the homeserver resolved). The accepted event with the greatest position
//! holds the slot. A decrypted value outranks the slot's plaintext copy whatever their
//! positions: a client that joins late sees both only as current state, with no order between
//! them, and in a room with encrypted state the encrypted copy is the one its members write.
//! Records stored before positions existed all have position 0; among those alone, the old rule
//! (timestamp, then event id) still breaks the tie.

use ruma::{EventId, MilliSecondsSinceUnixEpoch};

/// The ordering key of an event in its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotOrder<'a> {
    /// Whether the value was decrypted (it outranks a plaintext copy): compared first.
    pub encrypted: bool,
    /// The event's position in its room, as this client met it.
    pub position: u64,
    /// Breaks ties between records stored before positions existed (position 0).
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// Breaks the remaining ties, by byte order.
    pub event_id: &'a str,
}

impl<'a> SlotOrder<'a> {
    /// The ordering key of an event.
    pub fn new(
        encrypted: bool,
        position: u64,
        origin_server_ts: MilliSecondsSinceUnixEpoch,
        event_id: &'a EventId,
    ) -> Self {
        Self { encrypted, position, origin_server_ts, event_id: event_id.as_str() }
    }
}

/// The latest of `candidates` in room order, by the key `order` gives each; `None` if there are
/// none.
pub fn latest<T, I, F>(candidates: I, order: F) -> Option<T>
where
    I: IntoIterator<Item = T>,
    F: Fn(&T) -> SlotOrder<'_>,
{
    candidates.into_iter().max_by(|a, b| order(a).cmp(&order(b)))
}

/// Whether an event ordered `candidate` replaces the current holder ordered `current`.
pub fn replaces(candidate: SlotOrder<'_>, current: Option<SlotOrder<'_>>) -> bool {
    current.is_none_or(|current| candidate > current)
}

/// Where a Megolm session's ratchet stood for an event of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionIndex<'a> {
    /// The session.
    pub session_id: &'a str,
    /// The event's index in it.
    pub message_index: u32,
}

/// Rule 5, replays: the index of an accepted event of the slot, in the same session as
/// `candidate`, that is not older than it; `None` when the candidate is newer than every
/// accepted event of its session in `accepted` (the slot's accepted events that came before it
/// in the room).
///
/// A sender ratchets its state session forward on every update, so an index that does not
/// grow is an older ciphertext posted again.
pub fn replayed_index<'a>(
    candidate: SessionIndex<'_>,
    accepted: impl IntoIterator<Item = SessionIndex<'a>>,
) -> Option<u32> {
    accepted
        .into_iter()
        .filter(|earlier| earlier.session_id == candidate.session_id)
        .map(|earlier| earlier.message_index)
        .filter(|index| *index >= candidate.message_index)
        .max()
}

#[cfg(test)]
mod tests {
    use ruma::{event_id, uint};

    use super::*;

    fn ts(ms: u32) -> MilliSecondsSinceUnixEpoch {
        MilliSecondsSinceUnixEpoch(uint!(0) + ruma::UInt::from(ms))
    }

    #[test]
    fn the_room_order_decides_not_the_timestamp() {
        // A far-future timestamp earlier in the room loses to a later event.
        let pinned = SlotOrder::new(true, 1, ts(u32::MAX), event_id!("$z"));
        let later = SlotOrder::new(true, 2, ts(10), event_id!("$a"));
        assert!(replaces(later, Some(pinned)));
        assert!(!replaces(pinned, Some(later)));
        let events = [(1, ts(u32::MAX), event_id!("$z")), (2, ts(10), event_id!("$a"))];
        let winner = latest(events.iter(), |(p, t, id)| SlotOrder::new(true, *p, *t, id)).unwrap();
        assert_eq!(winner.2, event_id!("$a"));
        assert!(replaces(later, None));
        // A plaintext copy later in the room does not displace a decrypted value.
        let plaintext = SlotOrder::new(false, 3, ts(20), event_id!("$p"));
        assert!(!replaces(plaintext, Some(later)));
        assert!(replaces(later, Some(plaintext)));
        assert!(!replaces(later, Some(later)));
    }

    #[test]
    fn records_without_positions_keep_the_timestamp_rule() {
        let events = [
            (0, ts(10), event_id!("$b")),
            (0, ts(30), event_id!("$a")),
            (0, ts(30), event_id!("$c")),
            (0, ts(20), event_id!("$z")),
        ];
        let winner = latest(events.iter(), |(p, t, id)| SlotOrder::new(true, *p, *t, id)).unwrap();
        assert_eq!(winner.2, event_id!("$c"));
        // Any positioned record comes after them.
        assert!(replaces(
            SlotOrder::new(true, 1, ts(1), event_id!("$a")),
            Some(SlotOrder::new(true, 0, ts(30), event_id!("$c")))
        ));
    }

    #[test]
    fn an_index_that_does_not_grow_is_a_replay() {
        let accepted = [
            SessionIndex { session_id: "s", message_index: 3 },
            SessionIndex { session_id: "s", message_index: 1 },
            SessionIndex { session_id: "other", message_index: 9 },
        ];
        let at = |session_id, message_index| SessionIndex { session_id, message_index };
        assert_eq!(replayed_index(at("s", 1), accepted), Some(3), "an older index");
        assert_eq!(replayed_index(at("s", 3), accepted), Some(3), "the same index again");
        assert_eq!(replayed_index(at("s", 4), accepted), None, "the next update");
        assert_eq!(replayed_index(at("new", 0), accepted), None, "a rotated session");
        assert_eq!(replayed_index(at("s", 0), []), None, "nothing accepted before");
    }
}
