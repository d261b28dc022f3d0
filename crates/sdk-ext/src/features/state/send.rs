//! Sending encrypted state: enable, migrate, set a slot, share and rotate its session.
//!
//! Before each send the slot's session reaches every device of the room that lacks it, and is
//! rotated first when a device that held it left.

use std::collections::BTreeSet;

use crypto_ext::{
    InboundStateSession, OutboundStateSession, StateSlot,
    critical::{is_critical, is_plaintext_only},
    identifiers, may_send_state,
};
use matrix_sdk::{
    Room, deserialized_responses::RawAnySyncOrStrippedState, encryption::identities::Device,
};
use ruma::{
    OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId,
    api::client::room::create_room::v3::Request as CreateRoomRequest,
    events::{AnyStateEventContent, StateEventType},
    serde::Raw,
};
use serde_json::{Value, json};
use state_store_ext::{SessionEventRef, StateChanges};
use tracing::{debug, info, instrument, warn};

use super::EncryptedState;
use crate::{Error, Result, SentState, context::room_encryption_content};

impl EncryptedState {
    /// Sends `m.room.encryption` with the MSC4362 flag, keeping the room's current algorithm
    /// settings.
    pub(crate) async fn enable(&self, room: &Room) -> Result<()> {
        let current = room_encryption_content(room).await;
        if current.is_some() {
            warn!(
                room_id = %room.room_id(),
                "switching an end-to-end encrypted room to encrypted state: clients on \
                 matrix-sdk-crypto (Element Web, Element X) refuse any change of a room's \
                 encryption settings and keep sending this room's state in clear; create rooms \
                 with StateExtension::create_room instead"
            );
        }
        let mut content = current.unwrap_or_else(|| json!({ "algorithm": identifiers::MEGOLM_V1 }));
        content[identifiers::ENCRYPT_STATE_EVENTS_UNSTABLE] = Value::Bool(true);
        room.send_state_event_raw("m.room.encryption", "", content).await?;
        self.ctx.mark_state_encryption_enabled(room);
        info!(room_id = %room.room_id(), "state encryption enabled");
        Ok(())
    }

    /// Creates a room whose state is encrypted from its creation (see
    /// [`crate::StateExtension::create_room`]).
    pub(crate) async fn create_room(&self, mut request: CreateRoomRequest) -> Result<Room> {
        // The caller's own encryption settings (rotation periods) are kept, with the flag.
        let mut content = json!({ "algorithm": identifiers::MEGOLM_V1 });
        request.initial_state.retain(|event| {
            if event.get_field::<String>("type").ok().flatten().as_deref()
                != Some("m.room.encryption")
            {
                return true;
            }
            if let Ok(Some(given)) = event.get_field::<Value>("content")
                && given.is_object()
            {
                content = given;
            }
            false
        });
        content[identifiers::ENCRYPT_STATE_EVENTS_UNSTABLE] = Value::Bool(true);
        let encryption =
            json!({ "type": "m.room.encryption", "state_key": "", "content": content });
        request.initial_state.push(Raw::new(&encryption)?.cast_unchecked());
        // The homeserver would store these in clear: they are sent encrypted once the room
        // exists.
        let name = request.name.take();
        let topic = request.topic.take();
        let room = self.ctx.client.create_room(request).await?;
        self.ctx.mark_state_encryption_enabled(&room);
        info!(room_id = %room.room_id(), "room created with encrypted state");
        if let Some(name) = name {
            self.set(&room, "m.room.name", "", json!({ "name": name })).await?;
        }
        if let Some(topic) = topic {
            self.set(&room, "m.room.topic", "", json!({ "topic": topic })).await?;
        }
        Ok(room)
    }

    /// Redacts the plaintext name, topic and avatar and sends each value encrypted (enabling
    /// state encryption first if needed). Returns the slots it moved.
    pub(crate) async fn migrate(&self, room: &Room) -> Result<Vec<StateSlot>> {
        if !self.is_enabled(room).await {
            self.enable(room).await?;
        }
        let mut moved = Vec::new();
        for &event_type in identifiers::AESTHETIC_SLOTS {
            let Some(RawAnySyncOrStrippedState::Sync(raw)) =
                room.get_state_event(StateEventType::from(event_type), "").await?
            else {
                continue;
            };
            let content: Value = raw.get_field("content").ok().flatten().unwrap_or(Value::Null);
            let event_id: Option<OwnedEventId> = raw.get_field("event_id").ok().flatten();
            let (Some(event_id), Some(fields)) = (event_id, content.as_object()) else { continue };
            if fields.is_empty() {
                continue;
            }
            // Redact the plaintext event first: the homeserver then serves it empty, in the
            // current state and in the history (a cleared copy would still carry the old value
            // in its `prev_content`), and the encrypted copy becomes the newer one of the slot.
            room.redact(&event_id, Some("moved to encrypted state"), None).await?;
            self.set(room, event_type, "", content).await?;
            moved.push(StateSlot::new(event_type, ""));
        }
        Ok(moved)
    }

