//! The background work: start-up work, then the listener that handles one event at a time.
//!
//! Start-up resumes imports, asks for missing keys and pushes previews; the listener reacts to
//! syncs, key arrivals, membership changes, device updates and the key-request schedule.

use std::{
    collections::BTreeSet,
    pin::Pin,
    sync::{Arc, Weak},
    time::Duration,
};

use crypto_ext::identifiers;
use futures_util::{Stream, StreamExt};
use matrix_sdk::{
    Client,
    encryption::identities::DeviceUpdates,
    sync::{JoinedRoomUpdate, RoomUpdates, State},
};
use matrix_sdk_base::{RoomInfoNotableUpdate, RoomInfoNotableUpdateReasons};
use matrix_sdk_crypto::store::types::RoomKeyInfo;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, events::AnySyncStateEvent, serde::Raw};
use tokio::sync::broadcast::{Receiver, error::RecvError};
use tracing::warn;

use super::inner::Inner;
use crate::{Result, features::state::RoomSync};

/// Keys the client's machine received; `Err` when the stream lagged.
type RoomKeys = Pin<Box<dyn Stream<Item = Result<Vec<RoomKeyInfo>, ()>> + Send>>;
type Devices = Pin<Box<dyn Stream<Item = DeviceUpdates> + Send>>;

/// Work done once when the background task starts: an import cut short (a crash, a failed
/// download) resumes, keys still missing after a restart are asked for, restricted rooms'
/// previews are pushed.
struct StartUp;

impl StartUp {
    async fn run(inner: &Arc<Inner>) {
        import_all_history(inner);
        for room_id in inner.state.waiting_rooms() {
            request_keys(inner, &room_id).await;
        }
        share_previews(inner, None).await;
    }
}

/// The listener: what the client reports, handled one event at a time by its [`Handler`].
pub(super) struct Listener {
    handler: Handler,
    room_updates: Receiver<RoomUpdates>,
    room_keys: Option<RoomKeys>,
    room_info: Receiver<RoomInfoNotableUpdate>,
    devices: Devices,
}

impl Listener {
    /// Subscribes to everything the listener reacts to (before the first scan, so nothing that
    /// arrives in between is missed).
    pub(super) async fn subscribe(client: &Client, inner: Weak<Inner>) -> Result<Self> {
        let room_updates = client.subscribe_to_all_room_updates();
        let room_keys = client
            .encryption()
            .room_keys_received_stream()
            .await
            .map(|stream| Box::pin(stream.map(|keys| keys.map_err(drop))) as RoomKeys);
        let room_info = client.room_info_notable_update_receiver();
        let devices = Box::pin(client.encryption().devices_stream().await?) as Devices;
        Ok(Self { handler: Handler { inner }, room_updates, room_keys, room_info, devices })
    }

    /// Runs the start-up work, then listens until the extension is dropped or the client
    /// closes its channels.
    pub(super) async fn run(self) {
        let Self { handler, mut room_updates, mut room_keys, mut room_info, mut devices } = self;
        if let Some(inner) = handler.inner.upgrade() {
            StartUp::run(&inner).await;
        }
        // Key requests escalate, and owed checks of rooms' state run, on a schedule, syncs or
        // not.
        let tick = handler
            .inner
            .upgrade()
            .map(|inner| {
                (inner.ctx.config.key_requests.escalation_delay / 2).max(Duration::from_millis(500))
            })
            .unwrap_or(Duration::from_secs(15));
        let mut schedule = tokio::time::interval(tick);
        schedule.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_keys = async {
                match room_keys.as_mut() {
                    Some(stream) => stream.next().await,
                    None => std::future::pending().await,
                }
            };
            let go_on = tokio::select! {
                update = room_updates.recv() => handler.on_sync(update).await,
                _ = schedule.tick() => handler.on_schedule().await,
                update = room_info.recv() => handler.on_room_info(update).await,
                Some(update) = devices.next() => handler.on_devices(update).await,
                keys = next_keys => {
                    if keys.is_none() {
                        // The client's machine closed that stream: listen to the others.
                        room_keys = None;
                    }
                    handler.on_keys(keys).await
                }
            };
            if !go_on {
                return;
            }
        }
    }
}

