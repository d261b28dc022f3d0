//! One order and one judgement: slots follow the room's order (replays rejected, redactions
//! clear), power is judged at the event the same way by every client, aliases stay plaintext,
//! and every encrypted state event the homeserver holds reaches a verdict.

use std::time::Duration;

use anyhow::Result;
use crypto_ext::testing::Crafter;
use integration_tests::{
    DEFAULT_TIMEOUT, StateUser, alice_and_bob_with_encrypted_state, has_power_level, join,
    keep_syncing, post_encrypted_state, room_with_a_member_at_50, server_state, set_power_levels,
    shared_room, sync_until,
};
use matrix_sdk::ruma::{
    OwnedEventId, RoomId,
    events::{AnyStateEventContent, StateEventType},
    serde::Raw,
};
use sdk_ext::{Error, RejectionReason, RoomHistoryExt, RoomStateExt, StateSlot};
use serde_json::{Value, json};

fn init() {
    integration_tests::init_tracing("warn");
}

/// The content of the encrypted state event `event_id` as the homeserver serves the room state.
async fn content_of(user: &StateUser, room_id: &RoomId, event_id: &OwnedEventId) -> Result<Value> {
    let state = server_state(user, room_id).await?;
    let raw = state
        .iter()
        .find(|e| e.get_field::<OwnedEventId>("event_id").ok().flatten().as_ref() == Some(event_id))
        .expect("the event is the room's current one for its slot");
    Ok(raw.get_field::<Value>("content")?.expect("content"))
}

/// A member re-posts her own older ciphertext of the name (same session, older index) as a new
/// event, as her homeserver could: rejected as a replay, the name unchanged and the slot marked
/// contested; a later genuine update still shows; redacting the current event clears the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_rejected_and_a_redaction_clears_the_slot() -> Result<()> {
    init();
    let (alice, bob, room) = alice_and_bob_with_encrypted_state().await?;
    let room_id = room.room_id().to_owned();
    let first = room.set_encrypted_name("First").await?;
    let first_content = content_of(&alice, &room_id, &first.event_id).await?;
    let second = room.set_encrypted_name("Second").await?;
    assert_eq!(first.session_id, second.session_id, "one session per slot");
    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob reads the second name", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("Second")
    })
    .await?;

    // The first ciphertext, posted again: the homeserver now serves it as the current name.
    let replay = room
        .send_state_event_raw(
            "m.room.encrypted",
            "m.room.name:",
            Raw::new(&first_content)?.cast_unchecked::<AnyStateEventContent>(),
        )
        .await?
        .event_id;
    sync_until(&bob.client, "Bob rejects the replay", DEFAULT_TIMEOUT, || async {
        let view = bob_room.encrypted_state_view().await.expect("view");
        view.rejected.iter().any(|r| r.event_id == replay)
    })
    .await?;
    let view = bob_room.encrypted_state_view().await?;
    let rejected = view.rejected.iter().find(|r| r.event_id == replay).expect("rejected");
    assert!(
        matches!(
            rejected.reason,
            RejectionReason::Replay { message_index: 0, accepted_index: 1, .. }
        ),
        "{:?}",
        rejected.reason
    );
    assert_eq!(bob_room.encrypted_name().await?.as_deref(), Some("Second"), "not rolled back");
    let name = StateSlot::new("m.room.name", "");
    assert_eq!(view.contested, vec![name.clone()], "the latest update of the name was refused");

    // Positive control: the next genuine update shows, and the slot is no longer contested.
    let third = room.set_encrypted_name("Third").await?;
    sync_until(&bob.client, "Bob reads the third name", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("Third")
    })
    .await?;
    assert!(bob_room.encrypted_state_view().await?.contested.is_empty());

    // Redacting the current event clears the slot (matrix-sdk redacts the stored state in
    // place, under the same event id).
    room.redact(&third.event_id, Some("clearing the name"), None).await?;
    sync_until(&bob.client, "Bob's name is cleared", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.is_ok_and(|name| name.is_none())
    })
    .await?;
    let view = bob_room.encrypted_state_view().await?;
    assert!(view.state.iter().all(|record| record.slot != name), "{:?}", view.state);
    Ok(())
}

