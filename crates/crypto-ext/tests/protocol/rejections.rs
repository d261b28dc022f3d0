//! Every rejection reason, each produced by a real decryption of a crafted event, so that each
//! test fails if its check is removed from the pipeline.

use assert_matches::assert_matches;
use crypto_ext::{
    DecryptionFacts, KeyOrigin, RejectionReason, SessionOwner, StateSenderTrust, UnprovenCreators,
    ValidationInput, Verdict, validate,
};
use matrix_sdk_common::deserialized_responses::{
    DeviceLinkProblem, VerificationLevel, VerificationState,
};
use ruma::{RoomId, UserId, events::room::power_levels::RoomPowerLevels};
use serde_json::{Value, json};

use crate::machines::*;

const ROOM: &str = "!room:example.org";

struct Scene {
    alice: Peer,
    bob: Peer,
    mallory: Peer,
    eve: Peer,
    power_levels: RoomPowerLevels,
}

async fn scene() -> Scene {
    let mut alice = peer("@alice:example.org", "ALICEDEVICE").await;
    let mut bob = peer("@bob:example.org", "BOBDEVICE").await;
    let mut mallory = peer("@mallory:example.org", "MALLORYDEV").await;
    let mut eve = peer("@eve:example.org", "EVEDEVICE").await;
    mesh(&mut [&mut alice, &mut bob, &mut mallory, &mut eve]).await;
    // Alice is admin, Mallory a moderator (enough for m.room.encrypted, state_default 50), Eve
    // an ordinary member; the name needs 100.
    let power_levels =
        power_levels(&[(alice.user_id(), 100), (mallory.user_id(), 50)], &[("m.room.name", 100)]);
    Scene { alice, bob, mallory, eve, power_levels }
}

fn room() -> &'static RoomId {
    <&RoomId>::try_from(ROOM).unwrap()
}

/// `sender` crafts an event from `plaintext` with outer state key `packed`, claiming to be
/// `claimed_sender`; Bob decrypts it with his stock machine and runs our pipeline.
async fn bob_validates(
    scene: &Scene,
    sender: &Peer,
    claimed_sender: &UserId,
    packed: &str,
    plaintext: Value,
) -> Verdict {
    let mut crafter = Crafter::new();
    crafter.share(sender, room(), &[&scene.bob]).await;
    let content = crafter.encrypt(sender, &plaintext.to_string());
    let raw = state_event(room(), claimed_sender, packed, &content);
    let decrypted =
        scene.bob.machine.decrypt_room_event(raw.cast_ref_unchecked(), room(), &settings()).await;
    // The stock machine checks the packed key and the room itself; our pipeline must not depend
    // on that (another decryptor may not), so where it refuses we validate the plaintext we know
    // the event holds.
    let (plaintext, facts) = match decrypted {
        Ok(decrypted) => (
            decrypted.event.json().get().to_owned(),
            DecryptionFacts::from_encryption_info(&decrypted.encryption_info),
        ),
        Err(
            matrix_sdk_crypto::MegolmError::StateKeyVerificationFailed
            | matrix_sdk_crypto::MegolmError::EventError(
                matrix_sdk_crypto::EventError::MismatchedRoom(..),
            ),
        ) => (
            plaintext.to_string(),
            DecryptionFacts {
                session_owner: SessionOwner::Device {
                    user_id: sender.user_id().to_owned(),
                    device_id: Some(device_id(sender).to_owned()),
                    verification: VerificationState::Unverified(VerificationLevel::UnsignedDevice),
                },
                key_origin: KeyOrigin::Direct,
                creator_proven: true,
                owner_has_identity: None,
            },
        ),
        Err(error) => panic!("unexpected decryption failure: {error}"),
    };
    validate(ValidationInput {
        room_id: room(),
        event: &parse(&raw),
        plaintext: &plaintext,
        facts: &facts,
        power_levels: &scene.power_levels,
        unproven_creators: Default::default(),
        sender_trust: Default::default(),
    })
}

fn payload(event_type: &str, state_key: &str, content: Value, room_id: &str) -> Value {
    json!({ "type": event_type, "state_key": state_key, "content": content, "room_id": room_id })
}

#[tokio::test]
async fn a_well_formed_authorised_event_is_accepted() {
    let s = scene().await;
    let verdict = bob_validates(
        &s,
        &s.alice,
        s.alice.user_id(),
        "m.room.name:",
        payload("m.room.name", "", json!({"name": "Real"}), ROOM),
    )
    .await;
    assert_matches!(verdict, Verdict::Accepted(_));
}

