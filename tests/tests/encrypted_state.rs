//! Encrypted room state through sdk-ext, against the real homeserver.

use std::time::Duration;

use anyhow::{Context, Result};
use crypto_ext::{identifiers, testing::Crafter};
use integration_tests::{
    DEFAULT_TIMEOUT, StateUser, alice_and_bob_with_encrypted_state, join, keep_syncing,
    next_update, server_state, set_power_levels, shared_room, sync_until,
};
use matrix_sdk::{
    deserialized_responses::TimelineEventKind,
    ruma::{
        OwnedEventId, RoomId,
        api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset},
        events::room::encrypted::OriginalSyncRoomEncryptedEvent,
        serde::Raw,
    },
};
use sdk_ext::{Error, RejectionReason, RoomStateExt, StateOrigin, StateSlot, StateUpdate};
use serde_json::{Value, json};

fn init() {
    integration_tests::init_tracing("warn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_read_encrypted_name_and_topic_the_server_only_sees_ciphertext() -> Result<()> {
    init();
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register("bob").await?;
    let room = shared_room(&alice, &[&bob]).await?;
    let room_id = room.room_id().to_owned();

    room.enable_state_encryption().await?;
    let sent = room.set_encrypted_name("Operation Nightingale").await?;
    room.set_encrypted_topic("Quarterly numbers, do not forward").await?;

    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob reads the encrypted name and topic", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("Operation Nightingale")
            && bob_room.encrypted_topic().await.ok().flatten().as_deref()
                == Some("Quarterly numbers, do not forward")
    })
    .await?;

    let record = bob_room.encrypted_state("m.room.name", "").await?.expect("name");
    let StateOrigin::Encrypted(provenance) = &record.origin else { panic!("not encrypted") };
    assert_eq!(provenance.event_id, sent.event_id);
    assert_eq!(provenance.sender, alice.user_id());
    assert_eq!(provenance.session_id, sent.session_id);
    assert_eq!(provenance.sender_device.as_deref(), alice.client.device_id());

    // Alice's own client reads it too (from her own state session).
    let alice_room = alice.room(&room_id);
    sync_until(&alice.client, "Alice reads her own name", DEFAULT_TIMEOUT, || async {
        alice_room.encrypted_name().await.ok().flatten().as_deref() == Some("Operation Nightingale")
    })
    .await?;

    // The homeserver's copy of the state holds only ciphertext.
    let state = server_state(&bob, &room_id).await?;
    let dump = serde_json::to_string(&state)?;
    assert!(!dump.contains("Nightingale"), "the name leaked to the server");
    assert!(!dump.contains("Quarterly"), "the topic leaked to the server");
    let packed: Vec<String> = state
        .iter()
        .filter(|e| {
            e.get_field::<String>("type").ok().flatten().as_deref() == Some("m.room.encrypted")
        })
        .filter_map(|e| e.get_field::<String>("state_key").ok().flatten())
        .collect();
    assert!(packed.contains(&"m.room.name:".to_owned()), "{packed:?}");
    assert!(packed.contains(&"m.room.topic:".to_owned()), "{packed:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_state_is_refused_before_anything_is_sent() -> Result<()> {
    init();
    let alice = StateUser::register("alice").await?;
    let room = shared_room(&alice, &[]).await?;
    room.enable_state_encryption().await?;
    for event_type in ["m.room.power_levels", "m.room.join_rules", "m.room.tombstone"] {
        let error = room.set_encrypted_state(event_type, "", json!({})).await.unwrap_err();
        assert!(matches!(error, Error::CriticalType(ref t) if t == event_type), "{error}");
    }
    // A room that has not switched on encrypted state refuses too, rather than leaking.
    let plain = shared_room(&alice, &[]).await?;
    let error = plain.set_encrypted_topic("x").await.unwrap_err();
    assert!(matches!(error, Error::NotEnabled(_)), "{error}");
    Ok(())
}

