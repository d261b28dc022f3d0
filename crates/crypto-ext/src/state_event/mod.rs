//! The encrypted-state wire format: slots, packed state keys and Megolm plaintext payloads.

mod packed;
mod payload;

pub use packed::{MAX_PACKED_STATE_KEY_LEN, PackedStateKey, StateSlot};
pub use payload::{MAX_CONTENT_DEPTH, StatePayload};
