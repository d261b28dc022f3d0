//! Key requests for state: ask for the slot keys we lack, answer members who lack ours.
//!
//! A member who joined without a bundle (a public room, a `joined`-visibility room, an inviter
//! who went offline) asks; members answer with each slot's key at the index of its current event.
//!
//! Requests go first to our own other devices and to the members whose power level is above the
//! room's default, then, once [`KeyRequestConfig::escalation_delay`] has passed without an
//! answer, to every member; each session is asked for at most
//! [`KeyRequestConfig::max_attempts`] times, with the wait doubling between attempts.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Mutex as StdMutex,
    time::{Duration, Instant},
};

use crypto_ext::{
    InboundStateSession, KeyOrigin, identifiers,
    wire::{StateKeyRequest, StateKeyShare},
};
use matrix_sdk::{Room, RoomState, encryption::identities::Device};
use ruma::{
    DeviceId, MilliSecondsSinceUnixEpoch, OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId,
    TransactionId, UserId,
};
use state_store_ext::{KeyRequest, StateChanges, StateOrigin};
use tracing::{debug, info, warn};

use crate::{
    KeyRequestConfig, KeyRequestRefusal, Result, StateUpdate,
    context::{Context, OlmSender, is_joined},
};

/// How long we take answers to a request we sent: longer than the whole escalation schedule
/// of the default settings (five attempts, the last 8 minutes after the first).
const ANSWERS_TAKEN_FOR: Duration = Duration::from_secs(60 * 60);

/// The most requests whose answers we wait for at once; the oldest is forgotten first.
const MAX_OPEN_REQUESTS: usize = 256;

/// A request we sent, whose answers we take.
#[derive(Debug)]
struct SentRequest {
    room_id: OwnedRoomId,
    sessions: BTreeSet<String>,
    devices: BTreeSet<(OwnedUserId, OwnedDeviceId)>,
    sent_at: Instant,
}

/// The requests we sent lately, by request id: an answer is taken only from a device we asked,
/// for the sessions we asked for. Kept in memory: after a restart, requests still waiting are
/// sent again on the schedule, and only answers to those are taken.
#[derive(Debug, Default)]
struct SentRequests {
    requests: StdMutex<HashMap<String, SentRequest>>,
}

impl SentRequests {
    /// Remembers a request sent at `now`.
    fn insert(&self, request_id: String, request: SentRequest, now: Instant) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        requests.retain(|_, r| now.saturating_duration_since(r.sent_at) < ANSWERS_TAKEN_FOR);
        while requests.len() >= MAX_OPEN_REQUESTS {
            let Some(oldest) =
                requests.iter().min_by_key(|(_, r)| r.sent_at).map(|(id, _)| id.clone())
            else {
                break;
            };
            requests.remove(&oldest);
        }
        requests.insert(request_id, request);
    }

    /// The sessions of `room_id` that request `request_id` asked `device` of `user_id` for,
    /// if we sent such a request lately.
    fn asked(
        &self,
        request_id: &str,
        room_id: &RoomId,
        user_id: &UserId,
        device_id: Option<&DeviceId>,
        now: Instant,
    ) -> BTreeSet<String> {
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        match (requests.get(request_id), device_id) {
            (Some(request), Some(device_id))
                if request.room_id == room_id
                    && now.saturating_duration_since(request.sent_at) < ANSWERS_TAKEN_FOR
                    && request.devices.contains(&(user_id.to_owned(), device_id.to_owned())) =>
            {
                request.sessions.clone()
            }
            _ => BTreeSet::new(),
        }
    }
}

/// The key-request feature.
pub(crate) struct KeyRequests {
    ctx: Context,
    sent: SentRequests,
}

impl KeyRequests {
    pub(crate) fn new(ctx: Context) -> Self {
        Self { ctx, sent: SentRequests::default() }
    }

