//! From what a sync brings and what the client stores to validated, persisted state, in the
//! room's order, one transaction per batch.
//!
//! Every encrypted state event a sync brings is processed: its timeline's (in order, each
//! judged by the power levels in force at it), its `state` section's, what a gap in its timeline
//! held (fetched), and the room's current state. Each event met for the first time takes the
//! room's next position (`crypto_ext::validation::resolution`), which orders the slot; a late
//! key keeps the position the event was met at. Scans after each sync, retries when keys
//! arrive, and tells subscribers after the commit.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use crypto_ext::{
    EncryptedStateEvent, RejectedState, RejectionReason, StateSlot, ValidationInput, Verdict,
    critical::is_never_encrypted,
    identifiers::{AESTHETIC_SLOTS, ROOM_ENCRYPTED},
    validate,
    validation::resolution::{SessionIndex, replayed_index},
};
use matrix_sdk::{Room, RoomState, deserialized_responses::RawAnySyncOrStrippedState};
use ruma::{
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
    api::client::state::get_state_events,
    events::{
        AnySyncStateEvent, StateEventType,
        room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent},
    },
    serde::Raw,
};
use serde_json::Value;
use state_store_ext::{PendingEvent, SessionEventRef, StateChanges, StateRecord};
use tracing::{debug, instrument, warn};

use super::{EncryptedState, decrypt::Decryption, room_sync::RoomSync, waiting::WaitingCounts};
use crate::{
    Result, StateUpdate,
    context::{levels_with_content, state_content},
};

/// Changes and the updates to announce once they are stored.
#[derive(Default)]
struct Batch {
    changes: StateChanges,
    updates: Vec<StateUpdate>,
    /// How many of each sender's events in the room wait for keys.
    waiting: WaitingCounts,
}

impl Batch {
    fn push_rejected(&mut self, rejected: RejectedState) {
        self.updates.push(StateUpdate::Rejected {
            room_id: rejected.room_id.clone(),
            event_id: rejected.event_id.clone(),
            reason: rejected.reason.clone(),
        });
        self.changes.rejected.push(rejected);
    }
}

/// Which power levels judge an event.
#[derive(Clone, Debug)]
enum LevelsAt {
    /// The content of the power levels in force at the event, known from the timeline it came
    /// in.
    Known(Value),
    /// Unknown here (the event was met as current state, after a gap, or by a newcomer): asked
    /// of the homeserver, if the event gets that far.
    AtEvent,
}

impl LevelsAt {
    fn from_stored(content: Option<Value>) -> Self {
        content.map_or(Self::AtEvent, Self::Known)
    }

    fn content(&self) -> Option<&Value> {
        match self {
            Self::Known(content) => Some(content),
            Self::AtEvent => None,
        }
    }
}

/// One encrypted state event met in a room, with what judging it needs.
struct Met {
    raw: Raw<AnySyncStateEvent>,
    event: EncryptedStateEvent,
    position: u64,
    levels_at: LevelsAt,
    was_pending: bool,
}

/// An accepted event's session, index in it, and position in its room.
type AcceptedIndex = (String, u32, u64);

/// The accepted events of the slots a batch touches, by room and packed state key, to find
/// replays: loaded from the store once per slot, then kept up to date with the batch.
#[derive(Default)]
struct AcceptedIndexes {
    by_slot: BTreeMap<(OwnedRoomId, StateSlot), Vec<AcceptedIndex>>,
}

impl AcceptedIndexes {
    /// The (session, index) of the slot's accepted events met before `position`.
    async fn before(
        &mut self,
        state: &EncryptedState,
        room_id: &RoomId,
        slot: &StateSlot,
        position: u64,
    ) -> Result<Vec<(String, u32)>> {
        let key = (room_id.to_owned(), slot.clone());
        if !self.by_slot.contains_key(&key) {
            let history = state.ctx.store.slot_history(room_id, slot).await?;
            let known = history
                .iter()
                .filter_map(|record| {
                    let provenance = record.provenance()?;
                    Some((provenance.session_id.clone(), provenance.message_index, record.position))
                })
                .collect();
            self.by_slot.insert(key.clone(), known);
        }
        Ok(self.by_slot[&key]
            .iter()
            .filter(|(_, _, at)| *at < position)
            .map(|(session, index, _)| (session.clone(), *index))
            .collect())
    }

