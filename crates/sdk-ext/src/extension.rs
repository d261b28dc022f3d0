//! The installed extension: its store, its background task, its subscribers.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, LazyLock, Mutex as StdMutex, Weak},
};

use crypto_ext::OwnDevice;
use crypto_ext::identifiers;
use matrix_sdk::{
    Client, Room,
    deserialized_responses::EncryptionInfo,
    event_handler::{EventHandlerHandle, RawEvent},
};
use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, events::AnyToDeviceEvent};
use serde_json::Value;
use state_store_ext::{MemoryStateStore, SqliteStateStore, StateStore};
use tokio::{
    sync::{Mutex, broadcast},
    task::AbortHandle,
};
use tracing::{info, warn};

use crate::{
    Error, Result, RoomPreview, StateExtConfig, StateUpdate,
    config::StoreConfig,
    processing::{self, Processor},
    receive,
};

/// Extensions installed in this process, by the client's user and device, so that `Room`
/// methods find theirs.
static REGISTRY: LazyLock<StdMutex<Registry>> = LazyLock::new(Default::default);

type Registry = BTreeMap<(OwnedUserId, OwnedDeviceId), Weak<Inner>>;

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) own_device: OwnDevice,
    pub(crate) config: StateExtConfig,
    pub(crate) updates: broadcast::Sender<StateUpdate>,
    /// Serialises updates of one room's outbound sessions.
    room_locks: StdMutex<BTreeMap<OwnedRoomId, Arc<Mutex<()>>>>,
    /// Rooms we switched to encrypted state ourselves, before the sync echoes it.
    pub(crate) enabled_rooms: StdMutex<BTreeSet<OwnedRoomId>>,
    /// Serialises processing (sync batches, key arrivals, imports).
    pub(crate) processing: Mutex<()>,
    /// Serialises bundle imports.
    pub(crate) imports: Mutex<()>,
    /// Downloads bundles.
    pub(crate) http: matrix_sdk::reqwest::Client,
    /// Rooms with kept bundle announcements (so a sync of any other room costs no store query).
    pub(crate) bundle_rooms: StdMutex<BTreeSet<OwnedRoomId>>,
    /// Rooms whose encrypted state waits for keys (the ones key requests are about).
    pub(crate) waiting_rooms: StdMutex<BTreeSet<OwnedRoomId>>,
    /// Rooms with events rejected because their sender's device was unknown, with those
    /// senders: a device update of one of them validates the room's events again.
    pub(crate) unknown_device_senders: StdMutex<BTreeMap<OwnedRoomId, BTreeSet<OwnedUserId>>>,
    /// Device lookups that asked the homeserver lately (so they do not ask again at once).
    pub(crate) asked_lookups: crate::devices::AskedLookups,
    task: StdMutex<Option<AbortHandle>>,
    /// The to-device handler for state keys sent with invites.
    handler: StdMutex<Option<EventHandlerHandle>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateExtension")
            .field("user_id", &self.own_device.user_id)
            .field("device_id", &self.own_device.device_id)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        if let Some(handler) = self.handler.lock().unwrap_or_else(|e| e.into_inner()).take() {
            self.client.remove_event_handler(handler);
        }
    }
}

impl Inner {
    pub(crate) fn room_lock(&self, room_id: &RoomId) -> Arc<Mutex<()>> {
        self.room_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(room_id.to_owned())
            .or_default()
            .clone()
    }