#[tokio::test]
async fn session_of_another_users_device_is_rejected() {
    let s = scene().await;
    // Mallory's device made the session, the event claims to come from Alice.
    let verdict = bob_validates(
        &s,
        &s.mallory,
        s.alice.user_id(),
        "m.room.topic:",
        payload("m.room.topic", "", json!({"topic": "forged"}), ROOM),
    )
    .await;
    assert_matches!(verdict.rejection(), Some(RejectionReason::SessionNotFromSender { .. }));
}

#[tokio::test]
async fn session_of_an_unknown_device_is_rejected_as_transient() {
    // Bob's machine holds an imported key (as from a backup or a file) whose creating device it
    // cannot tie to anyone: it decrypts, but rule 1 cannot be established.
    let carol = peer("@carol:example.org", "CAROLDEVICE").await;
    let bob = peer("@bob:example.org", "BOBDEVICE").await;
    let topic = slot("m.room.topic", "");
    let mut session = crypto_ext::OutboundStateSession::new(room(), topic.clone()).unwrap();
    let encrypted = session
        .encrypt(&carol.own_device(), room(), &topic, content(json!({"topic": "t"})))
        .unwrap();
    let export = session.export_current(&carol.own_device()).unwrap();
    bob.machine.store().import_exported_room_keys(vec![export], |_, _| {}).await.unwrap();
    let raw = state_event(room(), carol.user_id(), "m.room.topic:", &encrypted.content);
    let decrypted = bob
        .machine
        .decrypt_room_event(raw.cast_ref_unchecked(), room(), &settings())
        .await
        .unwrap();
    let facts = DecryptionFacts::from_encryption_info(&decrypted.encryption_info);
    assert_eq!(facts.session_owner, SessionOwner::Unknown);
    let verdict = validate(ValidationInput {
        room_id: room(),
        event: &parse(&raw),
        plaintext: decrypted.event.json().get(),
        facts: &facts,
        power_levels: &power_levels(&[(carol.user_id(), 100)], &[]),
        unproven_creators: Default::default(),
        sender_trust: Default::default(),
    });
    let reason = verdict.rejection().unwrap();
    assert_eq!(reason, &RejectionReason::SenderDeviceUnknown);
    assert!(reason.is_transient());
}

#[tokio::test]
async fn malformed_payload_is_rejected() {
    let s = scene().await;
    let verdict = bob_validates(
        &s,
        &s.mallory,
        s.mallory.user_id(),
        "m.room.topic:",
        json!({ "type": "m.room.topic", "content": {"topic": "no state key"}, "room_id": ROOM }),
    )
    .await;
    assert_matches!(verdict.rejection(), Some(RejectionReason::MalformedPayload { .. }));
}

#[tokio::test]
async fn packed_key_that_does_not_match_the_payload_is_rejected() {
    let s = scene().await;
    // Outer says topic (which Mallory may set), inner says name (which needs 100).
    let verdict = bob_validates(
        &s,
        &s.mallory,
        s.mallory.user_id(),
        "m.room.topic:",
        payload("m.room.name", "", json!({"name": "forged"}), ROOM),
    )
    .await;
    assert_matches!(
        verdict.rejection(),
        Some(RejectionReason::PackedKeyMismatch { packed_state_key, inner_type, .. })
            if packed_state_key == "m.room.topic:" && inner_type == "m.room.name"
    );
}

#[tokio::test]
async fn payload_for_another_room_is_rejected() {
    let s = scene().await;
    let verdict = bob_validates(
        &s,
        &s.alice,
        s.alice.user_id(),
        "m.room.topic:",
        payload("m.room.topic", "", json!({"topic": "replayed"}), "!other:example.org"),
    )
    .await;
    // The stock machine itself may refuse a room mismatch; either way nothing is accepted.
    assert_matches!(verdict.rejection(), Some(RejectionReason::WrongRoom { found, .. }) if found == "!other:example.org");
}

#[tokio::test]
async fn critical_types_are_rejected_even_from_an_admin() {
    let s = scene().await;
    for event_type in crypto_ext::critical::CRITICAL_STATE_TYPES {
        let state_key = if *event_type == "m.room.member" { "@alice:example.org" } else { "" };
        let verdict = bob_validates(
            &s,
            &s.alice,
            s.alice.user_id(),
            &format!("{event_type}:{state_key}"),
            payload(event_type, state_key, json!({}), ROOM),
        )
        .await;
        assert_matches!(
            verdict.rejection(),
            Some(RejectionReason::CriticalType { event_type: t }) if t == event_type,
            "{event_type}"
        );
    }
}

