//! Interop with a client on stock matrix-sdk 0.18 (feature `experimental-encrypted-state-events`)
//! in both directions, in a `shared` and a `joined` history-visibility room where both were
//! members before the change.

use anyhow::Result;
use integration_tests::{
    DEFAULT_TIMEOUT, StateUser, StockClient, is_joined, set_power_levels, shared_room, sync_until,
};
use matrix_sdk::ruma::UserId;
use sdk_ext::RoomStateExt;
use serde_json::json;

async fn both_directions(history_visibility: &str) -> Result<()> {
    integration_tests::init_tracing("warn");
    let alice = StateUser::register("alice").await?;
    let stock = StockClient::register("stock").await?;
    let room = shared_room(&alice, &[]).await?;
    let room_id = room.room_id().to_owned();
    room.send_state_event_raw(
        "m.room.history_visibility",
        "",
        json!({ "history_visibility": history_visibility }),
    )
    .await?;
    room.invite_user_by_id(&stock.user_id).await?;
    stock.join(&room_id).await?;
    let stock_user: &UserId = &stock.user_id;
    sync_until(&alice.client, "the stock user joined", DEFAULT_TIMEOUT, || async {
        is_joined(&room, stock_user).await
    })
    .await?;
    // Enough power to set the name and topic (50 in a private chat).
    set_power_levels(&room, &[(stock_user, 50)], &[]).await?;

    // Ours -> stock.
    room.enable_state_encryption().await?;
    room.set_encrypted_name(&format!("Ours ({history_visibility})")).await?;
    room.set_encrypted_topic("Set by sdk-ext").await?;
    let (matched, seen) = stock
        .wait_for_state(&room_id, &format!("Ours ({history_visibility})"), "Set by sdk-ext", 30)
        .await?;
    assert!(matched, "the stock client saw {seen}");

    // Stock -> ours.
    stock.set_name(&room_id, &format!("Stock ({history_visibility})")).await?;
    stock.set_topic(&room_id, "Set by stock matrix-sdk").await?;
    sync_until(
        &alice.client,
        "our client reads the stock client's state",
        DEFAULT_TIMEOUT,
        || async {
            room.encrypted_name().await.ok().flatten()
                == Some(format!("Stock ({history_visibility})"))
                && room.encrypted_topic().await.ok().flatten().as_deref()
                    == Some("Set by stock matrix-sdk")
        },
    )
    .await?;
    let record = room.encrypted_state("m.room.name", "").await?.expect("name");
    assert_eq!(record.sender(), stock_user);
    assert!(record.provenance().is_some(), "read from encrypted state, not plaintext");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_and_ours_read_each_other_in_a_shared_history_room() -> Result<()> {
    both_directions("shared").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_and_ours_read_each_other_in_a_joined_history_room() -> Result<()> {
    both_directions("joined").await
}
