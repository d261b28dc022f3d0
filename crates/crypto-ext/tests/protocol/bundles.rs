//! Room-key bundles: what goes in, sealing, and opening under every kind of bad input.

use assert_matches::assert_matches;
use crypto_ext::{
    BundleError, InboundStateSession, KeyOrigin, OutboundStateSession,
    bundle::{BundleBuilder, BundleLimits, RoomKeyBundle, open, seal},
};
use matrix_sdk_common::deserialized_responses::ProcessedToDeviceEvent;
use matrix_sdk_common::deserialized_responses::WithheldCode;
use matrix_sdk_crypto::{
    AttachmentEncryptor, CollectStrategy, EncryptionSettings,
    olm::ExportedRoomKey,
    types::{EventEncryptionAlgorithm, events::room_key_withheld::RoomKeyWithheldContent},
};
use ruma::{RoomId, events::room::history_visibility::HistoryVisibility, room_id};
use serde_json::{Value, json};

use crate::machines::*;

/// Alice's message sessions for `room`: one created while history was `shared`, one while it was
/// `joined`, exported from her store.
async fn message_sessions(alice: &Peer, bob: &Peer, room: &RoomId) -> Vec<ExportedRoomKey> {
    for visibility in [HistoryVisibility::Shared, HistoryVisibility::Joined] {
        let settings = EncryptionSettings {
            history_visibility: visibility,
            sharing_strategy: CollectStrategy::AllDevices,
            ..Default::default()
        };
        alice.machine.share_room_key(room, [bob.user_id()].into_iter(), settings).await.unwrap();
        alice.machine.discard_room_key(room).await.unwrap();
    }
    alice.machine.store().export_room_keys(|s| s.room_id() == room).await.unwrap()
}

#[tokio::test]
async fn shareable_sessions_are_shared_the_rest_withheld_and_state_at_its_current_index() {
    let (alice, bob) = alice_and_bob().await;
    let room = room_id!("!room:example.org");
    let own = alice.own_device();

    let sessions = message_sessions(&alice, &bob, room).await;
    assert_eq!(sessions.len(), 2);
    let shareable = sessions.iter().find(|k| k.shared_history).unwrap().session_id.clone();
    let unshareable = sessions.iter().find(|k| !k.shared_history).unwrap().session_id.clone();

    let name = slot("m.room.name", "");
    let mut state = OutboundStateSession::new(room, name.clone()).unwrap();
    let old = state.encrypt(&own, room, &name, content(json!({"name": "Old"}))).unwrap();
    let current = state.encrypt(&own, room, &name, content(json!({"name": "Current"}))).unwrap();

    let mut builder = BundleBuilder::new(room, &own);
    for key in sessions {
        builder.add_message_session(key);
    }
    assert!(builder.add_state_session(&mut state));
    // Something for another room never gets in.
    let mut elsewhere =
        OutboundStateSession::new(room_id!("!other:example.org"), name.clone()).unwrap();
    elsewhere.encrypt(&own, room_id!("!other:example.org"), &name, content(json!({}))).unwrap();
    assert!(!builder.add_state_session(&mut elsewhere));
    assert_eq!(builder.counts(), (2, 1));
    let bundle = builder.build();

    let shared: Vec<&str> = bundle.room_keys.iter().map(|k| k.session_id.as_str()).collect();
    assert!(shared.contains(&shareable.as_str()));
    assert!(shared.contains(&state.session_id().as_str()));
    assert_eq!(bundle.withheld[0].megolm_session_id(), Some(unshareable.as_str()));
    let withheld = serde_json::to_value(&bundle.withheld[0]).unwrap();
    assert_eq!(withheld["code"], "m.history_not_shared");
    assert_eq!(withheld["from_device"], "ALICEDEVICE");

    // The invitee reads the current state and not the older value.
    // Through the same conversion the receiver uses: the key-export form, marked shareable.
    let state_key =
        bundle.room_keys.into_iter().find(|k| k.session_id == state.session_id()).unwrap();
    let exported = crypto_ext::bundle::exported_room_key(state_key);
    assert!(exported.shared_history);
    let mut held = InboundStateSession::import(
        room,
        &exported,
        KeyOrigin::Bundle { shared_by: alice.user_id().to_owned() },
    )
    .unwrap();
    let raw_current = state_event(room, alice.user_id(), "m.room.name:", &current.content);
    let raw_old = state_event(room, alice.user_id(), "m.room.name:", &old.content);
    assert!(held.decrypt(&parse(&raw_current)).unwrap().plaintext.contains("Current"));
    assert!(held.decrypt(&parse(&raw_old)).is_err());
}

