//! Our outbound session for one slot.

use std::collections::BTreeSet;

use matrix_sdk_crypto::{
    olm::ExportedRoomKey,
    types::{EventEncryptionAlgorithm, SigningKey, SigningKeys},
};
use ruma::{
    DeviceId, DeviceKeyAlgorithm, MilliSecondsSinceUnixEpoch, OwnedDeviceId, OwnedRoomId,
    OwnedUserId, RoomId, UserId,
    events::{
        AnyStateEventContent, AnyToDeviceEventContent, room::encrypted::RoomEncryptedEventContent,
    },
    serde::Raw,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use vodozemac::{
    Curve25519PublicKey, Ed25519PublicKey,
    megolm::{
        GroupSession, GroupSessionPickle, InboundGroupSession, InboundGroupSessionPickle,
        SessionConfig,
    },
};

use super::CreatorClaim;
use crate::{
    critical::{is_critical, is_plaintext_only},
    error::{EncryptStateError, PickleError},
    identifiers::{CREATOR_CLAIM, MEGOLM_V1, SHARED_HISTORY_UNSTABLE},
    state_event::{PackedStateKey, StatePayload, StateSlot},
    to_raw,
};

/// Our own device, as the creator of state sessions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnDevice {
    /// Our user.
    pub user_id: OwnedUserId,
    /// Our device.
    pub device_id: OwnedDeviceId,
    /// The device's Curve25519 identity key (`sender_key` of the sessions it creates).
    pub curve25519: Curve25519PublicKey,
    /// The device's Ed25519 fingerprint key (the claimed signing key of its sessions).
    pub ed25519: Ed25519PublicKey,
}

/// An encrypted state event ready to send as `PUT /state/m.room.encrypted/{packed_state_key}`.
#[derive(Clone, Debug)]
pub struct EncryptedState {
    /// The outer state key.
    pub packed_state_key: PackedStateKey,
    /// The `m.megolm.v1.aes-sha2` content.
    pub content: Raw<RoomEncryptedEventContent>,
    /// The session it was encrypted with.
    pub session_id: String,
    /// Its ratchet index in that session.
    pub message_index: u32,
}

/// The outbound Megolm session of one slot `(type, state_key)` of one room.
///
/// Each update of the slot ratchets it forward; [`OutboundStateSession::rotate`] replaces it (a
/// member left or was removed). It keeps an inbound copy of itself so that the slot can be
/// exported at the index of its current event.
pub struct OutboundStateSession {
    room_id: OwnedRoomId,
    slot: StateSlot,
    session: GroupSession,
    inbound: InboundGroupSession,
    created_at: MilliSecondsSinceUnixEpoch,
    current_index: Option<u32>,
    shared_with: BTreeSet<(OwnedUserId, OwnedDeviceId)>,
    creator_claim: Option<CreatorClaim>,
}

impl std::fmt::Debug for OutboundStateSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No key material in Debug output.
        f.debug_struct("OutboundStateSession")
            .field("room_id", &self.room_id)
            .field("slot", &self.slot)
            .field("session_id", &self.session.session_id())
            .field("current_index", &self.current_index)
            .finish_non_exhaustive()
    }
}

impl OutboundStateSession {
    /// A fresh session for `slot` of `room_id`.
    ///
    /// # Errors
    ///
    /// Refuses critical and plaintext-only slots, and slots whose packed key would be too long, so that no session
    /// exists for a slot that can never be sent.
    pub fn new(room_id: &RoomId, slot: StateSlot) -> Result<Self, EncryptStateError> {
        if is_critical(&slot.event_type) {
            return Err(EncryptStateError::CriticalType { event_type: slot.event_type });
        }
        if is_plaintext_only(&slot.event_type) {
            return Err(EncryptStateError::PlaintextOnly { event_type: slot.event_type });
        }
        slot.packed()?;
        let session = GroupSession::new(SessionConfig::version_1());
        let inbound = InboundGroupSession::new(&session.session_key(), SessionConfig::version_1());
        Ok(Self {
            room_id: room_id.to_owned(),
            slot,
            session,
            inbound,
            created_at: MilliSecondsSinceUnixEpoch::now(),
            current_index: None,
            shared_with: BTreeSet::new(),
            creator_claim: None,
        })
    }

