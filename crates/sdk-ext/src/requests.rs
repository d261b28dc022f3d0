//! Key requests for state: a member who cannot decrypt a room's encrypted state (joined without
//! a bundle: a public room, a `joined`-visibility room, an inviter who went offline) asks for the
//! slot keys it lacks; members answer with each slot's key at the index of its current event.
//!
//! Requests go first to our own other devices and to the members whose power level is above the
//! room's default, then, once [`KeyRequestConfig::escalation_delay`] has passed without an
//! answer, to every member; each session is asked for at most
//! [`KeyRequestConfig::max_attempts`] times, with the wait doubling between attempts.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use crypto_ext::{InboundStateSession, KeyOrigin, identifiers};
use matrix_sdk::{
    Room, RoomState, deserialized_responses::EncryptionInfo, encryption::identities::Device,
};
use matrix_sdk_crypto::olm::ExportedRoomKey;
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedRoomId, OwnedUserId, TransactionId, UserId,
    events::{AnyToDeviceEventContent, room::member::MembershipState},
    serde::Raw,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use state_store_ext::{KeyRequest, StateChanges, StateOrigin};
use tracing::{debug, info, warn};

use crate::{Result, StateUpdate, extension::Inner, keys, processing::Processor};

/// How state keys a member lacks are asked for and handed out.
#[derive(Clone, Debug)]
pub struct KeyRequestConfig {
    /// Ask for the state keys we lack.
    pub request: bool,
    /// Answer other members' requests.
    pub answer: bool,
    /// How long our own devices and the room's moderators have to answer before every member is
    /// asked; the wait doubles after each later attempt.
    pub escalation_delay: Duration,
    /// How many times one session is asked for.
    pub max_attempts: u32,
}

impl Default for KeyRequestConfig {
    fn default() -> Self {
        Self {
            request: true,
            answer: true,
            escalation_delay: Duration::from_secs(30),
            max_attempts: 5,
        }
    }
}

/// Why a member's request for state keys was not answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRequestRefusal {
    /// We are not joined to the room.
    NotInRoom,
    /// The requester is not joined to the room in our view of it (never joined, or left).
    RequesterNotJoined,
    /// The requesting device is unknown to us, or blocked.
    DeviceNotAllowed,
    /// None of the requested sessions encrypts the current value of a slot we can read.
    NothingToShare,
}

impl std::fmt::Display for KeyRequestRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotInRoom => "we are not in the room",
            Self::RequesterNotJoined => "the requester is not joined to the room",
            Self::DeviceNotAllowed => "the requesting device is unknown or blocked",
            Self::NothingToShare => "no requested session encrypts current state we hold",
        })
    }
}