/// How Bob stops being a member.
#[derive(Clone, Copy, Debug)]
enum Departure {
    Leave,
    Kick,
    Ban,
}

/// Bob departs; the next update of the slot uses a new session that his devices never get, while
/// Carol, still a member, reads it.
async fn a_departed_member_cannot_read_later_state(departure: Departure) -> Result<()> {
    init();
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register("bob").await?;
    let carol = StateUser::register("carol").await?;
    let room = shared_room(&alice, &[&bob, &carol]).await?;
    let room_id = room.room_id().to_owned();
    room.enable_state_encryption().await?;
    let before = room.set_encrypted_topic("before Bob left").await?;

    match departure {
        Departure::Leave => bob.room(&room_id).leave().await?,
        Departure::Kick => room.kick_user(bob.user_id(), Some("testing")).await?,
        Departure::Ban => room.ban_user(bob.user_id(), Some("testing")).await?,
    }
    sync_until(&alice.client, "Alice sees Bob gone", DEFAULT_TIMEOUT, || async {
        !integration_tests::is_joined(&room, bob.user_id()).await
    })
    .await?;
    let after = room.set_encrypted_topic("after Bob left").await?;
    assert_ne!(after.session_id, before.session_id, "the slot session rotated ({departure:?})");

    // Carol reads the new topic, Bob's devices never got the key.
    let carol_room = carol.room(&room_id);
    sync_until(&carol.client, "Carol reads the new topic", DEFAULT_TIMEOUT, || async {
        carol_room.encrypted_topic().await.ok().flatten().as_deref() == Some("after Bob left")
    })
    .await?;
    let raw = encrypted_event_from(&alice, &room_id, &after.event_id).await?;
    let attempt = bob.room(&room_id).decrypt_event(&raw, None).await?;
    assert!(
        matches!(attempt.kind, TimelineEventKind::UnableToDecrypt { .. }),
        "Bob decrypted state sent after he departed ({departure:?})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_left_cannot_read_later_state() -> Result<()> {
    a_departed_member_cannot_read_later_state(Departure::Leave).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_member_cannot_read_later_state() -> Result<()> {
    a_departed_member_cannot_read_later_state(Departure::Kick).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_member_cannot_read_later_state() -> Result<()> {
    a_departed_member_cannot_read_later_state(Departure::Ban).await
}

async fn encrypted_event_from(
    user: &StateUser,
    room_id: &RoomId,
    event_id: &OwnedEventId,
) -> Result<Raw<OriginalSyncRoomEncryptedEvent>> {
    let state = server_state(user, room_id).await?;
    let raw = state
        .into_iter()
        .find(|e| e.get_field::<OwnedEventId>("event_id").ok().flatten().as_ref() == Some(event_id))
        .expect("the event is in the room state");
    Ok(raw.cast_unchecked())
}

/// Mallory, a moderator (power 50: enough for `m.room.encrypted` state, not for the name, which
/// needs 100), crafts encrypted state with a raw Megolm session whose key she sends to Bob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_member_changes_nothing_our_api_reports() -> Result<()> {
    init();
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register("bob").await?;
    let mallory = StateUser::register("mallory").await?;
    let room = shared_room(&alice, &[&bob, &mallory]).await?;
    let room_id = room.room_id().to_owned();

    set_power_levels(&room, &[(mallory.user_id(), 50)], &[("m.room.name", 100)]).await?;
    room.enable_state_encryption().await?;
    room.set_encrypted_name("The real name").await?;
    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob reads the real name", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("The real name")
    })
    .await?;

    // Mallory's crafted session, shared with Bob's devices over Olm.
    let mut crafter = Crafter::new();
    let mallory_room = mallory.room(&room_id);
    sync_until(&mallory.client, "Mallory sees her power", DEFAULT_TIMEOUT, || async {
        mallory_room
            .power_levels()
            .await
            .is_ok_and(|pl| pl.events.contains_key(&"m.room.name".into()))
    })
    .await?;
    mallory.share_crafted_session(&crafter, &room_id, &[bob.user_id()]).await?;

    let own = mallory.ext.own_device().clone();
    let other_room = "!elsewhere:localhost";
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "m.room.power_levels:",
            payload("m.room.power_levels", "", json!({"users": {}}), &room_id),
            "critical_type",
        ),
        (
            "m.room.tombstone:",
            payload(
                "m.room.tombstone",
                "",
                json!({"replacement_room": "!evil:localhost"}),
                &room_id,
            ),
            "critical_type",
        ),
        (
            "m.room.join_rules:",
            payload("m.room.join_rules", "", json!({"join_rule": "public"}), &room_id),
            "critical_type",
        ),
        (
            "m.room.server_acl:",
            payload("m.room.server_acl", "", json!({"allow": ["*"]}), &room_id),
            "critical_type",
        ),
        (
            "m.room.name:",
            payload("m.room.name", "", json!({"name": "Forged name"}), &room_id),
            "insufficient_power",
        ),
        (
            "org.example.status:@alice:localhost",
            payload("org.example.status", &format!("{}", alice.user_id()), json!({}), &room_id),
            "state_key_of_other_user",
        ),
        (
            "m.room.topic:",
            payload("m.room.name", "", json!({"name": "Smuggled name"}), &room_id),
            "packed_key_mismatch",
        ),
        (
            "org.example.replayed:",
            json!({"type": "org.example.replayed", "state_key": "", "content": {}, "room_id": other_room}),
            "wrong_room",
        ),
    ];
    let mut sent = Vec::new();
    for (packed, plaintext, expected) in &cases {
        // The state-key-of-another-user case must name Alice exactly.
        let packed = if packed.starts_with("org.example.status:") {
            format!("org.example.status:{}", alice.user_id())
        } else {
            (*packed).to_owned()
        };
        let content = crafter.encrypt(&own, plaintext);
        let response = mallory_room
            .send_state_event_raw(
                "m.room.encrypted",
                &packed,
                content.cast_unchecked::<matrix_sdk::ruma::events::AnyStateEventContent>(),
            )
            .await?;
        sent.push((response.event_id, *expected));
    }

    sync_until(&bob.client, "Bob rejects every crafted event", Duration::from_secs(60), || async {
        let view = bob_room.encrypted_state_view().await.expect("view");
        sent.iter().all(|(id, _)| view.rejected.iter().any(|r| &r.event_id == id))
    })
    .await?;

    let view = bob_room.encrypted_state_view().await?;
    for (event_id, expected) in &sent {
        let rejected = view.rejected.iter().find(|r| &r.event_id == event_id).expect("rejected");
        let reason = serde_json::to_value(&rejected.reason)?;
        assert_eq!(reason["reason"], *expected, "{event_id}: {:?}", rejected.reason);
        assert_eq!(rejected.sender, mallory.user_id());
    }
    assert!(view.rejected.iter().any(|r| matches!(r.reason, RejectionReason::WrongRoom { .. })));
    // Nothing changed what our API reports.
    assert_eq!(bob_room.encrypted_name().await?.as_deref(), Some("The real name"));
    for record in &view.state {
        assert_ne!(record.sender(), mallory.user_id(), "{record:?}");
    }
    assert!(view.state.iter().all(|r| !crypto_ext::critical::is_critical(&r.slot.event_type)));
    Ok(())
}

