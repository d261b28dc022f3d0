//! Contextual invites: the keys of a room's aesthetic state slots go to the invitee's devices
//! with the invite, so the invite preview shows the real name and topic (MSC3414), read from the
//! encrypted state the homeserver puts in the invite's stripped state.

use crypto_ext::{
    InboundStateSession, KeyOrigin, OutboundStateSession, identifiers, validate_preview,
};
use matrix_sdk::{
    Room,
    deserialized_responses::{EncryptionInfo, RawAnySyncOrStrippedState},
    encryption::identities::Device,
};
use matrix_sdk_crypto::olm::ExportedRoomKey;
use ruma::{
    OwnedRoomId, OwnedUserId, RoomId,
    events::{AnyToDeviceEventContent, StateEventType},
    serde::Raw,
};
use serde::Deserialize;
use serde_json::{Value, json};
use state_store_ext::StateChanges;
use tracing::{debug, warn};

use crate::{
    EncryptedAvatar, Result,
    extension::Inner,
    processing::{AESTHETIC_SLOTS, facts_for_sender_key},
    room::avatar_from_content,
};

/// What an invite shows before joining, decrypted from the invite's stripped state with the keys
/// the inviter sent. A preview: the power levels are not in stripped state, so only rules 1 to 3
/// (and the state-key rule) are checked; after joining the full pipeline takes over.
#[derive(Clone, Debug, Default)]
pub struct InvitePreview {
    /// The room name.
    pub name: Option<String>,
    /// The room topic.
    pub topic: Option<String>,
    /// The room avatar.
    pub avatar: Option<EncryptedAvatar>,
    /// Who sent each value shown, and who shared its key.
    pub shared_by: Option<OwnedUserId>,
}

/// Sends the invitee's `devices` the keys of our aesthetic slots at their current index. Returns
/// how many keys went out.
pub(crate) async fn send_preview_keys(
    inner: &Inner,
    room_id: &RoomId,
    devices: &[Device],
) -> Result<usize> {
    let mut keys: Vec<ExportedRoomKey> = Vec::new();
    for event_type in AESTHETIC_SLOTS {
        let slot = crypto_ext::StateSlot::new(*event_type, "");
        if let Some(pickle) = inner.store.outbound_session(room_id, &slot).await? {
            let mut session = OutboundStateSession::from_pickle(pickle);
            keys.extend(session.export_current(&inner.own_device));
        }
    }
    if keys.is_empty() || devices.is_empty() {
        return Ok(0);
    }
    let content: Raw<AnyToDeviceEventContent> =
        Raw::new(&json!({ "room_id": room_id, "keys": keys }))?.cast_unchecked();
    inner
        .client
        .encryption()
        .encrypt_and_send_raw_to_device(
            devices.iter().collect(),
            identifiers::INVITE_STATE_KEYS,
            content,
            inner.config.sharing_strategy.clone(),
        )
        .await?;
    Ok(keys.len())
}

#[derive(Deserialize)]
struct InviteStateKeys {
    room_id: OwnedRoomId,
    keys: Vec<ExportedRoomKey>,
}

/// Stores the state keys of an invite (an [`identifiers::INVITE_STATE_KEYS`] to-device event).
pub(crate) async fn receive_preview_keys(
    inner: &Inner,
    event: &Value,
    info: Option<&EncryptionInfo>,
) -> Result<()> {
    // Only over Olm: the sender is then authenticated by its device keys.
    let Some(info) = info else {
        warn!("ignoring invite state keys that were not Olm-encrypted");
        return Ok(());
    };
    let Ok(content) = serde_json::from_value::<InviteStateKeys>(event["content"].clone()) else {
        warn!(sender = %info.sender, "ignoring malformed invite state keys");
        return Ok(());
    };
    if content.keys.len() > identifiers::INVITE_STATE_KEYS_MAX {
        warn!(sender = %info.sender, count = content.keys.len(), "ignoring too many invite state keys");
        return Ok(());
    }
    let origin = KeyOrigin::Invite { shared_by: info.sender.clone() };
    let mut imported = Vec::new();
    for key in &content.keys {
        // Bound to the room the message names; a key for another room is refused.
        match InboundStateSession::import(&content.room_id, key, origin.clone()) {
            Ok(session) => imported.push(session),
            Err(error) => warn!(sender = %info.sender, %error, "refused an invite state key"),
        }
    }
    // Our own copy, say, may reach further back.
    let kept = crate::receive::keep_further_reaching(inner, imported).await?;
    let changes = StateChanges {
        inbound_sessions: kept.iter().map(InboundStateSession::pickle).collect(),
        ..Default::default()
    };
    debug!(room_id = %content.room_id, count = changes.inbound_sessions.len(), "stored invite state keys");
    inner.store.save_changes(changes).await?;
    Ok(())
}

/// The preview of an invited room, from its stripped encrypted state.
pub(crate) async fn preview(inner: &Inner, room: &Room) -> Result<InvitePreview> {
    let mut preview = InvitePreview::default();
    let room_id = room.room_id();
    for raw in room.get_state_events(StateEventType::RoomEncrypted).await? {
        let RawAnySyncOrStrippedState::Stripped(raw) = raw else { continue };
        let Ok(Some(sender)) = raw.get_field::<OwnedUserId>("sender") else { continue };
        let Ok(Some(packed)) = raw.get_field::<String>("state_key") else { continue };
        let Ok(Some(content)) = raw.get_field::<Value>("content") else { continue };
        let Some(session_id) = content.get("session_id").and_then(Value::as_str) else { continue };
        let Some(pickle) = inner.store.inbound_session(session_id).await? else { continue };
        let mut session = InboundStateSession::from_pickle(pickle);
        if session.room_id() != room_id {
            continue;
        }
        let Ok(decrypted) = session.decrypt_content(&content) else { continue };
        let shared_by = decrypted.key_origin.shared_by().cloned();
        let facts =
            facts_for_sender_key(inner, &sender, decrypted.sender_key, decrypted.key_origin)
                .await?;
        let payload =
            match validate_preview(room_id, &sender, &packed, &decrypted.plaintext, &facts) {
                Ok(payload) => payload,
                Err(reason) => {
                    warn!(%room_id, %sender, %reason, "invite preview: rejected encrypted state");
                    continue;
                }
            };
        let value: Value = payload.content.deserialize_as_unchecked()?;
        let text = |field: &str| value.get(field).and_then(Value::as_str).map(str::to_owned);
        match (payload.event_type.as_str(), payload.state_key.as_str()) {
            ("m.room.name", "") => preview.name = text("name"),
            ("m.room.topic", "") => preview.topic = text("topic"),
            ("m.room.avatar", "") => preview.avatar = avatar_from_content(&value)?,
            _ => continue,
        }
        preview.shared_by = shared_by;
    }
    Ok(preview)
}
