//! Restricted rooms before joining on the real homeserver: the member who set a restricted
//! room's join rules pushes its encrypted name and topic, with their keys, to the members of the
//! allowed room, so they see the room's look before joining; refusals of untrusted previews.

use anyhow::{Context, Result};
use crypto_ext::{InboundStateSession, KeyOrigin, identifiers};
use integration_tests::{
    DEFAULT_TIMEOUT, StateUser, TestUser, join, keep_syncing, next_update, restricted_room,
    set_power_levels, shared_room, sync_until,
};
use matrix_sdk::ruma::{OwnedRoomId, RoomId};
use sdk_ext::{PreviewRefusal, RoomStateExt, StateUpdate};
use serde_json::{Value, json};

/// The name shown in `user`'s preview of `room_id`, if any.
async fn previewed_name(user: &StateUser, room_id: &RoomId) -> Option<String> {
    user.ext.restricted_preview(room_id).await.ok().flatten().and_then(|p| p.name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_the_allowed_room_see_the_name_before_joining_and_never_an_older_one()
-> Result<()> {
    integration_tests::init_tracing("warn");
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register("bob").await?;
    let space = shared_room(&alice, &[&bob]).await?;
    let room = restricted_room(&alice, space.room_id()).await?;
    let room_id: OwnedRoomId = room.room_id().to_owned();
    room.enable_state_encryption().await?;
    room.set_encrypted_name("Planning").await?;
    room.set_encrypted_topic("Members of the space only").await?;
    let _alice_online = keep_syncing(&alice.client);

    // Bob is in the space, not in the room: the homeserver gives him none of its state, and
    // still his client shows its name and topic, shared by Alice through the space.
    sync_until(&bob.client, "Bob previews the restricted room", DEFAULT_TIMEOUT, || async {
        bob.ext.restricted_preview(&room_id).await.ok().flatten().is_some_and(|p| {
            p.name.as_deref() == Some("Planning")
                && p.topic.as_deref() == Some("Members of the space only")
        })
    })
    .await?;
    assert!(bob.client.get_room(&room_id).is_none(), "Bob is not in the room");
    let preview = bob.ext.restricted_preview(&room_id).await?.expect("a preview");
    assert_eq!(preview.shared_by.as_deref(), Some(alice.user_id()));
    assert_eq!(preview.via.as_deref(), Some(space.room_id()));

    // A new name reaches the previewers too.
    room.set_encrypted_name("Planning, second draft").await?;
    sync_until(&bob.client, "Bob previews the new name", DEFAULT_TIMEOUT, || async {
        previewed_name(&bob, &room_id).await.as_deref() == Some("Planning, second draft")
    })
    .await?;

    // Carol joins the space after the rename: she is sent the current name only, from the
    // index of its event, and no key that opens the first name.
    let carol = StateUser::register("carol").await?;
    space.invite_user_by_id(carol.user_id()).await?;
    join(&carol, &space.room_id().to_owned()).await?;
    sync_until(&carol.client, "Carol previews the restricted room", DEFAULT_TIMEOUT, || async {
        previewed_name(&carol, &room_id).await.as_deref() == Some("Planning, second draft")
    })
    .await?;
    let received = carol.ext.store().received_preview(&room_id).await?.expect("kept");
    let name_event = received
        .events
        .iter()
        .find(|e| {
            e.get_field::<String>("state_key").ok().flatten().as_deref() == Some("m.room.name:")
        })
        .expect("the name's event");
    let content: Value = name_event.get_field("content")?.expect("content");
    let session_id = content["session_id"].as_str().expect("session id");
    let pickle = carol.ext.store().inbound_session(session_id).await?.expect("the name's key");
    let session = InboundStateSession::from_pickle(pickle);
    assert_eq!(session.first_known_index(), 1, "the key starts at the current name");
    assert_eq!(session.key_origin(), &KeyOrigin::Preview { shared_by: alice.user_id().to_owned() });

    // Joining through the space, Bob reads the room's own state at once, and the preview
    // gives way to it.
    bob.client.join_room_by_id(&room_id).await?;
    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob reads the room's name after joining", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("Planning, second draft")
    })
    .await?;
    sync_until(&bob.client, "Bob's preview is forgotten", DEFAULT_TIMEOUT, || async {
        bob.ext.restricted_preview(&room_id).await.is_ok_and(|p| p.is_none())
    })
    .await?;

    // Dave joins the space: Alice's client sends the unchanged preview to Dave's one device
    // only, not again to Carol's (each device gets each version once), nor to Bob, a member now.
    let mut alice_updates = alice.ext.subscribe();
    let dave = StateUser::register("dave").await?;
    space.invite_user_by_id(dave.user_id()).await?;
    join(&dave, &space.room_id().to_owned()).await?;
    let devices = tokio::time::timeout(DEFAULT_TIMEOUT, async {
        loop {
            if let Ok(StateUpdate::PreviewSent { room_id: sent_for, devices, .. }) =
                alice_updates.recv().await
                && sent_for == room_id
            {
                return devices;
            }
        }
    })
    .await?;
    assert_eq!(devices, 1, "only Dave's device is sent the preview");
    sync_until(&dave.client, "Dave previews the restricted room", DEFAULT_TIMEOUT, || async {
        previewed_name(&dave, &room_id).await.as_deref() == Some("Planning, second draft")
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_moderator_pushes_once_the_one_who_set_the_allow_list_left() -> Result<()> {
    integration_tests::init_tracing("warn");
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register("bob").await?;
    let carol = StateUser::register("carol").await?;
    let space = shared_room(&alice, &[&bob, &carol]).await?;
    set_power_levels(&space, &[(carol.user_id(), 50)], &[]).await?;
    let room = restricted_room(&alice, space.room_id()).await?;
    let room_id: OwnedRoomId = room.room_id().to_owned();
    room.enable_state_encryption().await?;
    room.set_encrypted_name("Planning").await?;

    // Carol joins through the space, becomes an admin of the room, reads its name (Alice's
    // client, online, answers her key request).
    let alice_online = keep_syncing(&alice.client);
    sync_until(&carol.client, "Carol is a moderator of the space", DEFAULT_TIMEOUT, || async {
        carol
            .room(space.room_id())
            .power_levels()
            .await
            .is_ok_and(|levels| levels.for_user(carol.user_id()) > levels.users_default)
    })
    .await?;
    carol.client.join_room_by_id(&room_id).await?;
    sync_until(&alice.client, "Alice sees Carol joined", DEFAULT_TIMEOUT, || async {
        integration_tests::is_joined(&room, carol.user_id()).await
    })
    .await?;
    set_power_levels(&room, &[(carol.user_id(), 100)], &[]).await?;
    let carol_room = carol.room(&room_id);
    sync_until(&carol.client, "Carol reads the name", DEFAULT_TIMEOUT, || async {
        carol_room.encrypted_name().await.ok().flatten().as_deref() == Some("Planning")
    })
    .await?;

    // Alice, who set the allow-list, leaves: Carol's client takes over the pushing.
    room.leave().await?;
    drop(alice_online);
    let _carol_online = keep_syncing(&carol.client);
    sync_until(&bob.client, "Bob previews the room, from Carol", DEFAULT_TIMEOUT, || async {
        bob.ext.restricted_preview(&room_id).await.ok().flatten().is_some_and(|p| {
            p.name.as_deref() == Some("Planning") && p.shared_by.as_deref() == Some(carol.user_id())
        })
    })
    .await?;
    // Dave joins the space now: his only copy of the name's key is Carol's, and still Alice's
    // name reads as Alice's, proven by the claim her device signed (her event carries it), not
    // by Carol's word.
    let dave = StateUser::register("dave").await?;
    space.invite_user_by_id(dave.user_id()).await?;
    join(&dave, &space.room_id().to_owned()).await?;
    sync_until(&dave.client, "Dave previews the room, from Carol", DEFAULT_TIMEOUT, || async {
        previewed_name(&dave, &room_id).await.as_deref() == Some("Planning")
    })
    .await?;
    let preview = dave.ext.restricted_preview(&room_id).await?.context("preview")?;
    assert_eq!(preview.shared_by.as_deref(), Some(carol.user_id()));
    assert!(preview.creators_proven, "{preview:?}");
    Ok(())
}

/// Waits for `user`'s extension to refuse a preview from `sharer` with `reason`.
async fn refused(user: &StateUser, sharer: &TestUser, reason: PreviewRefusal) -> Result<()> {
    let taken = next_update(&user.client, &user.ext, |update| match update {
        StateUpdate::PreviewRefused { sharer: who, reason: why, .. }
            if who == sharer.user_id() && *why == reason =>
        {
            Some(false)
        }
        StateUpdate::PreviewReceived { shared_by, .. } if shared_by == sharer.user_id() => {
            Some(true)
        }
        _ => None,
    })
    .await?;
    assert!(!taken, "a preview that should be refused was taken");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_from_untrusted_senders_or_for_foreign_rooms_are_refused() -> Result<()> {
    integration_tests::init_tracing("warn");
    // Alice's own client pushes nothing here: only the hand-made previews reach Bob.
    let alice = StateUser::register_with("alice", |config| {
        config.restricted_previews.share = false;
    })
    .await?;
    let bob = StateUser::register("bob").await?;
    let mallory = StateUser::register("mallory").await?;
    let carol = StateUser::register("carol").await?;
    let space = shared_room(&alice, &[&bob, &mallory, &carol]).await?;
    set_power_levels(&space, &[(carol.user_id(), 50)], &[]).await?;
    let room = restricted_room(&alice, space.room_id()).await?;
    room.enable_state_encryption().await?;
    room.set_encrypted_name("Planning").await?;
    let elsewhere = shared_room(&alice, &[&mallory]).await?;

    // Mallory, a plain member of the space, claims a name for the room.
    let forged =
        json!({ "room_id": room.room_id(), "via": space.room_id(), "events": [], "keys": [] });
    mallory.send_to_devices(bob.user_id(), identifiers::RESTRICTED_PREVIEW, &forged).await?;
    refused(&bob, &mallory, PreviewRefusal::SharerNotTrusted).await?;

    // Alice names a room Bob is not in as the way in.
    let foreign =
        json!({ "room_id": room.room_id(), "via": elsewhere.room_id(), "events": [], "keys": [] });
    alice.send_to_devices(bob.user_id(), identifiers::RESTRICTED_PREVIEW, &foreign).await?;
    refused(&bob, &alice, PreviewRefusal::NotInAllowedRoom).await?;

    // Carol, a moderator of the space, sends the room's real encrypted name without its key.
    let carol_space = carol.room(space.room_id());
    sync_until(&carol.client, "Carol sees her power level", DEFAULT_TIMEOUT, || async {
        carol_space
            .power_levels()
            .await
            .is_ok_and(|levels| levels.for_user(carol.user_id()) > levels.users_default)
    })
    .await?;
    sync_until(&bob.client, "Bob sees Carol's power level", DEFAULT_TIMEOUT, || async {
        bob.room(space.room_id())
            .power_levels()
            .await
            .is_ok_and(|levels| levels.for_user(carol.user_id()) > levels.users_default)
    })
    .await?;
    let event = integration_tests::server_state(&alice, room.room_id())
        .await?
        .into_iter()
        .find(|e| {
            e.get_field::<String>("type").ok().flatten().as_deref() == Some("m.room.encrypted")
        })
        .expect("the encrypted name");
    let keyless =
        json!({ "room_id": room.room_id(), "via": space.room_id(), "events": [event], "keys": [] });
    carol.send_to_devices(bob.user_id(), identifiers::RESTRICTED_PREVIEW, &keyless).await?;
    refused(&bob, &carol, PreviewRefusal::NothingValid).await?;
    Ok(())
}
