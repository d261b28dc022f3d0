//! A state session we can decrypt with: our own, or one imported from an export (bundle, key
//! share).

use matrix_sdk_crypto::{olm::ExportedRoomKey, types::EventEncryptionAlgorithm};
use ruma::{OwnedRoomId, OwnedUserId, RoomId};
use serde::{Deserialize, Serialize};
use vodozemac::{
    Curve25519PublicKey,
    megolm::{
        InboundGroupSession, InboundGroupSessionPickle, MegolmMessage, SessionConfig,
        SessionOrdering,
    },
};

use super::{EncryptedStateEvent, OutboundStateSession, OwnDevice};
use crate::error::{DecryptStateError, ImportKeyError, PickleError};

/// How we came to hold a session's key; recorded for attribution ("shared by Alice").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KeyOrigin {
    /// We created the session.
    Own,
    /// The session's creator sent us the key (`m.room_key` over Olm).
    Direct,
    /// The key came in a room-key bundle (MSC4268) from `shared_by`.
    Bundle {
        /// Who uploaded the bundle.
        shared_by: OwnedUserId,
    },
    /// The key came in answer to a key request, from `shared_by`.
    KeyShare {
        /// Who answered.
        shared_by: OwnedUserId,
    },
    /// The key came with an invite, from the inviter `shared_by`, so the invite preview can show
    /// the room's name and topic.
    Invite {
        /// Who invited us.
        shared_by: OwnedUserId,
    },
    /// The key came before we joined a restricted room, from `shared_by`, a member of a room
    /// the restricted room's allow-list names (MSC3414), so a space can show the room's name.
    Preview {
        /// Who sent the preview.
        shared_by: OwnedUserId,
    },
    /// A copy read from the client's crypto store of a key it holds as imported (a key file, a
    /// key backup, a forwarded key, a bundle matrix-sdk took in): who shared it is not known,
    /// and its creator is only what the copy claims.
    Imported,
}

impl KeyOrigin {
    /// The user who shared the key, when it did not come from its creator.
    pub fn shared_by(&self) -> Option<&OwnedUserId> {
        match self {
            Self::Bundle { shared_by }
            | Self::KeyShare { shared_by }
            | Self::Invite { shared_by }
            | Self::Preview { shared_by } => Some(shared_by),
            Self::Own | Self::Direct | Self::Imported => None,
        }
    }
}

/// The result of decrypting an encrypted state event with a session we hold.
#[derive(Clone, Debug)]
pub struct DecryptedState {
    /// The decrypted plaintext (a state payload, not yet validated).
    pub plaintext: String,
    /// The session id.
    pub session_id: String,
    /// The event's index in the session.
    pub message_index: u32,
    /// The Curve25519 key of the device that created the session, to be checked against the
    /// event sender's devices.
    pub sender_key: Curve25519PublicKey,
    /// How we got the key.
    pub key_origin: KeyOrigin,
    /// Whether `sender_key` is proven to be the creator's (see
    /// [`InboundStateSession::creator_proven`]), not only claimed by whoever shared the key.
    pub creator_proven: bool,
}

/// The most copies of one session that do not connect to the copy held (see
/// [`InboundStateSession::merge`]) kept next to it; later ones are dropped.
pub const MAX_UNCONNECTED_COPIES: usize = 4;

/// An inbound state session bound to one room.
///
/// The export format is unsigned: anyone can hand us a "copy" of a real session id with a junk
/// ratchet, or name another device as the session's creator. So the first copy held keeps its
/// creator claim whatever copies come later, and a copy that does not connect to it is kept
/// beside it (up to [`MAX_UNCONNECTED_COPIES`]) until an event decides: the copy whose ratchet
/// decrypts it (Megolm's MAC and the session's signature check the ciphertext) is the genuine
/// one, and replaces a held copy that does not.
pub struct InboundStateSession {
    room_id: OwnedRoomId,
    session: InboundGroupSession,
    sender_key: Curve25519PublicKey,
    key_origin: KeyOrigin,
    creator_proven: bool,
    unconnected: Vec<UnconnectedCopy>,
}

/// A copy of the session whose ratchet does not connect to the held one's.
struct UnconnectedCopy {
    session: InboundGroupSession,
    sender_key: Curve25519PublicKey,
    key_origin: KeyOrigin,
    creator_proven: bool,
}