#[tokio::test]
async fn plaintext_only_types_are_rejected_even_from_an_admin() {
    let s = scene().await;
    for event_type in crypto_ext::critical::PLAINTEXT_ONLY_STATE_TYPES {
        let verdict = bob_validates(
            &s,
            &s.alice,
            s.alice.user_id(),
            &format!("{event_type}:"),
            payload(event_type, "", json!({ "alias": "#any:example.org" }), ROOM),
        )
        .await;
        assert_matches!(
            verdict.rejection(),
            Some(RejectionReason::PlaintextOnly { event_type: t }) if t == event_type,
            "{event_type}"
        );
    }
}

#[tokio::test]
async fn inner_type_the_sender_lacks_power_for_is_rejected() {
    let s = scene().await;
    let verdict = bob_validates(
        &s,
        &s.mallory,
        s.mallory.user_id(),
        "m.room.name:",
        payload("m.room.name", "", json!({"name": "forged"}), ROOM),
    )
    .await;
    assert_eq!(
        verdict.rejection(),
        Some(&RejectionReason::InsufficientPower {
            event_type: "m.room.name".to_owned(),
            required: 100,
            actual: 50
        })
    );
    // Eve (level 0) cannot even set a custom type that falls back to state_default (50).
    let verdict = bob_validates(
        &s,
        &s.eve,
        s.eve.user_id(),
        "org.example.note:",
        payload("org.example.note", "", json!({}), ROOM),
    )
    .await;
    assert_matches!(
        verdict.rejection(),
        Some(RejectionReason::InsufficientPower { required: 50, actual: 0, .. })
    );
}

#[tokio::test]
async fn state_key_naming_another_user_is_rejected() {
    let s = scene().await;
    let verdict = bob_validates(
        &s,
        &s.mallory,
        s.mallory.user_id(),
        "org.example.status:@alice:example.org",
        payload("org.example.status", "@alice:example.org", json!({}), ROOM),
    )
    .await;
    assert_matches!(verdict.rejection(), Some(RejectionReason::StateKeyOfOtherUser { .. }));
    // Her own user id as state key is fine.
    let verdict = bob_validates(
        &s,
        &s.mallory,
        s.mallory.user_id(),
        "org.example.status:@mallory:example.org",
        payload("org.example.status", "@mallory:example.org", json!({}), ROOM),
    )
    .await;
    assert_matches!(verdict, Verdict::Accepted(_));
}

#[test]
fn rejection_reasons_serialise_with_a_tag() {
    let reason = RejectionReason::CriticalType { event_type: "m.room.tombstone".to_owned() };
    let json = serde_json::to_value(&reason).unwrap();
    assert_eq!(json, json!({ "reason": "critical_type", "event_type": "m.room.tombstone" }));
    assert_eq!(serde_json::from_value::<RejectionReason>(json).unwrap(), reason);
}

/// Alice names the room with a session whose key her own device sent Bob over Olm; Bob's
/// stock machine decrypts it. Returns the event, its plaintext and Bob's decryption.
async fn alice_names_the_room(
    s: &Scene,
) -> (ruma::serde::Raw<Value>, String, matrix_sdk_common::deserialized_responses::DecryptedRoomEvent)
{
    let mut crafter = Crafter::new();
    crafter.share(&s.alice, room(), &[&s.bob]).await;
    let plaintext = payload("m.room.name", "", json!({"name": "Real"}), ROOM).to_string();
    let raw = state_event(
        room(),
        s.alice.user_id(),
        "m.room.name:",
        &crafter.encrypt(&s.alice, &plaintext),
    );
    let decrypted = s
        .bob
        .machine
        .decrypt_room_event(raw.cast_ref_unchecked(), room(), &settings())
        .await
        .unwrap();
    (raw, plaintext, decrypted)
}

#[tokio::test]
async fn a_creator_only_a_sharer_claims_is_never_verified_and_refused_on_request() {
    let s = scene().await;
    let (raw, plaintext, decrypted) = alice_names_the_room(&s).await;
    // The key came to Bob from Alice's own device over Olm: proven.
    let proven = DecryptionFacts::from_encryption_info(&decrypted.encryption_info);
    assert!(proven.creator_proven);
    let event = parse(&raw);
    let check = |facts: &DecryptionFacts, unproven_creators| {
        validate(ValidationInput {
            room_id: room(),
            event: &event,
            plaintext: &plaintext,
            facts,
            power_levels: &s.power_levels,
            unproven_creators,
            sender_trust: Default::default(),
        })
    };
    let Verdict::Accepted(accepted) = check(&proven, UnprovenCreators::Reject) else {
        panic!("a proven creator is accepted under either setting");
    };
    assert!(accepted.provenance.creator_proven);

    // The same key as a sharer hands it on: only claimed.
    let dan = ruma::user_id!("@dan:example.org").to_owned();
    let claimed = DecryptionFacts {
        key_origin: KeyOrigin::KeyShare { shared_by: dan.clone() },
        creator_proven: false,
        ..proven.clone()
    };
    let Verdict::Accepted(accepted) = check(&claimed, UnprovenCreators::Accept) else {
        panic!("accepted, labelled, by default");
    };
    assert!(!accepted.provenance.creator_proven);
    assert_eq!(
        accepted.provenance.verification,
        Some(VerificationState::Unverified(VerificationLevel::None(
            DeviceLinkProblem::InsecureSource
        )))
    );
    assert_eq!(
        check(&claimed, UnprovenCreators::Reject).rejection(),
        Some(&RejectionReason::CreatorUnproven { shared_by: Some(dan) })
    );
}