    /// Asks for the keys of the room's events waiting for one, as far as the schedule allows,
    /// and forgets requests whose events became readable. Returns `false` when no event of the
    /// room waits for a key any more.
    pub(crate) async fn request_missing(&self, room: &Room) -> Result<bool> {
        let ctx = &self.ctx;
        let config = &ctx.config.key_requests;
        if !config.request || room.state() != RoomState::Joined {
            return Ok(true);
        }
        let room_id = room.room_id();
        let waiting: BTreeSet<String> =
            ctx.store.pending_in_room(room_id).await?.into_iter().map(|p| p.session_id).collect();
        let asked: BTreeMap<String, KeyRequest> = ctx
            .store
            .key_requests(room_id)
            .await?
            .into_iter()
            .map(|r| (r.session_id.clone(), r))
            .collect();
        if waiting.is_empty() && asked.is_empty() {
            return Ok(false);
        }
        let mut changes = StateChanges::default();
        for session_id in asked.keys().filter(|s| !waiting.contains(*s)) {
            changes.removed_key_requests.push((room_id.to_owned(), session_id.clone()));
        }
        let limit = ctx.config.remote_limits.key_request_sessions_per_round;
        let (first, again) = plan_round(room_id, &waiting, &asked, config, limit, &mut changes);
        if !first.is_empty() || !again.is_empty() {
            let members = ctx.recipient_devices(room).await?;
            if !first.is_empty() {
                let privileged = self.privileged_users(room).await;
                let devices: Vec<Device> =
                    members.iter().filter(|d| privileged.contains(d.user_id())).cloned().collect();
                // Nobody privileged has a device: every member is asked at once.
                let devices = if devices.is_empty() { members.clone() } else { devices };
                self.send_request(room, &first, &devices).await?;
            }
            if !again.is_empty() {
                self.send_request(room, &again, &members).await?;
            }
        }
        ctx.store.save_changes(changes).await?;
        Ok(!waiting.is_empty())
    }

    /// Our own user and the members whose power level is above the room's default for users.
    async fn privileged_users(&self, room: &Room) -> BTreeSet<OwnedUserId> {
        let mut users = BTreeSet::from([self.ctx.own_device.user_id.clone()]);
        if let Ok(power_levels) = room.power_levels().await {
            users.extend(
                power_levels
                    .users
                    .iter()
                    .filter(|(_, level)| **level > power_levels.users_default)
                    .map(|(user, _)| user.clone()),
            );
        }
        users
    }

    async fn send_request(
        &self,
        room: &Room,
        session_ids: &[String],
        devices: &[Device],
    ) -> Result<()> {
        if devices.is_empty() {
            debug!(room_id = %room.room_id(), "no device to ask for state keys");
            return Ok(());
        }
        for chunk in session_ids.chunks(identifiers::STATE_KEY_REQUEST_MAX) {
            let request = StateKeyRequest {
                room_id: room.room_id().to_owned(),
                request_id: TransactionId::new().to_string(),
                session_ids: chunk.to_vec(),
            };
            let sent = SentRequest {
                room_id: request.room_id.clone(),
                sessions: chunk.iter().cloned().collect(),
                devices: devices
                    .iter()
                    .map(|d| (d.user_id().to_owned(), d.device_id().to_owned()))
                    .collect(),
                sent_at: Instant::now(),
            };
            // Remembered first: an answer may arrive before the send returns.
            self.sent.insert(request.request_id.clone(), sent, Instant::now());
            self.ctx.send_message(devices, &request).await?;
            info!(room_id = %room.room_id(), sessions = chunk.len(), devices = devices.len(), "asked for state keys");
        }
        Ok(())
    }

    /// Answers a member's request, or records why not.
    pub(crate) async fn receive_request(
        &self,
        sender: &OlmSender,
        request: StateKeyRequest,
    ) -> Result<()> {
        let ctx = &self.ctx;
        let room_id = request.room_id.clone();
        let requester = sender.user_id.clone();
        let refuse = |reason: KeyRequestRefusal| {
            warn!(%room_id, %requester, %reason, "refused a state key request");
            ctx.notify(vec![StateUpdate::KeyRequestRefused {
                room_id: room_id.clone(),
                requester: requester.clone(),
                reason,
            }]);
            Ok(())
        };
        let Some(room) = ctx.joined_room(&room_id) else {
            return refuse(KeyRequestRefusal::NotInRoom);
        };
        if !is_joined(&room, &requester).await {
            return refuse(KeyRequestRefusal::RequesterNotJoined);
        }
        let Some(device) = &sender.device else {
            return refuse(KeyRequestRefusal::DeviceNotAllowed);
        };

        // Only sessions of the current encrypted state, each from its current event's index.
        let current: BTreeMap<String, u32> = ctx
            .store
            .room_state(&room_id)
            .await?
            .into_iter()
            .filter_map(|record| match record.origin {
                StateOrigin::Encrypted(provenance) => {
                    Some((provenance.session_id, provenance.message_index))
                }
                StateOrigin::Plaintext { .. } => None,
            })
            .collect();
        let indices: BTreeMap<String, u32> = request
            .session_ids
            .iter()
            .filter_map(|s| Some((s.clone(), *current.get(s)?)))
            .collect();
        let keys = ctx.keys_at_index(&room_id, &indices).await?;
        if keys.is_empty() {
            return refuse(KeyRequestRefusal::NothingToShare);
        }
        let count = keys.len();
        let share =
            StateKeyShare { room_id: room_id.clone(), request_id: request.request_id, keys };
        ctx.send_message(std::slice::from_ref(device), &share).await?;
        info!(%room_id, %requester, keys = count, "answered a state key request");
        ctx.notify(vec![StateUpdate::KeyRequestAnswered {
            room_id: room_id.clone(),
            requester: requester.clone(),
            keys: count,
        }]);
        Ok(())
    }

