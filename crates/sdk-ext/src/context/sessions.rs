//! Session helpers: stored sessions, further-reaching copies, keys at an index, key files.
//!
//! The client's key store is read from the shared crypto store when the app shares it, else
//! through matrix-sdk's key export (our own actions only); keys go in through matrix-sdk's key
//! import, the only public way to add them.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    sync::atomic::Ordering,
};

use crypto_ext::{
    CreatorClaim, ImportKeyError, InboundStateSession, KeyOrigin, OutboundStateSession,
};
use matrix_sdk_crypto::{
    olm::ExportedRoomKey, types::events::room_key_withheld::RoomKeyWithheldContent,
};
use ruma::RoomId;
use state_store_ext::{StateChanges, StoreError};
use tracing::debug;

use super::handle::Context;
use crate::Result;

/// PBKDF2 rounds of the key file handed to `Encryption::import_room_keys`. The file lives in a
/// private temporary directory for the duration of one call, under a random 40-character
/// passphrase: the passphrase's entropy protects it, not the rounds.
const IMPORT_FILE_ROUNDS: u32 = 1_000;

/// Whether reading the client's keys may fall back to a key export when the client's crypto
/// store is not shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyRead {
    /// Our own action (inviting with history): a key export is acceptable.
    MayExport,
    /// Work a remote party's event or message leads to: never a key export.
    NoExport,
}

/// A copy of a Megolm session the client's crypto store holds.
pub(crate) struct ClientKey {
    /// The exported key.
    pub(crate) key: ExportedRoomKey,
    /// Whether the store holds it as imported (a key file, a backup, a forwarded key, a bundle)
    /// rather than received from its creator.
    imported: bool,
}

impl ClientKey {
    /// The copy as a state session of `room_id`, labelled with where the client got it: a key
    /// it received as `m.room_key` over Olm is its creator's (matrix-sdk-crypto builds such a
    /// session with the Olm sender's key as its creator, [`KeyOrigin::Direct`], proven); any
    /// other is [`KeyOrigin::Imported`], its creator only claimed.
    pub(crate) fn state_session(
        &self,
        room_id: &RoomId,
    ) -> std::result::Result<InboundStateSession, ImportKeyError> {
        if self.imported {
            InboundStateSession::import(room_id, &self.key, KeyOrigin::Imported)
        } else {
            Ok(InboundStateSession::import(room_id, &self.key, KeyOrigin::Direct)?
                .shared_by_device(Some(self.key.sender_key)))
        }
    }
}

impl Context {
    /// The state sessions of `room_id` among `session_ids`, from our store.
    pub(crate) async fn stored_sessions(
        &self,
        room_id: &RoomId,
        session_ids: &[String],
    ) -> Result<Vec<InboundStateSession>> {
        Ok(self
            .store
            .inbound_sessions(session_ids)
            .await?
            .into_iter()
            .filter(|pickle| pickle.room_id() == room_id)
            .map(InboundStateSession::from_pickle)
            .collect())
    }

