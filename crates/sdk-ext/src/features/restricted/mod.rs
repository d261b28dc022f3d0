//! Restricted rooms before joining: push and take previews of their encrypted look.
//!
//! MSC3414's restricted rooms: the members of a room a restricted room's
//! allow-list names can join it without an invite, so a space lists it to them; with encrypted
//! state they would see no name. One member of the restricted room (the one who set its join
//! rules, or the most powerful moderator once that one is gone: see [`pusher::pusher`]) pushes the
//! room's aesthetic encrypted state events and their keys to those members, so the space can
//! show the name, topic, avatar and alias before they join, and they read them at once after.
//!
//! Only the aesthetic slots go out, each key at the index of its slot's current event: a
//! previewer never learns an earlier value, nor anything else of the room. The homeserver gives
//! non-members no room state, so the events travel with their keys; the receiver checks them as
//! an invite preview is checked (the session belongs to a device of the event's sender, the
//! payload matches, no critical type) and trusts the rest to the sharer, whom it accepts only as
//! a moderator of the allowed room.

mod pusher;

use std::collections::{BTreeMap, BTreeSet};

use crypto_ext::{
    InboundStateSession, KeyOrigin, Provenance, identifiers::AESTHETIC_SLOTS,
    wire::RestrictedPreview,
};
use matrix_sdk::{
    Room, RoomMemberships, deserialized_responses::RawAnySyncOrStrippedState,
    encryption::identities::Device,
};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
    events::{AnySyncStateEvent, StateEventType, room::member::MembershipState},
    room::{AllowRule, JoinRule},
    serde::Raw,
};
use state_store_ext::{ReceivedPreview, SentPreview, StateChanges};
use tracing::{debug, info, warn};

use self::pusher::pusher;
use crate::{
    PreviewRefusal, Result, RoomPreview, StateUpdate,
    context::{Context, OlmSender, PreviewEvent, is_moderator},
};

/// The restricted-preview feature.
pub(crate) struct RestrictedPreviews {
    ctx: Context,
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

impl RestrictedPreviews {
    pub(crate) fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    /// Pushes the previews of our restricted rooms to the members of their allowed rooms who
    /// lack the current version, through the allowed rooms for which we are the pusher.
    /// `updated`: the rooms a sync changed, to skip the restricted rooms it cannot concern
    /// (`None`: every room).
    pub(crate) async fn share_previews(
        &self,
        updated: Option<&BTreeSet<OwnedRoomId>>,
    ) -> Result<()> {
        if !self.ctx.config.restricted_previews.share {
            return Ok(());
        }
        for room in self.ctx.client.joined_rooms() {
            let Some(allowed) = allowed_rooms(&room) else { continue };
            let concerned = updated.is_none_or(|updated| {
                updated.contains(room.room_id()) || allowed.iter().any(|a| updated.contains(a))
            });
            if concerned {
                self.share_preview(&room, &allowed).await?;
            }
        }
        Ok(())
    }