#[derive(Serialize, Deserialize)]
struct StateKeyRequest {
    room_id: OwnedRoomId,
    request_id: String,
    session_ids: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct StateKeyShare {
    room_id: OwnedRoomId,
    request_id: String,
    keys: Vec<ExportedRoomKey>,
}

/// Asks for the keys of the room's events waiting for one, as far as the schedule allows, and
/// forgets requests whose events became readable.
pub(crate) async fn request_missing(inner: &Inner, room: &Room) -> Result<()> {
    let config = &inner.config.key_requests;
    if !config.request || room.state() != RoomState::Joined {
        return Ok(());
    }
    let room_id = room.room_id();
    let waiting: BTreeSet<String> =
        inner.store.pending_in_room(room_id).await?.into_iter().map(|p| p.session_id).collect();
    let asked: BTreeMap<String, KeyRequest> = inner
        .store
        .key_requests(room_id)
        .await?
        .into_iter()
        .map(|r| (r.session_id.clone(), r))
        .collect();
    if waiting.is_empty() {
        inner.set_waiting_room(room_id, false);
    }
    if waiting.is_empty() && asked.is_empty() {
        return Ok(());
    }
    let mut changes = StateChanges::default();
    for session_id in asked.keys().filter(|s| !waiting.contains(*s)) {
        changes.removed_key_requests.push((room_id.to_owned(), session_id.clone()));
    }
    let now = MilliSecondsSinceUnixEpoch::now();
    let (mut first, mut again) = (Vec::new(), Vec::new());
    for session_id in &waiting {
        match asked.get(session_id) {
            None => {
                first.push(session_id.clone());
                changes.key_requests.push(KeyRequest {
                    room_id: room_id.to_owned(),
                    session_id: session_id.clone(),
                    first_requested_at: now,
                    attempts: 1,
                });
            }
            Some(request) if request.attempts < config.max_attempts && is_due(request, config) => {
                again.push(session_id.clone());
                let mut request = request.clone();
                request.attempts += 1;
                changes.key_requests.push(request);
            }
            Some(_) => {}
        }
    }
    if !first.is_empty() || !again.is_empty() {
        let members = keys::recipient_devices(inner, room).await?;
        if !first.is_empty() {
            let privileged = privileged_users(inner, room).await;
            let devices: Vec<Device> =
                members.iter().filter(|d| privileged.contains(d.user_id())).cloned().collect();
            // Nobody privileged has a device: every member is asked at once.
            let devices = if devices.is_empty() { members.clone() } else { devices };
            send_request(inner, room, &first, &devices).await?;
        }
        if !again.is_empty() {
            send_request(inner, room, &again, &members).await?;
        }
    }
    inner.store.save_changes(changes).await?;
    Ok(())
}

/// Whether the next attempt of `request` is due: attempt n+1 comes `escalation_delay * 2^(n-1)`
/// after the first.
fn is_due(request: &KeyRequest, config: &KeyRequestConfig) -> bool {
    let waited = MilliSecondsSinceUnixEpoch::now().get() - request.first_requested_at.get();
    let factor = 1u64 << request.attempts.saturating_sub(1).min(16);
    let due = config.escalation_delay.as_millis() as u64 * factor;
    u64::from(waited) >= due
}

/// Our own user and the members whose power level is above the room's default for users.
async fn privileged_users(inner: &Inner, room: &Room) -> BTreeSet<OwnedUserId> {
    let mut users = BTreeSet::from([inner.own_device.user_id.clone()]);
    if let Ok(power_levels) = room.power_levels().await {
        users.extend(
            power_levels
                .users
                .iter()
                .filter(|(_, level)| **level > power_levels.users_default)
                .map(|(user, _)| user.clone()),
        );
    }
    users
}

async fn send_request(
    inner: &Inner,
    room: &Room,
    session_ids: &[String],
    devices: &[Device],
) -> Result<()> {
    if devices.is_empty() {
        debug!(room_id = %room.room_id(), "no device to ask for state keys");
        return Ok(());
    }
    for chunk in session_ids.chunks(identifiers::STATE_KEY_REQUEST_MAX) {
        let request = StateKeyRequest {
            room_id: room.room_id().to_owned(),
            request_id: TransactionId::new().to_string(),
            session_ids: chunk.to_vec(),
        };
        let content: Raw<AnyToDeviceEventContent> = Raw::new(&request)?.cast_unchecked();
        inner
            .client
            .encryption()
            .encrypt_and_send_raw_to_device(
                devices.iter().collect(),
                identifiers::STATE_KEY_REQUEST,
                content,
                inner.config.sharing_strategy.clone(),
            )
            .await?;
        info!(room_id = %room.room_id(), sessions = chunk.len(), devices = devices.len(), "asked for state keys");
    }
    Ok(())
}

/// Answers a member's request, or records why not.
pub(crate) async fn receive_request(
    inner: &Inner,
    event: &Value,
    info: Option<&EncryptionInfo>,
) -> Result<()> {
    if !inner.config.key_requests.answer {
        return Ok(());
    }
    let Ok(request) = serde_json::from_value::<StateKeyRequest>(event["content"].clone()) else {
        warn!("ignoring a malformed state key request");
        return Ok(());
    };
    let room_id = request.room_id.clone();
    let refuse = |requester: OwnedUserId, reason: KeyRequestRefusal| {
        warn!(%room_id, %requester, %reason, "refused a state key request");
        inner.notify(vec![StateUpdate::KeyRequestRefused {
            room_id: room_id.clone(),
            requester,
            reason,
        }]);
        Ok(())
    };
    let Some(info) = info else {
        // Without Olm the sender is not authenticated: nothing to answer, nobody to blame.
        warn!(%room_id, "ignoring a state key request that was not Olm-encrypted");
        return Ok(());
    };
    let requester = info.sender.clone();
    if request.session_ids.len() > identifiers::STATE_KEY_REQUEST_MAX {
        warn!(%requester, "ignoring a state key request naming too many sessions");
        return Ok(());
    }
    let Some(room) = inner.client.get_room(&room_id).filter(|r| r.state() == RoomState::Joined)
    else {
        return refuse(requester, KeyRequestRefusal::NotInRoom);
    };
    if !is_joined(&room, &requester).await {
        return refuse(requester, KeyRequestRefusal::RequesterNotJoined);
    }
    let Some(device) = sender_device(inner, info).await? else {
        return refuse(requester, KeyRequestRefusal::DeviceNotAllowed);
    };

    // Only sessions of the current encrypted state, each from its current event's index.
    let current: BTreeMap<String, u32> = inner
        .store
        .room_state(&room_id)
        .await?
        .into_iter()
        .filter_map(|record| match record.origin {
            StateOrigin::Encrypted(provenance) => {
                Some((provenance.session_id, provenance.message_index))
            }
            StateOrigin::Plaintext { .. } => None,
        })
        .collect();
    let indices: BTreeMap<String, u32> =
        request.session_ids.iter().filter_map(|s| Some((s.clone(), *current.get(s)?))).collect();
    let keys = keys::keys_at_index(inner, &room_id, &indices).await?;
    if keys.is_empty() {
        return refuse(requester, KeyRequestRefusal::NothingToShare);
    }
    let count = keys.len();
    let share = StateKeyShare { room_id: room_id.clone(), request_id: request.request_id, keys };
    let content: Raw<AnyToDeviceEventContent> = Raw::new(&share)?.cast_unchecked();
    inner
        .client
        .encryption()
        .encrypt_and_send_raw_to_device(
            vec![&device],
            identifiers::STATE_KEY_SHARE,
            content,
            inner.config.sharing_strategy.clone(),
        )
        .await?;
    info!(%room_id, %requester, keys = count, "answered a state key request");
    inner.notify(vec![StateUpdate::KeyRequestAnswered { room_id, requester, keys: count }]);
    Ok(())
}

/// The device that sent a to-device message, if it is known (its owner's devices are queried
/// once if it is not: a message can arrive before the keys query of a user we just met) and not
/// blocked.
pub(crate) async fn sender_device(inner: &Inner, info: &EncryptionInfo) -> Result<Option<Device>> {
    let Some(device_id) = &info.sender_device else { return Ok(None) };
    let device = crate::devices::device(inner, &info.sender, device_id, |_| true).await?;
    Ok(device.filter(|d| !d.is_blacklisted() && !d.is_deleted()))
}

/// Whether `user_id` is joined to `room` in our view of it.
pub(crate) async fn is_joined(room: &Room, user_id: &UserId) -> bool {
    matches!(
        room.get_member_no_sync(user_id).await,
        Ok(Some(member)) if *member.membership() == MembershipState::Join
    )
}

/// Takes the keys of an answer: only for a room we are joined to, from a sender who is a member,
/// and only for sessions our events are waiting for.
pub(crate) async fn receive_share(
    inner: &Inner,
    event: &Value,
    info: Option<&EncryptionInfo>,
) -> Result<()> {
    let Some(info) = info else {
        warn!("ignoring state keys that were not Olm-encrypted");
        return Ok(());
    };
    let sharer = &info.sender;
    let Ok(share) = serde_json::from_value::<StateKeyShare>(event["content"].clone()) else {
        warn!(%sharer, "ignoring malformed state keys");
        return Ok(());
    };
    if share.keys.len() > identifiers::STATE_KEY_REQUEST_MAX {
        warn!(%sharer, "ignoring an answer with too many state keys");
        return Ok(());
    }
    let room_id = &share.room_id;
    let Some(room) = inner.client.get_room(room_id).filter(|r| r.state() == RoomState::Joined)
    else {
        warn!(%room_id, %sharer, "ignoring state keys for a room we are not in");
        return Ok(());
    };
    if !is_joined(&room, sharer).await {
        warn!(%room_id, %sharer, "ignoring state keys from someone who is not a member");
        return Ok(());
    }
    let waiting: BTreeSet<String> =
        inner.store.pending_in_room(room_id).await?.into_iter().map(|p| p.session_id).collect();
    let origin = KeyOrigin::KeyShare { shared_by: sharer.clone() };
    let mut sessions = Vec::new();
    for key in &share.keys {
        if !waiting.contains(&key.session_id) {
            debug!(session_id = %key.session_id, "ignoring a state key nothing waits for");
            continue;
        }
        match InboundStateSession::import(room_id, key, origin.clone()) {
            Ok(session) => sessions.push(session),
            Err(error) => warn!(%sharer, %error, "refused a shared state key"),
        }
    }
    if sessions.is_empty() {
        return Ok(());
    }
    let sessions = crate::receive::keep_further_reaching(inner, sessions).await?;
    let ids: BTreeSet<String> = sessions.iter().map(InboundStateSession::session_id).collect();
    let changes = StateChanges {
        inbound_sessions: sessions.iter().map(InboundStateSession::pickle).collect(),
        removed_key_requests: ids.iter().map(|id| (room_id.clone(), id.clone())).collect(),
        ..Default::default()
    };
    inner.store.save_changes(changes).await?;
    info!(%room_id, %sharer, keys = ids.len(), "took shared state keys");
    Processor::new(inner).retry_sessions(ids).await
}
