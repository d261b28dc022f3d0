//! The one dispatcher of our to-device messages.
//!
//! It classifies each type once, checks once that it arrived over Olm (and, where the handling needs it, from a known device), reads its content
//! within its size limit, and hands it to the feature it is for.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex as StdMutex, Weak},
    time::{Duration, Instant},
};

use crypto_ext::{
    vodozemac::Curve25519PublicKey,
    wire::{ToDeviceContent, ToDeviceKind},
};
use matrix_sdk::{
    Client,
    deserialized_responses::{AlgorithmInfo, EncryptionInfo},
    event_handler::{EventHandlerHandle, RawEvent},
};
use ruma::{OwnedUserId, UserId, events::AnyToDeviceEvent};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::warn;

use super::inner::Inner;
use crate::{Result, context::OlmSender};

/// The window of a sender's budget (`RemoteWorkLimits::to_device_per_sender_per_minute`: each
/// message may cost device lookups, store writes and Olm sends, and the handler runs inside the
/// client's sync).
const SENDER_WINDOW: Duration = Duration::from_secs(60);
/// How many senders the budgets track at most (past that, expired windows are forgotten, then
/// all).
const MAX_TRACKED_SENDERS: usize = 4096;

/// What each sender spent of its budget in its current window.
#[derive(Debug, Default)]
struct SenderBudgets {
    spent: BTreeMap<OwnedUserId, (Instant, u32)>,
}

impl SenderBudgets {
    /// Spends one message of `sender`'s `budget` at `now`; `false` when it is spent already.
    fn spend(&mut self, sender: &UserId, now: Instant, budget: u32) -> bool {
        if self.spent.len() >= MAX_TRACKED_SENDERS && !self.spent.contains_key(sender) {
            self.spent.retain(|_, (start, _)| now.duration_since(*start) < SENDER_WINDOW);
            if self.spent.len() >= MAX_TRACKED_SENDERS {
                self.spent.clear();
            }
        }
        let (start, count) = self.spent.entry(sender.to_owned()).or_insert((now, 0));
        if now.duration_since(*start) >= SENDER_WINDOW {
            *start = now;
            *count = 0;
        }
        *count = count.saturating_add(1);
        *count <= budget
    }
}

/// How many of our to-device messages may wait for the worker; past that, new ones are dropped
/// with a log line (the senders' budgets keep this from happening short of a flood by many).
const QUEUE: usize = 1024;

/// Registers the handler of our to-device messages. The handler runs inside the client's sync
/// (matrix-sdk awaits it), so it only checks the sender's budget and queues the message; one
/// worker task handles the queue in order, with all its lookups, store writes and Olm sends.
pub(super) fn register(client: &Client, inner: Weak<Inner>) -> EventHandlerHandle {
    let budgets = Arc::new(StdMutex::new(SenderBudgets::default()));
    let (queue, mut work) = mpsc::channel::<(RawEvent, Option<EncryptionInfo>)>(QUEUE);
    let worker = inner.clone();
    tokio::spawn(async move {
        while let Some((raw, info)) = work.recv().await {
            let Some(inner) = worker.upgrade() else { return };
            if let Err(error) = dispatch(&inner, &raw, info.as_ref()).await {
                warn!(%error, "could not handle a to-device message");
            }
        }
    });
    client.add_event_handler(
        move |_: AnyToDeviceEvent, raw: RawEvent, info: Option<EncryptionInfo>| {
            let inner = inner.clone();
            let budgets = budgets.clone();
            let queue = queue.clone();
            async move {
                let Some(inner) = inner.upgrade() else { return };
                if !is_ours(&raw) {
                    return;
                }
                if let Some(info) = &info {
                    let mut budgets = budgets.lock().unwrap_or_else(|e| e.into_inner());
                    let budget = inner.ctx.config.remote_limits.to_device_per_sender_per_minute;
                    if !budgets.spend(&info.sender, Instant::now(), budget) {
                        warn!(sender = %info.sender, "ignoring a to-device message: the sender's budget is spent");
                        return;
                    }
                }
                if queue.try_send((raw, info)).is_err() {
                    warn!("ignoring a to-device message: the queue is full");
                }
            }
        },
    )
}

/// Whether the settings let us handle messages of `kind` at all.
fn is_switched_on(inner: &Inner, kind: ToDeviceKind) -> bool {
    let config = &inner.ctx.config;
    match kind {
        ToDeviceKind::StateKeyRequest => config.key_requests.answer,
        ToDeviceKind::RestrictedPreview => config.restricted_previews.accept,
        ToDeviceKind::InviteStateKeys
        | ToDeviceKind::StateKeyShare
        | ToDeviceKind::RoomKeyBundle => true,
    }
}

