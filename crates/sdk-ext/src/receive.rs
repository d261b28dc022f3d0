//! Receiving room-key bundles (MSC4268).
//!
//! An announcement (`m.room_key_bundle` over Olm, carrying its sender's device keys) is kept in
//! our store. Nothing is downloaded until the user accepts an invite from the
//! announcement's sender: matrix-sdk records who invited us when the client joins from the
//! invited state ([`Client::get_pending_key_bundle_details_for_room`]), in the local store, so a
//! homeserver cannot fake it. Then the bundle is downloaded with a size cap (the download stops
//! at the cap), its hash is checked, only entries of the room are kept (and only from a device its owner cross-signed), and its keys go into
//! the client's key store (past messages, through matrix-sdk's normal decryption) and into ours
//! (encrypted state, attribution). The announcement is removed only after both imports, so an
//! import cut short by a crash runs again at the next start; importing a bundle twice changes
//! nothing the first import did not.

use std::{
    collections::BTreeMap,
    io::Write,
    time::{Duration, SystemTime},
};

use crypto_ext::{
    BundleError, InboundStateSession, KeyOrigin,
    bundle::{self, BundleLimits, OpenedBundle},
};
use matrix_sdk::{Client, Room, RoomState, deserialized_responses::EncryptionInfo};
use matrix_sdk_crypto::{MediaEncryptionInfo, olm::ExportedRoomKey};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedRoomId, OwnedUserId, RoomId, events::room::EncryptedFile,
};
use serde::Deserialize;
use serde_json::Value;
use state_store_ext::{PendingBundle, StateChanges, WithheldSession};
use thiserror::Error;
use tracing::{debug, info, instrument, warn};

use crate::{Result, StateUpdate, extension::Inner, processing::Processor};

/// How long after accepting an invite its inviter's bundle is still accepted (matrix-sdk's
/// rule too): a bundle that turns up much later is more likely replayed than late.
const ACCEPT_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// PBKDF2 rounds of the key file handed to `Encryption::import_room_keys`. The file lives in a
/// private temporary directory for the duration of one call, under a random 40-character
/// passphrase: the passphrase's entropy protects it, not the rounds.
const IMPORT_FILE_ROUNDS: u32 = 1_000;

/// Why a received bundle was not imported.
#[derive(Debug, Error)]
pub enum BundleImportError {
    /// The announcement's `file` is not a usable `EncryptedFile`.
    #[error("the bundle announcement is malformed: {0}")]
    InvalidAnnouncement(String),
    /// The device that announced the bundle is not cross-signed by its owner (or is blocked):
    /// its keys could come from anyone who got hold of the account.
    #[error("the device that announced the bundle is not cross-signed by its owner")]
    UntrustedSender,
    /// The homeserver does not have the file (any more).
    #[error("the homeserver has no such bundle")]
    NotFound,
    /// The download failed; the announcement is kept and the import retried later.
    #[error("downloading the bundle failed: {0}")]
    Download(String),
    /// The bundle itself is unacceptable: too large, not matching its hash, malformed.
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

impl BundleImportError {
    /// Whether trying again later cannot help (the announcement is then forgotten).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Download(_))
    }
}

/// A bundle that was imported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedBundle {
    /// The room.
    pub room_id: OwnedRoomId,
    /// Who shared it (the inviter).
    pub shared_by: OwnedUserId,
    /// Sessions imported (message and state sessions look alike in a bundle).
    pub keys: usize,
    /// Sessions the sender withheld, with their code kept for the app.
    pub withheld: usize,
    /// Entries dropped because they name another room.
    pub foreign_entries: usize,
    /// Sessions dropped because the bundle both shared and withheld them.
    pub conflicting_sessions: usize,
}

