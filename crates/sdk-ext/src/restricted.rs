//! Restricted rooms before joining (MSC3414): the members of a room a restricted room's
//! allow-list names can join it without an invite, so a space lists it to them; with encrypted
//! state they would see no name. One member of the restricted room (the one who set its join
//! rules, or the most powerful moderator once that one is gone: see [`pusher`]) pushes the
//! room's aesthetic encrypted state events and their keys to those members, so the space can
//! show the name, topic, avatar and alias before they join, and they read them at once after.
//!
//! Only the aesthetic slots go out, each key at the index of its slot's current event: a
//! previewer never learns an earlier value, nor anything else of the room. The homeserver gives
//! non-members no room state, so the events travel with their keys; the receiver checks them as
//! an invite preview is checked (the session belongs to a device of the event's sender, the
//! payload matches, no critical type) and trusts the rest to the sharer, whom it accepts only as
//! a moderator of the allowed room.

use std::collections::{BTreeMap, BTreeSet};

use crypto_ext::{InboundStateSession, KeyOrigin, Provenance, identifiers};
use matrix_sdk::{
    Room, RoomMemberships, RoomState,
    deserialized_responses::{EncryptionInfo, RawAnySyncOrStrippedState},
    encryption::identities::Device,
};
use matrix_sdk_crypto::olm::ExportedRoomKey;
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
    UserId,
    events::{
        AnySyncStateEvent, AnyToDeviceEventContent, StateEventType,
        room::{member::MembershipState, power_levels::RoomPowerLevels},
    },
    room::{AllowRule, JoinRule},
    serde::Raw,
};
use serde::Deserialize;
use serde_json::{Value, json};
use state_store_ext::{ReceivedPreview, SentPreview, StateChanges};
use tracing::{debug, info, warn};

use crate::{
    Result, RoomPreview, StateUpdate,
    extension::Inner,
    invite::{PreviewEvent, decode, stored_sessions},
    keys,
    processing::{AESTHETIC_SLOTS, power_levels},
    requests::{is_joined, sender_device},
};

/// Whether restricted rooms' previews are pushed and taken.
#[derive(Clone, Debug)]
pub struct RestrictedPreviewConfig {
    /// For the restricted rooms we push for (we set their join rules, or stepped in for the
    /// member who did): push the aesthetic state (name, topic, avatar, canonical alias) and its
    /// keys to the members of the allowed rooms we are in who are not members yet, whenever the
    /// allow-list, those members or that state change.
    pub share: bool,
    /// Take such previews from moderators of rooms we are in.
    pub accept: bool,
}

impl Default for RestrictedPreviewConfig {
    fn default() -> Self {
        Self { share: true, accept: true }
    }
}

/// Why a restricted room's preview sent to us was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreviewRefusal {
    /// The allowed room it names is not one we are joined to.
    NotInAllowedRoom,
    /// The sharer is not a member of that room with a power level above its default.
    SharerNotTrusted,
    /// The sending device is unknown to us, or blocked.
    DeviceNotAllowed,
    /// No event of it decrypts with its keys and passes the checks.
    NothingValid,
}

impl std::fmt::Display for PreviewRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotInAllowedRoom => "we are not in the allowed room it names",
            Self::SharerNotTrusted => "the sharer is not a moderator of the allowed room",
            Self::DeviceNotAllowed => "the sending device is unknown or blocked",
            Self::NothingValid => "no event of the preview decrypts and passes the checks",
        })
    }
}

/// The content of an [`identifiers::RESTRICTED_PREVIEW`] message.
#[derive(Deserialize)]
struct RestrictedPreview {
    room_id: OwnedRoomId,
    via: OwnedRoomId,
    events: Vec<Raw<AnySyncStateEvent>>,
    keys: Vec<ExportedRoomKey>,
}

/// Pushes the previews of our restricted rooms to the members of their allowed rooms who lack
/// the current version, through the allowed rooms for which we are the pusher (see [`pusher`]).
/// `updated`: the rooms a sync changed, to skip the restricted rooms it cannot concern (`None`:
/// every room).
pub(crate) async fn share_previews(
    inner: &Inner,
    updated: Option<&BTreeSet<OwnedRoomId>>,
) -> Result<()> {
    if !inner.config.restricted_previews.share {
        return Ok(());
    }
    for room in inner.client.joined_rooms() {
        let Some(allowed) = allowed_rooms(&room) else { continue };
        let concerned = updated.is_none_or(|updated| {
            updated.contains(room.room_id()) || allowed.iter().any(|a| updated.contains(a))
        });
        if concerned {
            share_preview(inner, &room, &allowed).await?;
        }
    }
    Ok(())
}

