//! What the update stream reports: values, no I/O.

use crypto_ext::{RejectionReason, StateSlot};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};

use crate::outcomes::{ImportedBundle, KeyRequestRefusal, PreviewRefusal};

/// A change to the decrypted state of a room, sent to subscribers after it is stored.
#[derive(Clone, Debug, PartialEq)]
pub enum StateUpdate {
    /// An encrypted state event was decrypted and accepted.
    Accepted {
        /// The room.
        room_id: OwnedRoomId,
        /// The slot it writes.
        slot: StateSlot,
        /// The event.
        event_id: OwnedEventId,
        /// Whether it now holds the slot (it may be older than the current value).
        current: bool,
        /// Whether it had been waiting for its key.
        was_pending: bool,
    },
    /// An encrypted state event was rejected. A transient rejection
    /// ([`RejectionReason::is_transient`](crate::RejectionReason::is_transient): the sender's
    /// device was unknown) is validated again when that sender's devices change, and may be
    /// followed by an `Accepted` update of the same event.
    Rejected {
        /// The room.
        room_id: OwnedRoomId,
        /// The event.
        event_id: OwnedEventId,
        /// Why.
        reason: RejectionReason,
    },
    /// The accepted event holding a slot was redacted: the slot has no value now.
    Redacted {
        /// The room.
        room_id: OwnedRoomId,
        /// The slot it held.
        slot: StateSlot,
        /// The redacted event.
        event_id: OwnedEventId,
    },
    /// An encrypted state event cannot be decrypted yet and waits for its key.
    Pending {
        /// The room.
        room_id: OwnedRoomId,
        /// The event.
        event_id: OwnedEventId,
        /// The session whose key is missing.
        session_id: String,
    },
    /// A room-key bundle from the inviter was imported: past messages and state it covers are
    /// readable now.
    HistoryImported(ImportedBundle),
    /// A room-key bundle was refused (too large, hash mismatch, malformed, gone).
    BundleRefused {
        /// The room.
        room_id: OwnedRoomId,
        /// Who announced it.
        sender: OwnedUserId,
        /// Why, for display.
        reason: String,
    },
    /// A room-key bundle could not be fetched for a reason that may clear (the media server
    /// failed or stalled past `BundleLimits::download_timeout`): it is kept and tried again in
    /// the background, after 30 seconds, then twice as long each time up to an hour.
    BundleDeferred {
        /// The room.
        room_id: OwnedRoomId,
        /// Who announced it.
        sender: OwnedUserId,
        /// Why, for display.
        reason: String,
    },
    /// We sent a member the state keys they asked for.
    KeyRequestAnswered {
        /// The room.
        room_id: OwnedRoomId,
        /// Who asked.
        requester: OwnedUserId,
        /// How many keys went out.
        keys: usize,
    },
    /// We refused a member's request for state keys.
    KeyRequestRefused {
        /// The room.
        room_id: OwnedRoomId,
        /// Who asked.
        requester: OwnedUserId,
        /// Why.
        reason: KeyRequestRefusal,
    },
    /// We pushed a restricted room's preview to members of one of its allowed rooms.
    PreviewSent {
        /// The restricted room.
        room_id: OwnedRoomId,
        /// The allowed room whose members were sent it.
        via: OwnedRoomId,
        /// To how many devices it went.
        devices: usize,
    },
    /// A member of a room we are in sent us the preview of a restricted room we have not
    /// joined; read it with [`crate::StateExtension::restricted_preview`].
    PreviewReceived {
        /// The restricted room.
        room_id: OwnedRoomId,
        /// The allowed room, one we are in, through which it came.
        via: OwnedRoomId,
        /// Who sent it.
        shared_by: OwnedUserId,
    },
    /// We refused the preview of a restricted room.
    PreviewRefused {
        /// The restricted room.
        room_id: OwnedRoomId,
        /// Who sent it.
        sharer: OwnedUserId,
        /// Why.
        reason: PreviewRefusal,
    },
}
