//! Element Web's engine in the room: a matrix-js-sdk 43 client (Rust crypto through WASM,
//! encrypted state events on), the `interop/js-peer` program, against the real homeserver.

use anyhow::Result;
use integration_tests::{
    DEFAULT_TIMEOUT, JsPeer, StateUser, is_joined, join, server_state, set_power_levels,
    sync_until, wait_until,
};
use matrix_sdk::ruma::{
    OwnedRoomId,
    api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset},
    events::room::message::RoomMessageEventContent,
};
use sdk_ext::{RoomHistoryExt, RoomStateExt};

fn init() {
    integration_tests::init_tracing("warn");
}

/// A private room Alice creates with encrypted state, inviting `invitees`.
async fn created_room(alice: &StateUser, invitees: &[&JsPeer]) -> Result<matrix_sdk::Room> {
    let mut request = CreateRoomRequest::new();
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = invitees.iter().map(|peer| peer.user_id.clone()).collect();
    Ok(alice.ext.create_room(request).await?)
}

/// Alice and a matrix-js-sdk user at power 50 (`events` set the types' levels), joined to a
/// room Alice created with encrypted state.
async fn alice_and_element(
    events: &[(&str, i64)],
) -> Result<(StateUser, JsPeer, matrix_sdk::Room)> {
    init();
    let alice = StateUser::register("alice").await?;
    let mut element = JsPeer::register("element").await?;
    let room = created_room(&alice, &[&element]).await?;
    element.join(room.room_id()).await?;
    sync_until(&alice.client, "the Element user joined", DEFAULT_TIMEOUT, || async {
        is_joined(&room, &element.user_id).await
    })
    .await?;
    set_power_levels(&room, &[(&element.user_id, 50)], events).await?;
    Ok((alice, element, room))
}

/// In a room created through our API, our encrypted name shows in the matrix-js-sdk client,
/// and its name change goes out encrypted (the homeserver's copy is ciphertext) and reads
/// through our API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn element_and_ours_read_each_other_in_a_room_created_with_encrypted_state() -> Result<()> {
    let (alice, mut element, room) = alice_and_element(&[]).await?;
    let room_id: OwnedRoomId = room.room_id().to_owned();

    room.set_encrypted_name("Set through sdk-ext").await?;
    let (matched, seen) = element.wait_for_state(&room_id, "Set through sdk-ext", None, 30).await?;
    assert!(matched, "the Element client showed {seen}");

    element.set_name(&room_id, "Set in Element").await?;
    sync_until(&alice.client, "our client reads Element's name", DEFAULT_TIMEOUT, || async {
        room.encrypted_name().await.ok().flatten().as_deref() == Some("Set in Element")
    })
    .await?;
    let record = room.encrypted_state("m.room.name", "").await?.expect("name");
    let provenance = record.provenance().expect("decrypted from encrypted state");
    assert_eq!(provenance.sender, element.user_id);
    let state = server_state(&alice, &room_id).await?;
    assert!(!serde_json::to_string(&state)?.contains("Set in Element"), "the name went in clear");
    Ok(())
}

/// A matrix-js-sdk invitee who accepts the moment the invite arrives reads the message sent
/// before the invite and the encrypted name: our bundle was shared before the invite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_element_invitee_who_accepts_at_once_reads_history_and_the_name() -> Result<()> {
    init();
    let alice = StateUser::register("alice").await?;
    let mut element = JsPeer::register("element").await?;
    let room = created_room(&alice, &[]).await?;
    let room_id: OwnedRoomId = room.room_id().to_owned();
    room.set_encrypted_name("Named before Element came").await?;
    room.send(RoomMessageEventContent::text_plain("said before Element came")).await?;

    room.invite_with_history(&element.user_id).await?;
    element.join(&room_id).await?;
    assert!(
        element.wait_for_message(&room_id, "said before Element came", 30).await?,
        "the Element invitee reads the pre-invite message"
    );
    let (matched, seen) =
        element.wait_for_state(&room_id, "Named before Element came", None, 30).await?;
    assert!(matched, "the Element invitee showed {seen}");
    Ok(())
}