    fn add(&mut self, room_id: &RoomId, slot: &StateSlot, session: &str, index: u32, at: u64) {
        let key = (room_id.to_owned(), slot.clone());
        self.by_slot.entry(key).or_default().push((session.to_owned(), index, at));
    }
}

impl EncryptedState {
    /// Every joined room.
    pub(crate) async fn scan_all(&self) -> Result<()> {
        for room in self.ctx.client.joined_rooms() {
            self.scan_room(&room).await?;
        }
        Ok(())
    }

    /// The rooms a sync touched, each with what the sync brought for it.
    pub(crate) async fn scan_rooms(&self, rooms: &BTreeMap<OwnedRoomId, RoomSync>) -> Result<()> {
        for (room_id, sync) in rooms {
            if let Some(room) = self.ctx.client.get_room(room_id) {
                self.scan_room_with(&room, sync).await?;
            }
        }
        Ok(())
    }

    /// Processes the encrypted state the client stores for `room` that we have not seen yet
    /// (and events rejected for a reason that may have cleared: see [`RoomSync::revalidate`]).
    pub(crate) async fn scan_room(&self, room: &Room) -> Result<()> {
        self.scan_room_with(room, &RoomSync { revalidate: true, ..RoomSync::default() }).await
    }

    /// [`EncryptedState::scan_room`], with what a sync brought for the room: the client stores
    /// only a slot's current event, and an update that follows another in the same sync (a
    /// forged one, say) must not hide it.
    #[instrument(skip_all, fields(room_id = %room.room_id()))]
    async fn scan_room_with(&self, room: &Room, sync: &RoomSync) -> Result<()> {
        let _serial = self.processing.lock().await;
        let room_id = room.room_id();
        let enabled = self.ctx.state_encryption_enabled(room).await;
        let mut current: Vec<Raw<AnySyncStateEvent>> = Vec::new();
        // A gap in the timeline, or encrypted state in it: the room's state is checked against
        // the homeserver's (at most once per interval), since the client's store may lack what
        // a gap held, or events of a burst (seen on Synapse: 242 of 300 stored).
        if sync.limited || sync.timeline.iter().any(|raw| !is_power_levels(raw)) {
            self.owe_gap(room_id);
        }
        if room.state() != RoomState::Joined {
            self.gaps.lock().unwrap_or_else(|e| e.into_inner()).remove(room_id);
        } else if self.gap_due(room_id) {
            current.extend(self.fetch_encrypted_state(room).await);
        }
        for raw in room.get_state_events(StateEventType::RoomEncrypted).await? {
            if let RawAnySyncOrStrippedState::Sync(raw) = raw {
                current.push(raw);
            }
        }
        let brought = !sync.timeline.is_empty() || !sync.state.is_empty() || !current.is_empty();
        if !brought && !enabled {
            self.set_waiting_room(room_id, false);
            return Ok(());
        }
        let store = &self.ctx.store;
        let accepted: BTreeMap<OwnedEventId, StateRecord> = store
            .room_state(room_id)
            .await?
            .into_iter()
            .map(|record| (record.event_id().clone(), record))
            .collect();
        let mut known: BTreeSet<OwnedEventId> = accepted.keys().cloned().collect();
        // Events rejected for a reason that may have cleared, with the position they were met
        // at: validated again when this scan revalidates (the device may have become known).
        let mut transient: BTreeMap<OwnedEventId, u64> = BTreeMap::new();
        let pending: BTreeMap<OwnedEventId, PendingEvent> = store
            .pending_in_room(room_id)
            .await?
            .into_iter()
            .map(|pending| (pending.event_id.clone(), pending))
            .collect();
        known.extend(pending.keys().cloned());
        for rejected in store.rejected_events(room_id).await? {
            if rejected.reason.is_transient() {
                if sync.revalidate {
                    transient.insert(rejected.event_id.clone(), rejected.position);
                } else {
                    known.insert(rejected.event_id.clone());
                }
                self.add_unknown_device_sender(room_id, rejected.sender);
            } else {
                known.insert(rejected.event_id);
            }
        }
        let levels = self.ctx.room_power_levels(room).await?;
        let levels_now = state_content(room, StateEventType::RoomPowerLevels).await;

        // In room order: the timeline, each event judged by the power levels in force at it
        // (those a later change in the same timeline replaced, else today's), then the state
        // section, what a gap held and the current state, judged at the event.
        let mut met = Vec::new();
        for (index, raw) in sync.timeline.iter().enumerate() {
            if is_power_levels(raw) {
                continue;
            }
            let levels_at = match sync.timeline[index + 1..].iter().find(|r| is_power_levels(r)) {
                Some(change) => LevelsAt::from_stored(prev_content(change)),
                None => LevelsAt::from_stored(levels_now.clone()),
            };
            met.push((raw, levels_at));
        }
        met.extend(sync.state.iter().chain(&current).map(|raw| (raw, LevelsAt::AtEvent)));

        let mut position = store.room_position(room_id).await?;
        let first_position = position;
        let mut batch =
            Batch { waiting: WaitingCounts::from_pending(pending.values()), ..Batch::default() };
        let mut fresh = Vec::new();
        for (raw, levels_at) in met {
            if is_redacted(raw) {
                redaction(room_id, raw, &accepted, &pending, &mut known, &mut position, &mut batch);
                continue;
            }
            let event = match EncryptedStateEvent::from_raw(raw) {
                Ok(event) => event,
                Err(error) => {
                    if let Some(mut rejected) =
                        RejectedState::malformed(room_id, raw, &error.to_string())
                        && known.insert(rejected.event_id.clone())
                    {
                        warn!(event_id = %rejected.event_id, %error, "malformed encrypted state");
                        position += 1;
                        rejected.position = position;
                        batch.push_rejected(rejected);
                    }
                    continue;
                }
            };
            // Known, or met twice (in the timeline and as the current event).
            if known.insert(event.event_id.clone()) {
                let at = match transient.get(&event.event_id) {
                    Some(at) => *at,
                    None => {
                        position += 1;
                        position
                    }
                };
                let raw = raw.clone();
                fresh.push(Met { raw, event, position: at, levels_at, was_pending: false });
            }
        }
        // Events whose keys we hold are decrypted as one batch (each session read once, on
        // every core); the others go one by one through the client's machine.
        let events: Vec<EncryptedStateEvent> = fresh.iter().map(|m| m.event.clone()).collect();
        let mut ours = self.decrypt_with_our_sessions(room_id, events).await?;
        let mut slots = BTreeSet::new();
        let mut indexes = AcceptedIndexes::default();
        for met in fresh {
            let decryption = match ours.remove(&met.event.event_id) {
                Some(decryption) => decryption,
                None => self.decrypt(room, &met.raw, &met.event).await?,
            };
            if let Some(slot) =
                self.record(room, &levels, met, decryption, &mut indexes, &mut batch).await?
            {
                slots.insert(slot);
            }
        }
        if enabled {
            self.plaintext_copies(room, slots, &known, &mut position, &mut batch).await?;
        }
        if position != first_position {
            batch.changes.room_positions.push((room_id.to_owned(), position));
        }
        self.commit(batch).await?;
        let waiting = !store.pending_in_room(room_id).await?.is_empty();
        self.set_waiting_room(room_id, waiting);
        // Whose unknown devices the room still waits for (read again only when it waited for
        // some before this scan, or this scan added some).
        if self.waits_for_unknown_devices(room_id) {
            let senders = store
                .rejected_events(room_id)
                .await?
                .into_iter()
                .filter(|rejected| rejected.reason.is_transient())
                .map(|rejected| rejected.sender)
                .collect();
            self.set_unknown_device_senders(room_id, senders);
        }
        Ok(())
    }

