//! A bot that keeps a room's topic encrypted: in any room it is in, `!topic <text>` sets the
//! topic as encrypted state (switching the room to encrypted state first if needed), and
//! `!state` answers with the decrypted name and topic and any rejected state events.
//!
//! ```sh
//! HOMESERVER=http://127.0.0.1:8008 BOT_USER=bot BOT_PASSWORD=secret \
//!     cargo run -p sdk-ext --example topic_bot
//! ```

use anyhow::{Context, Result};
use matrix_sdk::{
    Client, Room, RoomState,
    config::SyncSettings,
    ruma::events::room::{
        member::StrippedRoomMemberEvent,
        message::{MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent},
    },
};
use sdk_ext::{RoomStateExt, StateExtConfig, StateExtension};

#[tokio::main]
async fn main() -> Result<()> {
    let homeserver = std::env::var("HOMESERVER").context("set HOMESERVER")?;
    let user = std::env::var("BOT_USER").context("set BOT_USER")?;
    let password = std::env::var("BOT_PASSWORD").context("set BOT_PASSWORD")?;
    let data = std::env::var("BOT_DATA").unwrap_or_else(|_| "topic-bot-data".to_owned());

    let client = Client::builder()
        .homeserver_url(homeserver)
        .sqlite_store(format!("{data}/matrix"), Some(&password))
        // Bundles of shared history are received by the extension (capped download, strict
        // checks); matrix-sdk's own receiver must stay off.
        .with_enable_share_history_on_invite(false)
        .build()
        .await?;
    client.matrix_auth().login_username(&user, &password).send().await?;
    let _extension = StateExtension::install(
        &client,
        StateExtConfig::sqlite(format!("{data}/state"), password.clone()),
    )
    .await?;

    client.add_event_handler(
        |event: StrippedRoomMemberEvent, room: Room, client: Client| async move {
            if Some(event.state_key.as_ref()) == client.user_id()
                && room.state() == RoomState::Invited
            {
                let _ = room.join().await;
            }
        },
    );
    client.add_event_handler(on_message);
    client.sync(SyncSettings::default()).await?;
    Ok(())
}

async fn on_message(event: OriginalSyncRoomMessageEvent, room: Room) {
    let MessageType::Text(text) = &event.content.msgtype else { return };
    let reply = match command(&room, text.body.trim()).await {
        Ok(Some(reply)) => reply,
        Ok(None) => return,
        Err(error) => format!("failed: {error}"),
    };
    let _ = room.send(RoomMessageEventContent::notice_plain(reply)).await;
}

async fn command(room: &Room, body: &str) -> sdk_ext::Result<Option<String>> {
    if let Some(topic) = body.strip_prefix("!topic ") {
        if !room.is_state_encrypted().await {
            room.enable_state_encryption().await?;
        }
        let sent = room.set_encrypted_topic(topic).await?;
        return Ok(Some(format!("topic set, encrypted ({})", sent.event_id)));
    }
    if body == "!state" {
        let view = room.encrypted_state_view().await?;
        return Ok(Some(format!(
            "name: {:?}, topic: {:?}, rejected: {}, waiting for keys: {}",
            room.encrypted_name().await?,
            room.encrypted_topic().await?,
            view.rejected.len(),
            view.pending.len()
        )));
    }
    Ok(None)
}
