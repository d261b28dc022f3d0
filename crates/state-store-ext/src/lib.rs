#![doc = include_str!("../README.md")]

mod changes;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod memory;
pub mod records;
mod sqlite;
mod traits;

#[cfg(test)]
mod integration_tests;

pub use changes::StateChanges;
pub use error::{Result, StoreError};
pub use memory::MemoryStateStore;
pub use records::{
    KeyRequest, PendingBundle, PendingEvent, ReceivedPreview, SentBundle, SentPreview,
    SessionEventRef, StateOrigin, StateRecord, WithheldSession,
};
pub use sqlite::{DATABASE_FILE, SCHEMA_VERSION, SqliteStateStore, SqliteStoreConfig};
pub use traits::StateStore;
