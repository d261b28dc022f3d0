//! Byte-level interop with a stock `matrix_sdk_crypto::OlmMachine` (with its
//! `experimental-encrypted-state-events` feature), in both directions.

use assert_matches::assert_matches;
use crypto_ext::{
    DecryptionFacts, KeyOrigin, OutboundStateSession, ValidationInput, Verdict, validate,
};
use matrix_sdk_crypto::{CollectStrategy, EncryptionSettings, types::requests::ToDeviceRequest};
use ruma::{events::AnyStateEventContent, room_id, serde::Raw};
use serde_json::{Value, json};

use crate::machines::*;

#[tokio::test]
async fn stock_machine_decrypts_our_state_event_after_our_room_key() {
    let (alice, bob) = alice_and_bob().await;
    let room = room_id!("!room:example.org");
    let name = slot("m.room.name", "");

    let mut session = OutboundStateSession::new(room, name.clone()).unwrap();
    let room_key: Value = session.room_key_content().deserialize_as_unchecked().unwrap();
    assert_eq!(room_key["org.matrix.msc3061.shared_history"], true);
    send_to_device(&alice, "m.room_key", &room_key, &[&bob]).await;

    let encrypted = session
        .encrypt(&alice.own_device(), room, &name, content(json!({ "name": "Secret plans" })))
        .unwrap();
    let raw =
        state_event(room, alice.user_id(), encrypted.packed_state_key.as_str(), &encrypted.content);

    let decrypted =
        bob.machine.decrypt_room_event(raw.cast_ref_unchecked(), room, &settings()).await.unwrap();
    let event: Value = decrypted.event.deserialize_as_unchecked().unwrap();
    assert_eq!(event["type"], "m.room.name");
    assert_eq!(event["state_key"], "");
    assert_eq!(event["content"]["name"], "Secret plans");
    assert_eq!(decrypted.encryption_info.session_id(), Some(session.session_id().as_str()));

    // What the stock machine decrypted passes our pipeline too.
    let verdict = validate_stock_decryption(&alice, room, &raw, &decrypted);
    assert_matches!(verdict, Verdict::Accepted(accepted) => {
        assert_eq!(accepted.slot, name);
        assert_eq!(accepted.provenance.sender_device.as_deref(), Some(device_id(&alice)));
        assert_eq!(accepted.provenance.key_origin, KeyOrigin::Direct);
        assert_eq!(accepted.provenance.message_index, 0);
    });
}

#[tokio::test]
async fn our_pipeline_accepts_a_state_event_encrypted_by_a_stock_machine() {
    let (alice, bob) = alice_and_bob().await;
    let room = room_id!("!room:example.org");

    let sharing =
        EncryptionSettings { sharing_strategy: CollectStrategy::AllDevices, ..Default::default() };
    let requests: Vec<ToDeviceRequest> = alice
        .machine
        .share_room_key(room, [bob.user_id()].into_iter(), sharing)
        .await
        .unwrap()
        .iter()
        .map(|r| (**r).clone())
        .collect();
    deliver(&alice, &requests, &[&bob]).await;
    for request in &requests {
        let response = ruma::api::client::to_device::send_event_to_device::v3::Response::new();
        alice.machine.mark_request_as_sent(&request.txn_id, &response).await.unwrap();
    }

    let topic: Raw<AnyStateEventContent> = content(json!({ "topic": "Quarterly numbers" }));
    let encrypted =
        alice.machine.encrypt_state_event_raw(room, "m.room.topic", "", &topic).await.unwrap();
    let raw = state_event(room, alice.user_id(), "m.room.topic:", encrypted.cast_ref_unchecked());

    let decrypted =
        bob.machine.decrypt_room_event(raw.cast_ref_unchecked(), room, &settings()).await.unwrap();
    let verdict = validate_stock_decryption(&alice, room, &raw, &decrypted);
    assert_matches!(verdict, Verdict::Accepted(accepted) => {
        assert_eq!(accepted.slot, slot("m.room.topic", ""));
        let content: Value = accepted.content.deserialize_as_unchecked().unwrap();
        assert_eq!(content["topic"], "Quarterly numbers");
        assert_eq!(accepted.provenance.event_id, event_id(&raw));
    });
}

/// Runs our pipeline on what a stock machine decrypted, with `sender` as the room's admin.
fn validate_stock_decryption(
    sender: &Peer,
    room: &ruma::RoomId,
    raw: &Raw<Value>,
    decrypted: &matrix_sdk_common::deserialized_responses::DecryptedRoomEvent,
) -> Verdict {
    let facts = DecryptionFacts::from_encryption_info(&decrypted.encryption_info);
    let pl = power_levels(&[(sender.user_id(), 100)], &[]);
    validate(ValidationInput {
        room_id: room,
        event: &parse(raw),
        plaintext: decrypted.event.json().get(),
        facts: &facts,
        power_levels: &pl,
        unproven_creators: Default::default(),
        sender_trust: Default::default(),
    })
}
