//! Inviting with history (MSC4268) against the real homeserver: our clients send bundles with
//! `invite_with_history` and receive them with the extension's receiver (matrix-sdk's own is
//! off).

use std::time::Duration;

use anyhow::Result;
use crypto_ext::KeyOrigin;
use integration_tests::{
    DEFAULT_TIMEOUT, StateUser, TestUser, has_power_level, join, shared_room, sync_until,
    wait_until,
};
use matrix_sdk::{deserialized_responses::TimelineEventKind, room::MessagesOptions, ruma::RoomId};
use sdk_ext::{RoomHistoryExt, RoomStateExt, StateUpdate};
use serde_json::json;

/// Alice's room with `visibility`, encrypted state whose name was set twice, and one message,
/// all before Bob is invited with history.
async fn room_with_history(alice: &StateUser, visibility: &str) -> Result<matrix_sdk::Room> {
    integration_tests::room_with_history(alice, visibility, &["Older name", "Current name"]).await
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
    // Alice's own device handed over her own session (with the invite, or announcing the
    // bundle over Olm): the creator is proven.
    assert!(provenance.creator_proven);

    wait_until("Bob decrypts the message sent before his invite", DEFAULT_TIMEOUT, || async {
        first_message(&bob, &room_id).await.is_some_and(|e| e.encryption_info().is_some())
    })
    .await?;
    let message = first_message(&bob, &room_id).await.expect("message");
    assert_eq!(
        bob_room.key_origin(&message).await?,
        Some(KeyOrigin::Bundle { shared_by: alice.user_id().to_owned() })
    );
    let body: serde_json::Value = message.raw().get_field("content")?.expect("content");
    assert_eq!(body["body"], integration_tests::PRE_INVITE_MESSAGE);
    Ok(())
}

/// The extension validates the encrypted state that waited for a bundle's keys after the
/// bundle import (and its lock) is done, from the top, not inside the import: the state is
/// still accepted by the time `import_history` returns, and subscribers still hear of it before
/// they hear of the import.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_waiting_for_a_bundle_is_accepted_before_import_history_returns() -> Result<()> {
    integration_tests::init_tracing("warn");
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register("bob").await?;
    // Bob imports and scans only when asked.
    bob.ext.shutdown();
    let room = shared_room(&alice, &[]).await?;
    let room_id = room.room_id().to_owned();
    room.enable_state_encryption().await?;
    // Not an aesthetic slot: no key for it travels with the invite, only in the bundle.
    let sent = room.set_encrypted_state("org.example.plan", "", json!({ "step": 3 })).await?;
    room.invite_with_history(bob.user_id()).await?;

    join(&bob, &room_id).await?;
    let bob_room = bob.room(&room_id);
    sync_until(
        &bob.client,
        "Bob holds the state and the announcement",
        DEFAULT_TIMEOUT,
        || async {
            let state = bob_room
                .get_state_events(matrix_sdk::ruma::events::StateEventType::RoomEncrypted)
                .await
                .unwrap_or_default();
            !state.is_empty()
                && !bob.ext.store().pending_bundles(&room_id).await.unwrap_or_default().is_empty()
        },
    )
    .await?;
    bob.ext.refresh().await?;
    let view = bob_room.encrypted_state_view().await?;
    assert!(view.pending.iter().any(|p| p.event_id == sent.event_id), "{:?}", view.pending);

    let mut updates = bob.ext.subscribe();
    let outcomes = bob_room.import_history().await?;
    assert!(matches!(outcomes.as_slice(), [sdk_ext::BundleOutcome::Imported(_)]), "{outcomes:?}");

    let record = bob_room.encrypted_state("org.example.plan", "").await?.expect("accepted");
    assert_eq!(record.event_id(), &sent.event_id);
    assert!(bob_room.encrypted_state_view().await?.pending.is_empty());
    let mut heard = Vec::new();
    while let Ok(update) = updates.try_recv() {
        heard.push(update);
    }
    let accepted = heard.iter().position(|u| {
        matches!(u, StateUpdate::Accepted { event_id, was_pending: true, .. } if *event_id == sent.event_id)
    });
    let imported = heard.iter().position(|u| matches!(u, StateUpdate::HistoryImported(_)));
    assert!(
        matches!((accepted, imported), (Some(a), Some(i)) if a < i),
        "accepted before imported: {heard:?}"
    );
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
    // The homeserver does not serve Bob the pre-join message; his client still knows why he
    // could not have read it: Alice's bundle withheld its session.
    let alice_message = first_message(&alice, &room_id).await.expect("Alice's message");
    let session_id = alice_message.encryption_info().and_then(|i| i.session_id()).expect("Megolm");
    let withheld = bob.ext.store().withheld_session(session_id).await?.expect("withheld notice");
    assert_eq!(withheld.code, "m.history_not_shared");
    assert_eq!(withheld.withheld_by, alice.user_id());
    assert!(bob_room.withheld_code(&alice_message).await?.is_some());
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
        .sync_once(matrix_sdk::config::SyncSettings::default().timeout(Duration::ZERO))
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