fn payload(event_type: &str, state_key: &str, content: Value, room_id: &RoomId) -> Value {
    json!({ "type": event_type, "state_key": state_key, "content": content, "room_id": room_id })
}

/// Encrypted state the client received while the extension was not running is processed when
/// the app starts again, from what the client stored, without a new sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_the_client_stored_is_processed_after_a_restart() -> Result<()> {
    init();
    let alice = StateUser::register("alice").await?;
    let bob = integration_tests::TestUser::register("bob").await?;
    let room = shared_room(&alice, &[&bob]).await?;
    let room_id = room.room_id().to_owned();
    room.enable_state_encryption().await?;
    let sent = room.set_encrypted_topic("Read after restart").await?;

    // Bob's client syncs the event and its key, with no extension installed.
    sync_until(&bob.client, "Bob's client stores the encrypted topic", DEFAULT_TIMEOUT, || async {
        integration_tests::stores_encrypted_state(&bob.client, &room_id).await
    })
    .await?;

    let bob = bob.restart().await?;
    let config = sdk_ext::StateExtConfig::sqlite(bob.store_dir.path().join("state"), "pass");
    let _ext = sdk_ext::StateExtension::install(&bob.client, config).await?;
    let bob_room = bob.client.get_room(&room_id).expect("the room survives the restart");
    let record = bob_room.encrypted_state("m.room.topic", "").await?.expect("processed on install");
    assert_eq!(record.event_id(), &sent.event_id);
    assert_eq!(bob_room.encrypted_topic().await?.as_deref(), Some("Read after restart"));
    Ok(())
}

