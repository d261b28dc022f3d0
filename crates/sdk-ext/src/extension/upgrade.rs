//! Moving an existing room to encrypted state the way every client honours: a room upgrade.
//!
//! Clients on matrix-sdk-crypto (Element Web, Element X) never take a change of a room's
//! encryption settings, so a room switched on after its creation keeps plaintext state for them.
//! The upgrade creates a new room with the flag in its first `m.room.encryption`, carries the
//! old room's current state over encrypted, tombstones the old room (in clear, as critical state
//! is) and invites the old room's members with history.

use crypto_ext::{
    StateSlot, critical::is_never_encrypted, identifiers::AESTHETIC_SLOTS, may_send_state,
};
use matrix_sdk::{Room, RoomMemberships};
use ruma::{
    api::client::room::create_room::v3::Request as CreateRoomRequest, events::StateEventType,
    serde::Raw,
};
use serde_json::{Value, json};
use state_store_ext::StateRecord;
use tracing::{info, warn};

use super::{history::RoomHistoryExt, inner::Inner};
use crate::{Error, Result, RoomUpgrade, context::state_content};

/// Plaintext state copied into the new room as it is (rules of access, not metadata).
const COPIED_IN_CLEAR: [&str; 3] =
    ["m.room.join_rules", "m.room.history_visibility", "m.room.guest_access"];

impl Inner {
    /// Upgrades `old` to a new room with encrypted state (see
    /// [`crate::RoomStateExt::upgrade_to_encrypted_state`]).
    pub(super) async fn upgrade(&self, old: &Room) -> Result<RoomUpgrade> {
        let ctx = &self.ctx;
        let own = &ctx.own_device.user_id;
        // Everything that could refuse is checked before the new room exists.
        ctx.require_cross_signing().await?;
        let levels = ctx.room_power_levels(old).await?;
        may_send_state(&levels, own, &StateSlot::new("m.room.tombstone", ""))
            .map_err(Error::NotAllowed)?;

        let mut request = CreateRoomRequest::new();
        request.room_version = old.version();
        request.creation_content = Some(
            Raw::new(&json!({
                "predecessor": { "room_id": old.room_id() },
            }))?
            .cast_unchecked(),
        );
        if let Some(content) = plaintext_content(old, "m.room.power_levels").await {
            request.power_level_content_override = Some(Raw::new(&content)?.cast_unchecked());
        }
        for event_type in COPIED_IN_CLEAR {
            if let Some(content) = plaintext_content(old, event_type).await {
                let event = json!({ "type": event_type, "state_key": "", "content": content });
                request.initial_state.push(Raw::new(&event)?.cast_unchecked());
            }
        }
        let values = self.current_values(old).await?;
        let room = self.state.create_room(request).await?;

        let mut carried = Vec::new();
        for (slot, content) in values {
            match self.state.set(&room, &slot.event_type, &slot.state_key, content).await {
                Ok(_) => carried.push(slot),
                Err(Error::NotAllowed(reason)) => {
                    warn!(%slot, %reason, "not carried over: our power does not allow it");
                }
                Err(error) => return Err(error),
            }
        }

        let tombstone = json!({
            "body": "This room moved to a room with encrypted state.",
            "replacement_room": room.room_id(),
        });
        old.send_state_event_raw("m.room.tombstone", "", tombstone).await?;

        let mut invited = Vec::new();
        let mut not_invited = Vec::new();
        for member in old.members(RoomMemberships::JOIN).await? {
            let user_id = member.user_id();
            if user_id == own {
                continue;
            }
            match room.invite_with_history(user_id).await {
                Ok(report) => invited.push(report),
                Err(error) => not_invited.push((user_id.to_owned(), error.to_string())),
            }
        }
        info!(
            old = %old.room_id(), new = %room.room_id(), carried = carried.len(),
            invited = invited.len(), not_invited = not_invited.len(),
            "room upgraded to encrypted state"
        );
        Ok(RoomUpgrade { room, carried, invited, not_invited })
    }

    /// The current value of each non-critical slot of `room` that a member may carry over: the
    /// decrypted view, and the plaintext name, topic and avatar of a room that never
    /// switched on encrypted state. Slots keyed by another user (`@user` state keys) stay
    /// behind: only that user may set them.
    async fn current_values(&self, room: &Room) -> Result<Vec<(StateSlot, Value)>> {
        let own = self.ctx.own_device.user_id.as_str();
        let mut values: Vec<(StateSlot, Value)> = Vec::new();
        for record in self.ctx.store.room_state(room.room_id()).await? {
            let StateRecord { slot, content, .. } = record;
            let content: Value = content.deserialize_as_unchecked()?;
            values.push((slot, content));
        }
        for event_type in AESTHETIC_SLOTS {
            if values.iter().any(|(slot, _)| slot.event_type == *event_type) {
                continue;
            }
            if let Some(content) = plaintext_content(room, event_type).await {
                values.push((StateSlot::new(*event_type, ""), content));
            }
        }
        values.retain(|(slot, content)| {
            !is_never_encrypted(&slot.event_type)
                && (!slot.state_key.starts_with('@') || slot.state_key == own)
                && content.as_object().is_some_and(|fields| !fields.is_empty())
        });
        Ok(values)
    }
}

/// The content of `room`'s state event of `event_type` (empty state key), when it has one that
/// is not redacted.
async fn plaintext_content(room: &Room, event_type: &str) -> Option<Value> {
    state_content(room, StateEventType::from(event_type))
        .await
        .filter(|content| content.as_object().is_some_and(|fields| !fields.is_empty()))
}