/// Invite keys are taken only from the sender of our pending invite, for that room: the same
/// keys from another user are dropped, from the inviter (the positive control) they show the
/// name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_keys_from_anyone_but_the_inviter_are_not_kept() -> Result<()> {
    integration_tests::init_tracing("warn");
    let alice = StateUser::register("alice").await?;
    let carol = StateUser::register("carol").await?;
    let bob = StateUser::register("bob").await?;
    let room = room_with_history(&alice, "joined").await?;
    let room_id = room.room_id().to_owned();
    let slot = crypto_ext::StateSlot::new("m.room.name", "");
    let pickle = alice.ext.store().outbound_session(&room_id, &slot).await?.expect("name session");
    let key = crypto_ext::OutboundStateSession::from_pickle(pickle)
        .export_current(alice.ext.own_device())
        .expect("a current name");
    let session_id = key.session_id.clone();
    let keys = json!({ "room_id": room_id, "keys": [key] });
    // A plain invite: no keys come with it.
    room.invite_user_by_id(bob.user_id()).await?;
    sync_until(&bob.client, "the invite arrives", DEFAULT_TIMEOUT, || async {
        bob.client.get_room(&room_id).is_some()
    })
    .await?;

    // Carol, who did not invite Bob, sends him the real keys; then a key request his client
    // refuses (he is not in the room): to-device messages arrive in order, so once it refuses,
    // it has handled the keys.
    let invite_keys = crypto_ext::identifiers::INVITE_STATE_KEYS;
    carol.send_to_devices(bob.user_id(), invite_keys, &keys).await?;
    let request =
        json!({ "room_id": room_id, "request_id": "marker", "session_ids": [session_id] });
    carol
        .send_to_devices(bob.user_id(), crypto_ext::identifiers::STATE_KEY_REQUEST, &request)
        .await?;
    integration_tests::next_update(&bob.client, &bob.ext, |update| match update {
        StateUpdate::KeyRequestRefused { requester, .. } if requester == carol.user_id() => {
            Some(())
        }
        _ => None,
    })
    .await?;
    assert!(bob.ext.store().inbound_session(&session_id).await?.is_none(), "not kept");
    let invited = bob.client.get_room(&room_id).expect("invited room");
    assert_eq!(invited.invite_preview().await?.name, None);

    // The inviter's own keys are taken.
    alice.send_to_devices(bob.user_id(), invite_keys, &keys).await?;
    sync_until(&bob.client, "Bob's preview shows the name", DEFAULT_TIMEOUT, || async {
        invited.invite_preview().await.is_ok_and(|p| p.name.as_deref() == Some("Current name"))
    })
    .await?;
    Ok(())
}

