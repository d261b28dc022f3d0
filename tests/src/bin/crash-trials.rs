//! Crash trials (`cargo xtask crash-trials [N]`): for each scenario, N times, a child process
//! writes to a SQLite state store as the extension does and is killed with SIGKILL at a random
//! point; the parent then opens the store, checks the scenario's invariants, and resumes the
//! work without manual action. Prints the counts; exits non-zero on any violation.
//!
//! Scenarios (each child writes exactly as the extension's code path does, through the same
//! store API and transactions):
//! * `sync`: the batch a sync's encrypted state becomes (records at the room's next positions,
//!   the room's position, waiting and rejected events) in one transaction;
//! * `bundle`: importing a 10,000-session bundle (announcement kept, sessions stored in one
//!   transaction, announcement forgotten);
//! * `send`: sending encrypted state (ratchet and our own copy saved, then sent, then the
//!   event recorded);
//! * `ledgers`: the restricted-preview ledger and the key-request state.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use crypto_ext::{
    InboundStateSession, KeyOrigin, OutboundStateSession, OwnDevice, RejectedState, StateSlot,
    testing::Crafter,
    vodozemac::{Curve25519PublicKey, Curve25519SecretKey, Ed25519Keypair},
};
use matrix_sdk::ruma::{
    MilliSecondsSinceUnixEpoch, OwnedRoomId, RoomId, events::AnySyncStateEvent, serde::Raw,
};
use serde_json::json;
use state_store_ext::{
    KeyRequest, PendingBundle, PendingEvent, SentPreview, SqliteStateStore, StateChanges,
    StateRecord, StateStore,
};

const SCENARIOS: [&str; 4] = ["sync", "bundle", "send", "ledgers"];
const PASSPHRASE: &str = "crash trials";
/// Records per sync batch.
const BATCH: u64 = 50;
/// Sessions per bundle.
const BUNDLE: usize = 10_000;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [child, scenario, dir] = args.as_slice()
        && child == "child"
    {
        return run_child(scenario, Path::new(dir)).await;
    }
    let trials: usize = match args.first() {
        Some(n) => n.parse().context("usage: crash-trials [TRIALS PER SCENARIO]")?,
        None => 50,
    };
    let mut seed = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64 | 1;
    let mut failed = 0;
    for scenario in SCENARIOS {
        let mut violations = Vec::new();
        for trial in 0..trials {
            if let Err(error) = trial_once(scenario, &mut seed).await {
                violations.push(format!("trial {trial}: {error:#}"));
            }
        }
        println!("{scenario}: {trials} trials, {} invariant violations", violations.len());
        for violation in &violations {
            println!("  {violation}");
        }
        failed += violations.len();
    }
    ensure!(failed == 0, "{failed} trials broke an invariant");
    Ok(())
}

/// A random delay of up to `max` (xorshift on a time seed: no need for a crypto generator).
fn random_delay(seed: &mut u64, max: Duration) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    max.mul_f64((*seed % 10_000) as f64 / 10_000.0)
}

/// One trial: the child starts writing, is killed at a random point after its first commit,
/// and the parent checks and resumes.
async fn trial_once(scenario: &str, seed: &mut u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["child", scenario])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // The first commit, then a random point in what follows.
    let first =
        lines_rx.recv_timeout(Duration::from_secs(120)).context("the child's first commit")?;
    let mut announced = vec![first];
    let max =
        if scenario == "bundle" { Duration::from_secs(3) } else { Duration::from_millis(300) };
    tokio::time::sleep(random_delay(seed, max)).await;
    child.kill()?;
    child.wait()?;
    let _ = reader.join();
    announced.extend(lines_rx.try_iter());

    let store = SqliteStateStore::open(dir.path(), Some(PASSPHRASE)).await?;
    match scenario {
        "sync" => check_sync(&store, &announced).await,
        "bundle" => check_bundle(&store, &announced).await,
        "send" => check_send(&store, &announced).await,
        _ => check_ledgers(&store, &announced).await,
    }
}

