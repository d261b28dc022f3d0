//! The SQLite backend: one file in the app's data directory, values encrypted at rest.

pub(crate) mod codec;
mod migrations;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use crypto_ext::{
    RejectedState, StateSlot,
    state_sessions::{InboundStateSessionPickle, OutboundStateSessionPickle},
};
use matrix_sdk_store_encryption::StoreCipher;
use ruma::{OwnedRoomId, RoomId, UserId};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use self::codec::{Codec, exactly, starting_with};
pub use self::migrations::SCHEMA_VERSION;
use crate::{
    Result, StateChanges, StateStore, StoreError,
    records::{
        KeyRequest, PendingBundle, PendingEvent, ReceivedPreview, SentBundle, SentPreview,
        SessionEventRef, StateRecord, WithheldSession,
    },
};

/// The database file's name inside the store directory.
pub const DATABASE_FILE: &str = "matrix-state-ext.sqlite3";

/// How to open a [`SqliteStateStore`].
#[derive(Clone)]
pub struct SqliteStoreConfig {
    /// The directory holding the database (created if missing).
    pub path: PathBuf,
    /// The passphrase that encrypts values at rest. `None` stores values in clear: room names,
    /// topics and room ids are then readable by anyone who can read the file.
    pub passphrase: Option<String>,
    /// Stop migrating at this schema version (for migration tests and tooling); `None` means
    /// the latest.
    pub stop_at_version: Option<u32>,
}

impl std::fmt::Debug for SqliteStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStoreConfig")
            .field("path", &self.path)
            .field("passphrase", &self.passphrase.as_ref().map(|_| "<redacted>"))
            .field("stop_at_version", &self.stop_at_version)
            .finish()
    }
}

impl SqliteStoreConfig {
    /// A store in `path`, encrypted with `passphrase` if given.
    pub fn new(path: impl Into<PathBuf>, passphrase: Option<&str>) -> Self {
        Self { path: path.into(), passphrase: passphrase.map(str::to_owned), stop_at_version: None }
    }
}

/// A [`StateStore`] in SQLite. Each [`StateStore::save_changes`] is one transaction.
#[derive(Debug, Clone)]
pub struct SqliteStateStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: Mutex<Connection>,
    codec: Codec,
}

const KV_CIPHER: &str = "cipher";
const KV_CREATED: &str = "created";

impl SqliteStateStore {
    /// Opens (or creates) the store in the directory `path`; see [`SqliteStoreConfig`].
    ///
    /// # Errors
    ///
    /// [`StoreError::PassphraseRequired`] / [`StoreError::NotEncrypted`] when the passphrase
    /// does not fit how the store was created, [`StoreError::Encryption`] for a wrong
    /// passphrase, [`StoreError::DatabaseTooNew`] for a file written by a newer version.
    pub async fn open(path: impl AsRef<Path>, passphrase: Option<&str>) -> Result<Self> {
        Self::open_with_config(SqliteStoreConfig::new(path.as_ref(), passphrase)).await
    }

    /// Opens (or creates) the store as `config` says.
    ///
    /// # Errors
    ///
    /// As [`SqliteStateStore::open`].
    pub async fn open_with_config(config: SqliteStoreConfig) -> Result<Self> {
        tokio::task::spawn_blocking(move || Self::open_blocking(config)).await?
    }

    fn open_blocking(config: SqliteStoreConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.path)?;
        let mut conn = Connection::open(config.path.join(DATABASE_FILE))?;
        conn.pragma_update(None, "journal_mode", "wal")?;
        conn.pragma_update(None, "synchronous", "normal")?;
        conn.pragma_update(None, "foreign_keys", "on")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::migrate(&mut conn, config.stop_at_version.unwrap_or(SCHEMA_VERSION))?;

