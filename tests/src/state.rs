//! Test users with the encrypted-state extension installed.

use std::{ops::Deref, path::Path};

use anyhow::Result;
use matrix_sdk::{
    Room,
    ruma::{RoomId, api::client::state::get_state_events, events::AnyStateEvent, serde::Raw},
};
use sdk_ext::{ClientCryptoStore, RoomStateExt, StateExtConfig, StateExtension};

use crate::TestUser;

/// A registered user whose client runs the extension with an encrypted SQLite store.
#[derive(Debug)]
pub struct StateUser {
    /// The user.
    pub user: TestUser,
    /// The installed extension.
    pub ext: StateExtension,
}

impl StateUser {
    /// Registers a user and installs the extension (SQLite with a passphrase, in the user's
    /// temporary directory).
    pub async fn register(prefix: &str) -> Result<Self> {
        Self::install(TestUser::register(prefix).await?).await
    }

    /// Registers a user on the homeserver at `url` (a server of the test's own) and installs
    /// the extension with `config` applied to the usual configuration.
    pub async fn register_on(
        url: &str,
        prefix: &str,
        config: impl FnOnce(&mut StateExtConfig),
    ) -> Result<Self> {
        Self::install_with(TestUser::register_on(url, prefix).await?, config).await
    }

    /// Registers a user and installs the extension with `config` applied to the usual
    /// configuration.
    pub async fn register_with(
        prefix: &str,
        config: impl FnOnce(&mut StateExtConfig),
    ) -> Result<Self> {
        Self::install_with(TestUser::register(prefix).await?, config).await
    }

    /// Installs the extension for an already registered user, with `config` applied to the
    /// usual configuration.
    pub async fn install_with(
        user: TestUser,
        config: impl FnOnce(&mut StateExtConfig),
    ) -> Result<Self> {
        let mut settings = state_config(user.store_dir.path(), &user.crypto_store);
        config(&mut settings);
        let ext = StateExtension::install(&user.client, settings).await?;
        Ok(Self { user, ext })
    }

    /// Installs the extension for an already registered user.
    pub async fn install(user: TestUser) -> Result<Self> {
        let settings = state_config(user.store_dir.path(), &user.crypto_store);
        let ext = StateExtension::install(&user.client, settings).await?;
        Ok(Self { user, ext })
    }

    /// The user's copy of `room_id`.
    pub fn room(&self, room_id: &RoomId) -> Room {
        self.user.client.get_room(room_id).expect("the user knows the room")
    }

    /// Syncs until our API reports `name` as the room's encrypted name (`None`: no name), or
    /// fails after `timeout` naming `what` was awaited.
    pub async fn sync_until_name(
        &self,
        room_id: &RoomId,
        name: Option<&str>,
        what: &str,
        timeout: std::time::Duration,
    ) -> Result<()> {
        let room = self.room(room_id);
        crate::sync_until(&self.user.client, what, timeout, || async {
            room.encrypted_name().await.ok().flatten().as_deref() == name
        })
        .await
    }
}

impl Deref for StateUser {
    type Target = TestUser;

    fn deref(&self) -> &TestUser {
        &self.user
    }
}

/// The extension's configuration for a test user whose stores are in `store_dir`: SQLite with a
/// passphrase, next to matrix-sdk's stores, sharing the client's `crypto_store`.
pub fn state_config(store_dir: &Path, crypto_store: &ClientCryptoStore) -> StateExtConfig {
    StateExtConfig::sqlite(store_dir.join("state"), "integration-tests")
        .with_client_crypto_store(crypto_store.clone())
}

/// The room state as the homeserver serves it (`GET /rooms/{id}/state`).
pub async fn server_state(user: &TestUser, room_id: &RoomId) -> Result<Vec<Raw<AnyStateEvent>>> {
    let response = user.client.send(get_state_events::v3::Request::new(room_id.to_owned())).await?;
    Ok(response.room_state)
}

/// Whether the client stores any `m.room.encrypted` state for `room_id` (whether or not our
/// extension processed it).
pub async fn stores_encrypted_state(client: &matrix_sdk::Client, room_id: &RoomId) -> bool {
    let Some(room) = client.get_room(room_id) else { return false };
    room.get_state_events(matrix_sdk::ruma::events::StateEventType::RoomEncrypted)
        .await
        .is_ok_and(|events| !events.is_empty())
}

/// Alice and Bob, each with the extension, in a fresh end-to-end encrypted room that Alice
/// created and switched to encrypted state.
pub async fn alice_and_bob_with_encrypted_state() -> Result<(StateUser, StateUser, Room)> {
    use sdk_ext::RoomStateExt;
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register("bob").await?;
    let room = crate::shared_room(&alice, &[&bob]).await?;
    room.enable_state_encryption().await?;
    Ok((alice, bob, room))
}

/// Alice's room with encrypted state switched on, with Bob and Mallory as members and Mallory
/// at power 50 (her client has seen it): the setup of the flood tests.
pub async fn room_with_a_member_at_50() -> Result<(StateUser, StateUser, StateUser, Room)> {
    let alice = StateUser::register("alice").await?;
    let bob = StateUser::register("bob").await?;
    let mallory = StateUser::register("mallory").await?;
    let room = crate::shared_room(&alice, &[&bob, &mallory]).await?;
    crate::set_power_levels(&room, &[(mallory.user_id(), 50)], &[]).await?;
    room.enable_state_encryption().await?;
    let mallory_room = mallory.room(room.room_id());
    crate::sync_until(
        &mallory.client,
        "Mallory sees her power",
        crate::DEFAULT_TIMEOUT,
        || async { crate::has_power_level(&mallory_room, mallory.user_id(), 50).await },
    )
    .await?;
    Ok((alice, bob, mallory, room))
}

/// The message [`room_with_history`] posts before anyone is invited.
pub const PRE_INVITE_MESSAGE: &str = "said before Bob was invited";

/// `alice`'s room with `visibility`, encrypted state whose name was set to each of `names` in
/// turn, and one message ([`PRE_INVITE_MESSAGE`]), all before anyone is invited with history.
pub async fn room_with_history(
    alice: &StateUser,
    visibility: &str,
    names: &[&str],
) -> Result<Room> {
    let room = crate::shared_room(alice, &[]).await?;
    room.send_state_event_raw(
        "m.room.history_visibility",
        "",
        serde_json::json!({ "history_visibility": visibility }),
    )
    .await?;
    room.enable_state_encryption().await?;
    for name in names {
        room.set_encrypted_name(name).await?;
    }
    room.send(matrix_sdk::ruma::events::room::message::RoomMessageEventContent::text_plain(
        PRE_INVITE_MESSAGE,
    ))
    .await?;
    Ok(room)
}

/// `alice`'s `joined`-visibility room with encrypted state named `names` in turn; `carol` is a
/// second admin who has read the current name.
pub async fn room_with_an_admin(
    alice: &StateUser,
    carol: &StateUser,
    names: &[&str],
) -> Result<Room> {
    let room = crate::shared_room(alice, &[carol]).await?;
    room.send_state_event_raw(
        "m.room.history_visibility",
        "",
        serde_json::json!({ "history_visibility": "joined" }),
    )
    .await?;
    crate::set_power_levels(&room, &[(carol.user_id(), 100)], &[]).await?;
    room.enable_state_encryption().await?;
    for name in names {
        room.set_encrypted_name(name).await?;
    }
    let current = names.last().copied();
    carol
        .sync_until_name(
            room.room_id(),
            current,
            "Carol reads the current name",
            crate::DEFAULT_TIMEOUT,
        )
        .await?;
    Ok(room)
}