/// An event whose key arrives later waits as pending, then becomes readable and is announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_event_becomes_readable_when_its_key_arrives() -> Result<()> {
    init();
    let (alice, bob, room) = alice_and_bob_with_encrypted_state().await?;
    let room_id = room.room_id().to_owned();
    let mut updates = bob.ext.subscribe();

    // Alice's client plays a slow network: the event goes out before its key.
    let mut crafter = Crafter::new();
    let room_key = crafter.room_key_content(&room_id);
    let own = alice.ext.own_device().clone();
    let content = crafter
        .encrypt(&own, &payload("m.room.topic", "", json!({"topic": "Late but fine"}), &room_id));
    let response = room
        .send_state_event_raw(
            "m.room.encrypted",
            "m.room.topic:",
            content.cast_unchecked::<matrix_sdk::ruma::events::AnyStateEventContent>(),
        )
        .await?;
    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob holds the event as pending", DEFAULT_TIMEOUT, || async {
        bob_room
            .encrypted_state_view()
            .await
            .is_ok_and(|v| v.pending.iter().any(|p| p.event_id == response.event_id))
    })
    .await?;
    assert_eq!(bob_room.encrypted_topic().await?, None);

    let devices = alice.client.encryption().get_user_devices(bob.user_id()).await?;
    alice
        .client
        .encryption()
        .encrypt_and_send_raw_to_device(
            devices.devices().collect::<Vec<_>>().iter().collect(),
            "m.room_key",
            room_key,
            Default::default(),
        )
        .await?;
    sync_until(&bob.client, "the key arrives and the topic is read", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_topic().await.ok().flatten().as_deref() == Some("Late but fine")
    })
    .await?;
    assert!(bob_room.encrypted_state_view().await?.pending.is_empty());

    let mut announced = false;
    while let Ok(update) = updates.try_recv() {
        if let StateUpdate::Accepted { event_id, was_pending, current, .. } = update
            && event_id == response.event_id
        {
            assert!(was_pending && current);
            announced = true;
        }
    }
    assert!(announced, "the update stream announced the event");
    Ok(())
}