/// The rooms a restricted room's allow-list names; `None` if the room is not restricted.
fn allowed_rooms(room: &Room) -> Option<Vec<OwnedRoomId>> {
    match room.join_rule()? {
        JoinRule::Restricted(rule) | JoinRule::KnockRestricted(rule) => Some(
            rule.allow
                .iter()
                .filter_map(|allow| match allow {
                    AllowRule::RoomMembership(membership) => Some(membership.room_id.clone()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// Who sent the room's current join rules.
async fn join_rules_sender(room: &Room) -> Result<Option<OwnedUserId>> {
    let Some(RawAnySyncOrStrippedState::Sync(raw)) =
        room.get_state_event(StateEventType::RoomJoinRules, "").await?
    else {
        return Ok(None);
    };
    Ok(raw.get_field::<OwnedUserId>("sender").ok().flatten())
}

/// Whether `user_id` has a power level above the room's default: the sharers receivers accept.
fn is_moderator_in(levels: &RoomPowerLevels, user_id: &UserId) -> bool {
    levels.for_user(user_id) > levels.users_default
}

/// Who pushes a restricted room's preview through one allowed room, so that one member sends
/// it, not every one. The candidates are the joined members of both rooms who are moderators of
/// the allowed room (receivers take previews from them only). The sender of the restricted
/// room's current join rules (who set the allow-list) pushes if it is a candidate; otherwise the
/// candidate with the highest power level in the restricted room, the lowest user ID on a tie.
/// Every member's client computes the same answer from the same state.
fn pusher<'a>(
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

/// Pushes one restricted room's preview to the devices of its allowed rooms' members that were
/// not sent its current version, through the allowed rooms for which we are the pusher.
async fn share_preview(inner: &Inner, room: &Room, allowed: &[OwnedRoomId]) -> Result<()> {
    let room_id = room.room_id();
    let own = &inner.own_device.user_id;
    let members = room.members(RoomMemberships::JOIN | RoomMemberships::INVITE).await?;
    let here: BTreeSet<OwnedUserId> = members.iter().map(|m| m.user_id().to_owned()).collect();
    let joined_here: BTreeSet<OwnedUserId> = members
        .iter()
        .filter(|m| *m.membership() == MembershipState::Join)
        .map(|m| m.user_id().to_owned())
        .collect();
    let room_levels = power_levels(room).await;
    let set_by = join_rules_sender(room).await?;
    // Stepping in for the member who set the join rules needs a view of the room that knows
    // that member (a client that just joined may not have the whole member list yet).
    let knows_setter = match &set_by {
        Some(setter) if setter != own => room.get_member_no_sync(setter).await?.is_some(),
        _ => true,
    };
    if !knows_setter {
        return Ok(());
    }

    // Members of the allowed rooms we push through who are not in this room (members get its
    // keys the usual way), each through the first allowed room that has them.
    let mut seen = BTreeSet::new();
    let mut targets: Vec<(OwnedRoomId, Vec<OwnedUserId>)> = Vec::new();
    for via in allowed {
        let Some(via_room) = inner.client.get_room(via).filter(|r| r.state() == RoomState::Joined)
        else {
            continue;
        };
        let joined_there: Vec<OwnedUserId> = via_room
            .members(RoomMemberships::JOIN)
            .await?
            .iter()
            .map(|m| m.user_id().to_owned())
            .collect();
        let via_levels = power_levels(&via_room).await;
        let candidates = joined_there.iter().filter(|user| joined_here.contains(*user));
        if pusher(candidates, &via_levels, &room_levels, set_by.as_ref()) != Some(own) {
            continue;
        }
        let users: Vec<OwnedUserId> = joined_there
            .into_iter()
            .filter(|user| !here.contains(user) && seen.insert(user.clone()))
            .collect();
        if !users.is_empty() {
            targets.push((via.clone(), users));
        }
    }
    if targets.is_empty() {
        return Ok(());
    }

    let current: Vec<Provenance> = inner
        .store
        .room_state(room_id)
        .await?
        .into_iter()
        .filter(|r| r.slot.state_key.is_empty() && AESTHETIC_SLOTS.contains(&&*r.slot.event_type))
        .filter_map(|r| r.provenance().cloned())
        .collect();
    if current.is_empty() {
        return Ok(());
    }
    let mut event_ids: Vec<OwnedEventId> = current.iter().map(|p| p.event_id.clone()).collect();
    event_ids.sort();

    let previous = inner.store.sent_preview(room_id).await?;
    let same_version = previous.as_ref().is_some_and(|p| p.events == event_ids);
    let mut sent: BTreeSet<(OwnedUserId, OwnedDeviceId)> = match previous {
        Some(previous) if same_version => previous.devices.into_iter().collect(),
        _ => BTreeSet::new(),
    };
    let mut content: Option<(Vec<Raw<AnySyncStateEvent>>, Vec<ExportedRoomKey>)> = None;
    let mut delivered_any = false;
    for (via, users) in targets {
        let devices: Vec<Device> = keys::user_devices(inner, &users)
            .await?
            .into_iter()
            .filter(|d| !sent.contains(&(d.user_id().to_owned(), d.device_id().to_owned())))
            .collect();
        if devices.is_empty() {
            continue;
        }
        if content.is_none() {
            content = Some(preview_content(inner, room, &current).await?);
        }
        let Some((events, keys)) = &content else { continue };
        if events.is_empty() || keys.is_empty() {
            warn!(%room_id, "no event or key to preview the restricted room with");
            return Ok(());
        }
        let message = json!({ "room_id": room_id, "via": via, "events": events, "keys": keys });
        let message: Raw<AnyToDeviceEventContent> = Raw::new(&message)?.cast_unchecked();
        let failures = inner
            .client
            .encryption()
            .encrypt_and_send_raw_to_device(
                devices.iter().collect(),
                identifiers::RESTRICTED_PREVIEW,
                message,
                inner.config.sharing_strategy.clone(),
            )
            .await?;
        let mut delivered = 0;
        for device in &devices {
            let key = (device.user_id().to_owned(), device.device_id().to_owned());
            if failures.iter().any(|(u, d)| *u == key.0 && *d == key.1) {
                warn!(user_id = %key.0, device_id = %key.1, "restricted room preview not delivered");
            } else {
                sent.insert(key);
                delivered += 1;
            }
        }
        delivered_any |= delivered > 0;
        info!(%room_id, %via, devices = delivered, users = users.len(), "pushed the restricted room's preview");
        inner.notify(vec![StateUpdate::PreviewSent {
            room_id: room_id.to_owned(),
            via,
            devices: delivered,
        }]);
    }
    if delivered_any || !same_version {
        let record = SentPreview {
            room_id: room_id.to_owned(),
            events: event_ids,
            devices: sent.into_iter().collect(),
        };
        inner
            .store
            .save_changes(StateChanges { sent_previews: vec![record], ..Default::default() })
            .await?;
    }
    Ok(())
}

/// The encrypted events of the current aesthetic values, as the homeserver served them, and
/// their keys at those events' indices.
async fn preview_content(
    inner: &Inner,
    room: &Room,
    current: &[Provenance],
) -> Result<(Vec<Raw<AnySyncStateEvent>>, Vec<ExportedRoomKey>)> {
    let wanted: BTreeSet<&OwnedEventId> = current.iter().map(|p| &p.event_id).collect();
    let events: Vec<Raw<AnySyncStateEvent>> = room
        .get_state_events(StateEventType::RoomEncrypted)
        .await?
        .into_iter()
        .filter_map(|raw| match raw {
            RawAnySyncOrStrippedState::Sync(raw) => Some(raw),
            RawAnySyncOrStrippedState::Stripped(_) => None,
        })
        .filter(|raw| {
            raw.get_field::<OwnedEventId>("event_id")
                .ok()
                .flatten()
                .is_some_and(|id| wanted.contains(&id))
        })
        .collect();
    let indices: BTreeMap<String, u32> =
        current.iter().map(|p| (p.session_id.clone(), p.message_index)).collect();
    let keys = keys::keys_at_index(inner, room.room_id(), &indices).await?;
    Ok((events, keys))
}

/// Takes a restricted room's preview (an [`identifiers::RESTRICTED_PREVIEW`] to-device event),
/// or records why not.
pub(crate) async fn receive_preview(
    inner: &Inner,
    event: &Value,
    info: Option<&EncryptionInfo>,
) -> Result<()> {
    if !inner.config.restricted_previews.accept {
        return Ok(());
    }
    let Some(info) = info else {
        warn!("ignoring a restricted room preview that was not Olm-encrypted");
        return Ok(());
    };
    let sharer = info.sender.clone();
    let Ok(preview) = serde_json::from_value::<RestrictedPreview>(event["content"].clone()) else {
        warn!(%sharer, "ignoring a malformed restricted room preview");
        return Ok(());
    };
    let max = identifiers::RESTRICTED_PREVIEW_MAX;
    if preview.events.len() > max || preview.keys.len() > max {
        warn!(%sharer, "ignoring a restricted room preview with too many events or keys");
        return Ok(());
    }
    let room_id = preview.room_id.clone();
    if inner.client.get_room(&room_id).is_some_and(|r| r.state() == RoomState::Joined) {
        debug!(%room_id, "ignoring the preview of a room we are in");
        return Ok(());
    }
    let refuse = |reason: PreviewRefusal| {
        warn!(%room_id, %sharer, %reason, "refused a restricted room preview");
        inner.notify(vec![StateUpdate::PreviewRefused {
            room_id: room_id.clone(),
            sharer: sharer.clone(),
            reason,
        }]);
        Ok(())
    };
    let Some(via) = inner.client.get_room(&preview.via).filter(|r| r.state() == RoomState::Joined)
    else {
        return refuse(PreviewRefusal::NotInAllowedRoom);
    };
    if !is_moderator(&via, &sharer).await {
        return refuse(PreviewRefusal::SharerNotTrusted);
    }
    if sender_device(inner, info).await?.is_none() {
        return refuse(PreviewRefusal::DeviceNotAllowed);
    }

    let origin = KeyOrigin::Preview { shared_by: sharer.clone() };
    let mut sessions: BTreeMap<String, InboundStateSession> = BTreeMap::new();
    for key in &preview.keys {
        // Bound to the room the message names: a key for another room is refused.
        match InboundStateSession::import(&room_id, key, origin.clone()) {
            Ok(session) => {
                sessions.insert(session.session_id(), session);
            }
            Err(error) => warn!(%sharer, %error, "refused a restricted room preview key"),
        }
    }
    let parsed: Vec<(usize, PreviewEvent)> = preview
        .events
        .iter()
        .enumerate()
        .filter_map(|(i, raw)| Some((i, PreviewEvent::from_raw(raw)?)))
        .collect();
    let (positions, events): (Vec<usize>, Vec<PreviewEvent>) = parsed.into_iter().unzip();
    let (_, shown) = decode(inner, &room_id, &events, &mut sessions).await?;
    if shown.is_empty() {
        return refuse(PreviewRefusal::NothingValid);
    }
    let used: BTreeSet<&str> = shown.iter().map(|i| events[*i].session_id()).collect();
    let kept: Vec<InboundStateSession> =
        sessions.into_values().filter(|s| used.contains(s.session_id().as_str())).collect();
    let kept = crate::receive::keep_further_reaching(inner, kept).await?;
    let record = ReceivedPreview {
        room_id: room_id.clone(),
        via: preview.via.clone(),
        shared_by: sharer.clone(),
        events: shown.iter().map(|i| preview.events[positions[*i]].clone()).collect(),
        received_at: MilliSecondsSinceUnixEpoch::now(),
    };
    inner
        .store
        .save_changes(StateChanges {
            inbound_sessions: kept.iter().map(InboundStateSession::pickle).collect(),
            received_previews: vec![record],
            ..Default::default()
        })
        .await?;
    info!(%room_id, via = %preview.via, %sharer, "took a restricted room preview");
    inner.notify(vec![StateUpdate::PreviewReceived {
        room_id,
        via: preview.via,
        shared_by: sharer,
    }]);
    Ok(())
}

/// Whether `user_id` is joined to `room` with a power level above the room's default.
async fn is_moderator(room: &Room, user_id: &UserId) -> bool {
    if !is_joined(room, user_id).await {
        return false;
    }
    room.power_levels().await.is_ok_and(|levels| levels.for_user(user_id) > levels.users_default)
}

/// The preview of a restricted room we are not in, from what a member pushed to us.
pub(crate) async fn preview(inner: &Inner, room_id: &RoomId) -> Result<Option<RoomPreview>> {
    let Some(record) = inner.store.received_preview(room_id).await? else {
        return Ok(None);
    };
    let events: Vec<PreviewEvent> =
        record.events.iter().filter_map(PreviewEvent::from_raw).collect();
    let mut sessions = stored_sessions(inner, room_id, &events).await?;
    let (mut preview, _) = decode(inner, room_id, &events, &mut sessions).await?;
    // Who sent this preview, whoever first gave us one of its keys.
    preview.shared_by = Some(record.shared_by);
    preview.via = Some(record.via);
    Ok(Some(preview))
}

/// Forgets the preview of a room we joined: its own state applies now.
pub(crate) async fn forget_if_joined(inner: &Inner, room_id: &RoomId) -> Result<()> {
    let joined = inner.client.get_room(room_id).is_some_and(|r| r.state() == RoomState::Joined);
    if joined && inner.store.received_preview(room_id).await?.is_some() {
        let changes =
            StateChanges { removed_previews: vec![room_id.to_owned()], ..Default::default() };
        inner.store.save_changes(changes).await?;
    }
    Ok(())
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
