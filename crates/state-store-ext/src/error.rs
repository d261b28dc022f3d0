//! Store errors.

use thiserror::Error;

/// A failure of the state store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("SQLite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A value could not be (de)serialised.
    #[error("serialisation error: {0}")]
    Serialization(#[from] serde_json::Error),
    /// Encryption at rest failed: wrong passphrase, or a value that does not decrypt.
    #[error("store encryption error: {0}")]
    Encryption(#[from] matrix_sdk_store_encryption::Error),
    /// The database is encrypted and no passphrase was given.
    #[error("the database is encrypted: a passphrase is required")]
    PassphraseRequired,
    /// A passphrase was given for a database created without one.
    #[error("the database was created without a passphrase")]
    NotEncrypted,
    /// The database was written by a newer version of this crate.
    #[error("the database has schema version {found}, this build supports up to {supported}")]
    DatabaseTooNew {
        /// The version found in the file.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// A stored record does not belong where it was found (tampering or a bug).
    #[error("corrupted record in {table}: {detail}")]
    Corrupted {
        /// The table.
        table: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A stored session pickle could not be restored.
    #[error(transparent)]
    Pickle(#[from] crypto_ext::PickleError),
    /// A value could not be encoded for storage.
    #[error("could not encode a value for the store: {0}")]
    Encoding(String),
    /// Filesystem error (creating the store's directory).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The blocking database task panicked or was cancelled.
    #[error("database task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The store's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
