//! Remote input buys bounded work, against the real homeserver: a member's junk does not hold
//! up the room's genuine state, and never makes our client run a key export.

use std::time::{Duration, Instant};

use anyhow::Result;
use crypto_ext::testing::Crafter;
use integration_tests::{
    DEFAULT_TIMEOUT, keep_syncing, post_encrypted_state, room_with_a_member_at_50, sync_until,
    wait_until,
};
use sdk_ext::RoomStateExt;
use serde_json::{Value, json};

/// How long the genuine name may take to show in Bob's API after the flood: the bound this test
/// holds us to (the flood itself takes Bob's client longer to get through on a busy machine).
const GENUINE_UPDATE_BOUND: Duration = Duration::from_secs(60);

/// Mallory posts 200 junk encrypted state events of four kinds (50 each): undecryptable (a
/// session nobody was given), malformed (not a Megolm message), refused by the client's crypto
/// machine (her shared session's ciphertext under another packed state key) and forged
/// (critical state, or a payload naming another room). Then Alice renames the room: Bob's API
/// shows the genuine name within [`GENUINE_UPDATE_BOUND`], keeps the junk out of the room's
/// state, and Bob's client ran no key export for any of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_junk_neither_delays_a_genuine_update_nor_runs_a_key_export() -> Result<()> {
    integration_tests::init_tracing("warn");
    let (_alice, bob, mallory, room) = room_with_a_member_at_50().await?;
    let room_id = room.room_id().to_owned();
    room.set_encrypted_name("Before the flood").await?;
    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob reads the first name", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("Before the flood")
    })
    .await?;
    let mallory_room = mallory.room(&room_id);
    let _bob_syncing = keep_syncing(&bob.client);

    let mut shared = Crafter::new();
    mallory.share_crafted_session(&shared, &room_id, &[bob.user_id()]).await?;
    let mut unshared = Crafter::new();
    let own = mallory.ext.own_device().clone();
    let payload = |event_type: &str, state_key: &str, room: &str| {
        json!({
            "type": event_type, "state_key": state_key, "content": { "junk": true },
            "room_id": room,
        })
    };
    let mut junk: Vec<(String, Value)> = Vec::new();
    for n in 0..50 {
        let slot = format!("org.example.junk:undecryptable-{n}");
        let content = unshared.encrypt(&own, &payload("org.example.junk", "x", room_id.as_str()));
        junk.push((slot, serde_json::from_str(content.json().get())?));

        let slot = format!("org.example.junk:malformed-{n}");
        let content = json!({
            "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "not a Megolm message",
            "session_id": shared.session_id(), "sender_key": own.curve25519.to_base64(),
            "device_id": own.device_id,
        });
        junk.push((slot, content));

        // The plaintext names another slot than the packed key: the machine refuses it.
        let slot = format!("org.example.junk:refused-{n}");
        let content = shared.encrypt(&own, &payload("org.example.other", "y", room_id.as_str()));
        junk.push((slot, serde_json::from_str(content.json().get())?));

        let (slot, plaintext) = if n % 2 == 0 {
            ("m.room.join_rules:".to_owned(), payload("m.room.join_rules", "", room_id.as_str()))
        } else {
            (
                format!("org.example.junk:elsewhere-{n}"),
                payload("org.example.junk", &format!("elsewhere-{n}"), "!elsewhere:localhost"),
            )
        };
        let content = shared.encrypt(&own, &plaintext);
        junk.push((slot, serde_json::from_str(content.json().get())?));
    }
    assert_eq!(junk.len(), 200);
    post_encrypted_state(&mallory_room, &junk).await?;

    let posted = Instant::now();
    room.set_encrypted_name("After the flood").await?;
    wait_until("Bob reads the genuine name", GENUINE_UPDATE_BOUND, || async {
        bob_room.encrypted_name().await.ok().flatten().as_deref() == Some("After the flood")
    })
    .await?;
    let took = posted.elapsed();
    println!("the genuine name showed {took:?} after it was sent, behind 200 junk events");

    // None of the junk is state, and explaining the refusals read keys from the shared crypto
    // store, never through a key export.
    let view = bob_room.encrypted_state_view().await?;
    assert!(view.state.iter().all(|r| r.sender() != mallory.user_id()), "no junk accepted");
    assert_eq!(bob.ext.key_exports(), 0, "no key export ran");
    Ok(())
}
