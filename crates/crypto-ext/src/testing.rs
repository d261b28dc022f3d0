//! Tools for tests that play a misbehaving member (feature `testing`; never enable it in an app).
//!
//! [`Crafter`] owns a raw Megolm session and encrypts *any* plaintext, so a test can produce the
//! payloads our pipeline must reject: critical types, packed keys that do not match, payloads for
//! another room.

use ruma::{
    RoomId,
    events::{AnyToDeviceEventContent, room::encrypted::RoomEncryptedEventContent},
    serde::Raw,
};
use serde_json::{Value, json};
use vodozemac::megolm::{GroupSession, SessionConfig};

use crate::{
    identifiers::{MEGOLM_V1, SHARED_HISTORY_UNSTABLE},
    state_sessions::OwnDevice,
    to_raw,
};

/// A misbehaving member's Megolm session.
pub struct Crafter {
    session: GroupSession,
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
        Self { session: GroupSession::new(SessionConfig::version_1()) }
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
