//! Entry points for the fuzz targets (feature `fuzzing`: never enable it in an app).
//!
//! A row of the SQLite store is read back through the codec (the envelope, the cipher or the
//! plain JSON, the logical-key check) into one of the record types; a tampered row must give a
//! typed error, never a panic.

use std::sync::LazyLock;

use crypto_ext::{
    RejectedState,
    state_sessions::{InboundStateSessionPickle, OutboundStateSessionPickle},
};
use matrix_sdk_store_encryption::StoreCipher;
use serde::de::DeserializeOwned;

use crate::{
    Result,
    records::{
        KeyRequest, PendingBundle, PendingEvent, ReceivedPreview, SentBundle, SentPreview,
        SessionEventRef, StateRecord, WithheldSession,
    },
    sqlite::codec::{Codec, starting_with},
};

/// One cipher for every run (creating one costs a key generation).
static ENCRYPTED: LazyLock<Option<Codec>> =
    LazyLock::new(|| StoreCipher::new().ok().map(|cipher| Codec::new(Some(cipher))));
static PLAIN: LazyLock<Codec> = LazyLock::new(|| Codec::new(None));

/// Opens `bytes` as a stored value: with the encrypted codec when `encrypted` (else the plain
/// one), as the record type `kind` selects (modulo the number of types). Returns whether it
/// opened; an error is the expected answer to most inputs.
pub fn open_stored_value(encrypted: bool, kind: u8, bytes: &[u8]) -> bool {
    let codec = match (encrypted, ENCRYPTED.as_ref()) {
        (true, Some(codec)) => codec,
        _ => &PLAIN,
    };
    match kind % 12 {
        0 => open::<StateRecord>(codec, bytes),
        1 => open::<RejectedState>(codec, bytes),
        2 => open::<PendingEvent>(codec, bytes),
        3 => open::<PendingBundle>(codec, bytes),
        4 => open::<ReceivedPreview>(codec, bytes),
        5 => open::<SentPreview>(codec, bytes),
        6 => open::<SessionEventRef>(codec, bytes),
        7 => open::<WithheldSession>(codec, bytes),
        8 => open::<KeyRequest>(codec, bytes),
        9 => open::<InboundStateSessionPickle>(codec, bytes),
        10 => open::<SentBundle>(codec, bytes),
        _ => open::<OutboundStateSessionPickle>(codec, bytes),
    }
}

/// Seals `value` as the store would, under the logical key `["fuzz"]`: for building seeds.
///
/// # Errors
///
/// The codec's.
pub fn seal_value<T: serde::Serialize>(encrypted: bool, value: &T) -> Result<Vec<u8>> {
    let codec = match (encrypted, ENCRYPTED.as_ref()) {
        (true, Some(codec)) => codec,
        _ => &PLAIN,
    };
    codec.seal(&["fuzz"], value)
}

fn open<T: DeserializeOwned>(codec: &Codec, bytes: &[u8]) -> bool {
    codec.open::<T>("fuzz", bytes, starting_with(&["fuzz"])).is_ok()
}
