//! Decoding the preview of a room we have not joined (an invite's or a restricted room's).
//!
//! The room's aesthetic encrypted state, checked by rules 1 to 3 and the state-key rule (the
//! power levels are not known before joining).

use std::collections::BTreeMap;

use crypto_ext::{CreatorClaim, InboundStateSession, identifiers, validate_preview};
use ruma::{OwnedUserId, RoomId, serde::Raw};
use serde_json::Value;
use tracing::warn;

use super::{facts::SessionClaim, handle::Context};
use crate::{EncryptedAvatar, Result, RoomPreview};

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

impl Context {
    /// The state sessions of `room_id` that `events` use, from the store, by session id.
    pub(crate) async fn preview_sessions(
        &self,
        room_id: &RoomId,
        events: &[PreviewEvent],
    ) -> Result<BTreeMap<String, InboundStateSession>> {
        let ids: Vec<String> = events.iter().map(|e| e.session_id.clone()).collect();
        let sessions = self.stored_sessions(room_id, &ids).await?;
        Ok(sessions.into_iter().map(|session| (session.session_id(), session)).collect())
    }

    /// Decrypts and checks the preview events of `room_id` with `sessions` (keyed by session
    /// id). Returns the preview and the positions of the events it shows.
    pub(crate) async fn decode_preview(
        &self,
        room_id: &RoomId,
        events: &[PreviewEvent],
        sessions: &mut BTreeMap<String, InboundStateSession>,
    ) -> Result<(RoomPreview, Vec<usize>)> {
        let mut preview = RoomPreview::default();
        let mut shown = Vec::new();
        let mut all_proven = true;
        for (position, event) in events.iter().enumerate() {
            let Some(session) = sessions.get_mut(&event.session_id) else { continue };
            if session.room_id() != room_id {
                continue;
            }
            let Ok(decrypted) = session.decrypt_content(&event.content) else { continue };
            let shared_by = decrypted.key_origin.shared_by().cloned();
            let sender = &event.sender;
            let claim = CreatorClaim::from_content(&event.content);
            let claim = claim.as_ref().map(|claim| SessionClaim {
                room_id,
                session_id: &event.session_id,
                claim,
            });
            let facts = self
                .facts_for_sender_key(
                    sender,
                    decrypted.sender_key,
                    decrypted.key_origin,
                    decrypted.creator_proven,
                    claim,
                )
                .await?;
            let payload = match validate_preview(
                room_id,
                sender,
                &event.packed_state_key,
                &decrypted.plaintext,
                &facts,
                self.config.unproven_creators,
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
                ("m.room.avatar", "") => preview.avatar = EncryptedAvatar::from_content(&value)?,
                _ => continue,
            }
            preview.shared_by = shared_by;
            all_proven &= facts.creator_proven;
            shown.push(position);
        }
        preview.creators_proven = !shown.is_empty() && all_proven;
        Ok((preview, shown))
    }
}
