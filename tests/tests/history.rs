//! Inviting with history (MSC4268) against the real homeserver: the invitee's client is
//! matrix-sdk 0.18's own bundle receiver plus our extension.

use anyhow::Result;
use crypto_ext::KeyOrigin;
use integration_tests::{
    DEFAULT_TIMEOUT, StateUser, TestUser, join, shared_room, sync_until, wait_until,
};
use matrix_sdk::{deserialized_responses::TimelineEventKind, room::MessagesOptions, ruma::RoomId};
use sdk_ext::{EventKeyOrigin, RoomHistoryExt, RoomStateExt};
use serde_json::json;

/// Alice's room with `visibility`, encrypted state whose name was set twice, and one message,
/// all before Bob is invited with history.
async fn room_with_history(alice: &StateUser, visibility: &str) -> Result<matrix_sdk::Room> {
    let room = shared_room(alice, &[]).await?;
    room.send_state_event_raw(
        "m.room.history_visibility",
        "",
        json!({ "history_visibility": visibility }),
    )
    .await?;
    room.enable_state_encryption().await?;
    room.set_encrypted_name("Older name").await?;
    room.set_encrypted_name("Current name").await?;
    room.send(matrix_sdk::ruma::events::room::message::RoomMessageEventContent::text_plain(
        "said before Bob was invited",
    ))
    .await?;
    Ok(room)
}

async fn first_message(
    user: &TestUser,
    room_id: &RoomId,
) -> Option<matrix_sdk::deserialized_responses::TimelineEvent> {
    let room = user.client.get_room(room_id)?;
    let messages = room.messages(MessagesOptions::backward()).await.ok()?;
    messages.chunk.into_iter().find(|event| {
        event.raw().get_field::<String>("type").ok().flatten().as_deref() == Some("m.room.message")
            || matches!(event.kind, TimelineEventKind::UnableToDecrypt { .. })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitee_reads_shared_history_and_the_current_state_shared_by_the_inviter() -> Result<()>
{
    integration_tests::init_tracing("warn");
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register("bob").await?;
    let room = room_with_history(&alice, "shared").await?;
    let room_id = room.room_id().to_owned();

    let report = room.invite_with_history(bob.user_id()).await?;
    assert_eq!(report.invitee, bob.user_id());
    assert!(report.shared_message_keys >= 1, "{report:?}");
    assert_eq!(report.shared_state_keys, 1, "{report:?}");
    assert_eq!(report.devices_reached, vec![bob.client.device_id().unwrap().to_owned()]);
    assert!(report.devices_skipped.is_empty(), "{report:?}");

    join(&bob, &room_id).await?;
    let bob_room = bob.room(&room_id);
    sync_until(
        &bob.client,
        "Bob reads the current name from the bundle",
        DEFAULT_TIMEOUT,
        || async {
            bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("Current name")
        },
    )
    .await?;
    let record = bob_room.encrypted_state("m.room.name", "").await?.expect("name");
    let provenance = record.provenance().expect("decrypted");
    // The key came twice from Alice: with the invite (used first) and in the bundle.
    assert!(
        matches!(&provenance.key_origin, KeyOrigin::Invite { shared_by } | KeyOrigin::Bundle { shared_by } if shared_by == alice.user_id()),
        "{:?}",
        provenance.key_origin
    );
    assert_eq!(provenance.message_index, 1, "the current event, not the older one");

    wait_until("Bob decrypts the message sent before his invite", DEFAULT_TIMEOUT, || async {
        first_message(&bob, &room_id).await.is_some_and(|e| {
            e.encryption_info().is_some_and(|info| {
                info.forwarder.as_ref().is_some_and(|f| f.user_id == alice.user_id())
            })
        })
    })
    .await?;
    let message = first_message(&bob, &room_id).await.expect("message");
    assert_eq!(message.shared_by().as_deref(), Some(alice.user_id()));
    assert!(matches!(message.key_origin(), Some(KeyOrigin::Bundle { .. })));
    let body: serde_json::Value = message.raw().get_field("content")?.expect("content");
    assert_eq!(body["body"], "said before Bob was invited");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_visibility_withholds_messages_but_still_shares_the_state() -> Result<()> {
    integration_tests::init_tracing("warn");
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register("bob").await?;
    let room = room_with_history(&alice, "joined").await?;
    let room_id = room.room_id().to_owned();

    let report = room.invite_with_history(bob.user_id()).await?;
    assert_eq!(report.shared_message_keys, 0, "{report:?}");
    assert!(report.withheld_keys >= 1, "{report:?}");
    assert_eq!(report.shared_state_keys, 1, "{report:?}");

    join(&bob, &room_id).await?;
    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob reads the current name", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("Current name")
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cross_signing_nothing_is_shared() -> Result<()> {
    integration_tests::init_tracing("warn");
    let alice =
        StateUser::install(TestUser::register_without_cross_signing("alice").await?).await?;
    let bob = StateUser::register("bob").await?;
    let room = shared_room(&alice, &[]).await?;
    let error = room.invite_with_history(bob.user_id()).await.unwrap_err();
    assert!(matches!(error, sdk_ext::Error::NoCrossSigning), "{error}");
    // Not even the invite went out: Bob's next sync knows no such room.
    bob.client
        .sync_once(matrix_sdk::config::SyncSettings::default().timeout(std::time::Duration::ZERO))
        .await?;
    assert!(bob.client.get_room(room.room_id()).is_none());
    Ok(())
}

/// The invite carries the keys of the aesthetic slots: before joining, the invitee's preview
/// shows the encrypted name and topic, which the homeserver only has as ciphertext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invite_preview_shows_the_encrypted_name_and_topic() -> Result<()> {
    integration_tests::init_tracing("warn");
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register("bob").await?;
    let room = room_with_history(&alice, "joined").await?;
    room.set_encrypted_topic("Visible in the invite").await?;
    let room_id = room.room_id().to_owned();

    let report = room.invite_with_history(bob.user_id()).await?;
    assert_eq!(report.preview_keys, 2, "{report:?}");

    sync_until(&bob.client, "Bob's preview shows the name and topic", DEFAULT_TIMEOUT, || async {
        let Some(invited) = bob.client.get_room(&room_id) else { return false };
        invited.invite_preview().await.is_ok_and(|p| {
            p.name.as_deref() == Some("Current name")
                && p.topic.as_deref() == Some("Visible in the invite")
        })
    })
    .await?;
    let invited = bob.client.get_room(&room_id).expect("invited room");
    assert_eq!(invited.state(), matrix_sdk::RoomState::Invited);
    assert_eq!(invited.name(), None, "the homeserver has no name in clear");
    let preview = invited.invite_preview().await?;
    assert_eq!(preview.shared_by.as_deref(), Some(alice.user_id()));

    // After joining, the same keys read the room's state at once.
    join(&bob, &room_id).await?;
    let joined = bob.room(&room_id);
    sync_until(&bob.client, "Bob reads the topic after joining", DEFAULT_TIMEOUT, || async {
        joined.encrypted_topic().await.ok().flatten().as_deref() == Some("Visible in the invite")
    })
    .await?;
    Ok(())
}
