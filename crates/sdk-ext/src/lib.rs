#![doc = include_str!("../README.md")]

mod config;
mod devices;
mod error;
mod extension;
mod history;
mod invite;
mod keys;
mod processing;
mod receive;
mod requests;
mod restricted;
mod room;
mod updates;

#[doc = include_str!("../../../docs/guide.md")]
pub mod guide {}

pub use config::{StateExtConfig, StoreConfig};
pub use crypto_ext::KeyOrigin;
pub use crypto_ext::{OwnDevice, RejectedState, RejectionReason, StateSlot};
pub use error::{Error, Result};
pub use extension::StateExtension;
pub use history::{InviteReport, RoomHistoryExt, SkippedDevice};
pub use invite::RoomPreview;
pub use receive::{BundleImportError, BundleOutcome, ImportedBundle};
pub use requests::{KeyRequestConfig, KeyRequestRefusal};
pub use restricted::{PreviewRefusal, RestrictedPreviewConfig};
pub use room::{EncryptedAvatar, RoomStateExt, RoomStateView, SentState};
pub use state_store_ext::{PendingEvent, StateOrigin, StateRecord};
pub use updates::StateUpdate;
