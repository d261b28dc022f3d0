//! Who may author state: the trust required of the sending device, and verification states that
//! follow the devices' cross-signing, against the real homeserver.

use anyhow::{Context, Result};
use crypto_ext::Provenance;
use crypto_ext::{
    CreatorClaim, KeyOrigin, OwnDevice, bundle::BundleBuilder, testing::Crafter,
    vodozemac::Ed25519Keypair,
};
use integration_tests::{
    DEFAULT_TIMEOUT, StateUser, TestUser, join, keep_syncing, shared_room, sync_until, wait_until,
};
use matrix_sdk::{
    Room,
    deserialized_responses::{DeviceLinkProblem, VerificationLevel, VerificationState},
    event_handler::RawEvent,
    ruma::{OwnedEventId, RoomId, events::AnyToDeviceEvent},
};
use sdk_ext::{
    RejectionReason, RoomHistoryExt, RoomStateExt, StateOrigin, StateSenderTrust, UnprovenCreators,
};
use serde_json::json;

fn init() {
    integration_tests::init_tracing("warn");
}

/// The provenance of a slot's current value, when it is an encrypted one.
async fn provenance(room: &Room, event_type: &str) -> Option<Provenance> {
    match room.encrypted_state(event_type, "").await.ok()??.origin {
        StateOrigin::Encrypted(provenance) => Some(provenance),
        StateOrigin::Plaintext { .. } => None,
    }
}

/// Whether `room`'s view holds `event_id` rejected for `reason`.
async fn rejected_for(room: &Room, event_id: &OwnedEventId, reason: &RejectionReason) -> bool {
    room.encrypted_state_view().await.is_ok_and(|view| {
        view.rejected.iter().any(|r| r.event_id == *event_id && r.reason == *reason)
    })
}

/// A device its owner never cross-signed (a second login of a cross-signed user, as a homeserver
/// could add one) authors state: a reader requiring cross-signed devices refuses it, a reader
/// with the permissive default accepts it and shows the device as unsigned. The same reader that
/// refuses accepts state from the owner's cross-signed device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_device_authors_state_only_for_readers_that_allow_it() -> Result<()> {
    init();
    let alice = StateUser::register("alice").await?;
    let strict =
        StateUser::register_with("bob", |c| c.sender_trust = StateSenderTrust::CrossSigned).await?;
    let permissive = StateUser::register("carol").await?;
    let room = shared_room(&alice, &[&strict, &permissive]).await?;
    let room_id: &RoomId = room.room_id();
    room.enable_state_encryption().await?;

    // Positive control: Alice's cross-signed device names the room; the strict reader accepts.
    let signed = room.set_encrypted_name("From a signed device").await?.event_id;
    let strict_room = strict.room(room_id);
    sync_until(
        &strict.client,
        "the strict reader accepts the signed name",
        DEFAULT_TIMEOUT,
        || async {
            provenance(&strict_room, "m.room.name").await.is_some_and(|p| p.event_id == signed)
        },
    )
    .await?;
    let name = provenance(&strict_room, "m.room.name").await.context("name")?;
    assert_eq!(
        name.verification,
        Some(VerificationState::Unverified(VerificationLevel::UnverifiedIdentity))
    );

    // A second device of Alice's, which she never cross-signs, sets the topic.
    let alice2 = StateUser::install(alice.login_new_device().await?).await?;
    let _alice2_online = keep_syncing(&alice2.client);
    wait_until("the new device knows the room", DEFAULT_TIMEOUT, || async {
        match alice2.client.get_room(room_id) {
            Some(room) => room.is_state_encrypted().await,
            None => false,
        }
    })
    .await?;
    let alice2_room = alice2.room(room_id);
    let unsigned = alice2_room.set_encrypted_topic("From an unsigned device").await?.event_id;
    let unsigned_device = alice2.client.device_id().context("device id")?.to_owned();

    let untrusted = RejectionReason::UntrustedDevice { device_id: Some(unsigned_device.clone()) };
    sync_until(
        &strict.client,
        "the strict reader refuses the unsigned device",
        DEFAULT_TIMEOUT,
        || rejected_for(&strict_room, &unsigned, &untrusted),
    )
    .await?;
    assert_eq!(strict_room.encrypted_topic().await?, None);

    let permissive_room = permissive.room(room_id);
    sync_until(&permissive.client, "the permissive reader accepts it", DEFAULT_TIMEOUT, || async {
        permissive_room.encrypted_topic().await.ok().flatten().as_deref()
            == Some("From an unsigned device")
    })
    .await?;
    let topic = provenance(&permissive_room, "m.room.topic").await.context("topic")?;
    assert_eq!(topic.event_id, unsigned);
    assert_eq!(topic.sender_device.as_ref(), Some(&unsigned_device));
    assert_eq!(
        topic.verification,
        Some(VerificationState::Unverified(VerificationLevel::UnsignedDevice))
    );
    Ok(())
}

