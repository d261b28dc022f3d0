//! Key requests for state on the real homeserver: members who join without a bundle still read
//! the room's encrypted state once a member's client answers; refusals; never an older value.

use std::time::Duration;

use anyhow::Result;
use crypto_ext::{InboundStateSession, KeyOrigin, OutboundStateSession, StateSlot};
use integration_tests::{
    DEFAULT_TIMEOUT, StateUser, join, keep_syncing, next_update, restricted_room,
    room_with_an_admin, shared_room, sync_until, wait_until,
};
use matrix_sdk::{
    Room,
    deserialized_responses::{VerificationLevel, VerificationState},
    encryption::LocalTrust,
    ruma::{
        OwnedRoomId, RoomId, TransactionId,
        api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset},
        events::{InitialStateEvent, room::encryption::RoomEncryptionEventContent},
    },
};
use sdk_ext::{KeyRequestRefusal, RoomStateExt, StateUpdate};
use serde_json::json;

/// A user whose extension asks again (and escalates) after one second, not thirty.
async fn impatient(prefix: &str) -> Result<StateUser> {
    StateUser::register_with(prefix, |config| {
        config.key_requests.escalation_delay = Duration::from_secs(1);
    })
    .await
}

/// The session of the room's current encrypted name, as the homeserver has it.
async fn name_session(room: &Room) -> Result<String> {
    let raw = room
        .get_state_event(matrix_sdk::ruma::events::StateEventType::RoomEncrypted, "m.room.name:")
        .await?
        .ok_or_else(|| anyhow::anyhow!("no encrypted name"))?;
    let matrix_sdk::deserialized_responses::RawAnySyncOrStrippedState::Sync(raw) = raw else {
        anyhow::bail!("stripped state");
    };
    let content: serde_json::Value = raw.get_field("content")?.expect("content");
    Ok(content["session_id"].as_str().expect("session id").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_whose_inviter_is_offline_reads_the_name_once_an_admin_answers() -> Result<()> {
    integration_tests::init_tracing("warn");
    let alice = StateUser::register("alice").await?;
    let carol = StateUser::register("carol").await?;
    let bob = impatient("bob").await?;
    let room = room_with_an_admin(&alice, &carol, &["Older name", "Current name"]).await?;
    let room_id = room.room_id().to_owned();

    // A plain invite: no bundle, no invite keys. Alice then goes offline (she never syncs
    // again); Carol's client stays online.
    room.invite_user_by_id(bob.user_id()).await?;
    let _carol_online = keep_syncing(&carol.client);
    let mut carol_updates = carol.ext.subscribe();
    join(&bob, &room_id).await?;
    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob reads the name Carol shared", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("Current name")
    })
    .await?;

    let record = bob_room.encrypted_state("m.room.name", "").await?.expect("name");
    let provenance = record.provenance().expect("encrypted");
    assert_eq!(
        provenance.key_origin,
        KeyOrigin::KeyShare { shared_by: carol.user_id().to_owned() }
    );
    assert_eq!(provenance.sender, alice.user_id(), "Alice's event, Carol's key");
    // Carol's word is not proof that Alice's device created the session, but the claim Alice's
    // device signed, which her event carries, is: the value reads with her device's own trust
    // (cross-signed by Alice, whose identity Bob has not verified), not as an insecure source.
    assert!(provenance.creator_proven, "Alice's signed claim proves her device");
    assert_eq!(
        provenance.sender_device.as_deref(),
        Some(alice.client.device_id().expect("device"))
    );
    assert_eq!(
        provenance.verification,
        Some(VerificationState::Unverified(VerificationLevel::UnverifiedIdentity))
    );
    // Carol's client says it answered.
    let answered = tokio::time::timeout(DEFAULT_TIMEOUT, async {
        loop {
            if let Ok(StateUpdate::KeyRequestAnswered { requester, keys, .. }) =
                carol_updates.recv().await
                && requester == bob.user_id()
            {
                return keys;
            }
        }
    })
    .await?;
    assert_eq!(answered, 1);

    // The key Bob got starts at the current event: the older name is out of his reach.
    let session_id = name_session(&bob_room).await?;
    let pickle = bob.ext.store().inbound_session(&session_id).await?.expect("the shared key");
    assert_eq!(InboundStateSession::from_pickle(pickle).first_known_index(), 1);
    let history =
        bob.ext.store().slot_history(&room_id, &StateSlot::new("m.room.name", "")).await?;
    assert_eq!(history.len(), 1, "only the current name");
    // Nothing is asked for any more.
    wait_until("Bob's request is closed", DEFAULT_TIMEOUT, || async {
        bob.ext.store().key_requests(&room_id).await.is_ok_and(|r| r.is_empty())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_room_joined_without_invite_shows_its_name() -> Result<()> {
    integration_tests::init_tracing("warn");
    let alice = StateUser::register("alice").await?;
    let bob = impatient("bob").await?;
    let mut request = CreateRoom::new();
    request.preset = Some(RoomPreset::PublicChat);
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = alice.client.create_room(request).await?;
    room.enable_state_encryption().await?;
    room.set_encrypted_name("A public room").await?;
    let room_id: OwnedRoomId = room.room_id().to_owned();
    let _alice_online = keep_syncing(&alice.client);

    bob.client.join_room_by_id(&room_id).await?;
    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob reads the public room's name", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("A public room")
    })
    .await?;
    Ok(())
}

/// Sends Carol's devices a request for `session_id` from `from`'s client, as our extension
/// would.
async fn request_from(
    from: &StateUser,
    to: &StateUser,
    room_id: &RoomId,
    session_id: &str,
) -> Result<()> {
    let content = json!({
        "room_id": room_id,
        "request_id": TransactionId::new(),
        "session_ids": [session_id],
    });
    from.send_to_devices(to.user_id(), crypto_ext::identifiers::STATE_KEY_REQUEST, &content).await
}

/// Carol's client refuses `requester` with `reason` (her update stream says so).
async fn refused(
    carol: &StateUser,
    requester: &StateUser,
    reason: KeyRequestRefusal,
) -> Result<()> {
    let answered = next_update(&carol.client, &carol.ext, |update| match update {
        StateUpdate::KeyRequestRefused { requester: who, reason: why, .. }
            if who == requester.user_id() && *why == reason =>
        {
            Some(false)
        }
        StateUpdate::KeyRequestAnswered { requester: who, .. } if who == requester.user_id() => {
            Some(true)
        }
        _ => None,
    })
    .await?;
    assert!(!answered, "Carol answered a request she should refuse");
    Ok(())
}

/// Alice's room with Carol as second admin, which Bob joined by invite; Alice stays offline.
async fn bob_joined() -> Result<(StateUser, StateUser, OwnedRoomId)> {
    integration_tests::init_tracing("warn");
    let alice = StateUser::register("alice").await?;
    let carol = StateUser::register("carol").await?;
    let bob = StateUser::register("bob").await?;
    let room = room_with_an_admin(&alice, &carol, &["Current name"]).await?;
    let room_id = room.room_id().to_owned();
    room.invite_user_by_id(bob.user_id()).await?;
    join(&bob, &room_id).await?;
    Ok((carol, bob, room_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_who_left_is_refused() -> Result<()> {
    let (carol, bob, room_id) = bob_joined().await?;
    let session_id = name_session(&carol.room(&room_id)).await?;
    bob.room(&room_id).leave().await?;
    let carol_room = carol.room(&room_id);
    sync_until(&carol.client, "Carol sees Bob leave", DEFAULT_TIMEOUT, || async {
        !integration_tests::is_joined(&carol_room, bob.user_id()).await
    })
    .await?;

    request_from(&bob, &carol, &room_id, &session_id).await?;
    refused(&carol, &bob, KeyRequestRefusal::RequesterNotJoined).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_the_responder_blocked_is_refused() -> Result<()> {
    let (carol, bob, room_id) = bob_joined().await?;
    let carol_room = carol.room(&room_id);
    sync_until(&carol.client, "Carol sees Bob join", DEFAULT_TIMEOUT, || async {
        integration_tests::is_joined(&carol_room, bob.user_id()).await
    })
    .await?;
    let encryption = carol.client.encryption();
    encryption.request_user_identity(bob.user_id()).await?;
    let device = encryption
        .get_device(bob.user_id(), bob.client.device_id().expect("device"))
        .await?
        .expect("Bob's device");
    device.set_local_trust(LocalTrust::BlackListed).await?;

    let session_id = name_session(&carol.room(&room_id)).await?;
    request_from(&bob, &carol, &room_id, &session_id).await?;
    refused(&carol, &bob, KeyRequestRefusal::DeviceNotAllowed).await?;
    // Bob's client holds the encrypted name (and its own extension asks for the key too), but
    // the only member online refuses him: the name stays unreadable.
    sync_until(&bob.client, "Bob stores the encrypted name", DEFAULT_TIMEOUT, || async {
        integration_tests::stores_encrypted_state(&bob.client, &room_id).await
    })
    .await?;
    assert_eq!(bob.room(&room_id).encrypted_name().await?, None);
    assert!(!bob.ext.store().pending_in_room(&room_id).await?.is_empty(), "waiting for its key");
    Ok(())
}

/// The current name's key, exported by Alice (its creator) at the name's current index.
async fn current_name_key(alice: &StateUser, room_id: &RoomId) -> Result<serde_json::Value> {
    let pickle = alice
        .ext
        .store()
        .outbound_session(room_id, &StateSlot::new("m.room.name", ""))
        .await?
        .ok_or_else(|| anyhow::anyhow!("Alice's name session"))?;
    let key = OutboundStateSession::from_pickle(pickle)
        .export_current(alice.ext.own_device())
        .ok_or_else(|| anyhow::anyhow!("no current name"))?;
    Ok(serde_json::to_value(key)?)
}

/// `key` (an exported room key as JSON) with its ratchet replaced by junk: the same session id,
/// a copy anyone can forge since the export format is unsigned.
fn forged(key: &serde_json::Value) -> Result<serde_json::Value> {
    use crypto_ext::vodozemac::megolm::ExportedSessionKey;
    let session_key = key["session_key"].as_str().expect("a session key");
    let mut bytes = ExportedSessionKey::from_base64(session_key)?.to_bytes();
    // version (1 byte), index (4), ratchet (128), signing key (32)
    for byte in &mut bytes[5..133] {
        *byte ^= 0x5a;
    }
    let mut forged = key.clone();
    forged["session_key"] = json!(ExportedSessionKey::from_bytes(&bytes)?.to_base64());
    Ok(forged)
}

/// A forged copy of a real session held first does not block the genuine key: Alice, the
/// inviter, hands Bob a junk copy of the name session with the invite; the genuine key that
/// answers his request later still decrypts the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_key_held_first_does_not_block_the_genuine_one() -> Result<()> {
    integration_tests::init_tracing("warn");
    let alice = StateUser::register("alice").await?;
    let carol = StateUser::register("carol").await?;
    let bob = impatient("bob").await?;
    let room = room_with_an_admin(&alice, &carol, &["Current name"]).await?;
    let room_id = room.room_id().to_owned();
    let genuine = current_name_key(&alice, &room_id).await?;
    let session_id = genuine["session_id"].as_str().expect("session id").to_owned();

    room.invite_user_by_id(bob.user_id()).await?;
    sync_until(&bob.client, "the invite arrives", DEFAULT_TIMEOUT, || async {
        bob.client.get_room(&room_id).is_some()
    })
    .await?;
    let keys = json!({ "room_id": room_id, "keys": [forged(&genuine)?] });
    alice.send_to_devices(bob.user_id(), crypto_ext::identifiers::INVITE_STATE_KEYS, &keys).await?;
    sync_until(&bob.client, "Bob holds the forged copy", DEFAULT_TIMEOUT, || async {
        bob.ext.store().inbound_session(&session_id).await.is_ok_and(|s| s.is_some())
    })
    .await?;

    // Bob joins; the forged copy does not decrypt the name, so he asks, and Carol's client
    // answers with the genuine key.
    let _carol_online = keep_syncing(&carol.client);
    join(&bob, &room_id).await?;
    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob reads the name with the genuine key", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("Current name")
    })
    .await?;
    let record = bob_room.encrypted_state("m.room.name", "").await?.expect("name");
    assert_eq!(record.provenance().expect("encrypted").sender, alice.user_id());
    Ok(())
}

/// Keys are taken only in answer to a request we sent, from a device we asked. The positive
/// control is `a_joiner_whose_inviter_is_offline_reads_the_name_once_an_admin_answers`: the same
/// key from the same admin, asked for, is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_keys_nobody_asked_for_are_not_kept() -> Result<()> {
    integration_tests::init_tracing("warn");
    let alice = StateUser::register("alice").await?;
    let carol = StateUser::register("carol").await?;
    // Bob never asks: any key that reaches him comes unasked.
    let bob = StateUser::register_with("bob", |config| config.key_requests.request = false).await?;
    let room = room_with_an_admin(&alice, &carol, &["Current name"]).await?;
    let room_id = room.room_id().to_owned();
    room.invite_user_by_id(bob.user_id()).await?;
    join(&bob, &room_id).await?;
    sync_until(&bob.client, "Bob waits for the name's key", DEFAULT_TIMEOUT, || async {
        !bob.ext.store().pending_in_room(&room_id).await.unwrap_or_default().is_empty()
    })
    .await?;
    let session_id = name_session(&bob.room(&room_id)).await?;

    // Carol, an admin and a member, answers a request Bob never sent, with the real key.
    let share = json!({
        "room_id": room_id,
        "request_id": TransactionId::new(),
        "keys": [current_name_key(&alice, &room_id).await?],
    });
    carol.send_to_devices(bob.user_id(), crypto_ext::identifiers::STATE_KEY_SHARE, &share).await?;
    // Then she asks Bob for that key, which he lacks: to-device messages arrive in order, so
    // once his client refuses, it has handled the share.
    request_from(&carol, &bob, &room_id, &session_id).await?;
    refused(&bob, &carol, KeyRequestRefusal::NothingToShare).await?;

    assert!(bob.ext.store().inbound_session(&session_id).await?.is_none(), "not kept");
    assert_eq!(bob.room(&room_id).encrypted_name().await?, None);
    assert!(!bob.ext.store().pending_in_room(&room_id).await?.is_empty(), "still waiting");
    Ok(())
}

/// A restricted room (MSC3083) that admits the members of another room: Bob, a member of that
/// room, joins without invite and reads the encrypted name once a member's client answers. Alice
/// pushes no preview here (see `restricted.rs` for that): the key comes through a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_room_joined_through_the_allowed_room_shows_its_name() -> Result<()> {
    integration_tests::init_tracing("warn");
    let alice = StateUser::register_with("alice", |config| {
        config.restricted_previews.share = false;
    })
    .await?;
    let bob = impatient("bob").await?;
    let space = shared_room(&alice, &[&bob]).await?;

    let room = restricted_room(&alice, space.room_id()).await?;
    room.enable_state_encryption().await?;
    room.set_encrypted_name("Members of the space only").await?;
    let room_id: OwnedRoomId = room.room_id().to_owned();
    let _alice_online = keep_syncing(&alice.client);

    bob.client.join_room_by_id(&room_id).await?;
    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob reads the restricted room's name", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref()
            == Some("Members of the space only")
    })
    .await?;
    Ok(())
}
