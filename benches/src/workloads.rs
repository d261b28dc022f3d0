//! The workloads, each as ours against stock.

use std::{collections::BTreeMap, io::Read, time::Duration};

use anyhow::{Context, Result, ensure};
use crypto_ext::{
    DecryptionFacts, EncryptedStateEvent, InboundStateSession, KeyOrigin, SessionOwner,
    ValidationInput, Verdict,
    bundle::{self, BundleBuilder, BundleLimits},
    state_sessions::batch::decrypt_batch,
    validate,
};
use matrix_sdk_crypto::{
    AttachmentEncryptor, DecryptionSettings, MediaEncryptionInfo, TrustRequirement,
    olm::SenderData,
    store::types::StoredRoomKeyBundleData,
    types::{events::room_key_bundle::RoomKeyBundleContent, room_history::RoomKeyBundle},
};
use ruma::{events::room::encrypted::OriginalSyncRoomEncryptedEvent, serde::Raw};
use state_store_ext::{SqliteStateStore, StateChanges, StateRecord, StateStore};
use vodozemac::megolm::{InboundGroupSession, MegolmMessage, SessionConfig};

use crate::{
    Plan, alternate,
    fixtures::{self, Room},
    instructions::{self, Side},
    memory::HeapMark,
    report::{Comparison, Measurement, MemoryRow, median},
};

/// PBKDF2 rounds of the key file our receiver hands to `Encryption::import_room_keys`.
const IMPORT_ROUNDS: u32 = 1_000;

fn passphrase() -> String {
    "a random passphrase of forty characters.".to_owned()
}

/// Join-to-readable for `n` events: ours, stock, and the sum of the primitives.
pub(crate) async fn join_to_readable(n: usize, plan: Plan) -> Result<Comparison> {
    let room = fixtures::room(n)?;
    let (ours, stock) = alternate(plan, || ours_join(&room), || stock_join(&room)).await?;
    let mut primitives = Vec::new();
    if instructions::runs(Side::Primitives) {
        for _ in 0..plan.repetitions {
            primitives.push(primitives_join(&room)?);
        }
    }
    Ok(Comparison {
        workload: format!("join-to-readable, N = {n}"),
        ours,
        stock,
        primitives: Some(Measurement::new(primitives)),
        size: None,
    })
}

/// Join-to-readable for `n` events, ours only (the scaling series).
pub(crate) async fn join_to_readable_ours(n: usize, plan: Plan) -> Result<Measurement> {
    let room = fixtures::room(n)?;
    let mut times = Vec::new();
    for round in 0..plan.warmup + plan.repetitions {
        let time = ours_join(&room).await?;
        if round >= plan.warmup {
            times.push(time);
        }
    }
    Ok(Measurement::new(times))
}