/// The child: writes until killed, announcing each commit on stdout.
async fn run_child(scenario: &str, dir: &Path) -> Result<()> {
    let store = SqliteStateStore::open(dir, Some(PASSPHRASE)).await?;
    match scenario {
        "sync" => {
            for batch in 0.. {
                store.save_changes(sync_batch(batch)).await?;
                println!("committed {batch}");
            }
        }
        "bundle" => {
            let creator = device();
            for n in 0.. {
                import_bundle(&store, &bundle_room(n), &creator, |step| {
                    match step.split_once(' ') {
                        Some((word, rest)) => println!("{word} {n} {rest}"),
                        None => println!("{step} {n}"),
                    }
                })
                .await?;
            }
        }
        "send" => {
            for n in 0.. {
                let (session_id, index) = send_one(&store, n).await?;
                // The homeserver has the event now; our records follow.
                println!("sent {session_id} {index}");
                record_sent(&store, &session_id, index, n).await?;
            }
        }
        "ledgers" => {
            for n in 0.. {
                store.save_changes(ledger_batch(n)).await?;
                println!("committed {n}");
            }
        }
        other => bail!("unknown scenario {other}"),
    }
    Ok(())
}

fn room() -> OwnedRoomId {
    "!crash:example.org".try_into().expect("a room id")
}

fn device() -> OwnDevice {
    OwnDevice {
        user_id: "@alice:example.org".try_into().expect("a user id"),
        device_id: "ALICEDEVICE".into(),
        curve25519: Curve25519PublicKey::from(&Curve25519SecretKey::new()),
        ed25519: Ed25519Keypair::new().public_key(),
    }
}

fn raw_event(event_id: &str, event_type: &str, state_key: &str) -> Raw<AnySyncStateEvent> {
    Raw::new(&json!({
        "type": event_type, "state_key": state_key, "event_id": event_id,
        "sender": "@alice:example.org", "origin_server_ts": 1_700_000_000_000u64,
        "content": { "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x", "session_id": "s" },
    }))
    .expect("an event")
    .cast_unchecked()
}

/// What a sync's encrypted state becomes: `BATCH` records at the room's next positions, the
/// room's new position, waiting and rejected events, in one transaction.
fn sync_batch(batch: u64) -> StateChanges {
    let room_id = room();
    let mut changes = StateChanges::default();
    for i in 0..BATCH {
        let slot = StateSlot::new(format!("org.sync.{batch}"), format!("k{i}"));
        let raw = raw_event(&format!("$s{batch}-{i}"), "m.room.encrypted", &format!("k{i}"));
        let position = batch * BATCH + i + 1;
        changes.state.extend(StateRecord::plaintext(&room_id, &slot, &raw, position));
    }
    for i in 0..5 {
        let raw = raw_event(&format!("$w{batch}-{i}"), "m.room.encrypted", "org.waiting:");
        changes.pending.push(PendingEvent {
            room_id: room_id.clone(),
            event_id: format!("$w{batch}-{i}").try_into().expect("an event id"),
            session_id: format!("waiting-{batch}"),
            message_index: i as u32,
            event: raw.clone(),
            position: batch * BATCH + i + 1,
            power_levels_at: None,
        });
        let raw = raw_event(&format!("$r{batch}-{i}"), "m.room.encrypted", "org.rejected:");
        changes.rejected.extend(RejectedState::malformed(&room_id, &raw, "junk"));
    }
    changes.room_positions.push((room_id, (batch + 1) * BATCH));
    changes
}

/// Whole batches only, every announced batch present, the room's position that of the last
/// whole batch; then the next batch goes in.
async fn check_sync(store: &SqliteStateStore, announced: &[String]) -> Result<()> {
    let room_id = room();
    let last_announced = last_number(announced, "committed").context("a commit")?;
    let mut per_batch: BTreeMap<u64, usize> = BTreeMap::new();
    for record in store.room_state(&room_id).await? {
        let batch = record.slot.event_type.trim_start_matches("org.sync.").parse::<u64>()?;
        *per_batch.entry(batch).or_default() += 1;
    }
    let batches = per_batch.len() as u64;
    ensure!(batches > last_announced, "announced batch {last_announced} missing ({batches} kept)");
    ensure!(batches <= last_announced + 2, "more batches than were written");
    for (batch, count) in &per_batch {
        ensure!(*count as u64 == BATCH, "batch {batch} is partial: {count} records");
        let waiting = store.pending_for_session(&format!("waiting-{batch}")).await?.len();
        ensure!(waiting == 5, "batch {batch} kept {waiting} waiting events");
    }
    ensure!(store.rejected_events(&room_id).await?.len() as u64 == batches * 5, "rejections");
    let position = store.room_position(&room_id).await?;
    ensure!(position == batches * BATCH, "position {position} after {batches} batches");
    // Processing resumes.
    store.save_changes(sync_batch(batches)).await?;
    ensure!(store.room_position(&room_id).await? == (batches + 1) * BATCH, "resumed");
    Ok(())
}

