//! Inviting with history (MSC4268): one bundle with the shareable message keys and the room's
//! current state keys.

use std::future::Future;

use crypto_ext::{
    DecryptionFacts, KeyOrigin, OutboundStateSession, bundle::BundleBuilder, identifiers,
};
use matrix_sdk::deserialized_responses::TimelineEvent;
use matrix_sdk::{Room, ruma::events::room::history_visibility::HistoryVisibility};
use ruma::api::error::ErrorKind;
use ruma::{
    OwnedDeviceId, OwnedMxcUri, OwnedUserId, UserId,
    api::client::{
        membership::invite_user::v3::{InvitationRecipient, InviteUserId, Request},
        state::get_state_event_for_key,
    },
    events::{AnyToDeviceEventContent, StateEventType},
    serde::Raw,
};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::{BundleOutcome, Error, Result, StateExtension, devices::Ask, keys};

/// Why a device of the invitee did not get the bundle announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkippedDevice {
    /// The device is not cross-signed by its owner: keys go only to devices the invitee vouched
    /// for.
    NotCrossSigned(OwnedDeviceId),
    /// The device is blocked locally.
    Blocked(OwnedDeviceId),
    /// Olm encryption or delivery failed.
    DeliveryFailed(OwnedDeviceId),
}

/// What [`RoomHistoryExt::invite_with_history`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteReport {
    /// The invited user.
    pub invitee: OwnedUserId,
    /// Message sessions shared (their creators marked them shareable and the history visibility
    /// allows it).
    pub shared_message_keys: usize,
    /// State sessions shared, each at the index of its slot's current event.
    pub shared_state_keys: usize,
    /// Keys of the aesthetic slots sent with the invite for the invite preview.
    pub preview_keys: usize,
    /// Sessions listed as withheld (`m.history_not_shared`).
    pub withheld_keys: usize,
    /// Where the encrypted bundle was uploaded.
    pub bundle_url: OwnedMxcUri,
    /// The devices the announcement reached.
    pub devices_reached: Vec<OwnedDeviceId>,
    /// The devices skipped, with the reason.
    pub devices_skipped: Vec<SkippedDevice>,
}

/// Inviting with history, on `matrix_sdk::Room`.
pub trait RoomHistoryExt {
    /// Invites `user_id` and hands their cross-signed devices one room-key bundle: the message
    /// sessions they may read (shareable ones, when the history visibility is `shared` or
    /// `world_readable`), `m.history_not_shared` notices for the others, and our state sessions
    /// at the index of each slot's current event (room state is visible to every member).
    ///
    /// The invite is sent as a plain `/invite` request, so matrix-sdk's own share-on-invite does
    /// not send a second, different bundle for the same invite. Invitees running matrix-sdk
    /// 0.18 (stock or with this crate) import the bundle when they accept the invite.
    ///
    /// # Errors
    ///
    /// [`Error::NoCrossSigning`] when our user has no cross-signing identity (the invitee could
    /// not tell our keys from a forger's), and homeserver errors.
    fn invite_with_history(
        &self,
        user_id: &UserId,
    ) -> impl Future<Output = Result<InviteReport>> + Send;

    /// Imports now the room-key bundles kept for this room, when we joined it by accepting an
    /// invite from their sender (the background task does the same after the sync that shows
    /// the join; this returns what happened, with the typed error of a refused bundle).
    /// Bundles from anyone but the inviter are dropped unread.
    ///
    /// # Errors
    ///
    /// Store errors, and failures to import keys into the client's key store. A bad bundle is
    /// not an error of this call: it is a [`BundleOutcome::Refused`].
    fn import_history(&self) -> impl Future<Output = Result<Vec<BundleOutcome>>> + Send;

    /// Where the key of a timeline event of this room came from, for labels such as "shared
    /// by Alice": from a bundle, a key share or the invite (recorded by us), or as matrix-sdk
    /// reports it. `None` for an event that is not encrypted or was never decrypted.
    ///
    /// # Errors
    ///
    /// Store errors.
    fn key_origin(
        &self,
        event: &TimelineEvent,
    ) -> impl Future<Output = Result<Option<KeyOrigin>>> + Send;