        let kv = |conn: &Connection, key: &str| -> Result<Option<Vec<u8>>> {
            Ok(conn
                .query_row("SELECT value FROM kv WHERE key = ?1", [key], |row| row.get(0))
                .optional()?)
        };
        let stored_cipher = kv(&conn, KV_CIPHER)?;
        let created = kv(&conn, KV_CREATED)?.is_some();
        let cipher = match (stored_cipher, config.passphrase.as_deref()) {
            (Some(exported), Some(passphrase)) => Some(StoreCipher::import(passphrase, &exported)?),
            (Some(_), None) => return Err(StoreError::PassphraseRequired),
            (None, Some(_)) if created => return Err(StoreError::NotEncrypted),
            (None, Some(passphrase)) => {
                let cipher = StoreCipher::new()?;
                let exported = cipher.export(passphrase)?;
                conn.execute(
                    "INSERT INTO kv (key, value) VALUES (?1, ?2)",
                    params![KV_CIPHER, exported],
                )?;
                Some(cipher)
            }
            (None, None) => None,
        };
        if !created {
            conn.execute(
                "INSERT INTO kv (key, value) VALUES (?1, ?2)",
                params![KV_CREATED, [1u8]],
            )?;
        }
        Ok(Self { inner: Arc::new(Inner { conn: Mutex::new(conn), codec: Codec::new(cipher) }) })
    }

    /// Whether values are encrypted at rest.
    pub fn is_encrypted(&self) -> bool {
        self.inner.codec.is_encrypted()
    }

    /// The schema version of the open database.
    pub async fn schema_version(&self) -> Result<u32> {
        self.with_conn(|conn, _| migrations::version(conn)).await
    }

    async fn with_conn<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Codec) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut conn, &inner.codec)
        })
        .await?
    }
}

fn slot_parts<'a>(room_id: &'a str, slot: &'a StateSlot) -> [&'a str; 3] {
    [room_id, slot.event_type.as_str(), slot.state_key.as_str()]
}

/// Batches with at least this many state records are sealed on every core.
const PARALLEL_SEAL: usize = 128;

/// One state record as it is written: its lookup keys and its two sealed values (the slot's
/// current value, written only if it replaces the current one, and the event's own row).
struct SealedRecord {
    room_key: Vec<u8>,
    slot_key: Vec<u8>,
    event_key: Vec<u8>,
    rejected_key: Vec<u8>,
    current_value: Vec<u8>,
    event_value: Vec<u8>,
}

fn seal_record(codec: &Codec, record: &StateRecord) -> Result<SealedRecord> {
    let room = record.room_id.as_str();
    let parts = slot_parts(room, &record.slot);
    let event_id = record.event_id().as_str();
    Ok(SealedRecord {
        room_key: codec.key("state.room", &[room]),
        slot_key: codec.key("state.slot", &parts),
        event_key: codec.key("state.event", &[room, event_id]),
        rejected_key: codec.key("rejected.event", &[room, event_id]),
        current_value: codec.seal(&parts, record)?,
        event_value: codec.seal(&[parts[0], parts[1], parts[2], event_id], record)?,
    })
}

/// Seals every record, in order; large batches on every core (JSON, encryption and keyed
/// hashes need no database, so only the writes stay on the connection's thread).
fn seal_records(codec: &Codec, records: &[StateRecord]) -> Result<Vec<SealedRecord>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if records.len() < PARALLEL_SEAL || threads < 2 {
        return records.iter().map(|record| seal_record(codec, record)).collect();
    }
    let chunk = records.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = records
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter().map(|record| seal_record(codec, record)).collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut sealed = Vec::with_capacity(records.len());
        for handle in handles {
            let part = handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            sealed.extend(part);
        }
        Ok(sealed)
    })
}

/// What a slot's current value is while a batch is written: read once from the database,
/// then whatever the batch put there.
enum Current<'a> {
    Stored(Option<StateRecord>),
    Batch(&'a StateRecord),
}

impl Current<'_> {
    fn record(&self) -> Option<&StateRecord> {
        match self {
            Current::Stored(record) => record.as_ref(),
            Current::Batch(record) => Some(record),
        }
    }
}

