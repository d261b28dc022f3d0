//! The extension trait on `matrix_sdk::Room`.

use std::future::Future;

use crypto_ext::{
    OutboundStateSession, StateSlot, critical::is_critical, identifiers,
    state_sessions::InboundStateSession,
};
use matrix_sdk::{Room, ruma::events::room::MediaSource};
use ruma::{
    OwnedEventId, OwnedRoomId,
    events::{AnyStateEventContent, StateEventType},
    serde::Raw,
};
use serde_json::{Value, json};
use state_store_ext::{SessionEventRef, StateChanges, StateRecord};
use tracing::{info, instrument};

use crate::{Error, Result, RoomPreview, StateExtension, extension::Inner, keys};

/// What [`RoomStateExt::set_encrypted_state`] sent.
#[derive(Clone, Debug)]
pub struct SentState {
    /// The event id the server gave the encrypted state event.
    pub event_id: OwnedEventId,
    /// The slot's Megolm session.
    pub session_id: String,
    /// The update's index in that session.
    pub message_index: u32,
}

/// The encrypted room avatar: the image is stored encrypted in the media repository.
#[derive(Clone, Debug)]
pub struct EncryptedAvatar {
    /// Where to fetch (and how to decrypt) the image, for `client.media().get_media_content`.
    pub source: MediaSource,
    /// The image's MIME type, when given.
    pub mimetype: Option<String>,
}

/// A room's state as our API sees it: decrypted, validated, with provenance.
#[derive(Clone, Debug)]
pub struct RoomStateView {
    /// The current value of every slot.
    pub state: Vec<StateRecord>,
    /// Rejected encrypted state events with their reasons.
    pub rejected: Vec<crypto_ext::RejectedState>,
    /// Encrypted state events waiting for a key.
    pub pending: Vec<state_store_ext::PendingEvent>,
}

/// Encrypted state on a `matrix_sdk::Room` (MSC3414 / MSC4362).
///
/// Needs the [`StateExtension`] installed on the room's client.
///
/// ```no_run
/// use matrix_sdk::Room;
/// use sdk_ext::RoomStateExt;
///
/// # async fn example(room: Room) -> sdk_ext::Result<()> {
/// room.enable_state_encryption().await?;
/// room.set_encrypted_name("Launch planning").await?;
/// // ... after the next sync, on any member's client:
/// if let Some(name) = room.encrypted_name().await? {
///     println!("{name}");
/// }
/// # Ok(())
/// # }
/// ```
pub trait RoomStateExt {
    /// Switches the room to encrypted state: sends `m.room.encryption` with the MSC4362 flag
    /// (keeping the room's current algorithm settings).
    ///
    /// # Errors
    ///
    /// The homeserver's refusal (e.g. not enough power).
    fn enable_state_encryption(&self) -> impl Future<Output = Result<()>> + Send;

    /// Moves the current plaintext name, topic and avatar into encrypted state: each plaintext
    /// event is first redacted (so the homeserver stops serving its content, now and in the
    /// history), then the value is sent encrypted. Enables state encryption first if needed.
    /// Needs the power to redact others' events when someone else set them. Returns the slots
    /// it moved.
    ///
    /// # Errors
    ///
    /// As [`RoomStateExt::set_encrypted_state`].
    fn migrate_to_encrypted_state(&self) -> impl Future<Output = Result<Vec<StateSlot>>> + Send;

    /// Sets any non-critical state, encrypted: `event_type` and `state_key` travel inside the
    /// ciphertext, the server sees `m.room.encrypted` with the packed key.
    ///
    /// The slot's key goes to every current member's devices that lack it (rotating the slot's
    /// session first when a device that held it is no longer in the room). The value appears in
    /// the readers once the homeserver echoes it back in a sync.
    ///
    /// # Errors
    ///
    /// [`Error::CriticalType`] for critical state (never sent, not even in clear),
    /// [`Error::NotEnabled`] when the room has not switched on encrypted state, a packed key
    /// over 255 bytes, homeserver errors.
    fn set_encrypted_state(
        &self,
        event_type: &str,
        state_key: &str,
        content: Value,
    ) -> impl Future<Output = Result<SentState>> + Send;

    /// Sets the room name, encrypted.
    ///
    /// # Errors
    ///
    /// As [`RoomStateExt::set_encrypted_state`].
    fn set_encrypted_name(&self, name: &str) -> impl Future<Output = Result<SentState>> + Send;

    /// Sets the room topic, encrypted.
    ///
    /// # Errors
    ///
    /// As [`RoomStateExt::set_encrypted_state`].
    fn set_encrypted_topic(&self, topic: &str) -> impl Future<Output = Result<SentState>> + Send;

