//! From what the client stores to validated, persisted state: scans after each sync, retries
//! when keys arrive, one store transaction per batch, subscribers told after commit.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Weak,
    time::Duration,
};

use crypto_ext::{
    DecryptionFacts, EncryptedStateEvent, InboundStateSession, KeyOrigin, RejectedState,
    RejectionReason, SessionOwner, StateSlot, ValidationInput, Verdict,
    critical::is_critical,
    state_sessions::batch::{SessionGroup, decrypt_batch},
    validate,
};
use futures_util::{Stream, StreamExt};
use matrix_sdk::{
    Room,
    deserialized_responses::{
        AlgorithmInfo, RawAnySyncOrStrippedState, TimelineEventKind, UnableToDecryptReason,
        VerificationLevel, VerificationState,
    },
    encryption::identities::DeviceUpdates,
    sync::{JoinedRoomUpdate, RoomUpdates, State},
};
use matrix_sdk_base::{RoomInfoNotableUpdate, RoomInfoNotableUpdateReasons};
use matrix_sdk_crypto::store::types::RoomKeyInfo;
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    events::{
        AnySyncStateEvent, StateEventType,
        room::{encrypted::OriginalSyncRoomEncryptedEvent, power_levels::RoomPowerLevels},
    },
    serde::Raw,
};
use state_store_ext::{PendingEvent, SessionEventRef, StateChanges, StateOrigin, StateRecord};
use tokio::sync::broadcast::{Receiver, error::RecvError};
use tracing::{debug, instrument, warn};

use crate::{Result, StateUpdate, extension::Inner};

/// The slots whose plaintext copies we track next to the encrypted ones: the room's "look".
pub(crate) const AESTHETIC_SLOTS: &[&str] =
    &["m.room.name", "m.room.topic", "m.room.avatar", "m.room.canonical_alias"];