/// What happened to one bundle announcement of a room.
#[derive(Debug)]
pub enum BundleOutcome {
    /// Imported; the announcement is forgotten.
    Imported(ImportedBundle),
    /// Refused for good; the announcement is forgotten.
    Refused {
        /// Who announced it.
        sender: OwnedUserId,
        /// Why.
        error: BundleImportError,
    },
    /// Not imported this time (a download failure); kept and retried at the next sync that
    /// touches the room, or the next start.
    Deferred {
        /// Who announced it.
        sender: OwnedUserId,
        /// Why.
        error: BundleImportError,
    },
    /// Dropped without download: its sender is not the user whose invite we accepted, or the
    /// invite was accepted too long ago.
    Ignored {
        /// Who announced it.
        sender: OwnedUserId,
    },
}

#[derive(Deserialize)]
struct Announcement {
    room_id: OwnedRoomId,
    file: Value,
}

/// Keeps a bundle announcement that arrived over Olm from a device its owner cross-signed, and
/// imports it at once if its sender's invite was already accepted.
pub(crate) async fn receive_announcement(
    inner: &Inner,
    event: &Value,
    info: Option<&EncryptionInfo>,
) -> Result<Option<OwnedRoomId>> {
    let Some(info) = info else {
        warn!("ignoring a bundle announcement that was not Olm-encrypted");
        return Ok(None);
    };
    let sender = &info.sender;
    // matrix-sdk's rule too: the announcement must carry its sender's device keys (MSC4147), so
    // the device is known from the message itself. Whether its owner cross-signed it is
    // checked at import time, with the owner's identity fetched then.
    if event.get("sender_device_keys").is_none_or(Value::is_null) || info.sender_device.is_none() {
        warn!(%sender, "ignoring a bundle announcement without sender device keys");
        return Ok(None);
    }
    let Ok(announcement) = serde_json::from_value::<Announcement>(event["content"].clone()) else {
        warn!(%sender, "ignoring a malformed bundle announcement");
        return Ok(None);
    };
    let pending = PendingBundle {
        room_id: announcement.room_id.clone(),
        sender: sender.clone(),
        sender_device: info.sender_device.clone(),
        file: announcement.file,
        received_at: MilliSecondsSinceUnixEpoch::now(),
    };
    debug!(room_id = %pending.room_id, %sender, "kept a bundle announcement");
    inner
        .store
        .save_changes(StateChanges { pending_bundles: vec![pending], ..Default::default() })
        .await?;
    inner.set_bundle_room(&announcement.room_id, true);
    Ok(Some(announcement.room_id))
}

/// Imports the bundles kept for `room`, if we joined it by accepting an invite from their
/// sender. Bundles from anyone else are dropped; a room we have not joined keeps them.
#[instrument(skip_all, fields(room_id = %room.room_id()))]
pub(crate) async fn import_pending(inner: &Inner, room: &Room) -> Result<Vec<BundleOutcome>> {
    let room_id = room.room_id();
    if !inner.is_bundle_room(room_id) {
        return Ok(Vec::new());
    }
    let _serial = inner.imports.lock().await;
    if room.state() != RoomState::Joined {
        return Ok(Vec::new());
    }
    let pending = inner.store.pending_bundles(room_id).await?;
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let accepted = inner.client.get_pending_key_bundle_details_for_room(room_id).await?;
    let mut outcomes = Vec::new();
    for announcement in pending {
        let sender = announcement.sender.clone();
        let from_inviter = accepted.as_ref().is_some_and(|details| {
            details.inviter == sender
                && details
                    .invite_accepted_at
                    .to_system_time()
                    .and_then(|at| SystemTime::now().duration_since(at).ok())
                    .is_some_and(|elapsed| elapsed < ACCEPT_WINDOW)
        });
        let outcome = if from_inviter {
            let checked = match sender_device_is_trusted(inner, &announcement).await? {
                true => fetch_and_open(inner, room_id, &announcement).await,
                false => Err(BundleImportError::UntrustedSender),
            };
            match checked {
                Ok(opened) => BundleOutcome::Imported(import(inner, &announcement, opened).await?),
                Err(error) if error.is_permanent() => {
                    warn!(%sender, %error, "refused a room-key bundle");
                    BundleOutcome::Refused { sender, error }
                }
                Err(error) => {
                    warn!(%sender, %error, "could not fetch a room-key bundle, will retry");
                    BundleOutcome::Deferred { sender, error }
                }
            }
        } else {
            warn!(%sender, "dropped a bundle not sent by the user whose invite we accepted");
            BundleOutcome::Ignored { sender }
        };
        if !matches!(outcome, BundleOutcome::Deferred { .. } | BundleOutcome::Imported(_)) {
            forget(inner, &announcement).await?;
        }
        inner.notify(update_for(room_id, &outcome).into_iter().collect());
        outcomes.push(outcome);
    }
    let kept = outcomes.iter().any(|o| matches!(o, BundleOutcome::Deferred { .. }));
    inner.set_bundle_room(room_id, kept);
    Ok(outcomes)
}

