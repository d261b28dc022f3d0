//! A matrix-js-sdk client (Element Web's engine, with its Rust crypto through WASM and encrypted
//! state events on): the `interop/js-peer` Node program, installed by xtask with `npm ci`,
//! driven one JSON command per line.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context, Result, bail};
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

use crate::{homeserver_url, unique_name};

/// The environment variable with the path of the peer's program (`peer.mjs`).
pub const JS_PEER_ENV: &str = "JS_PEER";

/// How long one command may take (registering starts the WASM crypto and a first sync).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A user of the matrix-js-sdk peer: one Node process, stopped when dropped.
#[derive(Debug)]
pub struct JsPeer {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// The user's Matrix ID.
    pub user_id: OwnedUserId,
}

impl JsPeer {
    /// Starts the peer and registers a new user on it (with cross-signing), synced once.
    pub async fn register(prefix: &str) -> Result<Self> {
        let program = std::env::var(JS_PEER_ENV).map(PathBuf::from).with_context(|| {
            format!("{JS_PEER_ENV} is not set: run the interop tests with `cargo xtask test`")
        })?;
        let mut child = Command::new("node")
            .arg(&program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {}", program.display()))?;
        let stdin = child.stdin.take().context("the peer's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("the peer's stdout")?).lines();
        let mut peer =
            Self { _child: child, stdin, stdout, user_id: "@pending:localhost".try_into()? };
        let username = unique_name(prefix);
        let args = json!({
            "homeserver": homeserver_url()?,
            "username": username,
            "password": format!("{username}-password"),
        });
        let registered = peer.call("register", args).await?;
        peer.user_id = serde_json::from_value(registered["user_id"].clone())?;
        Ok(peer)
    }

    async fn call(&mut self, cmd: &str, args: Value) -> Result<Value> {
        let line = json!({ "cmd": cmd, "args": args }).to_string();
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let answer = tokio::time::timeout(COMMAND_TIMEOUT, async {
            while let Some(line) = self.stdout.next_line().await? {
                if let Ok(answer) = serde_json::from_str::<Value>(&line)
                    && answer.get("ok").is_some()
                {
                    return Ok(answer);
                }
            }
            bail!("the js peer exited")
        })
        .await
        .with_context(|| format!("the js peer did not answer {cmd} in {COMMAND_TIMEOUT:?}"))??;
        if answer["ok"] != Value::Bool(true) {
            bail!("js peer {cmd} failed: {}", answer["error"]);
        }
        Ok(answer["result"].clone())
    }

    /// Waits for the invite to `room_id` and accepts it at once (matrix-js-sdk imports the
    /// inviter's history bundle as it joins).
    pub async fn join(&mut self, room_id: &RoomId) -> Result<()> {
        self.call("join", json!({ "room_id": room_id, "timeout": 30 })).await.map(drop)
    }

    /// Creates a private room whose first `m.room.encryption` switches on encrypted state.
    pub async fn create_room(&mut self) -> Result<OwnedRoomId> {
        let created = self.call("create_room", json!({})).await?;
        Ok(serde_json::from_value(created["room_id"].clone())?)
    }

    /// Invites `user_id`; matrix-js-sdk shares the room's history with them first (MSC4268).
    pub async fn invite(&mut self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        self.call("invite", json!({ "room_id": room_id, "user_id": user_id })).await.map(drop)
    }

    /// Sets the room name the matrix-js-sdk way (encrypted when the room encrypts its state).
    pub async fn set_name(&mut self, room_id: &RoomId, name: &str) -> Result<()> {
        self.call("set_name", json!({ "room_id": room_id, "name": name })).await.map(drop)
    }

    /// Sends an encrypted text message.
    pub async fn send(&mut self, room_id: &RoomId, body: &str) -> Result<()> {
        self.call("send", json!({ "room_id": room_id, "body": body })).await.map(drop)
    }

    /// Waits until the peer shows `name` (and `topic`, when given) for the room, or
    /// `timeout_secs` pass; returns whether it did and what it showed.
    pub async fn wait_for_state(
        &mut self,
        room_id: &RoomId,
        name: &str,
        topic: Option<&str>,
        timeout_secs: u64,
    ) -> Result<(bool, Value)> {
        let args =
            json!({ "room_id": room_id, "name": name, "topic": topic, "timeout": timeout_secs });
        let answer = self.call("wait_state", args).await?;
        Ok((answer["matched"] == Value::Bool(true), answer["seen"].clone()))
    }

    /// Waits until a message with `body` decrypts in the room's timeline, or `timeout_secs`
    /// pass; returns whether it did.
    pub async fn wait_for_message(
        &mut self,
        room_id: &RoomId,
        body: &str,
        timeout_secs: u64,
    ) -> Result<bool> {
        let args = json!({ "room_id": room_id, "body": body, "timeout": timeout_secs });
        Ok(self.call("wait_message", args).await?["found"] == Value::Bool(true))
    }
}