/// State from a device without cross-signing reads as unsigned (and a reader requiring
/// cross-signed devices refuses it); once its owner sets up cross-signing (which signs the
/// device), the same value reads as cross-signed (and the strict reader accepts it), with no
/// new event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cross_signed_after_its_state_arrived_reads_as_cross_signed() -> Result<()> {
    init();
    let alice =
        StateUser::install(TestUser::register_without_cross_signing("alice").await?).await?;
    let bob = StateUser::register("bob").await?;
    let strict =
        StateUser::register_with("carol", |c| c.sender_trust = StateSenderTrust::CrossSigned)
            .await?;
    let room = shared_room(&alice, &[&bob, &strict]).await?;
    room.enable_state_encryption().await?;
    let sent = room.set_encrypted_topic("Set before cross-signing").await?.event_id;
    let device_id = alice.client.device_id().map(ToOwned::to_owned);

    let bob_room = bob.room(room.room_id());
    sync_until(&bob.client, "Bob reads the topic", DEFAULT_TIMEOUT, || async {
        provenance(&bob_room, "m.room.topic").await.is_some_and(|p| p.event_id == sent)
    })
    .await?;
    let before = provenance(&bob_room, "m.room.topic").await.context("topic")?;
    assert_eq!(
        before.verification,
        Some(VerificationState::Unverified(VerificationLevel::UnsignedDevice))
    );

    let strict_room = strict.room(room.room_id());
    let untrusted = RejectionReason::UntrustedDevice { device_id };
    sync_until(&strict.client, "the strict reader refuses the topic", DEFAULT_TIMEOUT, || {
        rejected_for(&strict_room, &sent, &untrusted)
    })
    .await?;

    alice.bootstrap_cross_signing().await?;
    let cross_signed = Some(VerificationState::Unverified(VerificationLevel::UnverifiedIdentity));
    sync_until(&bob.client, "the topic reads as cross-signed", DEFAULT_TIMEOUT, || async {
        provenance(&bob_room, "m.room.topic").await.is_some_and(|p| p.verification == cross_signed)
    })
    .await?;
    let after = provenance(&bob_room, "m.room.topic").await.context("topic")?;
    assert_eq!(after.event_id, sent, "the same event, judged again");
    let view = bob_room.encrypted_state_view().await?;
    let in_view = view
        .state
        .iter()
        .find_map(|record| match &record.origin {
            StateOrigin::Encrypted(p) if p.event_id == sent => Some(p.verification.clone()),
            _ => None,
        })
        .context("the topic in the view")?;
    assert_eq!(in_view, cross_signed, "the view reads the same as the slot");

    // The strict reader validates the event again once the device is signed.
    sync_until(&strict.client, "the strict reader accepts the topic", DEFAULT_TIMEOUT, || async {
        provenance(&strict_room, "m.room.topic").await.is_some_and(|p| p.event_id == sent)
    })
    .await?;
    assert!(!rejected_for(&strict_room, &sent, &untrusted).await);
    Ok(())
}

