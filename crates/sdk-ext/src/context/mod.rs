//! The shared context below every feature: one handle and the helpers every feature needs.
//!
//! The handle holds the client, the store, our device, the settings, the update channel and the
//! one place that sends Olm to-device content; the helpers are device lookups, session helpers,
//! sender facts, room facts and preview decoding.
//!
//! A [`Context`] is a cheap handle: each feature holds a clone, as matrix-sdk-crypto's
//! sub-machines each hold a clone of the machine's store. Nothing here names a feature.

mod devices;
mod facts;
mod handle;
mod preview;
mod rooms;
mod sessions;
mod throttle;

pub(crate) use facts::SessionClaim;
pub(crate) use handle::{Context, OlmSender};
pub(crate) use preview::PreviewEvent;
pub(crate) use rooms::{
    encrypts_state, is_joined, is_moderator, is_moderator_in, levels_with_content,
    room_encryption_content, state_content,
};
pub(crate) use sessions::{ClientKey, KeyRead};
pub(crate) use throttle::Ask;