/// The background task: a sync batch or a key arrival at a time.
pub(crate) async fn run<E>(
    inner: Weak<Inner>,
    mut room_updates: Receiver<RoomUpdates>,
    room_keys: Option<impl Stream<Item = Result<Vec<RoomKeyInfo>, E>>>,
    mut room_info: Receiver<RoomInfoNotableUpdate>,
    devices: impl Stream<Item = DeviceUpdates>,
) {
    let mut room_keys = room_keys.map(Box::pin);
    let mut devices = Box::pin(devices);
    // An import cut short (a crash, a failed download) resumes now, and keys still missing
    // after a restart are asked for.
    if let Some(inner) = inner.upgrade() {
        if let Err(error) = crate::receive::import_all_pending(&inner).await {
            warn!(%error, "resuming room-key bundle imports failed");
        }
        for room_id in inner.waiting_rooms() {
            request_keys(&inner, &room_id).await;
        }
        share_previews(&inner, None).await;
    }
    // Key requests escalate on a schedule, syncs or not.
    let tick = inner
        .upgrade()
        .map(|inner| {
            (inner.config.key_requests.escalation_delay / 2).max(Duration::from_millis(500))
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
        tokio::select! {
            update = room_updates.recv() => {
                let Some(inner) = inner.upgrade() else { return };
                let processor = Processor::new(&inner);
                let result = match update {
                    Ok(updates) => {
                        let scanned = processor.scan_updated(&updates).await;
                        // Bundles whose download failed are retried with the room's next sync;
                        // keys still missing are asked for.
                        for room_id in updates.joined.keys() {
                            import_bundles(&inner, room_id).await;
                        }
                        for room_id in inner.waiting_rooms() {
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
                            if let Err(error) =
                                crate::restricted::forget_if_joined(&inner, room_id).await
                            {
                                warn!(%error, "forgetting a joined room's preview failed");
                            }
                        }
                        scanned
                    }
                    // We missed batches: everything may have changed.
                    Err(RecvError::Lagged(missed)) => {
                        warn!(missed, "missed sync batches, rescanning every room");
                        let scanned = processor.scan_all().await;
                        share_previews(&inner, None).await;
                        scanned
                    }
                    Err(RecvError::Closed) => return,
                };
                if let Err(error) = result {
                    warn!(%error, "processing a sync batch failed");
                }
            }
            _ = schedule.tick() => {
                let Some(inner) = inner.upgrade() else { return };
                for room_id in inner.waiting_rooms() {
                    request_keys(&inner, &room_id).await;
                }
            }
            update = room_info.recv() => {
                let Some(inner) = inner.upgrade() else { return };
                match update {
                    // Our membership changed (we joined after accepting an invite, say): the
                    // inviter's bundle can be imported now, without waiting for a sync.
                    Ok(update) if update.reasons.contains(RoomInfoNotableUpdateReasons::MEMBERSHIP) => {
                        import_bundles(&inner, &update.room_id).await;
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        if let Err(error) = crate::receive::import_all_pending(&inner).await {
                            warn!(%error, "importing room-key bundles failed");
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
            Some(update) = devices.next() => {
                let Some(inner) = inner.upgrade() else { return };
                // Events rejected because their sender's device was unknown: one of those
                // devices may be known now.
                let users: BTreeSet<OwnedUserId> =
                    update.new.into_keys().chain(update.changed.into_keys()).collect();
                let processor = Processor::new(&inner);
                for room_id in inner.rooms_with_unknown_devices_of(&users) {
                    let Some(room) = inner.client.get_room(&room_id) else { continue };
                    if let Err(error) = processor.scan_room(&room).await {
                        warn!(%error, %room_id, "validating events again after a device update failed");
                    }
                }
            }
            keys = next_keys => {
                let Some(inner) = inner.upgrade() else { return };
                let processor = Processor::new(&inner);
                let result = match keys {
                    Some(Ok(keys)) => {
                        let rooms: BTreeSet<OwnedRoomId> =
                            keys.iter().map(|k| k.room_id.clone()).collect();
                        let sessions: BTreeSet<String> =
                            keys.into_iter().map(|k| k.session_id).collect();
                        let retried = processor.retry_sessions(sessions).await;
                        // State that became readable may be a restricted room's new look.
                        share_previews(&inner, Some(&rooms)).await;
                        retried
                    }
                    Some(Err(_lagged)) => processor.scan_all().await,
                    None => {
                        room_keys = None;
                        Ok(())
                    }
                };
                if let Err(error) = result {
                    warn!(%error, "retrying events after new room keys failed");
                }
            }
        }
    }
}

/// Pushes restricted rooms' previews (see [`crate::restricted`]), logging failures.
async fn share_previews(inner: &Inner, updated: Option<&BTreeSet<OwnedRoomId>>) {
    if let Err(error) = crate::restricted::share_previews(inner, updated).await {
        warn!(%error, "pushing restricted rooms' previews failed");
    }
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

/// Imports the bundles kept for a room we joined, logging failures (the background task goes
/// on).
async fn import_bundles(inner: &Inner, room_id: &RoomId) {
    if let Some(room) = inner.client.get_room(room_id)
        && let Err(error) = crate::receive::import_pending(inner, &room).await
    {
        warn!(%room_id, %error, "importing a room-key bundle failed");
    }
}

/// Asks for the keys a joined room's state still waits for, logging failures.
async fn request_keys(inner: &Inner, room_id: &RoomId) {
    if let Some(room) = inner.client.get_room(room_id)
        && let Err(error) = crate::requests::request_missing(inner, &room).await
    {
        warn!(%room_id, %error, "asking for state keys failed");
    }
}

/// Changes and the updates to announce once they are stored.
#[derive(Default)]
struct Batch {
    changes: StateChanges,
    updates: Vec<StateUpdate>,
}

enum Decryption {
    Decrypted {
        plaintext: String,
        facts: DecryptionFacts,
    },
    /// No key (yet): the event waits.
    Missing,
    /// The decryptor refused the event; we could not obtain its plaintext to say more.
    Refused(RejectionReason),
}

pub(crate) struct Processor<'a> {
    inner: &'a Inner,
}

impl<'a> Processor<'a> {
    pub(crate) fn new(inner: &'a Inner) -> Self {
        Self { inner }
    }

    /// Every joined room.
    pub(crate) async fn scan_all(&self) -> Result<()> {
        for room in self.inner.client.joined_rooms() {
            self.scan_room(&room).await?;
        }
        Ok(())
    }

    async fn scan_updated(&self, updates: &RoomUpdates) -> Result<()> {
        for room_id in updates.joined.keys() {
            if let Some(room) = self.inner.client.get_room(room_id) {
                self.scan_room(&room).await?;
            }
        }
        Ok(())
    }

    /// Processes the encrypted state the client stores for `room` that we have not seen yet (and
    /// events rejected for a reason that may have cleared).
    #[instrument(skip_all, fields(room_id = %room.room_id()))]
    pub(crate) async fn scan_room(&self, room: &Room) -> Result<()> {
        let _serial = self.inner.processing.lock().await;
        let raws = room.get_state_events(StateEventType::RoomEncrypted).await?;
        let enabled = crate::room::state_encryption_enabled(self.inner, room).await;
        if raws.is_empty() && !enabled {
            self.inner.set_waiting_room(room.room_id(), false);
            return Ok(());
        }
        let room_id = room.room_id();
        let store = &self.inner.store;
        let mut known: BTreeSet<OwnedEventId> = BTreeSet::new();
        for record in store.room_state(room_id).await? {
            known.insert(record.event_id().clone());
        }
        for pending in store.pending_in_room(room_id).await? {
            known.insert(pending.event_id);
        }
        for rejected in store.rejected_events(room_id).await? {
            // Transient rejections (an unknown device) are validated again on every scan: the
            // device may have become known since.
            if rejected.reason.is_transient() {
                self.inner.add_unknown_device_sender(room_id, rejected.sender);
            } else {
                known.insert(rejected.event_id);
            }
        }

        let power_levels = power_levels(room).await;
        let mut batch = Batch::default();
        let mut fresh = Vec::new();
        for raw in raws {
            let RawAnySyncOrStrippedState::Sync(raw) = raw else { continue };
            let event = match EncryptedStateEvent::from_raw(&raw) {
                Ok(event) => event,
                Err(error) => {
                    if let Some(rejected) = malformed(room_id, &raw, &error.to_string())
                        && !known.contains(&rejected.event_id)
                    {
                        warn!(event_id = %rejected.event_id, %error, "malformed encrypted state");
                        push_rejected(&mut batch, rejected);
                    }
                    continue;
                }
            };
            if !known.contains(&event.event_id) {
                fresh.push((raw, event));
            }
        }
        // Events whose keys we hold are decrypted as one batch (each session read once, on
        // every core); the others go one by one through the client's machine.
        let events: Vec<EncryptedStateEvent> = fresh.iter().map(|(_, e)| e.clone()).collect();
        let mut ours = self.decrypt_with_our_sessions(room_id, events).await?;
        let mut slots = BTreeSet::new();
        for (raw, event) in fresh {
            let decryption = match ours.remove(&event.event_id) {
                Some(decryption) => decryption,
                None => self.decrypt(room, &raw, &event).await?,
            };
            if let Some(slot) =
                self.record(room_id, &raw, event, decryption, &power_levels, &mut batch, false)
            {
                slots.insert(slot);
            }
        }
        if enabled {
            self.plaintext_copies(room, slots, &known, &mut batch).await?;
        }
        self.commit(batch).await?;
        let waiting = !self.inner.store.pending_in_room(room_id).await?.is_empty();
        self.inner.set_waiting_room(room_id, waiting);
        // Whose unknown devices the room still waits for (read again only when it waited for
        // some before this scan, or this scan added some).
        if self.inner.waits_for_unknown_devices(room_id) {
            let senders = store
                .rejected_events(room_id)
                .await?
                .into_iter()
                .filter(|rejected| rejected.reason.is_transient())
                .map(|rejected| rejected.sender)
                .collect();
            self.inner.set_unknown_device_senders(room_id, senders);
        }
        Ok(())
    }

    /// Retries the pending events of `sessions` (their keys just arrived).
    pub(crate) async fn retry_sessions(&self, sessions: BTreeSet<String>) -> Result<()> {
        let _serial = self.inner.processing.lock().await;
        let mut batch = Batch::default();
        for session_id in sessions {
            for pending in self.inner.store.pending_for_session(&session_id).await? {
                let Some(room) = self.inner.client.get_room(&pending.room_id) else { continue };
                let Ok(event) = EncryptedStateEvent::from_raw(&pending.event) else { continue };
                let power_levels = power_levels(&room).await;
                self.handle(&room, &pending.event, event, &power_levels, &mut batch, true).await?;
            }
        }
        self.commit(batch).await
    }

    /// Decrypts, validates and records one event. Returns the slot of an accepted event.
    async fn handle(
        &self,
        room: &Room,
        raw: &Raw<AnySyncStateEvent>,
        event: EncryptedStateEvent,
        power_levels: &RoomPowerLevels,
        batch: &mut Batch,
        was_pending: bool,
    ) -> Result<Option<StateSlot>> {
        let decryption = self.decrypt(room, raw, &event).await?;
        Ok(self.record(room.room_id(), raw, event, decryption, power_levels, batch, was_pending))
    }

    /// Decrypts `events` whose sessions are in our store, as one batch. Returns the decryption
    /// of each event it could decrypt, by event id; the sender-key facts are looked up once per
    /// sender key.
    async fn decrypt_with_our_sessions(
        &self,
        room_id: &RoomId,
        events: Vec<EncryptedStateEvent>,
    ) -> Result<BTreeMap<OwnedEventId, Decryption>> {
        let ids: BTreeSet<String> = events.iter().map(|e| e.session_id.clone()).collect();
        let ids: Vec<String> = ids.into_iter().collect();
        let mut groups: BTreeMap<String, SessionGroup> = BTreeMap::new();
        for pickle in self.inner.store.inbound_sessions(&ids).await? {
            if pickle.room_id() == room_id {
                groups.insert(
                    pickle.session_id(),
                    (InboundStateSession::from_pickle(pickle), Vec::new()),
                );
            }
        }
        if groups.is_empty() {
            return Ok(BTreeMap::new());
        }
        for event in events {
            if let Some((_, group)) = groups.get_mut(&event.session_id) {
                group.push(event);
            }
        }
        let groups: Vec<SessionGroup> = groups.into_values().collect();
        // CPU-bound: off the async workers (and on every core when the batch is large).
        let decrypted = tokio::task::spawn_blocking(move || decrypt_batch(groups))
            .await
            .map_err(state_store_ext::StoreError::from)?;
        let mut facts_by_key: Vec<((OwnedUserId, String, KeyOrigin), DecryptionFacts)> = Vec::new();
        let mut out = BTreeMap::new();
        for (event, decrypted) in decrypted {
            let Ok(decrypted) = decrypted else { continue };
            let key = (
                event.sender.clone(),
                decrypted.sender_key.to_base64(),
                decrypted.key_origin.clone(),
            );
            let facts = match facts_by_key.iter().find(|(k, _)| *k == key) {
                Some((_, facts)) => facts.clone(),
                None => {
                    let facts = facts_for_sender_key(
                        self.inner,
                        &event.sender,
                        decrypted.sender_key,
                        decrypted.key_origin,
                    )
                    .await?;
                    facts_by_key.push((key, facts.clone()));
                    facts
                }
            };
            out.insert(
                event.event_id,
                Decryption::Decrypted { plaintext: decrypted.plaintext, facts },
            );
        }
        Ok(out)
    }

    /// Validates a decrypted event and records it (or records it as pending or rejected).
    /// Returns the slot of an accepted event.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        room_id: &RoomId,
        raw: &Raw<AnySyncStateEvent>,
        event: EncryptedStateEvent,
        decryption: Decryption,
        power_levels: &RoomPowerLevels,
        batch: &mut Batch,
        was_pending: bool,
    ) -> Option<StateSlot> {
        if was_pending && !matches!(decryption, Decryption::Missing) {
            batch.changes.resolved_pending.push((event.session_id.clone(), event.event_id.clone()));
        }
        let (plaintext, facts) = match decryption {
            Decryption::Decrypted { plaintext, facts } => (plaintext, facts),
            Decryption::Missing => {
                if !was_pending {
                    debug!(event_id = %event.event_id, session_id = %event.session_id, "waiting for key");
                    batch.updates.push(StateUpdate::Pending {
                        room_id: room_id.to_owned(),
                        event_id: event.event_id.clone(),
                        session_id: event.session_id.clone(),
                    });
                    batch.changes.pending.push(PendingEvent {
                        room_id: room_id.to_owned(),
                        event_id: event.event_id,
                        session_id: event.session_id,
                        message_index: event.message_index,
                        event: raw.clone(),
                    });
                }
                return None;
            }
            Decryption::Refused(reason) => {
                warn!(event_id = %event.event_id, %reason, "the decryptor refused encrypted state");
                push_rejected(batch, rejected_from(room_id, &event, reason));
                return None;
            }
        };
        let verdict = validate(ValidationInput {
            room_id,
            event: &event,
            plaintext: &plaintext,
            facts: &facts,
            power_levels,
        });
        match verdict {
            Verdict::Accepted(accepted) => {
                let slot = accepted.slot.clone();
                batch.changes.session_events.push(SessionEventRef {
                    session_id: event.session_id.clone(),
                    message_index: event.message_index,
                    room_id: room_id.to_owned(),
                    event_id: event.event_id.clone(),
                    slot: slot.clone(),
                });
                batch.updates.push(StateUpdate::Accepted {
                    room_id: room_id.to_owned(),
                    slot: slot.clone(),
                    event_id: event.event_id.clone(),
                    current: false,
                    was_pending,
                });
                batch.changes.state.push(accepted.into());
                Some(slot)
            }
            Verdict::Rejected(rejected) => {
                warn!(event_id = %rejected.event_id, sender = %rejected.sender, reason = %rejected.reason, "rejected encrypted state");
                push_rejected(batch, rejected);
                None
            }
        }
    }

    /// Our own state sessions (and keys shared with us) first, then the client's `OlmMachine`.
    async fn decrypt(
        &self,
        room: &Room,
        raw: &Raw<AnySyncStateEvent>,
        event: &EncryptedStateEvent,
    ) -> Result<Decryption> {
        if let Some(pickle) = self.inner.store.inbound_session(&event.session_id).await?
            && pickle.room_id() == room.room_id()
        {
            let mut session = InboundStateSession::from_pickle(pickle);
            if let Ok(decrypted) = session.decrypt(event) {
                let facts = facts_for_sender_key(
                    self.inner,
                    &event.sender,
                    decrypted.sender_key,
                    decrypted.key_origin,
                )
                .await?;
                return Ok(Decryption::Decrypted { plaintext: decrypted.plaintext, facts });
            }
        }

        let encrypted: &Raw<OriginalSyncRoomEncryptedEvent> = raw.cast_ref_unchecked();
        let timeline_event = room.decrypt_event(encrypted, None).await?;
        match timeline_event.kind {
            TimelineEventKind::Decrypted(decrypted) => {
                let info = &decrypted.encryption_info;
                debug!(event_id = %event.event_id, verification = ?info.verification_state, forwarder = ?info.forwarder, "decrypted by the client's machine");
                let mut facts = DecryptionFacts::from_encryption_info(info);
                // A key from a bundle has no Olm link to its creator (the machine reports an
                // insecure source): tie the session's claimed sender key to the event sender's
                // devices ourselves. Content cannot be forged this way (Megolm messages are
                // signed by the session), this only attributes the session.
                if facts.session_owner == SessionOwner::Unknown
                    && let Some(forwarder) = &info.forwarder
                    && let AlgorithmInfo::MegolmV1AesSha2 { curve25519_key, .. } =
                        &info.algorithm_info
                    && let Ok(sender_key) =
                        crypto_ext::vodozemac::Curve25519PublicKey::from_base64(curve25519_key)
                {
                    let origin = KeyOrigin::Bundle { shared_by: forwarder.user_id.clone() };
                    facts =
                        facts_for_sender_key(self.inner, &event.sender, sender_key, origin).await?;
                }
                Ok(Decryption::Decrypted {
                    plaintext: decrypted.event.json().get().to_owned(),
                    facts,
                })
            }
            TimelineEventKind::UnableToDecrypt { utd_info, .. } => match utd_info.reason {
                UnableToDecryptReason::MissingMegolmSession { .. }
                | UnableToDecryptReason::UnknownMegolmMessageIndex
                | UnableToDecryptReason::SenderIdentityNotTrusted(_) => Ok(Decryption::Missing),
                // The client's machine holds the key but refused the event (a packed key that
                // does not match, another room's payload, ...). Look inside ourselves, so the
                // rejection says exactly why.
                reason => Ok(match self.inspect(room, event).await? {
                    Some(decryption) => decryption,
                    None => Decryption::Refused(RejectionReason::MalformedEvent {
                        detail: format!("refused by the client's decryptor: {reason:?}"),
                    }),
                }),
            },
            TimelineEventKind::PlainText { .. } => {
                Ok(Decryption::Refused(RejectionReason::MalformedEvent {
                    detail: "not encrypted".to_owned(),
                }))
            }
        }
    }

    /// Decrypts an event the client's machine refused, with a copy of its key exported through
    /// matrix-sdk's key export (the only public way to read a session the machine holds).
    async fn inspect(
        &self,
        room: &Room,
        event: &EncryptedStateEvent,
    ) -> Result<Option<Decryption>> {
        let Some(key) = crate::keys::export_session(&self.inner.client, &event.session_id).await?
        else {
            return Ok(None);
        };
        // The machine binds the key to the room it came for: import it for that room, so that a
        // payload naming another room is still seen (and rejected by the pipeline).
        let key_room = key.room_id.clone();
        let Ok(mut session) = InboundStateSession::import(&key_room, &key, KeyOrigin::Direct)
        else {
            return Ok(None);
        };
        if key_room != room.room_id() {
            return Ok(Some(Decryption::Refused(RejectionReason::WrongRoom {
                expected: room.room_id().to_owned(),
                found: key_room,
            })));
        }
        let Ok(decrypted) = session.decrypt(event) else { return Ok(None) };
        let facts = facts_for_sender_key(
            self.inner,
            &event.sender,
            decrypted.sender_key,
            KeyOrigin::Direct,
        )
        .await?;
        Ok(Some(Decryption::Decrypted { plaintext: decrypted.plaintext, facts }))
    }

    /// Records the plaintext copies of the aesthetic slots and of the slots just written
    /// encrypted, so that each slot resolves across both copies.
    async fn plaintext_copies(
        &self,
        room: &Room,
        mut slots: BTreeSet<StateSlot>,
        known: &BTreeSet<OwnedEventId>,
        batch: &mut Batch,
    ) -> Result<()> {
        slots.extend(AESTHETIC_SLOTS.iter().map(|t| StateSlot::new(*t, "")));
        for slot in slots {
            if is_critical(&slot.event_type) {
                continue;
            }
            let event_type = StateEventType::from(slot.event_type.as_str());
            let Some(RawAnySyncOrStrippedState::Sync(raw)) =
                room.get_state_event(event_type, &slot.state_key).await?
            else {
                continue;
            };
            let Some(record) = plaintext_record(room.room_id(), &slot, &raw) else { continue };
            if !known.contains(record.event_id()) {
                batch.changes.state.push(record);
            }
        }
        Ok(())
    }

    /// Saves a batch in one transaction, then tells subscribers.
    async fn commit(&self, mut batch: Batch) -> Result<()> {
        if batch.changes.is_empty() {
            return Ok(());
        }
        let unknown_devices: Vec<(OwnedRoomId, OwnedUserId)> = batch
            .changes
            .rejected
            .iter()
            .filter(|rejected| rejected.reason.is_transient())
            .map(|rejected| (rejected.room_id.clone(), rejected.sender.clone()))
            .collect();
        self.inner.store.save_changes(std::mem::take(&mut batch.changes)).await?;
        for (room_id, sender) in unknown_devices {
            self.inner.add_unknown_device_sender(&room_id, sender);
        }
        for update in &mut batch.updates {
            if let StateUpdate::Accepted { room_id, slot, event_id, current, .. } = update {
                *current = self
                    .inner
                    .store
                    .current_state(room_id, slot)
                    .await?
                    .is_some_and(|winner| winner.event_id() == event_id);
            }
        }
        self.inner.notify(batch.updates);
        Ok(())
    }
}

fn push_rejected(batch: &mut Batch, rejected: RejectedState) {
    batch.updates.push(StateUpdate::Rejected {
        room_id: rejected.room_id.clone(),
        event_id: rejected.event_id.clone(),
        reason: rejected.reason.clone(),
    });
    batch.changes.rejected.push(rejected);
}

fn rejected_from(
    room_id: &RoomId,
    event: &EncryptedStateEvent,
    reason: RejectionReason,
) -> RejectedState {
    RejectedState {
        room_id: room_id.to_owned(),
        event_id: event.event_id.clone(),
        sender: event.sender.clone(),
        origin_server_ts: event.origin_server_ts,
        packed_state_key: event.packed_state_key.clone(),
        session_id: event.session_id.clone(),
        message_index: event.message_index,
        reason,
    }
}

/// A rejection for an outer event we cannot even parse, when it has the fields to name it.
fn malformed(
    room_id: &RoomId,
    raw: &Raw<AnySyncStateEvent>,
    detail: &str,
) -> Option<RejectedState> {
    Some(RejectedState {
        room_id: room_id.to_owned(),
        event_id: raw.get_field("event_id").ok()??,
        sender: raw.get_field::<OwnedUserId>("sender").ok()??,
        origin_server_ts: raw.get_field("origin_server_ts").ok()??,
        packed_state_key: raw.get_field("state_key").ok()?.unwrap_or_default(),
        session_id: String::new(),
        message_index: 0,
        reason: RejectionReason::MalformedEvent { detail: detail.to_owned() },
    })
}

fn plaintext_record(
    room_id: &RoomId,
    slot: &StateSlot,
    raw: &Raw<AnySyncStateEvent>,
) -> Option<StateRecord> {
    let event_id: OwnedEventId = raw.get_field("event_id").ok()??;
    let sender: OwnedUserId = raw.get_field("sender").ok()??;
    let origin_server_ts: MilliSecondsSinceUnixEpoch = raw.get_field("origin_server_ts").ok()??;
    // A redacted event has empty content, which reads as "no value".
    let content = match raw.get_field("content").ok()? {
        Some(content) => content,
        None => Raw::new(&serde_json::json!({})).ok()?.cast_unchecked(),
    };
    Some(StateRecord {
        room_id: room_id.to_owned(),
        slot: slot.clone(),
        content,
        origin: StateOrigin::Plaintext { event_id, sender, origin_server_ts },
    })
}

/// The room's plaintext power levels (the spec's defaults when the room has none).
pub(crate) async fn power_levels(room: &Room) -> RoomPowerLevels {
    match room.power_levels().await {
        Ok(power_levels) => power_levels,
        Err(error) => {
            warn!(%error, "no power levels, using the defaults");
            RoomPowerLevels::new(
                Default::default(),
                &ruma::room_version_rules::AuthorizationRules::V1,
                Vec::<OwnedUserId>::new(),
            )
        }
    }
}

/// Which device of `sender` owns `sender_key`, and how verified it is.
pub(crate) async fn facts_for_sender_key(
    inner: &Inner,
    sender: &UserId,
    sender_key: crypto_ext::vodozemac::Curve25519PublicKey,
    key_origin: KeyOrigin,
) -> Result<DecryptionFacts> {
    let own = &inner.own_device;
    if key_origin == KeyOrigin::Own && sender == own.user_id && sender_key == own.curve25519 {
        return Ok(DecryptionFacts {
            session_owner: SessionOwner::Device {
                user_id: own.user_id.clone(),
                device_id: Some(own.device_id.clone()),
                verification: VerificationState::Verified,
            },
            key_origin,
        });
    }
    // A device we do not know yet (a member who just joined, a device just logged in) is asked
    // for before the session is called unknown.
    let device = crate::devices::device_with_key(inner, sender, sender_key).await?;
    let session_owner = match device {
        Some(device) => SessionOwner::Device {
            user_id: sender.to_owned(),
            device_id: Some(device.device_id().to_owned()),
            verification: if device.is_verified() {
                VerificationState::Verified
            } else if device.is_cross_signed_by_owner() {
                VerificationState::Unverified(VerificationLevel::UnverifiedIdentity)
            } else {
                VerificationState::Unverified(VerificationLevel::UnsignedDevice)
            },
        },
        None => SessionOwner::Unknown,
    };
    Ok(DecryptionFacts { session_owner, key_origin })
}