/// State whose session comes from a device the reader cannot know yet (a device of the sender
/// whose keys are not on the homeserver) is rejected as transient, and accepted as soon as the
/// device's keys reach the reader, without a rescan or a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_from_a_device_that_appears_later_is_accepted_when_it_does() -> Result<()> {
    init();
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register("bob").await?;
    let room = shared_room(&alice, &[]).await?;
    let room_id = room.room_id().to_owned();
    room.enable_state_encryption().await?;

    // A second device of Alice's, logged in but not synced yet: it has uploaded no keys.
    let alice2 = alice.login_new_device().await?;
    let new_device = alice2.own_device().await?;

    // A session of the new device's encrypts the topic; Alice's first device sends the event,
    // invites Bob and hands him the key with the invite (taken from the inviter; its creator,
    // the new device, only claimed).
    let mut crafter = Crafter::new();
    let key = crafter.exported_key(&room_id, &new_device);
    let session_id = key.session_id.clone();
    let content = crafter.encrypt(
        &new_device,
        &payload("m.room.topic", "", json!({"topic": "From a new device"}), &room_id),
    );
    let sent = room
        .send_state_event_raw(
            "m.room.encrypted",
            "m.room.topic:",
            content.cast_unchecked::<matrix_sdk::ruma::events::AnyStateEventContent>(),
        )
        .await?
        .event_id;
    room.invite_user_by_id(bob.user_id()).await?;
    sync_until(&bob.client, "the invite arrives", DEFAULT_TIMEOUT, || async {
        bob.client.get_room(&room_id).is_some()
    })
    .await?;
    let keys = json!({ "room_id": room_id, "keys": [key] });
    alice.send_to_devices(bob.user_id(), identifiers::INVITE_STATE_KEYS, &keys).await?;
    sync_until(&bob.client, "Bob holds the key", DEFAULT_TIMEOUT, || async {
        bob.ext.store().inbound_session(&session_id).await.is_ok_and(|s| s.is_some())
    })
    .await?;

    join(&bob, &room_id).await?;
    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob rejects the event for now", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_state_view().await.is_ok_and(|v| {
            v.rejected
                .iter()
                .any(|r| r.event_id == sent && r.reason == RejectionReason::SenderDeviceUnknown)
        })
    })
    .await?;
    assert_eq!(bob_room.encrypted_topic().await?, None);

    // The new device comes online and uploads its keys; Bob's client hears of them.
    let _alice2_online = keep_syncing(&alice2.client);
    let current = next_update(&bob.client, &bob.ext, |update| match update {
        StateUpdate::Accepted { event_id, current, .. } if *event_id == sent => Some(*current),
        _ => None,
    })
    .await?;
    assert!(current);
    assert_eq!(bob_room.encrypted_topic().await?.as_deref(), Some("From a new device"));
    let record = bob_room.encrypted_state("m.room.topic", "").await?.context("topic")?;
    let StateOrigin::Encrypted(provenance) = &record.origin else { panic!("not encrypted") };
    assert_eq!(provenance.sender_device.as_ref(), Some(&new_device.device_id));
    assert!(!provenance.creator_proven, "the inviter's first device vouched for the new one");
    assert!(bob_room.encrypted_state_view().await?.rejected.iter().all(|r| r.event_id != sent));
    Ok(())
}

/// An existing room with a plaintext name and topic moves them into encrypted state: the
/// homeserver stops serving them in clear and members read them through our API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_room_migrates_its_name_and_topic() -> Result<()> {
    init();
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register("bob").await?;
    let room = shared_room(&alice, &[&bob]).await?;
    let room_id = room.room_id().to_owned();
    room.send_state_event_raw("m.room.name", "", json!({ "name": "Plain Pelican" })).await?;
    room.send_state_event_raw("m.room.topic", "", json!({ "topic": "Plain topic" })).await?;
    sync_until(
        &alice.client,
        "Alice's client stores the plaintext name",
        DEFAULT_TIMEOUT,
        || async { room.name().as_deref() == Some("Plain Pelican") },
    )
    .await?;

    let moved = room.migrate_to_encrypted_state().await?;
    let moved: Vec<&str> = moved.iter().map(|s| s.event_type.as_str()).collect();
    assert_eq!(moved, ["m.room.name", "m.room.topic"]);

    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob reads the migrated name and topic", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("Plain Pelican")
            && bob_room.encrypted_topic().await.ok().flatten().as_deref() == Some("Plain topic")
    })
    .await?;
    let record = bob_room.encrypted_state("m.room.name", "").await?.expect("name");
    assert!(record.provenance().is_some(), "the winner is the encrypted copy");

    let dump = serde_json::to_string(&server_state(&bob, &room_id).await?)?;
    assert!(!dump.contains("Plain Pelican"), "the plaintext name is still served");
    assert!(!dump.contains("Plain topic"), "the plaintext topic is still served");
    Ok(())
}

