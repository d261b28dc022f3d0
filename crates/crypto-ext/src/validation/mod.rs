//! The validation pipeline for decrypted state (DESIGN section 6), as pure functions.
//!
//! [`validate`] turns a decrypted state event into a [`Verdict`]: accepted with its
//! [`Provenance`], or rejected with a [`RejectionReason`]. A rejection is data to store and show,
//! not an error a caller could drop. [`resolution`] decides which authorised event holds a slot.

mod facts;
mod pipeline;
mod reason;
pub mod resolution;

pub use facts::{DecryptionFacts, SessionOwner};
pub use pipeline::{
    AcceptedState, Provenance, RejectedState, StateSenderTrust, UnprovenCreators, ValidationInput,
    Verdict, may_send_state, validate, validate_preview,
};
pub use reason::RejectionReason;