fn save(tx: &Transaction<'_>, codec: &Codec, changes: StateChanges) -> Result<()> {
    let sealed = seal_records(codec, &changes.state)?;
    let mut currents: std::collections::HashMap<&[u8], Current<'_>> =
        std::collections::HashMap::new();
    for (record, sealed) in changes.state.iter().zip(&sealed) {
        tx.prepare_cached("DELETE FROM rejected_event WHERE room = ?1 AND event = ?2")?
            .execute(params![sealed.room_key, sealed.rejected_key])?;
        let current = match currents.entry(&sealed.slot_key) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let stored: Option<Vec<u8>> = tx
                    .query_row(
                        "SELECT value FROM current_state WHERE room = ?1 AND slot = ?2",
                        params![sealed.room_key, sealed.slot_key],
                        |row| row.get(0),
                    )
                    .optional()?;
                let parts = slot_parts(record.room_id.as_str(), &record.slot);
                let stored = stored
                    .map(|bytes| codec.open("current_state", &bytes, exactly(&parts)))
                    .transpose()?;
                entry.insert(Current::Stored(stored))
            }
        };
        if record.replaces_or_updates(current.record()) {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO current_state (room, slot, value) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![
                sealed.room_key,
                sealed.slot_key,
                sealed.current_value
            ])?;
            *current = Current::Batch(record);
        }
        tx.prepare_cached(
            "INSERT OR REPLACE INTO state_event (room, slot, event, value) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            sealed.room_key,
            sealed.slot_key,
            sealed.event_key,
            sealed.event_value
        ])?;
    }
    for (room_id, position) in changes.room_positions {
        let parts = [room_id.as_str()];
        tx.prepare_cached("INSERT OR REPLACE INTO room_position (room, value) VALUES (?1, ?2)")?
            .execute(params![codec.key("position.room", &parts), codec.seal(&parts, &position)?])?;
    }
    for rejected in changes.rejected {
        let parts = [rejected.room_id.as_str(), rejected.event_id.as_str()];
        tx.prepare_cached(
            "INSERT OR REPLACE INTO rejected_event (room, event, value) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![
            codec.key("state.room", &parts[..1]),
            codec.key("rejected.event", &parts),
            codec.seal(&parts, &rejected)?
        ])?;
    }
    for pending in changes.pending {
        let parts = [pending.session_id.as_str(), pending.event_id.as_str()];
        tx.prepare_cached(
            "INSERT OR REPLACE INTO pending_event (session, event, room, value) \
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            codec.key("pending.session", &parts[..1]),
            codec.key("pending.event", &parts),
            codec.key("state.room", &[pending.room_id.as_str()]),
            codec.seal(&parts, &pending)?
        ])?;
    }
    for (session_id, event_id) in changes.resolved_pending {
        let parts = [session_id.as_str(), event_id.as_str()];
        tx.prepare_cached("DELETE FROM pending_event WHERE session = ?1 AND event = ?2")?.execute(
            params![codec.key("pending.session", &parts[..1]), codec.key("pending.event", &parts)],
        )?;
    }
    for mapping in changes.session_events {
        let index = mapping.message_index.to_string();
        let parts = [mapping.session_id.as_str(), index.as_str()];
        tx.prepare_cached("INSERT OR REPLACE INTO session_event (key, value) VALUES (?1, ?2)")?
            .execute(params![codec.key("session_event", &parts), codec.seal(&parts, &mapping)?])?;
    }
    for pickle in changes.outbound_sessions {
        let parts = slot_parts(pickle.room_id().as_str(), pickle.slot());
        tx.prepare_cached(
            "INSERT OR REPLACE INTO outbound_session (room, slot, value) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![
            codec.key("state.room", &parts[..1]),
            codec.key("outbound.slot", &parts),
            codec.seal(&parts, &pickle.to_json())?
        ])?;
    }
    for pickle in changes.inbound_sessions {
        let session_id = pickle.session_id();
        let parts = [session_id.as_str()];
        tx.prepare_cached(
            "INSERT OR REPLACE INTO inbound_session (session, value) VALUES (?1, ?2)",
        )?
        .execute(params![
            codec.key("inbound.session", &parts),
            codec.seal(&parts, &pickle.to_json())?
        ])?;
    }
    for bundle in changes.pending_bundles {
        let parts = [bundle.room_id.as_str(), bundle.sender.as_str()];
        tx.prepare_cached(
            "INSERT OR REPLACE INTO pending_bundle (room, sender, value) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![
            codec.key("state.room", &parts[..1]),
            codec.key("bundle.sender", &parts),
            codec.seal(&parts, &bundle)?
        ])?;
    }
    for (room_id, sender) in changes.removed_bundles {
        let parts = [room_id.as_str(), sender.as_str()];
        tx.prepare_cached("DELETE FROM pending_bundle WHERE room = ?1 AND sender = ?2")?.execute(
            params![codec.key("state.room", &parts[..1]), codec.key("bundle.sender", &parts)],
        )?;
    }
    for withheld in changes.withheld_sessions {
        let parts = [withheld.session_id.as_str()];
        tx.prepare_cached(
            "INSERT OR REPLACE INTO withheld_session (session, value) VALUES (?1, ?2)",
        )?
        .execute(params![codec.key("withheld.session", &parts), codec.seal(&parts, &withheld)?])?;
    }
    for request in changes.key_requests {
        let parts = [request.room_id.as_str(), request.session_id.as_str()];
        tx.prepare_cached(
            "INSERT OR REPLACE INTO key_request (room, session, value) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![
            codec.key("state.room", &parts[..1]),
            codec.key("request.session", &parts),
            codec.seal(&parts, &request)?
        ])?;
    }
    for (room_id, session_id) in changes.removed_key_requests {
        let parts = [room_id.as_str(), session_id.as_str()];
        tx.prepare_cached("DELETE FROM key_request WHERE room = ?1 AND session = ?2")?.execute(
            params![codec.key("state.room", &parts[..1]), codec.key("request.session", &parts)],
        )?;
    }
    for preview in changes.received_previews {
        let parts = [preview.room_id.as_str()];
        tx.prepare_cached("INSERT OR REPLACE INTO received_preview (room, value) VALUES (?1, ?2)")?
            .execute(params![codec.key("preview.room", &parts), codec.seal(&parts, &preview)?])?;
    }
    for room_id in changes.removed_previews {
        let parts = [room_id.as_str()];
        tx.prepare_cached("DELETE FROM received_preview WHERE room = ?1")?
            .execute(params![codec.key("preview.room", &parts)])?;
    }
    for sent in changes.sent_previews {
        let parts = [sent.room_id.as_str()];
        tx.prepare_cached("INSERT OR REPLACE INTO sent_preview (room, value) VALUES (?1, ?2)")?
            .execute(params![codec.key("sent.room", &parts), codec.seal(&parts, &sent)?])?;
    }
    for sent in changes.sent_bundles {
        let parts = [sent.room_id.as_str(), sent.invitee.as_str()];
        tx.prepare_cached("INSERT OR REPLACE INTO sent_bundle (key, value) VALUES (?1, ?2)")?
            .execute(params![codec.key("sent_bundle", &parts), codec.seal(&parts, &sent)?])?;
    }
    for (room_id, invitee) in changes.removed_sent_bundles {
        let parts = [room_id.as_str(), invitee.as_str()];
        tx.prepare_cached("DELETE FROM sent_bundle WHERE key = ?1")?
            .execute(params![codec.key("sent_bundle", &parts)])?;
    }
    Ok(())
}