impl std::fmt::Debug for InboundStateSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundStateSession")
            .field("room_id", &self.room_id)
            .field("session_id", &self.session.session_id())
            .field("first_known_index", &self.session.first_known_index())
            .field("key_origin", &self.key_origin)
            .field("creator_proven", &self.creator_proven)
            .field("unconnected_copies", &self.unconnected.len())
            .finish_non_exhaustive()
    }
}

impl InboundStateSession {
    /// Our own copy of an outbound state session.
    pub fn from_outbound(outbound: &OutboundStateSession, own: &OwnDevice) -> Self {
        Self {
            room_id: outbound.room_id().to_owned(),
            session: outbound.inbound_copy(),
            sender_key: own.curve25519,
            key_origin: KeyOrigin::Own,
            creator_proven: true,
            unconnected: Vec::new(),
        }
    }

    /// Imports an exported key for `room_id`.
    ///
    /// # Errors
    ///
    /// [`ImportKeyError`] when the key is for another room, not Megolm v1, or its session id
    /// does not match the key it carries.
    pub fn import(
        room_id: &RoomId,
        key: &ExportedRoomKey,
        key_origin: KeyOrigin,
    ) -> Result<Self, ImportKeyError> {
        if key.algorithm != EventEncryptionAlgorithm::MegolmV1AesSha2 {
            return Err(ImportKeyError::UnsupportedAlgorithm(key.algorithm.to_string()));
        }
        if key.room_id != room_id {
            return Err(ImportKeyError::WrongRoom {
                expected: room_id.to_string(),
                found: key.room_id.to_string(),
            });
        }
        let session = InboundGroupSession::import(&key.session_key, SessionConfig::version_1());
        if session.session_id() != key.session_id {
            return Err(ImportKeyError::SessionIdMismatch {
                claimed: key.session_id.clone(),
                actual: session.session_id(),
            });
        }
        Ok(Self {
            room_id: room_id.to_owned(),
            session,
            sender_key: key.sender_key,
            key_origin,
            creator_proven: false,
            unconnected: Vec::new(),
        })
    }

    /// Records that the key came over Olm from the device whose Curve25519 key is
    /// `sharer_device_key` (the Olm session authenticates it): when that is the creator the key
    /// names, the claim is proven: the creator's own message handed it to us. Any other sharer's
    /// word leaves it unproven.
    #[must_use]
    pub fn shared_by_device(mut self, sharer_device_key: Option<Curve25519PublicKey>) -> Self {
        self.creator_proven = sharer_device_key == Some(self.sender_key);
        self
    }

    /// Whether the session's creator is proven: our own session, or a key the creator's own
    /// device handed us over Olm. Otherwise the creator is only what a sharer claimed.
    pub fn creator_proven(&self) -> bool {
        self.creator_proven
    }

    /// Takes `other`'s creator claim when it is proven and ours is not.
    fn take_proven_claim(&mut self, other: &Self) -> bool {
        if self.creator_proven || !other.creator_proven {
            return false;
        }
        self.sender_key = other.sender_key;
        self.key_origin = other.key_origin.clone();
        self.creator_proven = true;
        true
    }

    /// Takes what `other`, a later copy of the same session, adds to the one held, and never
    /// more: a connected copy that reaches further back lends its ratchet (an import never loses
    /// the ability to decrypt an event we could read before), while the held copy keeps its
    /// creator claim and origin (a re-shared copy never rewrites who created a session, unless
    /// the held claim is unproven and the new one proven: see
    /// [`InboundStateSession::shared_by_device`]); a copy
    /// that does not connect is kept beside it until an event decides (see
    /// [`InboundStateSession`]). Returns whether anything changed.
    pub fn merge(&mut self, mut other: Self) -> bool {
        match self.session.compare(&mut other.session) {
            SessionOrdering::Worse => {
                self.take_proven_claim(&other);
                self.session = other.session;
                true
            }
            SessionOrdering::Better | SessionOrdering::Equal => self.take_proven_claim(&other),
            SessionOrdering::Unconnected => {
                for copy in &mut self.unconnected {
                    match copy.session.compare(&mut other.session) {
                        SessionOrdering::Worse => {
                            copy.session = other.session;
                            return true;
                        }
                        SessionOrdering::Better | SessionOrdering::Equal => return false,
                        SessionOrdering::Unconnected => {}
                    }
                }
                if self.unconnected.len() >= MAX_UNCONNECTED_COPIES {
                    return false;
                }
                self.unconnected.push(UnconnectedCopy {
                    session: other.session,
                    sender_key: other.sender_key,
                    key_origin: other.key_origin,
                    creator_proven: other.creator_proven,
                });
                true
            }
        }
    }

