//! Errors, one enum per operation family.

use thiserror::Error;

/// A packed state key that cannot be built or accepted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PackedStateKeyError {
    /// `{type}:{state_key}` is longer than the server allows for a state key.
    #[error("the packed state key is {length} bytes long, the limit is {max}")]
    TooLong {
        /// The length the packed key would have.
        length: usize,
        /// The limit.
        max: usize,
    },
    /// The outer state key has no `:` and so cannot be a packed key.
    #[error("the packed state key has no ':' separator")]
    MissingSeparator,
    /// The slot's event type is empty: no state event has an empty type.
    #[error("the event type is empty")]
    EmptyEventType,
}

/// A decrypted plaintext that is not a state payload.
#[derive(Debug, Error)]
pub enum PayloadError {
    /// Not JSON, or missing / mistyped fields.
    #[error("the decrypted payload is not a state payload: {0}")]
    Json(#[source] serde_json::Error),
    /// `content` is not a JSON object.
    #[error("the decrypted payload's content is not a JSON object")]
    ContentNotAnObject,
    /// The inner event type is empty.
    #[error("the decrypted payload's event type is empty")]
    EmptyEventType,
    /// `content` nests objects and arrays deeper than
    /// [`MAX_CONTENT_DEPTH`](crate::state_event::MAX_CONTENT_DEPTH).
    #[error("the decrypted payload's content nests deeper than {max} levels")]
    ContentTooDeep {
        /// The limit.
        max: usize,
    },
}

/// Refusal to encrypt a state event.
#[derive(Debug, Error)]
pub enum EncryptStateError {
    /// The type is critical state, which must stay in plaintext (DESIGN section 5).
    #[error("{event_type} is critical state and is never encrypted")]
    CriticalType {
        /// The refused type.
        event_type: String,
    },
    /// The type is only honoured in plaintext
    /// ([`PLAINTEXT_ONLY_STATE_TYPES`](crate::critical::PLAINTEXT_ONLY_STATE_TYPES)).
    #[error("{event_type} is only honoured in plaintext and is never encrypted")]
    PlaintextOnly {
        /// The refused type.
        event_type: String,
    },
    /// The packed state key is invalid.
    #[error(transparent)]
    PackedStateKey(#[from] PackedStateKeyError),
    /// The session was used for another slot or room (a caller bug, refused to keep slots apart).
    #[error("this state session belongs to another slot or room")]
    WrongSession,
}

/// Failure to decrypt an encrypted state event with the sessions we hold.
#[derive(Debug, Error)]
pub enum DecryptStateError {
    /// The event is not an `m.megolm.v1.aes-sha2` encrypted state event.
    #[error("malformed encrypted state event: {0}")]
    Malformed(String),
    /// We hold no session with this id; the event waits as pending.
    #[error("no state session {session_id}")]
    MissingSession {
        /// The unknown session.
        session_id: String,
    },
    /// The session we hold starts after the event's message index (a newcomer's key).
    #[error(
        "the session {session_id} is only known from index {first_known}, the event is at {index}"
    )]
    UnknownIndex {
        /// The session.
        session_id: String,
        /// The first index we can decrypt.
        first_known: u32,
        /// The event's index.
        index: u32,
    },
    /// The ciphertext failed authentication.
    #[error("decryption failed: {0}")]
    Decryption(#[from] vodozemac::megolm::DecryptionError),
}

/// Failure to import an exported state key.
#[derive(Debug, Error)]
pub enum ImportKeyError {
    /// The algorithm is not Megolm v1.
    #[error("unsupported algorithm {0}")]
    UnsupportedAlgorithm(String),
    /// The session id does not belong to the exported key.
    #[error("the session id {claimed} does not match the key's {actual}")]
    SessionIdMismatch {
        /// The id the export claims.
        claimed: String,
        /// The id of the key it carries.
        actual: String,
    },
    /// The key is for another room than the one it is imported for.
    #[error("the key is for room {found}, not {expected}")]
    WrongRoom {
        /// The room we import for.
        expected: String,
        /// The room the key names.
        found: String,
    },
}

/// A pickle that cannot be restored.
#[derive(Debug, Error)]
#[error("cannot restore a state session from its pickle: {0}")]
pub struct PickleError(#[from] pub serde_json::Error);

/// A room-key bundle that cannot be built or opened.
#[derive(Debug, Error)]
pub enum BundleError {
    /// The encrypted bundle is bigger than the recipient accepts.
    #[error("the bundle is {size} bytes, the limit is {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The encryption info is unusable (unknown version, no SHA-256 hash).
    #[error("cannot decrypt the bundle: {0}")]
    Decryption(#[from] matrix_sdk_crypto::DecryptorError),
    /// The ciphertext does not match its SHA-256 hash.
    #[error("the bundle does not match its hash")]
    HashMismatch,
    /// The plaintext is not a bundle.
    #[error("the bundle is malformed: {0}")]
    Malformed(#[source] serde_json::Error),
    /// An entry carries a key whose encoding the parser cannot take safely (see
    /// [`crate::key_encoding`]).
    #[error("the bundle is malformed: {0}")]
    MalformedKey(String),
    /// Reading through the attachment cipher failed.
    #[error("I/O error while encrypting the bundle: {0}")]
    Io(#[source] std::io::Error),
}

/// Why a creator claim does not prove a session's creator.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ClaimError {
    /// The claim names another device than the one whose key the session names.
    #[error("the claim names another device than the session's")]
    OtherDevice,
    /// The signature does not verify with the device's Ed25519 key over this room, session,
    /// user and key.
    #[error("the claim's signature does not verify")]
    BadSignature,
}
