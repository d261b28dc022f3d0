//! Bundle announcements for rooms the client does not know yet, held in memory only.
//!
//! An inviter announces the bundle before inviting (so an invitee who accepts at once has it),
//! so an announcement may arrive before its invite. Anyone can send one naming any room,
//! though: such announcements are never written to the store, only held in memory for a short
//! while and for a few rooms, and stored once the client learns of the room (the invite
//! arrives); otherwise they are dropped.

use std::time::{Duration, Instant};

use ruma::RoomId;
use state_store_ext::PendingBundle;

/// Announcements for unknown rooms, each with when it arrived.
#[derive(Debug, Default)]
pub(super) struct EarlyAnnouncements {
    held: Vec<(Instant, PendingBundle)>,
}

impl EarlyAnnouncements {
    /// Holds `announcement` at `now`, replacing one of the same room and sender; drops those
    /// older than `ttl` first. Refused (returns `false`) when it would make more than
    /// `max_rooms` rooms held.
    pub(super) fn hold(
        &mut self,
        announcement: PendingBundle,
        now: Instant,
        ttl: Duration,
        max_rooms: usize,
    ) -> bool {
        self.expire(now, ttl);
        self.held.retain(|(_, held)| {
            !(held.room_id == announcement.room_id && held.sender == announcement.sender)
        });
        let known_room = self.held.iter().any(|(_, held)| held.room_id == announcement.room_id);
        if !known_room && self.rooms() >= max_rooms {
            return false;
        }
        self.held.push((now, announcement));
        true
    }

    /// Takes the announcements held for `room_id` that are not older than `ttl` at `now`.
    pub(super) fn take(
        &mut self,
        room_id: &RoomId,
        now: Instant,
        ttl: Duration,
    ) -> Vec<PendingBundle> {
        self.expire(now, ttl);
        let (taken, kept) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(_, held)| held.room_id == room_id);
        self.held = kept;
        taken.into_iter().map(|(_, announcement)| announcement).collect()
    }

    /// Whether any announcement is held for `room_id`.
    pub(super) fn holds(&self, room_id: &RoomId) -> bool {
        self.held.iter().any(|(_, held)| held.room_id == room_id)
    }

    fn expire(&mut self, now: Instant, ttl: Duration) {
        self.held.retain(|(at, _)| now.saturating_duration_since(*at) < ttl);
    }

    fn rooms(&self) -> usize {
        let mut rooms: Vec<&RoomId> = self.held.iter().map(|(_, held)| &*held.room_id).collect();
        rooms.sort_unstable();
        rooms.dedup();
        rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use ruma::{MilliSecondsSinceUnixEpoch, OwnedRoomId, OwnedUserId, room_id};

    use super::*;

    fn announcement(room: &str, sender: &str) -> PendingBundle {
        PendingBundle {
            room_id: OwnedRoomId::try_from(room).unwrap(),
            sender: OwnedUserId::try_from(format!("@{sender}:example.org")).unwrap(),
            sender_device: None,
            file: serde_json::json!({}),
            received_at: MilliSecondsSinceUnixEpoch::now(),
        }
    }

    const TTL: Duration = Duration::from_secs(600);

    #[test]
    fn held_for_a_few_rooms_only_and_one_per_room_and_sender() {
        let now = Instant::now();
        let mut early = EarlyAnnouncements::default();
        assert!(early.hold(announcement("!a:x.org", "alice"), now, TTL, 2));
        assert!(early.hold(announcement("!a:x.org", "alice"), now, TTL, 2), "replaced");
        assert!(early.hold(announcement("!a:x.org", "bob"), now, TTL, 2), "same room");
        assert!(early.hold(announcement("!b:x.org", "alice"), now, TTL, 2));
        assert!(!early.hold(announcement("!c:x.org", "alice"), now, TTL, 2), "a third room");
        assert_eq!(early.take(room_id!("!a:x.org"), now, TTL).len(), 2);
        assert!(!early.holds(room_id!("!a:x.org")));
        assert!(early.hold(announcement("!c:x.org", "alice"), now, TTL, 2), "room made again");
    }

    #[test]
    fn dropped_once_older_than_the_ttl() {
        let now = Instant::now();
        let mut early = EarlyAnnouncements::default();
        assert!(early.hold(announcement("!a:x.org", "alice"), now, TTL, 1));
        assert!(!early.hold(announcement("!b:x.org", "alice"), now, TTL, 1));
        let later = now + TTL;
        assert!(early.take(room_id!("!a:x.org"), later, TTL).is_empty(), "expired");
        assert!(early.hold(announcement("!b:x.org", "alice"), later, TTL, 1), "room freed");
    }
}