/// Posts in `room` (Alice's, as her homeserver could) a name encrypted with `crafter`'s session
/// that names `creator`'s device, with `claim` in its content if given.
async fn post_passed_off_name(
    room: &Room,
    crafter: &mut Crafter,
    creator: &OwnDevice,
    name: &str,
    claim: Option<&CreatorClaim>,
) -> Result<OwnedEventId> {
    let payload = json!({
        "type": "m.room.name", "state_key": "", "room_id": room.room_id(),
        "content": { "name": name },
    });
    let mut content: serde_json::Value =
        serde_json::from_str(crafter.encrypt(creator, &payload).json().get())?;
    if let Some(claim) = claim {
        content[crypto_ext::identifiers::CREATOR_CLAIM] = serde_json::to_value(claim)?;
    }
    Ok(room.send_state_event_raw("m.room.encrypted", "m.room.name:", content).await?.event_id)
}

/// The cast of the pass-off tests: Alice's room with encrypted state and Carol in it; Bob, who
/// accepts unproven creators (the default), and Dave, who refuses them, not yet in it.
async fn pass_off_cast() -> Result<(StateUser, StateUser, StateUser, StateUser, Room)> {
    let alice = StateUser::register("alice").await?;
    let carol = StateUser::register("carol").await?;
    let bob = StateUser::register("bob").await?;
    let dave = StateUser::register_with("dave", |c| c.unproven_creators = UnprovenCreators::Reject)
        .await?;
    let room = shared_room(&alice, &[&carol]).await?;
    room.enable_state_encryption().await?;
    Ok((alice, carol, bob, dave, room))
}

/// Checks a name posted in Alice's name with Carol's session that Carol handed on with
/// `origin`: Bob (accepting unproven creators) shows it as "creator unproven", shared by Carol,
/// from an insecure source, never with Alice's trust; Dave (refusing them) rejects it.
async fn passed_off_name_is_never_alices(
    bob: &StateUser,
    dave: &StateUser,
    room_id: &RoomId,
    forged: &OwnedEventId,
    alice: &StateUser,
    carol: &StateUser,
    origin: KeyOrigin,
) -> Result<()> {
    let bob_room = bob.room(room_id);
    sync_until(&bob.client, "Bob shows the name, unproven", DEFAULT_TIMEOUT, || async {
        provenance(&bob_room, "m.room.name").await.is_some_and(|p| p.event_id == *forged)
    })
    .await?;
    let name = provenance(&bob_room, "m.room.name").await.context("name")?;
    assert_eq!(name.sender, alice.user_id());
    assert!(!name.creator_proven, "only Carol's word names Alice's device");
    assert_eq!(name.key_origin, origin);
    assert_eq!(
        name.verification,
        Some(VerificationState::Unverified(VerificationLevel::None(
            DeviceLinkProblem::InsecureSource
        )))
    );
    let dave_room = dave.room(room_id);
    let unproven = RejectionReason::CreatorUnproven { shared_by: Some(carol.user_id().to_owned()) };
    sync_until(&dave.client, "Dave rejects the name", DEFAULT_TIMEOUT, || {
        rejected_for(&dave_room, forged, &unproven)
    })
    .await?;
    assert_eq!(dave_room.encrypted_name().await?, None);
    Ok(())
}

