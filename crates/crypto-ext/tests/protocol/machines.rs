//! A mesh of in-memory `OlmMachine`s with Olm sessions between them, built through the machines'
//! public request/response API, the way a client drives them against a server.

use std::collections::BTreeMap;

use crypto_ext::{EncryptedStateEvent, OwnDevice, StateSlot};
use matrix_sdk_crypto::{
    CollectStrategy, DecryptionSettings, EncryptionSyncChanges, OlmMachine, TrustRequirement,
    types::requests::{AnyOutgoingRequest, ToDeviceRequest},
};
use ruma::{
    DeviceId, OwnedDeviceId, OwnedEventId, OwnedOneTimeKeyId, OwnedUserId, RoomId, UInt, UserId,
    api::client::{
        keys::{claim_keys, get_keys, upload_keys},
        sync::sync_events::DeviceLists,
    },
    encryption::{DeviceKeys, OneTimeKey},
    events::{AnyToDeviceEvent, room::encrypted::RoomEncryptedEventContent},
    serde::Raw,
};
use serde_json::{Value, json};

/// One user's device.
pub struct Peer {
    pub machine: OlmMachine,
    device_keys: Raw<DeviceKeys>,
    one_time_keys: Vec<(OwnedOneTimeKeyId, Raw<OneTimeKey>)>,
}

impl Peer {
    pub fn user_id(&self) -> &UserId {
        self.machine.user_id()
    }

    pub fn own_device(&self) -> OwnDevice {
        let keys = self.machine.identity_keys();
        OwnDevice {
            user_id: self.machine.user_id().to_owned(),
            device_id: self.machine.device_id().to_owned(),
            curve25519: keys.curve25519,
            ed25519: keys.ed25519,
        }
    }
}

/// Creates a machine and "uploads" its keys, keeping them for the other peers' queries/claims.
pub async fn peer(user: &str, device: &str) -> Peer {
    let user_id = UserId::parse(user).unwrap();
    let device_id: OwnedDeviceId = device.into();
    let machine = OlmMachine::new(&user_id, &device_id).await;
    let mut device_keys = None;
    let mut one_time_keys = Vec::new();
    for request in machine.outgoing_requests().await.unwrap() {
        if let AnyOutgoingRequest::KeysUpload(upload) = request.request() {
            device_keys = upload.device_keys.clone();
            one_time_keys.extend(upload.one_time_keys.clone());
            let counts = BTreeMap::from([(
                ruma::OneTimeKeyAlgorithm::SignedCurve25519,
                UInt::try_from(upload.one_time_keys.len()).unwrap(),
            )]);
            let response = upload_keys::v3::Response::new(counts);
            machine.mark_request_as_sent(request.request_id(), &response).await.unwrap();
        }
    }
    Peer { machine, device_keys: device_keys.expect("first upload has device keys"), one_time_keys }
}

/// Makes `from` know `to`'s device and hold an outbound Olm session with it.
pub async fn introduce(from: &mut Peer, to: &mut Peer) {
    let to_user = to.user_id().to_owned();
    let to_device = to.machine.device_id().to_owned();
    from.machine.update_tracked_users([to_user.as_ref()]).await.unwrap();
    for request in from.machine.outgoing_requests().await.unwrap() {
        if let AnyOutgoingRequest::KeysQuery(_) = request.request() {
            let mut response = get_keys::v3::Response::new();
            response.device_keys = BTreeMap::from([(
                to_user.clone(),
                BTreeMap::from([(to_device.clone(), to.device_keys.clone())]),
            )]);
            from.machine.mark_request_as_sent(request.request_id(), &response).await.unwrap();
        }
    }
    if let Some((txn_id, _claim)) =
        from.machine.get_missing_sessions([to_user.as_ref()].into_iter()).await.unwrap()
    {
        let (key_id, key) = to.one_time_keys.pop().expect("enough one-time keys");
        let mut response = claim_keys::v3::Response::new(BTreeMap::from([(
            to_user.clone(),
            BTreeMap::from([(to_device.clone(), BTreeMap::from([(key_id, key)]))]),
        )]));
        response.failures = BTreeMap::new();
        from.machine.mark_request_as_sent(&txn_id, &response).await.unwrap();
    }
}

/// Alice and Bob, introduced to each other both ways.
pub async fn alice_and_bob() -> (Peer, Peer) {
    let mut alice = peer("@alice:example.org", "ALICEDEVICE").await;
    let mut bob = peer("@bob:example.org", "BOBDEVICE").await;
    mesh(&mut [&mut alice, &mut bob]).await;
    (alice, bob)
}

/// Wires every pair of peers both ways.
pub async fn mesh(peers: &mut [&mut Peer]) {
    for i in 0..peers.len() {
        for j in 0..peers.len() {
            if i != j {
                let (a, b) = if i < j {
                    let (left, right) = peers.split_at_mut(j);
                    (&mut *left[i], &mut *right[0])
                } else {
                    let (left, right) = peers.split_at_mut(i);
                    (&mut *right[0], &mut *left[j])
                };
                introduce(a, b).await;
            }
        }
    }
}

pub fn settings() -> DecryptionSettings {
    DecryptionSettings { sender_device_trust_requirement: TrustRequirement::Untrusted }
}

/// Hands `recipient` raw to-device events as a sync would, returning how its machine processed
/// them.
pub async fn receive_to_device(
    recipient: &Peer,
    events: Vec<Raw<AnyToDeviceEvent>>,
) -> Vec<matrix_sdk_common::deserialized_responses::ProcessedToDeviceEvent> {
    let changes = EncryptionSyncChanges {
        to_device_events: events,
        changed_devices: &DeviceLists::new(),
        one_time_keys_counts: &BTreeMap::new(),
        unused_fallback_keys: None,
        next_batch_token: None,
    };
    recipient.machine.receive_sync_changes(changes, &settings()).await.unwrap().0
}

