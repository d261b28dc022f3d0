//! The records the store keeps.

use crypto_ext::{
    Provenance, StateSlot,
    validation::resolution::{SlotOrder, replaces},
};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
    events::{AnyStateEventContent, AnySyncStateEvent},
    serde::Raw,
};
use serde::{Deserialize, Serialize};

/// Where a slot value came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StateOrigin {
    /// A decrypted and validated `m.room.encrypted` state event.
    Encrypted(Provenance),
    /// The plaintext copy of the slot (state sent in clear, e.g. before the room switched to
    /// encrypted state).
    Plaintext {
        /// The event id.
        event_id: OwnedEventId,
        /// The sender.
        sender: OwnedUserId,
        /// The server timestamp.
        origin_server_ts: MilliSecondsSinceUnixEpoch,
    },
}

/// An authorised state value of a slot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateRecord {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The slot.
    pub slot: StateSlot,
    /// The content.
    pub content: Raw<AnyStateEventContent>,
    /// Where it came from.
    pub origin: StateOrigin,
}

impl StateRecord {
    /// The record of a slot's plaintext copy, from the state event the homeserver serves for it;
    /// `None` when the event lacks its id, sender or timestamp. A redacted event (empty content)
    /// reads as "no value".
    pub fn plaintext(
        room_id: &RoomId,
        slot: &StateSlot,
        raw: &Raw<AnySyncStateEvent>,
    ) -> Option<Self> {
        let event_id: OwnedEventId = raw.get_field("event_id").ok()??;
        let sender: OwnedUserId = raw.get_field("sender").ok()??;
        let origin_server_ts: MilliSecondsSinceUnixEpoch =
            raw.get_field("origin_server_ts").ok()??;
        let content = match raw.get_field("content").ok()? {
            Some(content) => content,
            None => Raw::new(&serde_json::json!({})).ok()?.cast_unchecked(),
        };
        Some(Self {
            room_id: room_id.to_owned(),
            slot: slot.clone(),
            content,
            origin: StateOrigin::Plaintext { event_id, sender, origin_server_ts },
        })
    }

    /// The event id.
    pub fn event_id(&self) -> &OwnedEventId {
        match &self.origin {
            StateOrigin::Encrypted(provenance) => &provenance.event_id,
            StateOrigin::Plaintext { event_id, .. } => event_id,
        }
    }

    /// The sender.
    pub fn sender(&self) -> &OwnedUserId {
        match &self.origin {
            StateOrigin::Encrypted(provenance) => &provenance.sender,
            StateOrigin::Plaintext { sender, .. } => sender,
        }
    }

    /// The server timestamp.
    pub fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        match &self.origin {
            StateOrigin::Encrypted(provenance) => provenance.origin_server_ts,
            StateOrigin::Plaintext { origin_server_ts, .. } => *origin_server_ts,
        }
    }

    /// The provenance, for a decrypted value.
    pub fn provenance(&self) -> Option<&Provenance> {
        match &self.origin {
            StateOrigin::Encrypted(provenance) => Some(provenance),
            StateOrigin::Plaintext { .. } => None,
        }
    }

    /// The slot ordering key (newest wins).
    pub fn order(&self) -> SlotOrder<'_> {
        SlotOrder::new(self.origin_server_ts(), self.event_id())
    }

    /// Whether this record takes the slot from `current`.
    pub fn replaces(&self, current: Option<&StateRecord>) -> bool {
        replaces(self.order(), current.map(StateRecord::order))
    }
}

impl From<crypto_ext::AcceptedState> for StateRecord {
    fn from(accepted: crypto_ext::AcceptedState) -> Self {
        Self {
            room_id: accepted.room_id,
            slot: accepted.slot,
            content: accepted.content,
            origin: StateOrigin::Encrypted(accepted.provenance),
        }
    }
}

/// An encrypted state event we cannot decrypt yet, waiting for its session's key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingEvent {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The event id.
    pub event_id: OwnedEventId,
    /// The session whose key is missing.
    pub session_id: String,
    /// The event's index in it.
    pub message_index: u32,
    /// The event as received, to retry later.
    pub event: Raw<AnySyncStateEvent>,
}

/// Which state event a Megolm session index encrypted (to answer key requests at the right
/// index, and to find what a late key unlocks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEventRef {
    /// The session.
    pub session_id: String,
    /// The ratchet index.
    pub message_index: u32,
    /// The room.
    pub room_id: OwnedRoomId,
    /// The event.
    pub event_id: OwnedEventId,
    /// The slot it writes.
    pub slot: StateSlot,
}

/// A room-key bundle announcement (MSC4268) kept until the user accepts the invite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingBundle {
    /// The room the bundle is for.
    pub room_id: OwnedRoomId,
    /// Who sent the announcement.
    pub sender: OwnedUserId,
    /// The device that sent it.
    pub sender_device: Option<OwnedDeviceId>,
    /// The `EncryptedFile` of the bundle (URL, key, hashes).
    pub file: serde_json::Value,
    /// When it arrived.
    pub received_at: MilliSecondsSinceUnixEpoch,
}

/// A session whose key a bundle withheld (code `m.history_not_shared`, or another withheld
/// code), kept so the app can tell the user why a past message stays unreadable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithheldSession {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The session.
    pub session_id: String,
    /// The withheld code, as sent (e.g. `m.history_not_shared`).
    pub code: String,
    /// Who withheld it (the bundle's sender).
    pub withheld_by: OwnedUserId,
}

/// An outstanding request for state keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRequest {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The session whose key we lack.
    pub session_id: String,
    /// When it was first asked for.
    pub first_requested_at: MilliSecondsSinceUnixEpoch,
    /// How many times it was asked for.
    pub attempts: u32,
}

/// The encrypted preview of a restricted room we are not in, pushed to us by a member of a room
/// its allow-list names (MSC3414): the room's aesthetic encrypted state events as the sharer saw
/// them. Their keys are kept with the other state sessions; the events are decrypted and checked
/// each time the preview is read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReceivedPreview {
    /// The restricted room.
    pub room_id: OwnedRoomId,
    /// The allowed room through which we were sent it (one we are joined to).
    pub via: OwnedRoomId,
    /// Who sent it.
    pub shared_by: OwnedUserId,
    /// The encrypted state events, as the sharer received them.
    pub events: Vec<Raw<AnySyncStateEvent>>,
    /// When it arrived.
    pub received_at: MilliSecondsSinceUnixEpoch,
}

/// What we pushed of a restricted room's preview, so that each device of an allowed room's
/// members is sent each version of it once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentPreview {
    /// The restricted room.
    pub room_id: OwnedRoomId,
    /// The encrypted state events of the version last sent, sorted.
    pub events: Vec<OwnedEventId>,
    /// The devices that were sent that version.
    pub devices: Vec<(OwnedUserId, OwnedDeviceId)>,
}
