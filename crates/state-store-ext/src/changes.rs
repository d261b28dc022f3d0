//! One batch of changes, saved in one transaction.

use crypto_ext::{
    RejectedState, StateSlot,
    state_sessions::{InboundStateSessionPickle, OutboundStateSessionPickle},
};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};

use crate::records::{
    KeyRequest, PendingBundle, PendingEvent, ReceivedPreview, SentBundle, SentPreview,
    SessionEventRef, StateRecord, WithheldSession,
};

/// Everything one sync batch (or one user action) changes; the store saves it atomically.
#[derive(Debug, Default)]
pub struct StateChanges {
    /// Authorised state values. Each is kept, and takes its slot if it is the latest there in
    /// room order; saving a record again (emptied by a redaction, say) updates it in place,
    /// also as the slot's current value.
    pub state: Vec<StateRecord>,
    /// The last position given out in each room (see [`StateRecord::position`]), saved with the
    /// records that use the positions.
    pub room_positions: Vec<(OwnedRoomId, u64)>,
    /// Rejected events with their reasons. Saving a state value with the same event id later
    /// removes the rejection (a transient reason that cleared).
    pub rejected: Vec<RejectedState>,
    /// Events waiting for a key.
    pub pending: Vec<PendingEvent>,
    /// Pending events that were decrypted (or given up on): `(session_id, event_id)`.
    pub resolved_pending: Vec<(String, OwnedEventId)>,
    /// Session index to event mappings.
    pub session_events: Vec<SessionEventRef>,
    /// Our outbound state sessions (created, ratcheted or rotated).
    pub outbound_sessions: Vec<OutboundStateSessionPickle>,
    /// State sessions we can decrypt with (ours, and keys shared with us).
    pub inbound_sessions: Vec<InboundStateSessionPickle>,
    /// Bundle announcements to keep.
    pub pending_bundles: Vec<PendingBundle>,
    /// Bundle announcements handled: `(room_id, sender)`.
    pub removed_bundles: Vec<(OwnedRoomId, OwnedUserId)>,
    /// Sessions a bundle withheld.
    pub withheld_sessions: Vec<WithheldSession>,
    /// Key requests to keep.
    pub key_requests: Vec<KeyRequest>,
    /// Key requests answered or abandoned: `(room_id, session_id)`.
    pub removed_key_requests: Vec<(OwnedRoomId, String)>,
    /// Previews of restricted rooms we were sent (one per room, replacing the previous one).
    pub received_previews: Vec<ReceivedPreview>,
    /// Previews no longer needed (we joined the room): room ids.
    pub removed_previews: Vec<OwnedRoomId>,
    /// What we pushed of our restricted rooms' previews (one per room).
    pub sent_previews: Vec<SentPreview>,
    /// Bundles announced to invitees whose invite has not gone through (replacing any for the
    /// same room and invitee).
    pub sent_bundles: Vec<SentBundle>,
    /// Kept bundles to forget, by room and invitee: their invite went through.
    pub removed_sent_bundles: Vec<(OwnedRoomId, OwnedUserId)>,
}

impl StateChanges {
    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
            && self.room_positions.is_empty()
            && self.rejected.is_empty()
            && self.pending.is_empty()
            && self.resolved_pending.is_empty()
            && self.session_events.is_empty()
            && self.outbound_sessions.is_empty()
            && self.inbound_sessions.is_empty()
            && self.pending_bundles.is_empty()
            && self.removed_bundles.is_empty()
            && self.withheld_sessions.is_empty()
            && self.key_requests.is_empty()
            && self.removed_key_requests.is_empty()
            && self.received_previews.is_empty()
            && self.removed_previews.is_empty()
            && self.sent_previews.is_empty()
            && self.sent_bundles.is_empty()
            && self.removed_sent_bundles.is_empty()
    }
}

/// A slot of a room, as a lookup key.
pub(crate) type RoomSlot = (OwnedRoomId, StateSlot);
