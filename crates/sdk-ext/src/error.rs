//! Errors of the high-level API: values, no I/O.

use thiserror::Error;

/// A failure of an encrypted-state operation.
#[derive(Debug, Error)]
pub enum Error {
    /// The extension is not installed on this room's client (or was dropped).
    #[error("the encrypted-state extension is not installed on this client")]
    NotInstalled,
    /// The client is not logged in or its end-to-end encryption is not ready.
    #[error("the client is not logged in or its encryption is not ready")]
    NotReady,
    /// Our user has no cross-signing identity: sharing keys would give the recipient no way to
    /// tell our keys from a forger's.
    #[error("our user has no cross-signing identity; set up cross-signing before sharing keys")]
    NoCrossSigning,
    /// The room has not switched on encrypted state.
    #[error("encrypted state is not enabled in room {0}")]
    NotEnabled(ruma::OwnedRoomId),
    /// The state type is critical and must stay in plaintext.
    #[error("{0} is critical state: it is never encrypted")]
    CriticalType(String),
    /// The state type is only honoured in plaintext, where the homeserver checks it (the
    /// canonical alias: `crypto_ext::critical::PLAINTEXT_ONLY_STATE_TYPES`); send it in clear.
    #[error("{0} is only honoured in plaintext: send it in clear")]
    PlaintextOnly(String),
    /// Our power in the room does not allow this state (the level its type needs, or a state
    /// key naming another user): every member's client would reject it, so nothing is sent.
    #[error("our power in the room does not allow this state: {0}")]
    NotAllowed(crypto_ext::RejectionReason),
    /// Encrypting failed (packed state key too long, ...).
    #[error(transparent)]
    Encrypt(#[from] crypto_ext::EncryptStateError),
    /// A content could not be serialised.
    #[error("invalid content: {0}")]
    Json(#[from] serde_json::Error),
    /// The homeserver or matrix-sdk failed.
    #[error(transparent)]
    Sdk(#[from] Box<matrix_sdk::Error>),
    /// Reading or writing a key file (the client's key export, our key import) failed.
    #[error(transparent)]
    KeyFile(#[from] matrix_sdk_crypto::KeyExportError),
    /// Importing keys into the client's key store failed.
    #[error(transparent)]
    KeyImport(#[from] matrix_sdk::encryption::RoomKeyImportError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] state_store_ext::StoreError),
    /// matrix-sdk's stores could not be opened for the client
    /// ([`ClientCryptoStore::open_sqlite`](crate::ClientCryptoStore::open_sqlite)).
    #[error("the client's stores could not be opened: {0}")]
    ClientStore(Box<matrix_sdk::ClientBuildError>),
    /// The crypto store handed in [`StateExtConfig::client_crypto_store`](crate::StateExtConfig)
    /// is not the client's: it holds no account, or another account or device than the
    /// client's (its keys would be read and its key would sign in the client's name).
    #[error("the shared crypto store is not this client's: {0}")]
    ForeignCryptoStore(String),
    /// The client's crypto store failed.
    #[error(transparent)]
    CryptoStore(#[from] matrix_sdk_crypto::CryptoStoreError),
}

impl From<matrix_sdk::Error> for Error {
    fn from(error: matrix_sdk::Error) -> Self {
        Self::Sdk(Box::new(error))
    }
}

impl From<matrix_sdk::HttpError> for Error {
    fn from(error: matrix_sdk::HttpError) -> Self {
        Self::Sdk(Box::new(error.into()))
    }
}

impl From<matrix_sdk::StoreError> for Error {
    fn from(error: matrix_sdk::StoreError) -> Self {
        Self::Sdk(Box::new(error.into()))
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
