//! The context handle: what every feature shares, and the one sender of Olm to-device content.

use std::{
    collections::BTreeSet,
    ops::Deref,
    sync::{
        Arc, Mutex as StdMutex,
        atomic::{AtomicU64, Ordering},
    },
};

use crypto_ext::{OwnDevice, vodozemac::Curve25519PublicKey, wire::OutgoingContent};
use matrix_sdk::{Client, Room, RoomState, encryption::identities::Device};
use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId, events::AnyToDeviceEventContent, serde::Raw};
use state_store_ext::StateStore;
use tokio::sync::broadcast;

use super::throttle::AskedLookups;
use crate::{Result, StateExtConfig, StateUpdate};

/// The authenticated sender of a to-device message that arrived over Olm, as the dispatcher
/// established it.
#[derive(Clone, Debug)]
pub(crate) struct OlmSender {
    /// The sending user.
    pub(crate) user_id: OwnedUserId,
    /// The sending device, as the Olm session names it.
    pub(crate) device_id: Option<OwnedDeviceId>,
    /// The Curve25519 key of the sending device, as the Olm session authenticates it: a key it
    /// hands us that names this device as creator is proven.
    pub(crate) curve25519: Option<Curve25519PublicKey>,
    /// Whether the message carried its sender's device keys (MSC4147).
    pub(crate) sent_device_keys: bool,
    /// The sending device, for the messages whose handling needs it: known (its owner's
    /// devices are queried once if not, throttled), neither blocked nor deleted. Looked up
    /// once, by the dispatcher.
    pub(crate) device: Option<Device>,
}

/// The handle every feature holds.
#[derive(Clone)]
pub(crate) struct Context(Arc<Shared>);

/// What a [`Context`] shares.
pub(crate) struct Shared {
    /// The client the extension is installed on.
    pub(crate) client: Client,
    /// Our store.
    pub(crate) store: Arc<dyn StateStore>,
    /// Our device, as the creator of state sessions.
    pub(crate) own_device: OwnDevice,
    /// The settings.
    pub(crate) config: StateExtConfig,
    /// Subscribers of [`StateUpdate`]s.
    pub(crate) updates: broadcast::Sender<StateUpdate>,
    /// Device lookups that asked the homeserver lately (so they do not ask again at once).
    pub(super) asked_lookups: AskedLookups,
    /// Rooms we switched to encrypted state ourselves, before the sync echoes it.
    pub(super) enabled_rooms: StdMutex<BTreeSet<OwnedRoomId>>,
    /// How many key exports ran (see [`Context::key_exports`]).
    pub(super) key_exports: AtomicU64,
}

impl Deref for Context {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateExtension")
            .field("user_id", &self.own_device.user_id)
            .field("device_id", &self.own_device.device_id)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context for `client`, with its store and our device opened by the caller.
    pub(crate) fn new(
        client: Client,
        store: Arc<dyn StateStore>,
        own_device: OwnDevice,
        config: StateExtConfig,
    ) -> Self {
        let (updates, _) = broadcast::channel(1024);
        Self(Arc::new(Shared {
            client,
            store,
            own_device,
            config,
            updates,
            asked_lookups: AskedLookups::default(),
            enabled_rooms: StdMutex::default(),
            key_exports: AtomicU64::new(0),
        }))
    }

    /// How many times the client's keys were read through matrix-sdk's key export since the
    /// extension was installed.
    pub(crate) fn key_exports(&self) -> u64 {
        self.key_exports.load(Ordering::Relaxed)
    }

    /// Tells subscribers; having none is fine.
    pub(crate) fn notify(&self, updates: Vec<StateUpdate>) {
        for update in updates {
            let _ = self.updates.send(update);
        }
    }

    /// The room `room_id` if we are joined to it.
    pub(crate) fn joined_room(&self, room_id: &ruma::RoomId) -> Option<Room> {
        self.client.get_room(room_id).filter(|room| room.state() == RoomState::Joined)
    }

    /// Sends `content` of `event_type` over Olm to `devices` with the configured sharing
    /// strategy. Returns the devices it could not reach. Sends nothing to an empty list.
    pub(crate) async fn send_to_devices(
        &self,
        devices: &[Device],
        event_type: &str,
        content: Raw<AnyToDeviceEventContent>,
    ) -> Result<Vec<(OwnedUserId, OwnedDeviceId)>> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .client
            .encryption()
            .encrypt_and_send_raw_to_device(
                devices.iter().collect(),
                event_type,
                content,
                self.config.sharing_strategy.clone(),
            )
            .await?)
    }

    /// Sends one of our protocol's messages over Olm to `devices` (see
    /// [`Context::send_to_devices`]).
    pub(crate) async fn send_message<C: OutgoingContent>(
        &self,
        devices: &[Device],
        content: &C,
    ) -> Result<Vec<(OwnedUserId, OwnedDeviceId)>> {
        self.send_to_devices(devices, C::KIND.event_type(), content.to_raw()?).await
    }
}