    /// Takes the keys of an answer: only in answer to a request we sent, from a device we asked,
    /// for sessions we asked for; only for a room we are joined to, from a sender who is a
    /// member, and only for sessions our events are waiting for. Returns the sessions stored.
    pub(crate) async fn receive_share(
        &self,
        sender: &OlmSender,
        share: StateKeyShare,
    ) -> Result<BTreeSet<String>> {
        let ctx = &self.ctx;
        let sharer = &sender.user_id;
        let room_id = &share.room_id;
        let Some(room) = ctx.joined_room(room_id) else {
            warn!(%room_id, %sharer, "ignoring state keys for a room we are not in");
            return Ok(BTreeSet::new());
        };
        if !is_joined(&room, sharer).await {
            warn!(%room_id, %sharer, "ignoring state keys from someone who is not a member");
            return Ok(BTreeSet::new());
        }
        let asked = self.sent.asked(
            &share.request_id,
            room_id,
            sharer,
            sender.device_id.as_deref(),
            Instant::now(),
        );
        if asked.is_empty() {
            warn!(%room_id, %sharer, "ignoring state keys we did not ask this device for");
            return Ok(BTreeSet::new());
        }
        let waiting: BTreeSet<String> =
            ctx.store.pending_in_room(room_id).await?.into_iter().map(|p| p.session_id).collect();
        let origin = KeyOrigin::KeyShare { shared_by: sharer.clone() };
        let mut sessions = Vec::new();
        for key in &share.keys {
            if !asked.contains(&key.session_id) {
                warn!(session_id = %key.session_id, %sharer, "ignoring a state key we did not ask for");
                continue;
            }
            if !waiting.contains(&key.session_id) {
                debug!(session_id = %key.session_id, "ignoring a state key nothing waits for");
                continue;
            }
            match InboundStateSession::import(room_id, key, origin.clone()) {
                Ok(session) => sessions.push(session.shared_by_device(sender.curve25519)),
                Err(error) => warn!(%sharer, %error, "refused a shared state key"),
            }
        }
        if sessions.is_empty() {
            return Ok(BTreeSet::new());
        }
        let ids: BTreeSet<String> = sessions.iter().map(InboundStateSession::session_id).collect();
        let changes = StateChanges {
            removed_key_requests: ids.iter().map(|id| (room_id.clone(), id.clone())).collect(),
            ..Default::default()
        };
        ctx.store_sessions(sessions, changes).await?;
        info!(%room_id, %sharer, keys = ids.len(), "took shared state keys");
        Ok(ids)
    }
}

/// One round of a room's key requests: the sessions `waiting` for a key that were never asked
/// for (`first`: the room's moderators and our own devices are asked), then those whose next
/// attempt is due (`again`: every member is asked), at most `limit` in all (any member can post
/// events with made-up session ids, and each asked session costs an Olm message to every
/// member's device); the others wait for the next rounds. The requests to record go in
/// `changes`.
fn plan_round(
    room_id: &RoomId,
    waiting: &BTreeSet<String>,
    asked: &BTreeMap<String, KeyRequest>,
    config: &KeyRequestConfig,
    limit: usize,
    changes: &mut StateChanges,
) -> (Vec<String>, Vec<String>) {
    let now = MilliSecondsSinceUnixEpoch::now();
    // Sessions never asked for go first, so repeats cannot starve them.
    let first: Vec<String> =
        waiting.iter().filter(|s| !asked.contains_key(*s)).take(limit).cloned().collect();
    for session_id in &first {
        changes.key_requests.push(KeyRequest {
            room_id: room_id.to_owned(),
            session_id: session_id.clone(),
            first_requested_at: now,
            attempts: 1,
        });
    }
    let mut again = Vec::new();
    for session_id in waiting {
        if first.len() + again.len() >= limit {
            break;
        }
        if let Some(request) = asked.get(session_id)
            && request.attempts < config.max_attempts
            && is_due(request, config)
        {
            again.push(session_id.clone());
            let mut request = request.clone();
            request.attempts += 1;
            changes.key_requests.push(request);
        }
    }
    (first, again)
}

