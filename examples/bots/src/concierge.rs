//! The history concierge: invites with history, and reports the history it was given.

use matrix_sdk::{
    Room,
    ruma::{OwnedRoomId, OwnedUserId, UserId},
};
use sdk_ext::{InviteReport, RoomHistoryExt, SkippedDevice, StateUpdate};

use crate::{Bot, power::invite_refusal};

/// `!invite @user` invites with history (MSC4268) for a user who may invite, and answers with
/// the invite report; invited itself (the bot joins every invite), it reports the history it
/// could read and who shared it, or why a bundle was refused.
#[derive(Clone, Copy, Debug, Default)]
pub struct Concierge;

impl Bot for Concierge {
    async fn command(&self, room: &Room, sender: &UserId, body: &str) -> Option<String> {
        let invitee = body.strip_prefix("!invite ")?.trim();
        let Ok(invitee) = OwnedUserId::try_from(invitee) else {
            return Some(format!("usage: !invite @user:server ({invitee:?} is not a user ID)"));
        };
        let levels = room.power_levels_or_default().await;
        if let Some(refusal) = invite_refusal(&levels, sender) {
            return Some(format!("refused: {refusal}"));
        }
        Some(match room.invite_with_history(&invitee).await {
            Ok(report) => describe(sender, &report),
            Err(error) => format!("failed to invite {invitee}: {error}"),
        })
    }

    fn report(&self, update: &StateUpdate) -> Option<(OwnedRoomId, String)> {
        match update {
            StateUpdate::HistoryImported(bundle) => Some((
                bundle.room_id.clone(),
                format!(
                    "history shared by {}: {} keys read, {} withheld",
                    bundle.shared_by, bundle.keys, bundle.withheld
                ),
            )),
            StateUpdate::BundleRefused { room_id, sender, reason } => {
                Some((room_id.clone(), format!("history shared by {sender} refused: {reason}")))
            }
            _ => None,
        }
    }
}

/// The invite report, in one line.
fn describe(sender: &UserId, report: &InviteReport) -> String {
    let skipped: Vec<String> = report
        .devices_skipped
        .iter()
        .map(|skipped| match skipped {
            SkippedDevice::NotCrossSigned(device) => format!("{device} (not cross-signed)"),
            SkippedDevice::Blocked(device) => format!("{device} (blocked)"),
            SkippedDevice::DeliveryFailed(device) => format!("{device} (delivery failed)"),
        })
        .collect();
    format!(
        "invited {} for {sender}: {} message keys and {} state keys shared, {} withheld; devices \
         reached: {}, skipped: {}",
        report.invitee,
        report.shared_message_keys,
        report.shared_state_keys,
        report.withheld_keys,
        report.devices_reached.len(),
        if skipped.is_empty() { "none".to_owned() } else { skipped.join(", ") },
    )
}
