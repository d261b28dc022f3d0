//! Receiving room-key bundles (MSC4268).
//!
//! An announcement (`m.room_key_bundle` over Olm, carrying its sender's device keys) is kept in
//! our store. Nothing is downloaded until the user accepts an invite from the
//! announcement's sender: matrix-sdk records who invited us when the client joins from the
//! invited state ([`matrix_sdk::Client::get_pending_key_bundle_details_for_room`]), in the local
//! store, so a homeserver cannot fake it. Then the bundle is downloaded with a size cap (the
//! download stops at the cap), its hash is checked, only entries of the room are kept (and only
//! from a device its owner cross-signed), and its keys go into the client's key store (past
//! messages, through matrix-sdk's normal decryption) and into ours (encrypted state,
//! attribution). The announcement is removed only after both imports, so an import cut short by
//! a crash runs again at the next start; importing a bundle twice changes nothing the first
//! import did not. Validating the encrypted state that waited for the keys is the caller's
//! next step, after the import lock is released (see [`ImportRun`]).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant, SystemTime},
};

use crypto_ext::{
    BundleError, InboundStateSession, KeyOrigin,
    bundle::{self, OpenedBundle},
    vodozemac::Curve25519PublicKey,
    wire::RoomKeyBundleAnnouncement,
};
use matrix_sdk::{Room, RoomState};
use matrix_sdk_crypto::{MediaEncryptionInfo, olm::ExportedRoomKey};
use ruma::{MilliSecondsSinceUnixEpoch, OwnedRoomId, RoomId, events::room::EncryptedFile};
use state_store_ext::{PendingBundle, StateChanges, WithheldSession};
use tracing::{debug, info, instrument, warn};

use super::{History, download::download};
use crate::{
    BundleImportError, BundleOutcome, ImportedBundle, Result, StateUpdate, context::OlmSender,
};

/// How long after accepting an invite its inviter's bundle is still accepted (matrix-sdk's
/// rule too): a bundle that turns up much later is more likely replayed than late.
const ACCEPT_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// What one pass over a room's kept announcements did.
#[derive(Debug, Default)]
pub(crate) struct ImportRun {
    /// What happened to each announcement, not yet told to subscribers.
    pub(crate) outcomes: Vec<BundleOutcome>,
    /// The sessions whose keys were stored: encrypted state waiting for them can be validated
    /// again.
    pub(crate) stored_sessions: BTreeSet<String>,
}
impl ImportRun {
    /// Whether a bundle was imported.
    pub(crate) fn imported_any(&self) -> bool {
        self.outcomes.iter().any(|o| matches!(o, BundleOutcome::Imported(_)))
    }

    /// The updates that tell subscribers about the outcomes.
    pub(crate) fn updates(&self, room_id: &RoomId) -> Vec<StateUpdate> {
        self.outcomes
            .iter()
            .filter_map(|outcome| match outcome {
                BundleOutcome::Imported(imported) => {
                    Some(StateUpdate::HistoryImported(imported.clone()))
                }
                BundleOutcome::Refused { sender, error } => Some(StateUpdate::BundleRefused {
                    room_id: room_id.to_owned(),
                    sender: sender.clone(),
                    reason: error.to_string(),
                }),
                BundleOutcome::Deferred { sender, error } => Some(StateUpdate::BundleDeferred {
                    room_id: room_id.to_owned(),
                    sender: sender.clone(),
                    reason: error.to_string(),
                }),
                BundleOutcome::Ignored { .. } => None,
            })
            .collect()
    }
}

impl History {
    /// Keeps a bundle announcement that arrived over Olm with its sender's device keys. Returns
    /// the room it is for, whose kept bundles may be imported now.
    pub(crate) async fn receive_announcement(
        &self,
        sender: &OlmSender,
        announcement: RoomKeyBundleAnnouncement,
    ) -> Result<Option<OwnedRoomId>> {
        let user_id = &sender.user_id;
        // matrix-sdk's rule too: the announcement must carry its sender's device keys
        // (MSC4147), so the device is known from the message itself. Whether its owner
        // cross-signed it is checked at import time, with the owner's identity fetched then.
        if !sender.sent_device_keys || sender.device_id.is_none() {
            warn!(sender = %user_id, "ignoring a bundle announcement without sender device keys");
            return Ok(None);
        }
        let pending = PendingBundle {
            room_id: announcement.room_id.clone(),
            sender: user_id.clone(),
            sender_device: sender.device_id.clone(),
            file: announcement.file,
            received_at: MilliSecondsSinceUnixEpoch::now(),
        };
        // An announcement may come before its invite (it is sent first), but anyone can name
        // any room: one for a room the client does not know is held in memory only, for a few
        // rooms and a short while, and stored once the invite arrives (see `early`).
        if self.ctx.client.get_room(&announcement.room_id).is_none() {
            let limits = &self.ctx.config.remote_limits;
            let held = self.early().hold(
                pending,
                Instant::now(),
                limits.unknown_room_announcement_ttl,
                limits.announcements_for_unknown_rooms,
            );
            if held {
                debug!(room_id = %announcement.room_id, sender = %user_id, "holding a bundle announcement until its invite arrives");
            } else {
                warn!(sender = %user_id, room_id = %announcement.room_id, "ignoring a bundle announcement for an unknown room: too many held");
            }
            return Ok(None);
        }
        debug!(room_id = %pending.room_id, sender = %user_id, "kept a bundle announcement");
        self.ctx
            .store
            .save_changes(StateChanges { pending_bundles: vec![pending], ..Default::default() })
            .await?;
        self.set_bundle_room(&announcement.room_id, true);
        Ok(Some(announcement.room_id))
    }