#[tokio::test]
async fn a_session_is_never_both_shared_and_withheld() {
    let (alice, bob) = alice_and_bob().await;
    let room = room_id!("!room:example.org");
    let sessions = message_sessions(&alice, &bob, room).await;
    let mut unshareable = sessions.into_iter().find(|k| !k.shared_history).unwrap();

    let mut builder = BundleBuilder::new(room, &alice.own_device());
    builder.add_message_session(to_exported_clone(&unshareable));
    assert_eq!(builder.counts(), (0, 1));
    // The same session handed on as state (always shareable) replaces the withheld notice...
    unshareable.shared_history = false;
    assert!(builder.add_state_key(to_exported_clone(&unshareable)));
    assert_eq!(builder.counts(), (1, 0));
    // ...and a later withheld copy does not bring it back.
    builder.add_message_session(unshareable);
    assert_eq!(builder.counts(), (1, 0));
}

/// A withheld notice received earlier is passed on, once, unless the session is shared or is
/// of another room.
#[tokio::test]
async fn withheld_notices_received_earlier_are_passed_on() {
    let (alice, bob) = alice_and_bob().await;
    let room = room_id!("!room:example.org");
    let sessions = message_sessions(&alice, &bob, room).await;
    let shareable = sessions.iter().find(|k| k.shared_history).unwrap();
    let notice = |room: &RoomId, session_id: &str| {
        RoomKeyWithheldContent::new(
            EventEncryptionAlgorithm::MegolmV1AesSha2,
            WithheldCode::HistoryNotShared,
            room.to_owned(),
            session_id.to_owned(),
            shareable.sender_key,
            "CAROLDEVICE".into(),
        )
    };
    let mut builder = BundleBuilder::new(room, &alice.own_device());
    builder.add_message_session(to_exported_clone(shareable));
    assert!(builder.add_withheld(notice(room, "a-session-we-never-had")));
    assert!(!builder.add_withheld(notice(room, "a-session-we-never-had")), "once");
    assert!(!builder.add_withheld(notice(room, &shareable.session_id)), "shared already");
    assert!(!builder.add_withheld(notice(room_id!("!other:example.org"), "x")), "other room");
    assert_eq!(builder.counts(), (1, 1));
    let bundle = builder.build();
    assert_eq!(bundle.withheld[0].megolm_session_id(), Some("a-session-we-never-had"));
}

fn to_exported_clone(key: &ExportedRoomKey) -> ExportedRoomKey {
    serde_json::from_value(serde_json::to_value(key).unwrap()).unwrap()
}

async fn sample_bundle() -> (RoomKeyBundle, &'static RoomId) {
    let (alice, bob) = alice_and_bob().await;
    let room = room_id!("!room:example.org");
    let mut builder = BundleBuilder::new(room, &alice.own_device());
    for key in message_sessions(&alice, &bob, room).await {
        builder.add_message_session(key);
    }
    (builder.build(), room)
}

#[tokio::test]
async fn a_sealed_bundle_opens_to_the_same_entries() {
    let (bundle, room) = sample_bundle().await;
    let sealed = seal(&bundle).unwrap();
    let plaintext = serde_json::to_vec(&bundle).unwrap();
    assert!(!sealed.ciphertext.windows(9).any(|w| w == b"room_keys"), "sealed means encrypted");
    assert_eq!(sealed.ciphertext.len(), plaintext.len(), "AES-CTR keeps the length");
    let opened = open(&sealed.ciphertext, sealed.info, room, BundleLimits::default()).unwrap();
    assert_eq!(opened.room_keys.len(), bundle.room_keys.len());
    assert_eq!(opened.withheld.len(), bundle.withheld.len());
    assert_eq!(opened.foreign_entries, 0);
    assert!(opened.conflicting_sessions.is_empty());
}

