//! A command-line Matrix client on stock matrix-sdk 0.18 (feature
//! `experimental-encrypted-state-events`), driven by the interop tests.
//!
//! `stock-client <homeserver> <store_dir> <command> [args..]`; each command restores the session
//! from `store_dir`, does its work and prints one JSON line.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use matrix_sdk::{
    Client,
    authentication::matrix::MatrixSession,
    config::SyncSettings,
    ruma::{
        OwnedRoomId,
        api::client::{
            account::register::v3::Request as RegistrationRequest,
            uiaa::{AuthData, Dummy},
        },
    },
    store::RoomLoadSettings,
};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [homeserver, store_dir, command, rest @ ..] = args.as_slice() else {
        bail!("usage: stock-client <homeserver> <store_dir> <command> [args..]");
    };
    let store_dir = PathBuf::from(store_dir);
    let client =
        Client::builder().homeserver_url(homeserver).sqlite_store(&store_dir, None).build().await?;
    let session_file = store_dir.join("session.json");

    let output = match (command.as_str(), rest) {
        ("register", [username, password]) => {
            let mut request = RegistrationRequest::new();
            request.username = Some(username.clone());
            request.password = Some(password.clone());
            request.auth = Some(AuthData::Dummy(Dummy::new()));
            client.matrix_auth().register(request).await?;
            client.encryption().bootstrap_cross_signing_if_needed(None).await?;
            let session = client.matrix_auth().session().context("logged in")?;
            std::fs::write(&session_file, serde_json::to_vec(&session)?)?;
            client.sync_once(SyncSettings::default().timeout(Duration::from_secs(1))).await?;
            json!({ "user_id": client.user_id(), "device_id": client.device_id() })
        }
        (command, rest) => {
            let session: MatrixSession = serde_json::from_slice(&std::fs::read(&session_file)?)?;
            client.matrix_auth().restore_session(session, RoomLoadSettings::default()).await?;
            run(&client, command, rest).await?
        }
    };
    println!("{output}");
    Ok(())
}

async fn sync(client: &Client) -> Result<()> {
    client.sync_once(SyncSettings::default().timeout(Duration::from_secs(1))).await?;
    Ok(())
}

async fn room(client: &Client, room_id: &str) -> Result<matrix_sdk::Room> {
    let room_id: OwnedRoomId = room_id.try_into()?;
    sync(client).await?;
    client.get_room(&room_id).context("unknown room")
}

async fn run(client: &Client, command: &str, args: &[String]) -> Result<serde_json::Value> {
    Ok(match (command, args) {
        ("join", [room_id]) => {
            let room_id: OwnedRoomId = room_id.as_str().try_into()?;
            for _ in 0..30 {
                sync(client).await?;
                if client.get_room(&room_id).is_some() {
                    break;
                }
            }
            client.join_room_by_id(&room_id).await?;
            sync(client).await?;
            json!({ "joined": room_id })
        }
        ("set-name", [room_id, name]) => {
            let room = room(client, room_id).await?;
            let response = room.set_name(name.clone()).await?;
            json!({ "event_id": response.event_id })
        }
        ("set-topic", [room_id, topic]) => {
            let room = room(client, room_id).await?;
            let response = room.set_room_topic(topic).await?;
            json!({ "event_id": response.event_id })
        }
        // Syncs until the room's name and topic are the expected ones, or the timeout passes;
        // prints what it saw either way (the caller asserts).
        ("wait-state", [room_id, name, topic, timeout_secs]) => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs.parse()?);
            let room_id: OwnedRoomId = room_id.as_str().try_into()?;
            loop {
                sync(client).await?;
                let room = client.get_room(&room_id).context("unknown room")?;
                let (seen_name, seen_topic) = (room.name(), room.topic());
                let matched = seen_name.as_deref() == Some(name.as_str())
                    && seen_topic.as_deref() == Some(topic.as_str());
                if matched || tokio::time::Instant::now() > deadline {
                    break json!({ "matched": matched, "name": seen_name, "topic": seen_topic });
                }
            }
        }
        _ => bail!("unknown command {command} {args:?}"),
    })
}