#[tokio::test]
async fn the_trust_requirement_keeps_out_devices_their_owner_never_signed() {
    let s = scene().await;
    let (raw, plaintext, decrypted) = alice_names_the_room(&s).await;
    let event = parse(&raw);
    let facts_with = |level: VerificationLevel, owner_has_identity: Option<bool>| {
        let mut facts = DecryptionFacts::from_encryption_info(&decrypted.encryption_info);
        facts.session_owner = SessionOwner::Device {
            user_id: s.alice.user_id().to_owned(),
            device_id: Some(device_id(&s.alice).to_owned()),
            verification: VerificationState::Unverified(level),
        };
        facts.owner_has_identity = owner_has_identity;
        facts
    };
    let check = |facts: &DecryptionFacts, sender_trust| {
        validate(ValidationInput {
            room_id: room(),
            event: &event,
            plaintext: &plaintext,
            facts,
            power_levels: &s.power_levels,
            unproven_creators: Default::default(),
            sender_trust,
        })
    };
    let unsigned = facts_with(VerificationLevel::UnsignedDevice, Some(true));
    let legacy = facts_with(VerificationLevel::UnsignedDevice, Some(false));
    let signed = facts_with(VerificationLevel::UnverifiedIdentity, Some(true));
    let untrusted =
        Some(&RejectionReason::UntrustedDevice { device_id: Some(device_id(&s.alice).to_owned()) });
    // Permissive: accepted, the device's state recorded.
    let Verdict::Accepted(accepted) = check(&unsigned, StateSenderTrust::Untrusted) else {
        panic!("any device is accepted by default");
    };
    assert_eq!(
        accepted.provenance.verification,
        Some(VerificationState::Unverified(VerificationLevel::UnsignedDevice))
    );
    // Strict: a device its owner never signed is refused, a cross-signed one accepted.
    assert_eq!(check(&unsigned, StateSenderTrust::CrossSigned).rejection(), untrusted);
    assert_eq!(check(&legacy, StateSenderTrust::CrossSigned).rejection(), untrusted);
    assert_matches!(check(&signed, StateSenderTrust::CrossSigned), Verdict::Accepted(_));
    // Legacy: an unsigned device passes only for a user without a cross-signing identity.
    assert_eq!(check(&unsigned, StateSenderTrust::CrossSignedOrLegacy).rejection(), untrusted);
    assert_matches!(check(&legacy, StateSenderTrust::CrossSignedOrLegacy), Verdict::Accepted(_));
    let unknown = facts_with(VerificationLevel::UnsignedDevice, None);
    assert_eq!(check(&unknown, StateSenderTrust::CrossSignedOrLegacy).rejection(), untrusted);
    // The owner may sign the device later: the rejection is validated again then.
    assert!(untrusted.is_some_and(RejectionReason::is_transient));
}

/// A sender checks before sending what every reader's pipeline will judge: the power the inner
/// type needs and the `@user` state-key rule.
#[test]
fn a_sender_is_held_to_the_readers_power_and_state_key_rules() {
    use crypto_ext::{StateSlot, may_send_state};
    let admin = ruma::user_id!("@admin:example.org");
    let member = ruma::user_id!("@member:example.org");
    let levels = power_levels(&[(admin, 100)], &[("m.room.name", 100)]);
    let name = StateSlot::new("m.room.name", "");
    assert_eq!(may_send_state(&levels, admin, &name), Ok(()));
    assert_eq!(
        may_send_state(&levels, member, &name),
        Err(RejectionReason::InsufficientPower {
            event_type: "m.room.name".to_owned(),
            required: 100,
            actual: 0,
        })
    );
    let levels = power_levels(&[], &[("org.example.status", 0)]);
    let own = StateSlot::new("org.example.status", member.as_str());
    assert_eq!(may_send_state(&levels, member, &own), Ok(()));
    let other = StateSlot::new("org.example.status", admin.as_str());
    assert_eq!(
        may_send_state(&levels, member, &other),
        Err(RejectionReason::StateKeyOfOtherUser { state_key: admin.as_str().to_owned() })
    );
}