/// A process killed in the middle of importing a bundle (the `interrupted-import` binary kills
/// itself between the extension's store and the client's key store): after a restart the
/// import resumes from the kept announcement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_midway_resumes_after_a_restart() -> Result<()> {
    use std::os::unix::process::ExitStatusExt;
    integration_tests::init_tracing("warn");
    let alice = StateUser::register("alice").await?;
    let bob = TestUser::register("bob").await?;
    let bob_id = bob.user_id().to_owned();
    let room = room_with_history(&alice, "shared").await?;
    let room_id = room.room_id().to_owned();
    let (store_dir, password, session) = bob.stop()?;
    room.invite_with_history(&bob_id).await?;

    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_interrupted-import"))
        .env("IMPORT_STORE_DIR", store_dir.path())
        .env("IMPORT_SESSION", &session)
        .env("IMPORT_ROOM_ID", room_id.as_str())
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(120), child).await??;
    assert_eq!(status.signal(), Some(9), "the child was not killed mid-import: {status}");

    // Killed mid-way: the client's key store never got the keys.
    let bob = TestUser::restore(store_dir, password, &session).await?;
    let before = first_message(&bob, &room_id).await.expect("the pre-invite message");
    assert!(matches!(before.kind, TimelineEventKind::UnableToDecrypt { .. }));

    // The extension, installed again, resumes the import.
    let bob = StateUser::install(bob).await?;
    let bob_room = bob.room(&room_id);
    wait_until("the import resumes and the history decrypts", DEFAULT_TIMEOUT, || async {
        first_message(&bob, &room_id)
            .await
            .is_some_and(|e| matches!(e.kind, TimelineEventKind::Decrypted(_)))
    })
    .await?;
    let message = first_message(&bob, &room_id).await.expect("the message");
    assert_eq!(
        bob_room.key_origin(&message).await?,
        Some(KeyOrigin::Bundle { shared_by: alice.user_id().to_owned() })
    );
    assert!(bob.ext.store().pending_bundles(&room_id).await?.is_empty());
    sync_until(&bob.client, "Bob reads the current name", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("Current name")
    })
    .await?;
    Ok(())
}

/// Receiving side (our receiver): what is imported, what is refused and why.
mod receiving {
    use anyhow::Result;
    use crypto_ext::{
        BundleError,
        bundle::{BundleBuilder, BundleLimits},
        testing::Crafter,
    };
    use integration_tests::{
        DEFAULT_TIMEOUT, StateUser, TestUser, join, shared_room, sync_until, wait_until,
    };
    use matrix_sdk::{
        deserialized_responses::TimelineEventKind,
        room::MessagesOptions,
        ruma::{
            OwnedEventId, RoomId, TransactionId, UserId,
            api::client::{
                membership::invite_user::v3::{
                    InvitationRecipient, InviteUserId, Request as Invite,
                },
                message::send_message_event::v3::Request as SendMessage,
            },
            events::room::message::RoomMessageEventContent,
        },
    };
    use sdk_ext::{BundleImportError, BundleOutcome, RoomHistoryExt, StateExtConfig};
    use serde_json::{Value, json};

    /// Sends `plaintext` (a room message) as an `m.room.encrypted` event with `crafter`'s
    /// session, bypassing the client's own encryption.
    async fn send_crafted(
        user: &StateUser,
        room_id: &RoomId,
        crafter: &mut Crafter,
        body: &str,
    ) -> Result<OwnedEventId> {
        let plaintext = json!({
            "type": "m.room.message",
            "content": { "msgtype": "m.text", "body": body },
            "room_id": room_id,
        });
        let content = crafter.encrypt(user.ext.own_device(), &plaintext);
        let request = SendMessage::new_raw(
            room_id.to_owned(),
            TransactionId::new(),
            "m.room.encrypted".into(),
            content.cast_unchecked(),
        );
        Ok(user.client.send(request).await?.event_id)
    }