    /// Retries the pending events of `sessions` (their keys just arrived), each at the position
    /// and with the power levels it was met with.
    pub(crate) async fn retry_sessions(&self, sessions: BTreeSet<String>) -> Result<()> {
        let _serial = self.processing.lock().await;
        let mut batch = Batch::default();
        let mut indexes = AcceptedIndexes::default();
        let mut levels: BTreeMap<OwnedRoomId, RoomPowerLevels> = BTreeMap::new();
        for session_id in sessions {
            for pending in self.ctx.store.pending_for_session(&session_id).await? {
                let Some(room) = self.ctx.client.get_room(&pending.room_id) else { continue };
                let Ok(event) = EncryptedStateEvent::from_raw(&pending.event) else { continue };
                if !levels.contains_key(room.room_id()) {
                    let now = self.ctx.room_power_levels(&room).await?;
                    levels.insert(room.room_id().to_owned(), now);
                }
                let decryption = self.decrypt(&room, &pending.event, &event).await?;
                let met = Met {
                    raw: pending.event,
                    event,
                    position: pending.position,
                    levels_at: LevelsAt::from_stored(pending.power_levels_at),
                    was_pending: true,
                };
                let now = &levels[room.room_id()];
                self.record(&room, now, met, decryption, &mut indexes, &mut batch).await?;
            }
        }
        self.commit(batch).await
    }

