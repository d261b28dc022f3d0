//! Dedicated state sessions: ratchet, rotation, exports for newcomers, pickles, no leaks.

use assert_matches::assert_matches;
use crypto_ext::{
    ClaimError, CreatorClaim, DecryptStateError, EncryptStateError, InboundStateSession, KeyOrigin,
    OutboundStateSession, PackedStateKeyError,
    state_sessions::{InboundStateSessionPickle, OutboundStateSessionPickle},
};
use matrix_sdk_crypto::MegolmError;
use ruma::{room_id, user_id};
use serde_json::{Value, json};

use crate::machines::*;

#[tokio::test]
async fn each_update_ratchets_the_slot_session() {
    let alice = peer("@alice:example.org", "ALICEDEVICE").await;
    let room = room_id!("!room:example.org");
    let name = slot("m.room.name", "");
    let mut session = OutboundStateSession::new(room, name.clone()).unwrap();
    let id = session.session_id();
    let first =
        session.encrypt(&alice.own_device(), room, &name, content(json!({"name": "a"}))).unwrap();
    let second =
        session.encrypt(&alice.own_device(), room, &name, content(json!({"name": "b"}))).unwrap();
    assert_eq!((first.message_index, second.message_index), (0, 1));
    assert_eq!((first.session_id.as_str(), second.session_id.as_str()), (id.as_str(), id.as_str()));
    assert_eq!(session.current_index(), Some(1));
}

#[tokio::test]
async fn a_session_serves_one_slot_of_one_room_and_never_critical_state() {
    let alice = peer("@alice:example.org", "ALICEDEVICE").await;
    let room = room_id!("!room:example.org");
    let mut session = OutboundStateSession::new(room, slot("m.room.name", "")).unwrap();
    let other_slot = slot("m.room.topic", "");
    assert_matches!(
        session.encrypt(&alice.own_device(), room, &other_slot, content(json!({}))),
        Err(EncryptStateError::WrongSession)
    );
    assert_matches!(
        session.encrypt(
            &alice.own_device(),
            room_id!("!other:example.org"),
            &slot("m.room.name", ""),
            content(json!({}))
        ),
        Err(EncryptStateError::WrongSession)
    );
    assert_matches!(
        OutboundStateSession::new(room, slot("m.room.power_levels", "")),
        Err(EncryptStateError::CriticalType { event_type }) if event_type == "m.room.power_levels"
    );
    assert_matches!(
        OutboundStateSession::new(room, slot("m.room.canonical_alias", "")),
        Err(EncryptStateError::PlaintextOnly { event_type }) if event_type == "m.room.canonical_alias"
    );
    assert_matches!(
        OutboundStateSession::new(room, slot("org.example", &"k".repeat(300))),
        Err(EncryptStateError::PackedStateKey(PackedStateKeyError::TooLong { .. }))
    );
}

#[tokio::test]
async fn rotation_gives_a_new_session_the_departed_member_cannot_read() {
    let (alice, bob) = alice_and_bob().await;
    let room = room_id!("!room:example.org");
    let name = slot("m.room.name", "");
    let mut session = OutboundStateSession::new(room, name.clone()).unwrap();
    let room_key: Value = session.room_key_content().deserialize_as_unchecked().unwrap();
    send_to_device(&alice, "m.room_key", &room_key, &[&bob]).await;
    let before =
        session.encrypt(&alice.own_device(), room, &name, content(json!({"name": "a"}))).unwrap();

    // Bob leaves: the slot rotates and the new key goes to nobody.
    let old_id = session.session_id();
    session.rotate();
    assert_ne!(session.session_id(), old_id);
    assert_eq!(session.current_index(), None);
    let after =
        session.encrypt(&alice.own_device(), room, &name, content(json!({"name": "b"}))).unwrap();
    assert_eq!(after.message_index, 0);

    let raw_before =
        state_event(room, alice.user_id(), before.packed_state_key.as_str(), &before.content);
    let raw_after =
        state_event(room, alice.user_id(), after.packed_state_key.as_str(), &after.content);
    bob.machine
        .decrypt_room_event(raw_before.cast_ref_unchecked(), room, &settings())
        .await
        .unwrap();
    assert_matches!(
        bob.machine.decrypt_room_event(raw_after.cast_ref_unchecked(), room, &settings()).await,
        Err(MegolmError::MissingRoomKey(_))
    );
}