/// A matrix-js-sdk member whose power allows `m.room.encrypted` but not the name sets the name
/// encrypted (the homeserver sees only the outer type): our readers reject it for power, and
/// the room's real name stays, also when both reach our client in one sync (matrix-js-sdk
/// itself shows the forged name: it does not judge the inner type's power). The control: the
/// same member's name once promoted is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_under_powered_element_member_cannot_rename_the_room_for_us() -> Result<()> {
    let (alice, mut element, room) = alice_and_element(&[("m.room.name", 100)]).await?;
    let room_id: OwnedRoomId = room.room_id().to_owned();
    room.set_encrypted_name("The real name").await?;
    // Our client does not sync until the forged update is sent too: both arrive in one sync,
    // and the rejected update must not hide the genuine one before it.
    let (matched, seen) = element.wait_for_state(&room_id, "The real name", None, 30).await?;
    assert!(matched, "the Element client showed {seen}");

    element.set_name(&room_id, "Forged by an under-powered member").await?;
    let forged =
        sync_until(&alice.client, "our client rejects the name", DEFAULT_TIMEOUT, || async {
            room.encrypted_state_view().await.is_ok_and(|view| {
                view.rejected.iter().any(|r| {
                    r.sender == element.user_id
                        && matches!(r.reason, sdk_ext::RejectionReason::InsufficientPower { .. })
                })
            })
        })
        .await;
    forged?;
    assert_eq!(room.encrypted_name().await?.as_deref(), Some("The real name"));

    // Control: promoted, the same member's rename is taken.
    set_power_levels(&room, &[(&element.user_id, 100)], &[]).await?;
    sync_until(&alice.client, "our client sees the promotion", DEFAULT_TIMEOUT, || async {
        room.power_levels().await.is_ok_and(|levels| {
            levels.users.get(&element.user_id).is_some_and(|level| i64::from(*level) == 100)
        })
    })
    .await?;
    element.set_name(&room_id, "Renamed once promoted").await?;
    sync_until(&alice.client, "our client takes the rename", DEFAULT_TIMEOUT, || async {
        room.encrypted_name().await.ok().flatten().as_deref() == Some("Renamed once promoted")
    })
    .await?;
    Ok(())
}

/// A matrix-js-sdk inviter shares the history of a room it created with encrypted state: our
/// invitee reads the message sent before the invite and the encrypted name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_invitee_reads_history_an_element_inviter_shared() -> Result<()> {
    init();
    let mut element = JsPeer::register("element").await?;
    let bob = StateUser::register("bob").await?;
    let room_id = element.create_room().await?;
    element.set_name(&room_id, "Named in Element").await?;
    element.send(&room_id, "said in Element before Bob came").await?;
    element.invite(&room_id, bob.user_id()).await?;

    join(&bob, &room_id).await?;
    let bob_room = bob.room(&room_id);
    sync_until(
        &bob.client,
        "Bob reads the name from Element's bundle",
        DEFAULT_TIMEOUT,
        || async {
            bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("Named in Element")
        },
    )
    .await?;
    wait_until("Bob decrypts the message sent before his invite", DEFAULT_TIMEOUT, || async {
        first_text(&bob_room).await.as_deref() == Some("said in Element before Bob came")
    })
    .await?;
    Ok(())
}

/// The body of the first decrypted text message of `room`'s history, as the homeserver serves
/// it from the start.
async fn first_text(room: &matrix_sdk::Room) -> Option<String> {
    let mut options = matrix_sdk::room::MessagesOptions::forward();
    options.limit = 50u32.into();
    let messages = room.messages(options).await.ok()?;
    messages.chunk.iter().find_map(|event| {
        let matrix_sdk::deserialized_responses::TimelineEventKind::Decrypted(decrypted) =
            &event.kind
        else {
            return None;
        };
        let content: serde_json::Value = decrypted.event.get_field("content").ok()??;
        (content["msgtype"] == "m.text").then(|| content["body"].as_str().map(str::to_owned))?
    })
}