#[tokio::test]
async fn an_oversized_bundle_is_refused_before_decryption() {
    let (bundle, room) = sample_bundle().await;
    let sealed = seal(&bundle).unwrap();
    let limits = BundleLimits { max_bytes: sealed.ciphertext.len() - 1, ..Default::default() };
    assert_matches!(
        open(&sealed.ciphertext, sealed.info, room, limits),
        Err(BundleError::TooLarge { size, max }) if size == max + 1
    );
}

#[tokio::test]
async fn a_tampered_bundle_fails_its_hash() {
    let (bundle, room) = sample_bundle().await;
    let mut sealed = seal(&bundle).unwrap();
    sealed.ciphertext[10] ^= 0x01;
    assert_matches!(
        open(&sealed.ciphertext, sealed.info, room, BundleLimits::default()),
        Err(BundleError::HashMismatch)
    );
}

#[tokio::test]
async fn a_bundle_that_is_not_json_is_malformed() {
    let (_, room) = sample_bundle().await;
    // Right key and hash, wrong plaintext: what a buggy or hostile inviter could upload.
    let mut garbage: &[u8] = b"{\"room_keys\": 42}";
    let mut encryptor = AttachmentEncryptor::new(&mut garbage);
    let mut ciphertext = Vec::new();
    std::io::Read::read_to_end(&mut encryptor, &mut ciphertext).unwrap();
    let info = encryptor.finish();
    assert_matches!(
        open(&ciphertext, info, room, BundleLimits::default()),
        Err(BundleError::Malformed(_))
    );
}

proptest::proptest! {
    #[test]
    fn opening_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let mut plaintext: &[u8] = b"{}";
        let mut encryptor = AttachmentEncryptor::new(&mut plaintext);
        std::io::Read::read_to_end(&mut encryptor, &mut Vec::new()).unwrap();
        let info = encryptor.finish();
        let _ = open(&bytes, info, room_id!("!room:example.org"), BundleLimits::default());
    }
}

#[tokio::test]
async fn entries_of_other_rooms_and_ambiguous_sessions_are_dropped() {
    let (bundle, room) = sample_bundle().await;
    let mut json: Value = serde_json::to_value(&bundle).unwrap();
    // One key moved to another room, and the withheld session also listed as shared.
    let mut foreign = json["room_keys"][0].clone();
    foreign["room_id"] = json!("!other:example.org");
    foreign["session_id"] = json!("foreign-session");
    let mut conflicting = json["room_keys"][0].clone();
    conflicting["session_id"] = json["withheld"][0]["session_id"].clone();
    json["room_keys"].as_array_mut().unwrap().extend([foreign, conflicting]);
    let tampered: RoomKeyBundle = serde_json::from_value(json.clone()).unwrap();

    let sealed = seal(&tampered).unwrap();
    let opened = open(&sealed.ciphertext, sealed.info, room, BundleLimits::default()).unwrap();
    assert_eq!(opened.foreign_entries, 1);
    assert_eq!(
        opened.conflicting_sessions,
        vec![json["withheld"][0]["session_id"].as_str().unwrap().to_owned()]
    );
    assert!(opened.withheld.is_empty(), "the ambiguous session is withheld nowhere");
    assert!(opened.room_keys.iter().all(|k| k.room_id == room));
    assert!(opened.room_keys.iter().all(|k| !opened.conflicting_sessions.contains(&k.session_id)));
    assert_eq!(opened.room_keys.len(), 1, "only the genuine shareable key is left");
}