impl Peer {
    /// One of this device's uploaded one-time keys, taken (as a claim would).
    pub fn take_one_time_key(&mut self) -> vodozemac::Curve25519PublicKey {
        let (_, key) = self.one_time_keys.pop().expect("enough one-time keys");
        let key: Value = key.deserialize_as_unchecked().unwrap();
        vodozemac::Curve25519PublicKey::from_base64(key["key"].as_str().unwrap()).unwrap()
    }
}

/// Delivers to-device requests to the recipients among `peers`.
pub async fn deliver(sender: &Peer, requests: &[ToDeviceRequest], peers: &[&Peer]) {
    for request in requests {
        for recipient in peers {
            let Some(for_user) = request.messages.get(recipient.user_id()) else { continue };
            let events: Vec<Raw<AnyToDeviceEvent>> = for_user
                .values()
                .map(|content| {
                    Raw::new(&json!({
                        "sender": sender.user_id(),
                        "type": request.event_type.to_string(),
                        "content": content,
                    }))
                    .unwrap()
                    .cast_unchecked()
                })
                .collect();
            receive_to_device(recipient, events).await;
        }
    }
}

/// Sends `content` of `event_type` from `sender` to every device of `recipients` over Olm, the
/// way `Encryption::encrypt_and_send_raw_to_device` does.
pub async fn send_to_device(
    sender: &Peer,
    event_type: &str,
    content: &Value,
    recipients: &[&Peer],
) {
    let mut devices = Vec::new();
    for recipient in recipients {
        let device = sender
            .machine
            .get_device(recipient.user_id(), recipient.machine.device_id(), None)
            .await
            .unwrap()
            .expect("introduced");
        devices.push((*device).clone());
    }
    let (requests, withheld) = sender
        .machine
        .encrypt_content_for_devices(devices, event_type, content, CollectStrategy::AllDevices)
        .await
        .unwrap();
    assert!(withheld.is_empty(), "no device may be skipped");
    deliver(sender, &requests, recipients).await;
}

static EVENT_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// An encrypted state event as the server would deliver it.
pub fn state_event(
    room_id: &RoomId,
    sender: &UserId,
    packed_state_key: &str,
    content: &Raw<RoomEncryptedEventContent>,
) -> Raw<Value> {
    let n = EVENT_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Raw::new(&json!({
        "type": "m.room.encrypted",
        "event_id": format!("$state{n}:example.org"),
        "sender": sender,
        "origin_server_ts": 1_700_000_000_000u64 + n,
        "room_id": room_id,
        "state_key": packed_state_key,
        "content": content,
    }))
    .unwrap()
}

pub fn parse(raw: &Raw<Value>) -> EncryptedStateEvent {
    EncryptedStateEvent::from_raw(raw).unwrap()
}

pub fn event_id(raw: &Raw<Value>) -> OwnedEventId {
    raw.get_field("event_id").unwrap().unwrap()
}

pub fn slot(event_type: &str, state_key: &str) -> StateSlot {
    StateSlot::new(event_type, state_key)
}

pub fn content(value: Value) -> Raw<ruma::events::AnyStateEventContent> {
    Raw::new(&value).unwrap().cast_unchecked()
}

pub fn device_id(peer: &Peer) -> &DeviceId {
    peer.machine.device_id()
}

/// Room power levels with `users` at the given levels and `events` requirements.
pub fn power_levels(
    users: &[(&UserId, i64)],
    events: &[(&str, i64)],
) -> ruma::events::room::power_levels::RoomPowerLevels {
    use ruma::{
        events::room::power_levels::{
            RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource,
        },
        room_version_rules::AuthorizationRules,
    };
    let mut content = RoomPowerLevelsEventContent::new(&AuthorizationRules::V1);
    for (user, level) in users {
        content.users.insert((*user).to_owned(), ruma::Int::new(*level).unwrap());
    }
    for (event_type, level) in events {
        content.events.insert((*event_type).into(), ruma::Int::new(*level).unwrap());
    }
    RoomPowerLevels::new(
        RoomPowerLevelsSource::Original(content),
        &AuthorizationRules::V1,
        Vec::<OwnedUserId>::new(),
    )
}

/// A misbehaving member's hand-made Megolm session: it can encrypt any plaintext.
pub struct Crafter {
    pub session: vodozemac::megolm::GroupSession,
}

impl Crafter {
    pub fn new() -> Self {
        Self { session: vodozemac::megolm::GroupSession::new(Default::default()) }
    }

    /// Shares the session with `recipients` as an ordinary `m.room_key`.
    pub async fn share(&self, sender: &Peer, room_id: &RoomId, recipients: &[&Peer]) {
        let content = json!({
            "algorithm": "m.megolm.v1.aes-sha2",
            "room_id": room_id,
            "session_id": self.session.session_id(),
            "session_key": self.session.session_key().to_base64(),
        });
        send_to_device(sender, "m.room_key", &content, recipients).await;
    }

    /// Encrypts an arbitrary plaintext as `m.megolm.v1.aes-sha2` content.
    pub fn encrypt(&mut self, sender: &Peer, plaintext: &str) -> Raw<RoomEncryptedEventContent> {
        let keys = sender.machine.identity_keys();
        Raw::new(&json!({
            "algorithm": "m.megolm.v1.aes-sha2",
            "ciphertext": self.session.encrypt(plaintext).to_base64(),
            "sender_key": keys.curve25519.to_base64(),
            "device_id": sender.machine.device_id(),
            "session_id": self.session.session_id(),
        }))
        .unwrap()
        .cast_unchecked()
    }
}
