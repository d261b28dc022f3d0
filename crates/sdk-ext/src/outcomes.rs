//! What the features report back: outcomes, refusals and reports, as values without I/O.

use crypto_ext::BundleError;
use ruma::{OwnedDeviceId, OwnedMxcUri, OwnedRoomId, OwnedUserId};
use thiserror::Error;

/// Why a received bundle was not imported.
#[derive(Debug, Error)]
pub enum BundleImportError {
    /// The announcement's `file` is not a usable `EncryptedFile`.
    #[error("the bundle announcement is malformed: {0}")]
    InvalidAnnouncement(String),
    /// The device that announced the bundle is not cross-signed by its owner (or is blocked):
    /// its keys could come from anyone who got hold of the account.
    #[error("the device that announced the bundle is not cross-signed by its owner")]
    UntrustedSender,
    /// The homeserver does not have the file (any more).
    #[error("the homeserver has no such bundle")]
    NotFound,
    /// The download failed; the announcement is kept and the import retried later.
    #[error("downloading the bundle failed: {0}")]
    Download(String),
    /// The bundle itself is unacceptable: too large, not matching its hash, malformed.
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

impl BundleImportError {
    /// Whether trying again later cannot help (the announcement is then forgotten).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Download(_))
    }
}

/// A bundle that was imported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedBundle {
    /// The room.
    pub room_id: OwnedRoomId,
    /// Who shared it (the inviter).
    pub shared_by: OwnedUserId,
    /// Sessions imported (message and state sessions look alike in a bundle).
    pub keys: usize,
    /// Sessions the sender withheld, with their code kept for the app.
    pub withheld: usize,
    /// Entries dropped because they name another room.
    pub foreign_entries: usize,
    /// Sessions dropped because the bundle both shared and withheld them.
    pub conflicting_sessions: usize,
}

/// What happened to one bundle announcement of a room.
#[derive(Debug)]
pub enum BundleOutcome {
    /// Imported; the announcement is forgotten.
    Imported(ImportedBundle),
    /// Refused for good; the announcement is forgotten.
    Refused {
        /// Who announced it.
        sender: OwnedUserId,
        /// Why.
        error: BundleImportError,
    },
    /// Not imported this time (a download failure); kept and retried at the next sync that
    /// touches the room, or the next start.
    Deferred {
        /// Who announced it.
        sender: OwnedUserId,
        /// Why.
        error: BundleImportError,
    },
    /// Dropped without download: its sender is not the user whose invite we accepted, or the
    /// invite was accepted too long ago.
    Ignored {
        /// Who announced it.
        sender: OwnedUserId,
    },
}

/// Why a member's request for state keys was not answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRequestRefusal {
    /// We are not joined to the room.
    NotInRoom,
    /// The requester is not joined to the room in our view of it (never joined, or left).
    RequesterNotJoined,
    /// The requesting device is unknown to us, or blocked.
    DeviceNotAllowed,
    /// None of the requested sessions encrypts the current value of a slot we can read.
    NothingToShare,
}

impl std::fmt::Display for KeyRequestRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotInRoom => "we are not in the room",
            Self::RequesterNotJoined => "the requester is not joined to the room",
            Self::DeviceNotAllowed => "the requesting device is unknown or blocked",
            Self::NothingToShare => "no requested session encrypts current state we hold",
        })
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

/// Why a device of the invitee did not get the bundle announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkippedDevice {
    /// The device is not cross-signed by its owner: keys go only to devices the invitee vouched
    /// for.
    NotCrossSigned(OwnedDeviceId),
    /// The device is blocked locally.
    Blocked(OwnedDeviceId),
    /// Olm encryption or delivery failed.
    DeliveryFailed(OwnedDeviceId),
}

/// What [`RoomStateExt::upgrade_to_encrypted_state`](crate::RoomStateExt::upgrade_to_encrypted_state)
/// did.
#[derive(Debug)]
pub struct RoomUpgrade {
    /// The new room, created with encrypted state; the old one's tombstone points to it.
    pub room: matrix_sdk::Room,
    /// The slots whose current values were carried over, encrypted.
    pub carried: Vec<crypto_ext::StateSlot>,
    /// The old room's members invited to the new one with history, each with its report.
    pub invited: Vec<InviteReport>,
    /// The members whose invite failed, with the reason; invite them again with
    /// [`RoomHistoryExt::invite_with_history`](crate::RoomHistoryExt::invite_with_history).
    pub not_invited: Vec<(OwnedUserId, String)>,
}

/// What [`RoomHistoryExt::invite_with_history`](crate::RoomHistoryExt::invite_with_history) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteReport {
    /// The invited user.
    pub invitee: OwnedUserId,
    /// Message sessions shared (their creators marked them shareable and the history visibility
    /// allows it).
    pub shared_message_keys: usize,
    /// State sessions shared, each at the index of its slot's current event.
    pub shared_state_keys: usize,
    /// Keys of the aesthetic slots sent with the invite for the invite preview.
    pub preview_keys: usize,
    /// Sessions listed as withheld (`m.history_not_shared`).
    pub withheld_keys: usize,
    /// Where the encrypted bundle was uploaded.
    pub bundle_url: OwnedMxcUri,
    /// The devices the announcement reached.
    pub devices_reached: Vec<OwnedDeviceId>,
    /// The devices skipped, with the reason.
    pub devices_skipped: Vec<SkippedDevice>,
}