    /// Replaces the session with a fresh one for the same slot: members who receive the new key
    /// read later updates, departed members do not.
    pub fn rotate(&mut self) {
        let session = GroupSession::new(SessionConfig::version_1());
        self.inbound = InboundGroupSession::new(&session.session_key(), SessionConfig::version_1());
        self.session = session;
        self.created_at = MilliSecondsSinceUnixEpoch::now();
        self.current_index = None;
        self.shared_with.clear();
        self.creator_claim = None;
    }

    /// The claim our device signed for this session (see [`CreatorClaim`]); `None` until
    /// [`OutboundStateSession::set_creator_claim`], and again after a rotation.
    pub fn creator_claim(&self) -> Option<&CreatorClaim> {
        self.creator_claim.as_ref()
    }

    /// The text `own` signs to claim this session ([`CreatorClaim::signed_text`]).
    pub fn creator_claim_text(&self, own: &OwnDevice) -> String {
        CreatorClaim::signed_text(
            &self.room_id,
            &self.session.session_id(),
            &own.user_id,
            own.device_id.as_str(),
            own.curve25519,
        )
    }

    /// Sets the claim our device signed for this session: every event encrypted from now on
    /// carries it.
    pub fn set_creator_claim(&mut self, claim: CreatorClaim) {
        self.creator_claim = Some(claim);
    }

    /// Records that `device` of `user_id` received this session's key.
    pub fn mark_shared_with(&mut self, user_id: &UserId, device_id: &DeviceId) {
        self.shared_with.insert((user_id.to_owned(), device_id.to_owned()));
    }

    /// Whether `device` of `user_id` received this session's key.
    pub fn is_shared_with(&self, user_id: &UserId, device_id: &DeviceId) -> bool {
        self.shared_with.iter().any(|(u, d)| u == user_id && d == device_id)
    }

    /// The devices that received this session's key since it was created or last rotated.
    pub fn shared_with(&self) -> impl Iterator<Item = (&UserId, &DeviceId)> {
        self.shared_with.iter().map(|(u, d)| (u.as_ref(), d.as_ref()))
    }

    /// The Megolm session id.
    pub fn session_id(&self) -> String {
        self.session.session_id()
    }

    /// The room.
    pub fn room_id(&self) -> &RoomId {
        &self.room_id
    }

    /// The slot.
    pub fn slot(&self) -> &StateSlot {
        &self.slot
    }

    /// When this session (or its last rotation) was created.
    pub fn created_at(&self) -> MilliSecondsSinceUnixEpoch {
        self.created_at
    }

    /// The index of the slot's current event in this session, if one was encrypted with it.
    pub fn current_index(&self) -> Option<u32> {
        self.current_index
    }

    /// The index the next update will use.
    pub fn next_index(&self) -> u32 {
        self.session.message_index()
    }

    /// Encrypts `content` as the slot's next value.
    ///
    /// # Errors
    ///
    /// [`EncryptStateError::WrongSession`] if `room_id` / `slot` are not this session's.
    pub fn encrypt(
        &mut self,
        own: &OwnDevice,
        room_id: &RoomId,
        slot: &StateSlot,
        content: Raw<AnyStateEventContent>,
    ) -> Result<EncryptedState, EncryptStateError> {
        if room_id != self.room_id || *slot != self.slot {
            return Err(EncryptStateError::WrongSession);
        }
        let packed_state_key = slot.packed()?;
        let message_index = self.session.message_index();
        let payload = StatePayload::new(room_id, slot, content);
        let message = self.session.encrypt(payload.to_plaintext());
        let mut content = json!({
            "algorithm": MEGOLM_V1,
            "ciphertext": message.to_base64(),
            "sender_key": own.curve25519.to_base64(),
            "device_id": own.device_id,
            "session_id": self.session.session_id(),
        });
        if let (Some(claim), Some(fields)) = (&self.creator_claim, content.as_object_mut()) {
            fields.insert(CREATOR_CLAIM.to_owned(), json!(claim));
        }
        self.current_index = Some(message_index);
        Ok(EncryptedState {
            packed_state_key,
            content: to_raw(&content),
            session_id: self.session.session_id(),
            message_index,
        })
    }

