//! The outer `m.room.encrypted` state event as it arrives from the server.

use ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedUserId, serde::Raw};
use serde::Deserialize;
use vodozemac::megolm::MegolmMessage;

use super::CreatorClaim;
use crate::{error::DecryptStateError, identifiers::MEGOLM_V1};

/// The parts of an encrypted state event that decryption and validation need.
///
/// The packed state key is kept as received: a bad one is a validation rejection with its reason,
/// not a parse failure that would lose the event.
#[derive(Clone, Debug)]
pub struct EncryptedStateEvent {
    /// The event id.
    pub event_id: OwnedEventId,
    /// The sender according to the server.
    pub sender: OwnedUserId,
    /// The server timestamp, used to resolve the slot.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// The outer `state_key`, expected to be `{type}:{state_key}` of the plaintext.
    pub packed_state_key: String,
    /// The Megolm session the event is encrypted with.
    pub session_id: String,
    /// The ratchet index of the event in that session.
    pub message_index: u32,
    /// The creating device's signed claim the content carries, if any (unchecked: see
    /// [`CreatorClaim::verify`]).
    pub creator_claim: Option<CreatorClaim>,
    /// The Megolm message.
    pub(crate) message: MegolmMessage,
}

#[derive(Deserialize)]
struct Outer {
    #[serde(rename = "type")]
    event_type: String,
    event_id: OwnedEventId,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    state_key: Option<String>,
    content: OuterContent,
}

#[derive(Deserialize)]
struct OuterContent {
    algorithm: String,
    ciphertext: Option<String>,
    session_id: Option<String>,
    /// Parsed leniently: a malformed claim proves nothing and costs the event nothing.
    #[serde(rename = "org.matrix.msc3414.creator_claim", default)]
    creator_claim: Option<serde_json::Value>,
}

impl EncryptedStateEvent {
    /// Parses a raw sync or room event (any of ruma's `Raw` event types, or raw JSON).
    ///
    /// # Errors
    ///
    /// [`DecryptStateError::Malformed`] when the event is not an `m.room.encrypted` state event
    /// with `m.megolm.v1.aes-sha2` content.
    pub fn from_raw<T>(raw: &Raw<T>) -> Result<Self, DecryptStateError> {
        let malformed = |what: &str| DecryptStateError::Malformed(what.to_owned());
        let outer: Outer = raw
            .deserialize_as_unchecked()
            .map_err(|e| DecryptStateError::Malformed(e.to_string()))?;
        if outer.event_type != crate::identifiers::ROOM_ENCRYPTED {
            return Err(malformed("not an m.room.encrypted event"));
        }
        let packed_state_key = outer.state_key.ok_or_else(|| malformed("no state_key"))?;
        if outer.content.algorithm != MEGOLM_V1 {
            return Err(DecryptStateError::Malformed(format!(
                "unsupported algorithm {}",
                outer.content.algorithm
            )));
        }
        let session_id = outer.content.session_id.ok_or_else(|| malformed("no session_id"))?;
        let ciphertext = outer.content.ciphertext.ok_or_else(|| malformed("no ciphertext"))?;
        let message = MegolmMessage::from_base64(&ciphertext)
            .map_err(|e| DecryptStateError::Malformed(format!("bad Megolm message: {e}")))?;
        Ok(Self {
            event_id: outer.event_id,
            sender: outer.sender,
            origin_server_ts: outer.origin_server_ts,
            packed_state_key,
            session_id,
            message_index: message.message_index(),
            creator_claim: outer
                .content
                .creator_claim
                .and_then(|claim| serde_json::from_value(claim).ok()),
            message,
        })
    }
}
