//! From what the client stores to validated, persisted state, one transaction per batch.
//!
//! Scans after each sync, retries when keys arrive, and tells subscribers after the commit.

use std::collections::{BTreeMap, BTreeSet};

use crypto_ext::{
    EncryptedStateEvent, RejectedState, StateSenderTrust, StateSlot, UnprovenCreators,
    ValidationInput, Verdict, critical::is_critical, identifiers::AESTHETIC_SLOTS, validate,
};
use matrix_sdk::{Room, deserialized_responses::RawAnySyncOrStrippedState};
use ruma::{
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
    events::{AnySyncStateEvent, StateEventType, room::power_levels::RoomPowerLevels},
    serde::Raw,
};
use state_store_ext::{PendingEvent, SessionEventRef, StateChanges, StateRecord};
use tracing::{debug, instrument, warn};

use super::{EncryptedState, decrypt::Decryption};
use crate::{Result, StateUpdate, context::power_levels};

/// Changes and the updates to announce once they are stored.
#[derive(Default)]
struct Batch {
    changes: StateChanges,
    updates: Vec<StateUpdate>,
}

impl Batch {
    fn push_rejected(&mut self, rejected: RejectedState) {
        self.updates.push(StateUpdate::Rejected {
            room_id: rejected.room_id.clone(),
            event_id: rejected.event_id.clone(),
            reason: rejected.reason.clone(),
        });
        self.changes.rejected.push(rejected);
    }
}

impl EncryptedState {
    /// Every joined room.
    pub(crate) async fn scan_all(&self) -> Result<()> {
        for room in self.ctx.client.joined_rooms() {
            self.scan_room(&room).await?;
        }
        Ok(())
    }

    /// The rooms a sync touched, each with the encrypted state events of its timeline.
    pub(crate) async fn scan_rooms(
        &self,
        rooms: &BTreeMap<OwnedRoomId, Vec<Raw<AnySyncStateEvent>>>,
    ) -> Result<()> {
        for (room_id, timeline) in rooms {
            if let Some(room) = self.ctx.client.get_room(room_id) {
                self.scan_room_with(&room, timeline).await?;
            }
        }
        Ok(())
    }

    /// Processes the encrypted state the client stores for `room` that we have not seen yet
    /// (and events rejected for a reason that may have cleared).
    pub(crate) async fn scan_room(&self, room: &Room) -> Result<()> {
        self.scan_room_with(room, &[]).await
    }