    /// Sets any non-critical state, encrypted, after sharing the slot's key with the room.
    #[instrument(skip(self, room, content), fields(room_id = %room.room_id()))]
    pub(crate) async fn set(
        &self,
        room: &Room,
        event_type: &str,
        state_key: &str,
        content: Value,
    ) -> Result<SentState> {
        if is_critical(event_type) {
            return Err(Error::CriticalType(event_type.to_owned()));
        }
        if is_plaintext_only(event_type) {
            return Err(Error::PlaintextOnly(event_type.to_owned()));
        }
        if !self.is_enabled(room).await {
            return Err(Error::NotEnabled(room.room_id().to_owned()));
        }
        // Judged as every reader's pipeline will judge it: state they would reject is not sent,
        // nor is its key shared.
        let slot = StateSlot::new(event_type, state_key);
        let levels = self.ctx.room_power_levels(room).await?;
        may_send_state(&levels, &self.ctx.own_device.user_id, &slot).map_err(Error::NotAllowed)?;
        let content: Raw<AnyStateEventContent> = Raw::new(&content)?.cast_unchecked();
        self.send(room, slot, content).await
    }

    async fn send(
        &self,
        room: &Room,
        slot: StateSlot,
        content: Raw<AnyStateEventContent>,
    ) -> Result<SentState> {
        let ctx = &self.ctx;
        let room_id: OwnedRoomId = room.room_id().to_owned();
        let lock = self.room_lock(&room_id);
        let _guard = lock.lock().await;

        let mut session = match ctx.store.outbound_session(&room_id, &slot).await? {
            Some(pickle) => OutboundStateSession::from_pickle(pickle),
            None => OutboundStateSession::new(&room_id, slot.clone())?,
        };
        let recipients = ctx.recipient_devices(room).await?;
        self.share(&mut session, &recipients).await?;
        ctx.sign_creator_claim(&mut session).await?;

        let encrypted = session.encrypt(&ctx.own_device, &room_id, &slot, content)?;
        // Persist the ratchet before sending: an index must never be used twice, even if the
        // process dies between here and the server's answer.
        let own_copy = InboundStateSession::from_outbound(&session, &ctx.own_device);
        ctx.store
            .save_changes(StateChanges {
                outbound_sessions: vec![session.pickle()],
                inbound_sessions: vec![own_copy.pickle()],
                ..Default::default()
            })
            .await?;

        let response = room
            .send_state_event_raw(
                identifiers::ROOM_ENCRYPTED,
                encrypted.packed_state_key.as_str(),
                encrypted.content.cast_unchecked::<AnyStateEventContent>(),
            )
            .await?;
        ctx.store
            .save_changes(StateChanges {
                session_events: vec![SessionEventRef {
                    session_id: encrypted.session_id.clone(),
                    message_index: encrypted.message_index,
                    room_id: room_id.clone(),
                    event_id: response.event_id.clone(),
                    slot,
                }],
                ..Default::default()
            })
            .await?;
        Ok(SentState {
            event_id: response.event_id,
            session_id: encrypted.session_id,
            message_index: encrypted.message_index,
        })
    }

    /// Brings `session` up to date with the room's membership: rotates it when a device that
    /// holds its key is no longer a recipient (a member left, was kicked or banned, or removed a
    /// device), then sends the key to every recipient that lacks it. Returns whether anything
    /// changed.
    async fn share(
        &self,
        session: &mut OutboundStateSession,
        recipients: &[Device],
    ) -> Result<bool> {
        let current: BTreeSet<(OwnedUserId, OwnedDeviceId)> =
            recipients.iter().map(|d| (d.user_id().to_owned(), d.device_id().to_owned())).collect();
        let departed =
            session.shared_with().any(|(u, d)| !current.contains(&(u.to_owned(), d.to_owned())));
        let mut changed = false;
        if departed {
            debug!(slot = %session.slot(), "a recipient left: rotating the state session");
            session.rotate();
            changed = true;
        }
        let missing: Vec<Device> = recipients
            .iter()
            .filter(|d| !session.is_shared_with(d.user_id(), d.device_id()))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(changed);
        }
        let failures = self
            .ctx
            .send_to_devices(&missing, identifiers::ROOM_KEY, session.room_key_content())
            .await?;
        for device in &missing {
            let failed =
                failures.iter().any(|(u, d)| u == device.user_id() && d == device.device_id());
            if failed {
                warn!(user_id = %device.user_id(), device_id = %device.device_id(), "state key not delivered");
            } else {
                session.mark_shared_with(device.user_id(), device.device_id());
            }
        }
        Ok(true)
    }
}