/// Runs [`import_pending`] for every joined room (at start: an import cut short resumes).
pub(crate) async fn import_all_pending(inner: &Inner) -> Result<()> {
    for room in inner.client.joined_rooms() {
        import_pending(inner, &room).await?;
    }
    Ok(())
}

fn update_for(room_id: &RoomId, outcome: &BundleOutcome) -> Option<StateUpdate> {
    match outcome {
        BundleOutcome::Imported(imported) => Some(StateUpdate::HistoryImported(imported.clone())),
        BundleOutcome::Refused { sender, error } => Some(StateUpdate::BundleRefused {
            room_id: room_id.to_owned(),
            sender: sender.clone(),
            reason: error.to_string(),
        }),
        BundleOutcome::Deferred { .. } | BundleOutcome::Ignored { .. } => None,
    }
}

async fn forget(inner: &Inner, announcement: &PendingBundle) -> Result<()> {
    let key = (announcement.room_id.clone(), announcement.sender.clone());
    inner
        .store
        .save_changes(StateChanges { removed_bundles: vec![key], ..Default::default() })
        .await?;
    Ok(())
}

/// Whether the device that announced the bundle is cross-signed by its owner and not blocked,
/// with the owner's keys fetched from the homeserver if we never had them.
async fn sender_device_is_trusted(inner: &Inner, announcement: &PendingBundle) -> Result<bool> {
    let Some(device_id) = &announcement.sender_device else { return Ok(false) };
    let device = crate::devices::device(inner, &announcement.sender, device_id, |d| {
        d.is_cross_signed_by_owner()
    })
    .await?;
    Ok(device.is_some_and(|d| d.is_cross_signed_by_owner() && !d.is_blacklisted()))
}

async fn fetch_and_open(
    inner: &Inner,
    room_id: &RoomId,
    announcement: &PendingBundle,
) -> Result<OpenedBundle, BundleImportError> {
    let file: EncryptedFile = serde_json::from_value(announcement.file.clone())
        .map_err(|e| BundleImportError::InvalidAnnouncement(e.to_string()))?;
    let limits = inner.config.bundle_limits;
    let ciphertext = download(inner, &file, limits).await?;
    let info = MediaEncryptionInfo::from(file);
    Ok(bundle::open(&ciphertext, info, room_id, limits)?)
}

/// Downloads an encrypted file through the authenticated media API, reading no more than
/// `limits.max_bytes`: a larger `Content-Length` is refused before the body is read, and a body
/// that grows past the cap is dropped there.
async fn download(
    inner: &Inner,
    file: &EncryptedFile,
    limits: BundleLimits,
) -> Result<Vec<u8>, BundleImportError> {
    let (server, media_id) =
        file.url.parts().map_err(|e| BundleImportError::InvalidAnnouncement(e.to_string()))?;
    let client = &inner.client;
    let mut url = client.homeserver();
    url.path_segments_mut()
        .map_err(|()| BundleImportError::Download("unusable homeserver URL".to_owned()))?
        .pop_if_empty()
        .extend(["_matrix", "client", "v1", "media", "download", server.as_str(), media_id]);
    let mut request = inner.http.get(url);
    if let Some(token) = client.access_token() {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| BundleImportError::Download(e.to_string()))?;
    let status = response.status();
    if status == matrix_sdk::reqwest::StatusCode::NOT_FOUND {
        return Err(BundleImportError::NotFound);
    }
    if !status.is_success() {
        return Err(BundleImportError::Download(format!("the homeserver answered {status}")));
    }
    read_capped(response, limits.max_bytes).await
}