/// Whether the next attempt of `request` is due: attempt n+1 comes `escalation_delay * 2^(n-1)`
/// after the first.
fn is_due(request: &KeyRequest, config: &KeyRequestConfig) -> bool {
    let waited = MilliSecondsSinceUnixEpoch::now().get() - request.first_requested_at.get();
    let factor = 1u64 << request.attempts.saturating_sub(1).min(16);
    let due = config.escalation_delay.as_millis() as u64 * factor;
    u64::from(waited) >= due
}

#[cfg(test)]
mod tests {
    use ruma::{owned_device_id, owned_room_id, owned_user_id, room_id, user_id};

    use super::*;

    fn request(sent_at: Instant) -> SentRequest {
        SentRequest {
            room_id: owned_room_id!("!room:x"),
            sessions: BTreeSet::from(["s1".to_owned()]),
            devices: BTreeSet::from([(owned_user_id!("@carol:x"), owned_device_id!("CAROL"))]),
            sent_at,
        }
    }

    #[test]
    fn a_round_asks_for_at_most_its_limit_and_the_rest_wait() {
        let room_id = room_id!("!room:x");
        let config = KeyRequestConfig { escalation_delay: Duration::ZERO, ..Default::default() };
        let waiting: BTreeSet<String> = (0..100).map(|n| format!("junk{n:03}")).collect();
        let mut asked = BTreeMap::new();
        let mut changes = StateChanges::default();
        let (first, again) = plan_round(room_id, &waiting, &asked, &config, 64, &mut changes);
        assert_eq!((first.len(), again.len()), (64, 0));
        assert_eq!(changes.key_requests.len(), 64);
        for request in changes.key_requests {
            asked.insert(request.session_id.clone(), request);
        }
        // Next round: the 36 never asked first, then 28 repeats that are due.
        let mut changes = StateChanges::default();
        let (first, again) = plan_round(room_id, &waiting, &asked, &config, 64, &mut changes);
        assert_eq!((first.len(), again.len()), (36, 28));
        assert!(first.iter().all(|s| !asked.contains_key(s)));
        assert!(again.iter().all(|s| asked.contains_key(s)));
        // Sessions asked for their last time are not asked again.
        for request in asked.values_mut() {
            request.attempts = config.max_attempts;
        }
        let few: BTreeSet<String> = asked.keys().take(3).cloned().collect();
        let mut changes = StateChanges::default();
        let (first, again) = plan_round(room_id, &few, &asked, &config, 64, &mut changes);
        assert!(first.is_empty() && again.is_empty() && changes.key_requests.is_empty());
    }

    #[test]
    fn an_answer_is_taken_only_from_a_device_asked_for_that_room() {
        let sent = SentRequests::default();
        let now = Instant::now();
        sent.insert("r1".to_owned(), request(now), now);
        let carol = user_id!("@carol:x");
        let asked = |id: &str, room: &RoomId, user: &UserId, device: Option<&str>| {
            sent.asked(id, room, user, device.map(<&DeviceId>::from), now)
        };
        let room = room_id!("!room:x");
        assert_eq!(asked("r1", room, carol, Some("CAROL")), BTreeSet::from(["s1".to_owned()]));
        // Another device of the same user, another user, another room, another request, no
        // device: nothing.
        assert!(asked("r1", room, carol, Some("OTHER")).is_empty());
        assert!(asked("r1", room, user_id!("@mallory:x"), Some("CAROL")).is_empty());
        assert!(asked("r1", room_id!("!other:x"), carol, Some("CAROL")).is_empty());
        assert!(asked("r2", room, carol, Some("CAROL")).is_empty());
        assert!(asked("r1", room, carol, None).is_empty());
    }

    #[test]
    fn old_requests_are_forgotten_and_their_number_is_bounded() {
        let sent = SentRequests::default();
        let start = Instant::now();
        sent.insert("old".to_owned(), request(start), start);
        let later = start + ANSWERS_TAKEN_FOR;
        let carol = user_id!("@carol:x");
        let device: &DeviceId = "CAROL".into();
        assert!(sent.asked("old", room_id!("!room:x"), carol, Some(device), later).is_empty());
        for n in 0..MAX_OPEN_REQUESTS + 10 {
            let at = later + Duration::from_millis(n as u64);
            sent.insert(format!("r{n}"), request(at), at);
        }
        let requests = sent.requests.lock().unwrap();
        assert_eq!(requests.len(), MAX_OPEN_REQUESTS);
        assert!(!requests.contains_key("old") && !requests.contains_key("r0"));
    }
}
