//! Tools for tests that play a misbehaving member (feature `testing`; never enable it in an app).
//!
//! [`Crafter`] owns a raw Megolm session and encrypts *any* plaintext, so a test can produce the
//! payloads our pipeline must reject: critical types, packed keys that do not match, payloads for
//! another room.

use matrix_sdk_crypto::{
    olm::ExportedRoomKey,
    types::{EventEncryptionAlgorithm, SigningKey, SigningKeys},
};
use ruma::DeviceKeyAlgorithm;
use ruma::{
    RoomId,
    events::{AnyToDeviceEventContent, room::encrypted::RoomEncryptedEventContent},
    serde::Raw,
};
use serde_json::{Value, json};
use vodozemac::megolm::{GroupSession, InboundGroupSession, SessionConfig};

use crate::{
    identifiers::{MEGOLM_V1, SHARED_HISTORY_UNSTABLE},
    state_sessions::OwnDevice,
    to_raw,
};

/// A misbehaving member's Megolm session.
pub struct Crafter {
    session: GroupSession,
    inbound: InboundGroupSession,
}

impl std::fmt::Debug for Crafter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crafter").field("session_id", &self.session.session_id()).finish()
    }
}

impl Default for Crafter {
    fn default() -> Self {
        Self::new()
    }
}

impl Crafter {
    /// A fresh session.
    pub fn new() -> Self {
        let session = GroupSession::new(SessionConfig::version_1());
        let inbound = InboundGroupSession::new(&session.session_key(), SessionConfig::version_1());
        Self { session, inbound }
    }

    /// The session in key-export format from its first index, marked shareable, as a bundle
    /// entry would carry it.
    pub fn exported_key(&self, room_id: &RoomId, sender: &OwnDevice) -> ExportedRoomKey {
        let mut sender_claimed_keys = SigningKeys::new();
        sender_claimed_keys
            .insert(DeviceKeyAlgorithm::Ed25519, SigningKey::Ed25519(sender.ed25519));
        ExportedRoomKey {
            algorithm: EventEncryptionAlgorithm::MegolmV1AesSha2,
            room_id: room_id.to_owned(),
            sender_key: sender.curve25519,
            session_id: self.session.session_id(),
            session_key: self.inbound.export_at_first_known_index(),
            sender_claimed_keys,
            forwarding_curve25519_key_chain: Vec::new(),
            shared_history: true,
        }
    }

    /// The session id.
    pub fn session_id(&self) -> String {
        self.session.session_id()
    }

    /// An ordinary `m.room_key` content for the session from its current index (take it before
    /// encrypting the first event it should unlock), bound to `room_id`.
    pub fn room_key_content(&self, room_id: &RoomId) -> Raw<AnyToDeviceEventContent> {
        to_raw(&json!({
            "algorithm": MEGOLM_V1,
            "room_id": room_id,
            "session_id": self.session.session_id(),
            "session_key": self.session.session_key().to_base64(),
            SHARED_HISTORY_UNSTABLE: true,
        }))
    }

    /// Encrypts `plaintext` (any JSON) as `m.megolm.v1.aes-sha2` content from `sender`.
    pub fn encrypt(
        &mut self,
        sender: &OwnDevice,
        plaintext: &Value,
    ) -> Raw<RoomEncryptedEventContent> {
        to_raw(&json!({
            "algorithm": MEGOLM_V1,
            "ciphertext": self.session.encrypt(plaintext.to_string()).to_base64(),
            "sender_key": sender.curve25519.to_base64(),
            "device_id": sender.device_id,
            "session_id": self.session.session_id(),
        }))
    }
}
