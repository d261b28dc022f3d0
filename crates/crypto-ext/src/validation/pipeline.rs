//! [`validate`]: rules 1 to 4 of DESIGN section 6, in order, and the provenance of what passes.

use matrix_sdk_common::deserialized_responses::{
    DeviceLinkProblem, VerificationLevel, VerificationState,
};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
    UserId,
    events::{
        AnyStateEventContent, AnySyncStateEvent, StateEventType,
        room::power_levels::{RoomPowerLevels, UserPowerLevel},
    },
    serde::Raw,
};
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::{DecryptionFacts, RejectionReason, SessionOwner};
use crate::{
    critical::{is_critical, is_plaintext_only},
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
    /// What to do with state whose session's creator is only claimed by a sharer.
    pub unproven_creators: UnprovenCreators,
    /// How much the creating device must be trusted.
    pub sender_trust: StateSenderTrust,
}

/// How much the device that created a state session must be trusted for its state to count
/// (as matrix-sdk's `TrustRequirement` for decryption).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StateSenderTrust {
    /// Any device of the sender; its verification state is recorded in the provenance.
    #[default]
    Untrusted,
    /// A device its owner cross-signed, or any device of a user without a cross-signing
    /// identity (legacy accounts, some bots).
    CrossSignedOrLegacy,
    /// Only a device its owner cross-signed: a device the homeserver added to a user without
    /// the user's signature cannot set state.
    CrossSigned,
}

/// What becomes of state whose session's creator is not proven (the key reached us from a
/// sharer, not from its creator's own device over Olm).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnprovenCreators {
    /// Validated like any state, with the creator's device never shown as verified: its
    /// verification state reads `Unverified(None(InsecureSource))`, as matrix-sdk labels keys
    /// from an insecure source, and the provenance says `creator_proven: false`.
    #[default]
    Accept,
    /// Rejected with [`RejectionReason::CreatorUnproven`].
    Reject,
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
    /// That device's verification state when the event was validated (sdk-ext's readers bring
    /// it up to date when they read it).
    pub verification: Option<VerificationState>,
    /// How we got the key (and who shared it, for a bundle or a key share).
    pub key_origin: KeyOrigin,
    /// Whether the session's creator is proven: our own session, or a key its creator's own
    /// device handed us over Olm. Absent (false) in records stored before it was recorded.
    #[serde(default)]
    pub creator_proven: bool,
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
    /// The event's position in its room, in the order the processing client met the room's
    /// state events ([`super::resolution`]); 0 until the caller sets it, and in records stored
    /// before positions existed.
    #[serde(default)]
    pub position: u64,
}

impl RejectedState {
    /// The rejection of `event`, received in `room_id`, for `reason`.
    pub fn for_event(
        room_id: &RoomId,
        event: &EncryptedStateEvent,
        reason: RejectionReason,
    ) -> Self {
        Self {
            room_id: room_id.to_owned(),
            event_id: event.event_id.clone(),
            sender: event.sender.clone(),
            origin_server_ts: event.origin_server_ts,
            packed_state_key: event.packed_state_key.clone(),
            session_id: event.session_id.clone(),
            message_index: event.message_index,
            reason,
            position: 0,
        }
    }

    /// The rejection of an outer event that does not even parse as encrypted state
    /// ([`RejectionReason::MalformedEvent`] with `detail`), when it has the fields that name it
    /// (event id, sender, timestamp); `None` otherwise.
    pub fn malformed(room_id: &RoomId, raw: &Raw<AnySyncStateEvent>, detail: &str) -> Option<Self> {
        Some(Self {
            room_id: room_id.to_owned(),
            event_id: raw.get_field("event_id").ok()??,
            sender: raw.get_field::<OwnedUserId>("sender").ok()??,
            origin_server_ts: raw.get_field("origin_server_ts").ok()??,
            packed_state_key: raw.get_field("state_key").ok()?.unwrap_or_default(),
            session_id: String::new(),
            message_index: 0,
            reason: RejectionReason::MalformedEvent { detail: detail.to_owned() },
            position: 0,
        })
    }
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
/// 3. the inner type is not critical state, nor only honoured in plaintext;
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
                creator_proven: input.facts.creator_proven,
            },
        }),
        Err(reason) => {
            debug!(event_id = %input.event.event_id, %reason, "rejected encrypted state");
            Verdict::Rejected(RejectedState::for_event(input.room_id, input.event, reason))
        }
    }
}

type Checked = (StatePayload, Option<OwnedDeviceId>, Option<VerificationState>);

fn check(input: &ValidationInput<'_>) -> Result<Checked, RejectionReason> {
    let sender = &input.event.sender;
    let (device, verification) =
        rule_session_of_sender(input.facts, sender, input.unproven_creators, input.sender_trust)?;
    let payload =
        rule_payload_matches(input.plaintext, &input.event.packed_state_key, input.room_id)?;
    let slot = payload.slot();
    rule_not_critical(&slot)?;
    rule_power(input.power_levels, sender, &slot)?;
    rule_own_state_key(sender, &slot)?;
    Ok((payload, device, verification))
}

/// Rules 1 to 3 and the state-key part of rule 4, for a state event seen in an invite's stripped
/// state: there are no power levels to check against, so callers show the result as a preview
/// only (until the user joins and the full pipeline runs). `unproven` decides, as for joined
/// rooms, whether a creator only the sharer vouches for is shown.
///
/// # Errors
///
/// The first [`RejectionReason`] that applies.
pub fn validate_preview(
    room_id: &RoomId,
    sender: &UserId,
    packed_state_key: &str,
    plaintext: &str,
    facts: &DecryptionFacts,
    unproven: UnprovenCreators,
) -> Result<StatePayload, RejectionReason> {
    rule_session_of_sender(facts, sender, unproven, StateSenderTrust::Untrusted)?;
    let payload = rule_payload_matches(plaintext, packed_state_key, room_id)?;
    let slot = payload.slot();
    rule_not_critical(&slot)?;
    rule_own_state_key(sender, &slot)?;
    Ok(payload)
}

