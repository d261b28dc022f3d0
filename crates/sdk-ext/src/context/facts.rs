//! Facts about a session's sender: which of its devices created the session, how verified (when
//! the event is validated, and again when its value is read).

use crypto_ext::{
    CreatorClaim, DecryptionFacts, KeyOrigin, SessionOwner, StateSenderTrust,
    vodozemac::Curve25519PublicKey,
};
use matrix_sdk::{
    deserialized_responses::{VerificationLevel, VerificationState},
    encryption::identities::Device,
};
use std::collections::BTreeMap;

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, RoomId, UserId};
use state_store_ext::{StateOrigin, StateRecord};
use tracing::debug;

use super::handle::Context;
use crate::Result;

/// The creator claim an event carries, with the room and session it must be about.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionClaim<'a> {
    /// The event's room.
    pub(crate) room_id: &'a RoomId,
    /// The event's session.
    pub(crate) session_id: &'a str,
    /// The claim.
    pub(crate) claim: &'a CreatorClaim,
}

impl Context {
    /// Which device of `sender` owns `sender_key`, and how verified it is; `creator_proven`:
    /// whether that key is the creator's as proven, or only as a sharer claims. A `claim` the
    /// event carries proves it when it is that device's signature (see [`CreatorClaim`]).
    pub(crate) async fn facts_for_sender_key(
        &self,
        sender: &UserId,
        sender_key: Curve25519PublicKey,
        key_origin: KeyOrigin,
        creator_proven: bool,
        claim: Option<SessionClaim<'_>>,
    ) -> Result<DecryptionFacts> {
        if let Some(facts) =
            DecryptionFacts::for_own_session(&self.own_device, sender, sender_key, &key_origin)
        {
            return Ok(facts);
        }
        // A device we do not know yet (a member who just joined, a device just logged in) is
        // asked for before the session is called unknown.
        let device = self.device_with_key(sender, sender_key).await?;
        let creator_proven = creator_proven
            || match (&device, claim) {
                (Some(device), Some(claim)) => claim_holds(claim, sender, sender_key, device),
                _ => false,
            };
        let session_owner = match device {
            Some(device) => SessionOwner::Device {
                user_id: sender.to_owned(),
                device_id: Some(device.device_id().to_owned()),
                verification: self.verification_of(&device).await,
            },
            None => SessionOwner::Unknown,
        };
        let owner_has_identity = self.owner_has_identity(sender).await;
        Ok(DecryptionFacts { session_owner, key_origin, creator_proven, owner_has_identity })
    }

    /// Brings the verification state of each record's creating device up to date, from what our
    /// crypto store knows now (no request): a device cross-signed or verified since the event
    /// arrived reads as such. Only proven creators are looked up: a creator a sharer merely
    /// claims keeps its `Unverified(None(InsecureSource))`, and our own device its stored state.
    /// A device the store no longer knows keeps the state last seen.
    pub(crate) async fn refresh_verification(&self, records: &mut [StateRecord]) {
        // Many slots share a few devices: each device is looked up once.
        let mut looked_up: BTreeMap<(OwnedUserId, OwnedDeviceId), Option<VerificationState>> =
            BTreeMap::new();
        for record in records {
            let StateOrigin::Encrypted(provenance) = &mut record.origin else { continue };
            let Some(device_id) = &provenance.sender_device else { continue };
            let own = provenance.sender == self.own_device.user_id
                && *device_id == self.own_device.device_id;
            if !provenance.creator_proven || own {
                continue;
            }
            let key = (provenance.sender.clone(), device_id.clone());
            let now = match looked_up.get(&key) {
                Some(now) => now.clone(),
                None => {
                    let now = self.current_verification(&key.0, &key.1).await;
                    looked_up.insert(key, now.clone());
                    now
                }
            };
            if let Some(now) = now {
                provenance.verification = Some(now);
            }
        }
    }

    /// How verified the device `device_id` of `user_id` is now, as our crypto store knows (no
    /// request); `None` when the store does not know the device.
    pub(crate) async fn current_verification(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Option<VerificationState> {
        let device = self.client.encryption().get_device(user_id, device_id).await.ok()??;
        Some(self.verification_of(&device).await)
    }

    /// How verified `device` is, in matrix-sdk's terms: verified (by us, or through its owner's
    /// identity we verified), cross-signed by an owner whose identity we have not verified (or
    /// whose verified identity changed), or never signed by its owner.
    async fn verification_of(&self, device: &Device) -> VerificationState {
        if device.is_verified() {
            return VerificationState::Verified;
        }
        if !device.is_cross_signed_by_owner() {
            return VerificationState::Unverified(VerificationLevel::UnsignedDevice);
        }
        let identity = self.client.encryption().get_user_identity(device.user_id()).await;
        if identity.ok().flatten().is_some_and(|identity| identity.has_verification_violation()) {
            VerificationState::Unverified(VerificationLevel::VerificationViolation)
        } else {
            VerificationState::Unverified(VerificationLevel::UnverifiedIdentity)
        }
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

/// Whether `claim` is `device`'s signature for its session, created with `sender_key` by
/// `sender`'s `device`.
fn claim_holds(
    claim: SessionClaim<'_>,
    sender: &UserId,
    sender_key: Curve25519PublicKey,
    device: &Device,
) -> bool {
    let Some(ed25519) = device.ed25519_key() else { return false };
    let checked = claim.claim.verify(
        claim.room_id,
        claim.session_id,
        sender,
        device.device_id().as_str(),
        sender_key,
        ed25519,
    );
    if let Err(error) = &checked {
        debug!(%sender, session_id = claim.session_id, %error, "creator claim refused");
    }
    checked.is_ok()
}
