//! Invite previews: the aesthetic slots' keys go with the invite, so the invitee sees the name.
//!
//! Contextual invites (MSC3414): the preview is read from the encrypted state the homeserver puts
//! in the invite's stripped state.

use crypto_ext::{
    InboundStateSession, KeyOrigin, OutboundStateSession, StateSlot, identifiers::AESTHETIC_SLOTS,
    wire::InviteStateKeys,
};
use matrix_sdk::{
    Room, RoomState, deserialized_responses::RawAnySyncOrStrippedState,
    encryption::identities::Device,
};
use matrix_sdk_crypto::olm::ExportedRoomKey;
use ruma::{RoomId, events::StateEventType};
use state_store_ext::StateChanges;
use tracing::{debug, warn};

use crate::{
    Result, RoomPreview,
    context::{Context, OlmSender, PreviewEvent},
};

/// The invite-preview feature.
pub(crate) struct Invites {
    ctx: Context,
}

impl Invites {
    pub(crate) fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    /// Sends the invitee's `devices` the keys of our aesthetic slots at their current index.
    /// Returns how many keys went out.
    pub(crate) async fn send_preview_keys(
        &self,
        room_id: &RoomId,
        devices: &[Device],
    ) -> Result<usize> {
        let ctx = &self.ctx;
        let mut keys: Vec<ExportedRoomKey> = Vec::new();
        for event_type in AESTHETIC_SLOTS {
            let slot = StateSlot::new(*event_type, "");
            if let Some(pickle) = ctx.store.outbound_session(room_id, &slot).await? {
                let mut session = OutboundStateSession::from_pickle(pickle);
                keys.extend(session.export_current(&ctx.own_device));
            }
        }
        if keys.is_empty() || devices.is_empty() {
            return Ok(0);
        }
        let count = keys.len();
        ctx.send_message(devices, &InviteStateKeys { room_id: room_id.to_owned(), keys }).await?;
        Ok(count)
    }

    /// Stores the state keys of an invite: only from the sender of our pending invite, only for
    /// that room, only while we are invited to it.
    pub(crate) async fn receive_preview_keys(
        &self,
        sender: &OlmSender,
        content: InviteStateKeys,
    ) -> Result<()> {
        let room_id = &content.room_id;
        let Some(room) =
            self.ctx.client.get_room(room_id).filter(|room| room.state() == RoomState::Invited)
        else {
            warn!(%room_id, sender = %sender.user_id, "ignoring invite state keys for a room we are not invited to");
            return Ok(());
        };
        let inviter = room.invite_details().await?.inviter_id;
        if inviter != sender.user_id {
            warn!(%room_id, sender = %sender.user_id, %inviter, "ignoring invite state keys from someone other than the inviter");
            return Ok(());
        }
        let origin = KeyOrigin::Invite { shared_by: sender.user_id.clone() };
        let mut imported = Vec::new();
        for key in &content.keys {
            // Bound to the room the message names; a key for another room is refused.
            match InboundStateSession::import(&content.room_id, key, origin.clone()) {
                Ok(session) => imported.push(session.shared_by_device(sender.curve25519)),
                Err(error) => {
                    warn!(sender = %sender.user_id, %error, "refused an invite state key")
                }
            }
        }
        // Our own copy, say, may reach further back.
        let stored = self.ctx.store_sessions(imported, StateChanges::default()).await?;
        debug!(room_id = %content.room_id, count = stored.len(), "stored invite state keys");
        Ok(())
    }

    /// The preview of an invited room, from its stripped encrypted state.
    pub(crate) async fn preview(&self, room: &Room) -> Result<RoomPreview> {
        let room_id = room.room_id();
        let events: Vec<PreviewEvent> = room
            .get_state_events(StateEventType::RoomEncrypted)
            .await?
            .iter()
            .filter_map(|raw| match raw {
                RawAnySyncOrStrippedState::Stripped(raw) => PreviewEvent::from_raw(raw),
                RawAnySyncOrStrippedState::Sync(_) => None,
            })
            .collect();
        let mut sessions = self.ctx.preview_sessions(room_id, &events).await?;
        Ok(self.ctx.decode_preview(room_id, &events, &mut sessions).await?.0)
    }
}
