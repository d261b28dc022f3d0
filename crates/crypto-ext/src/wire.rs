//! The to-device messages of our protocol extensions: which event types they are, their contents,
//! and how much one message may carry.
//!
//! [`ToDeviceKind::classify`] recognises an event type once; [`ToDeviceContent::parse`] reads a
//! content of that kind and refuses one over its size limit, so a receiver never works on more
//! than a bounded message. The formats are specified in `docs/protocol.md`.

use matrix_sdk_crypto::olm::ExportedRoomKey;
use ruma::{
    OwnedRoomId, RoomId,
    events::{AnySyncStateEvent, AnyToDeviceEventContent},
    serde::Raw,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::identifiers;

/// The kinds of to-device message this crate defines or takes part in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ToDeviceKind {
    /// [`identifiers::INVITE_STATE_KEYS`]: [`InviteStateKeys`].
    InviteStateKeys,
    /// [`identifiers::STATE_KEY_REQUEST`]: [`StateKeyRequest`].
    StateKeyRequest,
    /// [`identifiers::STATE_KEY_SHARE`]: [`StateKeyShare`].
    StateKeyShare,
    /// [`identifiers::RESTRICTED_PREVIEW`]: [`RestrictedPreview`].
    RestrictedPreview,
    /// A room-key bundle announcement (MSC4268, either spelling): [`RoomKeyBundleAnnouncement`].
    RoomKeyBundle,
}

impl ToDeviceKind {
    /// The kind of a to-device event type; `None` for a type that is not ours.
    pub fn classify(event_type: &str) -> Option<Self> {
        Some(match event_type {
            identifiers::INVITE_STATE_KEYS => Self::InviteStateKeys,
            identifiers::STATE_KEY_REQUEST => Self::StateKeyRequest,
            identifiers::STATE_KEY_SHARE => Self::StateKeyShare,
            identifiers::RESTRICTED_PREVIEW => Self::RestrictedPreview,
            t if identifiers::is_room_key_bundle(t) => Self::RoomKeyBundle,
            _ => return None,
        })
    }

    /// The event type we send for this kind.
    pub fn event_type(self) -> &'static str {
        match self {
            Self::InviteStateKeys => identifiers::INVITE_STATE_KEYS,
            Self::StateKeyRequest => identifiers::STATE_KEY_REQUEST,
            Self::StateKeyShare => identifiers::STATE_KEY_SHARE,
            Self::RestrictedPreview => identifiers::RESTRICTED_PREVIEW,
            Self::RoomKeyBundle => identifiers::ROOM_KEY_BUNDLE_UNSTABLE,
        }
    }
}

impl std::fmt::Display for ToDeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.event_type())
    }
}

/// Why a to-device content was not read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// The content does not have the shape of its kind.
    #[error("malformed {kind} content: {detail}")]
    Malformed {
        /// The kind.
        kind: ToDeviceKind,
        /// What the parser said.
        detail: String,
    },
    /// The content carries more entries than its kind allows.
    #[error("{kind} content with {count} {field}, more than the {max} allowed")]
    TooLarge {
        /// The kind.
        kind: ToDeviceKind,
        /// The list that is too long.
        field: &'static str,
        /// Its length.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// The keys of a room's aesthetic state slots, sent to an invitee's devices with the invite.
#[derive(Serialize, Deserialize)]
pub struct InviteStateKeys {
    /// The room the keys belong to.
    pub room_id: OwnedRoomId,
    /// The keys, each at its slot's current index; at most
    /// [`identifiers::INVITE_STATE_KEYS_MAX`].
    pub keys: Vec<ExportedRoomKey>,
}

/// A request for the state keys a member lacks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateKeyRequest {
    /// The room.
    pub room_id: OwnedRoomId,
    /// An id the answer repeats.
    pub request_id: String,
    /// The sessions asked for; at most [`identifiers::STATE_KEY_REQUEST_MAX`].
    pub session_ids: Vec<String>,
}

/// The answer to a [`StateKeyRequest`].
#[derive(Serialize, Deserialize)]
pub struct StateKeyShare {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The request's id.
    pub request_id: String,
    /// The keys, each at the index of its slot's current event; at most
    /// [`identifiers::STATE_KEY_REQUEST_MAX`].
    pub keys: Vec<ExportedRoomKey>,
}

/// A restricted room's preview, pushed to a member of one of its allowed rooms.
#[derive(Serialize, Deserialize)]
pub struct RestrictedPreview {
    /// The restricted room.
    pub room_id: OwnedRoomId,
    /// The allowed room through which it is sent.
    pub via: OwnedRoomId,
    /// The room's aesthetic encrypted state events, as the sender's homeserver served them; at
    /// most [`identifiers::RESTRICTED_PREVIEW_MAX`].
    pub events: Vec<Raw<AnySyncStateEvent>>,
    /// Their keys, each at its event's index; at most [`identifiers::RESTRICTED_PREVIEW_MAX`].
    pub keys: Vec<ExportedRoomKey>,
}

