//! SQLite-only behaviour: encryption at rest, passphrase handling, migrations, tampering, and
//! atomicity when the process is killed mid-write. The shared suite runs here twice, with and
//! without a passphrase.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use assert_matches::assert_matches;
use crypto_ext::StateSlot;
use rusqlite::Connection;

use super::*;
use crate::{StateChanges, integration_tests::*};

mod plain {
    crate::integration_tests::state_store_integration_tests!(TestBackend::sqlite(None));
}

mod encrypted {
    crate::integration_tests::state_store_integration_tests!(TestBackend::sqlite(Some(
        "correct horse battery staple"
    )));
}

const NAME: &str = "Operation Nightingale planning";
const TOPIC: &str = "Acquisition of Umbrella Corp";

async fn write_name_and_topic(store: &SqliteStateStore) {
    let r = room(1);
    let mut topic = encrypted(&r, &StateSlot::new("m.room.topic", ""), "$t", 2, TOPIC);
    topic.content =
        ruma::serde::Raw::new(&serde_json::json!({ "topic": TOPIC })).unwrap().cast_unchecked();
    let changes = StateChanges {
        state: vec![encrypted(&r, &name_slot(), "$n", 1, NAME), topic],
        ..Default::default()
    };
    store.save_changes(changes).await.unwrap();
}

fn file_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        // The database, its WAL and shared-memory files.
        bytes.extend(std::fs::read(path).unwrap());
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn with_a_passphrase_names_topics_and_room_ids_never_reach_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStateStore::open(dir.path(), Some("secret")).await.unwrap();
    assert!(store.is_encrypted());
    write_name_and_topic(&store).await;

    let bytes = file_bytes(dir.path());
    assert!(dir.path().join(format!("{DATABASE_FILE}-wal")).exists(), "WAL file checked too");
    assert!(!bytes.is_empty());
    for secret in [NAME, TOPIC, room(1).as_str(), "m.room.name"] {
        assert!(!contains(&bytes, secret), "{secret:?} found in the database files");
    }
}

#[tokio::test]
async fn without_a_passphrase_the_store_works_but_keeps_values_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStateStore::open(dir.path(), None).await.unwrap();
    assert!(!store.is_encrypted());
    write_name_and_topic(&store).await;
    assert_eq!(
        store.current_state(&room(1), &name_slot()).await.unwrap().unwrap().event_id(),
        "$n"
    );
    // This is the documented trade-off: the check above would fail with a passphrase.
    assert!(contains(&file_bytes(dir.path()), NAME));
}

#[tokio::test]
async fn the_passphrase_must_fit_how_the_store_was_created() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStateStore::open(dir.path(), Some("right")).await.unwrap());
    assert_matches!(
        SqliteStateStore::open(dir.path(), Some("wrong")).await,
        Err(StoreError::Encryption(_))
    );
    assert_matches!(
        SqliteStateStore::open(dir.path(), None).await,
        Err(StoreError::PassphraseRequired)
    );

    let plain = tempfile::tempdir().unwrap();
    drop(SqliteStateStore::open(plain.path(), None).await.unwrap());
    assert_matches!(
        SqliteStateStore::open(plain.path(), Some("late")).await,
        Err(StoreError::NotEncrypted)
    );
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let r = room(1);
    {
        let store = SqliteStateStore::open(dir.path(), Some("secret")).await.unwrap();
        let (mut outbound, _) = sessions(&r);
        outbound.encrypt(&own_device(), &r, &name_slot(), content("x")).unwrap();
        let changes = StateChanges {
            state: vec![encrypted(&r, &name_slot(), "$n", 10, "Persisted")],
            rejected: vec![rejected(&r, "$bad")],
            outbound_sessions: vec![outbound.pickle()],
            ..Default::default()
        };
        store.save_changes(changes).await.unwrap();
    }
    let store = SqliteStateStore::open(dir.path(), Some("secret")).await.unwrap();
    let current = store.current_state(&r, &name_slot()).await.unwrap().unwrap();
    assert!(current.content.json().get().contains("Persisted"));
    assert_eq!(store.rejected_events(&r).await.unwrap().len(), 1);
    let pickle = store.outbound_session(&r, &name_slot()).await.unwrap().unwrap();
    assert_eq!(crypto_ext::OutboundStateSession::from_pickle(pickle).current_index(), Some(0));
}

