//! A client built on stock matrix-sdk 0.18 with its experimental encrypted-state feature (the
//! `interop/stock-client` binary, built outside our workspace by xtask), driven command by
//! command.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::Value;
use tempfile::TempDir;

use crate::{homeserver_url, unique_name};

/// The environment variable with the path of the stock client binary.
pub const STOCK_CLIENT_ENV: &str = "STOCK_CLIENT_BIN";

/// A user of the stock client, with its own store directory.
#[derive(Debug)]
pub struct StockClient {
    bin: PathBuf,
    homeserver: String,
    dir: TempDir,
    /// The user's Matrix ID.
    pub user_id: OwnedUserId,
}

impl StockClient {
    /// Registers a new user on the stock client (with cross-signing).
    pub async fn register(prefix: &str) -> Result<Self> {
        let bin = std::env::var(STOCK_CLIENT_ENV).map(PathBuf::from).with_context(|| {
            format!("{STOCK_CLIENT_ENV} is not set: run the interop tests with `cargo xtask test`")
        })?;
        let homeserver = homeserver_url()?;
        let dir = tempfile::tempdir()?;
        let username = unique_name(prefix);
        let mut client =
            Self { bin, homeserver, dir, user_id: format!("@{username}:localhost").try_into()? };
        let output = client.run(&["register", &username, &format!("{username}-password")]).await?;
        client.user_id = serde_json::from_value(output["user_id"].clone())?;
        Ok(client)
    }

    async fn run(&self, args: &[&str]) -> Result<Value> {
        let dir = self.dir.path().to_str().context("UTF-8 path")?;
        let output = tokio::process::Command::new(&self.bin)
            .arg(&self.homeserver)
            .arg(dir)
            .args(args)
            .output()
            .await
            .with_context(|| format!("running {}", self.bin.display()))?;
        if !output.status.success() {
            bail!(
                "stock client {args:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let stdout = String::from_utf8(output.stdout)?;
        let last = stdout.lines().last().context("no output")?;
        Ok(serde_json::from_str(last)?)
    }

    /// Waits for the invite to `room_id` and joins.
    pub async fn join(&self, room_id: &RoomId) -> Result<()> {
        self.run(&["join", room_id.as_str()]).await.map(drop)
    }

    /// Sets the room name the stock way (encrypted when the room has encrypted state).
    pub async fn set_name(&self, room_id: &RoomId, name: &str) -> Result<()> {
        self.run(&["set-name", room_id.as_str(), name]).await.map(drop)
    }

    /// Sets the room topic the stock way.
    pub async fn set_topic(&self, room_id: &RoomId, topic: &str) -> Result<()> {
        self.run(&["set-topic", room_id.as_str(), topic]).await.map(drop)
    }

    /// Creates an end-to-end encrypted private room with `history_visibility`.
    pub async fn create_room(&self, history_visibility: &str) -> Result<OwnedRoomId> {
        let output = self.run(&["create-room", history_visibility]).await?;
        Ok(serde_json::from_value(output["room_id"].clone())?)
    }

    /// Sends an encrypted text message.
    pub async fn send(&self, room_id: &RoomId, body: &str) -> Result<()> {
        self.run(&["send", room_id.as_str(), body]).await.map(drop)
    }

    /// Invites `user_id` the stock way (matrix-sdk shares history on invite by default).
    pub async fn invite(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        self.run(&["invite", room_id.as_str(), user_id.as_str()]).await.map(drop)
    }

    /// Syncs until a message with `body` decrypts in the room's history (or `timeout_secs`
    /// pass); returns whether it did and who shared its key.
    pub async fn wait_for_message(
        &self,
        room_id: &RoomId,
        body: &str,
        timeout_secs: u64,
    ) -> Result<(bool, Option<OwnedUserId>)> {
        let output =
            self.run(&["wait-message", room_id.as_str(), body, &timeout_secs.to_string()]).await?;
        let forwarder = serde_json::from_value(output["forwarder"].clone()).unwrap_or(None);
        Ok((output["found"] == Value::Bool(true), forwarder))
    }

    /// Syncs until the stock client shows `name` and `topic` (or `timeout_secs` pass); returns
    /// whether it did, and what it showed.
    pub async fn wait_for_state(
        &self,
        room_id: &RoomId,
        name: &str,
        topic: &str,
        timeout_secs: u64,
    ) -> Result<(bool, Value)> {
        let output = self
            .run(&["wait-state", room_id.as_str(), name, topic, &timeout_secs.to_string()])
            .await?;
        Ok((output["matched"] == Value::Bool(true), output))
    }
}