    /// A bundle holding `crafter`'s key (for `key_room`), as JSON.
    fn bundle_json(from: &StateUser, key_room: &RoomId, crafter: &Crafter) -> Result<Value> {
        let mut builder = BundleBuilder::new(key_room, from.ext.own_device());
        builder.add_message_session(crafter.exported_key(key_room, from.ext.own_device()));
        Ok(serde_json::to_value(builder.build())?)
    }

    /// Uploads `plaintext` as an encrypted file; returns its `EncryptedFile`.
    async fn upload(from: &StateUser, plaintext: &[u8]) -> Result<Value> {
        let file = from.client.upload_encrypted_file(&mut &*plaintext).await?;
        Ok(serde_json::to_value(&file)?)
    }

    /// Announces the bundle in `file` for `room_id` to `recipient`'s devices over Olm.
    async fn announce(
        from: &StateUser,
        recipient: &UserId,
        room_id: &RoomId,
        file: &Value,
    ) -> Result<()> {
        let content = json!({ "room_id": room_id, "file": file });
        from.send_to_devices(recipient, crypto_ext::identifiers::ROOM_KEY_BUNDLE_UNSTABLE, &content)
            .await
    }

    async fn decrypts(user: &TestUser, room_id: &RoomId, event_id: &OwnedEventId) -> Option<bool> {
        let room = user.client.get_room(room_id)?;
        let messages = room.messages(MessagesOptions::backward()).await.ok()?;
        let event = messages.chunk.into_iter().find(|e| e.event_id().as_ref() == Some(event_id))?;
        Some(matches!(event.kind, TimelineEventKind::Decrypted(_)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bundle_from_someone_other_than_the_inviter_is_not_imported() -> Result<()> {
        integration_tests::init_tracing("warn");
        let alice = StateUser::register("alice").await?;
        let mallory = StateUser::register("mallory").await?;
        let bob = StateUser::register("bob").await?;
        let room = shared_room(&alice, &[&mallory]).await?;
        let room_id = room.room_id().to_owned();

        // Mallory posts history with her own session and announces a bundle for it to Bob.
        let mut crafter = Crafter::new();
        let bait = send_crafted(&mallory, &room_id, &mut crafter, "Mallory's bait").await?;
        let file =
            upload(&mallory, &serde_json::to_vec(&bundle_json(&mallory, &room_id, &crafter)?)?)
                .await?;
        announce(&mallory, bob.user_id(), &room_id, &file).await?;

        // Alice is the inviter, with a genuine bundle.
        let genuine = room.send(RoomMessageEventContent::text_plain("genuine history")).await?;
        room.invite_with_history(bob.user_id()).await?;
        join(&bob, &room_id).await?;
        let genuine = genuine.response.event_id;
        wait_until("Bob decrypts the inviter's history", DEFAULT_TIMEOUT, || async {
            decrypts(&bob, &room_id, &genuine).await == Some(true)
        })
        .await?;
        assert_eq!(
            decrypts(&bob, &room_id, &bait).await,
            Some(false),
            "Mallory's bundle was imported"
        );
        assert!(bob.ext.store().pending_bundles(&room_id).await?.is_empty(), "dropped unread");
        Ok(())
    }

    /// What Bob received after joining a room of Alice's whose history only the announced
    /// bundle can decrypt.
    struct Received {
        bob: StateUser,
        room_id: matrix_sdk::ruma::OwnedRoomId,
        outcomes: Vec<BundleOutcome>,
        history: OwnedEventId,
        file: Value,
        alice: StateUser,
    }

    impl Received {
        /// Whether Bob decrypts the pre-invite message, once his client is past the join.
        async fn history_decrypts(&self) -> Result<bool> {
            let room = self.alice.client.get_room(&self.room_id).expect("Alice's room");
            let after = room.send(RoomMessageEventContent::text_plain("after the join")).await?;
            let after = after.response.event_id;
            sync_until(
                &self.bob.client,
                "Bob decrypts a message sent after he joined",
                DEFAULT_TIMEOUT,
                || async { decrypts(&self.bob, &self.room_id, &after).await == Some(true) },
            )
            .await?;
            Ok(decrypts(&self.bob, &self.room_id, &self.history).await == Some(true))
        }
    }

    /// Alice posts history with a session only her bundle carries; `make_bundle` turns the
    /// genuine bundle JSON into the bytes she uploads; she announces it, invites Bob with a plain
    /// invite, and Bob (whose extension has `max_bytes` as bundle cap, and imports when asked,
    /// its background task stopped) joins and imports.
    async fn receive(
        max_bytes: usize,
        make_bundle: impl FnOnce(Value, &RoomId) -> Vec<u8>,
        tamper: impl FnOnce(&mut Value),
    ) -> Result<Received> {
        integration_tests::init_tracing("warn");
        let alice = StateUser::register("alice").await?;
        let bob_user = TestUser::register("bob").await?;
        let mut config =
            StateExtConfig::sqlite(bob_user.store_dir.path().join("state"), "integration-tests");
        config.bundle_limits = BundleLimits { max_bytes, ..Default::default() };
        let ext = sdk_ext::StateExtension::install(&bob_user.client, config).await?;
        ext.shutdown();
        let bob = StateUser { user: bob_user, ext };
        let room = shared_room(&alice, &[]).await?;
        let room_id = room.room_id().to_owned();

        let mut crafter = Crafter::new();
        let history = send_crafted(&alice, &room_id, &mut crafter, "history in the bundle").await?;
        let other_room = shared_room(&alice, &[]).await?;
        let genuine = bundle_json(&alice, &room_id, &crafter)?;
        let mut file = upload(&alice, &make_bundle(genuine, other_room.room_id())).await?;
        tamper(&mut file);
        announce(&alice, bob.user_id(), &room_id, &file).await?;
        // A plain invite: the announcement above is the only bundle Bob gets.
        alice
            .client
            .send(Invite::new(
                room_id.clone(),
                InvitationRecipient::UserId(InviteUserId::new(bob.user_id().to_owned())),
            ))
            .await?;
        join(&bob, &room_id).await?;
        let outcomes = bob.room(&room_id).import_history().await?;
        Ok(Received { bob, room_id, outcomes, history, file, alice })
    }

    fn genuine(bundle: Value, _: &RoomId) -> Vec<u8> {
        serde_json::to_vec(&bundle).unwrap()
    }

    /// The control for the refusals below: the same bundle, untampered, is imported, and
    /// importing it a second time (announced again) is harmless.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_genuine_bundle_from_the_inviter_is_imported_and_importing_it_twice_is_harmless()
    -> Result<()> {
        let received = receive(BundleLimits::DEFAULT_MAX_BYTES, genuine, |_| {}).await?;
        let [BundleOutcome::Imported(first)] = received.outcomes.as_slice() else {
            panic!("{:?}", received.outcomes);
        };
        assert_eq!((first.keys, first.foreign_entries, first.conflicting_sessions), (1, 0, 0));
        assert!(received.history_decrypts().await?);

        let Received { bob, room_id, alice, file, .. } = &received;
        announce(alice, bob.user_id(), room_id, file).await?;
        sync_until(&bob.client, "the announcement arrives again", DEFAULT_TIMEOUT, || async {
            !bob.ext.store().pending_bundles(room_id).await.unwrap_or_default().is_empty()
        })
        .await?;
        let again = bob.room(room_id).import_history().await?;
        let [BundleOutcome::Imported(second)] = again.as_slice() else { panic!("{again:?}") };
        assert_eq!(second, first);
        assert!(bob.ext.store().pending_bundles(room_id).await?.is_empty());
        assert!(received.history_decrypts().await?);
        Ok(())
    }

    fn refusal(received: &Received) -> &BundleImportError {
        match received.outcomes.as_slice() {
            [BundleOutcome::Refused { error, .. }] => error,
            other => panic!("expected one refused bundle, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bundle_that_fails_its_hash_is_refused() -> Result<()> {
        let received = receive(BundleLimits::DEFAULT_MAX_BYTES, genuine, |file| {
            file["hashes"]["sha256"] = json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        })
        .await?;
        let error = refusal(&received);
        assert!(matches!(error, BundleImportError::Bundle(BundleError::HashMismatch)), "{error}");
        assert!(received.bob.ext.store().pending_bundles(&received.room_id).await?.is_empty());
        assert!(!received.history_decrypts().await?, "a tampered bundle was imported");
        Ok(())
    }

    /// A bundle over the recipient's cap is refused on its announced length, before its body is
    /// read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_oversized_bundle_is_refused() -> Result<()> {
        let received = receive(256, genuine, |_| {}).await?;
        let error = refusal(&received);
        assert!(
            matches!(error, BundleImportError::Bundle(BundleError::TooLarge { size, max: 256 }) if *size > 256),
            "{error}"
        );
        assert!(!received.history_decrypts().await?);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_malformed_bundle_is_refused() -> Result<()> {
        let received = receive(
            BundleLimits::DEFAULT_MAX_BYTES,
            |_, _| b"{\"room_keys\": 42}".to_vec(),
            |_| {},
        )
        .await?;
        let error = refusal(&received);
        assert!(matches!(error, BundleImportError::Bundle(BundleError::Malformed(_))), "{error}");
        Ok(())
    }

    /// A bundle for this room whose key names another room: that key never decrypts this room's
    /// history.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_of_another_room_in_a_bundle_are_dropped() -> Result<()> {
        let received = receive(
            BundleLimits::DEFAULT_MAX_BYTES,
            |mut bundle, other_room| {
                bundle["room_keys"][0]["room_id"] = json!(other_room);
                serde_json::to_vec(&bundle).unwrap()
            },
            |_| {},
        )
        .await?;
        let [BundleOutcome::Imported(imported)] = received.outcomes.as_slice() else {
            panic!("{:?}", received.outcomes);
        };
        assert_eq!((imported.keys, imported.foreign_entries), (0, 1));
        assert!(!received.history_decrypts().await?, "a key naming another room was used");
        Ok(())
    }

    /// A bundle that both shares and withholds a session is ambiguous: neither is believed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_both_shared_and_withheld_is_not_imported() -> Result<()> {
        let received = receive(
            BundleLimits::DEFAULT_MAX_BYTES,
            |mut bundle, _| {
                let key = &bundle["room_keys"][0];
                let withheld = json!({
                    "algorithm": "m.megolm.v1.aes-sha2",
                    "code": "m.history_not_shared",
                    "room_id": key["room_id"],
                    "session_id": key["session_id"],
                    "sender_key": key["sender_key"],
                    "from_device": "ALICEDEVICE",
                });
                bundle["withheld"] = json!([withheld]);
                serde_json::to_vec(&bundle).unwrap()
            },
            |_| {},
        )
        .await?;
        let [BundleOutcome::Imported(imported)] = received.outcomes.as_slice() else {
            panic!("{:?}", received.outcomes);
        };
        assert_eq!((imported.keys, imported.withheld, imported.conflicting_sessions), (0, 0, 1));
        assert!(!received.history_decrypts().await?, "an ambiguous session was imported");
        Ok(())
    }
}

/// Bob names the room twice; Alice invites Carol with history. The bundle carries Bob's state
/// session at the index of the name's current event (not from the first index Alice's key store
/// holds): Carol reads the current name, and Bob's older name stays unreadable to her.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_members_older_state_values_stay_unreadable_to_an_invitee() -> Result<()> {
    integration_tests::init_tracing("warn");
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register("bob").await?;
    let carol = StateUser::register("carol").await?;
    let room = shared_room(&alice, &[&bob]).await?;
    let room_id = room.room_id().to_owned();
    integration_tests::set_power_levels(&room, &[(bob.user_id(), 100)], &[]).await?;
    room.enable_state_encryption().await?;
    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob sees his power", DEFAULT_TIMEOUT, || async {
        bob_room.is_state_encrypted().await && has_power_level(&bob_room, bob.user_id(), 100).await
    })
    .await?;
    let older = bob_room.set_encrypted_name("Bob's older name").await?;
    let current = bob_room.set_encrypted_name("Bob's current name").await?;
    assert_eq!((older.message_index, current.message_index), (0, 1));
    sync_until(&alice.client, "Alice reads Bob's current name", DEFAULT_TIMEOUT, || async {
        room.encrypted_name().await.ok().flatten().as_deref() == Some("Bob's current name")
    })
    .await?;
    // Bob stays offline from here: Carol's keys can only come from Alice's bundle.
    let report = room.invite_with_history(carol.user_id()).await?;
    assert_eq!(report.shared_state_keys, 1, "Bob's name session: {report:?}");
    join(&carol, &room_id).await?;
    let carol_room = carol.room(&room_id);
    sync_until(&carol.client, "Carol reads Bob's current name", DEFAULT_TIMEOUT, || async {
        carol_room.encrypted_name().await.ok().flatten().as_deref() == Some("Bob's current name")
    })
    .await?;
    // The client's machine decrypts with what Carol holds: the current name, not the older.
    let decrypt = |event_id: matrix_sdk::ruma::OwnedEventId| {
        let carol_room = carol_room.clone();
        async move {
            let fetched = carol_room.event(&event_id, None).await?;
            let raw = fetched.raw().clone().cast_unchecked();
            anyhow::Ok(carol_room.decrypt_event(&raw, None).await?)
        }
    };
    let attempt = decrypt(current.event_id.clone()).await?;
    assert!(
        !matches!(attempt.kind, TimelineEventKind::UnableToDecrypt { .. }),
        "Carol cannot decrypt Bob's current name: {:?}",
        attempt.kind
    );
    let attempt = decrypt(older.event_id.clone()).await?;
    assert!(
        matches!(attempt.kind, TimelineEventKind::UnableToDecrypt { .. }),
        "Carol decrypted Bob's older name: {:?}",
        attempt.kind
    );
    if let Some(pickle) = carol.ext.store().inbound_session(&current.session_id).await? {
        let session = crypto_ext::InboundStateSession::from_pickle(pickle);
        assert_eq!(session.first_known_index(), 1, "from the current event's index");
    }
    Ok(())
}