    /// Whether the background task runs (not shut down).
    pub(crate) fn is_running(&self) -> bool {
        self.task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|task| !task.is_finished())
    }

    /// Marks whether `room_id` has kept bundle announcements.
    pub(crate) fn set_bundle_room(&self, room_id: &RoomId, has_bundles: bool) {
        set_member(&self.bundle_rooms, room_id, has_bundles);
    }

    /// Whether `room_id` has kept bundle announcements.
    pub(crate) fn is_bundle_room(&self, room_id: &RoomId) -> bool {
        self.bundle_rooms.lock().unwrap_or_else(|e| e.into_inner()).contains(room_id)
    }

    /// Marks whether `room_id`'s encrypted state waits for keys.
    pub(crate) fn set_waiting_room(&self, room_id: &RoomId, waiting: bool) {
        set_member(&self.waiting_rooms, room_id, waiting);
    }

    /// The rooms whose encrypted state waits for keys.
    pub(crate) fn waiting_rooms(&self) -> Vec<OwnedRoomId> {
        self.waiting_rooms.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// Adds `sender` to the senders of `room_id`'s events rejected for an unknown device.
    pub(crate) fn add_unknown_device_sender(&self, room_id: &RoomId, sender: OwnedUserId) {
        let mut rooms = self.unknown_device_senders.lock().unwrap_or_else(|e| e.into_inner());
        rooms.entry(room_id.to_owned()).or_default().insert(sender);
    }

    /// Whether `room_id` has events rejected for an unknown device.
    pub(crate) fn waits_for_unknown_devices(&self, room_id: &RoomId) -> bool {
        self.unknown_device_senders.lock().unwrap_or_else(|e| e.into_inner()).contains_key(room_id)
    }

    /// Replaces the senders of `room_id`'s events rejected for an unknown device (none: the
    /// room is forgotten).
    pub(crate) fn set_unknown_device_senders(
        &self,
        room_id: &RoomId,
        senders: BTreeSet<OwnedUserId>,
    ) {
        let mut rooms = self.unknown_device_senders.lock().unwrap_or_else(|e| e.into_inner());
        if senders.is_empty() {
            rooms.remove(room_id);
        } else {
            rooms.insert(room_id.to_owned(), senders);
        }
    }

    /// The rooms with events rejected for an unknown device of one of `users`.
    pub(crate) fn rooms_with_unknown_devices_of(
        &self,
        users: &BTreeSet<OwnedUserId>,
    ) -> Vec<OwnedRoomId> {
        let rooms = self.unknown_device_senders.lock().unwrap_or_else(|e| e.into_inner());
        rooms
            .iter()
            .filter(|(_, senders)| !senders.is_disjoint(users))
            .map(|(room_id, _)| room_id.clone())
            .collect()
    }

    pub(crate) fn notify(&self, updates: Vec<StateUpdate>) {
        for update in updates {
            // No subscriber is fine.
            let _ = self.updates.send(update);
        }
    }
}

fn set_member(set: &StdMutex<BTreeSet<OwnedRoomId>>, room_id: &RoomId, member: bool) {
    let mut set = set.lock().unwrap_or_else(|e| e.into_inner());
    if member {
        set.insert(room_id.to_owned());
    } else {
        set.remove(room_id);
    }
}

/// Registers the handler for our to-device messages: state keys sent with invites and
/// room-key bundle announcements.
fn register_to_device_handler(client: &Client, inner: Weak<Inner>) -> EventHandlerHandle {
    client.add_event_handler(
        move |_: AnyToDeviceEvent, raw: RawEvent, info: Option<EncryptionInfo>| {
            let inner = inner.clone();
            async move {
                let Some(inner) = inner.upgrade() else { return };
                if let Err(error) = on_to_device(&inner, &raw, info.as_ref()).await {
                    warn!(%error, "could not handle a to-device message");
                }
            }
        },
    )
}

async fn on_to_device(
    inner: &Arc<Inner>,
    raw: &RawEvent,
    info: Option<&EncryptionInfo>,
) -> Result<()> {
    let event: Value = serde_json::from_str(raw.get())?;
    let event_type = event.get("type").and_then(Value::as_str).unwrap_or_default();
    if event_type == identifiers::INVITE_STATE_KEYS {
        return crate::invite::receive_preview_keys(inner, &event, info).await;
    }
    if event_type == identifiers::STATE_KEY_REQUEST {
        return crate::requests::receive_request(inner, &event, info).await;
    }
    if event_type == identifiers::STATE_KEY_SHARE {
        return crate::requests::receive_share(inner, &event, info).await;
    }
    if event_type == identifiers::RESTRICTED_PREVIEW {
        return crate::restricted::receive_preview(inner, &event, info).await;
    }
    if !identifiers::is_room_key_bundle(event_type) {
        return Ok(());
    }
    let Some(room_id) = receive::receive_announcement(inner, &event, info).await? else {
        return Ok(());
    };
    if !inner.is_running() {
        // Shut down: announcements are still kept, imports wait for `import_history`.
        return Ok(());
    }
    // The invite may already be accepted (an announcement can trail the join). Imports take
    // a while: not in the sync's event handler.
    let inner = Arc::downgrade(inner);
    tokio::spawn(async move {
        let Some(inner) = inner.upgrade() else { return };
        let Some(room) = inner.client.get_room(&room_id) else { return };
        if let Err(error) = receive::import_pending(&inner, &room).await {
            warn!(%error, "importing a room-key bundle failed");
        }
    });
    Ok(())
}

