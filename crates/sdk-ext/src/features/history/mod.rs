//! Shared history (MSC4268): invite with a bundle, receive the inviter's, attribute keys.

mod download;
mod early;
mod receive;
mod retry;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex as StdMutex,
};

use crypto_ext::{
    DecryptionFacts, KeyOrigin, OutboundStateSession, bundle::BundleBuilder,
    wire::RoomKeyBundleAnnouncement,
};
use matrix_sdk::{
    Room, deserialized_responses::TimelineEvent, encryption::identities::Device,
    ruma::events::room::history_visibility::HistoryVisibility,
};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedRoomId, RoomId, UserId,
    api::{
        client::{
            membership::invite_user::v3::{InvitationRecipient, InviteUserId, Request},
            state::get_state_event_for_key,
        },
        error::ErrorKind,
    },
    events::{StateEventType, room::EncryptedFile},
};
use state_store_ext::{SentBundle, StateChanges};
use tokio::sync::Mutex;
use tracing::{info, instrument, warn};

use crate::{
    InviteReport, Result, SkippedDevice,
    context::{Ask, ClientKey, Context, KeyRead},
};

/// The shared-history feature.
pub(crate) struct History {
    ctx: Context,
    /// Serialises bundle imports.
    imports: Mutex<()>,
    /// Downloads bundles.
    http: matrix_sdk::reqwest::Client,
    /// Rooms with kept bundle announcements (so a sync of any other room costs no store query).
    bundle_rooms: StdMutex<BTreeSet<OwnedRoomId>>,
    /// Background imports in flight, and retries of deferred downloads.
    schedule: StdMutex<retry::Schedule>,
    /// Announcements for rooms the client does not know yet, in memory only.
    early: StdMutex<early::EarlyAnnouncements>,
}

/// An invite with history that was sent: the report, and the invitee's devices that got the
/// announcement (the ones other invite-time keys go to).
pub(crate) struct Invited {
    pub(crate) report: InviteReport,
    pub(crate) recipients: Vec<Device>,
}

impl History {
    /// The feature, with the rooms whose bundle announcements the store keeps.
    pub(crate) async fn new(ctx: Context) -> Result<Self> {
        let http = ctx.config.http_client.clone().unwrap_or_default();
        let bundle_rooms = ctx.store.rooms_with_pending_bundles().await?.into_iter().collect();
        Ok(Self {
            ctx,
            imports: Mutex::new(()),
            http,
            bundle_rooms: StdMutex::new(bundle_rooms),
            schedule: StdMutex::default(),
            early: StdMutex::default(),
        })
    }

    /// Starts a background import of `room_id`'s kept bundles, unless the room has none, one
    /// runs already, or its deferred download is not due for a retry; returns whether it
    /// started. End it with [`History::end_background_import`].
    pub(crate) fn start_background_import(&self, room_id: &RoomId) -> bool {
        (self.is_bundle_room(room_id) || self.holds_early(room_id))
            && self.schedule().start(room_id, std::time::Instant::now())
    }

    /// A background import of `room_id` ended.
    pub(crate) fn end_background_import(&self, room_id: &RoomId) {
        self.schedule().end(room_id);
    }

