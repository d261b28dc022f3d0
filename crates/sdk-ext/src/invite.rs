//! Contextual invites: the keys of a room's aesthetic state slots go to the invitee's devices
//! with the invite, so the invite preview shows the real name and topic (MSC3414), read from the
//! encrypted state the homeserver puts in the invite's stripped state. The preview decoder is
//! shared with restricted rooms' previews.

use std::collections::BTreeMap;

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
    OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomId,
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

/// What a room we have not joined shows: its name, topic, avatar and alias, decrypted from its
/// encrypted state with the keys a member sent us, either with an invite (read from the
/// invite's stripped state) or, for a restricted room, pushed to us as a member of a room its
/// allow-list names. A preview: the power levels are not known before joining, so only rules 1
/// to 3 (and the state-key rule) are checked; after joining the full pipeline takes over.
#[derive(Clone, Debug, Default)]
pub struct RoomPreview {
    /// The room name.
    pub name: Option<String>,
    /// The room topic.
    pub topic: Option<String>,
    /// The room avatar.
    pub avatar: Option<EncryptedAvatar>,
    /// The room's canonical alias.
    pub canonical_alias: Option<OwnedRoomAliasId>,
    /// Who shared the keys of the values shown (the inviter, or the restricted room's member
    /// who sent the preview).
    pub shared_by: Option<OwnedUserId>,
    /// For a restricted room's preview: the allowed room, one we are in, through which it came.
    pub via: Option<OwnedRoomId>,
}

/// One encrypted state event of a room we are not in.
pub(crate) struct PreviewEvent {
    sender: OwnedUserId,
    packed_state_key: String,
    session_id: String,
    content: Value,
}

impl PreviewEvent {
    /// The parts of a stripped or sync `m.room.encrypted` state event a preview needs.
    pub(crate) fn from_raw<T>(raw: &Raw<T>) -> Option<Self> {
        if raw.get_field::<String>("type").ok()?? != identifiers::ROOM_ENCRYPTED {
            return None;
        }
        let content: Value = raw.get_field("content").ok()??;
        Some(Self {
            sender: raw.get_field("sender").ok()??,
            packed_state_key: raw.get_field("state_key").ok()??,
            session_id: content.get("session_id")?.as_str()?.to_owned(),
            content,
        })
    }

    /// The session that encrypts it.
    pub(crate) fn session_id(&self) -> &str {
        &self.session_id
    }
}

/// Decrypts and checks the preview events of `room_id` with `sessions` (keyed by session id).
/// Returns the preview and the positions of the events it shows.
pub(crate) async fn decode(
    inner: &Inner,
    room_id: &RoomId,
    events: &[PreviewEvent],
    sessions: &mut BTreeMap<String, InboundStateSession>,
) -> Result<(RoomPreview, Vec<usize>)> {
    let mut preview = RoomPreview::default();
    let mut shown = Vec::new();
    for (position, event) in events.iter().enumerate() {
        let Some(session) = sessions.get_mut(&event.session_id) else { continue };
        if session.room_id() != room_id {
            continue;
        }
        let Ok(decrypted) = session.decrypt_content(&event.content) else { continue };
        let shared_by = decrypted.key_origin.shared_by().cloned();
        let sender = &event.sender;
        let facts =
            facts_for_sender_key(inner, sender, decrypted.sender_key, decrypted.key_origin).await?;
        let payload = match validate_preview(
            room_id,
            sender,
            &event.packed_state_key,
            &decrypted.plaintext,
            &facts,
        ) {
            Ok(payload) => payload,
            Err(reason) => {
                warn!(%room_id, %sender, %reason, "room preview: rejected encrypted state");
                continue;
            }
        };
        let value: Value = payload.content.deserialize_as_unchecked()?;
        let text = |field: &str| value.get(field).and_then(Value::as_str).map(str::to_owned);
        match (payload.event_type.as_str(), payload.state_key.as_str()) {
            ("m.room.name", "") => preview.name = text("name"),
            ("m.room.topic", "") => preview.topic = text("topic"),
            ("m.room.avatar", "") => preview.avatar = avatar_from_content(&value)?,
            ("m.room.canonical_alias", "") => {
                preview.canonical_alias = text("alias").and_then(|a| a.try_into().ok());
            }
            _ => continue,
        }
        preview.shared_by = shared_by;
        shown.push(position);
    }
    Ok((preview, shown))
}

/// The state sessions of `room_id` among those `events` use, from the store.
pub(crate) async fn stored_sessions(
    inner: &Inner,
    room_id: &RoomId,
    events: &[PreviewEvent],
) -> Result<BTreeMap<String, InboundStateSession>> {
    let ids: Vec<String> = events.iter().map(|e| e.session_id.clone()).collect();
    Ok(inner
        .store
        .inbound_sessions(&ids)
        .await?
        .into_iter()
        .filter(|pickle| pickle.room_id() == room_id)
        .map(|pickle| {
            let session = InboundStateSession::from_pickle(pickle);
            (session.session_id(), session)
        })
        .collect())
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
pub(crate) async fn preview(inner: &Inner, room: &Room) -> Result<RoomPreview> {
    let room_id = room.room_id();
    let events: Vec<PreviewEvent> = room
        .get_state_events(StateEventType::RoomEncrypted)
        .await?
        .iter()
        .filter_map(|raw| match raw {
            RawAnySyncOrStrippedState::Stripped(raw) => PreviewEvent::from_raw(raw),
            RawAnySyncOrStrippedState::Sync(_) => None,
        })
        .collect();
    let mut sessions = stored_sessions(inner, room_id, &events).await?;
    Ok(decode(inner, room_id, &events, &mut sessions).await?.0)
}
