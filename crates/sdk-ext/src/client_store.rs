//! The client's crypto store, shared with the extension: room keys read without a key file,
//! creator claims signed with the device's own key.

use std::{collections::BTreeSet, path::Path, sync::Arc};

use crypto_ext::{OwnDevice, vodozemac::Ed25519Signature};

use matrix_sdk::deserialized_responses::WithheldCode;
use matrix_sdk::{
    SqliteCryptoStore, SqliteEventCacheStore, SqliteMediaStore, SqliteStateStore,
    SqliteStoreConfig, config::StoreConfig as ClientStoreConfig,
    cross_process_lock::CrossProcessLockConfig,
};
use matrix_sdk_crypto::{
    olm::InboundGroupSession,
    store::{DynCryptoStore, IntoCryptoStore, MemoryStore},
    types::events::room_key_withheld::RoomKeyWithheldContent,
};
use ruma::RoomId;

use crate::{Error, Result};

/// The name matrix-sdk's `ClientBuilder` gives this process's holder of its cross-process
/// store lock; the stores opened here use the same.
const LOCK_HOLDER: &str = "main";

/// Up to this many wanted sessions are read one by one; more, with the room's.
const FEW_SESSIONS: usize = 16;

/// A handle on the crypto store a `matrix_sdk::Client` is built with, shared with the
/// extension (pass it in [`StateExtConfig::client_crypto_store`](crate::StateExtConfig)).
///
/// matrix-sdk offers no public way to read the room keys its crypto machine holds but a key
/// export (an encrypted file costing 500,000 PBKDF2 rounds to write and as many to read, with
/// every session of every room in it), and no way to sign with the device's Ed25519 key. With
/// this handle the extension reads a room's sessions straight from the store (as matrix-sdk's
/// own bundle builder does) and signs the creator claims of its state sessions. The handle is
/// checked at install to be the client's own store (same account and device keys).
///
/// Without it, the extension still works: bundles are built through a key export, a key
/// export never runs for anything another party sends (refusals of the client's machine keep
/// its reason, key requests are answered from the extension's store only), and our state
/// sessions carry no signed claim, so members who receive them from someone other than us
/// see their creator unproven.
#[derive(Clone)]
pub struct ClientCryptoStore {
    store: Arc<DynCryptoStore>,
}

impl std::fmt::Debug for ClientCryptoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCryptoStore").field("store", &self.store).finish()
    }
}

impl ClientCryptoStore {
    /// A handle on `store`, an opened crypto store (e.g. an `Arc<SqliteCryptoStore>`): give the
    /// client the store of [`ClientCryptoStore::store`], not another one opened on the same
    /// files.
    pub fn new(store: impl IntoCryptoStore) -> Self {
        Self { store: store.into_crypto_store() }
    }

    /// Opens matrix-sdk's SQLite stores in `path` as `ClientBuilder::sqlite_store(path,
    /// passphrase)` would, keeping a handle on the crypto store. Build the client with
    /// `ClientBuilder::store_config(config)` and the returned configuration:
    ///
    /// ```no_run
    /// # async fn example() -> anyhow::Result<()> {
    /// use sdk_ext::{ClientCryptoStore, StateExtConfig, StateExtension};
    ///
    /// let (config, crypto_store) =
    ///     ClientCryptoStore::open_sqlite("/path/to/app/data/matrix", Some("passphrase")).await?;
    /// let client = matrix_sdk::Client::builder()
    ///     .homeserver_url("https://matrix.example.org")
    ///     .store_config(config)
    ///     .with_enable_share_history_on_invite(false)
    ///     .build()
    ///     .await?;
    /// // ... log in or restore the session, then:
    /// let extension = StateExtension::install(
    ///     &client,
    ///     StateExtConfig::sqlite("/path/to/app/data/encrypted-state", "passphrase")
    ///         .with_client_crypto_store(crypto_store),
    /// )
    /// .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::ClientStore`] when a store cannot be opened (wrong passphrase, newer schema,
    /// I/O).
    pub async fn open_sqlite(
        path: impl AsRef<Path>,
        passphrase: Option<&str>,
    ) -> Result<(ClientStoreConfig, Self)> {
        let config = SqliteStoreConfig::new(path).passphrase(passphrase);
        let (state, event_cache, media, crypto) = tokio::try_join!(
            SqliteStateStore::open_with_config(&config),
            SqliteEventCacheStore::open_with_config(&config),
            SqliteMediaStore::open_with_config(&config),
            SqliteCryptoStore::open_with_config(&config),
        )
        .map_err(|e| Error::ClientStore(Box::new(e.into())))?;
        let handle = Self::new(Arc::new(crypto));
        let config = ClientStoreConfig::new(CrossProcessLockConfig::multi_process(LOCK_HOLDER))
            .state_store(state)
            .event_cache_store(event_cache)
            .media_store(media)
            .crypto_store(handle.store());
        Ok((config, handle))
    }

