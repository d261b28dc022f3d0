//! How many of each sender's events in a room wait for keys, against
//! `RemoteWorkLimits::pending_per_sender_per_room`.

use std::collections::BTreeMap;

use ruma::{OwnedUserId, UserId};
use state_store_ext::PendingEvent;

/// Per sender, how many events of one room wait for keys.
#[derive(Debug, Default)]
pub(super) struct WaitingCounts {
    counts: BTreeMap<OwnedUserId, usize>,
}

impl WaitingCounts {
    /// The counts of the events that wait already.
    pub(super) fn from_pending<'a>(pending: impl IntoIterator<Item = &'a PendingEvent>) -> Self {
        let mut counts: BTreeMap<OwnedUserId, usize> = BTreeMap::new();
        for event in pending {
            if let Ok(Some(sender)) = event.event.get_field::<OwnedUserId>("sender") {
                *counts.entry(sender).or_default() += 1;
            }
        }
        Self { counts }
    }

    /// Counts one more waiting event of `sender`, unless `limit` of them wait already; returns
    /// whether it may wait.
    pub(super) fn admit(&mut self, sender: &UserId, limit: usize) -> bool {
        let count = self.counts.entry(sender.to_owned()).or_default();
        if *count >= limit {
            return false;
        }
        *count += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use ruma::{owned_event_id, owned_room_id, serde::Raw, user_id};

    use super::*;

    fn pending(sender: &str, n: u32) -> PendingEvent {
        PendingEvent {
            room_id: owned_room_id!("!room:example.org"),
            event_id: format!("$e{n}").try_into().unwrap_or_else(|_| owned_event_id!("$e")),
            session_id: "s".to_owned(),
            message_index: n,
            event: Raw::new(&serde_json::json!({ "sender": sender })).unwrap().cast_unchecked(),
            position: u64::from(n),
            power_levels_at: None,
        }
    }

    #[test]
    fn each_sender_waits_up_to_the_limit_counting_what_waits_already() {
        let stored = [pending("@mallory:example.org", 0), pending("@mallory:example.org", 1)];
        let mut counts = WaitingCounts::from_pending(&stored);
        let mallory = user_id!("@mallory:example.org");
        let alice = user_id!("@alice:example.org");
        assert!(counts.admit(mallory, 3));
        assert!(!counts.admit(mallory, 3), "two stored and one admitted reach the limit");
        assert!(counts.admit(alice, 3), "another sender has her own count");
        assert!(counts.admit(alice, 3));
        assert!(counts.admit(alice, 3));
        assert!(!counts.admit(alice, 3));
    }
}