/// Whether handling messages of `kind` needs the sending device (known, not blocked): the ones
/// we answer with keys, or take a sharer's word from.
fn needs_known_device(kind: ToDeviceKind) -> bool {
    match kind {
        ToDeviceKind::StateKeyRequest | ToDeviceKind::RestrictedPreview => true,
        // Invite keys and key shares are checked key by key; a bundle's device is checked for
        // cross-signing when the bundle is imported.
        ToDeviceKind::InviteStateKeys
        | ToDeviceKind::StateKeyShare
        | ToDeviceKind::RoomKeyBundle => false,
    }
}

/// Whether a to-device event is of one of our types.
fn is_ours(raw: &RawEvent) -> bool {
    serde_json::from_str::<TypeOnly>(raw.get())
        .is_ok_and(|event| ToDeviceKind::classify(&event.r#type).is_some())
}

/// The type of a to-device event, read without the rest.
#[derive(serde::Deserialize)]
struct TypeOnly {
    r#type: String,
}

async fn dispatch(inner: &Arc<Inner>, raw: &RawEvent, info: Option<&EncryptionInfo>) -> Result<()> {
    let event: Value = serde_json::from_str(raw.get())?;
    let event_type = event.get("type").and_then(Value::as_str).unwrap_or_default();
    let Some(kind) = ToDeviceKind::classify(event_type) else { return Ok(()) };
    if !is_switched_on(inner, kind) {
        return Ok(());
    }
    // Only over Olm: the sender is then authenticated by its device keys. Without it there is
    // nobody to answer and nobody to blame.
    let Some(info) = info else {
        warn!(%kind, "ignoring a to-device message that was not Olm-encrypted");
        return Ok(());
    };
    let content = match ToDeviceContent::parse(kind, &event["content"]) {
        Ok(content) => content,
        Err(error) => {
            warn!(sender = %info.sender, %error, "ignoring a to-device message");
            return Ok(());
        }
    };
    let device = match &info.sender_device {
        Some(device_id) if needs_known_device(kind) => {
            inner.ctx.sender_device(&info.sender, device_id).await?
        }
        _ => None,
    };
    let curve25519 = match &info.algorithm_info {
        AlgorithmInfo::OlmV1Curve25519AesSha2 { curve25519_public_key_base64 } => {
            Curve25519PublicKey::from_base64(curve25519_public_key_base64).ok()
        }
        AlgorithmInfo::MegolmV1AesSha2 { .. } => None,
    };
    let sender = OlmSender {
        user_id: info.sender.clone(),
        device_id: info.sender_device.clone(),
        curve25519,
        sent_device_keys: event.get("sender_device_keys").is_some_and(|keys| !keys.is_null()),
        device,
    };
    match content {
        ToDeviceContent::InviteStateKeys(content) => {
            inner.invites.receive_preview_keys(&sender, content).await
        }
        ToDeviceContent::StateKeyRequest(request) => {
            inner.requests.receive_request(&sender, request).await
        }
        ToDeviceContent::StateKeyShare(share) => {
            let stored = inner.requests.receive_share(&sender, share).await?;
            inner.keys_stored(stored).await
        }
        ToDeviceContent::RestrictedPreview(preview) => {
            inner.restricted.receive_preview(&sender, preview).await
        }
        ToDeviceContent::RoomKeyBundle(announcement) => {
            let Some(room_id) = inner.history.receive_announcement(&sender, announcement).await?
            else {
                return Ok(());
            };
            if !inner.is_running() {
                // Shut down: announcements are still kept, imports wait for `import_history`.
                return Ok(());
            }
            // The invite may already be accepted (an announcement can trail the join): imported
            // in the background, as the listener's imports are.
            super::tasks::import_history(inner, &room_id);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use ruma::user_id;

    use super::*;

    const BUDGET: u32 = 30;

    #[test]
    fn a_senders_budget_is_spent_then_renewed_with_its_window() {
        let mut budgets = SenderBudgets::default();
        let (mallory, alice) = (user_id!("@mallory:example.org"), user_id!("@alice:example.org"));
        let start = Instant::now();
        for _ in 0..BUDGET {
            assert!(budgets.spend(mallory, start, BUDGET));
        }
        assert!(!budgets.spend(mallory, start, BUDGET), "past the budget");
        assert!(budgets.spend(alice, start, BUDGET), "each sender has its own");
        assert!(budgets.spend(mallory, start + SENDER_WINDOW, BUDGET), "a new window");
    }

    #[test]
    fn the_tracked_senders_stay_bounded() {
        let mut budgets = SenderBudgets::default();
        let start = Instant::now();
        for n in 0..MAX_TRACKED_SENDERS + 10 {
            let user = OwnedUserId::try_from(format!("@user{n}:example.org")).unwrap();
            assert!(budgets.spend(&user, start, BUDGET));
        }
        assert!(budgets.spent.len() <= MAX_TRACKED_SENDERS);
    }
}