    /// [`EncryptedState::scan_room`], with the encrypted state events of a sync's timeline
    /// too: the client stores only a slot's current event, and an update that follows another
    /// in the same sync (a forged one, say) must not hide it.
    #[instrument(skip_all, fields(room_id = %room.room_id()))]
    async fn scan_room_with(&self, room: &Room, timeline: &[Raw<AnySyncStateEvent>]) -> Result<()> {
        let _serial = self.processing.lock().await;
        let mut raws: Vec<RawAnySyncOrStrippedState> =
            timeline.iter().cloned().map(RawAnySyncOrStrippedState::Sync).collect();
        raws.extend(room.get_state_events(StateEventType::RoomEncrypted).await?);
        let enabled = self.ctx.state_encryption_enabled(room).await;
        if raws.is_empty() && !enabled {
            self.set_waiting_room(room.room_id(), false);
            return Ok(());
        }
        let room_id = room.room_id();
        let store = &self.ctx.store;
        let mut known: BTreeSet<OwnedEventId> = BTreeSet::new();
        for record in store.room_state(room_id).await? {
            known.insert(record.event_id().clone());
        }
        for pending in store.pending_in_room(room_id).await? {
            known.insert(pending.event_id);
        }
        for rejected in store.rejected_events(room_id).await? {
            // Transient rejections (an unknown device) are validated again on every scan: the
            // device may have become known since.
            if rejected.reason.is_transient() {
                self.add_unknown_device_sender(room_id, rejected.sender);
            } else {
                known.insert(rejected.event_id);
            }
        }

        let power_levels = power_levels(room).await;
        let mut batch = Batch::default();
        let mut fresh = Vec::new();
        for raw in raws {
            let RawAnySyncOrStrippedState::Sync(raw) = raw else { continue };
            let event = match EncryptedStateEvent::from_raw(&raw) {
                Ok(event) => event,
                Err(error) => {
                    if let Some(rejected) =
                        RejectedState::malformed(room_id, &raw, &error.to_string())
                        && known.insert(rejected.event_id.clone())
                    {
                        warn!(event_id = %rejected.event_id, %error, "malformed encrypted state");
                        batch.push_rejected(rejected);
                    }
                    continue;
                }
            };
            // Known, or met twice (in the timeline and as the current event).
            if known.insert(event.event_id.clone()) {
                fresh.push((raw, event));
            }
        }
        // Events whose keys we hold are decrypted as one batch (each session read once, on
        // every core); the others go one by one through the client's machine.
        let events: Vec<EncryptedStateEvent> = fresh.iter().map(|(_, e)| e.clone()).collect();
        let mut ours = self.decrypt_with_our_sessions(room_id, events).await?;
        let mut slots = BTreeSet::new();
        for (raw, event) in fresh {
            let decryption = match ours.remove(&event.event_id) {
                Some(decryption) => decryption,
                None => self.decrypt(room, &raw, &event).await?,
            };
            let record = Record {
                room_id,
                raw: &raw,
                power_levels: &power_levels,
                was_pending: false,
                unproven_creators: self.ctx.config.unproven_creators,
                sender_trust: self.ctx.config.sender_trust,
            };
            if let Some(slot) = record.record(event, decryption, &mut batch) {
                slots.insert(slot);
            }
        }
        if enabled {
            self.plaintext_copies(room, slots, &known, &mut batch).await?;
        }
        self.commit(batch).await?;
        let waiting = !store.pending_in_room(room_id).await?.is_empty();
        self.set_waiting_room(room_id, waiting);
        // Whose unknown devices the room still waits for (read again only when it waited for
        // some before this scan, or this scan added some).
        if self.waits_for_unknown_devices(room_id) {
            let senders = store
                .rejected_events(room_id)
                .await?
                .into_iter()
                .filter(|rejected| rejected.reason.is_transient())
                .map(|rejected| rejected.sender)
                .collect();
            self.set_unknown_device_senders(room_id, senders);
        }
        Ok(())
    }

    /// Retries the pending events of `sessions` (their keys just arrived).
    pub(crate) async fn retry_sessions(&self, sessions: BTreeSet<String>) -> Result<()> {
        let _serial = self.processing.lock().await;
        let mut batch = Batch::default();
        for session_id in sessions {
            for pending in self.ctx.store.pending_for_session(&session_id).await? {
                let Some(room) = self.ctx.client.get_room(&pending.room_id) else { continue };
                let Ok(event) = EncryptedStateEvent::from_raw(&pending.event) else { continue };
                let power_levels = power_levels(&room).await;
                let decryption = self.decrypt(&room, &pending.event, &event).await?;
                let record = Record {
                    room_id: room.room_id(),
                    raw: &pending.event,
                    power_levels: &power_levels,
                    was_pending: true,
                    unproven_creators: self.ctx.config.unproven_creators,
                    sender_trust: self.ctx.config.sender_trust,
                };
                record.record(event, decryption, &mut batch);
            }
        }
        self.commit(batch).await
    }

    /// Records the plaintext copies of the aesthetic slots and of the slots just written
    /// encrypted, so that each slot resolves across both copies.
    async fn plaintext_copies(
        &self,
        room: &Room,
        mut slots: BTreeSet<StateSlot>,
        known: &BTreeSet<OwnedEventId>,
        batch: &mut Batch,
    ) -> Result<()> {
        slots.extend(AESTHETIC_SLOTS.iter().map(|t| StateSlot::new(*t, "")));
        for slot in slots {
            if is_critical(&slot.event_type) {
                continue;
            }
            let event_type = StateEventType::from(slot.event_type.as_str());
            let Some(RawAnySyncOrStrippedState::Sync(raw)) =
                room.get_state_event(event_type, &slot.state_key).await?
            else {
                continue;
            };
            let Some(record) = StateRecord::plaintext(room.room_id(), &slot, &raw) else {
                continue;
            };
            if !known.contains(record.event_id()) {
                batch.changes.state.push(record);
            }
        }
        Ok(())
    }

