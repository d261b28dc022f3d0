//! `RoomStateExt` on `matrix_sdk::Room`: thin calls into the encrypted-state and invite features.

use std::future::Future;

use crypto_ext::StateSlot;
use matrix_sdk::Room;
use serde_json::{Value, json};
use state_store_ext::StateRecord;

use super::StateExtension;
use crate::{
    EncryptedAvatar, Result, RoomPreview, RoomStateView, RoomUpgrade, SentState,
    context::encrypts_state,
};

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
    /// Prefer [`StateExtension::create_room`] for new rooms: clients on matrix-sdk-crypto
    /// (Element Web, Element X) refuse a change of an end-to-end encrypted room's encryption
    /// settings, so they do not take this flag and keep sending the room's state in clear (a
    /// warning is logged when the room was already encrypted). Our clients and stock matrix-sdk
    /// with its experimental encrypted state honour it.
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

    /// Moves the room to encrypted state the way every client honours, Element Web and
    /// Element X included: a room upgrade. A new room is created with the MSC4362 flag in its
    /// first `m.room.encryption` (same room version, the old room as predecessor, its power
    /// levels, join rules, history visibility and guest access); the current value of each
    /// non-critical slot (the decrypted view, or the plaintext name, topic, avatar and alias) is
    /// set there encrypted, except slots keyed by another user; the old room gets an
    /// `m.room.tombstone` pointing to the new one; and the old room's joined members are
    /// invited with history (their clients follow the tombstone).
    ///
    /// # Errors
    ///
    /// Checked before anything is created: [`Error::NoCrossSigning`](crate::Error::NoCrossSigning),
    /// [`Error::NotAllowed`](crate::Error::NotAllowed) when we may not tombstone the room.
    /// Then homeserver errors. A member whose invite fails is listed in
    /// [`RoomUpgrade::not_invited`], not an error.
    fn upgrade_to_encrypted_state(&self) -> impl Future<Output = Result<RoomUpgrade>> + Send;

    /// Sets any non-critical state, encrypted: `event_type` and `state_key` travel inside the
    /// ciphertext, the server sees `m.room.encrypted` with the packed key.
    ///
    /// The slot's key goes to every current member's devices that lack it (rotating the slot's
    /// session first when a device that held it is no longer in the room). The value appears in
    /// the readers once the homeserver echoes it back in a sync.
    ///
    /// # Errors
    ///
    /// [`Error::CriticalType`](crate::Error::CriticalType) for critical state (never sent, not even in clear),
    /// [`Error::NotEnabled`](crate::Error::NotEnabled) when the room has not switched on encrypted state,
    /// [`Error::NotAllowed`](crate::Error::NotAllowed) when our power in the room does not allow
    /// this state (nothing is sent then), a packed key over 255 bytes, homeserver errors.
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
    /// [`Error::NotInstalled`](crate::Error::NotInstalled), store errors.
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
        StateExtension::of_room(self)?.inner.state.enable(self).await
    }

    async fn migrate_to_encrypted_state(&self) -> Result<Vec<StateSlot>> {
        StateExtension::of_room(self)?.inner.state.migrate(self).await
    }

    async fn upgrade_to_encrypted_state(&self) -> Result<RoomUpgrade> {
        StateExtension::of_room(self)?.inner.upgrade(self).await
    }

    async fn set_encrypted_state(
        &self,
        event_type: &str,
        state_key: &str,
        content: Value,
    ) -> Result<SentState> {
        StateExtension::of_room(self)?.inner.state.set(self, event_type, state_key, content).await
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
        let slot = StateSlot::new(event_type, state_key);
        StateExtension::of_room(self)?.inner.state.current(self, &slot).await
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
        EncryptedAvatar::from_content(&record.content.deserialize_as_unchecked()?)
    }

    async fn invite_preview(&self) -> Result<RoomPreview> {
        StateExtension::of_room(self)?.inner.invites.preview(self).await
    }

    async fn encrypted_state_view(&self) -> Result<RoomStateView> {
        StateExtension::of_room(self)?.inner.state.view(self).await
    }

    async fn is_state_encrypted(&self) -> bool {
        match StateExtension::of_room(self) {
            Ok(ext) => ext.inner.state.is_enabled(self).await,
            Err(_) => encrypts_state(self).await,
        }
    }
}

fn string_field(record: Option<StateRecord>, field: &str) -> Option<String> {
    let content: Value = record?.content.deserialize_as_unchecked().ok()?;
    content.get(field)?.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}
