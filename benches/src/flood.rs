//! A flood: one member posts junk encrypted state events (undecryptable, malformed, forged),
//! then the room's admin renames the room. Ours = a client with the extension; stock = the same
//! client without it, syncing the same batches from the same in-process homeserver. Measured:
//! CPU per junk event, the heap the flood leaves behind and its peak, and (ours) the time from
//! the sync that brings the genuine rename until our API shows it.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use crypto_ext::{
    InboundStateSession, KeyOrigin, OutboundStateSession, OwnDevice, StateSlot, testing::Crafter,
};
use matrix_sdk::{
    config::SyncSettings,
    ruma::{OwnedRoomId, OwnedUserId, owned_room_id},
};
use matrix_sdk_crypto::{OlmMachine, types::requests::AnyOutgoingRequest};
use ruma::serde::Raw;
use sdk_ext::{RoomStateExt, StateExtConfig, StateExtension};
use serde_json::{Value, json};
use state_store_ext::{SqliteStateStore, StateChanges, StateStore};
use wiremock::{
    Mock, MockServer, Request, Respond, ResponseTemplate,
    matchers::{method, path},
};

use crate::{
    Plan,
    memory::HeapMark,
    report::{Measurement, MemoryRow, median},
    sync::{cpu_time, logged_in_client},
};

/// Junk events per sync.
const PER_SYNC: usize = 1_000;
/// The genuine name, sent after the flood.
const GENUINE: &str = "Genuine after the flood";

/// The flood's figures, ours and stock.
#[derive(Debug)]
pub(crate) struct FloodRow {
    pub(crate) events: usize,
    /// CPU time per junk event (process, both cores), ours and stock.
    pub(crate) ours_cpu_per_event: Measurement,
    pub(crate) stock_cpu_per_event: Measurement,
    /// Heap still held after the flood (what it made us keep), ours and stock.
    pub(crate) ours_kept: usize,
    pub(crate) stock_kept: usize,
    /// From the sync that brings the genuine rename until our API shows it.
    pub(crate) time_to_genuine: Measurement,
}

/// Everything the homeserver serves: the room, the flood batches, the genuine rename.
struct Scenario {
    room_id: OwnedRoomId,
    bench: OwnedUserId,
    alice: OwnDevice,
    /// Alice's device keys, as `/keys/query` serves them.
    alice_keys: Value,
    /// Alice's name session's key, from the index of the genuine rename.
    genuine_key: matrix_sdk_crypto::olm::ExportedRoomKey,
    /// The sync responses: the room, then the flood, then the rename.
    syncs: Vec<Value>,
}

fn state_event(
    sender: &OwnedUserId,
    id: String,
    kind: &str,
    state_key: &str,
    content: Value,
) -> Value {
    json!({
        "type": kind,
        "state_key": state_key,
        "event_id": id,
        "sender": sender,
        "origin_server_ts": 1_700_000_000_000u64,
        "content": content,
    })
}

fn sync_response(
    room_id: &OwnedRoomId,
    batch: usize,
    state: Vec<Value>,
    timeline: Vec<Value>,
) -> Value {
    json!({
        "next_batch": format!("s{}", batch + 1),
        "rooms": { "join": { room_id.as_str(): {
            "state": { "events": state },
            "timeline": { "events": timeline, "limited": false, "prev_batch": format!("p{batch}") },
        } } },
    })
}

