//! The one dispatcher of our to-device messages.
//!
//! It classifies each type once, checks once that it arrived over Olm (and, where the handling needs it, from a known device), reads its content
//! within its size limit, and hands it to the feature it is for.

use std::sync::{Arc, Weak};

use crypto_ext::{
    vodozemac::Curve25519PublicKey,
    wire::{ToDeviceContent, ToDeviceKind},
};
use matrix_sdk::{
    Client,
    deserialized_responses::{AlgorithmInfo, EncryptionInfo},
    event_handler::{EventHandlerHandle, RawEvent},
};
use ruma::events::AnyToDeviceEvent;
use serde_json::Value;
use tracing::warn;

use super::inner::Inner;
use crate::{Result, context::OlmSender};

/// Registers the handler of our to-device messages.
pub(super) fn register(client: &Client, inner: Weak<Inner>) -> EventHandlerHandle {
    client.add_event_handler(
        move |_: AnyToDeviceEvent, raw: RawEvent, info: Option<EncryptionInfo>| {
            let inner = inner.clone();
            async move {
                let Some(inner) = inner.upgrade() else { return };
                if let Err(error) = dispatch(&inner, &raw, info.as_ref()).await {
                    warn!(%error, "could not handle a to-device message");
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
            // The invite may already be accepted (an announcement can trail the join). Imports
            // take a while: not in the sync's event handler.
            let inner = Arc::downgrade(inner);
            tokio::spawn(async move {
                let Some(inner) = inner.upgrade() else { return };
                let Some(room) = inner.ctx.client.get_room(&room_id) else { return };
                if let Err(error) = inner.import_history(&room).await {
                    warn!(%error, "importing a room-key bundle failed");
                }
            });
            Ok(())
        }
    }
}