    /// How many copies that do not connect to the held one wait for an event to decide.
    pub fn unconnected_copies(&self) -> usize {
        self.unconnected.len()
    }

    /// The session id.
    pub fn session_id(&self) -> String {
        self.session.session_id()
    }

    /// The session exported from `index` on, for a member who lacks it: it decrypts the event at
    /// `index` and later ones, never an earlier one. `None` when `index` is before the first
    /// index this copy knows.
    pub fn export_at(&mut self, index: u32) -> Option<ExportedRoomKey> {
        let session_key = self.session.export_at(index)?;
        Some(ExportedRoomKey {
            algorithm: EventEncryptionAlgorithm::MegolmV1AesSha2,
            room_id: self.room_id.clone(),
            sender_key: self.sender_key,
            session_id: self.session.session_id(),
            session_key,
            sender_claimed_keys: Default::default(),
            forwarding_curve25519_key_chain: Vec::new(),
            // Room state is visible to every member.
            shared_history: true,
        })
    }

    /// The room the session is bound to.
    pub fn room_id(&self) -> &RoomId {
        &self.room_id
    }

    /// The first index this session decrypts.
    pub fn first_known_index(&self) -> u32 {
        self.session.first_known_index()
    }

    /// How we got the key.
    pub fn key_origin(&self) -> &KeyOrigin {
        &self.key_origin
    }

    /// Decrypts an encrypted state event of this session.
    ///
    /// # Errors
    ///
    /// [`DecryptStateError::MissingSession`] if the event uses another session,
    /// [`DecryptStateError::UnknownIndex`] if it precedes our first known index,
    /// [`DecryptStateError::Decryption`] if the ciphertext does not authenticate.
    pub fn decrypt(
        &mut self,
        event: &EncryptedStateEvent,
    ) -> Result<DecryptedState, DecryptStateError> {
        self.decrypt_message(&event.session_id, &event.message)
    }

