#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod bundle;
pub mod critical;
mod error;
pub mod identifiers;
pub mod key_encoding;
pub mod state_event;
pub mod state_sessions;
#[cfg(feature = "testing")]
pub mod testing;
pub mod validation;
pub mod wire;

pub use error::{
    BundleError, ClaimError, DecryptStateError, EncryptStateError, ImportKeyError,
    PackedStateKeyError, PayloadError, PickleError,
};
pub use state_event::{PackedStateKey, StatePayload, StateSlot};
pub use state_sessions::{
    CreatorClaim, DecryptedState, EncryptedState, EncryptedStateEvent, InboundStateSession,
    KeyOrigin, OutboundStateSession, OwnDevice,
};
pub use validation::{
    AcceptedState, DecryptionFacts, Provenance, RejectedState, RejectionReason, SessionOwner,
    StateSenderTrust, UnprovenCreators, ValidationInput, Verdict, may_send_state, validate,
    validate_preview,
};
pub use vodozemac;

/// Converts a JSON value into a `Raw` of any type (infallible: a `serde_json::Value` always
/// serialises).
pub fn to_raw<T>(value: &serde_json::Value) -> ruma::serde::Raw<T> {
    // Serialising a `serde_json::Value` cannot fail: its keys are strings and its numbers finite.
    #[allow(clippy::expect_used)]
    let json = serde_json::value::to_raw_value(value).expect("a JSON value always serialises");
    ruma::serde::Raw::from_json(json)
}