/// A bundle download that stalls (Bob's bundle client goes through a proxy that accepts the
/// connection and never answers) neither holds up state processing nor runs forever: Bob reads
/// a topic Alice sets after he joined while the download hangs, then the download times out
/// and the bundle is deferred (kept, retried later), not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_bundle_download_times_out_without_blocking_state() -> Result<()> {
    integration_tests::init_tracing("warn");
    // A proxy that takes connections and never says a word.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let proxy = format!("http://{}", stalled.local_addr()?);
    let _held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((socket, _)) = stalled.accept().await {
            connections.push(socket);
        }
    });
    let timeout = Duration::from_secs(20);
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register_with("bob", |config| {
        config.http_client = Some(
            matrix_sdk::reqwest::Client::builder()
                .proxy(matrix_sdk::reqwest::Proxy::all(&proxy).expect("proxy"))
                .build()
                .expect("client"),
        );
        config.bundle_limits.download_timeout = timeout;
    })
    .await?;
    let room = room_with_history(&alice, "shared").await?;
    let room_id = room.room_id().to_owned();
    room.invite_with_history(bob.user_id()).await?;
    let mut updates = bob.ext.subscribe();
    let _bob_syncing = integration_tests::keep_syncing(&bob.client);
    join(&bob, &room_id).await?;
    let joined = std::time::Instant::now();

    // State goes on while the download hangs.
    sync_until(&alice.client, "Alice sees Bob joined", DEFAULT_TIMEOUT, || async {
        integration_tests::is_joined(&room, bob.user_id()).await
    })
    .await?;
    room.set_encrypted_topic("Set while the bundle hangs").await?;
    let bob_room = bob.room(&room_id);
    wait_until("Bob reads the new topic", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_topic().await.ok().flatten().as_deref()
            == Some("Set while the bundle hangs")
    })
    .await?;
    assert!(joined.elapsed() < timeout, "the topic came while the download was still stalled");

    // Then the download gives up, and the bundle is kept for a retry.
    let deferred = tokio::time::timeout(timeout + DEFAULT_TIMEOUT, async {
        loop {
            match updates.recv().await {
                Ok(StateUpdate::BundleDeferred { room_id: deferred, reason, .. })
                    if deferred == room_id =>
                {
                    return Ok(reason);
                }
                Ok(StateUpdate::HistoryImported(_)) | Ok(StateUpdate::BundleRefused { .. }) => {
                    return Err(anyhow::anyhow!("the bundle was not deferred"));
                }
                _ => {}
            }
        }
    })
    .await??;
    assert!(deferred.contains("timed out") || deferred.contains("timeout"), "{deferred}");
    assert!(
        bob.ext.store().pending_bundles(&room_id).await?.len() == 1,
        "the announcement is kept for the retry"
    );
    Ok(())
}

