//! Facts about a session's sender: which of its devices created the session, how verified.

use crypto_ext::{
    DecryptionFacts, KeyOrigin, SessionOwner, StateSenderTrust, vodozemac::Curve25519PublicKey,
};
use matrix_sdk::deserialized_responses::{VerificationLevel, VerificationState};
use ruma::UserId;

use super::handle::Context;
use crate::Result;

impl Context {
    /// Which device of `sender` owns `sender_key`, and how verified it is; `creator_proven`:
    /// whether that key is the creator's as proven, or only as a sharer claims.
    pub(crate) async fn facts_for_sender_key(
        &self,
        sender: &UserId,
        sender_key: Curve25519PublicKey,
        key_origin: KeyOrigin,
        creator_proven: bool,
    ) -> Result<DecryptionFacts> {
        if let Some(facts) =
            DecryptionFacts::for_own_session(&self.own_device, sender, sender_key, &key_origin)
        {
            return Ok(facts);
        }
        // A device we do not know yet (a member who just joined, a device just logged in) is
        // asked for before the session is called unknown.
        let device = self.device_with_key(sender, sender_key).await?;
        let session_owner = match device {
            Some(device) => SessionOwner::Device {
                user_id: sender.to_owned(),
                device_id: Some(device.device_id().to_owned()),
                verification: if device.is_verified() {
                    VerificationState::Verified
                } else if device.is_cross_signed_by_owner() {
                    VerificationState::Unverified(VerificationLevel::UnverifiedIdentity)
                } else {
                    VerificationState::Unverified(VerificationLevel::UnsignedDevice)
                },
            },
            None => SessionOwner::Unknown,
        };
        let owner_has_identity = self.owner_has_identity(sender).await;
        Ok(DecryptionFacts { session_owner, key_origin, creator_proven, owner_has_identity })
    }

    /// Whether `user_id` has a cross-signing identity, as our crypto store knows (no request),
    /// when the trust setting needs to know (`CrossSignedOrLegacy`); `None` otherwise, or when
    /// the store cannot tell.
    pub(crate) async fn owner_has_identity(&self, user_id: &UserId) -> Option<bool> {
        if self.config.sender_trust != StateSenderTrust::CrossSignedOrLegacy {
            return None;
        }
        self.client.encryption().get_user_identity(user_id).await.ok().map(|i| i.is_some())
    }
}
