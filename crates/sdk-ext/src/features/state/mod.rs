//! Encrypted state: validate what the client stores, send state, share the slots' sessions.
//!
//! Scanning, decrypting, validating, recording and committing are in `scan` and `decrypt`;
//! sending, enabling, migrating, sharing and rotating in `send`.

mod decrypt;
mod explain;
mod room_sync;
mod scan;
mod send;
mod waiting;

pub(crate) use room_sync::RoomSync;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex as StdMutex},
};

use crypto_ext::StateSlot;
use matrix_sdk::Room;
use ruma::{OwnedRoomId, OwnedUserId, RoomId};
use state_store_ext::StateRecord;
use tokio::sync::Mutex;

use crate::{Result, RoomStateView, context::Context};

/// The encrypted-state feature.
pub(crate) struct EncryptedState {
    ctx: Context,
    /// Serialises processing (sync batches, key arrivals, imports).
    processing: Mutex<()>,
    /// Serialises updates of one room's outbound sessions.
    room_locks: StdMutex<BTreeMap<OwnedRoomId, Arc<Mutex<()>>>>,
    /// Rooms whose encrypted state waits for keys (the ones key requests are about).
    waiting_rooms: StdMutex<BTreeSet<OwnedRoomId>>,
    /// Rooms with events rejected because their sender's device was unknown, with those
    /// senders: a device update of one of them validates the room's events again.
    unknown_device_senders: StdMutex<BTreeMap<OwnedRoomId, BTreeSet<OwnedUserId>>>,
    /// Refusals of the client's machine explained, and the key reads that cost (bounded).
    explanations: StdMutex<explain::Explanations>,
    /// Rooms whose timeline had a gap: whether its state is still to be fetched, and when it
    /// last was.
    gaps: StdMutex<BTreeMap<OwnedRoomId, room_sync::Gap>>,
}

impl EncryptedState {
    pub(crate) fn new(ctx: Context) -> Self {
        Self {
            ctx,
            processing: Mutex::new(()),
            room_locks: StdMutex::default(),
            waiting_rooms: StdMutex::default(),
            unknown_device_senders: StdMutex::default(),
            explanations: StdMutex::new(explain::Explanations::new(std::time::Instant::now())),
            gaps: StdMutex::default(),
        }
    }

    fn room_lock(&self, room_id: &RoomId) -> Arc<Mutex<()>> {
        self.room_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(room_id.to_owned())
            .or_default()
            .clone()
    }

    /// Marks whether `room_id`'s encrypted state waits for keys.
    pub(crate) fn set_waiting_room(&self, room_id: &RoomId, waiting: bool) {
        let mut rooms = self.waiting_rooms.lock().unwrap_or_else(|e| e.into_inner());
        if waiting {
            rooms.insert(room_id.to_owned());
        } else {
            rooms.remove(room_id);
        }
    }

    /// The rooms whose encrypted state waits for keys.
    pub(crate) fn waiting_rooms(&self) -> Vec<OwnedRoomId> {
        self.waiting_rooms.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// Adds `sender` to the senders of `room_id`'s events rejected for an unknown device.
    fn add_unknown_device_sender(&self, room_id: &RoomId, sender: OwnedUserId) {
        let mut rooms = self.unknown_device_senders.lock().unwrap_or_else(|e| e.into_inner());
        rooms.entry(room_id.to_owned()).or_default().insert(sender);
    }

    /// Whether `room_id` has events rejected for an unknown device.
    fn waits_for_unknown_devices(&self, room_id: &RoomId) -> bool {
        self.unknown_device_senders.lock().unwrap_or_else(|e| e.into_inner()).contains_key(room_id)
    }

    /// Replaces the senders of `room_id`'s events rejected for an unknown device (none: the
    /// room is forgotten).
    fn set_unknown_device_senders(&self, room_id: &RoomId, senders: BTreeSet<OwnedUserId>) {
        let mut rooms = self.unknown_device_senders.lock().unwrap_or_else(|e| e.into_inner());
        if senders.is_empty() {
            rooms.remove(room_id);
        } else {
            rooms.insert(room_id.to_owned(), senders);
        }
    }

    /// The rooms with events rejected for an unknown device of one of `users`.
    pub(crate) fn rooms_with_unknown_devices_of(
        &self,
        users: &BTreeSet<OwnedUserId>,
    ) -> Vec<OwnedRoomId> {
        let rooms = self.unknown_device_senders.lock().unwrap_or_else(|e| e.into_inner());
        rooms
            .iter()
            .filter(|(_, senders)| !senders.is_disjoint(users))
            .map(|(room_id, _)| room_id.clone())
            .collect()
    }

    /// The current decrypted value of a slot, with its provenance (its device's verification
    /// as known now).
    pub(crate) async fn current(
        &self,
        room: &Room,
        slot: &StateSlot,
    ) -> Result<Option<StateRecord>> {
        let mut record = self.ctx.store.current_state(room.room_id(), slot).await?;
        record.take_if(|record| record.is_redacted());
        self.ctx.refresh_verification(record.as_mut_slice()).await;
        Ok(record)
    }

    /// Current values (their devices' verification as known now), rejections with reasons,
    /// events waiting for keys.
    pub(crate) async fn view(&self, room: &Room) -> Result<RoomStateView> {
        let store = &self.ctx.store;
        let room_id = room.room_id();
        let mut state = store.room_state(room_id).await?;
        let rejected = store.rejected_events(room_id).await?;
        let pending = store.pending_in_room(room_id).await?;
        // A slot is contested when an event met after its value was not accepted: a rejected
        // update (forged, replayed, under-powered) or one still waiting for its key.
        let later = rejected.iter().map(|r| (r.packed_state_key.as_str(), r.position)).chain(
            pending
                .iter()
                .filter_map(|p| Some((p.event.get_field::<&str>("state_key").ok()??, p.position))),
        );
        let mut contested = BTreeSet::new();
        for (packed, at) in later {
            for record in &state {
                if record.position < at && record.slot.packed().is_ok_and(|p| p.as_str() == packed)
                {
                    contested.insert(record.slot.clone());
                }
            }
        }
        state.retain(|record| !record.is_redacted());
        self.ctx.refresh_verification(&mut state).await;
        Ok(RoomStateView { state, rejected, pending, contested: contested.into_iter().collect() })
    }

    /// Whether the room has switched on encrypted state.
    pub(crate) async fn is_enabled(&self, room: &Room) -> bool {
        self.ctx.state_encryption_enabled(room).await
    }
}
