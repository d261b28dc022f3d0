#![doc = include_str!("../README.md")]

// Bottom layer: values without I/O, the client's crypto store, and the shared context.
mod client_store;
mod config;
mod context;
mod error;
mod outcomes;
mod updates;
mod views;
// Middle layer: the features, side by side.
mod features;
// Top layer: the extension, its dispatcher, its tasks and its traits.
mod extension;

#[doc = include_str!("../guide.md")]
pub mod guide {}

pub use client_store::ClientCryptoStore;
pub use config::{
    KeyRequestConfig, RemoteWorkLimits, RestrictedPreviewConfig, StateExtConfig, StoreConfig,
};
pub use crypto_ext::KeyOrigin;
pub use crypto_ext::{
    OwnDevice, RejectedState, RejectionReason, StateSenderTrust, StateSlot, UnprovenCreators,
};
pub use error::{Error, Result};
pub use extension::{StateExtension, history::RoomHistoryExt, room::RoomStateExt};
pub use outcomes::{
    BundleImportError, BundleOutcome, ImportedBundle, InviteReport, KeyRequestRefusal,
    PreviewRefusal, RoomUpgrade, SkippedDevice,
};
pub use state_store_ext::{PendingEvent, StateOrigin, StateRecord};
pub use updates::StateUpdate;
pub use views::{EncryptedAvatar, RoomPreview, RoomStateView, SentState};