    /// Decrypts the `m.megolm.v1.aes-sha2` content of an event known only by its content, such
    /// as an encrypted state event in an invite's stripped state (no event id, no timestamp).
    ///
    /// # Errors
    ///
    /// As [`InboundStateSession::decrypt`], and [`DecryptStateError::Malformed`] for content
    /// that is not Megolm v1.
    pub fn decrypt_content(
        &mut self,
        content: &serde_json::Value,
    ) -> Result<DecryptedState, DecryptStateError> {
        let field = |name: &str| {
            content
                .get(name)
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| DecryptStateError::Malformed(format!("no {name}")))
        };
        if field("algorithm")? != crate::identifiers::MEGOLM_V1 {
            return Err(DecryptStateError::Malformed("unsupported algorithm".to_owned()));
        }
        let message = MegolmMessage::from_base64(field("ciphertext")?)
            .map_err(|e| DecryptStateError::Malformed(format!("bad Megolm message: {e}")))?;
        self.decrypt_message(field("session_id")?, &message)
    }

    fn decrypt_message(
        &mut self,
        session_id: &str,
        message: &MegolmMessage,
    ) -> Result<DecryptedState, DecryptStateError> {
        if session_id != self.session.session_id() {
            return Err(DecryptStateError::MissingSession { session_id: session_id.to_owned() });
        }
        if message.message_index() < self.session.first_known_index() && self.unconnected.is_empty()
        {
            return Err(DecryptStateError::UnknownIndex {
                session_id: session_id.to_owned(),
                first_known: self.session.first_known_index(),
                index: message.message_index(),
            });
        }
        let decrypted = match self.session.decrypt(message) {
            Ok(decrypted) => decrypted,
            Err(error) => {
                // The held copy cannot authenticate this message: if a copy kept beside it
                // can, that one is the genuine session and takes its place.
                let Some(position) = self.unconnected.iter_mut().position(|copy| {
                    message.message_index() >= copy.session.first_known_index()
                        && copy.session.decrypt(message).is_ok()
                }) else {
                    return Err(error.into());
                };
                let genuine = self.unconnected.swap_remove(position);
                self.session = genuine.session;
                self.sender_key = genuine.sender_key;
                self.key_origin = genuine.key_origin;
                self.creator_proven = genuine.creator_proven;
                self.session.decrypt(message)?
            }
        };
        Ok(DecryptedState {
            plaintext: String::from_utf8_lossy(&decrypted.plaintext).into_owned(),
            session_id: session_id.to_owned(),
            message_index: decrypted.message_index,
            sender_key: self.sender_key,
            key_origin: self.key_origin.clone(),
            creator_proven: self.creator_proven,
        })
    }

    /// A serialisable snapshot for the store (which encrypts it at rest).
    pub fn pickle(&self) -> InboundStateSessionPickle {
        InboundStateSessionPickle {
            session_id: self.session.session_id(),
            room_id: self.room_id.clone(),
            session: self.session.pickle(),
            sender_key: self.sender_key,
            key_origin: self.key_origin.clone(),
            creator_proven: self.creator_proven,
            unconnected: self
                .unconnected
                .iter()
                .map(|copy| UnconnectedCopyPickle {
                    session: copy.session.pickle(),
                    sender_key: copy.sender_key,
                    key_origin: copy.key_origin.clone(),
                    creator_proven: copy.creator_proven,
                })
                .collect(),
        }
    }

    /// Restores a session from [`InboundStateSession::pickle`].
    pub fn from_pickle(pickle: InboundStateSessionPickle) -> Self {
        Self {
            room_id: pickle.room_id,
            session: InboundGroupSession::from_pickle(pickle.session),
            sender_key: pickle.sender_key,
            // Our own sessions are proven whenever they were stored.
            creator_proven: pickle.creator_proven || pickle.key_origin == KeyOrigin::Own,
            key_origin: pickle.key_origin,
            unconnected: pickle
                .unconnected
                .into_iter()
                .map(|copy| UnconnectedCopy {
                    session: InboundGroupSession::from_pickle(copy.session),
                    sender_key: copy.sender_key,
                    key_origin: copy.key_origin,
                    creator_proven: copy.creator_proven,
                })
                .collect(),
        }
    }
}

/// The serialised form of an [`InboundStateSession`]. Holds key material: store it only
/// encrypted.
#[derive(Serialize, Deserialize)]
pub struct InboundStateSessionPickle {
    session_id: String,
    room_id: OwnedRoomId,
    session: InboundGroupSessionPickle,
    sender_key: Curve25519PublicKey,
    key_origin: KeyOrigin,
    /// Absent (unproven) in pickles written before proofs were recorded.
    #[serde(default)]
    creator_proven: bool,
    /// Absent in pickles written before unconnected copies were kept.
    #[serde(default)]
    unconnected: Vec<UnconnectedCopyPickle>,
}

/// The serialised form of an unconnected copy.
#[derive(Serialize, Deserialize)]
struct UnconnectedCopyPickle {
    session: InboundGroupSessionPickle,
    sender_key: Curve25519PublicKey,
    key_origin: KeyOrigin,
    #[serde(default)]
    creator_proven: bool,
}

impl std::fmt::Debug for InboundStateSessionPickle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundStateSessionPickle")
            .field("session_id", &self.session_id)
            .field("room_id", &self.room_id)
            .field("key_origin", &self.key_origin)
            .finish_non_exhaustive()
    }
}

impl InboundStateSessionPickle {
    /// The id of the pickled session.
    pub fn session_id(&self) -> String {
        self.session_id.clone()
    }

    /// The room of the pickled session.
    pub fn room_id(&self) -> &RoomId {
        &self.room_id
    }

    /// How the key of the pickled session was obtained.
    pub fn key_origin(&self) -> &KeyOrigin {
        &self.key_origin
    }

    /// Serialises the pickle to JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a pickle serialised with [`InboundStateSessionPickle::to_json`].
    ///
    /// # Errors
    ///
    /// [`PickleError`] if the JSON is not such a pickle.
    pub fn from_json(json: &str) -> Result<Self, PickleError> {
        Ok(serde_json::from_str(json)?)
    }
}