/// Bob (power 50) names the room and Mallory (power 0) sets a motto that needs 50; then Alice
/// demotes Bob to 0 and promotes Mallory to 50. A member who read both live, a member who was
/// offline and processes them and the change in one later sync, and a newcomer who joins after
/// the change all show Bob's name and reject Mallory's motto: each judges an event by the power
/// levels in force at it (today's would reject the name and accept the motto).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_the_late_and_the_newcomer_judge_a_demoted_members_name_alike() -> Result<()> {
    init();
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register("bob").await?;
    let charlie = StateUser::register("charlie").await?;
    let frank = StateUser::register("frank").await?;
    let erin = StateUser::register("erin").await?;
    let mallory = StateUser::register("mallory").await?;
    let room = shared_room(&alice, &[&bob, &charlie, &frank, &mallory]).await?;
    let room_id = room.room_id().to_owned();
    let motto = "org.example.motto";
    // Any member may post encrypted state (the server's gate); the inner types need 50.
    let levels = [("m.room.encrypted", 0), ("m.room.name", 50), (motto, 50)];
    set_power_levels(&room, &[(bob.user_id(), 50)], &levels).await?;
    room.enable_state_encryption().await?;
    let bob_room = bob.room(&room_id);
    sync_until(
        &bob.client,
        "Bob sees his power and encrypted state on",
        DEFAULT_TIMEOUT,
        || async {
            bob_room.is_state_encrypted().await
                && has_power_level(&bob_room, bob.user_id(), 50).await
        },
    )
    .await?;
    // Frank makes sure his devices are known, then goes offline.
    let frank_room = frank.room(&room_id);
    sync_until(&frank.client, "Frank sees encrypted state on", DEFAULT_TIMEOUT, || async {
        frank_room.is_state_encrypted().await
    })
    .await?;

    bob_room.set_encrypted_name("Bob's name").await?;
    let charlie_room = charlie.room(&room_id);
    sync_until(&charlie.client, "Charlie reads Bob's name live", DEFAULT_TIMEOUT, || async {
        charlie_room.encrypted_name().await.ok().flatten().as_deref() == Some("Bob's name")
    })
    .await?;

    // Mallory's motto, from a session of hers (our API would refuse to send it), its key sent
    // over Olm to Charlie, Frank and Alice (whose bundle hands it to Erin).
    let mallory_room = mallory.room(&room_id);
    sync_until(&mallory.client, "Mallory sees the motto's level", DEFAULT_TIMEOUT, || async {
        mallory_room.power_levels().await.is_ok_and(|pl| pl.events.contains_key(&motto.into()))
    })
    .await?;
    let mut crafter = Crafter::new();
    let recipients = [alice.user_id(), charlie.user_id(), frank.user_id()];
    mallory.share_crafted_session(&crafter, &room_id, &recipients).await?;
    let payload = json!({
        "type": motto, "state_key": "", "content": { "motto": "Mallory's" }, "room_id": room_id,
    });
    let content = crafter.encrypt(mallory.ext.own_device(), &payload);
    let mallorys = mallory_room
        .send_state_event_raw(
            "m.room.encrypted",
            &format!("{motto}:"),
            content.cast_unchecked::<AnyStateEventContent>(),
        )
        .await?
        .event_id;
    sync_until(
        &charlie.client,
        "Charlie rejects Mallory's motto live",
        DEFAULT_TIMEOUT,
        || async {
            let view = charlie_room.encrypted_state_view().await.expect("view");
            view.rejected.iter().any(|r| r.event_id == mallorys)
        },
    )
    .await?;

    // The demotion.
    sync_until(&alice.client, "Alice reads Bob's name", DEFAULT_TIMEOUT, || async {
        room.encrypted_name().await.ok().flatten().as_deref() == Some("Bob's name")
    })
    .await?;
    set_power_levels(&room, &[(bob.user_id(), 0), (mallory.user_id(), 50)], &[]).await?;
    sync_until(&bob.client, "Bob sees his demotion", DEFAULT_TIMEOUT, || async {
        has_power_level(&bob_room, bob.user_id(), 0).await
    })
    .await?;
    // His own client now refuses what every reader would reject.
    assert!(matches!(
        bob_room.set_encrypted_name("Too late").await,
        Err(Error::NotAllowed(RejectionReason::InsufficientPower { .. }))
    ));
    room.set_encrypted_topic("After the demotion").await?;

    // The live member keeps the name.
    sync_until(&charlie.client, "Charlie reads the later topic", DEFAULT_TIMEOUT, || async {
        charlie_room.encrypted_topic().await.ok().flatten().as_deref() == Some("After the demotion")
    })
    .await?;
    assert_eq!(charlie_room.encrypted_name().await?.as_deref(), Some("Bob's name"));

    // The late one: the name, the demotion and the topic in one sync.
    sync_until(&frank.client, "Frank reads the later topic", DEFAULT_TIMEOUT, || async {
        frank_room.encrypted_topic().await.ok().flatten().as_deref() == Some("After the demotion")
    })
    .await?;
    assert_eq!(frank_room.encrypted_name().await?.as_deref(), Some("Bob's name"));

    // The newcomer, invited with history after the demotion.
    room.invite_with_history(erin.user_id()).await?;
    join(&erin, &room_id).await?;
    let erin_room = erin.room(&room_id);
    sync_until(&erin.client, "Erin reads the topic", Duration::from_secs(60), || async {
        erin_room.encrypted_topic().await.ok().flatten().as_deref() == Some("After the demotion")
    })
    .await?;
    sync_until(&erin.client, "Erin reads Bob's name", DEFAULT_TIMEOUT, || async {
        erin_room.encrypted_name().await.ok().flatten().as_deref() == Some("Bob's name")
    })
    .await?;
    for (who, user, room) in [
        ("Charlie", &charlie, &charlie_room),
        ("Frank", &frank, &frank_room),
        ("Erin", &erin, &erin_room),
    ] {
        sync_until(
            &user.client,
            &format!("{who} judges Mallory's motto"),
            DEFAULT_TIMEOUT,
            || async {
                let view = room.encrypted_state_view().await.expect("view");
                view.rejected.iter().any(|r| r.event_id == mallorys)
            },
        )
        .await?;
    }
    for (who, view) in [
        ("Charlie", charlie_room.encrypted_state_view().await?),
        ("Frank", frank_room.encrypted_state_view().await?),
        ("Erin", erin_room.encrypted_state_view().await?),
    ] {
        let name = view.state.iter().find(|r| r.slot.event_type == "m.room.name").expect("a name");
        assert_eq!(name.sender(), bob.user_id(), "{who}");
        assert!(view.state.iter().all(|r| r.slot.event_type != motto), "{who}: {:?}", view.state);
        assert_eq!(view.rejected.len(), 1, "{who}: {:?}", view.rejected);
        assert_eq!(view.rejected[0].event_id, mallorys, "{who}");
        assert!(
            matches!(
                view.rejected[0].reason,
                RejectionReason::InsufficientPower { required: 50, actual: 0, .. }
            ),
            "{who}: {:?}",
            view.rejected[0].reason
        );
    }
    Ok(())
}

