//! Numbered schema migrations; the latest version is the number of files.

use rusqlite::Connection;

use crate::{Result, StoreError};

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/001_initial.sql"),
    include_str!("migrations/002_pending_room_index.sql"),
    include_str!("migrations/003_withheld_session.sql"),
    include_str!("migrations/004_restricted_previews.sql"),
    include_str!("migrations/005_room_positions.sql"),
    include_str!("migrations/006_sent_bundles.sql"),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The schema version of an open database.
pub(crate) fn version(conn: &Connection) -> Result<u32> {
    Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?)
}

/// Migrates to `target` (the latest unless a test asks for an older one), one transaction per
/// step that also records the new version. Refuses a database newer than this build.
pub(crate) fn migrate(conn: &mut Connection, target: u32) -> Result<()> {
    let current = version(conn)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::DatabaseTooNew { found: current, supported: SCHEMA_VERSION });
    }
    for step in current..target.min(SCHEMA_VERSION) {
        let tx = conn.transaction()?;
        tx.execute_batch(MIGRATIONS[step as usize])?;
        tx.pragma_update(None, "user_version", step + 1)?;
        tx.commit()?;
        tracing::debug!(version = step + 1, "migrated the state store");
    }
    Ok(())
}