/// The avatar image is uploaded encrypted and the encrypted avatar event points at it; a member
/// downloads and decrypts the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_avatar_round_trips() -> Result<()> {
    init();
    let (_alice, bob, room) = alice_and_bob_with_encrypted_state().await?;
    let room_id = room.room_id().to_owned();
    let image: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    room.set_encrypted_avatar("image/png", &image).await?;

    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob sees the encrypted avatar", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_avatar().await.ok().flatten().is_some()
    })
    .await?;
    let avatar = bob_room.encrypted_avatar().await?.expect("avatar");
    assert_eq!(avatar.mimetype.as_deref(), Some("image/png"));
    let matrix_sdk::ruma::events::room::MediaSource::Encrypted(file) = &avatar.source else {
        panic!("the avatar must reference an encrypted file, got {:?}", avatar.source);
    };
    // The media repository holds ciphertext; the media API decrypts with the file's key.
    let stored = bob
        .client
        .media()
        .get_media_content(
            &matrix_sdk::media::MediaRequestParameters {
                source: matrix_sdk::ruma::events::room::MediaSource::Plain(file.url.clone()),
                format: matrix_sdk::media::MediaFormat::File,
            },
            false,
        )
        .await?;
    assert_ne!(stored, image, "the server must not hold the image in clear");
    let decrypted = bob
        .client
        .media()
        .get_media_content(
            &matrix_sdk::media::MediaRequestParameters {
                source: avatar.source.clone(),
                format: matrix_sdk::media::MediaFormat::File,
            },
            false,
        )
        .await?;
    assert_eq!(decrypted, image);
    Ok(())
}

/// After `shutdown`, syncs are no longer processed (the background task is gone), and a fresh
/// install picks up what was missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_processing_and_a_new_install_catches_up() -> Result<()> {
    init();
    let (_alice, bob, room) = alice_and_bob_with_encrypted_state().await?;
    let room_id = room.room_id().to_owned();

    assert!(bob.ext.is_running());
    bob.ext.shutdown();
    assert!(!bob.ext.is_running());
    room.set_encrypted_topic("while Bob's extension was off").await?;
    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob's client stores the event", DEFAULT_TIMEOUT, || async {
        integration_tests::stores_encrypted_state(&bob.client, &room_id).await
    })
    .await?;
    assert_eq!(bob_room.encrypted_topic().await?, None, "processed after shutdown");

    bob.ext.refresh().await?;
    assert_eq!(bob_room.encrypted_topic().await?.as_deref(), Some("while Bob's extension was off"));
    Ok(())
}

/// A room created through `StateExtension::create_room` has the MSC4362 flag in its first
/// `m.room.encryption` (what Element clients honour), its name never reaches the homeserver in
/// clear, and a member reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_created_with_encrypted_state_carries_the_flag_from_its_creation() -> Result<()> {
    init();
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register("bob").await?;
    let mut request = CreateRoomRequest::new();
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = vec![bob.user_id().to_owned()];
    request.name = Some("Born encrypted".to_owned());
    let room = alice.ext.create_room(request).await?;
    let room_id = room.room_id().to_owned();
    assert!(room.is_state_encrypted().await, "on from the start, without waiting for a sync");

    let state = server_state(&alice, &room_id).await?;
    let encryption: Vec<Value> = state
        .iter()
        .filter(|e| {
            e.get_field::<String>("type").ok().flatten().as_deref() == Some("m.room.encryption")
        })
        .filter_map(|e| e.get_field::<Value>("content").ok().flatten())
        .collect();
    assert_eq!(encryption.len(), 1, "one m.room.encryption, from the creation: {encryption:?}");
    assert_eq!(encryption[0][identifiers::ENCRYPT_STATE_EVENTS_UNSTABLE], Value::Bool(true));
    let dump = serde_json::to_string(&state)?;
    assert!(!dump.contains("Born encrypted"), "the name reached the server in clear");

    join(&bob, &room_id).await?;
    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob reads the name", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("Born encrypted")
    })
    .await?;
    Ok(())
}

