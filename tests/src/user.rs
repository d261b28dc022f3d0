//! Registering uniquely named users on the test homeserver, each with a SQLite store.

use std::{
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use matrix_sdk::{
    Client,
    encryption::EncryptionSettings,
    ruma::api::client::{
        account::register::v3::Request as RegistrationRequest,
        uiaa::{AuthData, Dummy},
    },
};
use sdk_ext::ClientCryptoStore;
use tempfile::TempDir;

/// The environment variable holding the homeserver's base URL.
pub const URL_ENV: &str = "MATRIX_HOMESERVER_URL";

/// The homeserver's URL, or an error telling how to get one.
pub fn homeserver_url() -> Result<String> {
    std::env::var(URL_ENV).with_context(|| {
        format!(
            "{URL_ENV} is not set: run the integration suite with `cargo xtask test`, or start a \
             server with `cargo xtask synapse start` and export the URL it prints"
        )
    })
}

/// A user name that no other test, process or earlier run has used: `{prefix}-{time}-{pid}-{n}`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{millis}-{}-{n}", std::process::id())
}

/// A registered, logged-in user with its own SQLite store in a temporary directory.
#[derive(Debug)]
pub struct TestUser {
    /// The logged-in client.
    pub client: Client,
    /// The account password (also needed for user-interactive auth).
    pub password: String,
    /// Where the client's stores live; deleted when the user is dropped.
    pub store_dir: TempDir,
    /// The client's crypto store, shared with the extension.
    pub crypto_store: ClientCryptoStore,
}

impl TestUser {
    /// Registers a new user whose name starts with `prefix`, logs it in with a fresh SQLite
    /// store, and sets up its cross-signing identity.
    pub async fn register(prefix: &str) -> Result<Self> {
        let user = Self::register_without_cross_signing(prefix).await?;
        user.bootstrap_cross_signing().await?;
        Ok(user)
    }

    /// Registers a new user like [`TestUser::register`], but leaves it without a cross-signing
    /// identity.
    pub async fn register_without_cross_signing(prefix: &str) -> Result<Self> {
        Self::register_on_without_cross_signing(&homeserver_url()?, prefix).await
    }

    /// Registers a new user like [`TestUser::register`] on the homeserver at `url` (a server
    /// of the test's own).
    pub async fn register_on(url: &str, prefix: &str) -> Result<Self> {
        let user = Self::register_on_without_cross_signing(url, prefix).await?;
        user.bootstrap_cross_signing().await?;
        Ok(user)
    }

    async fn register_on_without_cross_signing(url: &str, prefix: &str) -> Result<Self> {
        let store_dir = tempfile::tempdir()?;
        let username = unique_name(prefix);
        let password = format!("{username}-password");
        let (builder, crypto_store) = Self::client_builder_on(url, store_dir.path()).await?;
        let client = builder.build().await?;

        let mut request = RegistrationRequest::new();
        request.username = Some(username.clone());
        request.password = Some(password.clone());
        request.auth = Some(AuthData::Dummy(Dummy::new()));
        client
            .matrix_auth()
            .register(request)
            .await
            .with_context(|| format!("registering {username}"))?;
        if !client.is_active() {
            bail!("registering {username} did not log the client in");
        }

        Ok(Self { client, password, store_dir, crypto_store })
    }

    /// A client builder for the test homeserver, with SQLite stores in `dir`, and the handle
    /// on its crypto store that the extension shares.
    pub async fn client_builder(
        dir: &TempDir,
    ) -> Result<(matrix_sdk::ClientBuilder, ClientCryptoStore)> {
        Self::client_builder_at(dir.path()).await
    }

    /// [`TestUser::client_builder`] for a store directory another process created.
    pub async fn client_builder_at(
        dir: &Path,
    ) -> Result<(matrix_sdk::ClientBuilder, ClientCryptoStore)> {
        Self::client_builder_on(&homeserver_url()?, dir).await
    }

    /// [`TestUser::client_builder_at`] for the homeserver at `url`.
    async fn client_builder_on(
        url: &str,
        dir: &Path,
    ) -> Result<(matrix_sdk::ClientBuilder, ClientCryptoStore)> {
        let (stores, crypto_store) = ClientCryptoStore::open_sqlite(dir, None).await?;
        let builder = Client::builder()
            .homeserver_url(url)
            .store_config(stores)
            .with_encryption_settings(EncryptionSettings::default())
            // The extension receives shared history itself.
            .with_enable_share_history_on_invite(false);
        Ok((builder, crypto_store))
    }

    /// Uploads cross-signing keys (if the account has none yet) and checks they are in place.
    pub async fn bootstrap_cross_signing(&self) -> Result<()> {
        example_bots::set_up_cross_signing(&self.client, &self.password).await
    }

