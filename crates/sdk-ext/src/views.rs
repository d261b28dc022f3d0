//! What the readers return: decrypted state, previews and sent state, as values without I/O.

use matrix_sdk::ruma::events::room::MediaSource;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::Value;
use state_store_ext::{PendingEvent, StateRecord};

use crate::Result;

/// What [`RoomStateExt::set_encrypted_state`](crate::RoomStateExt::set_encrypted_state) sent.
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

impl EncryptedAvatar {
    /// The avatar an `m.room.avatar` content points at: an encrypted file, or a plain URL;
    /// `None` when it points at neither.
    ///
    /// # Errors
    ///
    /// A `file` that is not an `EncryptedFile`.
    pub(crate) fn from_content(content: &Value) -> Result<Option<Self>> {
        let source = if let Some(file) = content.get("file") {
            MediaSource::Encrypted(Box::new(serde_json::from_value(file.clone())?))
        } else if let Some(url) = content.get("url").and_then(Value::as_str) {
            MediaSource::Plain(url.into())
        } else {
            return Ok(None);
        };
        let mimetype = content.pointer("/info/mimetype").and_then(Value::as_str).map(str::to_owned);
        Ok(Some(Self { source, mimetype }))
    }
}

/// A room's state as our API sees it: decrypted, validated, with provenance.
#[derive(Clone, Debug)]
pub struct RoomStateView {
    /// The current value of every slot.
    pub state: Vec<StateRecord>,
    /// Rejected encrypted state events with their reasons.
    pub rejected: Vec<crypto_ext::RejectedState>,
    /// Encrypted state events waiting for a key.
    pub pending: Vec<PendingEvent>,
    /// The slots whose value is contested: an event of the slot met after the value shown was
    /// not accepted (rejected, or waiting for its key), so the slot shows the last accepted
    /// value while others (clients that apply every event) may show another.
    pub contested: Vec<crypto_ext::StateSlot>,
}

/// What a room we have not joined shows: its name, topic and avatar, decrypted from its
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
    /// Who shared the keys of the values shown (the inviter, or the restricted room's member
    /// who sent the preview).
    pub shared_by: Option<OwnedUserId>,
    /// For a restricted room's preview: the allowed room, one we are in, through which it came.
    pub via: Option<OwnedRoomId>,
    /// Whether the creator of every value shown is proven (the creator's own device handed us
    /// the key, or the event carries its signed creator claim), not only vouched for by
    /// `shared_by`. With [`UnprovenCreators::Reject`](crate::UnprovenCreators::Reject), values
    /// whose creator is not proven are left out.
    pub creators_proven: bool,
}