    /// Pushes one restricted room's preview to the devices of its allowed rooms' members that were
    /// not sent its current version, through the allowed rooms for which we are the pusher.
    async fn share_preview(&self, room: &Room, allowed: &[OwnedRoomId]) -> Result<()> {
        let ctx = &self.ctx;
        let room_id = room.room_id();
        let own = &ctx.own_device.user_id;
        let members = room.members(RoomMemberships::JOIN | RoomMemberships::INVITE).await?;
        let here: BTreeSet<OwnedUserId> = members.iter().map(|m| m.user_id().to_owned()).collect();
        let joined_here: BTreeSet<OwnedUserId> = members
            .iter()
            .filter(|m| *m.membership() == MembershipState::Join)
            .map(|m| m.user_id().to_owned())
            .collect();
        let room_levels = ctx.room_power_levels(room).await?;
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
            let Some(via_room) = ctx.joined_room(via) else { continue };
            let joined_there: Vec<OwnedUserId> = via_room
                .members(RoomMemberships::JOIN)
                .await?
                .iter()
                .map(|m| m.user_id().to_owned())
                .collect();
            let via_levels = ctx.room_power_levels(&via_room).await?;
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

        let current: Vec<Provenance> = ctx
            .store
            .room_state(room_id)
            .await?
            .into_iter()
            .filter(|r| {
                r.slot.state_key.is_empty() && AESTHETIC_SLOTS.contains(&&*r.slot.event_type)
            })
            .filter_map(|r| r.provenance().cloned())
            .collect();
        if current.is_empty() {
            return Ok(());
        }
        let mut event_ids: Vec<OwnedEventId> = current.iter().map(|p| p.event_id.clone()).collect();
        event_ids.sort();

        let previous = ctx.store.sent_preview(room_id).await?;
        let same_version = previous.as_ref().is_some_and(|p| p.events == event_ids);
        let mut sent: BTreeSet<(OwnedUserId, OwnedDeviceId)> = match previous {
            Some(previous) if same_version => previous.devices.into_iter().collect(),
            _ => BTreeSet::new(),
        };
        // Built once, for the first allowed room that has a device to send it to.
        let mut message: Option<RestrictedPreview> = None;
        let mut delivered_any = false;
        for (via, users) in targets {
            let devices: Vec<Device> = ctx
                .member_devices(&users)
                .await?
                .into_iter()
                .filter(|d| !sent.contains(&(d.user_id().to_owned(), d.device_id().to_owned())))
                .collect();
            if devices.is_empty() {
                continue;
            }
            let message = match &mut message {
                Some(message) => message,
                None => message.insert(self.preview_content(room, &current, &via).await?),
            };
            if message.events.is_empty() || message.keys.is_empty() {
                warn!(%room_id, "no event or key to preview the restricted room with");
                return Ok(());
            }
            message.via = via.clone();
            let failures = ctx.send_message(&devices, message).await?;
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
            ctx.notify(vec![StateUpdate::PreviewSent {
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
            ctx.store
                .save_changes(StateChanges { sent_previews: vec![record], ..Default::default() })
                .await?;
        }
        Ok(())
    }

    /// The preview of `room` through `via`: the encrypted events of the current aesthetic
    /// values, as the homeserver served them, and their keys at those events' indices.
    async fn preview_content(
        &self,
        room: &Room,
        current: &[Provenance],
        via: &RoomId,
    ) -> Result<RestrictedPreview> {
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
        let keys = self.ctx.keys_at_index(room.room_id(), &indices).await?;
        Ok(RestrictedPreview {
            room_id: room.room_id().to_owned(),
            via: via.to_owned(),
            events,
            keys,
        })
    }

    /// Takes a restricted room's preview, or records why not.
    pub(crate) async fn receive_preview(
        &self,
        sender: &OlmSender,
        preview: RestrictedPreview,
    ) -> Result<()> {
        let ctx = &self.ctx;
        let sharer = sender.user_id.clone();
        let room_id = preview.room_id.clone();
        if ctx.joined_room(&room_id).is_some() {
            debug!(%room_id, "ignoring the preview of a room we are in");
            return Ok(());
        }
        let refuse = |reason: PreviewRefusal| {
            warn!(%room_id, %sharer, %reason, "refused a restricted room preview");
            ctx.notify(vec![StateUpdate::PreviewRefused {
                room_id: room_id.clone(),
                sharer: sharer.clone(),
                reason,
            }]);
            Ok(())
        };
        let Some(via) = ctx.joined_room(&preview.via) else {
            return refuse(PreviewRefusal::NotInAllowedRoom);
        };
        if !is_moderator(&via, &sharer).await {
            return refuse(PreviewRefusal::SharerNotTrusted);
        }
        if sender.device.is_none() {
            return refuse(PreviewRefusal::DeviceNotAllowed);
        }

        let origin = KeyOrigin::Preview { shared_by: sharer.clone() };
        let mut sessions: BTreeMap<String, InboundStateSession> = BTreeMap::new();
        for key in &preview.keys {
            // Bound to the room the message names: a key for another room is refused.
            match InboundStateSession::import(&room_id, key, origin.clone()) {
                Ok(session) => {
                    let session = session.shared_by_device(sender.curve25519);
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
        let (_, shown) = ctx.decode_preview(&room_id, &events, &mut sessions).await?;
        if shown.is_empty() {
            return refuse(PreviewRefusal::NothingValid);
        }
        let used: BTreeSet<&str> = shown.iter().map(|i| events[*i].session_id()).collect();
        let kept: Vec<InboundStateSession> =
            sessions.into_values().filter(|s| used.contains(s.session_id().as_str())).collect();
        let record = ReceivedPreview {
            room_id: room_id.clone(),
            via: preview.via.clone(),
            shared_by: sharer.clone(),
            events: shown.iter().map(|i| preview.events[positions[*i]].clone()).collect(),
            received_at: MilliSecondsSinceUnixEpoch::now(),
        };
        let changes = StateChanges { received_previews: vec![record], ..Default::default() };
        ctx.store_sessions(kept, changes).await?;
        info!(%room_id, via = %preview.via, %sharer, "took a restricted room preview");
        ctx.notify(vec![StateUpdate::PreviewReceived {
            room_id: room_id.clone(),
            via: preview.via,
            shared_by: sharer.clone(),
        }]);
        Ok(())
    }

    /// The preview of a restricted room we are not in, from what a member pushed to us.
    pub(crate) async fn preview(&self, room_id: &RoomId) -> Result<Option<RoomPreview>> {
        let ctx = &self.ctx;
        let Some(record) = ctx.store.received_preview(room_id).await? else {
            return Ok(None);
        };
        let events: Vec<PreviewEvent> =
            record.events.iter().filter_map(PreviewEvent::from_raw).collect();
        let mut sessions = ctx.preview_sessions(room_id, &events).await?;
        let (mut preview, _) = ctx.decode_preview(room_id, &events, &mut sessions).await?;
        // Who sent this preview, whoever first gave us one of its keys.
        preview.shared_by = Some(record.shared_by);
        preview.via = Some(record.via);
        Ok(Some(preview))
    }

    /// Forgets the preview of a room we joined: its own state applies now.
    pub(crate) async fn forget_if_joined(&self, room_id: &RoomId) -> Result<()> {
        let ctx = &self.ctx;
        if ctx.joined_room(room_id).is_some()
            && ctx.store.received_preview(room_id).await?.is_some()
        {
            let changes =
                StateChanges { removed_previews: vec![room_id.to_owned()], ..Default::default() };
            ctx.store.save_changes(changes).await?;
        }
        Ok(())
    }
}