/// An encrypted canonical alias is never shown (the homeserver checks only plaintext ones
/// against its directory), and our API refuses to send one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_canonical_alias_is_not_shown() -> Result<()> {
    init();
    let (alice, bob, room) = alice_and_bob_with_encrypted_state().await?;
    let room_id = room.room_id().to_owned();
    let refused = room
        .set_encrypted_state("m.room.canonical_alias", "", json!({ "alias": "#bank:localhost" }))
        .await;
    assert!(matches!(refused, Err(Error::PlaintextOnly(_))), "{refused:?}");

    // Alice's client refuses it; a crafted one (a member who bypasses our API) is rejected.
    let mut crafter = Crafter::new();
    alice.share_crafted_session(&crafter, &room_id, &[bob.user_id()]).await?;
    let own = alice.ext.own_device().clone();
    let payload = json!({
        "type": "m.room.canonical_alias",
        "state_key": "",
        "content": { "alias": "#bank:localhost" },
        "room_id": room_id,
    });
    let content = crafter.encrypt(&own, &payload);
    let alias = room
        .send_state_event_raw(
            "m.room.encrypted",
            "m.room.canonical_alias:",
            content.cast_unchecked::<AnyStateEventContent>(),
        )
        .await?
        .event_id;
    // Positive control: a name from the same crafted session is accepted.
    let payload = json!({
        "type": "m.room.name", "state_key": "", "content": { "name": "Crafted but fine" },
        "room_id": room_id,
    });
    let content = crafter.encrypt(&own, &payload);
    room.send_state_event_raw(
        "m.room.encrypted",
        "m.room.name:",
        content.cast_unchecked::<AnyStateEventContent>(),
    )
    .await?;
    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob judges both", DEFAULT_TIMEOUT, || async {
        let view = bob_room.encrypted_state_view().await.expect("view");
        view.rejected.iter().any(|r| r.event_id == alias)
            && bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("Crafted but fine")
    })
    .await?;
    let view = bob_room.encrypted_state_view().await?;
    let rejected = view.rejected.iter().find(|r| r.event_id == alias).expect("rejected");
    assert!(matches!(rejected.reason, RejectionReason::PlaintextOnly { .. }), "{rejected:?}");
    assert!(view.state.iter().all(|r| r.slot.event_type != "m.room.canonical_alias"));
    Ok(())
}

