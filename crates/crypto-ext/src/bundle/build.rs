//! Building and sealing a bundle.

use std::collections::BTreeMap;

use matrix_sdk_common::deserialized_responses::WithheldCode;
use matrix_sdk_crypto::{
    AttachmentEncryptor, MediaEncryptionInfo,
    olm::ExportedRoomKey,
    types::{
        EventEncryptionAlgorithm,
        events::room_key_withheld::RoomKeyWithheldContent,
        room_history::{HistoricRoomKey, RoomKeyBundle},
    },
};
use ruma::{OwnedRoomId, RoomId};

use crate::{
    error::BundleError,
    state_sessions::{OutboundStateSession, OwnDevice},
};

/// Collects the sessions of one room into a bundle.
///
/// * A message session whose creator marked it shareable (`shared_history`) goes in
///   `room_keys`; any other goes in `withheld` with code `m.history_not_shared`.
/// * A state session goes in `room_keys` at the index of its slot's current event, so the
///   invitee reads the current state and nothing older.
/// * A session appears in at most one list: once shared, a session is never also withheld, and
///   sessions of other rooms are ignored.
#[derive(Debug)]
pub struct BundleBuilder {
    room_id: OwnedRoomId,
    own: OwnDevice,
    room_keys: BTreeMap<String, HistoricRoomKey>,
    withheld: BTreeMap<String, RoomKeyWithheldContent>,
}

impl BundleBuilder {
    /// An empty bundle for `room_id`, built by our device `own`.
    pub fn new(room_id: &RoomId, own: &OwnDevice) -> Self {
        Self {
            room_id: room_id.to_owned(),
            own: own.clone(),
            room_keys: BTreeMap::new(),
            withheld: BTreeMap::new(),
        }
    }

    /// Adds a message session (as exported by the client's key store). Returns whether it was
    /// shared (`false`: withheld, or not Megolm v1, or for another room).
    pub fn add_message_session(&mut self, key: ExportedRoomKey) -> bool {
        if key.room_id != self.room_id || key.algorithm != EventEncryptionAlgorithm::MegolmV1AesSha2
        {
            return false;
        }
        if key.shared_history {
            self.withheld.remove(&key.session_id);
            self.room_keys.insert(key.session_id.clone(), key.into());
            true
        } else {
            if !self.room_keys.contains_key(&key.session_id) {
                let withheld = RoomKeyWithheldContent::new(
                    EventEncryptionAlgorithm::MegolmV1AesSha2,
                    WithheldCode::HistoryNotShared,
                    key.room_id,
                    key.session_id.clone(),
                    key.sender_key,
                    self.own.device_id.clone(),
                );
                self.withheld.insert(key.session_id, withheld);
            }
            false
        }
    }

    /// Adds one of our state sessions at the index of its slot's current event. Returns whether
    /// it was added (`false` before the slot's first update, or for another room).
    pub fn add_state_session(&mut self, session: &mut OutboundStateSession) -> bool {
        if session.room_id() != self.room_id {
            return false;
        }
        match session.export_current(&self.own) {
            Some(key) => self.add_message_session(key),
            None => false,
        }
    }

    /// Adds a state key received from someone else, already exported at the index to hand on.
    /// Returns whether it was added.
    pub fn add_state_key(&mut self, mut key: ExportedRoomKey) -> bool {
        // Room state is visible to every member whatever the history visibility.
        key.shared_history = true;
        self.add_message_session(key)
    }

    /// Passes on a withheld notice received earlier (an `m.history_not_shared` entry of a bundle
    /// we imported), as matrix-sdk's own bundle does, unless the session is shared or withheld
    /// already, or of another room. Returns whether it was added.
    pub fn add_withheld(&mut self, withheld: RoomKeyWithheldContent) -> bool {
        let (Some(room_id), Some(session_id)) = (withheld.room_id(), withheld.megolm_session_id())
        else {
            return false;
        };
        if room_id != self.room_id
            || self.room_keys.contains_key(session_id)
            || self.withheld.contains_key(session_id)
        {
            return false;
        }
        self.withheld.insert(session_id.to_owned(), withheld);
        true
    }

    /// How many sessions are shared and withheld so far.
    pub fn counts(&self) -> (usize, usize) {
        (self.room_keys.len(), self.withheld.len())
    }

    /// The bundle.
    pub fn build(self) -> RoomKeyBundle {
        RoomKeyBundle {
            room_keys: self.room_keys.into_values().collect(),
            withheld: self.withheld.into_values().collect(),
        }
    }
}

/// A bundle encrypted as an attachment: the bytes to upload and what the recipient needs to
/// decrypt and check them (goes into the `EncryptedFile` of the announcement).
#[derive(Debug)]
pub struct SealedBundle {
    /// The ciphertext to upload.
    pub ciphertext: Vec<u8>,
    /// Key, IV and SHA-256 hash of the ciphertext.
    pub info: MediaEncryptionInfo,
}

/// Serialises and encrypts a bundle with matrix-sdk-crypto's attachment encryption
/// (AES-256-CTR, SHA-256 of the ciphertext, `EncryptedFile` v2).
///
/// # Errors
///
/// [`BundleError::Io`] if reading the serialised bundle through the encryptor fails (it reads
/// from memory, so only on allocation failure).
pub fn seal(bundle: &RoomKeyBundle) -> Result<SealedBundle, BundleError> {
    let json = serde_json::to_vec(bundle).map_err(BundleError::Malformed)?;
    let mut reader = json.as_slice();
    let mut encryptor = AttachmentEncryptor::new(&mut reader);
    let mut ciphertext = Vec::with_capacity(json.len());
    std::io::Read::read_to_end(&mut encryptor, &mut ciphertext).map_err(BundleError::Io)?;
    Ok(SealedBundle { ciphertext, info: encryptor.finish() })
}
