//! The example scenario behind `cargo xtask demo`; the smoke test runs the same code.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use matrix_sdk::{
    deserialized_responses::EncryptionInfo,
    ruma::events::room::message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent},
};
use sdk_ext::{RoomHistoryExt, RoomStateExt};

use crate::{DEFAULT_TIMEOUT, StateUser, join, server_state, shared_room, sync_until, wait_until};

/// Prints numbered steps in plain words.
#[derive(Debug, Default)]
pub struct Narrator {
    step: u32,
}

impl Narrator {
    /// Prints the next step.
    pub fn say(&mut self, text: impl AsRef<str>) {
        self.step += 1;
        println!("[{:>2}] {}", self.step, text.as_ref());
    }
}

/// What the scenario observed, for the smoke test to assert on.
#[derive(Debug)]
pub struct DemoOutcome {
    /// The body Alice sent.
    pub sent_body: String,
    /// The body Bob read after decryption.
    pub received_body: String,
    /// How the received message was encrypted (`None` would mean it arrived in clear).
    pub encryption_info: Option<EncryptionInfo>,
    /// The encrypted name and topic Alice set.
    pub sent_name_and_topic: (String, String),
    /// The name and topic Bob read through sdk-ext.
    pub read_name_and_topic: (Option<String>, Option<String>),
    /// Whether the homeserver's copy of the room state held the name or topic in clear.
    pub server_saw_plaintext: bool,
    /// The name Carol's invite preview showed before joining.
    pub invitee_preview_name: Option<String>,
    /// The name Carol, invited with history, read after joining.
    pub invitee_read_name: Option<String>,
    /// Whether Carol decrypted the pre-invite message with a key Alice shared.
    pub invitee_read_history: bool,
    /// The name Dave read after joining a public room without invite, and the name Alice set.
    pub joiner_read_name: (Option<String>, String),
    /// The name Bob's client showed for a restricted room before he joined it, and the name
    /// Alice set.
    pub restricted_preview_name: (Option<String>, String),
}

/// The decrypted body of the message with `body` in `room`'s history, and who shared its key.
async fn carol_history(
    room: &matrix_sdk::Room,
    body: &str,
) -> Option<(String, Option<matrix_sdk::ruma::OwnedUserId>)> {
    let messages = room.messages(matrix_sdk::room::MessagesOptions::backward()).await.ok()?;
    for event in messages.chunk {
        let Ok(Some(content)) = event.raw().get_field::<serde_json::Value>("content") else {
            continue;
        };
        if content["body"].as_str() == Some(body) {
            let origin = room.key_origin(&event).await.ok().flatten();
            return Some((body.to_owned(), origin.and_then(|o| o.shared_by().cloned())));
        }
    }
    None
}

/// A message body and how it was encrypted, as an event handler saw it.
type ReceivedMessage = (String, Option<EncryptionInfo>);