/// What the listener does with each thing it hears; `false` from a handler ends the listener
/// (the extension was dropped, or the client closed a channel).
struct Handler {
    inner: Weak<Inner>,
}

impl Handler {
    /// A sync batch (or the news that we missed some). Returns whether to go on.
    async fn on_sync(&self, update: Result<RoomUpdates, RecvError>) -> bool {
        let Some(inner) = self.inner.upgrade() else { return false };
        let result = match update {
            Ok(updates) => {
                let timelines = updates
                    .joined
                    .iter()
                    .map(|(room_id, update)| (room_id.clone(), room_sync(update)))
                    .collect();
                let scanned = inner.state.scan_rooms(&timelines).await;
                // Announcements that came before their invite are kept now that it is here;
                // kept bundles of joined rooms are imported; keys still missing are asked for.
                for room_id in updates.invited.keys() {
                    if let Err(error) = inner.history.keep_early(room_id).await {
                        warn!(%error, %room_id, "keeping a bundle announcement failed");
                    }
                }
                for room_id in updates.joined.keys() {
                    import_history(&inner, room_id);
                }
                for room_id in inner.state.waiting_rooms() {
                    if updates.joined.contains_key(&room_id) {
                        request_keys(&inner, &room_id).await;
                    }
                }
                // Restricted rooms' previews follow membership and state changes.
                let changed: BTreeSet<OwnedRoomId> = updates
                    .joined
                    .iter()
                    .filter(|(_, update)| changes_state(update))
                    .map(|(room_id, _)| room_id.clone())
                    .collect();
                if !changed.is_empty() {
                    share_previews(&inner, Some(&changed)).await;
                }
                for room_id in &changed {
                    if let Err(error) = inner.restricted.forget_if_joined(room_id).await {
                        warn!(%error, "forgetting a joined room's preview failed");
                    }
                }
                scanned
            }
            // We missed batches: everything may have changed.
            Err(RecvError::Lagged(missed)) => {
                warn!(missed, "missed sync batches, rescanning every room");
                let scanned = inner.state.scan_all().await;
                share_previews(&inner, None).await;
                scanned
            }
            Err(RecvError::Closed) => return false,
        };
        if let Err(error) = result {
            warn!(%error, "processing a sync batch failed");
        }
        true
    }

    /// The schedule: key requests escalate, owed checks of rooms' state run, deferred bundle
    /// downloads are retried.
    async fn on_schedule(&self) -> bool {
        let Some(inner) = self.inner.upgrade() else { return false };
        for room_id in inner.history.retries_due() {
            import_history(&inner, &room_id);
        }
        for room_id in inner.state.waiting_rooms() {
            request_keys(&inner, &room_id).await;
        }
        for room_id in inner.state.rooms_with_gaps_due() {
            let Some(room) = inner.ctx.client.get_room(&room_id) else { continue };
            if let Err(error) = inner.state.scan_room(&room).await {
                warn!(%error, %room_id, "checking a room's state against the homeserver's failed");
            }
        }
        true
    }