    /// The rooms whose deferred bundle download is due for a retry.
    pub(crate) fn retries_due(&self) -> Vec<OwnedRoomId> {
        self.schedule().due(std::time::Instant::now())
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, retry::Schedule> {
        self.schedule.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks whether `room_id` has kept bundle announcements.
    fn set_bundle_room(&self, room_id: &RoomId, has_bundles: bool) {
        let mut rooms = self.bundle_rooms.lock().unwrap_or_else(|e| e.into_inner());
        if has_bundles {
            rooms.insert(room_id.to_owned());
        } else {
            rooms.remove(room_id);
        }
    }

    /// Whether `room_id` has kept bundle announcements.
    fn is_bundle_room(&self, room_id: &RoomId) -> bool {
        self.bundle_rooms.lock().unwrap_or_else(|e| e.into_inner()).contains(room_id)
    }

    /// The room's state sessions (every session that encrypted an accepted state event of the
    /// room: only its creator can make a session one, where a rejected event's claim could
    /// name anyone's message session and keep it out of bundles), and, for each that encrypted
    /// a slot's current value, the index of that event (the lowest, should one session hold
    /// several slots).
    async fn state_sessions(
        &self,
        room_id: &RoomId,
    ) -> Result<(BTreeSet<String>, BTreeMap<String, u32>)> {
        let store = &self.ctx.store;
        let mut sessions = BTreeSet::new();
        let mut current: BTreeMap<String, u32> = BTreeMap::new();
        for record in store.room_state(room_id).await? {
            if let Some(provenance) = record.provenance() {
                let index = current.entry(provenance.session_id.clone()).or_insert(u32::MAX);
                *index = (*index).min(provenance.message_index);
            }
            for earlier in store.slot_history(room_id, &record.slot).await? {
                if let Some(provenance) = earlier.provenance() {
                    sessions.insert(provenance.session_id.clone());
                }
            }
        }
        sessions.extend(current.keys().cloned());
        Ok((sessions, current))
    }

    /// Invites `user_id` and hands their cross-signed devices one room-key bundle (see
    /// [`crate::RoomHistoryExt::invite_with_history`]). The report's `preview_keys` is left at
    /// 0 for the caller to fill.
    #[instrument(skip(self, room), fields(room_id = %room.room_id()))]
    pub(crate) async fn invite(&self, room: &Room, user_id: &UserId) -> Result<Invited> {
        let ctx = &self.ctx;
        let client = &ctx.client;
        ctx.require_cross_signing().await?;

        let room_id = room.room_id().to_owned();
        // A bundle announced before a failure belongs to the invite if the invite went through
        // (its answer lost): it is announced again as it was, since one invite has one bundle.
        // Otherwise no invite holds it yet, and a new one (with the history since) replaces it.
        let kept = match ctx.store.sent_bundle(&room_id, user_id).await? {
            Some(sent) if is_invited(room, user_id).await? => Some(sent),
            _ => None,
        };
        let sent = match kept {
            Some(sent) => {
                info!(%user_id, "announcing again the bundle of an invite whose answer was lost");
                sent
            }
            None => {
                let sent = self.upload_bundle(room, user_id).await?;
                let changes =
                    StateChanges { sent_bundles: vec![sent.clone()], ..Default::default() };
                ctx.store.save_changes(changes).await?;
                sent
            }
        };
        let file: EncryptedFile = serde_json::from_value(sent.file.clone())?;
        let bundle_url = file.url;
        let announcement =
            RoomKeyBundleAnnouncement { room_id: room_id.clone(), file: sent.file.clone() };

        let devices = ctx.user_devices(user_id, Ask::Always).await?;
        let mut devices_skipped = Vec::new();
        let mut recipients = Vec::new();
        for device in devices.devices() {
            if device.is_blacklisted() {
                devices_skipped.push(SkippedDevice::Blocked(device.device_id().to_owned()));
            } else if !device.is_cross_signed_by_owner() {
                devices_skipped.push(SkippedDevice::NotCrossSigned(device.device_id().to_owned()));
            } else {
                recipients.push(device);
            }
        }
        let failures = ctx.send_message(&recipients, &announcement).await?;
        let mut devices_reached = Vec::new();
        for device in &recipients {
            let device_id = device.device_id().to_owned();
            if failures.iter().any(|(u, d)| u == user_id && *d == device_id) {
                warn!(%user_id, %device_id, "bundle announcement not delivered");
                devices_skipped.push(SkippedDevice::DeliveryFailed(device_id));
            } else {
                devices_reached.push(device_id);
            }
        }
        // The invite goes out once the bundle is announced, so an invitee who accepts at once
        // has it (as matrix-sdk and matrix-js-sdk do). Should its answer be lost, the retry
        // finds the invitee invited and announces the kept bundle again; it is forgotten once
        // the invite went through.
        client
            .send(Request::new(
                room_id.clone(),
                InvitationRecipient::UserId(InviteUserId::new(user_id.to_owned())),
            ))
            .await?;
        let changes = StateChanges {
            removed_sent_bundles: vec![(room_id.clone(), user_id.to_owned())],
            ..Default::default()
        };
        ctx.store.save_changes(changes).await?;
        let SentBundle {
            message_keys: shared_message_keys,
            state_keys: shared_state_keys,
            withheld_keys,
            ..
        } = sent;
        info!(
            %user_id, shared_message_keys, shared_state_keys, withheld_keys,
            reached = devices_reached.len(), skipped = devices_skipped.len(),
            "invited with history"
        );
        let report = InviteReport {
            invitee: user_id.to_owned(),
            shared_message_keys,
            shared_state_keys,
            preview_keys: 0,
            withheld_keys,
            bundle_url,
            devices_reached,
            devices_skipped,
        };
        Ok(Invited { report, recipients })
    }

    /// Builds the bundle of `room` for an invitee (see
    /// [`crate::RoomHistoryExt::invite_with_history`]) and uploads it encrypted.
    async fn upload_bundle(&self, room: &Room, invitee: &UserId) -> Result<SentBundle> {
        let ctx = &self.ctx;
        let room_id = room.room_id().to_owned();
        let history_shared = matches!(
            current_history_visibility(room).await?,
            HistoryVisibility::Shared | HistoryVisibility::WorldReadable
        );
        let mut builder = BundleBuilder::new(&room_id, &ctx.own_device);
        let mut state_keys = 0;
        let mut own_state_sessions = BTreeSet::new();
        for pickle in ctx.store.outbound_sessions(&room_id).await? {
            let mut session = OutboundStateSession::from_pickle(pickle);
            own_state_sessions.insert(session.session_id());
            if builder.add_state_session(&mut session) {
                state_keys += 1;
            }
        }
        // One read of the room's sessions in the client's key store (from the shared crypto
        // store, else one key export). Other members' state sessions go in at the index of
        // their slot's current event, never from the first index the key store holds: the
        // invitee reads the current values, not older ones. State sessions no slot holds now
        // stay out; the rest are message sessions.
        let (state_sessions, current_indices) = self.state_sessions(&room_id).await?;
        let others: BTreeMap<String, u32> = current_indices
            .into_iter()
            .filter(|(session_id, _)| !own_state_sessions.contains(session_id))
            .collect();
        let exported = ctx.client_keys(&room_id, None, KeyRead::MayExport).await?;
        for key in ctx.keys_at_index_with(&room_id, &others, Some(&exported)).await? {
            if builder.add_state_key(key) {
                state_keys += 1;
            }
        }
        let mut message_keys = 0;
        for ClientKey { mut key, .. } in exported {
            if state_sessions.contains(&key.session_id) {
                continue;
            }
            if !history_shared {
                key.shared_history = false;
            }
            if builder.add_message_session(key) {
                message_keys += 1;
            }
        }
        // Notices of history the client was not given, passed on as matrix-sdk's bundle does.
        for withheld in ctx.received_withheld(&room_id).await? {
            builder.add_withheld(withheld);
        }
        let withheld_keys = builder.counts().1;
        let json = serde_json::to_vec(&builder.build())?;
        let file = ctx.client.upload_encrypted_file(&mut json.as_slice()).await?;
        Ok(SentBundle {
            room_id,
            invitee: invitee.to_owned(),
            file: serde_json::to_value(&file)?,
            message_keys,
            state_keys,
            withheld_keys,
            built_at: MilliSecondsSinceUnixEpoch::now(),
        })
    }

    /// Where the key of a timeline event of `room` came from (see
    /// [`crate::RoomHistoryExt::key_origin`]).
    pub(crate) async fn key_origin(
        &self,
        room: &Room,
        event: &TimelineEvent,
    ) -> Result<Option<KeyOrigin>> {
        let Some(session_id) = megolm_session_id(event) else { return Ok(None) };
        if let Some(pickle) = self.ctx.store.inbound_session(&session_id).await?
            && pickle.room_id() == room.room_id()
            && event.encryption_info().is_some()
        {
            return Ok(Some(pickle.key_origin().clone()));
        }
        Ok(event
            .encryption_info()
            .map(|info| DecryptionFacts::from_encryption_info(info).key_origin))
    }

    /// Why a bundle withheld the key of an event of `room` (see
    /// [`crate::RoomHistoryExt::withheld_code`]).
    pub(crate) async fn withheld_code(
        &self,
        room: &Room,
        event: &TimelineEvent,
    ) -> Result<Option<String>> {
        let Some(session_id) = megolm_session_id(event) else { return Ok(None) };
        Ok(self
            .ctx
            .store
            .withheld_session(&session_id)
            .await?
            .filter(|withheld| withheld.room_id == room.room_id())
            .map(|withheld| withheld.code))
    }
}

/// The Megolm session of an event: from its decryption info, or from its encrypted content.
fn megolm_session_id(event: &TimelineEvent) -> Option<String> {
    if let Some(session_id) = event.encryption_info().and_then(|info| info.session_id()) {
        return Some(session_id.to_owned());
    }
    let content: serde_json::Value = event.raw().get_field("content").ok()??;
    content.get("session_id")?.as_str().map(str::to_owned)
}

/// Whether the homeserver has `user_id` invited to `room` now (the local copy may be a sync
/// behind, or miss an invite whose answer never came).
async fn is_invited(room: &Room, user_id: &UserId) -> Result<bool> {
    let membership =
        current_state_field(room, StateEventType::RoomMember, user_id.as_str(), "membership")
            .await?;
    Ok(membership.as_deref() == Some("invite"))
}

/// The room's history visibility as the homeserver has it now: the local copy may be a sync
/// behind, and sharing keys on a stale `shared` after a switch to `joined` would leak history.
async fn current_history_visibility(room: &Room) -> Result<HistoryVisibility> {
    let visibility =
        current_state_field(room, StateEventType::RoomHistoryVisibility, "", "history_visibility")
            .await?;
    // No history visibility event: the spec's default.
    Ok(visibility.map_or(HistoryVisibility::Shared, |v| HistoryVisibility::from(v.as_str())))
}

/// The string `field` of the content of `room`'s current `event_type` / `state_key` state event,
/// as the homeserver has it now; `None` without such an event or field.
async fn current_state_field(
    room: &Room,
    event_type: StateEventType,
    state_key: &str,
    field: &str,
) -> Result<Option<String>> {
    let request = get_state_event_for_key::v3::Request::new(
        room.room_id().to_owned(),
        event_type,
        state_key.to_owned(),
    );
    match room.client().send(request).await {
        Ok(response) => {
            let value: serde_json::Value =
                serde_json::from_str(response.event_or_content.get()).unwrap_or_default();
            // The server answers with the content, or the whole event if asked to.
            let content = value.get("content").unwrap_or(&value);
            Ok(content.get(field).and_then(|v| v.as_str()).map(str::to_owned))
        }
        Err(error) if error.client_api_error_kind() == Some(&ErrorKind::NotFound) => Ok(None),
        Err(error) => Err(error.into()),
    }
}
