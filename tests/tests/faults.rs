//! Homeserver faults: each test runs a Synapse of its own, kills it (SIGKILL) at a chosen request
//! (before Synapse sees it, or after Synapse handled it and before the answer reaches the
//! client), restarts it on the same database, and checks that the clients recover without
//! manual action, lose nothing, and send nothing twice that must go once.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use crypto_ext::{KeyOrigin, identifiers};
use integration_tests::{
    DEFAULT_TIMEOUT, FaultyServer, KillPoint, PRE_INVITE_MESSAGE, StateUser, join, keep_syncing,
    room_with_an_admin, room_with_history, shared_room, wait_until,
};
use matrix_sdk::{
    event_handler::RawEvent,
    room::MessagesOptions,
    ruma::{RoomId, events::AnyToDeviceEvent},
};
use sdk_ext::{RoomHistoryExt, RoomStateExt};

/// How long a test waits for its server to be killed by the request it armed.
const KILL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a recovery may take: the restart, then the clients' retries.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);

/// Waits until the armed kill happened.
async fn killed(kill: tokio::sync::oneshot::Receiver<()>, what: &str) -> Result<()> {
    tokio::time::timeout(KILL_TIMEOUT, kill)
        .await
        .with_context(|| format!("the server was not killed at {what}"))?
        .context("the relay dropped the trigger")
}

/// Whether `room`'s latest messages, as the client decrypts them, hold one saying `body`.
async fn reads_message(room: &matrix_sdk::Room, body: &str) -> bool {
    let Ok(messages) = room.messages(MessagesOptions::backward()).await else { return false };
    messages.chunk.iter().any(|event| {
        event.encryption_info().is_some()
            && event
                .raw()
                .get_field::<serde_json::Value>("content")
                .ok()
                .flatten()
                .is_some_and(|content| content["body"].as_str() == Some(body))
    })
}

/// `user`'s access token, which picks out their requests at the relay.
fn token(user: &StateUser) -> String {
    user.client.access_token().expect("logged in")
}

/// The file URLs of the bundle announcements `user`'s client receives (decrypted), in order.
fn record_announcements(user: &StateUser) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    user.client.add_event_handler(move |_: AnyToDeviceEvent, raw: RawEvent| {
        let record = record.clone();
        async move {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(raw.get()) else { return };
            if event["type"].as_str().is_some_and(identifiers::is_room_key_bundle)
                && let Some(url) = event["content"]["file"]["url"].as_str()
            {
                record.lock().unwrap().push(url.to_owned());
            }
        }
    });
    seen
}