    /// Why the key of an undecryptable event of this room was withheld from us, as a bundle
    /// said (e.g. `m.history_not_shared`: the room's history visibility did not let the inviter
    /// share it). `None` when no bundle withheld it.
    ///
    /// # Errors
    ///
    /// Store errors.
    fn withheld_code(
        &self,
        event: &TimelineEvent,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
}

impl RoomHistoryExt for Room {
    #[instrument(skip(self), fields(room_id = %self.room_id()))]
    async fn invite_with_history(&self, user_id: &UserId) -> Result<InviteReport> {
        let ext = StateExtension::of_room(self)?;
        let inner = &ext.inner;
        let client = &inner.client;
        let own_user = &inner.own_device.user_id;
        if client
            .encryption()
            .get_user_identity(own_user)
            .await
            .map_err(matrix_sdk::Error::from)?
            .is_none()
        {
            return Err(Error::NoCrossSigning);
        }

        let room_id = self.room_id().to_owned();
        client
            .send(Request::new(
                room_id.clone(),
                InvitationRecipient::UserId(InviteUserId::new(user_id.to_owned())),
            ))
            .await?;

        let history_shared = matches!(
            current_history_visibility(self).await?,
            HistoryVisibility::Shared | HistoryVisibility::WorldReadable
        );
        let mut builder = BundleBuilder::new(&room_id, &inner.own_device);
        let wanted = room_id.clone();
        let mut shared_message_keys = 0;
        for mut key in keys::export_sessions(client, move |s| s.room_id() == wanted).await? {
            if !history_shared {
                key.shared_history = false;
            }
            if builder.add_message_session(key) {
                shared_message_keys += 1;
            }
        }
        let mut shared_state_keys = 0;
        for pickle in inner.store.outbound_sessions(&room_id).await? {
            let mut session = OutboundStateSession::from_pickle(pickle);
            if builder.add_state_session(&mut session) {
                shared_state_keys += 1;
            }
        }
        let withheld_keys = builder.counts().1;
        let bundle = builder.build();

        let json = serde_json::to_vec(&bundle)?;
        let file = client.upload_encrypted_file(&mut json.as_slice()).await?;
        let bundle_url = file.url.clone();
        let content: Raw<AnyToDeviceEventContent> =
            Raw::new(&json!({ "room_id": room_id, "file": file }))?.cast_unchecked();

        let devices = crate::devices::user_devices(inner, user_id, Ask::Always).await?;
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
        let failures = if recipients.is_empty() {
            Vec::new()
        } else {
            client
                .encryption()
                .encrypt_and_send_raw_to_device(
                    recipients.iter().collect(),
                    identifiers::ROOM_KEY_BUNDLE_UNSTABLE,
                    content,
                    inner.config.sharing_strategy.clone(),
                )
                .await?
        };
        let preview_keys = crate::invite::send_preview_keys(inner, &room_id, &recipients).await?;
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
        info!(
            %user_id, shared_message_keys, shared_state_keys, withheld_keys,
            reached = devices_reached.len(), skipped = devices_skipped.len(),
            "invited with history"
        );
        Ok(InviteReport {
            invitee: user_id.to_owned(),
            shared_message_keys,
            shared_state_keys,
            preview_keys,
            withheld_keys,
            bundle_url,
            devices_reached,
            devices_skipped,
        })
    }

    async fn import_history(&self) -> Result<Vec<BundleOutcome>> {
        let ext = StateExtension::of_room(self)?;
        crate::receive::import_pending(&ext.inner, self).await
    }

    async fn key_origin(&self, event: &TimelineEvent) -> Result<Option<KeyOrigin>> {
        let ext = StateExtension::of_room(self)?;
        let Some(session_id) = megolm_session_id(event) else { return Ok(None) };
        if let Some(pickle) = ext.inner.store.inbound_session(&session_id).await?
            && pickle.room_id() == self.room_id()
            && event.encryption_info().is_some()
        {
            return Ok(Some(pickle.key_origin().clone()));
        }
        Ok(event
            .encryption_info()
            .map(|info| DecryptionFacts::from_encryption_info(info).key_origin))
    }

    async fn withheld_code(&self, event: &TimelineEvent) -> Result<Option<String>> {
        let ext = StateExtension::of_room(self)?;
        let Some(session_id) = megolm_session_id(event) else { return Ok(None) };
        Ok(ext
            .inner
            .store
            .withheld_session(&session_id)
            .await?
            .filter(|withheld| withheld.room_id == self.room_id())
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

/// The room's history visibility as the homeserver has it now: the local copy may be a sync
/// behind, and sharing keys on a stale `shared` after a switch to `joined` would leak history.
async fn current_history_visibility(room: &Room) -> Result<HistoryVisibility> {
    let request = get_state_event_for_key::v3::Request::new(
        room.room_id().to_owned(),
        StateEventType::RoomHistoryVisibility,
        String::new(),
    );
    match room.client().send(request).await {
        Ok(response) => {
            let value: serde_json::Value =
                serde_json::from_str(response.event_or_content.get()).unwrap_or_default();
            // The server answers with the content, or the whole event if asked to.
            let content = value.get("content").unwrap_or(&value);
            let content: Option<String> =
                content.get("history_visibility").and_then(|h| h.as_str()).map(str::to_owned);
            Ok(content
                .map(|v| HistoryVisibility::from(v.as_str()))
                .unwrap_or(HistoryVisibility::Shared))
        }
        // No history visibility event: the spec's default.
        Err(error) if error.client_api_error_kind() == Some(&ErrorKind::NotFound) => {
            Ok(HistoryVisibility::Shared)
        }
        Err(error) => Err(error.into()),
    }
}
