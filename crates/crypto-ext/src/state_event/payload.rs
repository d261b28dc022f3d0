//! The Megolm plaintext of an encrypted state event: `{type, state_key, content, room_id}`.

use ruma::{OwnedRoomId, RoomId, events::AnyStateEventContent, serde::Raw};
use serde::{Deserialize, Serialize};

use super::StateSlot;
use crate::error::PayloadError;

/// The plaintext inside an encrypted state event (MSC4362).
///
/// The content stays [`Raw`] until a caller asks for a typed value: validation needs only the
/// type, state key and room.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatePayload {
    /// The inner event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The inner state key.
    pub state_key: String,
    /// The inner content, a JSON object.
    pub content: Raw<AnyStateEventContent>,
    /// The room the event belongs to; receivers check it against the room it arrived in.
    pub room_id: OwnedRoomId,
}

impl StatePayload {
    /// The payload for `content` in `slot` of `room_id`.
    pub fn new(room_id: &RoomId, slot: &StateSlot, content: Raw<AnyStateEventContent>) -> Self {
        Self {
            event_type: slot.event_type.clone(),
            state_key: slot.state_key.clone(),
            content,
            room_id: room_id.to_owned(),
        }
    }

    /// Parses a decrypted plaintext. Fields other than the four of the payload (a decrypting
    /// `OlmMachine` adds `sender`, `event_id`, ...) are ignored.
    ///
    /// # Errors
    ///
    /// [`PayloadError`] when the JSON is not an object with a string `type`, a string
    /// `state_key`, an object `content` and a valid `room_id`.
    pub fn parse(plaintext: &str) -> Result<Self, PayloadError> {
        let payload: Self = serde_json::from_str(plaintext).map_err(PayloadError::Json)?;
        if !payload.content.json().get().trim_start().starts_with('{') {
            return Err(PayloadError::ContentNotAnObject);
        }
        Ok(payload)
    }

    /// The slot this payload writes.
    pub fn slot(&self) -> StateSlot {
        StateSlot::new(self.event_type.clone(), self.state_key.clone())
    }

    /// The plaintext to encrypt.
    pub fn to_plaintext(&self) -> String {
        // Serialising strings, an owned room id and an already-valid raw JSON value cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use assert_matches::assert_matches;
    use ruma::room_id;
    use serde_json::json;

    use super::*;

    fn name_content(name: &str) -> Raw<AnyStateEventContent> {
        Raw::new(&json!({ "name": name })).unwrap().cast_unchecked()
    }

    #[test]
    fn snapshot_of_the_plaintext() {
        let payload = StatePayload::new(
            room_id!("!room:example.org"),
            &StateSlot::new("m.room.name", ""),
            name_content("Secret plans"),
        );
        insta::assert_json_snapshot!(
            serde_json::from_str::<serde_json::Value>(&payload.to_plaintext()).unwrap(),
            @r###"
        {
          "content": {
            "name": "Secret plans"
          },
          "room_id": "!room:example.org",
          "state_key": "",
          "type": "m.room.name"
        }
        "###
        );
    }

    #[test]
    fn round_trip_ignores_fields_a_decrypting_machine_adds() {
        let payload = StatePayload::new(
            room_id!("!room:example.org"),
            &StateSlot::new("m.room.topic", ""),
            name_content("x"),
        );
        let mut value: serde_json::Value = serde_json::from_str(&payload.to_plaintext()).unwrap();
        value["sender"] = json!("@alice:example.org");
        value["event_id"] = json!("$event");
        let parsed = StatePayload::parse(&value.to_string()).unwrap();
        assert_eq!(parsed.slot(), StateSlot::new("m.room.topic", ""));
        assert_eq!(parsed.room_id, "!room:example.org");
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert_matches!(StatePayload::parse("not json"), Err(PayloadError::Json(_)));
        let no_state_key = json!({ "type": "m.room.name", "content": {}, "room_id": "!r:e.org" });
        assert_matches!(StatePayload::parse(&no_state_key.to_string()), Err(PayloadError::Json(_)));
        let bad_room =
            json!({ "type": "m.room.name", "state_key": "", "content": {}, "room_id": "nope" });
        assert_matches!(StatePayload::parse(&bad_room.to_string()), Err(PayloadError::Json(_)));
        let array_content = json!({ "type": "m.room.name", "state_key": "", "content": [1], "room_id": "!r:e.org" });
        assert_matches!(
            StatePayload::parse(&array_content.to_string()),
            Err(PayloadError::ContentNotAnObject)
        );
    }
}
