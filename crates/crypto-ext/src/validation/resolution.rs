//! Which authorised event holds a slot: the newest, by `origin_server_ts` then `event_id`
//! (MSC3414's rule), across the encrypted and the plaintext copies of the slot.

use ruma::{EventId, MilliSecondsSinceUnixEpoch};

/// The ordering key of an event in its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotOrder<'a> {
    /// Compared first.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// Breaks ties, by byte order.
    pub event_id: &'a str,
}

impl<'a> SlotOrder<'a> {
    /// The ordering key of an event.
    pub fn new(origin_server_ts: MilliSecondsSinceUnixEpoch, event_id: &'a EventId) -> Self {
        Self { origin_server_ts, event_id: event_id.as_str() }
    }
}

/// The newest of `candidates`, by the key `order` gives each; `None` if there are none.
pub fn newest<T, I, F>(candidates: I, order: F) -> Option<T>
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

#[cfg(test)]
mod tests {
    use ruma::{event_id, uint};

    use super::*;

    fn ts(ms: u32) -> MilliSecondsSinceUnixEpoch {
        MilliSecondsSinceUnixEpoch(uint!(0) + ruma::UInt::from(ms))
    }

    #[test]
    fn newest_timestamp_wins_then_event_id() {
        let events = [
            (ts(10), event_id!("$b")),
            (ts(30), event_id!("$a")),
            (ts(30), event_id!("$c")),
            (ts(20), event_id!("$z")),
        ];
        let winner = newest(events.iter(), |(t, id)| SlotOrder::new(*t, id)).unwrap();
        assert_eq!(winner.1, event_id!("$c"));

        assert!(replaces(
            SlotOrder::new(ts(31), event_id!("$a")),
            Some(SlotOrder::new(ts(30), event_id!("$c")))
        ));
        assert!(!replaces(
            SlotOrder::new(ts(30), event_id!("$b")),
            Some(SlotOrder::new(ts(30), event_id!("$c")))
        ));
        assert!(!replaces(
            SlotOrder::new(ts(30), event_id!("$c")),
            Some(SlotOrder::new(ts(30), event_id!("$c")))
        ));
        assert!(replaces(SlotOrder::new(ts(1), event_id!("$a")), None));
    }
}