/// Rule 1: the session was created by a device of the sender; a creator only a sharer claims
/// is never shown as verified, and refused when `unproven` says so.
fn rule_session_of_sender(
    facts: &DecryptionFacts,
    sender: &UserId,
    unproven: UnprovenCreators,
    trust: StateSenderTrust,
) -> Result<(Option<OwnedDeviceId>, Option<VerificationState>), RejectionReason> {
    match &facts.session_owner {
        SessionOwner::Device { user_id, device_id, verification } if user_id == sender => {
            let cross_signed = matches!(
                verification,
                VerificationState::Verified
                    | VerificationState::Unverified(
                        VerificationLevel::UnverifiedIdentity
                            | VerificationLevel::VerificationViolation
                    )
            );
            let legacy = matches!(
                verification,
                VerificationState::Unverified(VerificationLevel::UnsignedDevice)
            ) && facts.owner_has_identity == Some(false);
            let trusted = match trust {
                StateSenderTrust::Untrusted => true,
                StateSenderTrust::CrossSignedOrLegacy => cross_signed || legacy,
                StateSenderTrust::CrossSigned => cross_signed,
            };
            if !trusted {
                return Err(RejectionReason::UntrustedDevice { device_id: device_id.clone() });
            }
            if facts.creator_proven {
                return Ok((device_id.clone(), Some(verification.clone())));
            }
            if unproven == UnprovenCreators::Reject {
                return Err(RejectionReason::CreatorUnproven {
                    shared_by: facts.key_origin.shared_by().cloned(),
                });
            }
            let insecure = VerificationLevel::None(DeviceLinkProblem::InsecureSource);
            Ok((device_id.clone(), Some(VerificationState::Unverified(insecure))))
        }
        SessionOwner::Device { user_id, .. } => {
            Err(RejectionReason::SessionNotFromSender { owner: Some(user_id.clone()) })
        }
        SessionOwner::OtherUser { user_id } => {
            Err(RejectionReason::SessionNotFromSender { owner: user_id.clone() })
        }
        SessionOwner::Unknown => Err(RejectionReason::SenderDeviceUnknown),
    }
}

/// Rule 2: a state payload whose packed key and room match the outer event.
fn rule_payload_matches(
    plaintext: &str,
    packed_state_key: &str,
    room_id: &RoomId,
) -> Result<StatePayload, RejectionReason> {
    let payload = StatePayload::parse(plaintext)
        .map_err(|e| RejectionReason::MalformedPayload { detail: e.to_string() })?;
    let slot = payload.slot();
    let packed_matches =
        PackedStateKey::parse(packed_state_key).is_ok_and(|packed| packed.matches(&slot));
    if !packed_matches {
        return Err(RejectionReason::PackedKeyMismatch {
            packed_state_key: packed_state_key.to_owned(),
            inner_type: slot.event_type,
            inner_state_key: slot.state_key,
        });
    }
    if payload.room_id != room_id {
        return Err(RejectionReason::WrongRoom {
            expected: room_id.to_owned(),
            found: payload.room_id,
        });
    }
    Ok(payload)
}

/// Rule 3: the inner type is neither critical nor plaintext-only.
fn rule_not_critical(slot: &StateSlot) -> Result<(), RejectionReason> {
    if is_critical(&slot.event_type) {
        return Err(RejectionReason::CriticalType { event_type: slot.event_type.clone() });
    }
    if is_plaintext_only(&slot.event_type) {
        return Err(RejectionReason::PlaintextOnly { event_type: slot.event_type.clone() });
    }
    Ok(())
}

/// Rule 4, power: the sender's level reaches the level required for the inner type.
fn rule_power(
    power_levels: &RoomPowerLevels,
    sender: &UserId,
    slot: &StateSlot,
) -> Result<(), RejectionReason> {
    let required = power_levels.for_state(StateEventType::from(slot.event_type.as_str()));
    let actual = power_levels.for_user(sender);
    if actual < required {
        return Err(RejectionReason::InsufficientPower {
            event_type: slot.event_type.clone(),
            required: required.into(),
            actual: match actual {
                UserPowerLevel::Int(level) => level.into(),
                // Infinite never falls short; kept total for a future variant.
                _ => i64::MAX,
            },
        });
    }
    Ok(())
}

/// Whether `sender` may set `slot` under `power_levels`, as every reader's pipeline will judge
/// it (rule 4: the power the inner type needs, and a state key starting with `@` only for the
/// sender's own user id). A sender checks it before sending, so that it never sends state its
/// readers reject.
///
/// # Errors
///
/// [`RejectionReason::InsufficientPower`] or [`RejectionReason::StateKeyOfOtherUser`].
pub fn may_send_state(
    power_levels: &RoomPowerLevels,
    sender: &UserId,
    slot: &StateSlot,
) -> Result<(), RejectionReason> {
    rule_power(power_levels, sender, slot)?;
    rule_own_state_key(sender, slot)
}

/// Rule 4, state key: a state key starting with `@` is the sender's own user id.
fn rule_own_state_key(sender: &UserId, slot: &StateSlot) -> Result<(), RejectionReason> {
    if slot.state_key.starts_with('@') && slot.state_key != sender.as_str() {
        return Err(RejectionReason::StateKeyOfOtherUser { state_key: slot.state_key.clone() });
    }
    Ok(())
}