    /// Imports the bundles kept for `room`, if we joined it by accepting an invite from their
    /// sender. Bundles from anyone else are dropped; a room we have not joined keeps them.
    #[instrument(skip_all, fields(room_id = %room.room_id()))]
    pub(crate) async fn import_pending(&self, room: &Room) -> Result<ImportRun> {
        let room_id = room.room_id();
        let mut run = ImportRun::default();
        self.keep_early(room_id).await?;
        if !self.is_bundle_room(room_id) {
            return Ok(run);
        }
        let _serial = self.imports.lock().await;
        if room.state() != RoomState::Joined {
            return Ok(run);
        }
        let pending = self.ctx.store.pending_bundles(room_id).await?;
        if pending.is_empty() {
            return Ok(run);
        }
        let accepted = self.ctx.client.get_pending_key_bundle_details_for_room(room_id).await?;
        for announcement in pending {
            let sender = announcement.sender.clone();
            let from_inviter = accepted.as_ref().is_some_and(|details| {
                details.inviter == sender
                    && details
                        .invite_accepted_at
                        .to_system_time()
                        .and_then(|at| SystemTime::now().duration_since(at).ok())
                        .is_some_and(|elapsed| elapsed < ACCEPT_WINDOW)
            });
            let outcome = if from_inviter {
                let sender_key = self.trusted_sender_device_key(&announcement).await?;
                let checked = match sender_key {
                    Some(_) => self.fetch_and_open(room_id, &announcement).await,
                    None => Err(BundleImportError::UntrustedSender),
                };
                match checked {
                    Ok(opened) => {
                        let (imported, sessions) =
                            self.import(&announcement, opened, sender_key).await?;
                        run.stored_sessions.extend(sessions);
                        BundleOutcome::Imported(imported)
                    }
                    Err(error) if error.is_permanent() => {
                        warn!(%sender, %error, "refused a room-key bundle");
                        BundleOutcome::Refused { sender, error }
                    }
                    Err(error) => {
                        warn!(%sender, %error, "could not fetch a room-key bundle, will retry");
                        BundleOutcome::Deferred { sender, error }
                    }
                }
            } else {
                warn!(%sender, "dropped a bundle not sent by the user whose invite we accepted");
                BundleOutcome::Ignored { sender }
            };
            if !matches!(outcome, BundleOutcome::Deferred { .. } | BundleOutcome::Imported(_)) {
                self.forget(&announcement).await?;
            }
            run.outcomes.push(outcome);
        }
        let kept = run.outcomes.iter().any(|o| matches!(o, BundleOutcome::Deferred { .. }));
        self.set_bundle_room(room_id, kept);
        let first = self.ctx.config.remote_limits.bundle_retry_delay;
        if let Some(delay) = self.schedule().record(room_id, kept, Instant::now(), first) {
            debug!(?delay, "a bundle download is retried later");
        }
        Ok(run)
    }

    /// Stores the announcements held in memory for `room_id`, now that the client knows the
    /// room (its invite arrived); expired ones are dropped.
    pub(crate) async fn keep_early(&self, room_id: &RoomId) -> Result<()> {
        let ttl = self.ctx.config.remote_limits.unknown_room_announcement_ttl;
        let early = self.early().take(room_id, Instant::now(), ttl);
        if early.is_empty() {
            return Ok(());
        }
        debug!(%room_id, count = early.len(), "kept the bundle announcements that came before the invite");
        self.ctx
            .store
            .save_changes(StateChanges { pending_bundles: early, ..Default::default() })
            .await?;
        self.set_bundle_room(room_id, true);
        Ok(())
    }

    /// Whether announcements for `room_id` are held in memory.
    pub(super) fn holds_early(&self, room_id: &RoomId) -> bool {
        self.early().holds(room_id)
    }