/// A member posts 300 encrypted state events over distinct slots, many requests at a time,
/// some that every reader accepts and some that every reader rejects: every one the
/// homeserver's `/state` holds reaches a verdict in another member's API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_encrypted_state_event_the_server_holds_reaches_a_verdict() -> Result<()> {
    init();
    let (alice, bob, mallory, room) = room_with_a_member_at_50().await?;
    let room_id = room.room_id().to_owned();
    let mallory_room = mallory.room(&room_id);
    let _bob_syncing = keep_syncing(&bob.client);

    let mut crafter = Crafter::new();
    mallory.share_crafted_session(&crafter, &room_id, &[bob.user_id()]).await?;
    let own = mallory.ext.own_device().clone();
    let mut contents = Vec::new();
    for n in 0..300 {
        // Every third one is keyed by another user's id: rejected by every reader.
        let state_key =
            if n % 3 == 0 { format!("{}{n}", alice.user_id()) } else { format!("slot-{n}") };
        let payload = json!({
            "type": "org.example.flood", "state_key": state_key, "content": { "n": n },
            "room_id": room_id,
        });
        let content = crafter.encrypt(&own, &payload);
        contents.push((
            format!("org.example.flood:{state_key}"),
            serde_json::from_str(content.json().get())?,
        ));
    }
    post_encrypted_state(&mallory_room, &contents).await?;

    let held: Vec<OwnedEventId> = server_state(&alice, &room_id)
        .await?
        .iter()
        .filter(|e| {
            e.get_field::<String>("type").ok().flatten().as_deref() == Some("m.room.encrypted")
        })
        .filter(|e| {
            e.get_field::<String>("state_key")
                .ok()
                .flatten()
                .is_some_and(|k| k.starts_with("org.example.flood:"))
        })
        .filter_map(|e| e.get_field::<OwnedEventId>("event_id").ok().flatten())
        .collect();
    assert_eq!(held.len(), 300, "the homeserver holds each event as its own slot");
    let bob_room = bob.room(&room_id);
    let verdicts = || async {
        let view = bob_room.encrypted_state_view().await.expect("view");
        held.iter()
            .filter(|id| {
                view.state.iter().any(|r| r.event_id() == *id)
                    || view.rejected.iter().any(|r| &r.event_id == *id)
                    || view.pending.iter().any(|p| &p.event_id == *id)
            })
            .count()
    };
    let waited = integration_tests::wait_until(
        "every held event has a verdict in Bob's API",
        Duration::from_secs(240),
        || async { verdicts().await == held.len() },
    )
    .await;
    if let Err(error) = waited {
        let stored = bob_room.get_state_events(StateEventType::RoomEncrypted).await?.len();
        anyhow::bail!(
            "{error}: {} of {} have a verdict; Bob's client stores {stored} encrypted state events",
            verdicts().await,
            held.len()
        );
    }
    let view = bob_room.encrypted_state_view().await?;
    let flood = |id: &OwnedEventId| held.contains(id);
    let accepted = view.state.iter().filter(|r| flood(r.event_id())).count();
    let rejected: Vec<_> = view.rejected.iter().filter(|r| flood(&r.event_id)).collect();
    assert_eq!(accepted, 200, "the well-formed ones are accepted");
    assert_eq!(rejected.len(), 100, "the others are rejected");
    assert!(
        rejected.iter().all(|r| matches!(r.reason, RejectionReason::StateKeyOfOtherUser { .. }))
    );
    Ok(())
}