async fn scenario(events: usize) -> Result<Scenario> {
    let room_id = owned_room_id!("!flood:bench.example");
    let bench: OwnedUserId = "@bench:bench.example".try_into()?;
    let alice_id: OwnedUserId = "@alice:bench.example".try_into()?;
    let mallory: OwnedUserId = "@mallory:bench.example".try_into()?;

    // Alice's device, with keys a client can check (self-signed by a real account).
    let machine = OlmMachine::new(&alice_id, "ALICEDEVICE".into()).await;
    let identity = machine.identity_keys();
    let alice = OwnDevice {
        user_id: alice_id.clone(),
        device_id: "ALICEDEVICE".into(),
        curve25519: identity.curve25519,
        ed25519: identity.ed25519,
    };
    let mut alice_keys = None;
    for request in machine.outgoing_requests().await? {
        if let AnyOutgoingRequest::KeysUpload(upload) = request.request()
            && let Some(keys) = &upload.device_keys
        {
            alice_keys = Some(serde_json::from_str::<Value>(keys.json().get())?);
        }
    }
    let alice_keys = alice_keys.context("Alice's machine has no device keys to upload")?;

    let slot = StateSlot::new("m.room.name", "");
    let mut session = OutboundStateSession::new(&room_id, slot.clone())?;
    let name =
        |name: &str| -> Result<_> { Ok(Raw::new(&json!({ "name": name }))?.cast_unchecked()) };
    let older = session.encrypt(&alice, &room_id, &slot, name("Before the flood")?)?;
    let genuine = session.encrypt(&alice, &room_id, &slot, name(GENUINE)?)?;
    let genuine_key = session.export_current(&alice).context("the session's key")?;

    let setup = vec![
        state_event(
            &alice_id,
            "$c".into(),
            "m.room.create",
            "",
            json!({ "creator": alice_id, "room_version": "11" }),
        ),
        state_event(
            &alice_id,
            "$ma".into(),
            "m.room.member",
            alice_id.as_str(),
            json!({ "membership": "join" }),
        ),
        state_event(
            &bench,
            "$mb".into(),
            "m.room.member",
            bench.as_str(),
            json!({ "membership": "join" }),
        ),
        state_event(
            &mallory,
            "$mm".into(),
            "m.room.member",
            mallory.as_str(),
            json!({ "membership": "join" }),
        ),
        state_event(
            &alice_id,
            "$pl".into(),
            "m.room.power_levels",
            "",
            json!({ "users": { alice_id.as_str(): 100 } }),
        ),
        state_event(
            &alice_id,
            "$enc".into(),
            "m.room.encryption",
            "",
            json!({
                "algorithm": "m.megolm.v1.aes-sha2",
                crypto_ext::identifiers::ENCRYPT_STATE_EVENTS_UNSTABLE: true,
            }),
        ),
    ];
    let mut syncs = vec![sync_response(&room_id, 0, setup, Vec::new())];

    // Mallory's junk, in three kinds: undecryptable (sessions nobody has), malformed (not a
    // Megolm ciphertext), forged (Alice's older ciphertext posted as Mallory's).
    let mut unknown = Crafter::new();
    let mut junk = Vec::with_capacity(events);
    for i in 0..events {
        let id = format!("$junk{i}:bench.example");
        let content = match i % 3 {
            0 => {
                let mut content: Value = serde_json::from_str(
                    unknown.encrypt(&alice, &json!({ "junk": i })).json().get(),
                )?;
                content["session_id"] = json!(format!("made-up-session-{i}"));
                content
            }
            1 => json!({
                "algorithm": "m.megolm.v1.aes-sha2",
                "ciphertext": format!("not a ciphertext {i}"),
                "sender_key": alice.curve25519.to_base64(),
                "device_id": alice.device_id,
                "session_id": genuine.session_id,
            }),
            _ => serde_json::from_str(older.content.json().get())?,
        };
        junk.push(state_event(
            &mallory,
            id,
            "m.room.encrypted",
            older.packed_state_key.as_str(),
            content,
        ));
    }
    for chunk in junk.chunks(PER_SYNC) {
        syncs.push(sync_response(&room_id, syncs.len(), Vec::new(), chunk.to_vec()));
    }
    let rename = state_event(
        &alice_id,
        "$genuine:bench.example".into(),
        "m.room.encrypted",
        genuine.packed_state_key.as_str(),
        serde_json::from_str(genuine.content.json().get())?,
    );
    syncs.push(sync_response(&room_id, syncs.len(), Vec::new(), vec![rename]));
    Ok(Scenario { room_id, bench, alice, alice_keys, genuine_key, syncs })
}

/// Serves the scenario's sync responses in turn, then empty ones.
struct Syncs {
    responses: Vec<Value>,
    next: AtomicUsize,
}

impl Respond for Syncs {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let body = self
            .responses
            .get(n)
            .cloned()
            .unwrap_or_else(|| json!({ "next_batch": format!("s{}", n + 1) }));
        ResponseTemplate::new(200).set_body_json(body)
    }
}

/// What one run measured.
struct Run {
    cpu_per_event: Duration,
    kept: usize,
    peak: usize,
    time_to_genuine: Option<Duration>,
}