#[tokio::test]
async fn the_bundle_wire_shape_is_what_stock_clients_parse() {
    let (bundle, _) = sample_bundle().await;
    let value = serde_json::to_value(&bundle).unwrap();
    insta::assert_json_snapshot!(value, {
        ".room_keys[].session_id" => "[session id]",
        ".room_keys[].session_key" => "[session key]",
        ".room_keys[].sender_key" => "[curve key]",
        ".room_keys[].sender_claimed_keys.ed25519" => "[ed25519 key]",
        ".withheld[].session_id" => "[session id]",
        ".withheld[].sender_key" => "[curve key]",
    }, @r###"
    {
      "room_keys": [
        {
          "algorithm": "m.megolm.v1.aes-sha2",
          "room_id": "!room:example.org",
          "sender_claimed_keys": {
            "ed25519": "[ed25519 key]"
          },
          "sender_key": "[curve key]",
          "session_id": "[session id]",
          "session_key": "[session key]"
        }
      ],
      "withheld": [
        {
          "algorithm": "m.megolm.v1.aes-sha2",
          "code": "m.history_not_shared",
          "from_device": "ALICEDEVICE",
          "reason": "The sender disabled sharing encrypted history.",
          "room_id": "!room:example.org",
          "sender_key": "[curve key]",
          "session_id": "[session id]"
        }
      ]
    }
    "###);
    // And it parses back with matrix-sdk-crypto's own type.
    let _: RoomKeyBundle = serde_json::from_value(value).unwrap();
}

/// MSC4268: a bundle announcement must carry the sender's device keys. The client's
/// matrix-sdk-crypto machine refuses to decrypt one that does not, so it never reaches our
/// receiver (which checks for them again); the very same message with the sender's signed device
/// keys is the control that the refusal is about them.
#[tokio::test]
async fn an_announcement_without_sender_device_keys_is_refused() {
    let mut bob = peer("@bob:example.org", "BOBDEVICE").await;
    let announcement = json!({
        "room_id": "!room:example.org",
        "file": {
            "v": "v2",
            "url": "mxc://example.org/bundle",
            "key": { "kty": "oct", "key_ops": ["encrypt", "decrypt"], "alg": "A256CTR",
                     "k": "qcHVMSgYg-71CauWBezXI5qkaRb0LuIy-Wx5kIaHMIA", "ext": true },
            "iv": "X85+XgHN+HEAAAAAAAAAAA",
            "hashes": { "sha256": "5qG4fFnbbVdlAB1Q72JDKwCagV6Dbkx9uds4rSak37c" }
        }
    });

    let with_keys = mallory_announces(&mut bob, &announcement, true).await;
    assert!(
        matches!(with_keys.as_slice(), [ProcessedToDeviceEvent::Decrypted { .. }]),
        "{with_keys:?}"
    );

    let without_keys = mallory_announces(&mut bob, &announcement, false).await;
    assert!(
        matches!(without_keys.as_slice(), [ProcessedToDeviceEvent::UnableToDecrypt { .. }]),
        "an announcement without sender device keys was accepted: {without_keys:?}"
    );
}

/// An Olm-encrypted bundle announcement from a fresh device of Mallory's to Bob, built with
/// vodozemac directly, with or without `sender_device_keys`.
async fn mallory_announces(
    bob: &mut Peer,
    announcement: &Value,
    with_device_keys: bool,
) -> Vec<ProcessedToDeviceEvent> {
    let mallory = vodozemac::olm::Account::new();
    let (user, device) = ("@mallory:example.org", "MALLORYDEV");
    let bob_keys = bob.machine.identity_keys();
    let mut session = mallory
        .create_outbound_session(
            vodozemac::olm::SessionConfig::version_1(),
            bob_keys.curve25519,
            bob.take_one_time_key(),
        )
        .unwrap();
    let mut plaintext = json!({
        "type": "io.element.msc4268.room_key_bundle",
        "content": announcement,
        "sender": user,
        "sender_device": device,
        "keys": { "ed25519": mallory.ed25519_key().to_base64() },
        "recipient": bob.user_id(),
        "recipient_keys": { "ed25519": bob_keys.ed25519.to_base64() },
    });
    if with_device_keys {
        let mut device_keys = json!({
            "user_id": user,
            "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("curve25519:{device}"): mallory.curve25519_key().to_base64(),
                format!("ed25519:{device}"): mallory.ed25519_key().to_base64(),
            },
        });
        // serde_json's map is ordered and compact output has no spaces: canonical JSON here.
        let signature = mallory.sign(device_keys.to_string());
        device_keys["signatures"] =
            json!({ user: { format!("ed25519:{device}"): signature.to_base64() } });
        plaintext["sender_device_keys"] = device_keys;
    }
    let (message_type, body) = session.encrypt(plaintext.to_string()).unwrap().to_parts();
    let event = json!({
        "sender": user,
        "type": "m.room.encrypted",
        "content": {
            "algorithm": "m.olm.v1.curve25519-aes-sha2",
            "sender_key": mallory.curve25519_key().to_base64(),
            "ciphertext": {
                bob_keys.curve25519.to_base64(): {
                    "type": message_type,
                    "body": vodozemac::base64_encode(body),
                }
            }
        }
    });
    receive_to_device(bob, vec![ruma::serde::Raw::new(&event).unwrap().cast_unchecked()]).await
}