/// A room-key bundle announcement (MSC4268).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomKeyBundleAnnouncement {
    /// The room the bundle is for.
    pub room_id: OwnedRoomId,
    /// The encrypted bundle file (an `EncryptedFile`), checked when it is downloaded.
    pub file: Value,
}

/// Exported keys are secret: debug output names their sessions only.
struct SessionIds<'a>(&'a [ExportedRoomKey]);

impl std::fmt::Debug for SessionIds<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|key| &key.session_id)).finish()
    }
}

impl std::fmt::Debug for InviteStateKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InviteStateKeys")
            .field("room_id", &self.room_id)
            .field("keys", &SessionIds(&self.keys))
            .finish()
    }
}

impl std::fmt::Debug for StateKeyShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateKeyShare")
            .field("room_id", &self.room_id)
            .field("request_id", &self.request_id)
            .field("keys", &SessionIds(&self.keys))
            .finish()
    }
}

impl std::fmt::Debug for RestrictedPreview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestrictedPreview")
            .field("room_id", &self.room_id)
            .field("via", &self.via)
            .field("events", &self.events.len())
            .field("keys", &SessionIds(&self.keys))
            .finish()
    }
}

/// A parsed content of one of the [`ToDeviceKind`]s.
#[derive(Debug)]
pub enum ToDeviceContent {
    /// See [`InviteStateKeys`].
    InviteStateKeys(InviteStateKeys),
    /// See [`StateKeyRequest`].
    StateKeyRequest(StateKeyRequest),
    /// See [`StateKeyShare`].
    StateKeyShare(StateKeyShare),
    /// See [`RestrictedPreview`].
    RestrictedPreview(RestrictedPreview),
    /// See [`RoomKeyBundleAnnouncement`].
    RoomKeyBundle(RoomKeyBundleAnnouncement),
}

impl ToDeviceContent {
    /// Reads a content of `kind`.
    ///
    /// # Errors
    ///
    /// [`WireError::Malformed`] for a content of the wrong shape, [`WireError::TooLarge`] for one
    /// whose lists exceed the kind's limit.
    pub fn parse(kind: ToDeviceKind, content: &Value) -> Result<Self, WireError> {
        fn read<T: serde::de::DeserializeOwned>(
            kind: ToDeviceKind,
            content: &Value,
        ) -> Result<T, WireError> {
            crate::key_encoding::check_claimed_keys(content)
                .map_err(|detail| WireError::Malformed { kind, detail })?;
            T::deserialize(content)
                .map_err(|error| WireError::Malformed { kind, detail: error.to_string() })
        }
        let limit = |field: &'static str, count: usize, max: usize| {
            if count > max { Err(WireError::TooLarge { kind, field, count, max }) } else { Ok(()) }
        };
        Ok(match kind {
            ToDeviceKind::InviteStateKeys => {
                let content: InviteStateKeys = read(kind, content)?;
                limit("keys", content.keys.len(), identifiers::INVITE_STATE_KEYS_MAX)?;
                Self::InviteStateKeys(content)
            }
            ToDeviceKind::StateKeyRequest => {
                let content: StateKeyRequest = read(kind, content)?;
                limit(
                    "session_ids",
                    content.session_ids.len(),
                    identifiers::STATE_KEY_REQUEST_MAX,
                )?;
                Self::StateKeyRequest(content)
            }
            ToDeviceKind::StateKeyShare => {
                let content: StateKeyShare = read(kind, content)?;
                limit("keys", content.keys.len(), identifiers::STATE_KEY_REQUEST_MAX)?;
                Self::StateKeyShare(content)
            }
            ToDeviceKind::RestrictedPreview => {
                let content: RestrictedPreview = read(kind, content)?;
                let max = identifiers::RESTRICTED_PREVIEW_MAX;
                limit("events", content.events.len(), max)?;
                limit("keys", content.keys.len(), max)?;
                Self::RestrictedPreview(content)
            }
            ToDeviceKind::RoomKeyBundle => Self::RoomKeyBundle(read(kind, content)?),
        })
    }

    /// The kind of this content.
    pub fn kind(&self) -> ToDeviceKind {
        match self {
            Self::InviteStateKeys(_) => ToDeviceKind::InviteStateKeys,
            Self::StateKeyRequest(_) => ToDeviceKind::StateKeyRequest,
            Self::StateKeyShare(_) => ToDeviceKind::StateKeyShare,
            Self::RestrictedPreview(_) => ToDeviceKind::RestrictedPreview,
            Self::RoomKeyBundle(_) => ToDeviceKind::RoomKeyBundle,
        }
    }

    /// The room the content is about.
    pub fn room_id(&self) -> &RoomId {
        match self {
            Self::InviteStateKeys(c) => &c.room_id,
            Self::StateKeyRequest(c) => &c.room_id,
            Self::StateKeyShare(c) => &c.room_id,
            Self::RestrictedPreview(c) => &c.room_id,
            Self::RoomKeyBundle(c) => &c.room_id,
        }
    }
}

