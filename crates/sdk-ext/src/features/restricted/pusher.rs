//! Who pushes a restricted room's preview through an allowed room, computed alike everywhere.

use ruma::{OwnedUserId, events::room::power_levels::RoomPowerLevels};

use crate::context::is_moderator_in;

/// Who pushes a restricted room's preview through one allowed room, so that one member sends
/// it, not every one. The candidates are the joined members of both rooms who are moderators of
/// the allowed room (receivers take previews from them only). The sender of the restricted
/// room's current join rules (who set the allow-list) pushes if it is a candidate; otherwise the
/// candidate with the highest power level in the restricted room, the lowest user ID on a tie.
/// Every member's client computes the same answer from the same state.
pub(super) fn pusher<'a>(
    candidates: impl Iterator<Item = &'a OwnedUserId>,
    allowed_levels: &RoomPowerLevels,
    room_levels: &RoomPowerLevels,
    join_rules_sender: Option<&OwnedUserId>,
) -> Option<&'a OwnedUserId> {
    let candidates: Vec<&OwnedUserId> =
        candidates.filter(|user| is_moderator_in(allowed_levels, user)).collect();
    if let Some(sender) = join_rules_sender
        && let Some(found) = candidates.iter().find(|user| **user == sender)
    {
        return Some(found);
    }
    candidates
        .into_iter()
        .max_by(|a, b| room_levels.for_user(a).cmp(&room_levels.for_user(b)).then_with(|| b.cmp(a)))
}

#[cfg(test)]
mod tests {
    use ruma::owned_user_id;

    use super::*;

    fn levels(users: &[(&OwnedUserId, i64)]) -> RoomPowerLevels {
        let mut levels = RoomPowerLevels::new(
            Default::default(),
            &ruma::room_version_rules::AuthorizationRules::V1,
            Vec::<OwnedUserId>::new(),
        );
        for (user, level) in users {
            levels.users.insert((*user).clone(), (*level).try_into().unwrap());
        }
        levels
    }

    #[test]
    fn the_join_rules_sender_pushes_when_it_moderates_the_allowed_room() {
        let (alice, carol) = (owned_user_id!("@alice:x"), owned_user_id!("@carol:x"));
        let space = levels(&[(&alice, 50), (&carol, 100)]);
        let room = levels(&[(&alice, 50), (&carol, 100)]);
        let members = [alice.clone(), carol.clone()];
        assert_eq!(pusher(members.iter(), &space, &room, Some(&alice)), Some(&alice));
    }

    #[test]
    fn otherwise_the_most_powerful_moderator_pushes_the_lowest_id_on_a_tie() {
        let (alice, bob, carol, dave) = (
            owned_user_id!("@alice:x"),
            owned_user_id!("@bob:x"),
            owned_user_id!("@carol:x"),
            owned_user_id!("@dave:x"),
        );
        // Dave set the join rules but does not moderate the allowed room; Alice has the most
        // power in the room but none in the allowed room.
        let space = levels(&[(&bob, 50), (&carol, 50)]);
        let room = levels(&[(&alice, 100), (&bob, 50), (&carol, 50), (&dave, 100)]);
        let members = [alice.clone(), carol.clone(), bob.clone(), dave.clone()];
        assert_eq!(pusher(members.iter(), &space, &room, Some(&dave)), Some(&bob));
        let room = levels(&[(&bob, 50), (&carol, 60)]);
        assert_eq!(pusher(members.iter(), &space, &room, Some(&dave)), Some(&carol));
    }

    #[test]
    fn nobody_pushes_without_a_moderator_of_the_allowed_room_in_both_rooms() {
        let alice = owned_user_id!("@alice:x");
        let space = levels(&[]);
        let room = levels(&[(&alice, 100)]);
        assert_eq!(pusher([alice.clone()].iter(), &space, &room, Some(&alice)), None);
    }
}