/// Our path: the keys are in our encrypted SQLite store; every event is parsed, decrypted with its
/// slot session (the sessions read in one query, decrypted on every core), validated, and the
/// accepted state saved in one transaction.
async fn ours_join(room: &Room) -> Result<Duration> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStateStore::open(dir.path(), Some("bench passphrase")).await?;
    let mut changes = StateChanges::default();
    for key in &room.keys {
        let session = InboundStateSession::import(&room.room_id, key, KeyOrigin::Direct)?;
        changes.inbound_sessions.push(session.pickle());
    }
    store.save_changes(changes).await?;

    // The steps of `sdk-ext`'s scan of a room: parse, one batch lookup of the sessions,
    // `decrypt_batch` (every core), validation with the facts of the one sender key, one save.
    let Some(start) = instructions::start() else { return Ok(Duration::ZERO) };
    let mut by_session: BTreeMap<String, Vec<EncryptedStateEvent>> = BTreeMap::new();
    for raw in &room.events {
        let event = EncryptedStateEvent::from_raw(raw)?;
        by_session.entry(event.session_id.clone()).or_default().push(event);
    }
    let ids: Vec<String> = by_session.keys().cloned().collect();
    let mut groups = Vec::with_capacity(ids.len());
    for pickle in store.inbound_sessions(&ids).await? {
        let events = by_session.remove(&pickle.session_id()).unwrap_or_default();
        groups.push((InboundStateSession::from_pickle(pickle), events));
    }
    let facts = DecryptionFacts {
        session_owner: SessionOwner::Device {
            user_id: room.alice.user_id.clone(),
            device_id: Some(room.alice.device_id.clone()),
            verification: matrix_sdk_common::deserialized_responses::VerificationState::Verified,
        },
        key_origin: KeyOrigin::Direct,
        creator_proven: true,
        owner_has_identity: None,
    };
    let decrypted = tokio::task::spawn_blocking(move || decrypt_batch(groups)).await?;
    let mut records: Vec<StateRecord> = Vec::with_capacity(decrypted.len());
    for (position, (event, decrypted)) in (1..).zip(&decrypted) {
        let Ok(decrypted) = decrypted else { continue };
        let verdict = validate(ValidationInput {
            room_id: &room.room_id,
            event,
            plaintext: &decrypted.plaintext,
            facts: &facts,
            power_levels: &room.power_levels,
            unproven_creators: Default::default(),
            sender_trust: Default::default(),
        });
        if let Verdict::Accepted(accepted) = verdict {
            records.push(StateRecord::accepted(accepted, position));
        }
    }
    ensure!(
        records.len() == room.events.len(),
        "{} of {} accepted",
        records.len(),
        room.events.len()
    );
    store.save_changes(StateChanges { state: records, ..Default::default() }).await?;
    Ok(start.elapsed())
}

/// Stock: matrix-sdk-crypto's `OlmMachine` (SQLite crypto store) decrypting each event, as
/// matrix-sdk's experimental encrypted-state path does.
async fn stock_join(room: &Room) -> Result<Duration> {
    let (machine, _dir) = fixtures::stock_machine("bob", fixtures::copies(&room.keys)?).await?;
    let settings =
        DecryptionSettings { sender_device_trust_requirement: TrustRequirement::Untrusted };
    let Some(start) = instructions::start() else { return Ok(Duration::ZERO) };
    let mut decrypted = 0;
    for raw in &room.events {
        let event: &Raw<OriginalSyncRoomEncryptedEvent> = raw.cast_ref_unchecked();
        if machine
            .decrypt_room_event(event.cast_ref_unchecked(), &room.room_id, &settings)
            .await
            .is_ok()
        {
            decrypted += 1;
        }
    }
    ensure!(decrypted == room.events.len(), "stock decrypted {decrypted} of {}", room.events.len());
    Ok(start.elapsed())
}

/// The floor: vodozemac Megolm decryption of every event plus one SQLite transaction writing
/// one row per event.
fn primitives_join(room: &Room) -> Result<Duration> {
    let dir = tempfile::tempdir()?;
    let conn = rusqlite::Connection::open(dir.path().join("floor.sqlite"))?;
    conn.execute_batch("CREATE TABLE state (event TEXT PRIMARY KEY, value BLOB NOT NULL)")?;
    let mut sessions: BTreeMap<String, InboundGroupSession> = room
        .keys
        .iter()
        .map(|k| {
            (
                k.session_id.clone(),
                InboundGroupSession::import(&k.session_key, SessionConfig::version_1()),
            )
        })
        .collect();
    let messages: Vec<(String, String, MegolmMessage)> = room
        .events
        .iter()
        .map(|raw| {
            let event = EncryptedStateEvent::from_raw(raw)?;
            let content: serde_json::Value = raw.get_field("content")?.context("content")?;
            let ciphertext = content["ciphertext"].as_str().context("ciphertext")?;
            Ok((
                event.event_id.to_string(),
                event.session_id,
                MegolmMessage::from_base64(ciphertext)?,
            ))
        })
        .collect::<Result<_>>()?;

    let Some(start) = instructions::start() else { return Ok(Duration::ZERO) };
    let mut plaintexts = Vec::with_capacity(messages.len());
    for (event_id, session_id, message) in &messages {
        let session = sessions.get_mut(session_id).context("session")?;
        plaintexts.push((event_id, session.decrypt(message)?.plaintext));
    }
    let tx = conn.unchecked_transaction()?;
    {
        let mut insert = tx.prepare("INSERT INTO state (event, value) VALUES (?1, ?2)")?;
        for (event_id, plaintext) in &plaintexts {
            insert.execute(rusqlite::params![event_id, plaintext])?;
        }
    }
    tx.commit()?;
    Ok(start.elapsed())
}

