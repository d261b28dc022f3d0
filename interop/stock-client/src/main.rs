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
    room::MessagesOptions,
    ruma::{
        OwnedRoomId, OwnedUserId,
        api::client::{
            account::register::v3::Request as RegistrationRequest,
            room::create_room::v3::{Request as CreateRoomRequest, RoomPreset},
            uiaa::{AuthData, Dummy},
        },
        events::{
            InitialStateEvent,
            room::{
                encryption::RoomEncryptionEventContent,
                history_visibility::{HistoryVisibility, RoomHistoryVisibilityEventContent},
                message::RoomMessageEventContent,
            },
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
        // An end-to-end encrypted private room with the given history visibility.
        ("create-room", [visibility]) => {
            let mut request = CreateRoomRequest::new();
            request.preset = Some(RoomPreset::PrivateChat);
            request.initial_state = vec![
                InitialStateEvent::with_empty_state_key(
                    RoomEncryptionEventContent::with_recommended_defaults(),
                )
                .to_raw_any(),
                InitialStateEvent::with_empty_state_key(RoomHistoryVisibilityEventContent::new(
                    HistoryVisibility::from(visibility.as_str()),
                ))
                .to_raw_any(),
            ];
            let room = client.create_room(request).await?;
            json!({ "room_id": room.room_id() })
        }
        ("send", [room_id, body]) => {
            let room = room(client, room_id).await?;
            let result = room.send(RoomMessageEventContent::text_plain(body)).await?;
            json!({ "event_id": result.response.event_id })
        }
        // matrix-sdk's own invite, which shares history on invite (enabled by default).
        ("invite", [room_id, user_id]) => {
            let room = room(client, room_id).await?;
            room.invite_user_by_id(&OwnedUserId::try_from(user_id.as_str())?).await?;
            json!({ "invited": user_id })
        }
        // Syncs until a message with `body` decrypts in the room's history (or the timeout);
        // prints whether it did and who shared its key.
        ("wait-message", [room_id, body, timeout_secs]) => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs.parse()?);
            let room_id: OwnedRoomId = room_id.as_str().try_into()?;
            loop {
                sync(client).await?;
                let room = client.get_room(&room_id).context("unknown room")?;
                let messages = room.messages(MessagesOptions::backward()).await?;
                let found = messages.chunk.iter().find(|event| {
                    event
                        .raw()
                        .get_field::<serde_json::Value>("content")
                        .ok()
                        .flatten()
                        .is_some_and(|content| content["body"] == body.as_str())
                });
                if let Some(event) = found {
                    let forwarder = event
                        .encryption_info()
                        .and_then(|info| info.forwarder.as_ref().map(|f| f.user_id.clone()));
                    break json!({ "found": true, "forwarder": forwarder });
                }
                if tokio::time::Instant::now() > deadline {
                    break json!({ "found": false });
                }
            }
        }
        _ => bail!("unknown command {command} {args:?}"),
    })
}
