//! Running a bot: joining the rooms it is invited to, answering commands, reporting updates.

use std::{future::Future, path::PathBuf};

use anyhow::{Context, Result};
use matrix_sdk::{
    Client, Room, RoomState,
    config::SyncSettings,
    ruma::{
        OwnedRoomId, UserId,
        events::room::{
            member::StrippedRoomMemberEvent,
            message::{MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent},
        },
    },
};
use sdk_ext::{ClientCryptoStore, StateExtConfig, StateExtension, StateUpdate};
use tracing::warn;

/// What a bot does; [`serve`] calls it.
pub trait Bot: Clone + Send + Sync + 'static {
    /// The answer to the text message `body` that `sender` (never the bot itself) sent in
    /// `room`; `None` when it is not a command of this bot.
    fn command(
        &self,
        room: &Room,
        sender: &UserId,
        body: &str,
    ) -> impl Future<Output = Option<String>> + Send;

    /// A message to post about an update of the extension, and the room to post it in.
    fn report(&self, update: &StateUpdate) -> Option<(OwnedRoomId, String)> {
        let _ = update;
        None
    }
}

/// Runs `bot` on `client` (logged in, the extension installed as `extension`) until the sync
/// fails: joins the rooms the bot is invited to, answers commands with notices, and posts what
/// [`Bot::report`] makes of the extension's updates.
///
/// # Errors
///
/// When the sync loop ends with an error.
pub async fn serve<B: Bot>(client: &Client, extension: &StateExtension, bot: B) -> Result<()> {
    client.add_event_handler(
        |event: StrippedRoomMemberEvent, room: Room, client: Client| async move {
            if Some(event.state_key.as_ref()) == client.user_id()
                && room.state() == RoomState::Invited
                && let Err(error) = room.join().await
            {
                warn!(room_id = %room.room_id(), %error, "could not join");
            }
        },
    );
    let commands = bot.clone();
    client.add_event_handler(
        move |event: OriginalSyncRoomMessageEvent, room: Room, client: Client| {
            let bot = commands.clone();
            async move {
                // Its own messages (its answers) are never commands.
                if client.user_id() == Some(&*event.sender) {
                    return;
                }
                let MessageType::Text(text) = &event.content.msgtype else { return };
                if let Some(reply) = bot.command(&room, &event.sender, text.body.trim()).await {
                    notice(&room, reply).await;
                }
            }
        },
    );
    let mut updates = extension.subscribe();
    let reporter = client.clone();
    let reports = tokio::spawn(async move {
        loop {
            let update = match updates.recv().await {
                Ok(update) => update,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            if let Some((room_id, text)) = bot.report(&update)
                && let Some(room) = reporter.get_room(&room_id)
            {
                notice(&room, text).await;
            }
        }
    });
    let result = client.sync(SyncSettings::default()).await;
    reports.abort();
    result.context("sync")
}

/// Posts `text` as a notice in `room`.
async fn notice(room: &Room, text: String) {
    if let Err(error) = room.send(RoomMessageEventContent::notice_plain(text)).await {
        warn!(room_id = %room.room_id(), %error, "could not answer");
    }
}

/// Logs a bot in from the environment: `HOMESERVER`, `BOT_USER`, `BOT_PASSWORD`, and `BOT_DATA`
/// (the data directory, `bot-data` by default: matrix-sdk's stores and the extension's, both
/// encrypted with the password). Sets up cross-signing when the account has none (inviting with
/// history needs it), then installs the extension.
///
/// # Errors
///
/// A missing variable, a failed login, store or cross-signing errors.
pub async fn login_from_env() -> Result<(Client, StateExtension)> {
    let homeserver = std::env::var("HOMESERVER").context("set HOMESERVER")?;
    let user = std::env::var("BOT_USER").context("set BOT_USER")?;
    let password = std::env::var("BOT_PASSWORD").context("set BOT_PASSWORD")?;
    let data = PathBuf::from(std::env::var("BOT_DATA").unwrap_or_else(|_| "bot-data".to_owned()));

    // matrix-sdk's stores, with the crypto store shared with the extension (room keys read
    // directly, creator claims signed).
    let (stores, crypto_store) =
        ClientCryptoStore::open_sqlite(data.join("matrix"), Some(&password)).await?;
    let client = Client::builder()
        .homeserver_url(homeserver)
        .store_config(stores)
        // Bundles of shared history are received by the extension (capped download, strict
        // checks); matrix-sdk's own receiver must stay off.
        .with_enable_share_history_on_invite(false)
        .build()
        .await?;
    client.matrix_auth().login_username(&user, &password).send().await?;
    set_up_cross_signing(&client, &password).await?;
    let config =
        StateExtConfig::sqlite(data.join("state"), password).with_client_crypto_store(crypto_store);
    let extension = StateExtension::install(&client, config).await?;
    Ok((client, extension))
}

/// Uploads cross-signing keys when the account has none yet (with `password` when the
/// homeserver asks for it), and checks they are complete.
///
/// # Errors
///
/// The homeserver refused the upload, or the keys are incomplete after it.
pub async fn set_up_cross_signing(client: &Client, password: &str) -> Result<()> {
    use matrix_sdk::ruma::api::client::uiaa::{
        AuthData, MatrixUserIdentifier, Password, UserIdentifier,
    };

    let encryption = client.encryption();
    if let Err(error) = encryption.bootstrap_cross_signing_if_needed(None).await {
        // Homeservers that want the password for the first upload say so.
        let uiaa = error.as_uiaa_response().context("setting up cross-signing")?;
        let user_id = client.user_id().context("logged in")?;
        let mut auth = Password::new(
            UserIdentifier::Matrix(MatrixUserIdentifier::new(user_id.to_string())),
            password.to_owned(),
        );
        auth.session = uiaa.session.clone();
        encryption
            .bootstrap_cross_signing(Some(AuthData::Password(auth)))
            .await
            .context("setting up cross-signing with the password")?;
    }
    let status = encryption.cross_signing_status().await.context("no cross-signing status")?;
    anyhow::ensure!(status.is_complete(), "cross-signing is incomplete: {status:?}");
    Ok(())
}
