//! How the extension is set up.

use std::path::PathBuf;

use matrix_sdk_crypto::CollectStrategy;

/// Where the extension keeps its state.
#[derive(Clone)]
pub enum StoreConfig {
    /// A SQLite file in `path` (a directory, typically next to matrix-sdk's own stores),
    /// encrypted at rest with `passphrase`. `None` keeps values in clear.
    Sqlite {
        /// The directory.
        path: PathBuf,
        /// The passphrase.
        passphrase: Option<String>,
    },
    /// In memory: nothing survives the process (tests, ephemeral bots).
    Memory,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite { path, passphrase } => f
                .debug_struct("Sqlite")
                .field("path", path)
                .field("passphrase", &passphrase.as_ref().map(|_| "<redacted>"))
                .finish(),
            Self::Memory => f.write_str("Memory"),
        }
    }
}

/// The extension's settings.
#[derive(Debug, Clone)]
pub struct StateExtConfig {
    /// The store.
    pub store: StoreConfig,
    /// Which devices receive state keys. Use the same strategy as the client's
    /// `ClientBuilder::with_room_key_recipient_strategy` so that state and messages reach the
    /// same devices.
    pub sharing_strategy: CollectStrategy,
}

impl StateExtConfig {
    /// SQLite in `path`, encrypted with `passphrase`; the default strategy.
    pub fn sqlite(path: impl Into<PathBuf>, passphrase: impl Into<String>) -> Self {
        Self {
            store: StoreConfig::Sqlite { path: path.into(), passphrase: Some(passphrase.into()) },
            sharing_strategy: CollectStrategy::default(),
        }
    }

    /// An in-memory store; the default strategy.
    pub fn memory() -> Self {
        Self { store: StoreConfig::Memory, sharing_strategy: CollectStrategy::default() }
    }
}
