//! Every protocol identifier the crates send or accept, in one place.
//!
//! The proposals behind these features are merged into the spec or close to it, but deployed
//! clients still use the unstable names. We **send** the names today's peers accept (the unstable
//! ones where a stock matrix-sdk 0.18 peer would reject a stable-only payload) and **accept** both
//! spellings on receipt.

/// The `m.room.encryption` content flag that turns on encrypted state (MSC4362, unstable).
pub const ENCRYPT_STATE_EVENTS_UNSTABLE: &str = "io.element.msc4362.encrypt_state_events";
/// The stable spelling of [`ENCRYPT_STATE_EVENTS_UNSTABLE`], accepted on receipt.
pub const ENCRYPT_STATE_EVENTS_STABLE: &str = "encrypt_state_events";

/// The `m.room_key` / export flag marking a session as shareable with future members
/// (MSC3061, unstable spelling; the one we send).
///
/// matrix-sdk-crypto 0.18 reads it as an alias of [`SHARED_HISTORY_STABLE`]; a payload must not
/// carry both, because a serde alias rejects a duplicate field.
pub const SHARED_HISTORY_UNSTABLE: &str = "org.matrix.msc3061.shared_history";
/// The stable spelling of [`SHARED_HISTORY_UNSTABLE`], accepted on receipt.
pub const SHARED_HISTORY_STABLE: &str = "m.shared_history";

/// The to-device event announcing a room-key bundle (MSC4268, unstable; the one we send).
pub const ROOM_KEY_BUNDLE_UNSTABLE: &str = "io.element.msc4268.room_key_bundle";
/// The stable spelling of [`ROOM_KEY_BUNDLE_UNSTABLE`], accepted on receipt.
pub const ROOM_KEY_BUNDLE_STABLE: &str = "m.room_key_bundle";

/// The withheld code for a session whose creator did not mark it shareable (MSC4268; the
/// spelling matrix-sdk-crypto 0.18 sends).
pub const HISTORY_NOT_SHARED: &str = "m.history_not_shared";
/// The unstable spelling of [`HISTORY_NOT_SHARED`], accepted on receipt.
pub const HISTORY_NOT_SHARED_UNSTABLE: &str = "io.element.msc4268.history_not_shared";

/// The to-device event that hands an invitee the keys of a room's aesthetic state slots (name,
/// topic, avatar, canonical alias) at invite time, so the invite preview can show them (our
/// extension of MSC3414's contextual invites; stock clients ignore it). Content:
/// `{"room_id": ..., "keys": [exported room keys, each at its slot's current index]}`.
pub const INVITE_STATE_KEYS: &str = "org.matrix.msc3414.invite_state_keys";
/// The most keys an [`INVITE_STATE_KEYS`] message may carry; a longer one is ignored.
pub const INVITE_STATE_KEYS_MAX: usize = 16;

/// The to-device request for the state keys a member lacks (our extension of MSC3414; stock
/// clients ignore it). Content: `{"room_id": ..., "request_id": ..., "session_ids": [...]}`,
/// sent over Olm.
pub const STATE_KEY_REQUEST: &str = "org.matrix.msc3414.state_key_request";
/// The answer to a [`STATE_KEY_REQUEST`]: `{"room_id": ..., "request_id": ..., "keys": [exported
/// room keys, each at the index of its slot's current event]}`, sent over Olm to the requesting
/// device only.
pub const STATE_KEY_SHARE: &str = "org.matrix.msc3414.state_key_share";
/// The most sessions one [`STATE_KEY_REQUEST`] or [`STATE_KEY_SHARE`] may name; a longer one is
/// ignored (a requester splits its list).
pub const STATE_KEY_REQUEST_MAX: usize = 64;

/// The to-device event that hands a member of an allowed room the preview of a restricted room
/// it has not joined (MSC3414's restricted rooms; our wire format, stock clients ignore it):
/// `{"room_id": ..., "via": <the allowed room>, "events": [the room's aesthetic encrypted state
/// events, as the sender's homeserver served them], "keys": [exported room keys, each at the
/// index of its event]}`, sent over Olm.
pub const RESTRICTED_PREVIEW: &str = "org.matrix.msc3414.restricted_preview";
/// The most events, and the most keys, one [`RESTRICTED_PREVIEW`] may carry; a longer one is
/// ignored.
pub const RESTRICTED_PREVIEW_MAX: usize = 16;

/// The encrypted state types of a room's "look" (name, topic, avatar), each with the empty state
/// key: what an invite or a restricted room's preview shows, and the slots whose plaintext copies
/// are tracked next to the encrypted ones. (The canonical alias is plaintext-only:
/// [`crate::critical::PLAINTEXT_ONLY_STATE_TYPES`].)
pub const AESTHETIC_SLOTS: &[&str] = &["m.room.name", "m.room.topic", "m.room.avatar"];

/// The Megolm algorithm name used for room events and state.
pub const MEGOLM_V1: &str = "m.megolm.v1.aes-sha2";
/// The event type of encrypted room events, and of encrypted state.
pub const ROOM_ENCRYPTED: &str = "m.room.encrypted";
/// The to-device event type that shares a Megolm session.
pub const ROOM_KEY: &str = "m.room_key";
/// The field of an encrypted state event's content that carries the creating device's signed
/// claim ([`crate::state_sessions::CreatorClaim`]); other clients ignore it.
pub const CREATOR_CLAIM: &str = "org.matrix.msc3414.creator_claim";

/// Whether an `m.room.encryption` content (as JSON) switches on encrypted state, in either
/// spelling.
pub fn encrypts_state(room_encryption_content: &serde_json::Value) -> bool {
    [ENCRYPT_STATE_EVENTS_UNSTABLE, ENCRYPT_STATE_EVENTS_STABLE].iter().any(|name| {
        room_encryption_content.get(name).and_then(serde_json::Value::as_bool) == Some(true)
    })
}

/// Whether `event_type` names a room-key bundle announcement, in either spelling.
pub fn is_room_key_bundle(event_type: &str) -> bool {
    event_type == ROOM_KEY_BUNDLE_UNSTABLE || event_type == ROOM_KEY_BUNDLE_STABLE
}

/// Whether `code` is the "history not shared" withheld code, in either spelling.
pub fn is_history_not_shared(code: &str) -> bool {
    code == HISTORY_NOT_SHARED || code == HISTORY_NOT_SHARED_UNSTABLE
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn both_spellings_switch_on_encrypted_state() {
        assert!(encrypts_state(&json!({ "io.element.msc4362.encrypt_state_events": true })));
        assert!(encrypts_state(&json!({ "encrypt_state_events": true })));
        assert!(!encrypts_state(&json!({ "encrypt_state_events": false })));
        assert!(!encrypts_state(&json!({ "algorithm": "m.megolm.v1.aes-sha2" })));
        assert!(!encrypts_state(&json!({ "encrypt_state_events": "true" })));
    }

    #[test]
    fn both_spellings_are_recognised() {
        assert!(is_room_key_bundle("m.room_key_bundle"));
        assert!(is_room_key_bundle("io.element.msc4268.room_key_bundle"));
        assert!(!is_room_key_bundle("m.room_key"));
        assert!(is_history_not_shared("m.history_not_shared"));
        assert!(is_history_not_shared("io.element.msc4268.history_not_shared"));
        assert!(!is_history_not_shared("m.unverified"));
    }
}