    fn early(&self) -> std::sync::MutexGuard<'_, super::early::EarlyAnnouncements> {
        self.early.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn forget(&self, announcement: &PendingBundle) -> Result<()> {
        let key = (announcement.room_id.clone(), announcement.sender.clone());
        self.ctx
            .store
            .save_changes(StateChanges { removed_bundles: vec![key], ..Default::default() })
            .await?;
        Ok(())
    }

    /// The Curve25519 key of the device that announced the bundle, if it is cross-signed by
    /// its owner and not blocked (with the owner's keys fetched from the homeserver if we never
    /// had them); `None` otherwise. The announcement came over Olm from that device and binds
    /// the bundle file (its key and hash), so the bundle's entries naming that device as
    /// creator are proven.
    async fn trusted_sender_device_key(
        &self,
        announcement: &PendingBundle,
    ) -> Result<Option<Curve25519PublicKey>> {
        let Some(device_id) = &announcement.sender_device else { return Ok(None) };
        let device = self
            .ctx
            .device(&announcement.sender, device_id, |d| d.is_cross_signed_by_owner())
            .await?;
        Ok(device
            .filter(|d| d.is_cross_signed_by_owner() && !d.is_blacklisted())
            .and_then(|d| d.curve25519_key()))
    }

    async fn fetch_and_open(
        &self,
        room_id: &RoomId,
        announcement: &PendingBundle,
    ) -> Result<OpenedBundle, BundleImportError> {
        let file: EncryptedFile = serde_json::from_value(announcement.file.clone())
            .map_err(|e| BundleImportError::InvalidAnnouncement(e.to_string()))?;
        let limits = self.ctx.config.bundle_limits;
        let ciphertext = download(&self.ctx, &self.http, &file, limits).await?;
        let info = MediaEncryptionInfo::from(file);
        // AES and JSON parsing over up to `max_bytes`: off the async workers.
        let room_id = room_id.to_owned();
        tokio::task::spawn_blocking(move || bundle::open(&ciphertext, info, &room_id, limits))
            .await
            // A panic while opening it: the bundle is what broke the parser, never retried.
            .map_err(|e| BundleError::MalformedKey(format!("opening the bundle failed: {e}")))?
            .map_err(BundleImportError::from)
    }

    /// Stores the bundle's keys in our store (state decryption, attribution) with its withheld
    /// notices, and in the client's key store, then forgets the announcement. Every step can
    /// run again without harm, so a crash anywhere leads to the whole import running again at
    /// the next start. Returns the import and the sessions it stored.
    async fn import(
        &self,
        announcement: &PendingBundle,
        opened: OpenedBundle,
        sender_key: Option<Curve25519PublicKey>,
    ) -> Result<(ImportedBundle, Vec<String>)> {
        let ctx = &self.ctx;
        let room_id = &announcement.room_id;
        let shared_by = announcement.sender.clone();
        let origin = KeyOrigin::Bundle { shared_by: shared_by.clone() };
        let keys: Vec<ExportedRoomKey> =
            opened.room_keys.into_iter().map(bundle::exported_room_key).collect();

        let mut imported = Vec::with_capacity(keys.len());
        for key in &keys {
            match InboundStateSession::import(room_id, key, origin.clone()) {
                Ok(session) => imported.push(session.shared_by_device(sender_key)),
                Err(error) => warn!(session_id = %key.session_id, %error, "skipped a bundle key"),
            }
        }
        let mut changes = StateChanges::default();
        for notice in &opened.withheld {
            let Some(session_id) = notice.megolm_session_id() else { continue };
            changes.withheld_sessions.push(WithheldSession {
                room_id: room_id.clone(),
                session_id: session_id.to_owned(),
                code: notice.withheld_code().as_str().to_owned(),
                withheld_by: shared_by.clone(),
            });
        }
        let session_ids: Vec<String> = keys.iter().map(|k| k.session_id.clone()).collect();
        // Our store and the client's key store take the keys side by side (each writes on a
        // blocking thread of its own); the announcement is forgotten once both have them.
        let into_client = async {
            if keys.is_empty() {
                return Ok(());
            }
            debug!(%room_id, keys = keys.len(), "importing the bundle's keys into the client's key store");
            ctx.import_into_client(keys).await
        };
        let (stored, imported_by_client) =
            tokio::join!(ctx.store_sessions(imported, changes), into_client);
        stored?;
        imported_by_client?;
        debug!(%room_id, keys = session_ids.len(), "stored the bundle's keys in both key stores");
        self.forget(announcement).await?;

        let imported = ImportedBundle {
            room_id: room_id.clone(),
            shared_by,
            keys: session_ids.len(),
            withheld: opened.withheld.len(),
            foreign_entries: opened.foreign_entries,
            conflicting_sessions: opened.conflicting_sessions.len(),
        };
        info!(?imported, "imported a room-key bundle");
        Ok((imported, session_ids))
    }
}
