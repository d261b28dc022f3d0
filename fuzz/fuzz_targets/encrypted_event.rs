//! An encrypted state event as the homeserver serves it (any JSON): the outer parse, the creator
//! claim it may carry, and decryption with a session that never encrypted it (a junk
//! ciphertext must fail authentication, never decrypt).
#![no_main]

use std::sync::{LazyLock, Mutex};

use crypto_ext::{
    CreatorClaim, EncryptedStateEvent, InboundStateSession, KeyOrigin, OwnDevice,
    testing::Crafter,
    vodozemac::{Curve25519PublicKey, Curve25519SecretKey, Ed25519Keypair},
};
use libfuzzer_sys::fuzz_target;
use ruma::{owned_room_id, serde::Raw};

static SESSION: LazyLock<Mutex<InboundStateSession>> = LazyLock::new(|| {
    let room = owned_room_id!("!room:example.org");
    let creator = OwnDevice {
        user_id: "@alice:example.org".try_into().expect("user id"),
        device_id: "ALICEDEVICE".into(),
        curve25519: Curve25519PublicKey::from(&Curve25519SecretKey::new()),
        ed25519: Ed25519Keypair::new().public_key(),
    };
    let key = Crafter::new().exported_key(&room, &creator);
    Mutex::new(InboundStateSession::import(&room, &key, KeyOrigin::Direct).expect("a valid key"))
});

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = serde_json::from_slice::<Raw<serde_json::Value>>(data) else { return };
    if let Ok(Some(content)) = raw.get_field::<serde_json::Value>("content") {
        let _ = CreatorClaim::from_content(&content);
    }
    let Ok(event) = EncryptedStateEvent::from_raw(&raw) else { return };
    let mut session = SESSION.lock().unwrap_or_else(|e| e.into_inner());
    assert!(session.decrypt(&event).is_err(), "a ciphertext nobody encrypted decrypted");
});