    /// Uploads `image` encrypted (matrix-sdk's attachment encryption) and sets it as the room
    /// avatar, encrypted, referencing the file by an `EncryptedFile`.
    ///
    /// # Errors
    ///
    /// Upload errors, and as [`RoomStateExt::set_encrypted_state`].
    fn set_encrypted_avatar(
        &self,
        mimetype: &str,
        image: &[u8],
    ) -> impl Future<Output = Result<SentState>> + Send;

    /// The current decrypted value of a slot, with its provenance.
    ///
    /// # Errors
    ///
    /// [`Error::NotInstalled`], store errors.
    fn encrypted_state(
        &self,
        event_type: &str,
        state_key: &str,
    ) -> impl Future<Output = Result<Option<StateRecord>>> + Send;

    /// The decrypted room name, if any.
    ///
    /// # Errors
    ///
    /// As [`RoomStateExt::encrypted_state`].
    fn encrypted_name(&self) -> impl Future<Output = Result<Option<String>>> + Send;

    /// The decrypted room topic, if any.
    ///
    /// # Errors
    ///
    /// As [`RoomStateExt::encrypted_state`].
    fn encrypted_topic(&self) -> impl Future<Output = Result<Option<String>>> + Send;

    /// The decrypted room avatar, if any.
    ///
    /// # Errors
    ///
    /// As [`RoomStateExt::encrypted_state`].
    fn encrypted_avatar(&self) -> impl Future<Output = Result<Option<EncryptedAvatar>>> + Send;

    /// For a room we are invited to: the name, topic and avatar decrypted from the invite's
    /// stripped state with the keys the inviter sent along (see
    /// [`crate::RoomHistoryExt::invite_with_history`]). Empty when no key came.
    ///
    /// # Errors
    ///
    /// As [`RoomStateExt::encrypted_state`].
    fn invite_preview(&self) -> impl Future<Output = Result<RoomPreview>> + Send;

    /// Everything at once: current values, rejections with reasons, events waiting for keys.
    ///
    /// # Errors
    ///
    /// As [`RoomStateExt::encrypted_state`].
    fn encrypted_state_view(&self) -> impl Future<Output = Result<RoomStateView>> + Send;

    /// Whether the room has switched on encrypted state.
    fn is_state_encrypted(&self) -> impl Future<Output = bool> + Send;
}

impl RoomStateExt for Room {
    async fn enable_state_encryption(&self) -> Result<()> {
        let ext = StateExtension::of_room(self)?;
        let mut content = room_encryption_content(self)
            .await
            .unwrap_or_else(|| json!({ "algorithm": identifiers::MEGOLM_V1 }));
        content[identifiers::ENCRYPT_STATE_EVENTS_UNSTABLE] = Value::Bool(true);
        self.send_state_event_raw("m.room.encryption", "", content).await?;
        ext.inner
            .enabled_rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.room_id().to_owned());
        info!(room_id = %self.room_id(), "state encryption enabled");
        Ok(())
    }

    async fn migrate_to_encrypted_state(&self) -> Result<Vec<StateSlot>> {
        if !self.is_state_encrypted().await {
            self.enable_state_encryption().await?;
        }
        let mut moved = Vec::new();
        for event_type in ["m.room.name", "m.room.topic", "m.room.avatar"] {
            let Some(matrix_sdk::deserialized_responses::RawAnySyncOrStrippedState::Sync(raw)) =
                self.get_state_event(StateEventType::from(event_type), "").await?
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
            self.redact(&event_id, Some("moved to encrypted state"), None).await?;
            self.set_encrypted_state(event_type, "", content).await?;
            moved.push(StateSlot::new(event_type, ""));
        }
        Ok(moved)
    }

    #[instrument(skip(self, content), fields(room_id = %self.room_id()))]
    async fn set_encrypted_state(
        &self,
        event_type: &str,
        state_key: &str,
        content: Value,
    ) -> Result<SentState> {
        if is_critical(event_type) {
            return Err(Error::CriticalType(event_type.to_owned()));
        }
        let ext = StateExtension::of_room(self)?;
        let inner = &ext.inner;
        if !state_encryption_enabled(inner, self).await {
            return Err(Error::NotEnabled(self.room_id().to_owned()));
        }
        let content: Raw<AnyStateEventContent> = Raw::new(&content)?.cast_unchecked();
        send_encrypted_state(inner, self, StateSlot::new(event_type, state_key), content).await
    }

    async fn set_encrypted_name(&self, name: &str) -> Result<SentState> {
        self.set_encrypted_state("m.room.name", "", json!({ "name": name })).await
    }

    async fn set_encrypted_topic(&self, topic: &str) -> Result<SentState> {
        self.set_encrypted_state("m.room.topic", "", json!({ "topic": topic })).await
    }

    async fn set_encrypted_avatar(&self, mimetype: &str, image: &[u8]) -> Result<SentState> {
        let mut reader = image;
        let file = self.client().upload_encrypted_file(&mut reader).await?;
        let content = json!({
            "file": file,
            "info": { "mimetype": mimetype, "size": image.len() },
        });
        self.set_encrypted_state("m.room.avatar", "", content).await
    }

    async fn encrypted_state(
        &self,
        event_type: &str,
        state_key: &str,
    ) -> Result<Option<StateRecord>> {
        let ext = StateExtension::of_room(self)?;
        Ok(ext
            .inner
            .store
            .current_state(self.room_id(), &StateSlot::new(event_type, state_key))
            .await?)
    }

    async fn encrypted_name(&self) -> Result<Option<String>> {
        Ok(string_field(self.encrypted_state("m.room.name", "").await?, "name"))
    }

    async fn encrypted_topic(&self) -> Result<Option<String>> {
        Ok(string_field(self.encrypted_state("m.room.topic", "").await?, "topic"))
    }

    async fn encrypted_avatar(&self) -> Result<Option<EncryptedAvatar>> {
        let Some(record) = self.encrypted_state("m.room.avatar", "").await? else {
            return Ok(None);
        };
        avatar_from_content(&record.content.deserialize_as_unchecked()?)
    }

    async fn invite_preview(&self) -> Result<RoomPreview> {
        let ext = StateExtension::of_room(self)?;
        crate::invite::preview(&ext.inner, self).await
    }

    async fn encrypted_state_view(&self) -> Result<RoomStateView> {
        let ext = StateExtension::of_room(self)?;
        let store = &ext.inner.store;
        Ok(RoomStateView {
            state: store.room_state(self.room_id()).await?,
            rejected: store.rejected_events(self.room_id()).await?,
            pending: store.pending_in_room(self.room_id()).await?,
        })
    }

    async fn is_state_encrypted(&self) -> bool {
        match StateExtension::of_room(self) {
            Ok(ext) => state_encryption_enabled(&ext.inner, self).await,
            Err(_) => {
                room_encryption_content(self).await.is_some_and(|c| identifiers::encrypts_state(&c))
            }
        }
    }
}

