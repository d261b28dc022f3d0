//! What the workloads run on: a room whose state holds encrypted events, sessions in the
//! key-export format, stores in temporary directories.

use std::sync::Arc;

use anyhow::Result;
use crypto_ext::{OutboundStateSession, OwnDevice, StateSlot, testing::Crafter};
use matrix_sdk_crypto::{OlmMachine, olm::ExportedRoomKey};
use matrix_sdk_sqlite::SqliteCryptoStore;
use ruma::{
    Int, OwnedRoomId, OwnedUserId, device_id, events::room::power_levels::RoomPowerLevels,
    owned_room_id, owned_user_id, serde::Raw,
};
use serde_json::{Value, json};
use tempfile::TempDir;

/// Updates per slot in the join-to-readable room: state spread over many slots, each updated a
/// few times.
const UPDATES_PER_SLOT: usize = 5;

/// Alice's room as a newcomer receives it.
pub(crate) struct Room {
    pub(crate) room_id: OwnedRoomId,
    pub(crate) alice: OwnDevice,
    /// The encrypted state events, oldest first.
    pub(crate) events: Vec<Raw<Value>>,
    /// One key per slot session, from its first index.
    pub(crate) keys: Vec<ExportedRoomKey>,
    /// Alice may set any state.
    pub(crate) power_levels: RoomPowerLevels,
}

pub(crate) fn alice() -> OwnDevice {
    let account = vodozemac::olm::Account::new();
    OwnDevice {
        user_id: owned_user_id!("@alice:bench.example"),
        device_id: device_id!("ALICEDEVICE").to_owned(),
        curve25519: account.curve25519_key(),
        ed25519: account.ed25519_key(),
    }
}

pub(crate) fn room_id() -> OwnedRoomId {
    owned_room_id!("!bench:bench.example")
}

/// A room with `n` encrypted state events over `n / 5` slots.
pub(crate) fn room(n: usize) -> Result<Room> {
    let room_id = room_id();
    let alice = alice();
    let slots = n.div_ceil(UPDATES_PER_SLOT);
    let mut events = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(slots);
    for s in 0..slots {
        let slot = StateSlot::new(format!("org.example.bench.{s}"), "");
        let mut session = OutboundStateSession::new(&room_id, slot.clone())?;
        for update in 0..UPDATES_PER_SLOT.min(n - s * UPDATES_PER_SLOT) {
            let content = Raw::new(&json!({ "value": update, "slot": s }))?.cast_unchecked();
            let encrypted = session.encrypt(&alice, &room_id, &slot, content)?;
            if update == 0 {
                keys.extend(session.export_current(&alice));
            }
            let i = events.len();
            events.push(Raw::new(&json!({
                "type": "m.room.encrypted",
                "event_id": format!("$state{i}:bench.example"),
                "sender": alice.user_id,
                "origin_server_ts": 1_700_000_000_000u64 + i as u64,
                "room_id": room_id,
                "state_key": encrypted.packed_state_key.as_str(),
                "content": encrypted.content,
            }))?);
        }
    }
    let mut power_levels = RoomPowerLevels::new(
        Default::default(),
        &ruma::room_version_rules::AuthorizationRules::V1,
        Vec::<OwnedUserId>::new(),
    );
    power_levels.users.insert(alice.user_id.clone(), Int::from(100));
    Ok(Room { room_id, alice, events, keys, power_levels })
}

/// `k` message sessions of `room_id` created by `sender`, in the key-export format, marked
/// shareable.
pub(crate) fn message_sessions(
    k: usize,
    room_id: &OwnedRoomId,
    sender: &OwnDevice,
) -> Vec<ExportedRoomKey> {
    (0..k).map(|_| Crafter::new().exported_key(room_id, sender)).collect()
}

/// A stock `OlmMachine` on matrix-sdk's SQLite crypto store (as a matrix-sdk app has it), with
/// `keys` imported.
pub(crate) async fn stock_machine(
    user: &str,
    keys: Vec<ExportedRoomKey>,
) -> Result<(Arc<OlmMachine>, TempDir)> {
    let dir = tempfile::tempdir()?;
    let store = SqliteCryptoStore::open(dir.path(), None).await?;
    let user_id = OwnedUserId::try_from(format!("@{user}:bench.example"))?;
    let machine = OlmMachine::with_store(&user_id, device_id!("BENCHDEVICE"), store, None).await?;
    if !keys.is_empty() {
        machine.store().import_exported_room_keys(keys, |_, _| {}).await?;
    }
    Ok((Arc::new(machine), dir))
}

/// A copy of each key (the type is not `Clone`).
pub(crate) fn copies(keys: &[ExportedRoomKey]) -> Result<Vec<ExportedRoomKey>> {
    Ok(serde_json::from_value(serde_json::to_value(keys)?)?)
}