/// Alice invites Bob with history; Synapse dies at `point` of her `/invite` request and comes
/// back; her app calls again, and Bob joins and reads the history. Returns the file URLs of the
/// bundle announcements Bob's client received, and the one the successful call reported.
async fn invite_cut_by_a_crash(label: &str, point: KillPoint) -> Result<(Vec<String>, String)> {
    integration_tests::init_tracing("warn");
    let server = FaultyServer::start(label).await?;
    let alice = StateUser::register_on(server.url(), "alice", |_| {}).await?;
    let bob = StateUser::register_on(server.url(), "bob", |_| {}).await?;
    let room = room_with_history(&alice, "shared", &["Named before the crash"]).await?;
    let room_id = room.room_id().to_owned();
    let announcements = record_announcements(&bob);

    let kill = server.kill_on(&["/invite HTTP/1.1", &token(&alice)], point);
    let cut = room.invite_with_history(bob.user_id()).await;
    assert!(cut.is_err(), "the invite's answer never came: {cut:?}");
    killed(kill, "Alice's invite").await?;
    server.restart().await?;

    let report = room.invite_with_history(bob.user_id()).await?;
    assert_eq!(report.shared_state_keys, 1, "{report:?}");

    join(&bob, &room_id).await?;
    let bob_room = bob.room(&room_id);
    bob.sync_until_name(
        &room_id,
        Some("Named before the crash"),
        "Bob reads the name from the bundle",
        RECOVERY_TIMEOUT,
    )
    .await?;
    assert!(
        reads_message(&bob_room, PRE_INVITE_MESSAGE).await,
        "Bob reads the message from before his invite"
    );
    let seen = announcements.lock().unwrap().clone();
    Ok((seen, report.bundle_url.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_with_history_cut_by_a_crash_is_completed_by_a_retry_with_the_same_bundle()
-> Result<()> {
    // Synapse records the invite and dies before Alice hears of it: the invite stands, and the
    // retry announces the bundle already announced.
    let (seen, bundle_url) =
        invite_cut_by_a_crash("faults-invite-answer", KillPoint::BeforeAnswer).await?;
    assert!(!seen.is_empty(), "Bob's client received the announcement");
    assert!(
        seen.iter().all(|url| *url == bundle_url),
        "every announcement names the one bundle of this invite: {seen:?}, kept {bundle_url}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_that_never_reached_the_server_is_retried_with_a_new_bundle() -> Result<()> {
    // Synapse dies before it sees the invite: no invite holds the first bundle, and the retry
    // shares a new one, which Bob's client takes in its place.
    let (seen, bundle_url) =
        invite_cut_by_a_crash("faults-invite-lost", KillPoint::BeforeRequest).await?;
    assert_eq!(seen.len(), 2, "one announcement per call: {seen:?}");
    assert_ne!(seen[0], seen[1], "the retry's bundle is a new one");
    assert_eq!(seen[1], bundle_url, "the bundle of the invite that went through");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_sent_as_the_server_crashes_reaches_members_after_the_restart_without_reusing_an_index()
-> Result<()> {
    integration_tests::init_tracing("warn");
    let server = FaultyServer::start("faults-sync").await?;
    let alice = StateUser::register_on(server.url(), "alice", |_| {}).await?;
    let bob = StateUser::register_on(server.url(), "bob", |_| {}).await?;
    let room = shared_room(&alice, &[&bob]).await?;
    let room_id = room.room_id().to_owned();
    room.enable_state_encryption().await?;
    room.set_encrypted_name("Before the crash").await?;
    let bob_room = bob.room(&room_id);
    bob.sync_until_name(
        &room_id,
        Some("Before the crash"),
        "Bob reads the first name",
        DEFAULT_TIMEOUT,
    )
    .await?;
    let first_index = name_index(&bob, &room_id).await?;

    // Bob's client syncs throughout: its long poll is cut by the crash and resumes by itself.
    let _bob_online = keep_syncing(&bob.client);
    // Synapse stores Alice's new name and dies before answering her.
    let kill =
        server.kill_on(&["/state/m.room.encrypted/", &token(&alice)], KillPoint::BeforeAnswer);
    let cut = room.set_encrypted_name("Sent as the server crashed").await;
    assert!(cut.is_err(), "the answer never came: {cut:?}");
    killed(kill, "Alice's encrypted state").await?;
    server.restart().await?;

    wait_until("Bob reads the name stored as the server crashed", RECOVERY_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref()
            == Some("Sent as the server crashed")
    })
    .await?;
    let crashed_index = name_index(&bob, &room_id).await?;

    // Alice sends again after the restart: a new message index, never the one the crash took.
    room.set_encrypted_name("After the restart").await?;
    wait_until("Bob reads the name sent after the restart", RECOVERY_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("After the restart")
    })
    .await?;
    let after_index = name_index(&bob, &room_id).await?;
    assert!(
        first_index < crashed_index && crashed_index < after_index,
        "indices {first_index}, {crashed_index}, {after_index}"
    );
    let view = bob_room.encrypted_state_view().await?;
    assert!(view.rejected.is_empty() && view.pending.is_empty(), "nothing rejected: {view:?}");
    Ok(())
}

/// The Megolm message index of the room's current name, as `user` accepted it.
async fn name_index(user: &StateUser, room_id: &RoomId) -> Result<u32> {
    let record = user.room(room_id).encrypted_state("m.room.name", "").await?.context("a name")?;
    Ok(record.provenance().context("encrypted")?.message_index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_request_and_its_answer_cut_by_crashes_still_bring_the_key() -> Result<()> {
    integration_tests::init_tracing("warn");
    let server = FaultyServer::start("faults-requests").await?;
    let alice = StateUser::register_on(server.url(), "alice", |_| {}).await?;
    let carol = StateUser::register_on(server.url(), "carol", |_| {}).await?;
    let bob = StateUser::register_on(server.url(), "bob", |config| {
        config.key_requests.escalation_delay = Duration::from_secs(1);
    })
    .await?;
    let room = room_with_an_admin(&alice, &carol, &["Asked for across crashes"]).await?;
    let room_id = room.room_id().to_owned();

    // A plain invite: Bob must ask. Alice goes offline; Carol's client answers.
    room.invite_user_by_id(bob.user_id()).await?;
    let _carol_online = keep_syncing(&carol.client);
    // Bob's request is lost with the server.
    let kill = server
        .kill_on(&["/sendToDevice/m.room.encrypted/", &token(&bob)], KillPoint::BeforeRequest);
    join(&bob, &room_id).await?;
    let _bob_online = keep_syncing(&bob.client);
    killed(kill, "Bob's key request").await?;
    // Carol's answer reaches the server, which dies before telling her it did.
    let kill = server
        .kill_on(&["/sendToDevice/m.room.encrypted/", &token(&carol)], KillPoint::BeforeAnswer);
    server.restart().await?;
    killed(kill, "Carol's answer").await?;
    server.restart().await?;

    let bob_room = bob.room(&room_id);
    wait_until("Bob reads the name Carol shared", RECOVERY_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref()
            == Some("Asked for across crashes")
    })
    .await?;
    let record = bob_room.encrypted_state("m.room.name", "").await?.context("name")?;
    let provenance = record.provenance().context("encrypted")?;
    assert_eq!(provenance.key_origin, KeyOrigin::KeyShare { shared_by: carol.user_id().into() });
    assert!(provenance.creator_proven, "Alice's signed claim proves her device");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_download_cut_by_a_crash_is_fetched_again_after_the_restart() -> Result<()> {
    integration_tests::init_tracing("warn");
    let server = FaultyServer::start("faults-download").await?;
    let alice = StateUser::register_on(server.url(), "alice", |_| {}).await?;
    let bob = StateUser::register_on(server.url(), "bob", |config| {
        config.remote_limits.bundle_retry_delay = Duration::from_secs(1);
    })
    .await?;
    // The message's key travels only in the bundle (the name's also with the invite).
    let room = room_with_history(&alice, "shared", &["Fetched across a crash"]).await?;
    let room_id = room.room_id().to_owned();
    room.invite_with_history(bob.user_id()).await?;

    // The download of the bundle, which starts once Bob's client sees his join, dies with the
    // server mid-answer.
    let kill = server.kill_on(&["/media/download/", &token(&bob)], KillPoint::BeforeAnswer);
    join(&bob, &room_id).await?;
    let _bob_online = keep_syncing(&bob.client);
    killed(kill, "Bob's bundle download").await?;
    server.restart().await?;

    let bob_room = bob.room(&room_id);
    wait_until("Bob reads the message from the bundle", RECOVERY_TIMEOUT, || async {
        reads_message(&bob_room, PRE_INVITE_MESSAGE).await
    })
    .await?;
    assert_eq!(
        bob_room.encrypted_name().await?.as_deref(),
        Some("Fetched across a crash"),
        "the name reads too"
    );
    Ok(())
}
