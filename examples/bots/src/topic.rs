//! The topic bot: keeps a room's topic encrypted.

use matrix_sdk::{
    Room,
    ruma::{UserId, events::StateEventType},
};
use sdk_ext::RoomStateExt;

use crate::{Bot, power::state_refusal};

/// `!topic <text>` sets the topic as encrypted state, for a user whose own power allows it;
/// `!state` reports the decrypted name and topic and the rejected and waiting events.
#[derive(Clone, Copy, Debug, Default)]
pub struct TopicBot;

impl Bot for TopicBot {
    async fn command(&self, room: &Room, sender: &UserId, body: &str) -> Option<String> {
        let answer = if let Some(topic) = body.strip_prefix("!topic ") {
            set_topic(room, sender, topic.trim()).await
        } else if body == "!state" {
            state(room).await
        } else {
            return None;
        };
        Some(answer.unwrap_or_else(|error| format!("failed: {error}")))
    }
}

/// Sets the topic for `sender`: refused unless both `sender` and the bot may send the topic
/// (and, when the room does not encrypt its state yet, switch that on).
async fn set_topic(room: &Room, sender: &UserId, topic: &str) -> sdk_ext::Result<String> {
    let enable = !room.is_state_encrypted().await;
    let mut needed = vec![StateEventType::RoomTopic];
    if enable {
        needed.push(StateEventType::RoomEncryption);
    }
    let levels = room.power_levels_or_default().await;
    if let Some(refusal) = state_refusal(&levels, sender, &needed) {
        return Ok(format!("refused: {refusal}"));
    }
    if let Some(refusal) = state_refusal(&levels, room.own_user_id(), &needed) {
        return Ok(format!("I cannot: {refusal}"));
    }
    if enable {
        room.enable_state_encryption().await?;
    }
    let sent = room.set_encrypted_topic(topic).await?;
    Ok(format!("topic set for {sender}, encrypted ({})", sent.event_id))
}

/// The decrypted name and topic, and how many events were rejected or wait for keys.
async fn state(room: &Room) -> sdk_ext::Result<String> {
    let view = room.encrypted_state_view().await?;
    Ok(format!(
        "name: {:?}, topic: {:?}, rejected: {}, waiting for keys: {}",
        room.encrypted_name().await?,
        room.encrypted_topic().await?,
        view.rejected.len(),
        view.pending.len()
    ))
}
