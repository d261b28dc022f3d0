//! A guard for the Ed25519 keys inside exported room keys, checked before they are parsed.
//!
//! matrix-sdk-crypto parses an exported key's `sender_claimed_keys.ed25519` with vodozemac
//! 0.10's `Ed25519PublicKey::from_base64`, which accepts 44 characters and panics when they are
//! not padding-terminated (33 decoded bytes copied into 32: found by the `bundle_plaintext`
//! fuzz target). Every exported key another party sends us (a bundle's entries, invite keys, key
//! shares, previews) goes through [`check_claimed_keys`] first, so such a key is a parse error,
//! never a panic.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::BundleError;

/// The length of an Ed25519 public key.
const ED25519_LENGTH: usize = 32;

/// Whether `encoded` is an Ed25519 public key as vodozemac can parse it without panicking:
/// unpadded base64 of exactly 32 bytes, or the same with its one `=` of padding.
fn is_ed25519_key(encoded: &str) -> bool {
    let unpadded = encoded.strip_suffix('=').unwrap_or(encoded);
    unpadded.len() == 43
        && vodozemac::base64_decode(unpadded).is_ok_and(|bytes| bytes.len() == ED25519_LENGTH)
}

/// Checks every `sender_claimed_keys` object in `value` (at any depth): each `ed25519` entry that
/// is a string must be a well-formed Ed25519 key.
///
/// # Errors
///
/// The first malformed key, for the error message.
pub fn check_claimed_keys(value: &Value) -> Result<(), String> {
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(fields) => {
                if let Some(Value::Object(keys)) = fields.get("sender_claimed_keys") {
                    check_keys(keys.iter().filter_map(|(k, v)| Some((k.as_str(), v.as_str()?))))?;
                }
                stack.extend(fields.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    Ok(())
}

/// [`check_claimed_keys`] for a room-key bundle, read from its bytes without building the
/// whole JSON tree (a bundle may hold tens of thousands of keys).
///
/// # Errors
///
/// [`BundleError::Malformed`] when the bytes are not JSON of a bundle's shape (the real parse
/// must not run on them: it reads entries before it finds a syntax error further on),
/// [`BundleError::MalformedKey`] for the first malformed key.
pub fn check_bundle_claimed_keys(json: &[u8]) -> Result<(), BundleError> {
    #[derive(Deserialize)]
    struct Bundle {
        #[serde(default)]
        room_keys: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        #[serde(default)]
        sender_claimed_keys: BTreeMap<String, Value>,
    }
    let bundle = serde_json::from_slice::<Bundle>(json).map_err(BundleError::Malformed)?;
    for entry in &bundle.room_keys {
        let keys = entry.sender_claimed_keys.iter();
        check_keys(keys.filter_map(|(k, v)| Some((k.as_str(), v.as_str()?))))
            .map_err(BundleError::MalformedKey)?;
    }
    Ok(())
}

fn check_keys<'a>(keys: impl Iterator<Item = (&'a str, &'a str)>) -> Result<(), String> {
    for (algorithm, key) in keys {
        if algorithm == "ed25519" && !is_ed25519_key(key) {
            return Err(format!("malformed claimed Ed25519 key {key:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use vodozemac::Ed25519Keypair;

    use super::*;

    #[test]
    fn well_formed_keys_pass_and_the_panicking_form_does_not() {
        let key = Ed25519Keypair::new().public_key().to_base64();
        assert!(is_ed25519_key(&key));
        assert!(is_ed25519_key(&format!("{key}=")));
        // 44 characters without padding: what makes vodozemac 0.10 panic.
        let panicking = format!("{key}A");
        assert!(!is_ed25519_key(&panicking));
        assert!(!is_ed25519_key(""));
        assert!(!is_ed25519_key(&"!".repeat(43)));

        let content = |claimed: &str| json!({ "keys": [{ "session_id": "s", "sender_claimed_keys": { "ed25519": claimed } }] });
        assert_eq!(check_claimed_keys(&content(&key)), Ok(()));
        assert!(check_claimed_keys(&content(&panicking)).is_err());
        let bundle = json!({ "room_keys": [{ "sender_claimed_keys": { "ed25519": panicking } }] });
        assert!(check_bundle_claimed_keys(bundle.to_string().as_bytes()).is_err());
        // Cut short after the bad key: not even JSON, and still refused before the real parse
        // (the fuzz target's second finding).
        let cut = bundle.to_string();
        assert!(check_bundle_claimed_keys(&cut.as_bytes()[..cut.len() - 3]).is_err());
        let bundle = json!({ "room_keys": [{ "sender_claimed_keys": { "ed25519": key } }] });
        assert!(check_bundle_claimed_keys(bundle.to_string().as_bytes()).is_ok());
    }

    /// The regression of the fuzz finding: the bundle and every to-device content that
    /// carries exported keys refuse the key instead of panicking.
    #[test]
    fn a_claimed_key_that_would_panic_is_a_parse_error() {
        let key = Ed25519Keypair::new().public_key().to_base64();
        let entry = json!({
            "algorithm": "m.megolm.v1.aes-sha2",
            "room_id": "!room:example.org",
            "sender_key": "a+q3+oQN9eSc+V5PwiPlFzh4N9V7ZV2JpngeZkSl3ys",
            "session_id": "UNWYQnprZxVnO1TsIyeh2z+hnkENCqKZ1NDEZzcZBuQ",
            "session_key": "AQAAAAA",
            "sender_claimed_keys": { "ed25519": format!("{key}A") },
        });
        let bundle = json!({ "room_keys": [entry.clone()], "withheld": [] }).to_string();
        let room_id = ruma::room_id!("!room:example.org");
        let opened = crate::bundle::open_plaintext(bundle.as_bytes(), room_id);
        assert!(matches!(opened, Err(BundleError::MalformedKey(_))), "{opened:?}");
        // The same bundle cut short after the entry: the parser would meet the key first.
        let cut = &bundle.as_bytes()[..bundle.len() - 20];
        let opened = crate::bundle::open_plaintext(cut, room_id);
        assert!(matches!(opened, Err(BundleError::Malformed(_))), "{opened:?}");
        let content = json!({ "room_id": "!room:example.org", "keys": [entry] });
        let parsed = crate::wire::ToDeviceContent::parse(
            crate::wire::ToDeviceKind::InviteStateKeys,
            &content,
        );
        assert!(parsed.is_err());
    }
}
