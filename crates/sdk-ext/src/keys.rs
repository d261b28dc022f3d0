//! Key distribution through matrix-sdk's public API.

use std::collections::{BTreeMap, BTreeSet};

use crypto_ext::{InboundStateSession, KeyOrigin, OutboundStateSession};
use matrix_sdk::{Client, Room, RoomMemberships, encryption::identities::Device};
use matrix_sdk_crypto::olm::ExportedRoomKey;
use ruma::{OwnedDeviceId, OwnedUserId, RoomId, events::AnyToDeviceEventContent, serde::Raw};
use state_store_ext::StateChanges;
use tracing::{debug, warn};

use crate::{Result, devices::Ask, extension::Inner};

/// The devices that should hold a room's state keys: every device of every joined or invited
/// member, except our own device (which keeps its keys in the state store) and blocked devices.
pub(crate) async fn recipient_devices(inner: &Inner, room: &Room) -> Result<Vec<Device>> {
    let members = room.members(RoomMemberships::JOIN | RoomMemberships::INVITE).await?;
    let users: Vec<OwnedUserId> = members.iter().map(|m| m.user_id().to_owned()).collect();
    user_devices(inner, &users).await
}

/// Every device of `users`, except our own device and blocked or deleted devices. Users we know
/// no device of are asked for (throttled: see [`crate::devices`]).
pub(crate) async fn user_devices(inner: &Inner, users: &[OwnedUserId]) -> Result<Vec<Device>> {
    let mut devices = Vec::new();
    for user_id in users {
        let user_devices = crate::devices::user_devices(inner, user_id, Ask::Throttled).await?;
        for device in user_devices.devices() {
            let own = *user_id == inner.own_device.user_id
                && device.device_id() == inner.own_device.device_id;
            if !own && !device.is_blacklisted() && !device.is_deleted() {
                devices.push(device);
            }
        }
    }
    Ok(devices)
}

/// The keys of a room's state sessions, each exported at the index given (the index of the
/// slot's current event, so nobody learns an earlier value). Keys sent to us by their creators
/// live in the client's key store: they are copied into ours first (one key export), so later
/// calls find them there. Sessions we hold nowhere are left out.
pub(crate) async fn keys_at_index(
    inner: &Inner,
    room_id: &RoomId,
    indices: &BTreeMap<String, u32>,
) -> Result<Vec<ExportedRoomKey>> {
    let wanted: Vec<String> = indices.keys().cloned().collect();
    let mut sessions: Vec<InboundStateSession> = inner
        .store
        .inbound_sessions(&wanted)
        .await?
        .into_iter()
        .filter(|pickle| pickle.room_id() == room_id)
        .map(InboundStateSession::from_pickle)
        .collect();
    let held: BTreeSet<String> = sessions.iter().map(InboundStateSession::session_id).collect();
    let missing: BTreeSet<String> = wanted.into_iter().filter(|s| !held.contains(s)).collect();
    if !missing.is_empty() {
        let copies =
            export_sessions(&inner.client, move |s| missing.contains(s.session_id())).await?;
        let mut copied = Vec::new();
        for key in &copies {
            if let Ok(session) = InboundStateSession::import(room_id, key, KeyOrigin::Direct) {
                copied.push(session);
            }
        }
        let copied = crate::receive::keep_further_reaching(inner, copied).await?;
        inner
            .store
            .save_changes(StateChanges {
                inbound_sessions: copied.iter().map(InboundStateSession::pickle).collect(),
                ..Default::default()
            })
            .await?;
        sessions.extend(copied);
    }
    Ok(sessions
        .iter_mut()
        .filter_map(|session| {
            let index = indices.get(&session.session_id())?;
            session.export_at(*index)
        })
        .collect())
}

/// Brings `session` up to date with the room's membership: rotates it when a device that holds
/// its key is no longer a recipient (a member left, was kicked or banned, or removed a device),
/// then sends the key to every recipient that lacks it. Returns whether anything changed.
pub(crate) async fn share(
    inner: &Inner,
    session: &mut OutboundStateSession,
    recipients: &[Device],
) -> Result<bool> {
    let current: BTreeSet<(OwnedUserId, OwnedDeviceId)> =
        recipients.iter().map(|d| (d.user_id().to_owned(), d.device_id().to_owned())).collect();
    let departed =
        session.shared_with().any(|(u, d)| !current.contains(&(u.to_owned(), d.to_owned())));
    let mut changed = false;
    if departed {
        debug!(slot = %session.slot(), "a recipient left: rotating the state session");
        session.rotate();
        changed = true;
    }
    let missing: Vec<&Device> =
        recipients.iter().filter(|d| !session.is_shared_with(d.user_id(), d.device_id())).collect();
    if missing.is_empty() {
        return Ok(changed);
    }
    let content: Raw<AnyToDeviceEventContent> = session.room_key_content();
    let failures = inner
        .client
        .encryption()
        .encrypt_and_send_raw_to_device(
            missing.clone(),
            crypto_ext::identifiers::ROOM_KEY,
            content,
            inner.config.sharing_strategy.clone(),
        )
        .await?;
    for device in missing {
        let failed = failures.iter().any(|(u, d)| u == device.user_id() && d == device.device_id());
        if failed {
            warn!(user_id = %device.user_id(), device_id = %device.device_id(), "state key not delivered");
        } else {
            session.mark_shared_with(device.user_id(), device.device_id());
        }
    }
    Ok(true)
}

/// A copy of one Megolm session the client's `OlmMachine` holds.
pub(crate) async fn export_session(
    client: &Client,
    session_id: &str,
) -> Result<Option<ExportedRoomKey>> {
    let wanted = session_id.to_owned();
    let keys = export_sessions(client, move |session| session.session_id() == wanted).await?;
    Ok(keys.into_iter().find(|key| key.session_id == session_id))
}

/// Copies of the Megolm sessions the client's `OlmMachine` holds that match `predicate`,
/// through matrix-sdk's key export (the only public way to read them): an encrypted file with a
/// random passphrase in a private temporary directory, deleted right after.
pub(crate) async fn export_sessions(
    client: &Client,
    predicate: impl FnMut(&matrix_sdk_crypto::olm::InboundGroupSession) -> bool,
) -> Result<Vec<ExportedRoomKey>> {
    let dir = tempfile::tempdir().map_err(state_store_ext::StoreError::from)?;
    let path = dir.path().join("key-export.txt");
    let passphrase = random_passphrase();
    client.encryption().export_room_keys(path.clone(), &passphrase, predicate).await?;
    let file = std::fs::File::open(&path).map_err(state_store_ext::StoreError::from)?;
    Ok(matrix_sdk_crypto::decrypt_room_key_export(file, &passphrase).unwrap_or_default())
}

/// A random passphrase for a key file that lives only for one call.
pub(crate) fn random_passphrase() -> String {
    // Transaction ids are random alphanumeric strings from the OS generator.
    format!("{}{}", ruma::TransactionId::new(), ruma::TransactionId::new())
}