/// Encrypted room state for one logged-in `matrix_sdk::Client`.
///
/// Installing it opens the store, processes the encrypted state the client already holds, and
/// starts a background task that processes every sync and every room key that arrives. Dropping
/// the last handle (or [`StateExtension::shutdown`]) stops that task.
#[derive(Clone, Debug)]
pub struct StateExtension {
    pub(crate) inner: Arc<Inner>,
}

impl StateExtension {
    /// Installs the extension on a logged-in client.
    ///
    /// # Errors
    ///
    /// [`Error::NotReady`] if the client is not logged in or has no encryption set up; store
    /// errors when the store cannot be opened (wrong passphrase, newer schema, ...).
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
        let store: Arc<dyn StateStore> = match &config.store {
            StoreConfig::Sqlite { path, passphrase } => {
                Arc::new(SqliteStateStore::open(path, passphrase.as_deref()).await?)
            }
            StoreConfig::Memory => Arc::new(MemoryStateStore::new()),
        };
        let (updates, _) = broadcast::channel(1024);
        let http = config.http_client.clone().unwrap_or_default();
        let bundle_rooms = store.rooms_with_pending_bundles().await?.into_iter().collect();
        let inner = Arc::new(Inner {
            client: client.clone(),
            store,
            own_device,
            config,
            updates,
            room_locks: Default::default(),
            enabled_rooms: Default::default(),
            processing: Mutex::new(()),
            imports: Mutex::new(()),
            http,
            bundle_rooms: StdMutex::new(bundle_rooms),
            waiting_rooms: Default::default(),
            unknown_device_senders: Default::default(),
            asked_lookups: Default::default(),
            task: StdMutex::new(None),
            handler: StdMutex::new(None),
        });

        // Subscribe before the first scan so nothing that arrives in between is missed.
        let room_updates = client.subscribe_to_all_room_updates();
        let room_keys = client.encryption().room_keys_received_stream().await;
        let room_info = client.room_info_notable_update_receiver();
        let devices = client.encryption().devices_stream().await?;
        Processor::new(&inner).scan_all().await?;
        let task = tokio::spawn(processing::run(
            Arc::downgrade(&inner),
            room_updates,
            room_keys,
            room_info,
            devices,
        ));
        *inner.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        let handler = register_to_device_handler(client, Arc::downgrade(&inner));
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

    pub(crate) fn of_room(room: &Room) -> Result<Self> {
        Self::of(&room.client()).ok_or(Error::NotInstalled)
    }

    /// Subscribes to changes of decrypted state (accepted, rejected, waiting for a key), sent
    /// after they are stored. A slow subscriber that falls more than 1024 updates behind gets
    /// `RecvError::Lagged` and should re-read the state it shows.
    pub fn subscribe(&self) -> broadcast::Receiver<StateUpdate> {
        self.inner.updates.subscribe()
    }

    /// Our device, as the creator of state sessions.
    pub fn own_device(&self) -> &OwnDevice {
        &self.inner.own_device
    }

    /// The store, for direct queries.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.inner.store
    }

    /// Processes the encrypted state the client holds for every room now, including events
    /// rejected for a reason that may have cleared. The background task does this on
    /// its own; call it after importing keys by other means.
    ///
    /// # Errors
    ///
    /// Store or homeserver errors.
    pub async fn refresh(&self) -> Result<()> {
        Processor::new(&self.inner).scan_all().await
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
        crate::restricted::preview(&self.inner, room_id).await
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