/// The avatar an `m.room.avatar` content points at: an encrypted file, or a plain URL.
pub(crate) fn avatar_from_content(content: &Value) -> Result<Option<EncryptedAvatar>> {
    let source = if let Some(file) = content.get("file") {
        MediaSource::Encrypted(Box::new(serde_json::from_value(file.clone())?))
    } else if let Some(url) = content.get("url").and_then(Value::as_str) {
        MediaSource::Plain(url.into())
    } else {
        return Ok(None);
    };
    let mimetype = content.pointer("/info/mimetype").and_then(Value::as_str).map(str::to_owned);
    Ok(Some(EncryptedAvatar { source, mimetype }))
}

fn string_field(record: Option<StateRecord>, field: &str) -> Option<String> {
    let content: Value = record?.content.deserialize_as_unchecked().ok()?;
    content.get(field)?.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

async fn room_encryption_content(room: &Room) -> Option<Value> {
    let raw = room.get_state_event(StateEventType::RoomEncryption, "").await.ok()??;
    match raw {
        matrix_sdk::deserialized_responses::RawAnySyncOrStrippedState::Sync(raw) => {
            raw.get_field("content").ok()?
        }
        matrix_sdk::deserialized_responses::RawAnySyncOrStrippedState::Stripped(raw) => {
            raw.get_field("content").ok()?
        }
    }
}

/// Whether the room switched on encrypted state (from its `m.room.encryption`, or because we
/// just sent that ourselves).
pub(crate) async fn state_encryption_enabled(inner: &Inner, room: &Room) -> bool {
    let enabled_here =
        inner.enabled_rooms.lock().unwrap_or_else(|e| e.into_inner()).contains(room.room_id());
    enabled_here
        || room_encryption_content(room).await.is_some_and(|c| identifiers::encrypts_state(&c))
}

async fn send_encrypted_state(
    inner: &Inner,
    room: &Room,
    slot: StateSlot,
    content: Raw<AnyStateEventContent>,
) -> Result<SentState> {
    let room_id: OwnedRoomId = room.room_id().to_owned();
    let lock = inner.room_lock(&room_id);
    let _guard = lock.lock().await;

    let mut session = match inner.store.outbound_session(&room_id, &slot).await? {
        Some(pickle) => OutboundStateSession::from_pickle(pickle),
        None => OutboundStateSession::new(&room_id, slot.clone())?,
    };
    let recipients = keys::recipient_devices(inner, room).await?;
    keys::share(inner, &mut session, &recipients).await?;

    let encrypted = session.encrypt(&inner.own_device, &room_id, &slot, content)?;
    // Persist the ratchet before sending: an index must never be used twice, even if the
    // process dies between here and the server's answer.
    let own_copy = InboundStateSession::from_outbound(&session, &inner.own_device);
    inner
        .store
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
    inner
        .store
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
