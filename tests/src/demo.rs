//! The example scenario behind `cargo xtask demo`; the smoke test runs the same code.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use matrix_sdk::{
    Room,
    deserialized_responses::EncryptionInfo,
    ruma::{
        api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset},
        events::{
            InitialStateEvent,
            room::{
                encryption::RoomEncryptionEventContent,
                message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent},
            },
        },
    },
};

use crate::{DEFAULT_TIMEOUT, TestUser, sync_until};

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
}

/// A message body and how it was encrypted, as an event handler saw it.
type ReceivedMessage = (String, Option<EncryptionInfo>);

/// Two users register and cross-sign, Alice creates an encrypted room and invites Bob, Bob joins,
/// Alice sends an encrypted message and Bob decrypts it.
pub async fn run(narrator: &mut Narrator) -> Result<DemoOutcome> {
    let alice = TestUser::register("alice").await?;
    narrator.say(format!("Registered {} with its own SQLite store", alice.user_id()));
    let bob = TestUser::register("bob").await?;
    narrator.say(format!("Registered {} with its own SQLite store", bob.user_id()));
    narrator.say("Both users uploaded cross-signing keys and signed their own device");

    let mut request = CreateRoomRequest::new();
    request.name = Some("Demo room".to_owned());
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = vec![bob.user_id().to_owned()];
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let alice_room = alice.client.create_room(request).await.context("creating the room")?;
    let room_id = alice_room.room_id().to_owned();
    narrator.say(format!("Alice created the encrypted room {room_id} and invited Bob"));

    sync_until(&bob.client, "Bob sees the invite", DEFAULT_TIMEOUT, || async {
        bob.client.get_room(&room_id).is_some()
    })
    .await?;
    bob.client.join_room_by_id(&room_id).await.context("Bob joining")?;
    narrator.say("Bob saw the invite and joined");

    sync_until(&alice.client, "Alice sees Bob joined", DEFAULT_TIMEOUT, || async {
        joined(&alice_room, bob.user_id()).await
    })
    .await?;

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
    alice_room
        .send(RoomMessageEventContent::text_plain(&sent_body))
        .await
        .context("Alice sending")?;
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

    Ok(DemoOutcome { sent_body, received_body, encryption_info })
}

async fn joined(room: &Room, user: &matrix_sdk::ruma::UserId) -> bool {
    matches!(
        room.get_member_no_sync(user).await,
        Ok(Some(member)) if *member.membership() == matrix_sdk::ruma::events::room::member::MembershipState::Join
    )
}
