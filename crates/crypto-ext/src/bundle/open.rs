//! Opening a received bundle.

use std::{collections::BTreeSet, io::Read};

use matrix_sdk_crypto::{
    AttachmentDecryptor, MediaEncryptionInfo,
    olm::ExportedRoomKey,
    types::{
        events::room_key_withheld::RoomKeyWithheldContent,
        room_history::{HistoricRoomKey, RoomKeyBundle},
    },
};
use ruma::RoomId;
use tracing::warn;

use crate::error::BundleError;

/// Limits on what a recipient accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BundleLimits {
    /// The largest encrypted bundle accepted, in bytes. A bigger one is refused before it is
    /// decrypted (and a downloader should stop reading at this size).
    pub max_bytes: usize,
    /// The longest a download may take, from connecting to the last byte: a server that stalls
    /// it must not hold up everything that waits for the import.
    pub download_timeout: std::time::Duration,
}

impl BundleLimits {
    /// 64 MiB: about 200,000 sessions, far more than any room's history.
    pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;
    /// Two minutes: 64 MiB at under 1 MB/s.
    pub const DEFAULT_DOWNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
}

impl Default for BundleLimits {
    fn default() -> Self {
        Self {
            max_bytes: Self::DEFAULT_MAX_BYTES,
            download_timeout: Self::DEFAULT_DOWNLOAD_TIMEOUT,
        }
    }
}

/// A decrypted bundle, reduced to what may be imported for one room.
#[derive(Debug)]
pub struct OpenedBundle {
    /// Keys of the room, each for a session that is not also withheld.
    pub room_keys: Vec<HistoricRoomKey>,
    /// Withheld notices of the room, each for a session that is not also shared.
    pub withheld: Vec<RoomKeyWithheldContent>,
    /// Entries dropped because they name another room.
    pub foreign_entries: usize,
    /// Sessions dropped because the bundle both shares and withholds them.
    pub conflicting_sessions: Vec<String>,
}

/// Checks the size, decrypts (checking the SHA-256 hash), parses, and keeps only the entries of
/// `room_id`; a session listed both as shared and withheld is dropped from both lists.
///
/// # Errors
///
/// [`BundleError::TooLarge`] before any decryption, [`BundleError::Decryption`] (hash mismatch,
/// bad key), [`BundleError::Malformed`] when the plaintext is not a bundle.
pub fn open(
    ciphertext: &[u8],
    info: MediaEncryptionInfo,
    room_id: &RoomId,
    limits: BundleLimits,
) -> Result<OpenedBundle, BundleError> {
    if ciphertext.len() > limits.max_bytes {
        return Err(BundleError::TooLarge { size: ciphertext.len(), max: limits.max_bytes });
    }
    let mut reader = ciphertext;
    let mut decryptor = AttachmentDecryptor::new(&mut reader, info)?;
    let mut json = Vec::with_capacity(ciphertext.len());
    // The decryptor checks the hash when it reaches the end and fails the read on a mismatch.
    decryptor.read_to_end(&mut json).map_err(|_| BundleError::HashMismatch)?;
    open_plaintext(&json, room_id)
}

/// The second half of [`open`], on the decrypted bytes: parses them and keeps only the entries
/// of `room_id`; a session listed both as shared and withheld is dropped from both lists.
///
/// # Errors
///
/// [`BundleError::Malformed`] when the bytes are not a bundle, [`BundleError::MalformedKey`]
/// for a key the parser cannot take safely.
pub fn open_plaintext(json: &[u8], room_id: &RoomId) -> Result<OpenedBundle, BundleError> {
    crate::key_encoding::check_bundle_claimed_keys(json)?;
    let bundle: RoomKeyBundle = serde_json::from_slice(json).map_err(BundleError::Malformed)?;

    let (mut room_keys, foreign_keys): (Vec<HistoricRoomKey>, Vec<_>) =
        bundle.room_keys.into_iter().partition(|key| key.room_id == room_id);
    let (mut withheld, foreign_notices): (Vec<RoomKeyWithheldContent>, Vec<_>) =
        bundle.withheld.into_iter().partition(|notice| notice.room_id() == Some(room_id));
    let foreign_entries = foreign_keys.len() + foreign_notices.len();
    let shared: BTreeSet<&str> = room_keys.iter().map(|k| k.session_id.as_str()).collect();
    let conflicting: BTreeSet<String> = withheld
        .iter()
        .filter_map(|w| w.megolm_session_id())
        .filter(|id| shared.contains(id))
        .map(str::to_owned)
        .collect();
    if foreign_entries > 0 || !conflicting.is_empty() {
        warn!(%room_id, foreign_entries, conflicting = conflicting.len(), "dropped bundle entries");
    }
    room_keys.retain(|k| !conflicting.contains(&k.session_id));
    withheld.retain(|w| w.megolm_session_id().is_none_or(|id| !conflicting.contains(id)));
    Ok(OpenedBundle {
        room_keys,
        withheld,
        foreign_entries,
        conflicting_sessions: conflicting.into_iter().collect(),
    })
}

/// A bundle entry in the key-export format, marked shareable (it was shared as history, and its
/// holder may hand it on when inviting in turn), ready for `Encryption::import_room_keys` and
/// for [`crate::InboundStateSession::import`].
pub fn exported_room_key(key: HistoricRoomKey) -> ExportedRoomKey {
    let HistoricRoomKey {
        algorithm,
        room_id,
        sender_key,
        session_id,
        session_key,
        sender_claimed_keys,
        ..
    } = key;
    ExportedRoomKey {
        algorithm,
        room_id,
        sender_key,
        session_id,
        session_key,
        sender_claimed_keys,
        forwarding_curve25519_key_chain: Vec::new(),
        shared_history: true,
    }
}