    /// Validates a decrypted event and records it (or records it as pending or rejected),
    /// judging its power by the levels in force at it (`levels_now` when those are unknown).
    /// Returns the slot of an accepted event.
    async fn record(
        &self,
        room: &Room,
        levels_now: &RoomPowerLevels,
        met: Met,
        decryption: Decryption,
        indexes: &mut AcceptedIndexes,
        batch: &mut Batch,
    ) -> Result<Option<StateSlot>> {
        let room_id = room.room_id();
        let Met { raw, event, position, levels_at, was_pending } = met;
        if was_pending && !matches!(decryption, Decryption::Missing) {
            batch.changes.resolved_pending.push((event.session_id.clone(), event.event_id.clone()));
        }
        let reject = |batch: &mut Batch, reason: RejectionReason| {
            let mut rejected = RejectedState::for_event(room_id, &event, reason);
            rejected.position = position;
            warn!(event_id = %rejected.event_id, sender = %rejected.sender, reason = %rejected.reason, "rejected encrypted state");
            batch.push_rejected(rejected);
        };
        let (plaintext, facts) = match decryption {
            Decryption::Decrypted { plaintext, facts } => (plaintext, facts),
            Decryption::Missing => {
                let limit = self.ctx.config.remote_limits.pending_per_sender_per_room;
                if !was_pending && !batch.waiting.admit(&event.sender, limit) {
                    reject(batch, RejectionReason::TooManyWaiting { limit });
                    return Ok(None);
                }
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
                        event: raw,
                        position,
                        power_levels_at: levels_at.content().cloned(),
                    });
                }
                return Ok(None);
            }
            Decryption::Refused(reason) => {
                reject(batch, reason);
                return Ok(None);
            }
        };
        let levels = match &levels_at {
            LevelsAt::Known(content) => {
                serde_json::from_value::<RoomPowerLevelsEventContent>(content.clone())
                    .ok()
                    .map(|content| levels_with_content(levels_now, content))
            }
            LevelsAt::AtEvent => self.ctx.power_levels_at(room, &event.event_id, levels_now).await,
        };
        let verdict = validate(ValidationInput {
            room_id,
            event: &event,
            plaintext: &plaintext,
            facts: &facts,
            power_levels: levels.as_ref().unwrap_or(levels_now),
            unproven_creators: self.ctx.config.unproven_creators,
            sender_trust: self.ctx.config.sender_trust,
        });
        let accepted = match verdict {
            Verdict::Accepted(accepted) => accepted,
            Verdict::Rejected(rejected) => {
                reject(batch, rejected.reason);
                return Ok(None);
            }
        };
        let slot = accepted.slot.clone();
        let candidate =
            SessionIndex { session_id: &event.session_id, message_index: event.message_index };
        let earlier = indexes.before(self, room_id, &slot, position).await?;
        let earlier = earlier.iter().map(|(session_id, message_index)| SessionIndex {
            session_id,
            message_index: *message_index,
        });
        if let Some(accepted_index) = replayed_index(candidate, earlier) {
            let reason = RejectionReason::Replay {
                session_id: event.session_id.clone(),
                message_index: event.message_index,
                accepted_index,
            };
            reject(batch, reason);
            return Ok(None);
        }
        indexes.add(room_id, &slot, &event.session_id, event.message_index, position);
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
        batch.changes.state.push(StateRecord::accepted(accepted, position));
        Ok(Some(slot))
    }

    /// Records the plaintext copies of the aesthetic slots and of the slots just written
    /// encrypted (each new one at the room's next position), so that a slot with no decrypted
    /// value shows its plaintext one.
    async fn plaintext_copies(
        &self,
        room: &Room,
        mut slots: BTreeSet<StateSlot>,
        known: &BTreeSet<OwnedEventId>,
        position: &mut u64,
        batch: &mut Batch,
    ) -> Result<()> {
        slots.extend(AESTHETIC_SLOTS.iter().map(|t| StateSlot::new(*t, "")));
        for slot in slots {
            if is_never_encrypted(&slot.event_type) {
                continue;
            }
            let event_type = StateEventType::from(slot.event_type.as_str());
            let Some(RawAnySyncOrStrippedState::Sync(raw)) =
                room.get_state_event(event_type, &slot.state_key).await?
            else {
                continue;
            };
            let Some(event_id) = raw.get_field::<OwnedEventId>("event_id").ok().flatten() else {
                continue;
            };
            // The slot's history is read only for a copy that is not the current value (most
            // scans meet the current copy again): one the slot kept as an older value is known.
            if known.contains(&event_id) {
                continue;
            }
            let stored = self.ctx.store.slot_history(room.room_id(), &slot).await?;
            if stored.iter().any(|record| record.event_id() == &event_id) {
                continue;
            }
            if let Some(record) = StateRecord::plaintext(room.room_id(), &slot, &raw, *position + 1)
            {
                *position += 1;
                batch.changes.state.push(record);
            }
        }
        Ok(())
    }

    /// Notes that `room_id`'s timeline had a gap, whose state is to be fetched.
    fn owe_gap(&self, room_id: &RoomId) {
        let mut gaps = self.gaps.lock().unwrap_or_else(|e| e.into_inner());
        gaps.entry(room_id.to_owned()).or_default().owed = true;
    }

    /// The rooms whose state check is owed and due (the schedule scans them, so a check owed by
    /// a room's last sync is not left waiting for another).
    pub(crate) fn rooms_with_gaps_due(&self) -> Vec<OwnedRoomId> {
        let gaps = self.gaps.lock().unwrap_or_else(|e| e.into_inner());
        let (now, interval) = (Instant::now(), self.ctx.config.remote_limits.state_check_interval);
        gaps.iter()
            .filter(|(_, gap)| gap.is_due(now, interval))
            .map(|(room_id, _)| room_id.clone())
            .collect()
    }

    /// Whether a gap of `room_id` is owed and may be fetched now (at most once per
    /// `RemoteWorkLimits::state_check_interval`); if so, it is no longer owed.
    fn gap_due(&self, room_id: &RoomId) -> bool {
        let mut gaps = self.gaps.lock().unwrap_or_else(|e| e.into_inner());
        let Some(gap) = gaps.get_mut(room_id) else { return false };
        let now = Instant::now();
        let due = gap.is_due(now, self.ctx.config.remote_limits.state_check_interval);
        if due {
            gap.owed = false;
            gap.fetched_at = Some(now);
        }
        due
    }

    /// The encrypted state events of the room's state as the homeserver serves it (what a gap
    /// in the timeline held and the client's store may lack); none when the request fails (the
    /// gap stays owed).
    async fn fetch_encrypted_state(&self, room: &Room) -> Vec<Raw<AnySyncStateEvent>> {
        let request = get_state_events::v3::Request::new(room.room_id().to_owned());
        match self.ctx.client.send(request).await {
            Ok(response) => response
                .room_state
                .into_iter()
                .map(|raw| raw.cast_unchecked::<AnySyncStateEvent>())
                .filter(|raw| {
                    raw.get_field::<String>("type").ok().flatten().as_deref()
                        == Some(ROOM_ENCRYPTED)
                })
                .collect(),
            Err(error) => {
                warn!(%error, "fetching the state a timeline gap held failed");
                self.owe_gap(room.room_id());
                Vec::new()
            }
        }
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
        let store = &self.ctx.store;
        store.save_changes(std::mem::take(&mut batch.changes)).await?;
        for (room_id, sender) in unknown_devices {
            self.add_unknown_device_sender(&room_id, sender);
        }
        for update in &mut batch.updates {
            if let StateUpdate::Accepted { room_id, slot, event_id, current, .. } = update {
                *current = store
                    .current_state(room_id, slot)
                    .await?
                    .is_some_and(|winner| winner.event_id() == event_id);
            }
        }
        self.ctx.notify(batch.updates);
        Ok(())
    }
}

