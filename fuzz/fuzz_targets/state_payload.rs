//! A decrypted state payload with the packed state key it arrived under (the first line of the
//! input; the rest is the plaintext): parsed, and judged by the validation rules that need no
//! power levels (session of the sender, payload matches the packed key and the room, type not
//! critical, state key not another user's). Whatever is accepted is consistent with its input.
#![no_main]

use std::sync::LazyLock;

use crypto_ext::{
    DecryptionFacts, KeyOrigin, PackedStateKey, SessionOwner, StatePayload, UnprovenCreators,
    critical::is_critical, validate_preview,
};
use libfuzzer_sys::fuzz_target;
use matrix_sdk_common::deserialized_responses::VerificationState;
use ruma::{OwnedRoomId, OwnedUserId, owned_room_id, owned_user_id};

static ROOM: LazyLock<OwnedRoomId> = LazyLock::new(|| owned_room_id!("!room:example.org"));
static SENDER: LazyLock<OwnedUserId> = LazyLock::new(|| owned_user_id!("@alice:example.org"));
static FACTS: LazyLock<DecryptionFacts> = LazyLock::new(|| DecryptionFacts {
    session_owner: SessionOwner::Device {
        user_id: SENDER.clone(),
        device_id: Some("ALICEDEVICE".into()),
        verification: VerificationState::Verified,
    },
    key_origin: KeyOrigin::Direct,
    creator_proven: true,
    owner_has_identity: None,
});

fuzz_target!(|data: &str| {
    let (packed, plaintext) = data.split_once('\n').unwrap_or(("m.room.name:", data));
    let parsed = StatePayload::parse(plaintext);
    let judged =
        validate_preview(&ROOM, &SENDER, packed, plaintext, &FACTS, UnprovenCreators::Reject);
    if let Ok(payload) = judged {
        let slot = payload.slot();
        assert!(parsed.is_ok(), "accepted a payload that does not parse");
        assert_eq!(payload.room_id, *ROOM);
        assert!(PackedStateKey::parse(packed).is_ok_and(|p| p.matches(&slot)));
        assert!(!is_critical(&slot.event_type));
        assert!(!slot.state_key.starts_with('@') || slot.state_key == SENDER.as_str());
    }
});