/// A content we send, ready for `encrypt_and_send_raw_to_device`.
pub trait OutgoingContent: Serialize + Sized {
    /// Its kind.
    const KIND: ToDeviceKind;

    /// The raw content.
    ///
    /// # Errors
    ///
    /// A value that does not serialise (never for the types of this module).
    fn to_raw(&self) -> Result<Raw<AnyToDeviceEventContent>, serde_json::Error> {
        Ok(Raw::new(self)?.cast_unchecked())
    }
}

impl OutgoingContent for InviteStateKeys {
    const KIND: ToDeviceKind = ToDeviceKind::InviteStateKeys;
}
impl OutgoingContent for StateKeyRequest {
    const KIND: ToDeviceKind = ToDeviceKind::StateKeyRequest;
}
impl OutgoingContent for StateKeyShare {
    const KIND: ToDeviceKind = ToDeviceKind::StateKeyShare;
}
impl OutgoingContent for RestrictedPreview {
    const KIND: ToDeviceKind = ToDeviceKind::RestrictedPreview;
}
impl OutgoingContent for RoomKeyBundleAnnouncement {
    const KIND: ToDeviceKind = ToDeviceKind::RoomKeyBundle;
}

#[cfg(test)]
mod tests {
    use assert_matches::assert_matches;
    use serde_json::json;

    use super::*;

    #[test]
    fn every_kind_is_classified_by_its_event_type() {
        for kind in [
            ToDeviceKind::InviteStateKeys,
            ToDeviceKind::StateKeyRequest,
            ToDeviceKind::StateKeyShare,
            ToDeviceKind::RestrictedPreview,
            ToDeviceKind::RoomKeyBundle,
        ] {
            assert_eq!(ToDeviceKind::classify(kind.event_type()), Some(kind));
        }
        assert_eq!(ToDeviceKind::classify("m.room_key_bundle"), Some(ToDeviceKind::RoomKeyBundle));
        assert_eq!(ToDeviceKind::classify("m.room_key"), None);
    }

    #[test]
    fn a_request_over_the_limit_is_refused() {
        let ids: Vec<String> =
            (0..=identifiers::STATE_KEY_REQUEST_MAX).map(|n| format!("s{n}")).collect();
        let content = json!({ "room_id": "!r:x", "request_id": "1", "session_ids": ids });
        assert_matches!(
            ToDeviceContent::parse(ToDeviceKind::StateKeyRequest, &content),
            Err(WireError::TooLarge { field: "session_ids", count: 65, max: 64, .. })
        );
        let content = json!({ "room_id": "!r:x", "request_id": "1", "session_ids": ["a"] });
        let parsed = ToDeviceContent::parse(ToDeviceKind::StateKeyRequest, &content).unwrap();
        assert_eq!(parsed.room_id(), "!r:x");
        assert_eq!(parsed.kind(), ToDeviceKind::StateKeyRequest);
    }

    #[test]
    fn a_preview_with_too_many_events_is_refused() {
        let events: Vec<Value> =
            (0..=identifiers::RESTRICTED_PREVIEW_MAX).map(|_| json!({})).collect();
        let content = json!({ "room_id": "!r:x", "via": "!s:x", "events": events, "keys": [] });
        assert_matches!(
            ToDeviceContent::parse(ToDeviceKind::RestrictedPreview, &content),
            Err(WireError::TooLarge { field: "events", .. })
        );
    }

    #[test]
    fn a_malformed_content_is_refused() {
        assert_matches!(
            ToDeviceContent::parse(ToDeviceKind::InviteStateKeys, &json!({ "room_id": 3 })),
            Err(WireError::Malformed { kind: ToDeviceKind::InviteStateKeys, .. })
        );
    }

    #[test]
    fn an_outgoing_content_reads_back() {
        let request = StateKeyRequest {
            room_id: ruma::owned_room_id!("!r:x"),
            request_id: "7".to_owned(),
            session_ids: vec!["s".to_owned()],
        };
        let raw = request.to_raw().unwrap();
        let value: Value = raw.deserialize_as_unchecked().unwrap();
        let parsed = ToDeviceContent::parse(StateKeyRequest::KIND, &value).unwrap();
        assert_matches!(parsed, ToDeviceContent::StateKeyRequest(r) if r.request_id == "7");
    }
}