fn bundle_room(n: u64) -> OwnedRoomId {
    format!("!bundle{n}:example.org").try_into().expect("a room id")
}

/// The import of a `BUNDLE`-session bundle into our store, as the receiver does it: the
/// announcement kept, the sessions stored in one transaction, the announcement forgotten.
async fn import_bundle(
    store: &SqliteStateStore,
    room_id: &RoomId,
    creator: &OwnDevice,
    mut step: impl FnMut(&str),
) -> Result<()> {
    let announcement = PendingBundle {
        room_id: room_id.to_owned(),
        sender: creator.user_id.clone(),
        sender_device: Some(creator.device_id.clone()),
        file: json!({}),
        received_at: MilliSecondsSinceUnixEpoch::now(),
    };
    if store.pending_bundles(room_id).await?.is_empty() {
        store
            .save_changes(StateChanges {
                pending_bundles: vec![announcement],
                ..Default::default()
            })
            .await?;
        step("announced");
    }
    let origin = KeyOrigin::Bundle { shared_by: creator.user_id.clone() };
    let mut changes = StateChanges::default();
    let mut ids = Vec::with_capacity(BUNDLE);
    for _ in 0..BUNDLE {
        let key = Crafter::new().exported_key(room_id, creator);
        ids.push(key.session_id.clone());
        changes
            .inbound_sessions
            .push(InboundStateSession::import(room_id, &key, origin.clone())?.pickle());
    }
    step(&format!("ids {}", ids.join(",")));
    store.save_changes(changes).await?;
    step("stored");
    let removed = vec![(room_id.to_owned(), creator.user_id.clone())];
    store.save_changes(StateChanges { removed_bundles: removed, ..Default::default() }).await?;
    step("forgotten");
    Ok(())
}

