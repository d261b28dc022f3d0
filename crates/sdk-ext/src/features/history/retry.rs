//! When kept bundles are fetched in the background: one import per room at a time, and a
//! download that failed for a reason that may clear is tried again after a growing delay, not
//! with every sync.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use ruma::{OwnedRoomId, RoomId};

/// The longest delay between two retries.
pub(super) const MAX_RETRY: Duration = Duration::from_secs(60 * 60);

/// The delay after `previous` (none: the first failure, which waits `first`): doubled, at most
/// [`MAX_RETRY`].
pub(super) fn next_delay(previous: Option<Duration>, first: Duration) -> Duration {
    previous.map_or(first, |d| d.saturating_mul(2)).min(MAX_RETRY)
}

/// The background imports: rooms in flight, and rooms waiting for their next retry.
#[derive(Debug, Default)]
pub(super) struct Schedule {
    in_flight: BTreeSet<OwnedRoomId>,
    retries: BTreeMap<OwnedRoomId, (Instant, Duration)>,
}

impl Schedule {
    /// Starts a background import of `room_id` at `now` unless one runs or its retry is not
    /// due; returns whether it started.
    pub(super) fn start(&mut self, room_id: &RoomId, now: Instant) -> bool {
        if self.in_flight.contains(room_id)
            || self.retries.get(room_id).is_some_and(|(at, _)| *at > now)
        {
            return false;
        }
        self.in_flight.insert(room_id.to_owned());
        true
    }

    /// A background import of `room_id` ended.
    pub(super) fn end(&mut self, room_id: &RoomId) {
        self.in_flight.remove(room_id);
    }

    /// Records an import of `room_id` at `now`: `deferred`, its next retry is scheduled after a
    /// longer delay than the last (`first` after a first failure); otherwise it has none.
    /// Returns the delay scheduled.
    pub(super) fn record(
        &mut self,
        room_id: &RoomId,
        deferred: bool,
        now: Instant,
        first: Duration,
    ) -> Option<Duration> {
        if !deferred {
            self.retries.remove(room_id);
            return None;
        }
        let delay = next_delay(self.retries.get(room_id).map(|(_, d)| *d), first);
        self.retries.insert(room_id.to_owned(), (now + delay, delay));
        Some(delay)
    }

    /// The rooms whose retry is due at `now` and not in flight.
    pub(super) fn due(&self, now: Instant) -> Vec<OwnedRoomId> {
        self.retries
            .iter()
            .filter(|(room_id, (at, _))| *at <= now && !self.in_flight.contains(*room_id))
            .map(|(room_id, _)| room_id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use ruma::room_id;

    use super::*;

    const FIRST_RETRY: Duration = Duration::from_secs(30);

    #[test]
    fn the_delay_doubles_up_to_an_hour() {
        let mut delay = None;
        let mut seen = Vec::new();
        for _ in 0..10 {
            let next = next_delay(delay, FIRST_RETRY);
            seen.push(next.as_secs());
            delay = Some(next);
        }
        assert_eq!(seen, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
    }

    #[test]
    fn one_import_per_room_and_retries_wait_for_their_time() {
        let room = room_id!("!room:example.org");
        let now = Instant::now();
        let mut schedule = Schedule::default();
        assert!(schedule.start(room, now));
        assert!(!schedule.start(room, now), "one import of a room at a time");
        assert_eq!(schedule.record(room, true, now, FIRST_RETRY), Some(FIRST_RETRY));
        schedule.end(room);
        assert!(!schedule.start(room, now), "not before its retry is due");
        assert!(schedule.due(now).is_empty());
        let later = now + FIRST_RETRY;
        assert_eq!(schedule.due(later), vec![room.to_owned()]);
        assert!(schedule.start(room, later));
        assert_eq!(
            schedule.record(room, true, later, FIRST_RETRY),
            Some(FIRST_RETRY * 2),
            "doubled"
        );
        schedule.end(room);
        assert!(schedule.start(room, later + FIRST_RETRY * 2));
        assert_eq!(
            schedule.record(room, false, later, FIRST_RETRY),
            None,
            "an import that went through"
        );
        schedule.end(room);
        assert!(schedule.start(room, later), "no retry pending any more");
    }
}