/// Runs `sql` with `params` and opens every returned value, checking that its logical key starts
/// with `prefix`.
fn query_values<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    codec: &Codec,
    table: &'static str,
    sql: &str,
    params: impl rusqlite::Params,
    prefix: &[&str],
) -> Result<Vec<T>> {
    let mut statement = conn.prepare_cached(sql)?;
    let rows = statement.query_map(params, |row| row.get::<_, Vec<u8>>(0))?;
    let mut values = Vec::new();
    for bytes in rows {
        values.push(codec.open(table, &bytes?, starting_with(prefix))?);
    }
    Ok(values)
}

/// One lookup: `sql` bound to the lookup keys of `keys` (key-space name and logical parts), each
/// returned value opened and checked to carry a logical key that starts with `prefix`.
struct Lookup {
    table: &'static str,
    sql: &'static str,
    keys: Vec<(&'static str, Vec<String>)>,
    prefix: Vec<String>,
}

impl Lookup {
    fn new(table: &'static str, sql: &'static str) -> Self {
        Self { table, sql, keys: Vec::new(), prefix: Vec::new() }
    }

    /// Binds the next parameter to the lookup key of `parts` in key space `space`.
    fn key(mut self, space: &'static str, parts: &[&str]) -> Self {
        self.keys.push((space, parts.iter().map(|p| (*p).to_owned()).collect()));
        self
    }