    /// The `m.room_key` content that shares this session from its next index with current
    /// members (to be Olm-encrypted to each of their devices). `shared_history` is set: room
    /// state is visible to every member whatever the history visibility.
    pub fn room_key_content(&self) -> Raw<AnyToDeviceEventContent> {
        let content = json!({
            "algorithm": MEGOLM_V1,
            "room_id": self.room_id,
            "session_id": self.session.session_id(),
            "session_key": self.session.session_key().to_base64(),
            SHARED_HISTORY_UNSTABLE: true,
        });
        to_raw(&content)
    }

    /// The session exported at the index of the slot's current event, for a newcomer: it reads
    /// the current value and later ones, never an earlier one. `None` before the first update.
    pub fn export_current(&mut self, own: &OwnDevice) -> Option<ExportedRoomKey> {
        let index = self.current_index?;
        let session_key = self.inbound.export_at(index)?;
        let mut sender_claimed_keys = SigningKeys::new();
        sender_claimed_keys.insert(DeviceKeyAlgorithm::Ed25519, SigningKey::Ed25519(own.ed25519));
        Some(ExportedRoomKey {
            algorithm: EventEncryptionAlgorithm::MegolmV1AesSha2,
            room_id: self.room_id.clone(),
            sender_key: own.curve25519,
            session_id: self.session.session_id(),
            session_key,
            sender_claimed_keys,
            forwarding_curve25519_key_chain: Vec::new(),
            shared_history: true,
        })
    }

    /// An inbound copy from the session's first index, so that we can decrypt our own state.
    pub(crate) fn inbound_copy(&self) -> InboundGroupSession {
        InboundGroupSession::from_pickle(self.inbound.pickle())
    }

    /// A serialisable snapshot, for the state store (which encrypts it at rest).
    pub fn pickle(&self) -> OutboundStateSessionPickle {
        OutboundStateSessionPickle {
            room_id: self.room_id.clone(),
            slot: self.slot.clone(),
            session: self.session.pickle(),
            inbound: self.inbound.pickle(),
            created_at: self.created_at,
            current_index: self.current_index,
            shared_with: self.shared_with.clone(),
            creator_claim: self.creator_claim.clone(),
        }
    }

    /// Restores a session from [`OutboundStateSession::pickle`].
    pub fn from_pickle(pickle: OutboundStateSessionPickle) -> Self {
        Self {
            room_id: pickle.room_id,
            slot: pickle.slot,
            session: GroupSession::from_pickle(pickle.session),
            inbound: InboundGroupSession::from_pickle(pickle.inbound),
            created_at: pickle.created_at,
            current_index: pickle.current_index,
            shared_with: pickle.shared_with,
            creator_claim: pickle.creator_claim,
        }
    }
}

/// The serialised form of an [`OutboundStateSession`]. Holds key material: store it only
/// encrypted.
#[derive(Serialize, Deserialize)]
pub struct OutboundStateSessionPickle {
    room_id: OwnedRoomId,
    slot: StateSlot,
    session: GroupSessionPickle,
    inbound: InboundGroupSessionPickle,
    created_at: MilliSecondsSinceUnixEpoch,
    current_index: Option<u32>,
    #[serde(default)]
    shared_with: BTreeSet<(OwnedUserId, OwnedDeviceId)>,
    /// Absent in pickles written before claims were signed.
    #[serde(default)]
    creator_claim: Option<CreatorClaim>,
}

impl std::fmt::Debug for OutboundStateSessionPickle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundStateSessionPickle")
            .field("room_id", &self.room_id)
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl OutboundStateSessionPickle {
    /// The room of the pickled session.
    pub fn room_id(&self) -> &RoomId {
        &self.room_id
    }

    /// The slot of the pickled session.
    pub fn slot(&self) -> &StateSlot {
        &self.slot
    }

    /// Serialises the pickle to JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a pickle serialised with [`OutboundStateSessionPickle::to_json`].
    ///
    /// # Errors
    ///
    /// [`PickleError`] if the JSON is not such a pickle.
    pub fn from_json(json: &str) -> Result<Self, PickleError> {
        Ok(serde_json::from_str(json)?)
    }
}
