//! The features wired together, and what one feature's result means for another.
//!
//! Keys stored by one feature (a key share, a bundle) make the encrypted-state feature validate
//! the events that waited for them; an invite's recipients get the invite feature's keys.

use std::{collections::BTreeSet, sync::Mutex as StdMutex};

use matrix_sdk::{Room, event_handler::EventHandlerHandle};
use tokio::task::AbortHandle;

use crate::{
    BundleOutcome, Result,
    context::Context,
    features::{
        history::History, invites::Invites, requests::KeyRequests, restricted::RestrictedPreviews,
        state::EncryptedState,
    },
};

/// The context and the features, wired together.
pub(crate) struct Inner {
    pub(super) ctx: Context,
    pub(super) state: EncryptedState,
    pub(super) history: History,
    pub(super) requests: KeyRequests,
    pub(super) invites: Invites,
    pub(super) restricted: RestrictedPreviews,
    /// The background task.
    pub(super) task: StdMutex<Option<AbortHandle>>,
    /// The to-device handler.
    pub(super) handler: StdMutex<Option<EventHandlerHandle>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.ctx.fmt(f)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        if let Some(handler) = self.handler.lock().unwrap_or_else(|e| e.into_inner()).take() {
            self.ctx.client.remove_event_handler(handler);
        }
    }
}

impl Inner {
    /// Whether the background task runs (not shut down).
    pub(super) fn is_running(&self) -> bool {
        self.task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|task| !task.is_finished())
    }

    /// Keys of `sessions` were stored: the encrypted state waiting for them is validated again.
    pub(super) async fn keys_stored(&self, sessions: BTreeSet<String>) -> Result<()> {
        if sessions.is_empty() {
            return Ok(());
        }
        self.state.retry_sessions(sessions).await
    }

    /// Imports the bundles kept for `room` (see `History::import_pending`); then, with the
    /// import lock released, validates the encrypted state that waited for their keys; then
    /// tells subscribers what happened to each bundle.
    pub(super) async fn import_history(&self, room: &Room) -> Result<Vec<BundleOutcome>> {
        let run = self.history.import_pending(room).await?;
        if run.imported_any() {
            self.keys_stored(run.stored_sessions.clone()).await?;
            self.state.scan_room(room).await?;
        }
        self.ctx.notify(run.updates(room.room_id()));
        Ok(run.outcomes)
    }

    /// Asks for the keys a joined room's state still waits for; a room with nothing waiting
    /// stops being a waiting room.
    pub(super) async fn request_keys(&self, room: &Room) -> Result<()> {
        if !self.requests.request_missing(room).await? {
            self.state.set_waiting_room(room.room_id(), false);
        }
        Ok(())
    }
}
