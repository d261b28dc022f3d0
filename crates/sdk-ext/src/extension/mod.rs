//! The extension on top: wiring, dispatch, background tasks and the `Room` traits.
//!
//! It wires the features in one constructor; it is the only module that names the features,
//! and the one that decides what one feature's result means for another.

mod dispatch;
pub(crate) mod history;
mod inner;
pub(crate) mod room;
mod tasks;
mod upgrade;

use std::{
    collections::BTreeMap,
    sync::{Arc, LazyLock, Mutex as StdMutex, Weak},
};

use crypto_ext::OwnDevice;
use matrix_sdk::{Client, Room};
use ruma::{
    OwnedDeviceId, OwnedUserId, RoomId,
    api::client::room::create_room::v3::Request as CreateRoomRequest,
};
use state_store_ext::{MemoryStateStore, SqliteStateStore, StateStore};
use tokio::sync::broadcast;
use tracing::{info, warn};

use self::inner::Inner;
use crate::{
    Error, Result, RoomPreview, StateExtConfig, StateUpdate,
    config::StoreConfig,
    context::Context,
    features::{
        history::History, invites::Invites, requests::KeyRequests, restricted::RestrictedPreviews,
        state::EncryptedState,
    },
};

/// Extensions installed in this process, by the client's user and device, so that `Room`
/// methods find theirs.
static REGISTRY: LazyLock<StdMutex<Registry>> = LazyLock::new(Default::default);

type Registry = BTreeMap<(OwnedUserId, OwnedDeviceId), Weak<Inner>>;

/// Encrypted room state for one logged-in `matrix_sdk::Client`.
///
/// Installing it opens the store, processes the encrypted state the client already holds, and
/// starts a background task that processes every sync and every room key that arrives. Dropping
/// the last handle (or [`StateExtension::shutdown`]) stops that task.
#[derive(Clone, Debug)]
pub struct StateExtension {
    inner: Arc<Inner>,
}

impl StateExtension {
    /// Installs the extension on a logged-in client.
    ///
    /// # Errors
    ///
    /// [`Error::NotReady`] if the client is not logged in or has no encryption set up; store
    /// errors when the store cannot be opened (wrong passphrase, newer schema, ...);
    /// [`Error::ForeignCryptoStore`] if [`StateExtConfig::client_crypto_store`] is not the
    /// client's.
    pub async fn install(client: &Client, config: StateExtConfig) -> Result<Self> {
        let (Some(user_id), Some(device_id)) = (client.user_id(), client.device_id()) else {
            return Err(Error::NotReady);
        };
        let device = client.encryption().get_own_device().await.map_err(matrix_sdk::Error::from)?;
        let device = device.ok_or(Error::NotReady)?;
        let own_device = OwnDevice {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            curve25519: device.curve25519_key().ok_or(Error::NotReady)?,
            ed25519: device.ed25519_key().ok_or(Error::NotReady)?,
        };
        if let Some(shared) = &config.client_crypto_store {
            shared.check_owner(&own_device).await?;
        }
        let store: Arc<dyn StateStore> = match &config.store {
            StoreConfig::Sqlite { path, passphrase } => {
                Arc::new(SqliteStateStore::open(path, passphrase.as_deref()).await?)
            }
            StoreConfig::Memory => Arc::new(MemoryStateStore::new()),
        };
        let ctx = Context::new(client.clone(), store, own_device, config);
        let inner = Arc::new(Inner {
            state: EncryptedState::new(ctx.clone()),
            history: History::new(ctx.clone()).await?,
            requests: KeyRequests::new(ctx.clone()),
            invites: Invites::new(ctx.clone()),
            restricted: RestrictedPreviews::new(ctx.clone()),
            ctx,
            task: StdMutex::new(None),
            handler: StdMutex::new(None),
        });

        // Subscribe before the first scan so nothing that arrives in between is missed.
        let listener = tasks::Listener::subscribe(client, Arc::downgrade(&inner)).await?;
        inner.state.scan_all().await?;
        let task = tokio::spawn(listener.run());
        *inner.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        let handler = dispatch::register(client, Arc::downgrade(&inner));
        *inner.handler.lock().unwrap_or_else(|e| e.into_inner()) = Some(handler);

        REGISTRY
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((user_id.to_owned(), device_id.to_owned()), Arc::downgrade(&inner));
        info!(%user_id, %device_id, "encrypted-state extension installed");
        Ok(Self { inner })
    }

