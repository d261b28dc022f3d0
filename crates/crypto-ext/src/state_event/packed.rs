//! Slots `(type, state_key)` and their packed form `{type}:{state_key}`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::PackedStateKeyError;

/// The longest packed state key accepted, in bytes (the server's limit on a state key).
pub const MAX_PACKED_STATE_KEY_LEN: usize = 255;

/// A state slot: an event type and a state key. Each slot holds at most one current value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StateSlot {
    /// The inner event type, e.g. `m.room.name`.
    pub event_type: String,
    /// The inner state key, often empty.
    pub state_key: String,
}

impl StateSlot {
    /// A slot for `event_type` and `state_key`.
    pub fn new(event_type: impl Into<String>, state_key: impl Into<String>) -> Self {
        Self { event_type: event_type.into(), state_key: state_key.into() }
    }

    /// The packed state key of this slot, refused when longer than
    /// [`MAX_PACKED_STATE_KEY_LEN`] bytes or when the event type is empty.
    ///
    /// # Errors
    ///
    /// [`PackedStateKeyError::TooLong`] with the length it would have,
    /// [`PackedStateKeyError::EmptyEventType`].
    pub fn packed(&self) -> Result<PackedStateKey, PackedStateKeyError> {
        if self.event_type.is_empty() {
            return Err(PackedStateKeyError::EmptyEventType);
        }
        let packed = format!("{}:{}", self.event_type, self.state_key);
        PackedStateKey::parse(packed)
    }
}

impl fmt::Display for StateSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {:?})", self.event_type, self.state_key)
    }
}

/// The outer `state_key` of an encrypted state event: `{type}:{state_key}` of the inner event.
///
/// A packed key is only ever compared to a decrypted payload ([`PackedStateKey::matches`]); it
/// is never split to guess the slot, because both the type and the state key may contain `:`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PackedStateKey(String);

impl PackedStateKey {
    /// Checks a received packed key: at most [`MAX_PACKED_STATE_KEY_LEN`] bytes and holding the
    /// `:` separator.
    ///
    /// # Errors
    ///
    /// [`PackedStateKeyError::TooLong`] or [`PackedStateKeyError::MissingSeparator`].
    pub fn parse(value: impl Into<String>) -> Result<Self, PackedStateKeyError> {
        let value = value.into();
        if value.len() > MAX_PACKED_STATE_KEY_LEN {
            return Err(PackedStateKeyError::TooLong {
                length: value.len(),
                max: MAX_PACKED_STATE_KEY_LEN,
            });
        }
        if !value.contains(':') {
            return Err(PackedStateKeyError::MissingSeparator);
        }
        Ok(Self(value))
    }

    /// Whether this is exactly the packed form of `slot`.
    pub fn matches(&self, slot: &StateSlot) -> bool {
        let (event_type, state_key) = (&slot.event_type, &slot.state_key);
        self.0.len() == event_type.len() + 1 + state_key.len()
            && self.0.starts_with(event_type.as_str())
            && self.0[event_type.len()..].starts_with(':')
            && self.0.ends_with(state_key.as_str())
    }

    /// The packed key as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PackedStateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for PackedStateKey {
    type Error = PackedStateKeyError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<PackedStateKey> for String {
    fn from(key: PackedStateKey) -> Self {
        key.0
    }
}

#[cfg(test)]
mod tests {
    use assert_matches::assert_matches;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn packs_type_and_state_key() {
        let slot = StateSlot::new("m.room.name", "");
        assert_eq!(slot.packed().unwrap().as_str(), "m.room.name:");
        let slot = StateSlot::new("org.example.custom", "@alice:example.org");
        assert_eq!(slot.packed().unwrap().as_str(), "org.example.custom:@alice:example.org");
    }

    #[test]
    fn refuses_packed_keys_over_255_bytes() {
        let at_limit = StateSlot::new("m.x", "a".repeat(MAX_PACKED_STATE_KEY_LEN - 4));
        assert_eq!(at_limit.packed().unwrap().as_str().len(), MAX_PACKED_STATE_KEY_LEN);

        let over = StateSlot::new("m.x", "a".repeat(MAX_PACKED_STATE_KEY_LEN - 3));
        assert_matches!(over.packed(), Err(PackedStateKeyError::TooLong { length: 256, max: 255 }));
        assert_matches!(
            PackedStateKey::parse("x".repeat(300) + ":"),
            Err(PackedStateKeyError::TooLong { length: 301, .. })
        );
    }

    #[test]
    fn refuses_a_key_without_separator() {
        assert_matches!(
            PackedStateKey::parse("m.room.name"),
            Err(PackedStateKeyError::MissingSeparator)
        );
    }

    #[test]
    fn colons_in_type_or_state_key_only_match_their_own_slot() {
        // The same packed string could be split in several places; only the exact slot matches.
        let packed = PackedStateKey::parse("a:b:c").unwrap();
        assert!(packed.matches(&StateSlot::new("a", "b:c")));
        assert!(packed.matches(&StateSlot::new("a:b", "c")));
        assert!(!packed.matches(&StateSlot::new("a", "b")));
        assert!(!packed.matches(&StateSlot::new("a:b:c", "")));
        assert!(!packed.matches(&StateSlot::new("", "a:b:c")));
        let name = PackedStateKey::parse("m.room.name:").unwrap();
        assert!(!name.matches(&StateSlot::new("m.room.nam", "e")));
    }

    #[test]
    fn a_slot_without_an_event_type_has_no_packed_key() {
        assert!(matches!(
            StateSlot::new("", "x").packed(),
            Err(PackedStateKeyError::EmptyEventType)
        ));
    }

    #[test]
    fn serde_round_trip_checks_the_value() {
        let packed = StateSlot::new("m.room.topic", "").packed().unwrap();
        let json = serde_json::to_string(&packed).unwrap();
        assert_eq!(json, r#""m.room.topic:""#);
        assert_eq!(serde_json::from_str::<PackedStateKey>(&json).unwrap(), packed);
        assert!(serde_json::from_str::<PackedStateKey>(r#""no-separator""#).is_err());
    }

    proptest! {
        #[test]
        fn every_slot_round_trips(event_type in "[a-z.:_]{1,40}", state_key in "[@a-z.:_]{0,40}") {
            let slot = StateSlot::new(event_type, state_key);
            let packed = slot.packed().unwrap();
            prop_assert!(packed.matches(&slot));
            let reparsed = PackedStateKey::parse(packed.as_str().to_owned()).unwrap();
            prop_assert!(reparsed.matches(&slot));
        }

        #[test]
        fn parse_never_panics(input in ".{0,300}") {
            let _ = PackedStateKey::parse(input);
        }
    }
}