#[tokio::test]
async fn a_version_1_store_is_migrated_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteStoreConfig {
        stop_at_version: Some(1),
        ..SqliteStoreConfig::new(dir.path(), Some("secret"))
    };
    let old = SqliteStateStore::open_with_config(config).await.unwrap();
    assert_eq!(old.schema_version().await.unwrap(), 1);
    write_name_and_topic(&old).await;
    drop(old);

    let store = SqliteStateStore::open(dir.path(), Some("secret")).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    const { assert!(SCHEMA_VERSION >= 2) };
    assert_eq!(store.room_state(&room(1)).await.unwrap().len(), 2);
    let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    let index: String = conn
        .query_row("SELECT name FROM sqlite_master WHERE name = 'pending_event_room'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(index, "pending_event_room");
}

#[tokio::test]
async fn a_store_written_by_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStateStore::open(dir.path(), None).await.unwrap());
    Connection::open(dir.path().join(DATABASE_FILE))
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    assert_matches!(
        SqliteStateStore::open(dir.path(), None).await,
        Err(StoreError::DatabaseTooNew { found, supported }) if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION
    );
}

#[tokio::test]
async fn a_value_moved_to_another_row_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStateStore::open(dir.path(), Some("secret")).await.unwrap();
    write_name_and_topic(&store).await;
    drop(store);
    // Someone with write access to the file copies the topic's sealed value over the name's row.
    let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    let values: Vec<Vec<u8>> = conn
        .prepare("SELECT value FROM current_state")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(values.len(), 2);
    conn.execute("UPDATE current_state SET value = ?1", [&values[1]]).unwrap();
    drop(conn);

    let store = SqliteStateStore::open(dir.path(), Some("secret")).await.unwrap();
    let name = store.current_state(&room(1), &name_slot()).await;
    let topic = store.current_state(&room(1), &StateSlot::new("m.room.topic", "")).await;
    assert!(
        matches!(name, Err(StoreError::Corrupted { .. }))
            || matches!(topic, Err(StoreError::Corrupted { .. })),
        "one of the two rows now holds the other's value"
    );
}

const KILL_DIR_ENV: &str = "STATE_STORE_EXT_KILL_TEST_DIR";
const BATCH: usize = 200;

/// In the child: writes batch after batch, announcing each commit, until killed.
async fn write_batches_forever(dir: &str) {
    let store = SqliteStateStore::open(dir, Some("secret")).await.unwrap();
    let r = room(1);
    for batch in 0.. {
        let state = (0..BATCH)
            .map(|i| {
                let slot = StateSlot::new(format!("org.batch.{batch}"), format!("k{i}"));
                encrypted(&r, &slot, &format!("$b{batch}-{i}"), 1, "x")
            })
            .collect();
        store.save_changes(StateChanges { state, ..Default::default() }).await.unwrap();
        println!("committed {batch}");
    }
}

#[tokio::test]
async fn batches_are_whole_or_absent_after_a_sigkill_mid_write() {
    if let Ok(dir) = std::env::var(KILL_DIR_ENV) {
        write_batches_forever(&dir).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sqlite::tests::batches_are_whole_or_absent_after_a_sigkill_mid_write"])
        .args(["--nocapture", "--test-threads=1"])
        .env(KILL_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut committed = 0;
    while committed < 3 {
        let line = lines.next().expect("the child writes until killed").unwrap();
        if let Some(n) = line.strip_prefix("committed ") {
            committed = n.parse::<usize>().unwrap();
        }
    }
    // The child is now inside a later batch (or between two): kill it without warning.
    child.kill().unwrap();
    child.wait().unwrap();

    let store = SqliteStateStore::open(dir.path(), Some("secret")).await.unwrap();
    let records = store.room_state(&room(1)).await.unwrap();
    let mut per_batch = std::collections::BTreeMap::<String, usize>::new();
    for record in &records {
        *per_batch.entry(record.slot.event_type.clone()).or_default() += 1;
    }
    assert!(per_batch.len() > committed, "every announced batch is present: {per_batch:?}");
    for (batch, count) in per_batch {
        assert_eq!(count, BATCH, "{batch} is partial");
    }
}
