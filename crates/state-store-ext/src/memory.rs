//! The in-memory backend, for tests and ephemeral clients.

use std::{
    collections::BTreeMap,
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use async_trait::async_trait;
use crypto_ext::{
    RejectedState, StateSlot,
    state_sessions::{InboundStateSessionPickle, OutboundStateSessionPickle},
};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::{
    Result, StateChanges, StateStore,
    changes::RoomSlot,
    records::{
        KeyRequest, PendingBundle, PendingEvent, ReceivedPreview, SentBundle, SentPreview,
        SessionEventRef, StateRecord, WithheldSession,
    },
};

#[derive(Debug, Default)]
struct Inner {
    history: BTreeMap<RoomSlot, BTreeMap<OwnedEventId, StateRecord>>,
    current: BTreeMap<RoomSlot, StateRecord>,
    positions: BTreeMap<OwnedRoomId, u64>,
    rejected: BTreeMap<OwnedRoomId, BTreeMap<OwnedEventId, RejectedState>>,
    pending: BTreeMap<String, BTreeMap<OwnedEventId, PendingEvent>>,
    session_events: BTreeMap<(String, u32), SessionEventRef>,
    // Pickles are kept serialised: they are not `Clone`, and this mirrors what SQLite stores.
    outbound: BTreeMap<RoomSlot, String>,
    inbound: BTreeMap<String, String>,
    bundles: BTreeMap<(OwnedRoomId, OwnedUserId), PendingBundle>,
    key_requests: BTreeMap<(OwnedRoomId, String), KeyRequest>,
    withheld: BTreeMap<String, WithheldSession>,
    received_previews: BTreeMap<OwnedRoomId, ReceivedPreview>,
    sent_previews: BTreeMap<OwnedRoomId, SentPreview>,
    sent_bundles: BTreeMap<(OwnedRoomId, OwnedUserId), SentBundle>,
}

/// A [`StateStore`] in memory: nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryStateStore {
    inner: RwLock<Inner>,
}

impl MemoryStateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn room_slot(room_id: &RoomId, slot: &StateSlot) -> RoomSlot {
    (room_id.to_owned(), slot.clone())
}

#[async_trait]
impl StateStore for MemoryStateStore {
    async fn save_changes(&self, changes: StateChanges) -> Result<()> {
        // Serialise pickles before taking the lock, so a failure leaves nothing half-applied.
        let outbound: Vec<(RoomSlot, String)> = changes
            .outbound_sessions
            .iter()
            .map(|p| (room_slot(p.room_id(), p.slot()), p.to_json()))
            .collect();
        let inbound: Vec<(String, String)> =
            changes.inbound_sessions.iter().map(|p| (p.session_id(), p.to_json())).collect();

        let mut inner = self.write();
        for record in changes.state {
            let key = room_slot(&record.room_id, &record.slot);
            if let Some(rejected) = inner.rejected.get_mut(&record.room_id) {
                rejected.remove(record.event_id());
            }
            if record.replaces_or_updates(inner.current.get(&key)) {
                inner.current.insert(key.clone(), record.clone());
            }
            inner.history.entry(key).or_default().insert(record.event_id().clone(), record);
        }
        inner.positions.extend(changes.room_positions);
        for rejected in changes.rejected {
            inner
                .rejected
                .entry(rejected.room_id.clone())
                .or_default()
                .insert(rejected.event_id.clone(), rejected);
        }
        for pending in changes.pending {
            inner
                .pending
                .entry(pending.session_id.clone())
                .or_default()
                .insert(pending.event_id.clone(), pending);
        }
        for (session_id, event_id) in changes.resolved_pending {
            if let Some(events) = inner.pending.get_mut(&session_id) {
                events.remove(&event_id);
                if events.is_empty() {
                    inner.pending.remove(&session_id);
                }
            }
        }
        for mapping in changes.session_events {
            inner
                .session_events
                .insert((mapping.session_id.clone(), mapping.message_index), mapping);
        }
        inner.outbound.extend(outbound);
        inner.inbound.extend(inbound);
        for bundle in changes.pending_bundles {
            inner.bundles.insert((bundle.room_id.clone(), bundle.sender.clone()), bundle);
        }
        for key in changes.removed_bundles {
            inner.bundles.remove(&key);
        }
        for withheld in changes.withheld_sessions {
            inner.withheld.insert(withheld.session_id.clone(), withheld);
        }
        for request in changes.key_requests {
            inner
                .key_requests
                .insert((request.room_id.clone(), request.session_id.clone()), request);
        }
        for key in changes.removed_key_requests {
            inner.key_requests.remove(&key);
        }
        for preview in changes.received_previews {
            inner.received_previews.insert(preview.room_id.clone(), preview);
        }
        for room_id in changes.removed_previews {
            inner.received_previews.remove(&room_id);
        }
        for sent in changes.sent_bundles {
            inner.sent_bundles.insert((sent.room_id.clone(), sent.invitee.clone()), sent);
        }
        for key in changes.removed_sent_bundles {
            inner.sent_bundles.remove(&key);
        }
        for sent in changes.sent_previews {
            inner.sent_previews.insert(sent.room_id.clone(), sent);
        }
        Ok(())
    }