    /// The logical key every returned value must start with.
    fn expect(mut self, prefix: &[&str]) -> Self {
        self.prefix = prefix.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    fn run<T: serde::de::DeserializeOwned>(
        self,
        conn: &Connection,
        codec: &Codec,
    ) -> Result<Vec<T>> {
        let keys: Vec<Vec<u8>> = self
            .keys
            .iter()
            .map(|(space, parts)| {
                let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                codec.key(space, &parts)
            })
            .collect();
        let prefix: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
        query_values(conn, codec, self.table, self.sql, rusqlite::params_from_iter(keys), &prefix)
    }
}

impl SqliteStateStore {
    async fn lookup<T>(&self, lookup: Lookup) -> Result<Vec<T>>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        self.with_conn(move |conn, codec| lookup.run(conn, codec)).await
    }
}

#[async_trait]
impl StateStore for SqliteStateStore {
    async fn save_changes(&self, changes: StateChanges) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        self.with_conn(move |conn, codec| {
            let tx = conn.transaction()?;
            save(&tx, codec, changes)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn current_state(
        &self,
        room_id: &RoomId,
        slot: &StateSlot,
    ) -> Result<Option<StateRecord>> {
        let parts = slot_parts(room_id.as_str(), slot);
        let lookup = Lookup::new(
            "current_state",
            "SELECT value FROM current_state WHERE room = ?1 AND slot = ?2",
        )
        .key("state.room", &parts[..1])
        .key("state.slot", &parts)
        .expect(&parts);
        Ok(self.lookup(lookup).await?.pop())
    }

    async fn room_state(&self, room_id: &RoomId) -> Result<Vec<StateRecord>> {
        let parts = [room_id.as_str()];
        let lookup =
            Lookup::new("current_state", "SELECT value FROM current_state WHERE room = ?1")
                .key("state.room", &parts)
                .expect(&parts);
        self.lookup(lookup).await
    }

    async fn room_position(&self, room_id: &RoomId) -> Result<u64> {
        let parts = [room_id.as_str()];
        let lookup =
            Lookup::new("room_position", "SELECT value FROM room_position WHERE room = ?1")
                .key("position.room", &parts)
                .expect(&parts);
        let mut found: Vec<u64> = self.lookup(lookup).await?;
        Ok(found.pop().unwrap_or(0))
    }

    async fn slot_history(&self, room_id: &RoomId, slot: &StateSlot) -> Result<Vec<StateRecord>> {
        let parts = slot_parts(room_id.as_str(), slot);
        let lookup = Lookup::new("state_event", "SELECT value FROM state_event WHERE slot = ?1")
            .key("state.slot", &parts)
            .expect(&parts);
        let mut records: Vec<StateRecord> = self.lookup(lookup).await?;
        records.sort_by(|a, b| a.order().cmp(&b.order()));
        Ok(records)
    }

    async fn rejected_events(&self, room_id: &RoomId) -> Result<Vec<RejectedState>> {
        let parts = [room_id.as_str()];
        let lookup =
            Lookup::new("rejected_event", "SELECT value FROM rejected_event WHERE room = ?1")
                .key("state.room", &parts)
                .expect(&parts);
        self.lookup(lookup).await
    }

    async fn pending_for_session(&self, session_id: &str) -> Result<Vec<PendingEvent>> {
        let parts = [session_id];
        let lookup =
            Lookup::new("pending_event", "SELECT value FROM pending_event WHERE session = ?1")
                .key("pending.session", &parts)
                .expect(&parts);
        self.lookup(lookup).await
    }

    async fn pending_in_room(&self, room_id: &RoomId) -> Result<Vec<PendingEvent>> {
        // Pending events are sealed under their session; check the room they carry instead.
        let lookup =
            Lookup::new("pending_event", "SELECT value FROM pending_event WHERE room = ?1")
                .key("state.room", &[room_id.as_str()]);
        let events: Vec<PendingEvent> = self.lookup(lookup).await?;
        if events.iter().any(|event| event.room_id != room_id) {
            return Err(StoreError::Corrupted {
                table: "pending_event",
                detail: "an event is indexed under another room".to_owned(),
            });
        }
        Ok(events)
    }

    async fn session_event(
        &self,
        session_id: &str,
        message_index: u32,
    ) -> Result<Option<SessionEventRef>> {
        let index = message_index.to_string();
        let parts = [session_id, index.as_str()];
        let lookup = Lookup::new("session_event", "SELECT value FROM session_event WHERE key = ?1")
            .key("session_event", &parts)
            .expect(&parts);
        Ok(self.lookup(lookup).await?.pop())
    }

    async fn outbound_session(
        &self,
        room_id: &RoomId,
        slot: &StateSlot,
    ) -> Result<Option<OutboundStateSessionPickle>> {
        let parts = slot_parts(room_id.as_str(), slot);
        let lookup = Lookup::new(
            "outbound_session",
            "SELECT value FROM outbound_session WHERE room = ?1 AND slot = ?2",
        )
        .key("state.room", &parts[..1])
        .key("outbound.slot", &parts)
        .expect(&parts);
        let pickles: Vec<String> = self.lookup(lookup).await?;
        Ok(pickles.first().map(|json| OutboundStateSessionPickle::from_json(json)).transpose()?)
    }

    async fn outbound_sessions(&self, room_id: &RoomId) -> Result<Vec<OutboundStateSessionPickle>> {
        let parts = [room_id.as_str()];
        let lookup =
            Lookup::new("outbound_session", "SELECT value FROM outbound_session WHERE room = ?1")
                .key("state.room", &parts)
                .expect(&parts);
        let pickles: Vec<String> = self.lookup(lookup).await?;
        Ok(pickles
            .iter()
            .map(|json| OutboundStateSessionPickle::from_json(json))
            .collect::<Result<_, _>>()?)
    }

    async fn inbound_session(&self, session_id: &str) -> Result<Option<InboundStateSessionPickle>> {
        Ok(self.inbound_sessions(&[session_id.to_owned()]).await?.pop())
    }

    async fn inbound_sessions(
        &self,
        session_ids: &[String],
    ) -> Result<Vec<InboundStateSessionPickle>> {
        let session_ids = session_ids.to_vec();
        let pickles: Vec<String> = self
            .with_conn(move |conn, codec| {
                let mut found = Vec::new();
                for session_id in &session_ids {
                    let parts = [session_id.as_str()];
                    let lookup = Lookup::new(
                        "inbound_session",
                        "SELECT value FROM inbound_session WHERE session = ?1",
                    )
                    .key("inbound.session", &parts)
                    .expect(&parts);
                    found.extend(lookup.run::<String>(conn, codec)?);
                }
                Ok(found)
            })
            .await?;
        Ok(pickles
            .iter()
            .map(|json| InboundStateSessionPickle::from_json(json))
            .collect::<Result<_, _>>()?)
    }

    async fn rooms_with_pending_bundles(&self) -> Result<Vec<OwnedRoomId>> {
        // Room ids are hashed in the key column: read them from the (few) sealed values.
        let bundles: Vec<PendingBundle> = self
            .with_conn(|conn, codec| {
                query_values(
                    conn,
                    codec,
                    "pending_bundle",
                    "SELECT value FROM pending_bundle",
                    [],
                    &[],
                )
            })
            .await?;
        let mut rooms: Vec<OwnedRoomId> = bundles.into_iter().map(|b| b.room_id).collect();
        rooms.sort();
        rooms.dedup();
        Ok(rooms)
    }

    async fn pending_bundles(&self, room_id: &RoomId) -> Result<Vec<PendingBundle>> {
        let parts = [room_id.as_str()];
        let lookup =
            Lookup::new("pending_bundle", "SELECT value FROM pending_bundle WHERE room = ?1")
                .key("state.room", &parts)
                .expect(&parts);
        self.lookup(lookup).await
    }

    async fn withheld_session(&self, session_id: &str) -> Result<Option<WithheldSession>> {
        let parts = [session_id];
        let lookup = Lookup::new(
            "withheld_session",
            "SELECT value FROM withheld_session WHERE session = ?1",
        )
        .key("withheld.session", &parts)
        .expect(&parts);
        let mut found: Vec<WithheldSession> = self.lookup(lookup).await?;
        Ok(found.pop())
    }

    async fn key_requests(&self, room_id: &RoomId) -> Result<Vec<KeyRequest>> {
        let parts = [room_id.as_str()];
        let lookup = Lookup::new("key_request", "SELECT value FROM key_request WHERE room = ?1")
            .key("state.room", &parts)
            .expect(&parts);
        self.lookup(lookup).await
    }

    async fn received_preview(&self, room_id: &RoomId) -> Result<Option<ReceivedPreview>> {
        let parts = [room_id.as_str()];
        let lookup =
            Lookup::new("received_preview", "SELECT value FROM received_preview WHERE room = ?1")
                .key("preview.room", &parts)
                .expect(&parts);
        let mut found: Vec<ReceivedPreview> = self.lookup(lookup).await?;
        Ok(found.pop())
    }

    async fn sent_preview(&self, room_id: &RoomId) -> Result<Option<SentPreview>> {
        let parts = [room_id.as_str()];
        let lookup = Lookup::new("sent_preview", "SELECT value FROM sent_preview WHERE room = ?1")
            .key("sent.room", &parts)
            .expect(&parts);
        let mut found: Vec<SentPreview> = self.lookup(lookup).await?;
        Ok(found.pop())
    }

    async fn sent_bundle(&self, room_id: &RoomId, invitee: &UserId) -> Result<Option<SentBundle>> {
        let parts = [room_id.as_str(), invitee.as_str()];
        let lookup = Lookup::new("sent_bundle", "SELECT value FROM sent_bundle WHERE key = ?1")
            .key("sent_bundle", &parts)
            .expect(&parts);
        let mut found: Vec<SentBundle> = self.lookup(lookup).await?;
        Ok(found.pop())
    }
}

#[cfg(test)]
mod tests;