async fn run(scenario: &Scenario, with_extension: bool) -> Result<Run> {
    let dir = tempfile::tempdir()?;
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/_matrix/client/v3/sync"))
        .respond_with(Syncs { responses: scenario.syncs.clone(), next: AtomicUsize::new(0) })
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/_matrix/client/v3/keys/query"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "device_keys": { scenario.alice.user_id.as_str(): { "ALICEDEVICE": scenario.alice_keys } },
            "failures": {},
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/_matrix/client/v3/keys/claim"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "one_time_keys": {}, "failures": {} })),
        )
        .mount(&server)
        .await;
    let state_path = format!("/_matrix/client/v3/rooms/{}/state", scenario.room_id);
    Mock::given(method("GET"))
        .and(path(state_path))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    let members_path = format!("/_matrix/client/v3/rooms/{}/members", scenario.room_id);
    Mock::given(method("GET"))
        .and(path(members_path))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "chunk": [] })))
        .mount(&server)
        .await;

    let extension = if with_extension {
        // Alice sent us her name session herself (as `m.room_key` over Olm would): in our
        // store before the client starts.
        let state_dir = dir.path().join("state");
        let store = SqliteStateStore::open(&state_dir, Some("bench")).await?;
        let session = InboundStateSession::import(
            &scenario.room_id,
            &scenario.genuine_key,
            KeyOrigin::Direct,
        )?
        .shared_by_device(Some(scenario.alice.curve25519));
        store
            .save_changes(StateChanges {
                inbound_sessions: vec![session.pickle()],
                ..Default::default()
            })
            .await?;
        drop(store);
        Some(state_dir)
    } else {
        None
    };
    let client = logged_in_client(&server, &scenario.bench, dir.path()).await?;
    let extension = match extension {
        Some(state_dir) => Some(
            StateExtension::install(&client, StateExtConfig::sqlite(state_dir, "bench")).await?,
        ),
        None => None,
    };
    let settings = SyncSettings::default().timeout(Duration::ZERO);
    let flood_syncs = scenario.syncs.len() - 2;
    let heap = HeapMark::start();
    let cpu = cpu_time();
    for _ in 0..flood_syncs {
        client.sync_once(settings.clone()).await?;
    }
    if let Some(extension) = &extension {
        extension.refresh().await?;
    }
    let events = scenario.syncs[1..=flood_syncs]
        .iter()
        .map(|sync| {
            sync["rooms"]["join"][scenario.room_id.as_str()]["timeline"]["events"]
                .as_array()
                .map_or(0, Vec::len)
        })
        .sum::<usize>();
    let cpu_per_event = cpu_time().saturating_sub(cpu) / u32::try_from(events.max(1))?;
    let (kept, peak) = (usize::try_from(heap.growth().max(0))?, heap.peak());

    let time_to_genuine = match &extension {
        Some(_) => {
            let room = client.get_room(&scenario.room_id).context("the room")?;
            let start = Instant::now();
            client.sync_once(settings.clone()).await?;
            let deadline = start + Duration::from_secs(120);
            loop {
                if room.encrypted_name().await?.as_deref() == Some(GENUINE) {
                    break Some(start.elapsed());
                }
                anyhow::ensure!(Instant::now() < deadline, "the genuine rename never showed");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        None => None,
    };
    Ok(Run { cpu_per_event, kept, peak, time_to_genuine })
}

/// The flood of `events` junk events, ours and stock alternating, as [`crate::alternate`] does.
pub(crate) async fn flood(events: usize, plan: Plan) -> Result<(FloodRow, MemoryRow)> {
    let scenario = scenario(events).await?;
    for _ in 0..plan.warmup {
        run(&scenario, true).await?;
        run(&scenario, false).await?;
    }
    let (mut ours, mut stock) = (Vec::new(), Vec::new());
    for _ in 0..plan.repetitions {
        ours.push(run(&scenario, true).await?);
        stock.push(run(&scenario, false).await?);
    }
    let row = FloodRow {
        events,
        ours_cpu_per_event: Measurement::new(ours.iter().map(|r| r.cpu_per_event).collect()),
        stock_cpu_per_event: Measurement::new(stock.iter().map(|r| r.cpu_per_event).collect()),
        ours_kept: median(ours.iter().map(|r| r.kept).collect()),
        stock_kept: median(stock.iter().map(|r| r.kept).collect()),
        time_to_genuine: Measurement::new(ours.iter().filter_map(|r| r.time_to_genuine).collect()),
    };
    let memory = MemoryRow {
        workload: format!("flood of {events} junk events: peak heap"),
        ours: median(ours.iter().map(|r| r.peak).collect()),
        stock: median(stock.iter().map(|r| r.peak).collect()),
        input: scenario.syncs.iter().map(|s| s.to_string().len()).sum(),
    };
    Ok((row, memory))
}