    async fn current_state(
        &self,
        room_id: &RoomId,
        slot: &StateSlot,
    ) -> Result<Option<StateRecord>> {
        Ok(self.read().current.get(&room_slot(room_id, slot)).cloned())
    }

    async fn room_state(&self, room_id: &RoomId) -> Result<Vec<StateRecord>> {
        Ok(self.read().current.values().filter(|r| r.room_id == room_id).cloned().collect())
    }

    async fn room_position(&self, room_id: &RoomId) -> Result<u64> {
        Ok(self.read().positions.get(room_id).copied().unwrap_or(0))
    }

    async fn slot_history(&self, room_id: &RoomId, slot: &StateSlot) -> Result<Vec<StateRecord>> {
        let mut records: Vec<StateRecord> = self
            .read()
            .history
            .get(&room_slot(room_id, slot))
            .map(|events| events.values().cloned().collect())
            .unwrap_or_default();
        records.sort_by(|a, b| a.order().cmp(&b.order()));
        Ok(records)
    }

    async fn rejected_events(&self, room_id: &RoomId) -> Result<Vec<RejectedState>> {
        Ok(self
            .read()
            .rejected
            .get(room_id)
            .map(|events| events.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn pending_for_session(&self, session_id: &str) -> Result<Vec<PendingEvent>> {
        Ok(self
            .read()
            .pending
            .get(session_id)
            .map(|events| events.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn pending_in_room(&self, room_id: &RoomId) -> Result<Vec<PendingEvent>> {
        Ok(self
            .read()
            .pending
            .values()
            .flat_map(BTreeMap::values)
            .filter(|p| p.room_id == room_id)
            .cloned()
            .collect())
    }

    async fn session_event(
        &self,
        session_id: &str,
        message_index: u32,
    ) -> Result<Option<SessionEventRef>> {
        Ok(self.read().session_events.get(&(session_id.to_owned(), message_index)).cloned())
    }

    async fn outbound_session(
        &self,
        room_id: &RoomId,
        slot: &StateSlot,
    ) -> Result<Option<OutboundStateSessionPickle>> {
        let json = self.read().outbound.get(&room_slot(room_id, slot)).cloned();
        Ok(json.map(|json| OutboundStateSessionPickle::from_json(&json)).transpose()?)
    }

    async fn outbound_sessions(&self, room_id: &RoomId) -> Result<Vec<OutboundStateSessionPickle>> {
        let pickles: Vec<String> = self
            .read()
            .outbound
            .iter()
            .filter(|((room, _), _)| room == room_id)
            .map(|(_, json)| json.clone())
            .collect();
        Ok(pickles
            .iter()
            .map(|json| OutboundStateSessionPickle::from_json(json))
            .collect::<Result<_, _>>()?)
    }

    async fn inbound_session(&self, session_id: &str) -> Result<Option<InboundStateSessionPickle>> {
        let json = self.read().inbound.get(session_id).cloned();
        Ok(json.map(|json| InboundStateSessionPickle::from_json(&json)).transpose()?)
    }

    async fn inbound_sessions(
        &self,
        session_ids: &[String],
    ) -> Result<Vec<InboundStateSessionPickle>> {
        let found: Vec<String> = {
            let inner = self.read();
            session_ids.iter().filter_map(|id| inner.inbound.get(id).cloned()).collect()
        };
        Ok(found
            .iter()
            .map(|json| InboundStateSessionPickle::from_json(json))
            .collect::<Result<_, _>>()?)
    }

    async fn rooms_with_pending_bundles(&self) -> Result<Vec<OwnedRoomId>> {
        let mut rooms: Vec<OwnedRoomId> =
            self.read().bundles.keys().map(|(room, _)| room.clone()).collect();
        rooms.dedup();
        Ok(rooms)
    }

    async fn pending_bundles(&self, room_id: &RoomId) -> Result<Vec<PendingBundle>> {
        Ok(self.read().bundles.values().filter(|b| b.room_id == room_id).cloned().collect())
    }

    async fn withheld_session(&self, session_id: &str) -> Result<Option<WithheldSession>> {
        Ok(self.read().withheld.get(session_id).cloned())
    }

    async fn key_requests(&self, room_id: &RoomId) -> Result<Vec<KeyRequest>> {
        Ok(self.read().key_requests.values().filter(|r| r.room_id == room_id).cloned().collect())
    }

    async fn received_preview(&self, room_id: &RoomId) -> Result<Option<ReceivedPreview>> {
        Ok(self.read().received_previews.get(room_id).cloned())
    }

    async fn sent_preview(&self, room_id: &RoomId) -> Result<Option<SentPreview>> {
        Ok(self.read().sent_previews.get(room_id).cloned())
    }

    async fn sent_bundle(&self, room_id: &RoomId, invitee: &UserId) -> Result<Option<SentBundle>> {
        Ok(self.read().sent_bundles.get(&(room_id.to_owned(), invitee.to_owned())).cloned())
    }
}

#[cfg(test)]
mod tests {
    crate::integration_tests::state_store_integration_tests!(TestBackend::memory());
}