#[tokio::test]
async fn a_newcomer_given_the_slot_at_index_n_cannot_read_index_n_minus_1() {
    let alice = peer("@alice:example.org", "ALICEDEVICE").await;
    let room = room_id!("!room:example.org");
    let name = slot("m.room.name", "");
    let own = alice.own_device();
    let mut session = OutboundStateSession::new(room, name.clone()).unwrap();
    assert!(session.export_current(&own).is_none(), "nothing to export before the first update");
    let old = session.encrypt(&own, room, &name, content(json!({"name": "Old name"}))).unwrap();
    let current = session.encrypt(&own, room, &name, content(json!({"name": "Current"}))).unwrap();

    let export = session.export_current(&own).unwrap();
    assert_eq!(export.room_id, room);
    assert!(export.shared_history);
    let origin = KeyOrigin::Bundle { shared_by: alice.user_id().to_owned() };
    let mut carol = InboundStateSession::import(room, &export, origin.clone()).unwrap();
    assert_eq!(carol.first_known_index(), 1);

    let raw_current =
        state_event(room, alice.user_id(), current.packed_state_key.as_str(), &current.content);
    let decrypted = carol.decrypt(&parse(&raw_current)).unwrap();
    assert!(decrypted.plaintext.contains("Current"));
    assert_eq!(decrypted.key_origin, origin);
    assert_eq!(decrypted.sender_key, own.curve25519);

    let raw_old = state_event(room, alice.user_id(), old.packed_state_key.as_str(), &old.content);
    assert_matches!(
        carol.decrypt(&parse(&raw_old)),
        Err(DecryptStateError::UnknownIndex { first_known: 1, index: 0, .. })
    );

    // A stock machine given the same export cannot read the old value either.
    let stock = peer("@carol:example.org", "CAROLDEVICE").await;
    stock.machine.store().import_exported_room_keys(vec![export], |_, _| {}).await.unwrap();
    stock
        .machine
        .decrypt_room_event(raw_current.cast_ref_unchecked(), room, &settings())
        .await
        .unwrap();
    assert!(
        stock
            .machine
            .decrypt_room_event(raw_old.cast_ref_unchecked(), room, &settings())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn imports_are_bound_to_their_room_and_keep_the_earliest_index() {
    let alice = peer("@alice:example.org", "ALICEDEVICE").await;
    let room = room_id!("!room:example.org");
    let name = slot("m.room.name", "");
    let own = alice.own_device();
    let mut session = OutboundStateSession::new(room, name.clone()).unwrap();
    session.encrypt(&own, room, &name, content(json!({"name": "a"}))).unwrap();
    let at_zero = session.export_current(&own).unwrap();
    session.encrypt(&own, room, &name, content(json!({"name": "b"}))).unwrap();
    let at_one = session.export_current(&own).unwrap();

    let origin = || KeyOrigin::KeyShare { shared_by: user_id!("@dan:example.org").to_owned() };
    assert_matches!(
        InboundStateSession::import(room_id!("!elsewhere:example.org"), &at_one, origin()),
        Err(crypto_ext::ImportKeyError::WrongRoom { .. })
    );
    let mut held = InboundStateSession::import(room, &at_one, origin()).unwrap();
    assert!(held.merge(InboundStateSession::import(room, &at_zero, origin()).unwrap()));
    assert_eq!(held.first_known_index(), 0);
    assert!(!held.merge(InboundStateSession::import(room, &at_one, origin()).unwrap()));
    assert_eq!(held.first_known_index(), 0);
}

/// `key` again (exports are not `Clone`).
fn copy(key: &matrix_sdk_crypto::olm::ExportedRoomKey) -> matrix_sdk_crypto::olm::ExportedRoomKey {
    serde_json::from_value(serde_json::to_value(key).unwrap()).unwrap()
}

/// A copy of `key` with the same session id and a junk ratchet, naming `creator` as its
/// creator: what anyone can forge, since the export format is unsigned.
fn forged(
    key: &matrix_sdk_crypto::olm::ExportedRoomKey,
    creator: vodozemac::Curve25519PublicKey,
) -> matrix_sdk_crypto::olm::ExportedRoomKey {
    let mut bytes = key.session_key.to_bytes();
    // version (1 byte), index (4), ratchet (128), signing key (32)
    for byte in &mut bytes[5..133] {
        *byte ^= 0x5a;
    }
    let mut forged = copy(key);
    forged.session_key = vodozemac::megolm::ExportedSessionKey::from_bytes(&bytes).unwrap();
    forged.sender_key = creator;
    forged
}

/// Alice's name session after its first update ("a"), with that update as received, and
/// Mallory, who forges and re-shares.
struct NameSession {
    alice: Peer,
    mallory: Peer,
    own: crypto_ext::OwnDevice,
    session: OutboundStateSession,
    first: crypto_ext::EncryptedStateEvent,
}

const ROOM: &str = "!room:example.org";

async fn name_session() -> NameSession {
    let alice = peer("@alice:example.org", "ALICEDEVICE").await;
    let mallory = peer("@mallory:example.org", "MALLORYDEVICE").await;
    let room = <&ruma::RoomId>::try_from(ROOM).unwrap();
    let name = slot("m.room.name", "");
    let own = alice.own_device();
    let mut session = OutboundStateSession::new(room, name.clone()).unwrap();
    let encrypted = session.encrypt(&own, room, &name, content(json!({"name": "a"}))).unwrap();
    let first = parse(&state_event(
        room,
        alice.user_id(),
        encrypted.packed_state_key.as_str(),
        &encrypted.content,
    ));
    NameSession { alice, mallory, own, session, first }
}

#[tokio::test]
async fn a_forged_copy_held_first_neither_blocks_nor_outlives_the_genuine_one() {
    let NameSession { mallory, own, mut session, first: event, .. } = name_session().await;
    let room = <&ruma::RoomId>::try_from(ROOM).unwrap();
    let genuine = session.export_current(&own).unwrap();
    let fake = forged(&genuine, mallory.own_device().curve25519);
    let origin = || KeyOrigin::KeyShare { shared_by: user_id!("@dan:example.org").to_owned() };

    // The forged copy alone does not decrypt.
    let mut held = InboundStateSession::import(room, &fake, origin()).unwrap();
    assert_eq!(held.session_id(), session.session_id());
    assert_matches!(held.decrypt(&event), Err(DecryptStateError::Decryption(_)));
    // The genuine copy arrives second: kept beside it, and it decides, across a pickle.
    assert!(held.merge(InboundStateSession::import(room, &genuine, origin()).unwrap()));
    assert_eq!(held.unconnected_copies(), 1);
    let mut held = InboundStateSession::from_pickle(
        InboundStateSessionPickle::from_json(&held.pickle().to_json()).unwrap(),
    );
    let decrypted = held.decrypt(&event).unwrap();
    assert!(decrypted.plaintext.contains("\"name\":\"a\""));
    // The genuine copy took the forged one's place, with its own creator claim.
    assert_eq!(decrypted.sender_key, own.curve25519);
    assert_eq!(held.unconnected_copies(), 0);
}

#[tokio::test]
async fn a_reshared_copy_never_rewrites_the_creator_and_unconnected_copies_are_bounded() {
    let NameSession { mallory, own, mut session, first: event, .. } = name_session().await;
    let room = <&ruma::RoomId>::try_from(ROOM).unwrap();
    let name = slot("m.room.name", "");
    let at_zero = session.export_current(&own).unwrap();
    session.encrypt(&own, room, &name, content(json!({"name": "b"}))).unwrap();
    let at_one = session.export_current(&own).unwrap();
    let origin = || KeyOrigin::Invite { shared_by: user_id!("@alice:example.org").to_owned() };

    let mut held = InboundStateSession::import(room, &at_one, origin()).unwrap();
    // A copy that reaches further back, re-shared by Mallory naming her own device as creator:
    // its ratchet is taken, her claim and origin are not.
    let mut reshared = copy(&at_zero);
    reshared.sender_key = mallory.own_device().curve25519;
    let mallory_origin = KeyOrigin::KeyShare { shared_by: mallory.user_id().to_owned() };
    assert!(held.merge(InboundStateSession::import(room, &reshared, mallory_origin).unwrap()));
    assert_eq!(held.first_known_index(), 0);
    assert_eq!(held.key_origin(), &origin());
    assert_eq!(held.decrypt(&event).unwrap().sender_key, own.curve25519);

    // Forged copies are kept only up to the bound.
    for _ in 0..crypto_ext::state_sessions::MAX_UNCONNECTED_COPIES + 3 {
        let fake = forged(&at_zero, mallory.own_device().curve25519);
        let _ = held.merge(InboundStateSession::import(room, &fake, origin()).unwrap());
    }
    assert_eq!(held.unconnected_copies(), 1, "the same forgery connects to itself");
    for n in 0..crypto_ext::state_sessions::MAX_UNCONNECTED_COPIES + 3 {
        let mut fake = forged(&at_zero, mallory.own_device().curve25519);
        let mut bytes = fake.session_key.to_bytes();
        bytes[5] ^= n as u8 + 1;
        fake.session_key = vodozemac::megolm::ExportedSessionKey::from_bytes(&bytes).unwrap();
        let _ = held.merge(InboundStateSession::import(room, &fake, origin()).unwrap());
    }
    assert_eq!(held.unconnected_copies(), crypto_ext::state_sessions::MAX_UNCONNECTED_COPIES);
    // The genuine held copy still decrypts.
    held.decrypt(&event).unwrap();
}

#[tokio::test]
async fn pickles_round_trip_and_keep_ratcheting() {
    let alice = peer("@alice:example.org", "ALICEDEVICE").await;
    let room = room_id!("!room:example.org");
    let name = slot("m.room.name", "");
    let own = alice.own_device();
    let mut session = OutboundStateSession::new(room, name.clone()).unwrap();
    let first = session.encrypt(&own, room, &name, content(json!({"name": "a"}))).unwrap();
    let mine = InboundStateSession::from_outbound(&session, &own);

    let json = session.pickle().to_json();
    let mut restored =
        OutboundStateSession::from_pickle(OutboundStateSessionPickle::from_json(&json).unwrap());
    assert_eq!(restored.session_id(), session.session_id());
    assert_eq!(restored.current_index(), Some(0));
    let second = restored.encrypt(&own, room, &name, content(json!({"name": "b"}))).unwrap();
    assert_eq!(second.message_index, 1);

    let mut mine = InboundStateSession::from_pickle(
        InboundStateSessionPickle::from_json(&mine.pickle().to_json()).unwrap(),
    );
    assert_eq!(mine.key_origin(), &KeyOrigin::Own);
    for encrypted in [&first, &second] {
        let raw = state_event(
            room,
            alice.user_id(),
            encrypted.packed_state_key.as_str(),
            &encrypted.content,
        );
        mine.decrypt(&parse(&raw)).unwrap();
    }
    assert!(OutboundStateSessionPickle::from_json("{}").is_err());
}

#[tokio::test]
async fn debug_output_holds_no_key_material() {
    let alice = peer("@alice:example.org", "ALICEDEVICE").await;
    let room = room_id!("!room:example.org");
    let name = slot("m.room.name", "");
    let mut session = OutboundStateSession::new(room, name.clone()).unwrap();
    session.encrypt(&alice.own_device(), room, &name, content(json!({"name": "a"}))).unwrap();
    let room_key: Value = session.room_key_content().deserialize_as_unchecked().unwrap();
    let session_key = room_key["session_key"].as_str().unwrap().to_owned();
    let export = session.export_current(&alice.own_device()).unwrap();
    let exported_key = export.session_key.to_base64();
    let inbound = InboundStateSession::import(room, &export, KeyOrigin::Direct).unwrap();

    for debug in [
        format!("{session:?}"),
        format!("{:?}", session.pickle()),
        format!("{inbound:?}"),
        format!("{:?}", inbound.pickle()),
    ] {
        assert!(!debug.contains(&session_key), "{debug}");
        assert!(!debug.contains(&exported_key), "{debug}");
        assert!(!debug.contains("ratchet"), "{debug}");
    }
}

#[test]
fn room_key_content_shape() {
    let session =
        OutboundStateSession::new(room_id!("!room:example.org"), slot("m.room.topic", "")).unwrap();
    let value: Value = session.room_key_content().deserialize_as_unchecked().unwrap();
    insta::assert_json_snapshot!(value, {
        ".session_id" => "[session id]",
        ".session_key" => "[session key]",
    }, @r###"
    {
      "algorithm": "m.megolm.v1.aes-sha2",
      "org.matrix.msc3061.shared_history": true,
      "room_id": "!room:example.org",
      "session_id": "[session id]",
      "session_key": "[session key]"
    }
    "###);
}

/// A batch big enough to be split across threads decrypts every event once, with its own
/// session, to the same plaintext as one-by-one decryption; an event its session cannot decrypt
/// (an index before the key's first) comes back as an error, not dropped.
#[tokio::test]
async fn a_batch_decrypts_every_event_once_with_its_own_session() {
    use crypto_ext::state_sessions::batch::decrypt_batch;
    let alice = peer("@alice:example.org", "ALICEDEVICE").await;
    let own = alice.own_device();
    let room = room_id!("!room:example.org");
    let mut groups = Vec::new();
    let mut expected = std::collections::BTreeMap::new();
    for s in 0..12 {
        let name = slot(&format!("org.example.slot{s}"), "");
        let mut session = OutboundStateSession::new(room, name.clone()).unwrap();
        let mut events = Vec::new();
        let mut from_start = None;
        for update in 0..10 {
            let encrypted =
                session.encrypt(&own, room, &name, content(json!({ "v": [s, update] }))).unwrap();
            let event = parse(&state_event(
                room,
                alice.user_id(),
                encrypted.packed_state_key.as_str(),
                &encrypted.content,
            ));
            expected.insert(event.event_id.clone(), (s, update));
            events.push(event);
            if update == 0 {
                from_start = session.export_current(&own);
            }
        }
        // Slot 0's key is exported at index 9: its events 0 to 8 cannot be decrypted.
        let key = if s == 0 { session.export_current(&own) } else { from_start }.unwrap();
        let inbound = InboundStateSession::import(room, &key, KeyOrigin::Direct).unwrap();
        groups.push((inbound, events));
    }
    let results = decrypt_batch(groups);
    assert_eq!(results.len(), 120, "every event once");
    let mut seen = std::collections::BTreeSet::new();
    for (event, decrypted) in results {
        assert!(seen.insert(event.event_id.clone()), "decrypted twice");
        let (s, update) = expected[&event.event_id];
        match decrypted {
            Ok(decrypted) => {
                let plaintext: Value = serde_json::from_str(&decrypted.plaintext).unwrap();
                assert_eq!(plaintext["content"]["v"], json!([s, update]));
                assert_eq!(decrypted.session_id, event.session_id);
            }
            Err(_) => assert!(s == 0 && update < 9, "slot {s} update {update} failed"),
        }
    }
}

#[tokio::test]
async fn only_the_creators_own_device_proves_a_key_and_a_proof_outranks_a_claim() {
    let NameSession { alice, mallory, own, mut session, .. } = name_session().await;
    let room = <&ruma::RoomId>::try_from(ROOM).unwrap();
    let key = session.export_current(&own).unwrap();
    let import = |key, origin| InboundStateSession::import(room, key, origin).unwrap();
    let by = |user: &Peer| KeyOrigin::KeyShare { shared_by: user.user_id().to_owned() };

    // Mallory hands on Alice's key: her device is not its creator, the claim stays a claim.
    let from_mallory =
        import(&key, by(&mallory)).shared_by_device(Some(mallory.own_device().curve25519));
    assert!(!from_mallory.creator_proven());
    assert!(!import(&key, by(&mallory)).shared_by_device(None).creator_proven());
    // Alice's own device hands it over: proven.
    let from_alice = import(&key, by(&alice)).shared_by_device(Some(own.curve25519));
    assert!(from_alice.creator_proven());
    assert!(InboundStateSession::from_outbound(&session, &own).creator_proven());

    // Mallory's copy names her own device as creator; Alice's proven copy comes later and wins.
    let mut forged_claim = copy(&key);
    forged_claim.sender_key = mallory.own_device().curve25519;
    let mut held =
        import(&forged_claim, by(&mallory)).shared_by_device(Some(mallory.own_device().curve25519));
    assert!(held.creator_proven(), "Mallory may prove sessions she claims as her own");
    let mut held_unproven = import(&forged_claim, by(&mallory));
    assert!(held_unproven.merge(import(&key, by(&alice)).shared_by_device(Some(own.curve25519))));
    assert!(held_unproven.creator_proven());
    assert_eq!(held_unproven.key_origin(), &by(&alice));
    // A proven claim is never replaced by another.
    assert!(!held.merge(import(&key, by(&alice)).shared_by_device(Some(own.curve25519))));
    assert_eq!(held.key_origin(), &by(&mallory));
    // And the proof survives a pickle.
    let restored = InboundStateSession::from_pickle(
        InboundStateSessionPickle::from_json(&held_unproven.pickle().to_json()).unwrap(),
    );
    assert!(restored.creator_proven());
}

/// The claim a device signs for its session travels in each event of the session (and in the
/// pickle), verifies against that device's real Ed25519 key, and is dropped by a rotation (the
/// new session needs its own).
#[tokio::test]
async fn a_signed_creator_claim_travels_in_each_event_and_verifies_against_the_device() {
    let alice = peer("@alice:example.org", "ALICEDEVICE").await;
    let own = alice.own_device();
    let room = room_id!("!room:example.org");
    let name = slot("m.room.name", "");
    let mut session = OutboundStateSession::new(room, name.clone()).unwrap();
    let text = session.creator_claim_text(&own);
    let signatures = alice.machine.sign(&text).await.unwrap();
    let key_id =
        ruma::DeviceKeyId::from_parts(ruma::DeviceKeyAlgorithm::Ed25519, alice.machine.device_id());
    let signature = signatures.get_signature(alice.user_id(), &key_id).expect("the device signed");
    session.set_creator_claim(CreatorClaim {
        device_id: own.device_id.clone(),
        signature: signature.to_base64(),
    });

    let mut session = OutboundStateSession::from_pickle(session.pickle());
    let encrypted = session.encrypt(&own, room, &name, content(json!({"name": "Signed"}))).unwrap();
    let event = parse(&state_event(room, alice.user_id(), "m.room.name:", &encrypted.content));
    let claim = event.creator_claim.clone().expect("the event carries the claim");
    assert_eq!(
        claim.verify(
            room,
            &event.session_id,
            alice.user_id(),
            "ALICEDEVICE",
            own.curve25519,
            own.ed25519
        ),
        Ok(())
    );
    // Another member's event with the same claim proves nothing about her.
    assert_eq!(
        claim.verify(
            room,
            &event.session_id,
            user_id!("@mallory:example.org"),
            "ALICEDEVICE",
            own.curve25519,
            own.ed25519
        ),
        Err(ClaimError::BadSignature)
    );

    session.rotate();
    assert!(session.creator_claim().is_none(), "a new session needs its own claim");
    let encrypted =
        session.encrypt(&own, room, &name, content(json!({"name": "Unsigned"}))).unwrap();
    let event = parse(&state_event(room, alice.user_id(), "m.room.name:", &encrypted.content));
    assert!(event.creator_claim.is_none());
}
