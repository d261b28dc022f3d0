//! Why a decrypted state event was rejected.

use ruma::{OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};

/// The reason a decrypted state event never reaches the room's view. Stored with the event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RejectionReason {
    /// Rule 1: the Megolm session was created by a device of another user than the sender.
    #[error("the session was not created by a device of the sender (owner: {owner:?})")]
    SessionNotFromSender {
        /// The user owning the session's device, when known.
        owner: Option<OwnedUserId>,
    },
    /// Rule 1: the session's creator is only claimed by whoever shared its key, and the
    /// settings refuse such state (`UnprovenCreators::Reject`).
    #[error("the session's creator is unproven (the key was shared by {shared_by:?})")]
    CreatorUnproven {
        /// Who shared the key, when known.
        shared_by: Option<OwnedUserId>,
    },
    /// Rule 1: the device that created the session does not meet the settings' trust
    /// requirement for state senders (`StateSenderTrust`); validated again when the sender's
    /// devices change (its owner may sign it).
    #[error("the sender's device {device_id:?} is not trusted enough to set state")]
    UntrustedDevice {
        /// The device, when known.
        device_id: Option<ruma::OwnedDeviceId>,
    },
    /// Rule 1: no known device of anyone has the session's key; retried when device lists
    /// change (see [`RejectionReason::is_transient`]).
    #[error("the device that created the session is unknown")]
    SenderDeviceUnknown,
    /// The outer event is not a Megolm-encrypted state event (unknown algorithm, missing
    /// fields, a ciphertext that is not a Megolm message); nothing could be decrypted.
    #[error("the encrypted event is malformed: {detail}")]
    MalformedEvent {
        /// What is wrong with it.
        detail: String,
    },
    /// Rule 2: the plaintext is not a state payload.
    #[error("the decrypted payload is malformed: {detail}")]
    MalformedPayload {
        /// What is wrong with it.
        detail: String,
    },
    /// Rule 2: the outer packed state key is not `{type}:{state_key}` of the plaintext.
    #[error(
        "packed state key {packed_state_key:?} does not match ({inner_type}, {inner_state_key:?})"
    )]
    PackedKeyMismatch {
        /// The outer state key.
        packed_state_key: String,
        /// The inner type.
        inner_type: String,
        /// The inner state key.
        inner_state_key: String,
    },
    /// Rule 2: the plaintext names another room.
    #[error("the payload is for room {found}, not {expected}")]
    WrongRoom {
        /// The room the event arrived in.
        expected: OwnedRoomId,
        /// The room the payload names.
        found: OwnedRoomId,
    },
    /// Rule 3: the inner type is critical state, never honoured when encrypted.
    #[error("{event_type} is critical state and is never honoured when encrypted")]
    CriticalType {
        /// The inner type.
        event_type: String,
    },
    /// Rule 3: the inner type is only honoured in plaintext
    /// ([`PLAINTEXT_ONLY_STATE_TYPES`](crate::critical::PLAINTEXT_ONLY_STATE_TYPES)).
    #[error("{event_type} is only honoured in plaintext, where the homeserver checks it")]
    PlaintextOnly {
        /// The inner type.
        event_type: String,
    },
    /// Rule 4: the sender's power level is below what the room requires for the inner type.
    #[error("sending {event_type} needs power level {required}, the sender has {actual}")]
    InsufficientPower {
        /// The inner type.
        event_type: String,
        /// The level the room requires.
        required: i64,
        /// The sender's level.
        actual: i64,
    },
    /// Rule 4: the state key names a user other than the sender.
    #[error("the state key {state_key:?} belongs to another user than the sender")]
    StateKeyOfOtherUser {
        /// The inner state key.
        state_key: String,
    },
    /// Rule 5: the event's (session, message index) is not newer than one already accepted for
    /// the same slot, earlier in the room: an older ciphertext posted again (a replay), which
    /// could otherwise roll the slot back.
    #[error(
        "replay: index {message_index} of session {session_id} is not newer than index \
         {accepted_index}, already accepted for this slot"
    )]
    Replay {
        /// The Megolm session.
        session_id: String,
        /// The event's index.
        message_index: u32,
        /// The index of the accepted event of the same session that came first.
        accepted_index: u32,
    },
    /// The event was redacted before it could be decrypted (its ciphertext is gone).
    #[error("the event was redacted before it could be decrypted")]
    Redacted,
    /// No key for the event yet, and more of its sender's events in the room wait for keys
    /// than the reader keeps waiting (each costs storage and key requests); validated again
    /// when the room is scanned in full (after a bundle import, a device change, a restart).
    #[error("too many of the sender's events wait for keys (at most {limit})")]
    TooManyWaiting {
        /// How many of one sender's events in one room may wait.
        limit: usize,
    },
}

impl RejectionReason {
    /// Whether the rejection may be lifted by new information (a device that becomes known, a
    /// device its owner cross-signs later, keys that let other waiting events through), so the
    /// event is worth validating again when the room is scanned in full.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::SenderDeviceUnknown | Self::UntrustedDevice { .. } | Self::TooManyWaiting { .. }
        )
    }
}
