//! What the decrypting party established about the session behind an event.

use matrix_sdk_common::deserialized_responses::{
    EncryptionInfo, VerificationLevel, VerificationState,
};
use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use vodozemac::Curve25519PublicKey;

use crate::state_sessions::{KeyOrigin, OwnDevice};

/// Who created the Megolm session, as far as the decrypting party knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SessionOwner {
    /// A device of `user_id` whose keys match the session's sender key.
    Device {
        /// The device's owner.
        user_id: OwnedUserId,
        /// The device, when known.
        device_id: Option<OwnedDeviceId>,
        /// Its verification state when the event was decrypted.
        verification: VerificationState,
    },
    /// A device of another user than the event's sender (or of an unnamed other user).
    OtherUser {
        /// That user, when known.
        user_id: Option<OwnedUserId>,
    },
    /// No known device has the session's sender key.
    Unknown,
}

/// Facts about the decryption of one event, gathered by whoever decrypted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecryptionFacts {
    /// Who created the session.
    pub session_owner: SessionOwner,
    /// How we got the session's key.
    pub key_origin: KeyOrigin,
    /// Whether the session's creator is proven (our own session, or a key its creator's own
    /// device handed over Olm), rather than claimed by whoever shared the key.
    pub creator_proven: bool,
    /// Whether the session owner's user has a cross-signing identity, when the decrypting party
    /// looked: a device its owner never signed is "legacy" only for a user without one.
    pub owner_has_identity: Option<bool>,
}

impl DecryptionFacts {
    /// The facts of a session we created ourselves, when it is one: a key of
    /// [`KeyOrigin::Own`] origin whose sender key is our device's, on an event `sender` is our
    /// user. Such a session needs no device lookup: it is ours, and verified.
    pub fn for_own_session(
        own: &OwnDevice,
        sender: &UserId,
        sender_key: Curve25519PublicKey,
        key_origin: &KeyOrigin,
    ) -> Option<Self> {
        (*key_origin == KeyOrigin::Own && sender == own.user_id && sender_key == own.curve25519)
            .then(|| Self {
                session_owner: SessionOwner::Device {
                    user_id: own.user_id.clone(),
                    device_id: Some(own.device_id.clone()),
                    verification: VerificationState::Verified,
                },
                key_origin: KeyOrigin::Own,
                creator_proven: true,
                owner_has_identity: None,
            })
    }

    /// Facts from the [`EncryptionInfo`] of an event decrypted by a matrix-sdk `OlmMachine`
    /// (`Room::decrypt_event`, `OlmMachine::decrypt_room_event`). The creator is proven only
    /// for a key the machine received from the creator itself.
    ///
    /// The machine reports a session whose device belongs to someone else than the sender as
    /// [`VerificationLevel::MismatchedSender`], and a device it does not know as
    /// [`VerificationLevel::None`] with a link problem.
    pub fn from_encryption_info(info: &EncryptionInfo) -> Self {
        let session_owner = match &info.verification_state {
            VerificationState::Unverified(VerificationLevel::MismatchedSender) => {
                SessionOwner::OtherUser { user_id: None }
            }
            VerificationState::Unverified(VerificationLevel::None(_)) => SessionOwner::Unknown,
            verification => SessionOwner::Device {
                user_id: info.sender.clone(),
                device_id: info.sender_device.clone(),
                verification: verification.clone(),
            },
        };
        let key_origin = match &info.forwarder {
            Some(forwarder) => KeyOrigin::Bundle { shared_by: forwarder.user_id.clone() },
            None => KeyOrigin::Direct,
        };
        // The machine owns the link to the creator only for keys the creator sent it over Olm;
        // forwarded and imported keys come without a forwarder or as an insecure source.
        let creator_proven = info.forwarder.is_none()
            && !matches!(
                &info.verification_state,
                VerificationState::Unverified(VerificationLevel::None(_))
            );
        Self { session_owner, key_origin, creator_proven, owner_has_identity: None }
    }
}