/// Every room's import is whole or absent, an announcement is forgotten only after its
/// sessions are stored; a cut-short import runs again at the next start.
async fn check_bundle(store: &SqliteStateStore, announced: &[String]) -> Result<()> {
    let creator = device();
    let last = last_number(announced, "announced").context("an announcement")?;
    for n in 0..=last {
        let room_id = bundle_room(n);
        let kept = store.pending_bundles(&room_id).await?.len();
        let said = |word: &str| announced.iter().any(|l| *l == format!("{word} {n}"));
        if said("forgotten") {
            ensure!(kept == 0, "room {n}: forgotten, yet its announcement is kept");
        }
        let ids: Vec<String> = announced
            .iter()
            .find_map(|l| l.strip_prefix(&format!("ids {n} ")))
            .map(|ids| ids.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        let stored = if ids.is_empty() { 0 } else { store.inbound_sessions(&ids).await?.len() };
        ensure!(stored == 0 || stored == BUNDLE, "room {n}: {stored} of {BUNDLE} sessions");
        if said("stored") {
            ensure!(stored == BUNDLE, "room {n}: announced stored, {stored} kept");
        }
        if stored == 0 {
            ensure!(kept == 1, "room {n}: the announcement went before its sessions were stored");
        }
        if kept == 1 {
            // Cut short: the next start imports it again (again is harmless).
            import_bundle(store, &room_id, &creator, |_| {}).await?;
            ensure!(store.pending_bundles(&room_id).await?.is_empty(), "room {n}: resumed");
        }
    }
    Ok(())
}

/// Encrypts the next value of the slot: the ratchet and our own copy saved before sending, so
/// an index is never used twice.
async fn send_one(store: &SqliteStateStore, n: u64) -> Result<(String, u32)> {
    let room_id = room();
    let slot = StateSlot::new("m.room.topic", "");
    let own = device();
    let mut session = match store.outbound_session(&room_id, &slot).await? {
        Some(pickle) => OutboundStateSession::from_pickle(pickle),
        None => OutboundStateSession::new(&room_id, slot.clone())?,
    };
    let content = Raw::new(&json!({ "topic": format!("topic {n}") }))?.cast_unchecked();
    let encrypted = session.encrypt(&own, &room_id, &slot, content)?;
    let own_copy = InboundStateSession::from_outbound(&session, &own);
    store
        .save_changes(StateChanges {
            outbound_sessions: vec![session.pickle()],
            inbound_sessions: vec![own_copy.pickle()],
            ..Default::default()
        })
        .await?;
    Ok((encrypted.session_id, encrypted.message_index))
}

async fn record_sent(store: &SqliteStateStore, session_id: &str, index: u32, n: u64) -> Result<()> {
    store
        .save_changes(StateChanges {
            session_events: vec![state_store_ext::SessionEventRef {
                session_id: session_id.to_owned(),
                message_index: index,
                room_id: room(),
                event_id: format!("$sent{n}").try_into()?,
                slot: StateSlot::new("m.room.topic", ""),
            }],
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// No index sent is ever used again, our copy of the session survives every send, and sending
/// resumes past every index used.
async fn check_send(store: &SqliteStateStore, announced: &[String]) -> Result<()> {
    let mut sent: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for line in announced {
        if let Some(rest) = line.strip_prefix("sent ")
            && let Some((session_id, index)) = rest.split_once(' ')
        {
            sent.entry(session_id.to_owned()).or_default().insert(index.parse()?);
        }
    }
    ensure!(!sent.is_empty(), "nothing was sent");
    let slot = StateSlot::new("m.room.topic", "");
    let pickle = store.outbound_session(&room(), &slot).await?.context("the ratchet")?;
    let session = OutboundStateSession::from_pickle(pickle);
    for (session_id, indices) in &sent {
        ensure!(
            store.inbound_session(session_id).await?.is_some(),
            "our copy of session {session_id} is lost"
        );
        if *session_id == session.session_id() {
            let highest = indices.iter().max().copied().unwrap_or(0);
            ensure!(session.next_index() > highest, "index {highest} would be used again");
        }
    }
    let (session_id, index) = send_one(store, u64::MAX).await?;
    let used = sent.get(&session_id).is_some_and(|indices| indices.contains(&index));
    ensure!(!used, "sending resumed at a used index {index}");
    Ok(())
}

/// The restricted-preview ledger of room n and the key-request state: a request per batch,
/// the one three batches older answered (removed).
fn ledger_batch(n: u64) -> StateChanges {
    let room_id = room();
    let preview_room: OwnedRoomId =
        format!("!restricted{n}:example.org").try_into().expect("a room id");
    let mut changes = StateChanges {
        sent_previews: vec![SentPreview {
            room_id: preview_room,
            events: vec![format!("$p{n}").try_into().expect("an event id")],
            devices: vec![("@bob:example.org".try_into().expect("a user"), "BOB".into())],
        }],
        key_requests: vec![KeyRequest {
            room_id: room_id.clone(),
            session_id: format!("s{n}"),
            first_requested_at: MilliSecondsSinceUnixEpoch::now(),
            attempts: 1,
        }],
        ..Default::default()
    };
    if n >= 3 {
        changes.removed_key_requests.push((room_id, format!("s{}", n - 3)));
    }
    changes
}

/// Every announced ledger write is there; the open requests are those of the last three
/// whole batches.
async fn check_ledgers(store: &SqliteStateStore, announced: &[String]) -> Result<()> {
    let last = last_number(announced, "committed").context("a commit")?;
    for n in 0..=last {
        let room_id: OwnedRoomId = format!("!restricted{n}:example.org").try_into()?;
        ensure!(store.sent_preview(&room_id).await?.is_some(), "the ledger of {n} is lost");
    }
    let open: BTreeSet<String> =
        store.key_requests(&room()).await?.into_iter().map(|r| r.session_id).collect();
    let whole = |last: u64| -> BTreeSet<String> {
        (last.saturating_sub(2)..=last).map(|k| format!("s{k}")).collect()
    };
    ensure!(
        open == whole(last) || open == whole(last + 1),
        "open requests {open:?} after batch {last}"
    );
    store.save_changes(ledger_batch(last + 2)).await?;
    Ok(())
}

/// The greatest number announced as `{word} {n}`.
fn last_number(lines: &[String], word: &str) -> Option<u64> {
    lines.iter().filter_map(|line| line.strip_prefix(word)?.trim().parse().ok()).max()
}