/// A sharer passes its own session off as another member's: Carol crafts a session naming
/// Alice's device as its creator, the name it encrypts is posted in Alice's name (as Alice's
/// homeserver could) with a creator claim Carol forged, and Carol hands the key on with her
/// invites to Bob and Dave. The name is never shown as Alice's with her trust: Bob (the
/// default, `UnprovenCreators::Accept`) shows it as "creator unproven", shared by Carol, with an
/// insecure source; Dave (`UnprovenCreators::Reject`) rejects it. The control: Alice's genuine
/// topic, whose key Carol hands on the same way (with the history of her invites), is proven
/// for both by the claim Alice's device signed, which Alice's event carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharer_cannot_pass_its_session_off_as_another_members() -> Result<()> {
    init();
    let (alice, carol, bob, dave, room) = pass_off_cast().await?;
    let room_id = room.room_id().to_owned();
    let carol_room = carol.room(&room_id);

    // Alice's genuine topic, its key sent by her device to Carol's.
    let genuine = room.set_encrypted_topic("Alice's own topic").await?.event_id;
    sync_until(&carol.client, "Carol reads Alice's topic", DEFAULT_TIMEOUT, || async {
        carol_room.encrypted_topic().await.ok().flatten().as_deref() == Some("Alice's own topic")
    })
    .await?;

    // Carol's session, claiming Alice's device as its creator, with a claim Carol signed
    // herself in the name of Alice's device.
    let alice_device = alice.own_device().await?;
    let mut crafter = Crafter::new();
    let key = crafter.exported_key(&room_id, &alice_device);
    let session_id = key.session_id.clone();
    let carols_key = Ed25519Keypair::new();
    let forged_claim = CreatorClaim::sign(
        &room_id,
        &session_id,
        alice.user_id(),
        &alice_device.device_id,
        alice_device.curve25519,
        |text| carols_key.sign(text.as_bytes()),
    );
    let forged = post_passed_off_name(
        &room,
        &mut crafter,
        &alice_device,
        "Passed off as Alice's",
        Some(&forged_claim),
    )
    .await?;

    // Carol invites Bob and Dave with the room's history (Alice's topic key goes with it) and
    // hands them her session's key, as an inviter's keys travel.
    let keys = json!({ "room_id": room_id, "keys": [key] });
    for invitee in [&bob, &dave] {
        carol_room.invite_with_history(invitee.user_id()).await?;
        sync_until(&invitee.client, "the invite arrives", DEFAULT_TIMEOUT, || async {
            invitee.client.get_room(&room_id).is_some()
        })
        .await?;
        carol
            .send_to_devices(invitee.user_id(), crypto_ext::identifiers::INVITE_STATE_KEYS, &keys)
            .await?;
        sync_until(&invitee.client, "the invitee holds the key", DEFAULT_TIMEOUT, || async {
            invitee.ext.store().inbound_session(&session_id).await.is_ok_and(|s| s.is_some())
        })
        .await?;
        join(invitee, &room_id).await?;
    }

    let origin = KeyOrigin::Invite { shared_by: carol.user_id().to_owned() };
    passed_off_name_is_never_alices(&bob, &dave, &room_id, &forged, &alice, &carol, origin).await?;
    let (bob_room, dave_room) = (bob.room(&room_id), dave.room(&room_id));

    // Control: Alice's genuine topic, handed on by the same sharer, is proven by Alice's claim,
    // for the strict reader too.
    for (reader, reader_room) in [(&bob, &bob_room), (&dave, &dave_room)] {
        sync_until(&reader.client, "the reader accepts Alice's topic", DEFAULT_TIMEOUT, || async {
            provenance(reader_room, "m.room.topic")
                .await
                .is_some_and(|p| p.event_id == genuine && p.creator_proven)
        })
        .await?;
        let topic = provenance(reader_room, "m.room.topic").await.context("topic")?;
        assert_eq!(topic.sender, alice.user_id());
        assert_eq!(topic.key_origin.shared_by(), Some(&carol.user_id().to_owned()));
        assert_eq!(
            topic.verification,
            Some(VerificationState::Unverified(VerificationLevel::UnverifiedIdentity))
        );
    }
    Ok(())
}

/// The same pass-off through a room-key bundle: Carol uploads a bundle whose entry is her own
/// session claiming Alice's device, announces it, and invites Bob and Dave. The name the session
/// encrypts, posted in Alice's name, is shown by Bob only as "creator unproven", shared by
/// Carol, never with Alice's trust; Dave, who refuses unproven creators, rejects it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_cannot_pass_a_sharers_session_off_as_another_members() -> Result<()> {
    init();
    let (alice, carol, bob, dave, room) = pass_off_cast().await?;
    let room_id = room.room_id().to_owned();

    let alice_device = alice.own_device().await?;
    let mut crafter = Crafter::new();
    let forged =
        post_passed_off_name(&room, &mut crafter, &alice_device, "Passed off in a bundle", None)
            .await?;

    // Carol's bundle: her session, naming Alice's device as its creator.
    let mut builder = BundleBuilder::new(&room_id, carol.ext.own_device());
    builder.add_state_key(crafter.exported_key(&room_id, &alice_device));
    let bundle = serde_json::to_vec(&builder.build())?;
    let file = carol.client.upload_encrypted_file(&mut bundle.as_slice()).await?;
    let announcement = json!({ "room_id": room_id, "file": file });
    let carol_room = carol.room(&room_id);
    for invitee in [&bob, &dave] {
        carol
            .send_to_devices(
                invitee.user_id(),
                crypto_ext::identifiers::ROOM_KEY_BUNDLE_UNSTABLE,
                &announcement,
            )
            .await?;
        carol_room.invite_user_by_id(invitee.user_id()).await?;
        join(invitee, &room_id).await?;
    }

    let origin = KeyOrigin::Bundle { shared_by: carol.user_id().to_owned() };
    passed_off_name_is_never_alices(&bob, &dave, &room_id, &forged, &alice, &carol, origin).await
}

