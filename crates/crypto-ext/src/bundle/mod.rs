//! Room-key bundles (MSC4268): what an inviter hands an invitee so they can read the history
//! they may see, and the current room state.
//!
//! The wire type is matrix-sdk-crypto's [`RoomKeyBundle`] (`{"room_keys": [...], "withheld":
//! [...]}`), so what we build is exactly what stock clients parse. This module decides what goes
//! in ([`BundleBuilder`]), seals it as an attachment with matrix-sdk-crypto's attachment
//! encryption ([`seal`]), and opens a received one under a size cap, keeping only what belongs to
//! the room and refusing ambiguity ([`open`]).

mod build;
mod open;

pub use build::{BundleBuilder, SealedBundle, seal};
pub use matrix_sdk_crypto::types::room_history::{HistoricRoomKey, RoomKeyBundle};
pub use open::{BundleLimits, OpenedBundle, exported_room_key, open, open_plaintext};