/// Bundle build for `k` shareable sessions: ours (as `sdk-ext` with the client's crypto store
/// shared: the room's sessions read from the store, bundle built by `BundleBuilder` with the
/// withheld notices received earlier, sealed) against matrix-sdk-crypto's
/// `build_room_key_bundle` with the same serialisation and attachment encryption.
pub(crate) async fn bundle_build(k: usize, plan: Plan) -> Result<Comparison> {
    let room_id = fixtures::room_id();
    let alice = fixtures::alice();
    let keys = fixtures::message_sessions(k, &room_id, &alice);
    let (machine, _dir) = fixtures::stock_machine("alice", keys).await?;
    let sizes = std::cell::Cell::new((0, 0));
    let ours = || {
        let machine = machine.clone();
        let (room_id, alice) = (room_id.clone(), alice.clone());
        async move {
            let Some(start) = instructions::start() else { return Ok((Duration::ZERO, 0)) };
            let store = machine.store();
            let sessions = store.get_inbound_group_sessions_by_room_id(&room_id).await?;
            let mut builder = BundleBuilder::new(&room_id, &alice);
            for session in sessions {
                builder.add_message_session(session.export().await);
            }
            for withheld in store.get_withheld_sessions_by_room_id(&room_id).await? {
                builder.add_withheld(withheld.content);
            }
            let bundle = builder.build();
            let sealed = bundle::seal(&bundle)?;
            // Both sides drop what they built on the way to the ciphertext inside the timing.
            drop(bundle);
            Ok::<_, anyhow::Error>((start.elapsed(), sealed.ciphertext.len()))
        }
    };
    let stock = || {
        let machine = machine.clone();
        let room_id = room_id.clone();
        async move {
            let Some(start) = instructions::start() else { return Ok((Duration::ZERO, 0)) };
            let bundle = machine.store().build_room_key_bundle(&room_id).await?;
            let json = serde_json::to_vec(&bundle)?;
            let mut ciphertext = Vec::new();
            {
                let mut reader = json.as_slice();
                let mut encryptor = AttachmentEncryptor::new(&mut reader);
                encryptor.read_to_end(&mut ciphertext)?;
                let _info = encryptor.finish();
            }
            drop((bundle, json));
            Ok::<_, anyhow::Error>((start.elapsed(), ciphertext.len()))
        }
    };
    let (o, s) = alternate(
        plan,
        || async {
            let (time, size) = ours().await?;
            sizes.set((size, sizes.get().1));
            Ok(time)
        },
        || async {
            let (time, size) = stock().await?;
            sizes.set((sizes.get().0, size));
            Ok(time)
        },
    )
    .await?;
    Ok(Comparison {
        workload: format!("bundle build, K = {k}"),
        ours: o,
        stock: s,
        primitives: None,
        size: Some(sizes.get()),
    })
}