/// Two users register and cross-sign, Alice creates an encrypted room and invites Bob, Bob joins,
/// Alice sends an encrypted message and Bob decrypts it; then Alice switches the room to
/// encrypted state and sets its name and topic, which Bob reads while the homeserver only holds
/// ciphertext; finally Alice invites Carol with history, and Carol reads the earlier message and
/// the current name after joining; last, Dave joins a public room with an encrypted name without
/// an invite and reads the name once Alice's client answers his key request; and Bob sees the
/// name of a room restricted to the members of the first room before joining it.
pub async fn run(narrator: &mut Narrator) -> Result<DemoOutcome> {
    let alice = StateUser::register("alice").await?;
    narrator
        .say(format!("Registered {} (SQLite stores, encrypted-state extension)", alice.user_id()));
    let bob = StateUser::register("bob").await?;
    narrator
        .say(format!("Registered {} (SQLite stores, encrypted-state extension)", bob.user_id()));
    narrator.say("Both users uploaded cross-signing keys and signed their own device");

    let room = shared_room(&alice, &[&bob]).await?;
    let room_id = room.room_id().to_owned();
    narrator.say(format!("Alice created the end-to-end encrypted room {room_id}; Bob joined"));

    let received: Arc<Mutex<Option<ReceivedMessage>>> = Arc::default();
    let sink = received.clone();
    bob.client.add_room_event_handler(
        &room_id,
        move |event: OriginalSyncRoomMessageEvent, info: Option<EncryptionInfo>| {
            // The handler gets the decrypted event and how it was encrypted.
            *sink.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((event.content.body().to_owned(), info));
            async {}
        },
    );
    let sent_body = "Hello Bob, only the two of us can read this.".to_owned();
    room.send(RoomMessageEventContent::text_plain(&sent_body)).await.context("Alice sending")?;
    narrator.say(format!("Alice sent an encrypted message: {sent_body:?}"));
    sync_until(&bob.client, "Bob receives the message", DEFAULT_TIMEOUT, || async {
        received.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    })
    .await?;
    let (received_body, encryption_info) = received
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .context("the handler stored the message")?;
    match &encryption_info {
        Some(info) => narrator.say(format!(
            "Bob decrypted it: {received_body:?} (Megolm, sent by {}, device {})",
            info.sender,
            info.sender_device.as_deref().map(|d| d.as_str()).unwrap_or("unknown"),
        )),
        None => narrator.say(format!("Bob read it, but it was NOT encrypted: {received_body:?}")),
    }

    room.enable_state_encryption().await?;
    narrator.say("Alice switched the room to encrypted state (MSC4362 flag in m.room.encryption)");
    let (name, topic) =
        ("Operation Nightingale".to_owned(), "Launch plans. Members only.".to_owned());
    room.set_encrypted_name(&name).await?;
    room.set_encrypted_topic(&topic).await?;
    narrator.say(format!("Alice set the name {name:?} and the topic {topic:?}, encrypted"));

    let bob_room = bob.room(&room_id);
    sync_until(&bob.client, "Bob reads the encrypted name and topic", DEFAULT_TIMEOUT, || async {
        bob_room.encrypted_name().await.ok().flatten().is_some()
            && bob_room.encrypted_topic().await.ok().flatten().is_some()
    })
    .await?;

    let state = server_state(&bob, &room_id).await?;
    let dump = serde_json::to_string(&state)?;
    let server_saw_plaintext = dump.contains(&name) || dump.contains(&topic);
    for event in &state {
        let event_type = event.get_field::<String>("type").ok().flatten().unwrap_or_default();
        let state_key = event.get_field::<String>("state_key").ok().flatten().unwrap_or_default();
        if event_type == "m.room.encrypted" {
            let ciphertext = event
                .get_field::<serde_json::Value>("content")
                .ok()
                .flatten()
                .and_then(|c| {
                    c["ciphertext"].as_str().map(|s| s.chars().take(32).collect::<String>())
                })
                .unwrap_or_default();
            narrator.say(format!(
                "The homeserver stores {event_type} with state_key {state_key:?}: ciphertext {ciphertext}..."
            ));
        }
    }
    narrator.say(if server_saw_plaintext {
        "WARNING: the homeserver's copy of the state contains the name or topic in clear".to_owned()
    } else {
        "No state event on the homeserver carries the name or the topic in clear".to_owned()
    });

    let read_name = bob_room.encrypted_name().await?;
    let read_topic = bob_room.encrypted_topic().await?;
    let record = bob_room.encrypted_state("m.room.name", "").await?.context("name record")?;
    let provenance = record.provenance().context("encrypted provenance")?;
    narrator.say(format!(
        "Bob reads through sdk-ext: name {:?}, topic {:?} (sent by {}, device {}, session index {})",
        read_name.as_deref().unwrap_or("-"),
        read_topic.as_deref().unwrap_or("-"),
        provenance.sender,
        provenance.sender_device.as_deref().map(|d| d.as_str()).unwrap_or("unknown"),
        provenance.message_index,
    ));

    // Carol is invited with history: one bundle with the shareable message keys and the room's
    // current state keys.
    let carol = StateUser::register("carol").await?;
    narrator.say(format!("Registered {}", carol.user_id()));
    let report = room.invite_with_history(carol.user_id()).await?;
    narrator.say(format!(
        "Alice invited Carol with history: {} message key(s) and {} state key(s) shared, {} withheld, \
         bundle announced to {} cross-signed device(s)",
        report.shared_message_keys,
        report.shared_state_keys,
        report.withheld_keys,
        report.devices_reached.len()
    ));
    sync_until(&carol.client, "Carol sees the invite", DEFAULT_TIMEOUT, || async {
        carol.client.get_room(&room_id).is_some()
    })
    .await?;
    let invited = carol.client.get_room(&room_id).context("invited room")?;
    sync_until(&carol.client, "Carol's invite preview", DEFAULT_TIMEOUT, || async {
        invited.invite_preview().await.is_ok_and(|p| p.name.is_some())
    })
    .await?;
    let preview = invited.invite_preview().await?;
    narrator.say(format!(
        "Before joining, Carol's invite shows the name {:?} and topic {:?}, decrypted with the keys \
         Alice sent with the invite (the homeserver's invite state has only ciphertext; a stock \
         client shows {:?})",
        preview.name.as_deref().unwrap_or("-"),
        preview.topic.as_deref().unwrap_or("-"),
        invited.name()
    ));
    join(&carol, &room_id).await?;
    let carol_room = carol.room(&room_id);
    sync_until(&carol.client, "Carol reads the name", DEFAULT_TIMEOUT, || async {
        carol_room.encrypted_name().await.ok().flatten().is_some()
    })
    .await?;
    let carol_name = carol_room.encrypted_name().await?;
    let shared_by = carol_room
        .encrypted_state("m.room.name", "")
        .await?
        .and_then(|r| r.provenance().and_then(|p| p.key_origin.shared_by().cloned()));
    narrator.say(format!(
        "After joining, Carol reads the name {:?} (key shared by {})",
        carol_name.as_deref().unwrap_or("-"),
        shared_by.as_ref().map(|u| u.as_str()).unwrap_or("its creator"),
    ));
    wait_until("Carol decrypts the message sent before her invite", DEFAULT_TIMEOUT, || async {
        carol_history(&carol_room, &sent_body).await.is_some_and(|(_, by)| by.is_some())
    })
    .await?;
    let (body, carol_shared_by) =
        carol_history(&carol_room, &sent_body).await.context("history")?;
    narrator.say(format!(
        "Carol reads the message sent before she was invited: {body:?} (shared by {})",
        carol_shared_by.as_ref().map(|u| u.as_str()).unwrap_or("nobody")
    ));

    // A public room: anyone may join without an invite, so no bundle reaches them.
    // Created with encrypted state from the start: the flag is in its first m.room.encryption,
    // which Element clients honour too, and the name never goes out in clear.
    let mut request = matrix_sdk::ruma::api::client::room::create_room::v3::Request::new();
    request.preset =
        Some(matrix_sdk::ruma::api::client::room::create_room::v3::RoomPreset::PublicChat);
    let square_name = "Town square".to_owned();
    request.name = Some(square_name.clone());
    let square = alice.ext.create_room(request).await.context("creating the public room")?;
    narrator.say(format!(
        "Alice opened the public room {} with encrypted state from its creation and named it \
         {square_name:?}, encrypted",
        square.room_id()
    ));
    let dave = StateUser::register("dave").await?;
    let _alice_online = crate::keep_syncing(&alice.client);
    dave.client.join_room_by_id(square.room_id()).await.context("Dave joining")?;
    let dave_room = dave.room(square.room_id());
    sync_until(&dave.client, "Dave reads the public room's name", DEFAULT_TIMEOUT, || async {
        dave_room.encrypted_name().await.ok().flatten().is_some()
    })
    .await?;
    let joiner_read_name = dave_room.encrypted_name().await?;
    narrator.say(format!(
        "{} joined without an invite (no bundle) and still reads the name {:?}: his client asked \
         for the key and Alice's client answered",
        dave.user_id(),
        joiner_read_name.as_deref().unwrap_or("-"),
    ));

    // A room restricted to the members of the first room: Bob may join it without an invite,
    // and his client shows its encrypted name before he does.
    let office = crate::restricted_room(&alice, &room_id).await?;
    office.enable_state_encryption().await?;
    let office_name = "Back office".to_owned();
    office.set_encrypted_name(&office_name).await?;
    narrator.say(format!(
        "Alice opened {}, restricted to the members of {room_id}, and named it {office_name:?}, \
         encrypted",
        office.room_id()
    ));
    sync_until(&bob.client, "Bob previews the restricted room", DEFAULT_TIMEOUT, || async {
        bob.ext.restricted_preview(office.room_id()).await.ok().flatten().is_some()
    })
    .await?;
    let office_preview = bob.ext.restricted_preview(office.room_id()).await?.unwrap_or_default();
    narrator.say(format!(
        "Before joining it, Bob's client shows its name {:?} (pushed by {})",
        office_preview.name.as_deref().unwrap_or("-"),
        office_preview.shared_by.as_ref().map(|u| u.as_str()).unwrap_or("nobody"),
    ));

    Ok(DemoOutcome {
        restricted_preview_name: (office_preview.name, office_name),
        joiner_read_name: (joiner_read_name, square_name),
        invitee_preview_name: preview.name,
        invitee_read_history: carol_shared_by.as_deref() == Some(alice.user_id()),
        invitee_read_name: carol_name,
        sent_body,
        received_body,
        encryption_info,
        sent_name_and_topic: (name, topic),
        read_name_and_topic: (read_name, read_topic),
        server_saw_plaintext,
    })
}
