//! The store trait both backends implement.

use std::fmt::Debug;

use async_trait::async_trait;
use crypto_ext::{
    RejectedState, StateSlot,
    state_sessions::{InboundStateSessionPickle, OutboundStateSessionPickle},
};
use ruma::{OwnedRoomId, RoomId, UserId};

use crate::{
    Result, StateChanges,
    records::{
        KeyRequest, PendingBundle, PendingEvent, ReceivedPreview, SentBundle, SentPreview,
        SessionEventRef, StateRecord, WithheldSession,
    },
};

/// Persistence of decrypted room state and everything around it.
///
/// Writes go through [`StateStore::save_changes`] only, one batch per call, atomically: after a
/// crash a batch is either fully there or absent.
#[async_trait]
pub trait StateStore: Debug + Send + Sync {
    /// Saves a batch atomically.
    async fn save_changes(&self, changes: StateChanges) -> Result<()>;

    /// The current value of a slot (the authorised event latest in room order).
    async fn current_state(
        &self,
        room_id: &RoomId,
        slot: &StateSlot,
    ) -> Result<Option<StateRecord>>;

    /// The current value of every slot of a room.
    async fn room_state(&self, room_id: &RoomId) -> Result<Vec<StateRecord>>;

    /// The last position given out in a room's order of state events (0 before any).
    async fn room_position(&self, room_id: &RoomId) -> Result<u64>;

    /// Every authorised event of a slot, in room order.
    async fn slot_history(&self, room_id: &RoomId, slot: &StateSlot) -> Result<Vec<StateRecord>>;

    /// The rejected events of a room with their reasons.
    async fn rejected_events(&self, room_id: &RoomId) -> Result<Vec<RejectedState>>;

    /// The events waiting for the key of `session_id`.
    async fn pending_for_session(&self, session_id: &str) -> Result<Vec<PendingEvent>>;

    /// The events of a room waiting for a key.
    async fn pending_in_room(&self, room_id: &RoomId) -> Result<Vec<PendingEvent>>;

    /// Which event index `message_index` of `session_id` encrypted.
    async fn session_event(
        &self,
        session_id: &str,
        message_index: u32,
    ) -> Result<Option<SessionEventRef>>;

    /// Our outbound session of a slot.
    async fn outbound_session(
        &self,
        room_id: &RoomId,
        slot: &StateSlot,
    ) -> Result<Option<OutboundStateSessionPickle>>;

    /// Our outbound sessions of every slot of a room.
    async fn outbound_sessions(&self, room_id: &RoomId) -> Result<Vec<OutboundStateSessionPickle>>;

    /// A state session we can decrypt with.
    async fn inbound_session(&self, session_id: &str) -> Result<Option<InboundStateSessionPickle>>;

    /// The state sessions among `session_ids` that we hold (in no particular order): one query
    /// for a whole batch, where [`StateStore::inbound_session`] would make one each.
    async fn inbound_sessions(
        &self,
        session_ids: &[String],
    ) -> Result<Vec<InboundStateSessionPickle>>;

    /// The rooms for which bundle announcements are kept.
    async fn rooms_with_pending_bundles(&self) -> Result<Vec<OwnedRoomId>>;

    /// The bundle announcements kept for a room.
    async fn pending_bundles(&self, room_id: &RoomId) -> Result<Vec<PendingBundle>>;

    /// Why a session's key was withheld from us, if a bundle said so.
    async fn withheld_session(&self, session_id: &str) -> Result<Option<WithheldSession>>;

    /// The outstanding key requests of a room.
    async fn key_requests(&self, room_id: &RoomId) -> Result<Vec<KeyRequest>>;

    /// The preview we were sent of a restricted room we are not in.
    async fn received_preview(&self, room_id: &RoomId) -> Result<Option<ReceivedPreview>>;

    /// What we pushed of a restricted room's preview.
    async fn sent_preview(&self, room_id: &RoomId) -> Result<Option<SentPreview>>;

    /// The bundle announced to `invitee` for `room_id` whose invite has not gone through.
    async fn sent_bundle(&self, room_id: &RoomId, invitee: &UserId) -> Result<Option<SentBundle>>;
}