/// Reads a response body of at most `max` bytes: a larger `Content-Length` is refused before the
/// body is read, and a body without one that grows past `max` is dropped there.
async fn read_capped(
    mut response: matrix_sdk::reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, BundleImportError> {
    let too_large = |size: usize| BundleImportError::Bundle(BundleError::TooLarge { size, max });
    let announced = response.content_length().map(|len| usize::try_from(len).unwrap_or(usize::MAX));
    if let Some(len) = announced
        && len > max
    {
        return Err(too_large(len));
    }
    let mut body = Vec::with_capacity(announced.unwrap_or(0));
    while let Some(chunk) =
        response.chunk().await.map_err(|e| BundleImportError::Download(e.to_string()))?
    {
        if body.len() + chunk.len() > max {
            return Err(too_large(body.len() + chunk.len()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Stores the bundle's keys in our store (state decryption, attribution) and its withheld
/// notices, then in the client's key store, then forgets the announcement. Every step can run
/// again without harm, so a crash anywhere leads to the whole import running again at the next
/// start.
async fn import(
    inner: &Inner,
    announcement: &PendingBundle,
    opened: OpenedBundle,
) -> Result<ImportedBundle> {
    let room_id = &announcement.room_id;
    let shared_by = announcement.sender.clone();
    let origin = KeyOrigin::Bundle { shared_by: shared_by.clone() };
    let keys: Vec<ExportedRoomKey> =
        opened.room_keys.into_iter().map(bundle::exported_room_key).collect();

    let mut imported = Vec::with_capacity(keys.len());
    for key in &keys {
        match InboundStateSession::import(room_id, key, origin.clone()) {
            Ok(session) => imported.push(session),
            Err(error) => warn!(session_id = %key.session_id, %error, "skipped a bundle key"),
        }
    }
    let mut changes = StateChanges {
        inbound_sessions: keep_further_reaching(inner, imported)
            .await?
            .iter()
            .map(InboundStateSession::pickle)
            .collect(),
        ..Default::default()
    };
    for notice in &opened.withheld {
        let Some(session_id) = notice.megolm_session_id() else { continue };
        changes.withheld_sessions.push(WithheldSession {
            room_id: room_id.clone(),
            session_id: session_id.to_owned(),
            code: notice.withheld_code().as_str().to_owned(),
            withheld_by: shared_by.clone(),
        });
    }
    let session_ids: Vec<String> = keys.iter().map(|k| k.session_id.clone()).collect();
    inner.store.save_changes(changes).await?;
    debug!(%room_id, keys = keys.len(), "stored the bundle's keys in the state store");

    if !keys.is_empty() {
        import_into_client(&inner.client, &keys).await?;
    }
    debug!(%room_id, "imported the bundle's keys into the client's key store");
    forget(inner, announcement).await?;

    // Encrypted state waiting for these keys becomes readable now.
    Processor::new(inner).retry_sessions(session_ids.into_iter().collect()).await?;
    if let Some(room) = inner.client.get_room(room_id) {
        Processor::new(inner).scan_room(&room).await?;
    }
    let imported = ImportedBundle {
        room_id: room_id.clone(),
        shared_by,
        keys: keys.len(),
        withheld: opened.withheld.len(),
        foreign_entries: opened.foreign_entries,
        conflicting_sessions: opened.conflicting_sessions.len(),
    };
    info!(?imported, "imported a room-key bundle");
    Ok(imported)
}

/// Each of `sessions`, or the copy we already hold if that one reaches further back (an import
/// never loses the ability to decrypt something we could read before). One store query for the
/// whole batch.
pub(crate) async fn keep_further_reaching(
    inner: &Inner,
    sessions: Vec<InboundStateSession>,
) -> Result<Vec<InboundStateSession>> {
    let ids: Vec<String> = sessions.iter().map(InboundStateSession::session_id).collect();
    let mut held: BTreeMap<String, InboundStateSession> = BTreeMap::new();
    for pickle in inner.store.inbound_sessions(&ids).await? {
        held.insert(pickle.session_id(), InboundStateSession::from_pickle(pickle));
    }
    Ok(sessions
        .into_iter()
        .map(|session| match held.remove(&session.session_id()) {
            Some(mut kept) if kept.room_id() == session.room_id() => {
                kept.merge(session);
                kept
            }
            _ => session,
        })
        .collect())
}

/// Hands keys to the client's key store through matrix-sdk's public key import: an encrypted
/// key file in a private temporary directory, deleted right after.
async fn import_into_client(client: &Client, keys: &[ExportedRoomKey]) -> Result<()> {
    let passphrase = crate::keys::random_passphrase();
    let export = matrix_sdk_crypto::encrypt_room_key_export(keys, &passphrase, IMPORT_FILE_ROUNDS)?;
    let dir = tempfile::tempdir().map_err(state_store_ext::StoreError::from)?;
    let path = dir.path().join("bundle-keys.txt");
    let mut file = std::fs::File::create(&path).map_err(state_store_ext::StoreError::from)?;
    file.write_all(export.as_bytes()).map_err(state_store_ext::StoreError::from)?;
    drop(file);
    let result = client.encryption().import_room_keys(path, &passphrase).await?;
    debug!(imported = result.imported_count, total = result.total_count, "key import");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// Serves one request on loopback with `head` (status line and headers), then the `chunks`
    /// of a chunked body; with `chunks` `None` the connection stays open without a body.
    async fn serve_once(head: &'static str, chunks: Option<Vec<Vec<u8>>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/bundle", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let read = socket.read(&mut buffer).await.unwrap();
                request.extend_from_slice(&buffer[..read]);
            }
            socket.write_all(head.as_bytes()).await.unwrap();
            let Some(chunks) = chunks else {
                // Never send the body: a reader that waits for it hangs.
                std::future::pending::<()>().await;
                return;
            };
            for chunk in chunks {
                socket.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.unwrap();
                socket.write_all(&chunk).await.unwrap();
                socket.write_all(b"\r\n").await.unwrap();
            }
            socket.write_all(b"0\r\n\r\n").await.unwrap();
        });
        url
    }

    async fn fetch(url: &str, max: usize) -> Result<Vec<u8>, BundleImportError> {
        let response = matrix_sdk::reqwest::Client::new().get(url).send().await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), read_capped(response, max))
            .await
            .expect("the body is not awaited past the cap")
    }

    const CHUNKED: &str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";

    #[tokio::test]
    async fn a_body_without_length_is_cut_at_the_cap() {
        let url = serve_once(CHUNKED, Some(vec![vec![1; 100], vec![2; 100], vec![3; 100]])).await;
        let error = fetch(&url, 250).await.unwrap_err();
        // The size is where reading stopped: past the cap, within the bytes sent.
        assert!(
            matches!(
                error,
                BundleImportError::Bundle(BundleError::TooLarge { size: 251..=300, max: 250 })
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_body_without_length_within_the_cap_is_read_whole() {
        let url = serve_once(CHUNKED, Some(vec![vec![1; 100], vec![2; 100]])).await;
        let body = fetch(&url, 250).await.unwrap();
        assert_eq!(body.len(), 200);
        assert!(body[..100].iter().all(|b| *b == 1) && body[100..].iter().all(|b| *b == 2));
    }

    #[tokio::test]
    async fn an_announced_length_over_the_cap_is_refused_before_reading() {
        // The server sends no body at all: reading it would time out.
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
        let url = serve_once(head, None).await;
        let error = fetch(&url, 250).await.unwrap_err();
        assert!(
            matches!(
                error,
                BundleImportError::Bundle(BundleError::TooLarge { size: 1_000_000, .. })
            ),
            "{error}"
        );
    }
}
