//! Encoding of keys and values: hashed keys and sealed, encrypted values when the store has a
//! passphrase; plain length-prefixed keys and JSON values when it has none.
//!
//! The cipher has no associated data, so a value copied into another row would still decrypt.
//! Every value therefore carries its logical key, checked on read.
//!
//! An encrypted value is `StoreCipher`'s `EncryptedValue` in MessagePack (as matrix-sdk-sqlite
//! stores them): its JSON form, which `StoreCipher::encrypt_value` produces, spells every
//! ciphertext byte as a decimal number, several times the size and the time. Values written in
//! that JSON form by earlier versions (they start with `{`) are still read.

use matrix_sdk_store_encryption::StoreCipher;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{Result, StoreError};

/// The first byte of an encrypted value in the base64 form (a MessagePack map, as the binary
/// form of earlier values is, never starts with it).
const BASE64_FORM: u8 = 0x01;

pub(crate) struct Codec {
    cipher: Option<StoreCipher>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").field("encrypted", &self.cipher.is_some()).finish()
    }
}

#[derive(Serialize)]
struct SealRef<'a, T> {
    k: &'a [&'a str],
    v: &'a T,
}

#[derive(Deserialize)]
struct Sealed<T> {
    k: Vec<String>,
    v: T,
}

impl Codec {
    pub(crate) fn new(cipher: Option<StoreCipher>) -> Self {
        Self { cipher }
    }

    pub(crate) fn is_encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    /// The lookup key of `parts` in `table`.
    pub(crate) fn key(&self, table: &str, parts: &[&str]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for part in parts {
            bytes.extend_from_slice(&(part.len() as u32).to_be_bytes());
            bytes.extend_from_slice(part.as_bytes());
        }
        match &self.cipher {
            Some(cipher) => cipher.hash_key(table, &bytes).to_vec(),
            None => bytes,
        }
    }

    /// Seals `value` together with its logical key.
    pub(crate) fn seal<T: Serialize>(&self, parts: &[&str], value: &T) -> Result<Vec<u8>> {
        let sealed = SealRef { k: parts, v: value };
        Ok(match &self.cipher {
            Some(cipher) => {
                // The base64 form: MessagePack writes its strings as one run of bytes, where
                // the binary form's `Vec<u8>` fields go out as one integer per byte (most of the
                // codec's time on large values).
                let encrypted = cipher.encrypt_value_base64_data(serde_json::to_vec(&sealed)?)?;
                let mut bytes = vec![BASE64_FORM];
                rmp_serde::encode::write_named(&mut bytes, &encrypted)
                    .map_err(|e| StoreError::Encoding(e.to_string()))?;
                bytes
            }
            None => serde_json::to_vec(&sealed)?,
        })
    }

    /// Opens a sealed value and checks that its logical key satisfies `expect`.
    pub(crate) fn open<T: DeserializeOwned>(
        &self,
        table: &'static str,
        bytes: &[u8],
        expect: impl FnOnce(&[String]) -> bool,
    ) -> Result<T> {
        let sealed: Sealed<T> = match &self.cipher {
            Some(cipher) if bytes.first() == Some(&b'{') => cipher.decrypt_value(bytes)?,
            Some(cipher) if bytes.first() == Some(&BASE64_FORM) => {
                let encrypted =
                    rmp_serde::from_slice(&bytes[1..]).map_err(|e| StoreError::Corrupted {
                        table,
                        detail: format!("unreadable encrypted value: {e}"),
                    })?;
                serde_json::from_slice(&cipher.decrypt_value_base64_data(encrypted)?)?
            }
            // Values written before the base64 form: MessagePack of the binary form.
            Some(cipher) => {
                let encrypted =
                    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupted {
                        table,
                        detail: format!("unreadable encrypted value: {e}"),
                    })?;
                serde_json::from_slice(&cipher.decrypt_value_data(encrypted)?)?
            }
            None => serde_json::from_slice(bytes)?,
        };
        if !expect(&sealed.k) {
            return Err(StoreError::Corrupted {
                table,
                detail: "a record is stored under another key than its own".to_owned(),
            });
        }
        Ok(sealed.v)
    }
}

/// A key check for point lookups: the stored logical key must be exactly `parts`.
pub(crate) fn exactly<'a>(parts: &'a [&'a str]) -> impl FnOnce(&[String]) -> bool + 'a {
    move |k| k.len() == parts.len() && k.iter().zip(parts).all(|(a, b)| a == b)
}

/// A key check for scans: the stored logical key must start with `prefix`.
pub(crate) fn starting_with<'a>(prefix: &'a [&'a str]) -> impl FnOnce(&[String]) -> bool + 'a {
    move |k| k.len() >= prefix.len() && k.iter().zip(prefix).all(|(a, b)| a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_in_the_base64_form_and_earlier_forms_still_open() {
        let codec = Codec::new(Some(StoreCipher::new().unwrap()));
        let parts = ["!room:example.org", "m.room.name"];
        let sealed = codec.seal(&parts, &"Room name").unwrap();
        assert_eq!(sealed.first(), Some(&BASE64_FORM), "the base64 form, in MessagePack");
        let value: String = codec.open("t", &sealed, exactly(&parts)).unwrap();
        assert_eq!(value, "Room name");
        // The ciphertext is one MessagePack string, not one integer per byte.
        let big = "x".repeat(4096);
        let sealed_big = codec.seal(&parts, &big).unwrap();
        assert!(sealed_big.len() < big.len() * 3 / 2, "{} bytes", sealed_big.len());

        // A value written by the previous version: MessagePack of the binary form.
        let cipher = codec.cipher.as_ref().unwrap();
        let json = serde_json::to_vec(&SealRef { k: &parts, v: &"Binary form" }).unwrap();
        let binary = rmp_serde::to_vec_named(&cipher.encrypt_value_data(json).unwrap()).unwrap();
        let value: String = codec.open("t", &binary, exactly(&parts)).unwrap();
        assert_eq!(value, "Binary form");

        // A value written by an earlier version: `StoreCipher::encrypt_value`'s JSON form.
        let cipher = codec.cipher.as_ref().unwrap();
        let earlier = cipher.encrypt_value(&SealRef { k: &parts, v: &"Older name" }).unwrap();
        assert_eq!(earlier.first(), Some(&b'{'));
        let value: String = codec.open("t", &earlier, exactly(&parts)).unwrap();
        assert_eq!(value, "Older name");
        assert!(sealed.len() < earlier.len() / 2, "{} vs {}", sealed.len(), earlier.len());
    }
}