    /// The extension installed on `client`, if any.
    pub fn of(client: &Client) -> Option<Self> {
        let key = (client.user_id()?.to_owned(), client.device_id()?.to_owned());
        let inner = REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).get(&key)?.upgrade()?;
        Some(Self { inner })
    }

    /// The extension installed on the client of `room`.
    fn of_room(room: &Room) -> Result<Self> {
        Self::of(&room.client()).ok_or(Error::NotInstalled)
    }

    /// Subscribes to changes of decrypted state (accepted, rejected, waiting for a key), sent
    /// after they are stored. A slow subscriber that falls more than 1024 updates behind gets
    /// `RecvError::Lagged` and should re-read the state it shows.
    pub fn subscribe(&self) -> broadcast::Receiver<StateUpdate> {
        self.inner.ctx.updates.subscribe()
    }

    /// Our device, as the creator of state sessions.
    pub fn own_device(&self) -> &OwnDevice {
        &self.inner.ctx.own_device
    }

    /// The store, for direct queries.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.inner.ctx.store
    }

    /// Processes the encrypted state the client holds for every room now, including events
    /// rejected for a reason that may have cleared. The background task does this on
    /// its own; call it after importing keys by other means.
    ///
    /// # Errors
    ///
    /// Store or homeserver errors.
    pub async fn refresh(&self) -> Result<()> {
        self.inner.state.scan_all().await
    }

    /// Creates a room whose state is encrypted from its creation: the room's first
    /// `m.room.encryption` carries the MSC4362 flag (with the algorithm settings of any
    /// `m.room.encryption` in `request.initial_state`, which it replaces), so every client
    /// honours it, Element Web and Element X included (matrix-sdk-crypto refuses a *change* of a
    /// room's encryption settings, so a room switched on later stays plaintext state for them).
    /// `request.name` and `request.topic` are not sent in the request (the homeserver would
    /// keep them in clear) but set encrypted once the room exists.
    ///
    /// # Errors
    ///
    /// The homeserver's refusal, and the errors of
    /// [`RoomStateExt::set_encrypted_state`](crate::RoomStateExt::set_encrypted_state) for the
    /// name and topic.
    pub async fn create_room(&self, request: CreateRoomRequest) -> Result<Room> {
        self.inner.state.create_room(request).await
    }

    /// The preview of a restricted room we have not joined (its name, topic, avatar and alias),
    /// pushed to us by a moderator of a room its allow-list names, so that a space can show
    /// it; `None` if nobody sent one, or once we joined (read the room's state then). Decrypted
    /// and checked at each call, as an invite preview is.
    ///
    /// # Errors
    ///
    /// Store or homeserver errors.
    pub async fn restricted_preview(&self, room_id: &RoomId) -> Result<Option<RoomPreview>> {
        self.inner.restricted.preview(room_id).await
    }

    /// How many times the extension read the client's keys through matrix-sdk's key export
    /// since it was installed (500,000 PBKDF2 rounds each way). Always 0 with
    /// [`StateExtConfig::client_crypto_store`] set; without it, only our own invites export.
    pub fn key_exports(&self) -> u64 {
        self.inner.ctx.key_exports()
    }

    /// Whether the background task that processes syncs and key arrivals is running.
    pub fn is_running(&self) -> bool {
        self.inner.is_running()
    }

    /// Stops the background task. The handle stays usable for reads.
    pub fn shutdown(&self) {
        if let Some(task) = self.inner.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        warn!("encrypted-state extension shut down: syncs are no longer processed");
    }
}

#[cfg(test)]
mod tests {
    use matrix_sdk::Client;

    use super::*;

    #[tokio::test]
    async fn a_client_that_is_not_logged_in_cannot_install_it() {
        // Nothing listens there: building the client must not need the network.
        let client = Client::builder().homeserver_url("http://127.0.0.1:9").build().await.unwrap();
        let error = StateExtension::install(&client, StateExtConfig::memory()).await.unwrap_err();
        assert!(matches!(error, Error::NotReady), "{error}");
        assert!(StateExtension::of(&client).is_none());
    }
}
