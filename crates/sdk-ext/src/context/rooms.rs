//! Room facts: power levels, membership, moderators, and whether state encryption is on.

use crypto_ext::identifiers;
use matrix_sdk::{Room, config::RequestConfig, deserialized_responses::RawAnySyncOrStrippedState};
use ruma::{
    EventId, OwnedUserId, RoomVersionId, UInt, UserId,
    api::client::{context::get_context, state::get_state_event_for_key},
    events::{
        StateEventType,
        room::{
            member::MembershipState,
            power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource},
        },
    },
    room_version_rules::{AuthorizationRules, RoomVersionRules},
};
use serde_json::Value;
use tracing::warn;

use super::handle::Context;

/// How long the power levels at an event may take to arrive.
const CONTEXT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
use crate::Result;

/// The power levels of `content` with the rules and creators of `current` (the room's power
/// levels now): the levels an earlier `m.room.power_levels` content set in the same room.
pub(crate) fn levels_with_content(
    current: &RoomPowerLevels,
    content: RoomPowerLevelsEventContent,
) -> RoomPowerLevels {
    let mut levels = RoomPowerLevels::new(
        RoomPowerLevelsSource::Original(content),
        &AuthorizationRules::V1,
        Vec::<OwnedUserId>::new(),
    );
    levels.rules = current.rules.clone();
    levels
}

/// Whether `user_id` is joined to `room` in our view of it.
pub(crate) async fn is_joined(room: &Room, user_id: &UserId) -> bool {
    matches!(
        room.get_member_no_sync(user_id).await,
        Ok(Some(member)) if *member.membership() == MembershipState::Join
    )
}

/// Whether `user_id` has a power level above the room's default in `levels`: a moderator, whose
/// word on a restricted room's preview we take.
pub(crate) fn is_moderator_in(levels: &RoomPowerLevels, user_id: &UserId) -> bool {
    levels.for_user(user_id) > levels.users_default
}

/// Whether `user_id` is joined to `room` with a power level above the room's default.
pub(crate) async fn is_moderator(room: &Room, user_id: &UserId) -> bool {
    if !is_joined(room, user_id).await {
        return false;
    }
    room.power_levels().await.is_ok_and(|levels| is_moderator_in(&levels, user_id))
}

/// The content of the room's `m.room.encryption`, from its state or its invite's stripped state.
pub(crate) async fn room_encryption_content(room: &Room) -> Option<Value> {
    state_content(room, StateEventType::RoomEncryption).await
}

/// The content of the room's state event of `event_type` (empty state key), from its state or
/// its invite's stripped state.
pub(crate) async fn state_content(room: &Room, event_type: StateEventType) -> Option<Value> {
    match room.get_state_event(event_type, "").await.ok()?? {
        RawAnySyncOrStrippedState::Sync(raw) => raw.get_field("content").ok()?,
        RawAnySyncOrStrippedState::Stripped(raw) => raw.get_field("content").ok()?,
    }
}

/// Whether the room's `m.room.encryption` switches on encrypted state.
pub(crate) async fn encrypts_state(room: &Room) -> bool {
    room_encryption_content(room).await.is_some_and(|c| identifiers::encrypts_state(&c))
}

impl Context {
    /// The room's power levels now: as the client's store knows them, or, while it does not (a
    /// room created a moment ago, before the sync that brings its state; a store that lacks
    /// them), as the homeserver serves them, with the creators its `m.room.create` names. Never
    /// defaults that would reject good state for good.
    pub(crate) async fn room_power_levels(&self, room: &Room) -> Result<RoomPowerLevels> {
        if let Ok(levels) = room.power_levels().await {
            return Ok(levels);
        }
        let create = self.state_from_server(room, StateEventType::RoomCreate).await?;
        let content = self.state_from_server(room, StateEventType::RoomPowerLevels).await?;
        let content: RoomPowerLevelsEventContent =
            serde_json::from_value(content["content"].clone())?;
        let version = create["content"]["room_version"].as_str().unwrap_or("1");
        let rules = RoomVersionId::try_from(version)
            .ok()
            .and_then(|version| version.rules())
            .unwrap_or(RoomVersionRules::V1);
        let mut creators: Vec<OwnedUserId> =
            serde_json::from_value(create["sender"].clone()).into_iter().collect();
        if let Ok(additional) = serde_json::from_value::<Vec<OwnedUserId>>(
            create["content"]["additional_creators"].clone(),
        ) {
            creators.extend(additional);
        }
        Ok(RoomPowerLevels::new(
            RoomPowerLevelsSource::Original(content),
            &rules.authorization,
            creators,
        ))
    }

    /// The power levels in force at `event_id` (the room's state at that event, as the
    /// homeserver's `/context` serves it), with the rules and creators of `current`; `None` when
    /// the server does not say (the event is hidden from us by the room's history visibility,
    /// the server is unreachable, no power levels at the event): the caller then judges by
    /// `current`.
    pub(crate) async fn power_levels_at(
        &self,
        room: &Room,
        event_id: &EventId,
        current: &RoomPowerLevels,
    ) -> Option<RoomPowerLevels> {
        let mut request =
            get_context::v3::Request::new(room.room_id().to_owned(), event_id.to_owned());
        request.limit = UInt::MIN;
        request.filter.types = Some(vec![StateEventType::RoomPowerLevels.to_string()]);
        let config = RequestConfig::new().timeout(CONTEXT_TIMEOUT).retry_limit(1);
        let response = match self.client.send(request).with_request_config(config).await {
            Ok(response) => response,
            Err(error) => {
                warn!(%event_id, %error, "the power levels at an event are unknown, judging by today's");
                return None;
            }
        };
        let content = response.state.iter().find_map(|event| {
            (event.get_field::<String>("type").ok()??.as_str() == "m.room.power_levels")
                .then(|| event.get_field::<RoomPowerLevelsEventContent>("content").ok()?)
                .flatten()
        });
        // No power levels at the event (the server left them out): judged by today's.
        content.map(|content| levels_with_content(current, content))
    }

    /// The state event of `event_type` (empty state key) of `room`, as the homeserver serves it.
    async fn state_from_server(&self, room: &Room, event_type: StateEventType) -> Result<Value> {
        let mut request = get_state_event_for_key::v3::Request::new(
            room.room_id().to_owned(),
            event_type,
            String::new(),
        );
        request.format = get_state_event_for_key::v3::StateEventFormat::Event;
        let response = self.client.send(request).await?;
        Ok(serde_json::from_str(response.event_or_content.get())?)
    }

    /// Whether the room switched on encrypted state (from its `m.room.encryption`, or because
    /// we just sent that ourselves).
    pub(crate) async fn state_encryption_enabled(&self, room: &Room) -> bool {
        let enabled_here =
            self.enabled_rooms.lock().unwrap_or_else(|e| e.into_inner()).contains(room.room_id());
        enabled_here || encrypts_state(room).await
    }

    /// Records that we switched `room` to encrypted state, before the sync echoes it.
    pub(crate) fn mark_state_encryption_enabled(&self, room: &Room) {
        self.enabled_rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(room.room_id().to_owned());
    }
}