/// A member whose homeserver stamps her name with a far-future `origin_server_ts` (the test
/// homeserver's application service sets `ts`, as any homeserver can) does not pin the slot:
/// the name shows, and a later genuine name replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_timestamp_does_not_pin_the_slot() -> Result<()> {
    init();
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register("bob").await?;
    let stamper = integration_tests::TestUser::register_through_appservice("mallory").await?;
    let room = shared_room(&alice, &[&bob, &stamper]).await?;
    let room_id = room.room_id().to_owned();
    set_power_levels(&room, &[(stamper.user_id(), 100)], &[]).await?;
    room.enable_state_encryption().await?;
    let stamper_room = stamper.client.get_room(&room_id).expect("joined");
    sync_until(&stamper.client, "the stamper sees her power", DEFAULT_TIMEOUT, || async {
        has_power_level(&stamper_room, stamper.user_id(), 100).await
    })
    .await?;

    // Her own session, its key sent to Bob over Olm by her device: a proven creator.
    let mut crafter = Crafter::new();
    stamper.share_crafted_session(&crafter, &room_id, &[bob.user_id()]).await?;
    let own = stamper.own_device().await?;
    let payload = json!({
        "type": "m.room.name", "state_key": "", "content": { "name": "Pinned till 2100" },
        "room_id": room_id,
    });
    let content: Value = serde_json::from_str(crafter.encrypt(&own, &payload).json().get())?;
    let year_2100 = 4_102_444_800_000;
    let pinned = stamper
        .send_state_at(&room_id, "m.room.encrypted", "m.room.name:", &content, year_2100)
        .await?;
    let served = server_state(&alice, &room_id).await?;
    let stamped = served
        .iter()
        .find(|e| e.get_field::<OwnedEventId>("event_id").ok().flatten() == Some(pinned.clone()))
        .and_then(|e| e.get_field::<u64>("origin_server_ts").ok().flatten());
    assert_eq!(stamped, Some(year_2100), "the homeserver kept the stamp");

    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob shows the stamped name", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("Pinned till 2100")
    })
    .await?;
    room.set_encrypted_name("Set later").await?;
    sync_until(&bob.client, "Bob shows the later name", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("Set later")
    })
    .await?;
    Ok(())
}
