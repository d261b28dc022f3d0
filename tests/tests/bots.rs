//! The example bots against the real homeserver: a command takes effect for a user whose power
//! allows it, and is refused, with a reply that says why, for one whose power does not.

// matrix-sdk futures nest deeply: proving the spawned bot future `Send` needs more depth.
#![recursion_limit = "256"]

use anyhow::{Context, Result, bail};
use example_bots::{Bot, concierge::Concierge, serve, topic::TopicBot};
use integration_tests::{
    DEFAULT_TIMEOUT, StateUser, TestUser, edit_power_levels, keep_syncing, shared_room, sync_until,
    wait_until,
};
use matrix_sdk::ruma::{
    OwnedUserId, RoomId,
    events::room::message::{MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent},
};
use sdk_ext::{RoomHistoryExt, RoomStateExt};
use tokio::{sync::mpsc, task::JoinHandle};

fn init() {
    integration_tests::init_tracing("warn");
}

/// A bot serving in the background, stopped when dropped.
struct Running(JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts `bot` as `user` (logged in, the extension installed).
fn start(user: StateUser, bot: impl Bot) -> Running {
    Running(tokio::spawn(async move {
        if let Err(error) = serve(&user.client, &user.ext, bot).await {
            tracing::warn!(%error, "the bot stopped");
        }
    }))
}

/// The notices `bot` posts, as `watcher`'s client decrypts them (it keeps syncing meanwhile).
struct Replies {
    notices: mpsc::UnboundedReceiver<String>,
    _syncing: integration_tests::Syncing,
}

impl Replies {
    fn of(watcher: &TestUser, bot: OwnedUserId) -> Self {
        let (tx, notices) = mpsc::unbounded_channel();
        watcher.client.add_event_handler(move |event: OriginalSyncRoomMessageEvent| {
            let tx = tx.clone();
            let bot = bot.clone();
            async move {
                if event.sender == bot
                    && let MessageType::Notice(notice) = event.content.msgtype
                {
                    let _ = tx.send(notice.body);
                }
            }
        });
        Self { notices, _syncing: keep_syncing(&watcher.client) }
    }

    /// The next notice that contains `needle`; earlier ones are skipped.
    async fn wait_for(&mut self, needle: &str) -> Result<String> {
        let deadline = tokio::time::Instant::now() + DEFAULT_TIMEOUT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.notices.recv()).await;
            match next {
                Ok(Some(notice)) if notice.contains(needle) => return Ok(notice),
                Ok(Some(_)) => continue,
                Ok(None) => bail!("the watcher stopped"),
                Err(_) => bail!("no notice with {needle:?} after {DEFAULT_TIMEOUT:?}"),
            }
        }
    }
}

/// `user` says `body` in `room_id`.
async fn say(user: &TestUser, room_id: &RoomId, body: &str) -> Result<()> {
    let room = user.client.get_room(room_id).context("the user's room")?;
    room.send(RoomMessageEventContent::text_plain(body)).await?;
    Ok(())
}

/// The topic bot sets the encrypted topic for Alice, an admin, and refuses Bob, a member whose
/// level is below the topic's, saying why; his topic never reaches the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topic_bot_sets_the_topic_only_for_users_who_may() -> Result<()> {
    init();
    let alice = StateUser::register("alice").await?;
    let bob = TestUser::register("bob").await?;
    let bot = StateUser::register("topicbot").await?;
    let room = shared_room(&alice, &[&bob, &bot]).await?;
    let room_id = room.room_id().to_owned();
    room.enable_state_encryption().await?;
    let bot_id = bot.user_id().to_owned();
    edit_power_levels(&room, |content| {
        content["users"][bot_id.as_str()] = 100.into();
    })
    .await?;

    let mut replies = Replies::of(&alice, bot_id.clone());
    let _bot = start(bot, TopicBot);

    say(&bob, &room_id, "!topic Bob's topic").await?;
    let refusal = replies.wait_for(bob.user_id().as_str()).await?;
    assert!(refusal.starts_with("refused:"), "{refusal}");
    assert!(refusal.contains("m.room.topic"), "{refusal}");

    say(&alice, &room_id, "!topic Alice's topic").await?;
    replies.wait_for(&format!("topic set for {}", alice.user_id())).await?;
    wait_until("Alice reads the topic the bot set", DEFAULT_TIMEOUT, || async {
        room.encrypted_topic().await.ok().flatten().as_deref() == Some("Alice's topic")
    })
    .await?;
    let record = room.encrypted_state("m.room.topic", "").await?.context("topic")?;
    assert_eq!(record.provenance().context("encrypted")?.sender, bot_id);
    Ok(())
}

/// The history concierge, invited with history, reports what it read and who shared it; it
/// invites Carol with history for Alice (who may invite) and answers with the report, and
/// refuses Bob (below the invite level), saying why: Dave is never invited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concierge_invites_only_for_users_who_may() -> Result<()> {
    init();
    let alice = StateUser::register("alice").await?;
    let bob = TestUser::register("bob").await?;
    let carol = TestUser::register("carol").await?;
    let dave = TestUser::register("dave").await?;
    let concierge = StateUser::register("concierge").await?;
    let concierge_id = concierge.user_id().to_owned();
    let room = shared_room(&alice, &[&bob]).await?;
    let room_id = room.room_id().to_owned();
    room.enable_state_encryption().await?;
    room.set_encrypted_name("Concierge test").await?;
    room.send(RoomMessageEventContent::text_plain("said before the concierge came")).await?;
    edit_power_levels(&room, |content| {
        content["invite"] = 50.into();
        content["users"][concierge_id.as_str()] = 50.into();
    })
    .await?;

    let mut replies = Replies::of(&alice, concierge_id.clone());
    let _concierge = start(concierge, Concierge);
    room.invite_with_history(&concierge_id).await?;
    let report = replies.wait_for("history shared by").await?;
    assert!(report.contains(alice.user_id().as_str()), "{report}");

    say(&bob, &room_id, &format!("!invite {}", dave.user_id())).await?;
    let refusal = replies.wait_for(bob.user_id().as_str()).await?;
    assert!(refusal.starts_with("refused:") && refusal.contains("invite"), "{refusal}");

    say(&alice, &room_id, &format!("!invite {}", carol.user_id())).await?;
    let invited = replies.wait_for(&format!("invited {}", carol.user_id())).await?;
    assert!(invited.contains("state keys shared"), "{invited}");
    sync_until(&carol.client, "Carol is invited", DEFAULT_TIMEOUT, || async {
        carol.client.get_room(&room_id).is_some()
    })
    .await?;
    // Dave syncs too: the refused command invited nobody.
    dave.client.sync_once(Default::default()).await?;
    assert!(dave.client.get_room(&room_id).is_none(), "Bob's command must not invite Dave");
    Ok(())
}
