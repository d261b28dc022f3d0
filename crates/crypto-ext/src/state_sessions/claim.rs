//! Creator claims: a device's signed statement that it created a state session.
//!
//! Whoever hands on a key (an inviter, a member answering a key request, a moderator pushing a
//! preview) can name any device as the session's creator; the key export format carries no
//! proof. The creator's own signature does: each encrypted state event our clients send
//! carries, next to its ciphertext, the creating device's Ed25519 signature over the room, the
//! session, the sender, the device and its Curve25519 key. A receiver holding the key from
//! anyone checks it against the device keys of the event's sender; the Megolm session id is the
//! session's own signing key, so the claim binds every message of that session, and it travels
//! with the event, whoever carried the key (a stock client's bundle included).

use ruma::{CanonicalJsonValue, OwnedDeviceId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey, Ed25519Signature};

use crate::{error::ClaimError, identifiers};

/// The type named inside the signed text, so the signature cannot be replayed as another kind of
/// statement.
const CLAIM_TYPE: &str = "org.matrix.msc3414.state_session_creator";

/// A device's signed statement that it created a Megolm state session, carried in the content
/// of each encrypted state event of that session under
/// [`identifiers::CREATOR_CLAIM`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatorClaim {
    /// The creating device.
    pub device_id: OwnedDeviceId,
    /// Unpadded base64 of the device's Ed25519 signature over
    /// [`CreatorClaim::signed_text`].
    pub signature: String,
}

impl CreatorClaim {
    /// The canonical JSON text the creator signs: the algorithm, the claim's type, the room,
    /// the session id, the creating user and device, and the device's Curve25519 key.
    pub fn signed_text(
        room_id: &RoomId,
        session_id: &str,
        user_id: &UserId,
        device_id: &str,
        sender_key: Curve25519PublicKey,
    ) -> String {
        let value = json!({
            "algorithm": identifiers::MEGOLM_V1,
            "type": CLAIM_TYPE,
            "room_id": room_id,
            "session_id": session_id,
            "user_id": user_id,
            "device_id": device_id,
            "sender_key": sender_key.to_base64(),
        });
        // Strings only: always canonical JSON.
        CanonicalJsonValue::try_from(value).map(|v| v.to_string()).unwrap_or_default()
    }

    /// The claim of the session `session_id` of `room_id`, created by `device_id` of
    /// `user_id` with `sender_key`, signed by `sign` (the device's Ed25519 key).
    pub fn sign(
        room_id: &RoomId,
        session_id: &str,
        user_id: &UserId,
        device_id: &OwnedDeviceId,
        sender_key: Curve25519PublicKey,
        sign: impl FnOnce(&str) -> Ed25519Signature,
    ) -> Self {
        let text = Self::signed_text(room_id, session_id, user_id, device_id.as_str(), sender_key);
        Self { device_id: device_id.clone(), signature: sign(&text).to_base64() }
    }

    /// Checks the claim for the session `session_id` of `room_id`, whose key names
    /// `sender_key` as its creator, on an event of `user_id`: `device_id` and `ed25519` are the
    /// device of `user_id` whose Curve25519 key is `sender_key`, as the verifier's crypto store
    /// knows it.
    ///
    /// # Errors
    ///
    /// [`ClaimError::OtherDevice`] when the claim names another device,
    /// [`ClaimError::BadSignature`] when the signature does not verify (another room, session,
    /// user or key, or not the device's signature).
    pub fn verify(
        &self,
        room_id: &RoomId,
        session_id: &str,
        user_id: &UserId,
        device_id: &str,
        sender_key: Curve25519PublicKey,
        ed25519: Ed25519PublicKey,
    ) -> Result<(), ClaimError> {
        if self.device_id.as_str() != device_id {
            return Err(ClaimError::OtherDevice);
        }
        let signature =
            Ed25519Signature::from_base64(&self.signature).map_err(|_| ClaimError::BadSignature)?;
        let text = Self::signed_text(room_id, session_id, user_id, device_id, sender_key);
        ed25519.verify(text.as_bytes(), &signature).map_err(|_| ClaimError::BadSignature)
    }

    /// The claim an `m.room.encrypted` content carries, if any (a malformed one counts as none:
    /// it proves nothing, and the event is judged without it).
    pub fn from_content(content: &Value) -> Option<Self> {
        serde_json::from_value(content.get(identifiers::CREATOR_CLAIM)?.clone()).ok()
    }
}

#[cfg(test)]
mod tests {
    use ruma::{device_id, room_id, user_id};
    use vodozemac::{Curve25519SecretKey, Ed25519Keypair};

    use super::*;

    #[test]
    fn a_claim_verifies_only_for_its_room_session_user_device_and_keys() {
        let keypair = Ed25519Keypair::new();
        let curve = Curve25519PublicKey::from(&Curve25519SecretKey::new());
        let other_curve = Curve25519PublicKey::from(&Curve25519SecretKey::new());
        let room = room_id!("!room:example.org");
        let alice = user_id!("@alice:example.org");
        let device = device_id!("ALICEDEVICE").to_owned();
        let claim = CreatorClaim::sign(room, "session", alice, &device, curve, |t| {
            keypair.sign(t.as_bytes())
        });
        let good = claim.verify(room, "session", alice, "ALICEDEVICE", curve, keypair.public_key());
        assert_eq!(good, Ok(()));

        let other_key = Ed25519Keypair::new().public_key();
        let cases = [
            (
                room_id!("!other:example.org"),
                "session",
                alice,
                "ALICEDEVICE",
                curve,
                keypair.public_key(),
            ),
            (room, "other-session", alice, "ALICEDEVICE", curve, keypair.public_key()),
            (
                room,
                "session",
                user_id!("@mallory:example.org"),
                "ALICEDEVICE",
                curve,
                keypair.public_key(),
            ),
            (room, "session", alice, "ALICEDEVICE", other_curve, keypair.public_key()),
            (room, "session", alice, "ALICEDEVICE", curve, other_key),
        ];
        for (room, session, user, device, curve, ed) in cases {
            assert_eq!(
                claim.verify(room, session, user, device, curve, ed),
                Err(ClaimError::BadSignature),
                "{room} {session} {user}"
            );
        }
        assert_eq!(
            claim.verify(room, "session", alice, "OTHER", curve, keypair.public_key()),
            Err(ClaimError::OtherDevice)
        );
    }

    #[test]
    fn a_malformed_claim_in_a_content_counts_as_none() {
        let keypair = Ed25519Keypair::new();
        let curve = Curve25519PublicKey::from(&Curve25519SecretKey::new());
        let claim = CreatorClaim::sign(
            room_id!("!room:example.org"),
            "session",
            user_id!("@alice:example.org"),
            &device_id!("D").to_owned(),
            curve,
            |t| keypair.sign(t.as_bytes()),
        );
        let content = json!({ "ciphertext": "x", identifiers::CREATOR_CLAIM: claim });
        assert_eq!(CreatorClaim::from_content(&content), Some(claim));
        for junk in [json!(5), json!({"device_id": 1}), json!({"signature": "x"})] {
            let content = json!({ "ciphertext": "x", identifiers::CREATOR_CLAIM: junk });
            assert_eq!(CreatorClaim::from_content(&content), None);
        }
        let signature_not_base64 = CreatorClaim { device_id: "D".into(), signature: "!".into() };
        assert_eq!(
            signature_not_base64.verify(
                room_id!("!room:example.org"),
                "session",
                user_id!("@alice:example.org"),
                "D",
                curve,
                keypair.public_key()
            ),
            Err(ClaimError::BadSignature)
        );
    }
}
