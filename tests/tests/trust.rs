//! Who may author state: the trust required of the sending device, and verification states that
//! follow the devices' cross-signing, against the real homeserver.

use anyhow::{Context, Result};
use crypto_ext::Provenance;
use integration_tests::{
    DEFAULT_TIMEOUT, StateUser, TestUser, keep_syncing, shared_room, sync_until, wait_until,
};
use matrix_sdk::{
    Room,
    deserialized_responses::{VerificationLevel, VerificationState},
    ruma::{OwnedEventId, RoomId},
};
use sdk_ext::{RejectionReason, RoomStateExt, StateOrigin, StateSenderTrust};

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