/// Bundle import of `k` sessions: ours (open under the cap, keys into our store and through a
/// key file into the client's key store) against matrix-sdk-crypto's `receive_room_key_bundle`
/// on the parsed bundle.
pub(crate) async fn bundle_import(k: usize, plan: Plan) -> Result<(Comparison, MemoryRow)> {
    let room_id = fixtures::room_id();
    let alice = fixtures::alice();
    let mut builder = BundleBuilder::new(&room_id, &alice);
    for key in fixtures::message_sessions(k, &room_id, &alice) {
        builder.add_message_session(key);
    }
    let bundle = builder.build();
    let sealed = bundle::seal(&bundle)?;
    let size = sealed.ciphertext.len();
    let info_json = serde_json::to_value(&sealed.info)?;
    let info = || -> Result<MediaEncryptionInfo> { Ok(serde_json::from_value(info_json.clone())?) };
    let mut file = info_json.clone();
    file["url"] = serde_json::json!("mxc://bench.example/bundle");
    let content: RoomKeyBundleContent =
        serde_json::from_value(serde_json::json!({ "room_id": room_id, "file": file }))?;
    // The peak heap of each timed run (ours, stock).
    let peaks = std::cell::RefCell::new((Vec::new(), Vec::new()));

    let ours = || async {
        let (machine, _dir) = fixtures::stock_machine("bob", Vec::new()).await?;
        let store_dir = tempfile::tempdir()?;
        let store = SqliteStateStore::open(store_dir.path(), Some("bench passphrase")).await?;
        let heap = HeapMark::start();
        let Some(start) = instructions::start() else { return Ok(Duration::ZERO) };
        let opened = bundle::open(&sealed.ciphertext, info()?, &room_id, BundleLimits::default())?;
        let keys: Vec<_> = opened.room_keys.into_iter().map(bundle::exported_room_key).collect();
        let origin = KeyOrigin::Bundle { shared_by: alice.user_id.clone() };
        // As `sdk-ext`'s receiver does: one batch lookup of the copies we hold (to keep whichever
        // reaches further back), then one transaction.
        let ids: Vec<String> = keys.iter().map(|k| k.session_id.clone()).collect();
        let _held = store.inbound_sessions(&ids).await?;
        let mut changes = StateChanges::default();
        for key in &keys {
            changes
                .inbound_sessions
                .push(InboundStateSession::import(&room_id, key, origin.clone())?.pickle());
        }
        // Both key stores take the keys side by side, as the receiver does.
        let ours = store.save_changes(changes);
        // As `import_into_client` does: the keys move into the key file's writer, off the async
        // workers, and are gone before matrix-sdk reads the file back (`import_room_keys`).
        let client = async {
            let file = tokio::task::spawn_blocking(move || {
                matrix_sdk_crypto::encrypt_room_key_export(&keys, &passphrase(), IMPORT_ROUNDS)
            })
            .await??;
            let read = tokio::task::spawn_blocking(move || {
                matrix_sdk_crypto::decrypt_room_key_export(file.as_bytes(), &passphrase())
            })
            .await??;
            machine.store().import_exported_room_keys(read, |_, _| {}).await?;
            Ok::<_, anyhow::Error>(())
        };
        let (stored, imported) = tokio::join!(ours, client);
        stored?;
        imported?;
        let time = start.elapsed();
        peaks.borrow_mut().0.push(heap.peak());
        Ok(time)
    };
    let stock = || async {
        let (machine, _dir) = fixtures::stock_machine("bob", Vec::new()).await?;
        let bundle_info = StoredRoomKeyBundleData {
            sender_user: alice.user_id.clone(),
            sender_key: alice.curve25519,
            sender_data: SenderData::sender_verified(
                &alice.user_id,
                &alice.device_id,
                alice.ed25519,
            ),
            bundle_data: content.clone(),
        };
        let heap = HeapMark::start();
        let Some(start) = instructions::start() else { return Ok(Duration::ZERO) };
        // Stock downloads the whole file and decrypts it, then parses and imports.
        let mut reader = sealed.ciphertext.as_slice();
        let mut decryptor = matrix_sdk_crypto::AttachmentDecryptor::new(&mut reader, info()?)?;
        let mut plaintext = Vec::new();
        decryptor.read_to_end(&mut plaintext)?;
        let parsed: RoomKeyBundle = serde_json::from_slice(&plaintext)?;
        machine.store().receive_room_key_bundle(&bundle_info, parsed, |_, _| {}).await?;
        let time = start.elapsed();
        peaks.borrow_mut().1.push(heap.peak());
        Ok(time)
    };
    let (o, s) = alternate(plan, ours, stock).await?;
    let (ours_peaks, stock_peaks) = peaks.into_inner();
    let comparison = Comparison {
        workload: format!("bundle import, K = {k}"),
        ours: o,
        stock: s,
        primitives: None,
        size: Some((size, size)),
    };
    let memory = MemoryRow {
        workload: format!("bundle import, K = {k}: peak heap"),
        ours: median(ours_peaks),
        stock: median(stock_peaks),
        input: size,
    };
    Ok((comparison, memory))
}
