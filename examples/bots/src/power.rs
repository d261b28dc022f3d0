//! What a user's power level allows, and a refusal that says why when it does not.

use matrix_sdk::ruma::{
    UserId,
    events::{StateEventType, room::power_levels::RoomPowerLevels},
};

/// `None` when `user_id` may send state of each of `event_types` under `levels`; otherwise a
/// refusal naming the first type they may not send, the level it needs and theirs.
pub fn state_refusal(
    levels: &RoomPowerLevels,
    user_id: &UserId,
    event_types: &[StateEventType],
) -> Option<String> {
    let event_type =
        event_types.iter().find(|t| !levels.user_can_send_state(user_id, (*t).clone()))?;
    Some(format!(
        "{user_id} may not send {event_type} here: it needs power level {}, {user_id} has {}",
        levels.for_state(event_type.clone()),
        level_of(levels, user_id),
    ))
}

/// `None` when `user_id` may invite under `levels`; otherwise a refusal that says why.
pub fn invite_refusal(levels: &RoomPowerLevels, user_id: &UserId) -> Option<String> {
    if levels.user_can_invite(user_id) {
        return None;
    }
    Some(format!(
        "{user_id} may not invite here: it needs power level {}, {user_id} has {}",
        levels.invite,
        level_of(levels, user_id),
    ))
}

/// A user's level for display ("creator" for a room version 12 creator, above any level).
fn level_of(levels: &RoomPowerLevels, user_id: &UserId) -> String {
    match levels.for_user(user_id) {
        matrix_sdk::ruma::events::room::power_levels::UserPowerLevel::Int(level) => {
            level.to_string()
        }
        _ => "creator".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use matrix_sdk::ruma::{
        events::room::power_levels::RoomPowerLevelsEventContent, int,
        room_version_rules::AuthorizationRules, user_id,
    };

    use super::*;

    fn levels() -> RoomPowerLevels {
        let mut content = RoomPowerLevelsEventContent::new(&AuthorizationRules::V1);
        content.users.insert(user_id!("@admin:example.org").to_owned(), int!(100));
        content.invite = int!(50);
        RoomPowerLevels::new(content.into(), &AuthorizationRules::V1, Vec::new())
    }

    #[test]
    fn a_member_below_the_state_level_is_refused_with_the_levels() {
        let member = user_id!("@member:example.org");
        let refusal = state_refusal(&levels(), member, &[StateEventType::RoomTopic]).unwrap();
        assert!(refusal.contains("m.room.topic") && refusal.contains("50"), "{refusal}");
        assert!(refusal.contains("has 0"), "{refusal}");
        assert_eq!(invite_refusal(&levels(), member).map(|r| r.contains("invite")), Some(true));
    }

    #[test]
    fn an_admin_may_do_both() {
        let admin = user_id!("@admin:example.org");
        let types = [StateEventType::RoomTopic, StateEventType::RoomEncryption];
        assert_eq!(state_refusal(&levels(), admin, &types), None);
        assert_eq!(invite_refusal(&levels(), admin), None);
    }
}