/// A redacted encrypted state event (its ciphertext removed, as matrix-sdk redacts the stored
/// state in place): an accepted value it held is emptied (the slot has no value), a pending or
/// new one is rejected as [`RejectionReason::Redacted`].
fn redaction(
    room_id: &RoomId,
    raw: &Raw<AnySyncStateEvent>,
    accepted: &BTreeMap<OwnedEventId, StateRecord>,
    pending: &BTreeMap<OwnedEventId, PendingEvent>,
    known: &mut BTreeSet<OwnedEventId>,
    position: &mut u64,
    batch: &mut Batch,
) {
    let Ok(Some(event_id)) = raw.get_field::<OwnedEventId>("event_id") else { return };
    if let Some(record) = accepted.get(&event_id) {
        if !record.is_redacted() {
            debug!(%event_id, "the current encrypted state event was redacted");
            batch.updates.push(StateUpdate::Redacted {
                room_id: room_id.to_owned(),
                slot: record.slot.clone(),
                event_id,
            });
            batch.changes.state.push(record.clone().redacted());
        }
        return;
    }
    let Some(mut rejected) = RejectedState::malformed(room_id, raw, "redacted") else { return };
    rejected.reason = RejectionReason::Redacted;
    if let Some(waiting) = pending.get(&event_id) {
        batch.changes.resolved_pending.push((waiting.session_id.clone(), event_id));
        rejected.position = waiting.position;
        rejected.session_id = waiting.session_id.clone();
        rejected.message_index = waiting.message_index;
        batch.push_rejected(rejected);
    } else if known.insert(event_id) {
        *position += 1;
        rejected.position = *position;
        batch.push_rejected(rejected);
    }
}

/// Whether a state event was redacted: its content emptied, or marked so in `unsigned`.
fn is_redacted(raw: &Raw<AnySyncStateEvent>) -> bool {
    let marked = raw
        .get_field::<Value>("unsigned")
        .ok()
        .flatten()
        .is_some_and(|unsigned| unsigned.get("redacted_because").is_some());
    let emptied = raw
        .get_field::<Value>("content")
        .ok()
        .flatten()
        .is_some_and(|content| content.as_object().is_some_and(serde_json::Map::is_empty));
    marked || emptied
}

/// Whether an event of a timeline is a change of the room's power levels.
fn is_power_levels(raw: &Raw<AnySyncStateEvent>) -> bool {
    raw.get_field::<String>("type").ok().flatten().as_deref() == Some("m.room.power_levels")
        && raw.get_field::<String>("state_key").ok().flatten().as_deref() == Some("")
}

/// The content a state event replaced (`unsigned.prev_content`).
fn prev_content(raw: &Raw<AnySyncStateEvent>) -> Option<Value> {
    let unsigned = raw.get_field::<Value>("unsigned").ok()??;
    unsigned.get("prev_content").filter(|content| content.is_object()).cloned()
}