/// The same pass-off through a key share: Bob, joining after the name, asks the room's
/// moderators for its key; Carol answers Bob's request (its real id, from the device asked)
/// with her own session claiming Alice's device. Bob shows the name only as "creator unproven",
/// shared by Carol, never with Alice's trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_share_cannot_pass_a_sharers_session_off_as_another_members() -> Result<()> {
    init();
    let alice = StateUser::register("alice").await?;
    let carol = StateUser::register("carol").await?;
    let bob = StateUser::register_with("bob", |c| {
        c.key_requests.escalation_delay = std::time::Duration::from_secs(1);
    })
    .await?;
    let room = shared_room(&alice, &[&carol]).await?;
    let room_id = room.room_id().to_owned();
    integration_tests::set_power_levels(&room, &[(carol.user_id(), 100)], &[]).await?;
    room.enable_state_encryption().await?;

    let alice_device = alice.own_device().await?;
    let mut crafter = Crafter::new();
    let forged =
        post_passed_off_name(&room, &mut crafter, &alice_device, "Passed off in a key share", None)
            .await?;

    // Carol's client hands the test the requests it receives for her session.
    let (requests, mut asked) = tokio::sync::mpsc::unbounded_channel::<String>();
    let session_id = crafter.session_id();
    carol.client.add_event_handler(move |_: AnyToDeviceEvent, raw: RawEvent| {
        let requests = requests.clone();
        let session_id = session_id.clone();
        async move {
            let event: serde_json::Value = serde_json::from_str(raw.get()).unwrap_or_default();
            let content = &event["content"];
            let wanted = content["session_ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|id| id.as_str() == Some(&session_id)));
            if event["type"] == crypto_ext::identifiers::STATE_KEY_REQUEST && wanted {
                let _ =
                    requests.send(content["request_id"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    let _carol_online = keep_syncing(&carol.client);
    room.invite_user_by_id(bob.user_id()).await?;
    join(&bob, &room_id).await?;
    let _bob_online = keep_syncing(&bob.client);

    let request_id = tokio::time::timeout(DEFAULT_TIMEOUT, asked.recv())
        .await?
        .context("Bob asks Carol for the key")?;
    let share = json!({
        "room_id": room_id,
        "request_id": request_id,
        "keys": [crafter.exported_key(&room_id, &alice_device)],
    });
    carol.send_to_devices(bob.user_id(), crypto_ext::identifiers::STATE_KEY_SHARE, &share).await?;

    let bob_room = bob.room(&room_id);
    wait_until("Bob shows the name, unproven", DEFAULT_TIMEOUT, || async {
        provenance(&bob_room, "m.room.name").await.is_some_and(|p| p.event_id == forged)
    })
    .await?;
    let name = provenance(&bob_room, "m.room.name").await.context("name")?;
    assert_eq!(name.sender, alice.user_id());
    assert!(!name.creator_proven, "only Carol's answer names Alice's device");
    assert_eq!(name.key_origin, KeyOrigin::KeyShare { shared_by: carol.user_id().to_owned() });
    assert_eq!(
        name.verification,
        Some(VerificationState::Unverified(VerificationLevel::None(
            DeviceLinkProblem::InsecureSource
        )))
    );
    Ok(())
}