/// A bundle announcement for a room we were never invited to is not kept: anyone can name any
/// room. Mallory announces a bundle for her room X without inviting Bob, then invites him to
/// room Z with history (her messages reach Bob in the order she sent them): Z's announcement is
/// stored, X's is not. Held in memory for a while, X's is stored once Mallory does invite Bob
/// to X.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_for_rooms_we_were_never_invited_to_are_not_kept() -> Result<()> {
    integration_tests::init_tracing("warn");
    let mallory = StateUser::register("mallory").await?;
    let bob = StateUser::register("bob").await?;
    let room_x = shared_room(&mallory, &[]).await?;
    let room_z = shared_room(&mallory, &[]).await?;
    let x = room_x.room_id().to_owned();
    let z = room_z.room_id().to_owned();
    let announcement = json!({
        "room_id": x,
        "file": {
            "url": "mxc://localhost/nothing",
            "v": "v2",
            "key": {
                "kty": "oct",
                "key_ops": ["encrypt", "decrypt"],
                "alg": "A256CTR",
                "k": "qcHVMSgYg-71CauWBezXI5qkaRb0LuIy-Wx5kIaHMIA",
                "ext": true
            },
            "iv": "X85+XgHN+HEAAAAAAAAAAA",
            "hashes": { "sha256": "5qG4fFnbbVdlAB1Q72JDKwCagV6Dbkx9uds4rSak37c" }
        },
    });
    mallory
        .send_to_devices(
            bob.user_id(),
            crypto_ext::identifiers::ROOM_KEY_BUNDLE_UNSTABLE,
            &announcement,
        )
        .await?;
    room_z.invite_with_history(bob.user_id()).await?;

    let pending = |room_id| {
        let store = bob.ext.store().clone();
        async move { store.pending_bundles(room_id).await.map(|p| p.len()).unwrap_or(0) }
    };
    sync_until(&bob.client, "Bob keeps Z's announcement", DEFAULT_TIMEOUT, || async {
        pending(&z).await == 1
    })
    .await?;
    assert_eq!(pending(&x).await, 0, "X's announcement is not stored");
    assert!(
        !bob.ext.store().rooms_with_pending_bundles().await?.contains(&x),
        "no room we were not invited to has a kept announcement"
    );

    // The invite to X comes after all: the announcement, held in memory, is stored now.
    room_x.invite_user_by_id(bob.user_id()).await?;
    sync_until(&bob.client, "Bob keeps X's announcement", DEFAULT_TIMEOUT, || async {
        pending(&x).await == 1
    })
    .await?;
    Ok(())
}
