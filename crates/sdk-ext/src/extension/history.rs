//! `RoomHistoryExt` on `matrix_sdk::Room`: thin calls into the history and invite features.

use std::future::Future;

use crypto_ext::KeyOrigin;
use matrix_sdk::{Room, deserialized_responses::TimelineEvent};
use ruma::UserId;

use super::StateExtension;
use crate::{BundleOutcome, InviteReport, Result};

/// Inviting with history, on `matrix_sdk::Room`.
pub trait RoomHistoryExt {
    /// Invites `user_id` and hands their cross-signed devices one room-key bundle: the message
    /// sessions they may read (shareable ones, when the history visibility is `shared` or
    /// `world_readable`), `m.history_not_shared` notices for the others, and our state sessions
    /// at the index of each slot's current event (room state is visible to every member).
    ///
    /// The bundle is uploaded and announced first, then the invite is sent (as matrix-sdk and
    /// matrix-js-sdk do), so an invitee who accepts at once already has it. The bundle is kept
    /// in our store until the invite goes through: if this call fails after the announcement
    /// and the invite did go through (its answer lost), calling it again announces the same
    /// bundle again, so one invite never has two bundles with different content; if the invite
    /// never reached the homeserver, calling again shares a new bundle, which replaces the
    /// first on the invitee's side. The invite is a plain
    /// `/invite` request, so matrix-sdk's own share-on-invite does not send a second, different
    /// bundle for the same invite. Invitees running matrix-sdk 0.18 (stock or with this crate)
    /// import the bundle when they accept the invite.
    ///
    /// # Errors
    ///
    /// [`Error::NoCrossSigning`](crate::Error::NoCrossSigning) when our user has no cross-signing identity (the invitee could
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
    async fn invite_with_history(&self, user_id: &UserId) -> Result<InviteReport> {
        let ext = StateExtension::of_room(self)?;
        let inner = &ext.inner;
        let invited = inner.history.invite(self, user_id).await?;
        let mut report = invited.report;
        report.preview_keys =
            inner.invites.send_preview_keys(self.room_id(), &invited.recipients).await?;
        Ok(report)
    }

    async fn import_history(&self) -> Result<Vec<BundleOutcome>> {
        StateExtension::of_room(self)?.inner.import_history(self).await
    }

    async fn key_origin(&self, event: &TimelineEvent) -> Result<Option<KeyOrigin>> {
        StateExtension::of_room(self)?.inner.history.key_origin(self, event).await
    }

    async fn withheld_code(&self, event: &TimelineEvent) -> Result<Option<String>> {
        StateExtension::of_room(self)?.inner.history.withheld_code(self, event).await
    }
}
