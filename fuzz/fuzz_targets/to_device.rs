//! Each to-device content we define or take (invite keys, key request, key share, restricted
//! preview, bundle announcement), from any JSON: read with its size limits. The first byte
//! picks the kind; a content that reads is within its kind's limits.
#![no_main]

use crypto_ext::{
    identifiers,
    wire::{ToDeviceContent, ToDeviceKind},
};
use libfuzzer_sys::fuzz_target;

const KINDS: [ToDeviceKind; 5] = [
    ToDeviceKind::InviteStateKeys,
    ToDeviceKind::StateKeyRequest,
    ToDeviceKind::StateKeyShare,
    ToDeviceKind::RestrictedPreview,
    ToDeviceKind::RoomKeyBundle,
];

fuzz_target!(|data: &[u8]| {
    let Some((first, json)) = data.split_first() else { return };
    let kind = KINDS[usize::from(*first) % KINDS.len()];
    assert_eq!(ToDeviceKind::classify(kind.event_type()), Some(kind));
    let Ok(content) = serde_json::from_slice::<serde_json::Value>(json) else { return };
    match ToDeviceContent::parse(kind, &content) {
        Ok(ToDeviceContent::InviteStateKeys(c)) => {
            assert!(c.keys.len() <= identifiers::INVITE_STATE_KEYS_MAX)
        }
        Ok(ToDeviceContent::StateKeyRequest(c)) => {
            assert!(c.session_ids.len() <= identifiers::STATE_KEY_REQUEST_MAX)
        }
        Ok(ToDeviceContent::StateKeyShare(c)) => {
            assert!(c.keys.len() <= identifiers::STATE_KEY_REQUEST_MAX)
        }
        Ok(ToDeviceContent::RestrictedPreview(c)) => {
            assert!(c.keys.len() <= identifiers::RESTRICTED_PREVIEW_MAX);
            assert!(c.events.len() <= identifiers::RESTRICTED_PREVIEW_MAX)
        }
        Ok(ToDeviceContent::RoomKeyBundle(_)) | Err(_) => {}
    }
});
