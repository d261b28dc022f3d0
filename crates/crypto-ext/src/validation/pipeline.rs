//! [`validate`]: rules 1 to 4 of DESIGN section 6, in order, and the provenance of what passes.

use matrix_sdk_common::deserialized_responses::VerificationState;
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
    events::{
        AnyStateEventContent, StateEventType,
        room::power_levels::{RoomPowerLevels, UserPowerLevel},
    },
    serde::Raw,
};
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::{DecryptionFacts, RejectionReason, SessionOwner};
use crate::{
    critical::is_critical,
    state_event::{PackedStateKey, StatePayload, StateSlot},
    state_sessions::{EncryptedStateEvent, KeyOrigin},
};

/// Everything [`validate`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct ValidationInput<'a> {
    /// The room the event arrived in.
    pub room_id: &'a RoomId,
    /// The outer event.
    pub event: &'a EncryptedStateEvent,
    /// The decrypted plaintext.
    pub plaintext: &'a str,
    /// What the decrypting party established about the session.
    pub facts: &'a DecryptionFacts,
    /// The room's current plaintext power levels.
    pub power_levels: &'a RoomPowerLevels,
}

/// Where an accepted state value came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The event id.
    pub event_id: OwnedEventId,
    /// The sender.
    pub sender: OwnedUserId,
    /// The server timestamp.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// The Megolm session.
    pub session_id: String,
    /// The event's index in that session.
    pub message_index: u32,
    /// The sender's device that created the session, when known.
    pub sender_device: Option<OwnedDeviceId>,
    /// That device's verification state when the event was decrypted.
    pub verification: Option<VerificationState>,
    /// How we got the key (and who shared it, for a bundle or a key share).
    pub key_origin: KeyOrigin,
}

/// A decrypted state event that passed every rule.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AcceptedState {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The slot it writes.
    pub slot: StateSlot,
    /// The inner content.
    pub content: Raw<AnyStateEventContent>,
    /// Where it came from.
    pub provenance: Provenance,
}

/// A decrypted state event that failed a rule, kept with its reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedState {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The event id.
    pub event_id: OwnedEventId,
    /// The sender according to the server.
    pub sender: OwnedUserId,
    /// The server timestamp.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// The outer state key as received.
    pub packed_state_key: String,
    /// The Megolm session.
    pub session_id: String,
    /// The event's index in that session.
    pub message_index: u32,
    /// Why it was rejected.
    pub reason: RejectionReason,
}

/// The outcome of [`validate`].
#[derive(Clone, Debug)]
pub enum Verdict {
    /// Authorised: may take part in the slot's resolution.
    Accepted(AcceptedState),
    /// Rejected: never reaches the view.
    Rejected(RejectedState),
}

impl Verdict {
    /// The rejection reason, if rejected.
    pub fn rejection(&self) -> Option<&RejectionReason> {
        match self {
            Self::Accepted(_) => None,
            Self::Rejected(rejected) => Some(&rejected.reason),
        }
    }
}

/// Validates a decrypted state event, applying in order:
///
/// 1. the session belongs to a device of the event's sender;
/// 2. the plaintext is a state payload whose `{type}:{state_key}` equals the outer packed key
///    and whose `room_id` is the room's;
/// 3. the inner type is not critical state;
/// 4. the sender's power level reaches the level the room's plaintext power levels require for
///    the inner type (`events[type]`, else `state_default`), and a state key starting with `@` is
///    the sender's own user id.
///
/// The first failing rule decides the reason.
pub fn validate(input: ValidationInput<'_>) -> Verdict {
    match check(&input) {
        Ok((payload, device, verification)) => Verdict::Accepted(AcceptedState {
            room_id: input.room_id.to_owned(),
            slot: payload.slot(),
            content: payload.content,
            provenance: Provenance {
                event_id: input.event.event_id.clone(),
                sender: input.event.sender.clone(),
                origin_server_ts: input.event.origin_server_ts,
                session_id: input.event.session_id.clone(),
                message_index: input.event.message_index,
                sender_device: device,
                verification,
                key_origin: input.facts.key_origin.clone(),
            },
        }),
        Err(reason) => {
            debug!(event_id = %input.event.event_id, %reason, "rejected encrypted state");
            Verdict::Rejected(RejectedState {
                room_id: input.room_id.to_owned(),
                event_id: input.event.event_id.clone(),
                sender: input.event.sender.clone(),
                origin_server_ts: input.event.origin_server_ts,
                packed_state_key: input.event.packed_state_key.clone(),
                session_id: input.event.session_id.clone(),
                message_index: input.event.message_index,
                reason,
            })
        }
    }
}

type Checked = (StatePayload, Option<OwnedDeviceId>, Option<VerificationState>);

fn check(input: &ValidationInput<'_>) -> Result<Checked, RejectionReason> {
    let sender = &input.event.sender;

    // Rule 1.
    let (device, verification) = match &input.facts.session_owner {
        SessionOwner::Device { user_id, device_id, verification } if user_id == sender => {
            (device_id.clone(), Some(verification.clone()))
        }
        SessionOwner::Device { user_id, .. } => {
            return Err(RejectionReason::SessionNotFromSender { owner: Some(user_id.clone()) });
        }
        SessionOwner::OtherUser { user_id } => {
            return Err(RejectionReason::SessionNotFromSender { owner: user_id.clone() });
        }
        SessionOwner::Unknown => return Err(RejectionReason::SenderDeviceUnknown),
    };

    // Rule 2.
    let payload = StatePayload::parse(input.plaintext)
        .map_err(|e| RejectionReason::MalformedPayload { detail: e.to_string() })?;
    let slot = payload.slot();
    let packed_matches = PackedStateKey::parse(input.event.packed_state_key.as_str())
        .is_ok_and(|packed| packed.matches(&slot));
    if !packed_matches {
        return Err(RejectionReason::PackedKeyMismatch {
            packed_state_key: input.event.packed_state_key.clone(),
            inner_type: slot.event_type,
            inner_state_key: slot.state_key,
        });
    }
    if payload.room_id != input.room_id {
        return Err(RejectionReason::WrongRoom {
            expected: input.room_id.to_owned(),
            found: payload.room_id,
        });
    }

    // Rule 3.
    if is_critical(&slot.event_type) {
        return Err(RejectionReason::CriticalType { event_type: slot.event_type });
    }

    // Rule 4.
    let required = input.power_levels.for_state(StateEventType::from(slot.event_type.as_str()));
    let actual = input.power_levels.for_user(sender);
    if actual < required {
        return Err(RejectionReason::InsufficientPower {
            event_type: slot.event_type,
            required: required.into(),
            actual: match actual {
                UserPowerLevel::Int(level) => level.into(),
                // Infinite never falls short; kept total for a future variant.
                _ => i64::MAX,
            },
        });
    }
    if slot.state_key.starts_with('@') && slot.state_key != sender.as_str() {
        return Err(RejectionReason::StateKeyOfOtherUser { state_key: slot.state_key });
    }

    Ok((payload, device, verification))
}