    /// Saves a batch in one transaction, then tells subscribers.
    async fn commit(&self, mut batch: Batch) -> Result<()> {
        if batch.changes.is_empty() {
            return Ok(());
        }
        let unknown_devices: Vec<(OwnedRoomId, OwnedUserId)> = batch
            .changes
            .rejected
            .iter()
            .filter(|rejected| rejected.reason.is_transient())
            .map(|rejected| (rejected.room_id.clone(), rejected.sender.clone()))
            .collect();
        let store = &self.ctx.store;
        store.save_changes(std::mem::take(&mut batch.changes)).await?;
        for (room_id, sender) in unknown_devices {
            self.add_unknown_device_sender(&room_id, sender);
        }
        for update in &mut batch.updates {
            if let StateUpdate::Accepted { room_id, slot, event_id, current, .. } = update {
                *current = store
                    .current_state(room_id, slot)
                    .await?
                    .is_some_and(|winner| winner.event_id() == event_id);
            }
        }
        self.ctx.notify(batch.updates);
        Ok(())
    }
}

/// Where one event is recorded: its room, its raw form, the room's power levels, and whether it
/// had been waiting for its key.
struct Record<'a> {
    room_id: &'a RoomId,
    raw: &'a Raw<AnySyncStateEvent>,
    power_levels: &'a RoomPowerLevels,
    was_pending: bool,
    unproven_creators: UnprovenCreators,
    sender_trust: StateSenderTrust,
}

impl Record<'_> {
    /// Validates a decrypted event and records it (or records it as pending or rejected).
    /// Returns the slot of an accepted event.
    fn record(
        &self,
        event: EncryptedStateEvent,
        decryption: Decryption,
        batch: &mut Batch,
    ) -> Option<StateSlot> {
        let Self { room_id, raw, power_levels, was_pending, unproven_creators, sender_trust } =
            *self;
        if was_pending && !matches!(decryption, Decryption::Missing) {
            batch.changes.resolved_pending.push((event.session_id.clone(), event.event_id.clone()));
        }
        let (plaintext, facts) = match decryption {
            Decryption::Decrypted { plaintext, facts } => (plaintext, facts),
            Decryption::Missing => {
                if !was_pending {
                    debug!(event_id = %event.event_id, session_id = %event.session_id, "waiting for key");
                    batch.updates.push(StateUpdate::Pending {
                        room_id: room_id.to_owned(),
                        event_id: event.event_id.clone(),
                        session_id: event.session_id.clone(),
                    });
                    batch.changes.pending.push(PendingEvent {
                        room_id: room_id.to_owned(),
                        event_id: event.event_id,
                        session_id: event.session_id,
                        message_index: event.message_index,
                        event: raw.clone(),
                    });
                }
                return None;
            }
            Decryption::Refused(reason) => {
                warn!(event_id = %event.event_id, %reason, "the decryptor refused encrypted state");
                batch.push_rejected(RejectedState::for_event(room_id, &event, reason));
                return None;
            }
        };
        let verdict = validate(ValidationInput {
            room_id,
            event: &event,
            plaintext: &plaintext,
            facts: &facts,
            power_levels,
            unproven_creators,
            sender_trust,
        });
        match verdict {
            Verdict::Accepted(accepted) => {
                let slot = accepted.slot.clone();
                batch.changes.session_events.push(SessionEventRef {
                    session_id: event.session_id.clone(),
                    message_index: event.message_index,
                    room_id: room_id.to_owned(),
                    event_id: event.event_id.clone(),
                    slot: slot.clone(),
                });
                batch.updates.push(StateUpdate::Accepted {
                    room_id: room_id.to_owned(),
                    slot: slot.clone(),
                    event_id: event.event_id.clone(),
                    current: false,
                    was_pending,
                });
                batch.changes.state.push(accepted.into());
                Some(slot)
            }
            Verdict::Rejected(rejected) => {
                warn!(event_id = %rejected.event_id, sender = %rejected.sender, reason = %rejected.reason, "rejected encrypted state");
                batch.push_rejected(rejected);
                None
            }
        }
    }
}
