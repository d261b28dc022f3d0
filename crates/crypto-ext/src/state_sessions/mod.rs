//! Dedicated Megolm sessions for state: one outbound session per slot, never used for messages.
//!
//! Why one per slot (the review of MSC3414): handing a newcomer a shared state session at index
//! *i* would reveal every later state event of every slot, and any earlier one the session still
//! covers. With one session per slot, a newcomer gets each slot's key at the index of that slot's
//! current event, and so reads the current value and later updates of that slot only.

pub mod batch;
mod claim;
mod encrypted_event;
mod inbound;
mod outbound;

pub use claim::CreatorClaim;
pub use encrypted_event::EncryptedStateEvent;
pub use inbound::{
    DecryptedState, InboundStateSession, InboundStateSessionPickle, KeyOrigin,
    MAX_UNCONNECTED_COPIES,
};
pub use outbound::{EncryptedState, OutboundStateSession, OutboundStateSessionPickle, OwnDevice};