    /// Simulates an app restart: drops the client and builds a new one on the same stores,
    /// restoring the session.
    pub async fn restart(self) -> Result<Self> {
        let (store_dir, password, session) = self.stop()?;
        Self::restore(store_dir, password, &session).await
    }

    /// Drops the client, keeping what a new process needs to take over: the store directory,
    /// the password, and the session as JSON.
    pub fn stop(self) -> Result<(TempDir, String, String)> {
        let session = self.client.matrix_auth().session().context("logged in")?;
        let session = serde_json::to_string(&session)?;
        let Self { client, password, store_dir, crypto_store } = self;
        drop(client);
        drop(crypto_store);
        Ok((store_dir, password, session))
    }

    /// A client on stores left by [`TestUser::stop`] (in this or another process), with the
    /// session restored.
    pub async fn restore(store_dir: TempDir, password: String, session: &str) -> Result<Self> {
        let (client, crypto_store) = restore_client(store_dir.path(), session).await?;
        Ok(Self { client, password, store_dir, crypto_store })
    }

    /// Logs the same account in again: a new device, with its own stores, whose keys the
    /// homeserver has once it synced.
    pub async fn login_new_device(&self) -> Result<Self> {
        let store_dir = tempfile::tempdir()?;
        let (builder, crypto_store) = Self::client_builder(&store_dir).await?;
        let client = builder.build().await?;
        client
            .matrix_auth()
            .login_username(self.user_id(), &self.password)
            .send()
            .await
            .with_context(|| format!("logging {} in again", self.user_id()))?;
        Ok(Self { client, password: self.password.clone(), store_dir, crypto_store })
    }

    /// This client's device and its identity keys (as a crafted session would name its creator).
    pub async fn own_device(&self) -> Result<sdk_ext::OwnDevice> {
        let device = self.client.encryption().get_own_device().await?.context("own device")?;
        Ok(sdk_ext::OwnDevice {
            user_id: self.user_id().to_owned(),
            device_id: device.device_id().to_owned(),
            curve25519: device.curve25519_key().context("curve25519 key")?,
            ed25519: device.ed25519_key().context("ed25519 key")?,
        })
    }

    /// The user's Matrix ID.
    pub fn user_id(&self) -> &matrix_sdk::ruma::UserId {
        self.client.user_id().expect("a TestUser is always logged in")
    }

    /// Sends `content` as an Olm-encrypted to-device event of `event_type` to every device of
    /// `recipient` (a hand-made message, as our extension or a misbehaving client would send).
    pub async fn send_to_devices(
        &self,
        recipient: &matrix_sdk::ruma::UserId,
        event_type: &str,
        content: &serde_json::Value,
    ) -> Result<()> {
        let encryption = self.client.encryption();
        encryption.request_user_identity(recipient).await?;
        let devices = encryption.get_user_devices(recipient).await?;
        let failures = encryption
            .encrypt_and_send_raw_to_device(
                devices.devices().collect::<Vec<_>>().iter().collect(),
                event_type,
                matrix_sdk::ruma::serde::Raw::new(content)?.cast_unchecked(),
                Default::default(),
            )
            .await?;
        anyhow::ensure!(failures.is_empty(), "not delivered to {failures:?}");
        Ok(())
    }

    /// Shares `crafter`'s session for `room_id` as an ordinary `m.room_key` from this user's
    /// device with every device of each of `recipients` (the session's creator, proven by the
    /// Olm message, is this device).
    pub async fn share_crafted_session(
        &self,
        crafter: &crypto_ext::testing::Crafter,
        room_id: &matrix_sdk::ruma::RoomId,
        recipients: &[&matrix_sdk::ruma::UserId],
    ) -> Result<()> {
        let content: serde_json::Value =
            serde_json::from_str(crafter.room_key_content(room_id).json().get())?;
        for recipient in recipients {
            self.send_to_devices(recipient, "m.room_key", &content).await?;
        }
        Ok(())
    }
}

/// A client on the stores in `dir`, with `session` (JSON from [`TestUser::stop`]) restored, and
/// the handle on its crypto store.
pub async fn restore_client(dir: &Path, session: &str) -> Result<(Client, ClientCryptoStore)> {
    let session: matrix_sdk::authentication::matrix::MatrixSession =
        serde_json::from_str(session).context("a session from TestUser::stop")?;
    let (builder, crypto_store) = TestUser::client_builder_at(dir).await?;
    let client = builder.build().await?;
    client
        .matrix_auth()
        .restore_session(session, matrix_sdk::store::RoomLoadSettings::default())
        .await?;
    Ok((client, crypto_store))
}