    /// A notable change of a room's info.
    async fn on_room_info(&self, update: Result<RoomInfoNotableUpdate, RecvError>) -> bool {
        let Some(inner) = self.inner.upgrade() else { return false };
        match update {
            // Our membership changed (we joined after accepting an invite, say): the inviter's
            // bundle can be imported now, without waiting for a sync.
            Ok(update) if update.reasons.contains(RoomInfoNotableUpdateReasons::MEMBERSHIP) => {
                import_history(&inner, &update.room_id);
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => import_all_history(&inner),
            Err(RecvError::Closed) => return false,
        }
        true
    }

    /// New or changed devices: events rejected because their sender's device was unknown may
    /// pass now.
    async fn on_devices(&self, update: DeviceUpdates) -> bool {
        let Some(inner) = self.inner.upgrade() else { return false };
        let users: BTreeSet<OwnedUserId> =
            update.new.into_keys().chain(update.changed.into_keys()).collect();
        for room_id in inner.state.rooms_with_unknown_devices_of(&users) {
            let Some(room) = inner.ctx.client.get_room(&room_id) else { continue };
            if let Err(error) = inner.state.scan_room(&room).await {
                warn!(%error, %room_id, "validating events again after a device update failed");
            }
        }
        true
    }

    /// Room keys the client's machine received (`None`: that stream ended).
    async fn on_keys(&self, keys: Option<Result<Vec<RoomKeyInfo>, ()>>) -> bool {
        let Some(inner) = self.inner.upgrade() else { return false };
        let result = match keys {
            Some(Ok(keys)) => {
                let rooms: BTreeSet<OwnedRoomId> = keys.iter().map(|k| k.room_id.clone()).collect();
                let sessions: BTreeSet<String> = keys.into_iter().map(|k| k.session_id).collect();
                let retried = inner.keys_stored(sessions).await;
                // State that became readable may be a restricted room's new look.
                share_previews(&inner, Some(&rooms)).await;
                retried
            }
            Some(Err(())) => inner.state.scan_all().await,
            None => Ok(()),
        };
        if let Err(error) = result {
            warn!(%error, "retrying events after new room keys failed");
        }
        true
    }
}

/// Pushes restricted rooms' previews, logging failures.
async fn share_previews(inner: &Inner, updated: Option<&BTreeSet<OwnedRoomId>>) {
    if let Err(error) = inner.restricted.share_previews(updated).await {
        warn!(%error, "pushing restricted rooms' previews failed");
    }
}

/// What a sync brought for one room that encrypted state needs: the timeline's encrypted state
/// events and power levels changes in order, the state section's encrypted state events, and
/// whether the timeline has a gap (the client stores only each slot's current event).
fn room_sync(update: &JoinedRoomUpdate) -> RoomSync {
    let is_state_of = |raw: &Raw<AnySyncStateEvent>, event_type: &str| {
        raw.get_field::<String>("type").ok().flatten().as_deref() == Some(event_type)
            && raw.get_field::<String>("state_key").is_ok_and(|key| key.is_some())
    };
    let timeline = update
        .timeline
        .events
        .iter()
        .map(|event| event.raw().cast_ref_unchecked::<AnySyncStateEvent>())
        .filter(|raw| {
            is_state_of(raw, identifiers::ROOM_ENCRYPTED) || is_state_of(raw, "m.room.power_levels")
        })
        .cloned()
        .collect();
    let state = match &update.state {
        State::Before(events) | State::After(events) => events,
    };
    let state =
        state.iter().filter(|raw| is_state_of(raw, identifiers::ROOM_ENCRYPTED)).cloned().collect();
    RoomSync { timeline, state, limited: update.timeline.limited, revalidate: false }
}

/// Whether a sync changed a room's state (membership, join rules, encrypted state...).
fn changes_state(update: &JoinedRoomUpdate) -> bool {
    let state = match &update.state {
        State::Before(events) | State::After(events) => events,
    };
    !state.is_empty()
        || update.timeline.events.iter().any(|event| {
            event.raw().get_field::<String>("state_key").is_ok_and(|key| key.is_some())
        })
}

/// Imports the bundles kept for a room we joined in a task of its own, so that a slow or stalled
/// download never holds up the listener (at most one per room; a deferred download waits for
/// its retry), logging failures.
pub(super) fn import_history(inner: &Arc<Inner>, room_id: &RoomId) {
    let Some(room) = inner.ctx.client.get_room(room_id) else { return };
    if !inner.history.start_background_import(room_id) {
        return;
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        if let Err(error) = inner.import_history(&room).await {
            warn!(room_id = %room.room_id(), %error, "importing a room-key bundle failed");
        }
        inner.history.end_background_import(room.room_id());
    });
}

/// [`import_history`] for every joined room.
fn import_all_history(inner: &Arc<Inner>) {
    for room in inner.ctx.client.joined_rooms() {
        import_history(inner, room.room_id());
    }
}

/// Asks for the keys a joined room's state still waits for, logging failures.
async fn request_keys(inner: &Inner, room_id: &RoomId) {
    if let Some(room) = inner.ctx.client.get_room(room_id)
        && let Err(error) = inner.request_keys(&room).await
    {
        warn!(%room_id, %error, "asking for state keys failed");
    }
}