    /// matrix-sdk's in-memory stores (nothing survives the process), keeping a handle on the
    /// crypto store. Build the client with `ClientBuilder::store_config(config)`.
    pub fn in_memory() -> (ClientStoreConfig, Self) {
        let handle = Self::new(MemoryStore::new());
        let config = ClientStoreConfig::new(CrossProcessLockConfig::multi_process(LOCK_HOLDER))
            .crypto_store(handle.store());
        (config, handle)
    }

    /// The store, to give the client (`matrix_sdk::config::StoreConfig::crypto_store`).
    pub fn store(&self) -> Arc<DynCryptoStore> {
        self.store.clone()
    }

    /// Checks that the store holds `own`'s account: the same user, device and Ed25519 key.
    pub(crate) async fn check_owner(&self, own: &OwnDevice) -> Result<()> {
        let account = self
            .store
            .load_account()
            .await?
            .ok_or_else(|| Error::ForeignCryptoStore("it holds no account".to_owned()))?;
        if account.user_id() != own.user_id
            || account.device_id() != own.device_id
            || account.identity_keys().ed25519 != own.ed25519
        {
            return Err(Error::ForeignCryptoStore(format!(
                "it holds the account of {} on device {}",
                account.user_id(),
                account.device_id()
            )));
        }
        Ok(())
    }

    /// Signs `message` with the device's Ed25519 key. The account is read from the store for
    /// this call only: its private keys are not kept in memory.
    pub(crate) async fn sign(&self, message: &str) -> Result<Ed25519Signature> {
        let account = self
            .store
            .load_account()
            .await?
            .ok_or_else(|| Error::ForeignCryptoStore("it holds no account".to_owned()))?;
        Ok(account.sign(message))
    }

    /// The `m.history_not_shared` withheld notices the client keeps for `room_id` (received in
    /// bundles), to pass on in ours as matrix-sdk's own bundle does.
    pub(crate) async fn history_not_shared(
        &self,
        room_id: &RoomId,
    ) -> Result<Vec<RoomKeyWithheldContent>> {
        Ok(self
            .store
            .get_withheld_sessions_by_room_id(room_id)
            .await?
            .into_iter()
            .map(|entry| entry.content)
            .filter(|content| content.withheld_code() == WithheldCode::HistoryNotShared)
            .collect())
    }

    /// The room's Megolm sessions the client holds, exported from their first known index;
    /// only those of `wanted` when given. One store read per wanted session when they are few,
    /// else one read of the room's sessions.
    pub(crate) async fn room_sessions(
        &self,
        room_id: &RoomId,
        wanted: Option<&BTreeSet<String>>,
    ) -> Result<Vec<InboundGroupSession>> {
        match wanted {
            Some(ids) if ids.len() <= FEW_SESSIONS => {
                let mut sessions = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(session) = self.store.get_inbound_group_session(room_id, id).await?
                    {
                        sessions.push(session);
                    }
                }
                Ok(sessions)
            }
            _ => {
                let mut sessions =
                    self.store.get_inbound_group_sessions_by_room_id(room_id).await?;
                if let Some(ids) = wanted {
                    sessions.retain(|session| ids.contains(session.session_id()));
                }
                Ok(sessions)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use matrix_sdk_crypto::{
        olm::Account,
        store::{CryptoStore as _, types::PendingChanges},
    };
    use ruma::{device_id, user_id};

    use super::*;

    fn own(account: &Account) -> OwnDevice {
        OwnDevice {
            user_id: account.user_id().to_owned(),
            device_id: account.device_id().to_owned(),
            curve25519: account.identity_keys().curve25519,
            ed25519: account.identity_keys().ed25519,
        }
    }

    async fn store_with(account: Account) -> ClientCryptoStore {
        let store = MemoryStore::new();
        store.save_pending_changes(PendingChanges { account: Some(account) }).await.unwrap();
        ClientCryptoStore::new(store)
    }

    #[tokio::test]
    async fn only_the_clients_own_store_is_taken_and_it_signs_with_the_devices_key() {
        let alice = user_id!("@alice:example.org");
        let account = Account::with_device_id(alice, device_id!("ALICE"));
        let device = own(&account);
        let store = store_with(account).await;
        store.check_owner(&device).await.unwrap();
        let signature = store.sign("a claim").await.unwrap();
        device.ed25519.verify(b"a claim", &signature).unwrap();

        // Another device of the same user, another user, an empty store: refused.
        let other = own(&Account::with_device_id(alice, device_id!("OTHER")));
        let error = store.check_owner(&other).await.unwrap_err();
        assert!(matches!(error, Error::ForeignCryptoStore(_)), "{error}");
        let mallory =
            Account::with_device_id(user_id!("@mallory:example.org"), device_id!("ALICE"));
        let error = store_with(mallory).await.check_owner(&device).await.unwrap_err();
        assert!(matches!(error, Error::ForeignCryptoStore(_)), "{error}");
        let (_, empty) = ClientCryptoStore::in_memory();
        let error = empty.check_owner(&device).await.unwrap_err();
        assert!(matches!(error, Error::ForeignCryptoStore(_)), "{error}");
    }
}