    /// Each of `sessions`, or the copy we already hold if that one reaches further back (an
    /// import never loses the ability to decrypt something we could read before). One store
    /// query for the whole batch.
    pub(crate) async fn keep_further_reaching(
        &self,
        sessions: Vec<InboundStateSession>,
    ) -> Result<Vec<InboundStateSession>> {
        let ids: Vec<String> = sessions.iter().map(InboundStateSession::session_id).collect();
        let mut held: BTreeMap<String, InboundStateSession> = BTreeMap::new();
        for pickle in self.store.inbound_sessions(&ids).await? {
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

    /// Stores `sessions` (each merged with the copy we hold, see
    /// [`Context::keep_further_reaching`]) with `changes`, in one transaction. Returns what was
    /// stored.
    pub(crate) async fn store_sessions(
        &self,
        sessions: Vec<InboundStateSession>,
        mut changes: StateChanges,
    ) -> Result<Vec<InboundStateSession>> {
        let kept = self.keep_further_reaching(sessions).await?;
        changes.inbound_sessions.extend(kept.iter().map(InboundStateSession::pickle));
        self.store.save_changes(changes).await?;
        Ok(kept)
    }

    /// The keys of a room's state sessions, each exported at the index given (the index of the
    /// slot's current event, so nobody learns an earlier value). Keys sent to us by their
    /// creators live in the client's key store: they are copied into ours first, so later calls
    /// find them there; read only from the shared crypto store, never through a key export (a
    /// remote party's request can lead here). Sessions we hold nowhere are left out.
    pub(crate) async fn keys_at_index(
        &self,
        room_id: &RoomId,
        indices: &BTreeMap<String, u32>,
    ) -> Result<Vec<ExportedRoomKey>> {
        self.keys_at_index_with(room_id, indices, None).await
    }

    /// [`Context::keys_at_index`], taking the keys ours lacks from `client_keys` (the room's
    /// sessions in the client's store, already read by the caller) instead of a second read.
    pub(crate) async fn keys_at_index_with(
        &self,
        room_id: &RoomId,
        indices: &BTreeMap<String, u32>,
        client_keys: Option<&[ClientKey]>,
    ) -> Result<Vec<ExportedRoomKey>> {
        let wanted: Vec<String> = indices.keys().cloned().collect();
        let mut sessions = self.stored_sessions(room_id, &wanted).await?;
        let held: BTreeSet<String> = sessions.iter().map(InboundStateSession::session_id).collect();
        let missing: BTreeSet<String> = wanted.into_iter().filter(|s| !held.contains(s)).collect();
        if !missing.is_empty() {
            let read;
            let client_keys = match client_keys {
                Some(keys) => keys,
                None => {
                    read = self.client_keys(room_id, Some(&missing), KeyRead::NoExport).await?;
                    &read[..]
                }
            };
            let copied: Vec<InboundStateSession> = client_keys
                .iter()
                .filter(|copy| missing.contains(&copy.key.session_id))
                .filter_map(|copy| copy.state_session(room_id).ok())
                .collect();
            sessions.extend(self.store_sessions(copied, StateChanges::default()).await?);
        }
        Ok(sessions
            .iter_mut()
            .filter_map(|session| {
                let index = indices.get(&session.session_id())?;
                session.export_at(*index)
            })
            .collect())
    }

    /// The copy of one of `room_id`'s Megolm sessions the client holds, from the shared crypto
    /// store only (never a key export: a remote party's event leads here); `None` without it.
    pub(crate) async fn client_key(
        &self,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<Option<ClientKey>> {
        let wanted = BTreeSet::from([session_id.to_owned()]);
        let keys = self.client_keys(room_id, Some(&wanted), KeyRead::NoExport).await?;
        Ok(keys.into_iter().find(|copy| copy.key.session_id == session_id))
    }

    /// Copies of `room_id`'s Megolm sessions the client holds (only those of `wanted` when
    /// given), from the shared crypto store when there is one. Without it, `read` decides:
    /// [`KeyRead::MayExport`] goes through matrix-sdk's key export, [`KeyRead::NoExport`]
    /// finds nothing.
    pub(crate) async fn client_keys(
        &self,
        room_id: &RoomId,
        wanted: Option<&BTreeSet<String>>,
        read: KeyRead,
    ) -> Result<Vec<ClientKey>> {
        if let Some(store) = &self.config.client_crypto_store {
            let mut keys = Vec::new();
            for session in store.room_sessions(room_id, wanted).await? {
                keys.push(ClientKey {
                    imported: session.has_been_imported(),
                    key: session.export().await,
                });
            }
            return Ok(keys);
        }
        match read {
            KeyRead::NoExport => Ok(Vec::new()),
            KeyRead::MayExport => {
                self.export_sessions(|session| {
                    session.room_id() == room_id
                        && wanted.is_none_or(|ids| ids.contains(session.session_id()))
                })
                .await
            }
        }
    }

    /// The `m.history_not_shared` notices the client received for `room_id` (in bundles), to
    /// pass on; none without the shared crypto store (matrix-sdk offers no other way to read
    /// them).
    pub(crate) async fn received_withheld(
        &self,
        room_id: &RoomId,
    ) -> Result<Vec<RoomKeyWithheldContent>> {
        match &self.config.client_crypto_store {
            Some(store) => store.history_not_shared(room_id).await,
            None => Ok(Vec::new()),
        }
    }

    /// Copies of the Megolm sessions the client's `OlmMachine` holds that match `predicate`,
    /// through matrix-sdk's key export: an encrypted file with a random passphrase in a private
    /// temporary directory, deleted right after.
    async fn export_sessions(
        &self,
        mut predicate: impl FnMut(&matrix_sdk_crypto::olm::InboundGroupSession) -> bool,
    ) -> Result<Vec<ClientKey>> {
        self.key_exports.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::tempdir().map_err(StoreError::from)?;
        let path = dir.path().join("key-export.txt");
        let passphrase = random_passphrase();
        // The export format drops whether a session was imported: noted here, from the
        // sessions themselves.
        let mut imported = BTreeSet::new();
        let select = |session: &matrix_sdk_crypto::olm::InboundGroupSession| {
            let wanted = predicate(session);
            if wanted && session.has_been_imported() {
                imported.insert(session.session_id().to_owned());
            }
            wanted
        };
        self.client.encryption().export_room_keys(path.clone(), &passphrase, select).await?;
        // Reading the file back costs as much key derivation as writing it: off the async
        // workers, and a failure is an error, never an empty list.
        let keys = tokio::task::spawn_blocking(move || -> Result<Vec<ExportedRoomKey>> {
            let file = std::fs::File::open(&path).map_err(StoreError::from)?;
            Ok(matrix_sdk_crypto::decrypt_room_key_export(file, &passphrase)?)
        })
        .await
        .map_err(StoreError::from)??;
        Ok(keys
            .into_iter()
            .map(|key| ClientKey { imported: imported.contains(&key.session_id), key })
            .collect())
    }

    /// Signs `session`'s creator claim with our device's key when it has none yet (a new or
    /// rotated session) and the client's crypto store is shared; without it, our sessions carry
    /// no claim.
    pub(crate) async fn sign_creator_claim(
        &self,
        session: &mut OutboundStateSession,
    ) -> Result<()> {
        let Some(store) = &self.config.client_crypto_store else { return Ok(()) };
        if session.creator_claim().is_some() {
            return Ok(());
        }
        let signature = store.sign(&session.creator_claim_text(&self.own_device)).await?;
        session.set_creator_claim(CreatorClaim {
            device_id: self.own_device.device_id.clone(),
            signature: signature.to_base64(),
        });
        Ok(())
    }

    /// Hands keys to the client's key store through matrix-sdk's public key import: an
    /// encrypted key file in a private temporary directory, deleted right after.
    pub(crate) async fn import_into_client(&self, keys: Vec<ExportedRoomKey>) -> Result<()> {
        let passphrase = random_passphrase();
        let dir = tempfile::tempdir().map_err(StoreError::from)?;
        let path = dir.path().join("bundle-keys.txt");
        // JSON, AES and HMAC over megabytes, and the file's write: off the async workers.
        let (file_path, file_passphrase) = (path.clone(), passphrase.clone());
        tokio::task::spawn_blocking(move || -> Result<()> {
            let export = matrix_sdk_crypto::encrypt_room_key_export(
                &keys,
                &file_passphrase,
                IMPORT_FILE_ROUNDS,
            )?;
            let mut file = std::fs::File::create(&file_path).map_err(StoreError::from)?;
            file.write_all(export.as_bytes()).map_err(StoreError::from)?;
            Ok(())
        })
        .await
        .map_err(StoreError::from)??;
        let result = self.client.encryption().import_room_keys(path, &passphrase).await?;
        debug!(imported = result.imported_count, total = result.total_count, "key import");
        Ok(())
    }
}

/// A random passphrase for a key file that lives only for one call.
fn random_passphrase() -> String {
    // Transaction ids are random alphanumeric strings from the OS generator.
    format!("{}{}", ruma::TransactionId::new(), ruma::TransactionId::new())
}

#[cfg(test)]
mod tests {
    use crypto_ext::{
        OwnDevice,
        testing::Crafter,
        vodozemac::{Curve25519SecretKey, Ed25519Keypair},
    };
    use ruma::{device_id, room_id, user_id};

    use crypto_ext::vodozemac::Curve25519PublicKey;

    use super::*;

    fn creator() -> OwnDevice {
        OwnDevice {
            user_id: user_id!("@alice:example.org").to_owned(),
            device_id: device_id!("ALICE").to_owned(),
            curve25519: Curve25519PublicKey::from(&Curve25519SecretKey::new()),
            ed25519: Ed25519Keypair::new().public_key(),
        }
    }

    /// A key the client received from its creator is `Direct` and proven; an imported one keeps
    /// an unproven creator, whatever it claims.
    #[test]
    fn a_client_key_keeps_its_real_origin() {
        let room_id = room_id!("!room:example.org");
        for (imported, origin, proven) in
            [(false, KeyOrigin::Direct, true), (true, KeyOrigin::Imported, false)]
        {
            let key = Crafter::new().exported_key(room_id, &creator());
            let session = ClientKey { key, imported }.state_session(room_id).unwrap();
            assert_eq!(session.key_origin(), &origin);
            assert_eq!(session.creator_proven(), proven);
        }
    }
}