/// A member whose power is below what the name needs is refused by our API before anything is
/// sent: no encrypted event, no key shared; an admin's name stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_under_powered_name_is_refused_before_anything_is_sent() -> Result<()> {
    init();
    let (alice, bob, room) = alice_and_bob_with_encrypted_state().await?;
    let room_id = room.room_id().to_owned();
    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob sees state encryption on", DEFAULT_TIMEOUT, || async {
        bob_room.is_state_encrypted().await
    })
    .await?;

    let error = bob_room.set_encrypted_name("Not Bob's to set").await.unwrap_err();
    let Error::NotAllowed(RejectionReason::InsufficientPower { event_type, required, actual }) =
        &error
    else {
        panic!("expected a power refusal, got {error:?}");
    };
    assert_eq!((event_type.as_str(), *required, *actual), ("m.room.name", 50, 0));
    let slot = StateSlot::new("m.room.name", "");
    assert!(bob.ext.store().outbound_session(&room_id, &slot).await?.is_none(), "no key shared");
    let sent_by_bob = server_state(&alice, &room_id).await?.iter().any(|e| {
        e.get_field::<String>("type").ok().flatten().as_deref() == Some("m.room.encrypted")
            && e.get_field::<String>("sender").ok().flatten().as_deref()
                == Some(bob.user_id().as_str())
    });
    assert!(!sent_by_bob, "nothing reached the homeserver");
    Ok(())
}

/// An existing room moves to encrypted state by an upgrade, which Element clients honour: the
/// new room carries the flag from its creation and names the old one as predecessor, the name
/// set in clear arrives there encrypted (never in clear), the old room's tombstone points to
/// the new one, and a member invited with history reads the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_room_upgrades_to_a_room_with_encrypted_state() -> Result<()> {
    init();
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register("bob").await?;
    let old = shared_room(&alice, &[&bob]).await?;
    let old_id = old.room_id().to_owned();
    old.set_name("Named in clear".to_owned()).await?;
    sync_until(&alice.client, "Alice's client has the plaintext name", DEFAULT_TIMEOUT, || async {
        old.name().as_deref() == Some("Named in clear")
    })
    .await?;

    let upgrade = old.upgrade_to_encrypted_state().await?;
    let new_id = upgrade.room.room_id().to_owned();
    assert!(upgrade.carried.contains(&StateSlot::new("m.room.name", "")), "{:?}", upgrade.carried);
    assert_eq!(upgrade.invited.len(), 1, "{upgrade:?}");
    assert_eq!(upgrade.invited[0].invitee, bob.user_id());
    assert!(upgrade.not_invited.is_empty(), "{upgrade:?}");

    let field = |state: &[Raw<matrix_sdk::ruma::events::AnyStateEvent>], event_type: &str| {
        state
            .iter()
            .filter(|e| e.get_field::<String>("type").ok().flatten().as_deref() == Some(event_type))
            .filter_map(|e| e.get_field::<Value>("content").ok().flatten())
            .collect::<Vec<Value>>()
    };
    let new_state = server_state(&alice, &new_id).await?;
    let encryption = field(&new_state, "m.room.encryption");
    assert_eq!(encryption.len(), 1, "{encryption:?}");
    assert_eq!(encryption[0][identifiers::ENCRYPT_STATE_EVENTS_UNSTABLE], Value::Bool(true));
    let create = field(&new_state, "m.room.create");
    assert_eq!(create[0]["predecessor"]["room_id"], json!(old_id));
    assert!(!serde_json::to_string(&new_state)?.contains("Named in clear"), "in clear");
    let tombstone = field(&server_state(&alice, &old_id).await?, "m.room.tombstone");
    assert_eq!(tombstone[0]["replacement_room"], json!(new_id));

    join(&bob, &new_id).await?;
    let bob_room = bob.room(&new_id);
    sync_until(&bob.client, "Bob reads the carried name", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("Named in clear")
    })
    .await?;
    Ok(())
}
