//! Rooms shared by test users.

use anyhow::{Context, Result};
use matrix_sdk::{
    Room,
    ruma::{
        OwnedRoomId, RoomId, UserId,
        api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset},
        events::{
            InitialStateEvent,
            room::{encryption::RoomEncryptionEventContent, member::MembershipState},
        },
        serde::Raw,
    },
};

use crate::{DEFAULT_TIMEOUT, TestUser, sync_until};

/// `creator` creates an end-to-end encrypted private room, invites `members`, each joins, and
/// the creator's client sees them all joined.
pub async fn shared_room(creator: &TestUser, members: &[&TestUser]) -> Result<Room> {
    let mut request = CreateRoomRequest::new();
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = members.iter().map(|m| m.user_id().to_owned()).collect();
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = creator.client.create_room(request).await.context("creating the room")?;
    let room_id: OwnedRoomId = room.room_id().to_owned();
    for member in members {
        join(member, &room_id).await?;
    }
    sync_until(
        &creator.client,
        "the creator sees every member joined",
        DEFAULT_TIMEOUT,
        || async {
            for member in members {
                if !is_joined(&room, member.user_id()).await {
                    return false;
                }
            }
            true
        },
    )
    .await?;
    Ok(room)
}

/// `creator` creates an end-to-end encrypted room that admits, without invite, the members of
/// `allowed` (join rule `restricted`, MSC3083).
pub async fn restricted_room(creator: &TestUser, allowed: &RoomId) -> Result<Room> {
    let mut request = CreateRoomRequest::new();
    request.preset = Some(RoomPreset::PrivateChat);
    let join_rule = serde_json::json!({
        "type": "m.room.join_rules",
        "state_key": "",
        "content": {
            "join_rule": "restricted",
            "allow": [{ "type": "m.room_membership", "room_id": allowed }],
        },
    });
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
        Raw::new(&join_rule)?.cast_unchecked(),
    ];
    creator.client.create_room(request).await.context("creating the restricted room")
}

/// `user` waits for the invite to `room_id` and joins.
pub async fn join(user: &TestUser, room_id: &OwnedRoomId) -> Result<Room> {
    sync_until(&user.client, "the invite arrives", DEFAULT_TIMEOUT, || async {
        user.client.get_room(room_id).is_some()
    })
    .await?;
    user.client.join_room_by_id(room_id).await.context("joining")?;
    user.client.get_room(room_id).context("joined room")
}

/// Whether `user` is joined to `room` in the room's member list as the local client knows it.
pub async fn is_joined(room: &Room, user: &UserId) -> bool {
    matches!(
        room.get_member_no_sync(user).await,
        Ok(Some(member)) if *member.membership() == MembershipState::Join
    )
}

/// Whether `user` has power level `level` in `room` as the local client knows it.
pub async fn has_power_level(room: &Room, user: &UserId, level: i64) -> bool {
    room.power_levels().await.is_ok_and(|levels| {
        levels.for_user(user) == matrix_sdk::ruma::Int::new(level).unwrap_or_default()
    })
}

/// Changes the room's power levels as `room`'s user: `users` get the given levels, `events`
/// the given requirements.
pub async fn set_power_levels(
    room: &Room,
    users: &[(&UserId, i64)],
    events: &[(&str, i64)],
) -> Result<()> {
    edit_power_levels(room, |content| {
        for (user, level) in users {
            content["users"][user.as_str()] = (*level).into();
        }
        for (event_type, level) in events {
            content["events"][*event_type] = (*level).into();
        }
    })
    .await
}

/// Changes the room's power levels as `room`'s user: `edit` changes the current content, which
/// is then sent.
pub async fn edit_power_levels(
    room: &Room,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Result<()> {
    let raw = room
        .get_state_event(matrix_sdk::ruma::events::StateEventType::RoomPowerLevels, "")
        .await?
        .context("the room has power levels")?;
    let matrix_sdk::deserialized_responses::RawAnySyncOrStrippedState::Sync(raw) = raw else {
        anyhow::bail!("power levels of a room we are not in");
    };
    let mut content: serde_json::Value =
        raw.get_field("content")?.context("power levels content")?;
    edit(&mut content);
    room.send_state_event_raw("m.room.power_levels", "", content).await?;
    Ok(())
}

/// Posts each `(packed state key, content)` as an `m.room.encrypted` state event in `room`, 20 at
/// a time (as a flooding member would), and waits for every answer.
pub async fn post_encrypted_state(
    room: &Room,
    events: &[(String, serde_json::Value)],
) -> Result<()> {
    for chunk in events.chunks(20) {
        let mut sends = tokio::task::JoinSet::new();
        for (packed, content) in chunk {
            let (room, packed) = (room.clone(), packed.clone());
            let content = Raw::new(content)?
                .cast_unchecked::<matrix_sdk::ruma::events::AnyStateEventContent>();
            sends.spawn(async move {
                room.send_state_event_raw("m.room.encrypted", &packed, content).await
            });
        }
        while let Some(sent) = sends.join_next().await {
            sent??;
        }
    }
    Ok(())
}
