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
    /// The event's position in its room, in the order this client met the room's state events
    /// ([`crypto_ext::validation::resolution`]): the accepted record with the greatest
    /// position holds the slot. 0 for records stored before positions existed.
    #[serde(default)]
    pub position: u64,
}

impl StateRecord {
    /// The record of a slot's plaintext copy at `position`, from the state event the homeserver
    /// serves for it; `None` when the event lacks its id, sender or timestamp. A redacted event
    /// (empty content) reads as "no value".
    pub fn plaintext(
        room_id: &RoomId,
        slot: &StateSlot,
        raw: &Raw<AnySyncStateEvent>,
        position: u64,
    ) -> Option<Self> {
        let event_id: OwnedEventId = raw.get_field("event_id").ok()??;
        let sender: OwnedUserId = raw.get_field("sender").ok()??;
        let origin_server_ts: MilliSecondsSinceUnixEpoch =
            raw.get_field("origin_server_ts").ok()??;
        let content = match raw.get_field("content").ok()? {
            Some(content) => content,
            None => empty_content(),
        };
        Some(Self {
            room_id: room_id.to_owned(),
            slot: slot.clone(),
            content,
            origin: StateOrigin::Plaintext { event_id, sender, origin_server_ts },
            position,
        })
    }

    /// The record of an accepted decrypted event at `position` in its room.
    pub fn accepted(accepted: crypto_ext::AcceptedState, position: u64) -> Self {
        Self {
            room_id: accepted.room_id,
            slot: accepted.slot,
            content: accepted.content,
            origin: StateOrigin::Encrypted(accepted.provenance),
            position,
        }
    }

    /// Whether the value was redacted (its content emptied, as a redaction does): the slot then
    /// reads as "no value".
    pub fn is_redacted(&self) -> bool {
        self.content.json().get().trim() == "{}"
    }

    /// This record with its content emptied by a redaction of its event.
    pub fn redacted(mut self) -> Self {
        self.content = empty_content();
        self
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

    /// The slot ordering key (the latest in room order wins).
    pub fn order(&self) -> SlotOrder<'_> {
        SlotOrder::new(
            self.provenance().is_some(),
            self.position,
            self.origin_server_ts(),
            self.event_id(),
        )
    }

    /// Whether this record takes the slot from `current`.
    pub fn replaces(&self, current: Option<&StateRecord>) -> bool {
        replaces(self.order(), current.map(StateRecord::order))
    }

    /// Whether saving this record sets the slot's current value: it takes the slot from
    /// `current`, or it is `current` saved again (redacted since).
    pub(crate) fn replaces_or_updates(&self, current: Option<&StateRecord>) -> bool {
        self.replaces(current) || current.is_some_and(|c| c.event_id() == self.event_id())
    }
}

/// An empty state content, as a redaction leaves it.
fn empty_content() -> Raw<AnyStateEventContent> {
    crypto_ext::to_raw(&serde_json::json!({}))
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
    /// The event's position in its room (see [`StateRecord::position`]), kept so that a late
    /// key puts the event where the room had it.
    #[serde(default)]
    pub position: u64,
    /// The content of the room's `m.room.power_levels` in force at the event, when the client
    /// knew it as it met the event (in a sync's timeline), so that a late key judges the event
    /// as a member who read it live did; absent otherwise (the power levels at the event are
    /// then asked of the homeserver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_levels_at: Option<serde_json::Value>,
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

/// A room-key bundle we announced to an invitee, kept until their invite went through: a retry
/// after a failure (the homeserver down, the answer to the invite lost) announces this same
/// bundle again, never a second one with other content for the same invite.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentBundle {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The invitee.
    pub invitee: OwnedUserId,
    /// The announcement's `file`: the uploaded bundle's encrypted-file description, its key
    /// included.
    pub file: serde_json::Value,
    /// How many message sessions it holds.
    pub message_keys: usize,
    /// How many state sessions it holds.
    pub state_keys: usize,
    /// How many `withheld` entries it holds.
    pub withheld_keys: usize,
    /// When it was built.
    pub built_at: MilliSecondsSinceUnixEpoch,
}
