//! Device lookups, with the homeserver asked (throttled) when our crypto store knows too little.
//!
//! matrix-sdk keeps the device lists of users we share an encrypted room with up to date. The
//! extension also meets users it does not track (members of a plain space, the sender of a
//! to-device message, a user who joined a moment ago): for those it asks the homeserver
//! (`/keys/query`) itself. The same unanswered lookup (a bridged user without devices, a device
//! ID nobody uploaded) would ask again each time it is made, so background lookups remember
//! what they asked and ask the same again only after `ASK_AGAIN_AFTER` (five minutes).

use std::time::Instant;

use crypto_ext::vodozemac::Curve25519PublicKey;
use matrix_sdk::{
    Room, RoomMemberships,
    encryption::identities::{Device, UserDevices},
};
use ruma::{DeviceId, OwnedUserId, UserId};

use super::{
    handle::Context,
    throttle::{Ask, Lookup},
};
use crate::Result;

impl Context {
    /// Fails with [`Error::NoCrossSigning`](crate::Error::NoCrossSigning) when our user has no
    /// cross-signing identity: keys we share would give their recipients no way to tell our
    /// keys from a forger's.
    pub(crate) async fn require_cross_signing(&self) -> Result<()> {
        let identity = self
            .client
            .encryption()
            .get_user_identity(&self.own_device.user_id)
            .await
            .map_err(matrix_sdk::Error::from)?;
        if identity.is_none() {
            return Err(crate::Error::NoCrossSigning);
        }
        Ok(())
    }

    /// Looks with `look`; when what it returns is not `found`, asks the homeserver for the
    /// user's devices (as `ask` allows for `lookup`) and looks again.
    async fn look_up<T, F: Future<Output = Result<T>>>(
        &self,
        lookup: Lookup,
        ask: Ask,
        look: impl Fn() -> F,
        found: impl Fn(&T) -> bool,
    ) -> Result<T> {
        let first = look().await?;
        if found(&first) || !self.asked_lookups.may_ask(ask, lookup.clone(), Instant::now()) {
            return Ok(first);
        }
        self.client.encryption().request_user_identity(&lookup.user_id).await?;
        look().await
    }

    /// The devices of `user_id` we know; when we know none, the homeserver is asked (as `ask`
    /// allows) and its answer returned.
    pub(crate) async fn user_devices(&self, user_id: &UserId, ask: Ask) -> Result<UserDevices> {
        let encryption = self.client.encryption();
        let lookup = Lookup { user_id: user_id.to_owned(), device: None };
        self.look_up(
            lookup,
            ask,
            || async { Ok(encryption.get_user_devices(user_id).await?) },
            |devices| devices.devices().next().is_some(),
        )
        .await
    }

    /// The device of `user_id` whose Curve25519 key is `sender_key` (the creator of a Megolm
    /// session); when we know none, the homeserver is asked (at most once per
    /// `ASK_AGAIN_AFTER` (five minutes) for this key) and the devices looked through again.
    pub(crate) async fn device_with_key(
        &self,
        user_id: &UserId,
        sender_key: Curve25519PublicKey,
    ) -> Result<Option<Device>> {
        let encryption = self.client.encryption();
        let lookup = Lookup { user_id: user_id.to_owned(), device: Some(sender_key.to_base64()) };
        let with_key = |devices: UserDevices| {
            devices.devices().find(|device| device.curve25519_key() == Some(sender_key))
        };
        self.look_up(
            lookup,
            Ask::Throttled,
            || async { Ok(with_key(encryption.get_user_devices(user_id).await?)) },
            Option::is_some,
        )
        .await
    }

    /// The device `device_id` of `user_id`, if it is `good_enough`; otherwise the homeserver is
    /// asked (at most once per `ASK_AGAIN_AFTER` (five minutes) for this device) and the device looked up
    /// again. The device is returned whether it is good enough or not.
    pub(crate) async fn device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        good_enough: impl Fn(&Device) -> bool,
    ) -> Result<Option<Device>> {
        let encryption = self.client.encryption();
        let lookup = Lookup { user_id: user_id.to_owned(), device: Some(device_id.to_string()) };
        self.look_up(
            lookup,
            Ask::Throttled,
            || async {
                Ok(encryption
                    .get_device(user_id, device_id)
                    .await
                    .map_err(matrix_sdk::Error::from)?)
            },
            |device| device.as_ref().is_some_and(&good_enough),
        )
        .await
    }

    /// The device that sent a to-device message, if it is known (its owner's devices are
    /// queried once if it is not: a message can arrive before the keys query of a user we just
    /// met) and neither blocked nor deleted.
    pub(crate) async fn sender_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<Option<Device>> {
        let device = self.device(user_id, device_id, |_| true).await?;
        Ok(device.filter(|d| !d.is_blacklisted() && !d.is_deleted()))
    }

    /// Every device of `users`, except our own device and blocked or deleted devices. Users we
    /// know no device of are asked for (throttled).
    pub(crate) async fn member_devices(&self, users: &[OwnedUserId]) -> Result<Vec<Device>> {
        let own = &self.own_device;
        let mut devices = Vec::new();
        for user_id in users {
            let user_devices = self.user_devices(user_id, Ask::Throttled).await?;
            for device in user_devices.devices() {
                let is_own = *user_id == own.user_id && device.device_id() == own.device_id;
                if !is_own && !device.is_blacklisted() && !device.is_deleted() {
                    devices.push(device);
                }
            }
        }
        Ok(devices)
    }

    /// The devices that should hold a room's state keys: every device of every joined or
    /// invited member, except our own device (which keeps its keys in the state store) and
    /// blocked devices.
    pub(crate) async fn recipient_devices(&self, room: &Room) -> Result<Vec<Device>> {
        let members = room.members(RoomMemberships::JOIN | RoomMemberships::INVITE).await?;
        let users: Vec<OwnedUserId> = members.iter().map(|m| m.user_id().to_owned()).collect();
        self.member_devices(&users).await
    }
}
