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
        if payload.event_type.is_empty() {
            return Err(PayloadError::EmptyEventType);
        }
        // `content` is valid JSON (the raw value was parsed): starting with `{`, it is an object.
        let content = payload.content.json().get();
        if !content.trim_start().starts_with('{') {
            return Err(PayloadError::ContentNotAnObject);
        }
        if nesting_depth(content) > MAX_CONTENT_DEPTH {
            return Err(PayloadError::ContentTooDeep { max: MAX_CONTENT_DEPTH });
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

/// The deepest nesting of objects and arrays a state content may have (the content object
/// itself is level 1). Matrix state contents nest a few levels; a deeper one is refused before
/// anything stores or parses it further (serde_json's own limit, 128, applies only to full
/// parses).
pub const MAX_CONTENT_DEPTH: usize = 32;

/// The deepest nesting of objects and arrays in `json` (valid JSON), in one pass over its bytes.
fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for byte in json.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
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
        let empty_type =
            json!({ "type": "", "state_key": "x", "content": {}, "room_id": "!r:e.org" });
        assert_matches!(
            StatePayload::parse(&empty_type.to_string()),
            Err(PayloadError::EmptyEventType)
        );
    }

    fn nested(levels: usize) -> String {
        // `levels` objects in all: the content itself and `levels - 1` inside it.
        let inner = format!("{}1{}", r#"{"a":"#.repeat(levels - 1), "}".repeat(levels - 1));
        let content = if levels == 1 { "{}".to_owned() } else { format!(r#"{{"x":{inner}}}"#) };
        format!(
            r#"{{"type":"m.room.topic","state_key":"","room_id":"!r:e.org","content":{content}}}"#
        )
    }

    #[test]
    fn content_nesting_is_bounded() {
        assert!(StatePayload::parse(&nested(1)).is_ok());
        assert!(StatePayload::parse(&nested(MAX_CONTENT_DEPTH)).is_ok());
        assert_matches!(
            StatePayload::parse(&nested(MAX_CONTENT_DEPTH + 1)),
            Err(PayloadError::ContentTooDeep { max: MAX_CONTENT_DEPTH })
        );
        assert_matches!(
            StatePayload::parse(&nested(500)),
            Err(PayloadError::ContentTooDeep { .. } | PayloadError::Json(_))
        );
        // Brackets inside strings do not count.
        let strings = json!({
            "type": "m.room.topic", "state_key": "", "room_id": "!r:e.org",
            "content": { "topic": "[[[[{{{{\\\"[[[[".repeat(40) },
        });
        assert!(StatePayload::parse(&strings.to_string()).is_ok());
    }
}
