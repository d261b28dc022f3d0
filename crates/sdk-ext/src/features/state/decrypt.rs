//! Decrypting encrypted state: our own sessions first, then the client's `OlmMachine`.
//!
//! Our sessions decrypt as one batch off the async workers; when the machine refuses an event we
//! look inside with a copy of its key, so the rejection says why.

use std::collections::{BTreeMap, BTreeSet};

use crypto_ext::{
    DecryptionFacts, EncryptedStateEvent, InboundStateSession, KeyOrigin, RejectionReason,
    SessionOwner, UnprovenCreators,
    state_sessions::batch::{SessionGroup, decrypt_batch},
    validate_preview,
    vodozemac::Curve25519PublicKey,
};
use matrix_sdk::{
    Room,
    deserialized_responses::{
        AlgorithmInfo, EncryptionInfo, TimelineEventKind, UnableToDecryptReason,
    },
};
use ruma::{
    OwnedEventId, OwnedUserId, RoomId,
    events::{AnySyncStateEvent, room::encrypted::OriginalSyncRoomEncryptedEvent},
    serde::Raw,
};
use tracing::debug;

use super::EncryptedState;
use crate::{Result, context::SessionClaim};

/// What decrypting one event gave.
pub(super) enum Decryption {
    Decrypted {
        plaintext: String,
        facts: DecryptionFacts,
    },
    /// No key (yet): the event waits.
    Missing,
    /// The decryptor refused the event; we could not obtain its plaintext to say more.
    Refused(RejectionReason),
}

impl Decryption {
    /// Whether it decrypted with a proven session creator.
    fn is_proven(&self) -> bool {
        matches!(self, Self::Decrypted { facts, .. } if facts.creator_proven)
    }
}

impl EncryptedState {
    /// Our own state sessions (and keys shared with us) first, then the client's `OlmMachine`.
    /// A key of ours whose creator is only claimed by a sharer gives way to the machine when the
    /// machine holds the key from its creator: a sharer's claim never hides a proven one.
    pub(super) async fn decrypt(
        &self,
        room: &Room,
        raw: &Raw<AnySyncStateEvent>,
        event: &EncryptedStateEvent,
    ) -> Result<Decryption> {
        let ctx = &self.ctx;
        let mut unproven = None;
        if let Some(pickle) = ctx.store.inbound_session(&event.session_id).await?
            && pickle.room_id() == room.room_id()
        {
            let mut session = InboundStateSession::from_pickle(pickle);
            if let Ok(decrypted) = session.decrypt(event) {
                let facts = ctx
                    .facts_for_sender_key(
                        &event.sender,
                        decrypted.sender_key,
                        decrypted.key_origin,
                        decrypted.creator_proven,
                        claim_of(room.room_id(), event),
                    )
                    .await?;
                let proven = facts.creator_proven;
                let ours = Decryption::Decrypted { plaintext: decrypted.plaintext, facts };
                if proven {
                    return Ok(ours);
                }
                unproven = Some(ours);
            }
        }
        let from_machine = self.decrypt_with_machine(room, raw, event).await?;
        Ok(match (unproven, from_machine) {
            (_, proven @ Decryption::Decrypted { .. }) if proven.is_proven() => proven,
            (Some(ours), _) => ours,
            (None, from_machine) => from_machine,
        })
    }

    /// The client's `OlmMachine`, for an event our own sessions do not decrypt with a proven
    /// creator.
    async fn decrypt_with_machine(
        &self,
        room: &Room,
        raw: &Raw<AnySyncStateEvent>,
        event: &EncryptedStateEvent,
    ) -> Result<Decryption> {
        let ctx = &self.ctx;

        let encrypted: &Raw<OriginalSyncRoomEncryptedEvent> = raw.cast_ref_unchecked();
        let timeline_event = room.decrypt_event(encrypted, None).await?;
        match timeline_event.kind {
            TimelineEventKind::Decrypted(decrypted) => {
                let info = &decrypted.encryption_info;
                debug!(event_id = %event.event_id, verification = ?info.verification_state, forwarder = ?info.forwarder, "decrypted by the client's machine");
                let mut facts = DecryptionFacts::from_encryption_info(info);
                facts.owner_has_identity = ctx.owner_has_identity(&event.sender).await;
                // The machine judged the creating device when the key arrived, from what it
                // knew then (a device or an owner identity not fetched yet reads as unsigned):
                // judge it ourselves, as our crypto store knows it now (asking the homeserver
                // when it knows too little).
                if facts.creator_proven
                    && matches!(facts.session_owner, SessionOwner::Device { .. })
                    && let Some(sender_key) = megolm_sender_key(info)
                {
                    let now = ctx
                        .facts_for_sender_key(
                            &event.sender,
                            sender_key,
                            KeyOrigin::Direct,
                            true,
                            None,
                        )
                        .await?;
                    if matches!(now.session_owner, SessionOwner::Device { .. }) {
                        facts = now;
                    }
                }
                // A key from a bundle has no Olm link to its creator (the machine reports an
                // insecure source): tie the session's claimed sender key to the event sender's
                // devices ourselves, proven only by the creator claim the event carries.
                // Content cannot be forged this way (Megolm messages are signed by the
                // session), this only attributes the session.
                if facts.session_owner == SessionOwner::Unknown
                    && let Some(forwarder) = &info.forwarder
                    && let Some(sender_key) = megolm_sender_key(info)
                {
                    let origin = KeyOrigin::Bundle { shared_by: forwarder.user_id.clone() };
                    let claim = claim_of(room.room_id(), event);
                    facts = ctx
                        .facts_for_sender_key(&event.sender, sender_key, origin, false, claim)
                        .await?;
                }
                Ok(Decryption::Decrypted {
                    plaintext: decrypted.event.json().get().to_owned(),
                    facts,
                })
            }
            TimelineEventKind::UnableToDecrypt { utd_info, .. } => match utd_info.reason {
                UnableToDecryptReason::MissingMegolmSession { .. }
                | UnableToDecryptReason::UnknownMegolmMessageIndex
                | UnableToDecryptReason::SenderIdentityNotTrusted(_) => Ok(Decryption::Missing),
                // The client's machine holds the key but refused the event (a packed key that
                // does not match, another room's payload, ...). Look inside ourselves, so the
                // rejection says exactly why (as the budget allows); the event stays refused
                // whatever we find.
                reason => Ok(Decryption::Refused(
                    self.explain_within_budget(room, event).await?.unwrap_or_else(|| {
                        RejectionReason::MalformedEvent {
                            detail: format!("refused by the client's decryptor: {reason:?}"),
                        }
                    }),
                )),
            },
            TimelineEventKind::PlainText { .. } => {
                Ok(Decryption::Refused(RejectionReason::MalformedEvent {
                    detail: "not encrypted".to_owned(),
                }))
            }
        }
    }

    /// [`EncryptedState::explain_refusal`], at most once per event and within the read
    /// budget (see `explain`); `None` when over budget.
    async fn explain_within_budget(
        &self,
        room: &Room,
        event: &EncryptedStateEvent,
    ) -> Result<Option<RejectionReason>> {
        let now = std::time::Instant::now();
        {
            let mut explanations = self.explanations.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(found) = explanations.remembered(&event.event_id) {
                return Ok(found);
            }
            if !explanations.may_read(now) {
                debug!(event_id = %event.event_id, "refusal not explained: read budget spent");
                return Ok(None);
            }
        }
        let found = self.explain_refusal(room, event).await?;
        self.explanations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remember(event.event_id.clone(), found.clone());
        Ok(found)
    }

    /// Why the client's machine refused an event, found by decrypting it with a copy of its
    /// key read from the shared crypto store (never through a key export: any member can post
    /// refused events) and checking it against rules 1 to 3 and the state-key rule. `None` when
    /// the store is not shared, the copy is missing, does not decrypt, or passes those checks:
    /// the refusal then stands with the machine's own reason. Never a reason to accept: our checks here are weaker than
    /// the machine's.
    async fn explain_refusal(
        &self,
        room: &Room,
        event: &EncryptedStateEvent,
    ) -> Result<Option<RejectionReason>> {
        let Some(copy) = self.ctx.client_key(room.room_id(), &event.session_id).await? else {
            return Ok(None);
        };
        // The machine binds the key to the room it came for: import it for that room, so that a
        // payload naming another room is still seen.
        let key_room = copy.key.room_id.clone();
        let Ok(mut session) = copy.state_session(&key_room) else {
            return Ok(None);
        };
        if key_room != room.room_id() {
            return Ok(Some(RejectionReason::WrongRoom {
                expected: room.room_id().to_owned(),
                found: key_room,
            }));
        }
        let Ok(decrypted) = session.decrypt(event) else { return Ok(None) };
        let facts = self
            .ctx
            .facts_for_sender_key(
                &event.sender,
                decrypted.sender_key,
                decrypted.key_origin,
                decrypted.creator_proven,
                None,
            )
            .await?;
        Ok(validate_preview(
            room.room_id(),
            &event.sender,
            &event.packed_state_key,
            &decrypted.plaintext,
            &facts,
            UnprovenCreators::Accept,
        )
        .err())
    }

    /// Decrypts `events` whose sessions are in our store, as one batch. Returns the decryption
    /// of each event it could decrypt, by event id; the sender-key facts are looked up once per
    /// sender key.
    pub(super) async fn decrypt_with_our_sessions(
        &self,
        room_id: &RoomId,
        events: Vec<EncryptedStateEvent>,
    ) -> Result<BTreeMap<OwnedEventId, Decryption>> {
        let ids: BTreeSet<String> = events.iter().map(|e| e.session_id.clone()).collect();
        let ids: Vec<String> = ids.into_iter().collect();
        let mut groups: BTreeMap<String, SessionGroup> = BTreeMap::new();
        for session in self.ctx.stored_sessions(room_id, &ids).await? {
            groups.insert(session.session_id(), (session, Vec::new()));
        }
        if groups.is_empty() {
            return Ok(BTreeMap::new());
        }
        for event in events {
            if let Some((_, group)) = groups.get_mut(&event.session_id) {
                group.push(event);
            }
        }
        let groups: Vec<SessionGroup> = groups.into_values().collect();
        // CPU-bound: off the async workers (and on every core when the batch is large).
        let decrypted = tokio::task::spawn_blocking(move || decrypt_batch(groups))
            .await
            .map_err(state_store_ext::StoreError::from)?;
        let mut facts_by_key: Vec<((OwnedUserId, String, KeyOrigin), DecryptionFacts)> = Vec::new();
        let mut out = BTreeMap::new();
        for (event, decrypted) in decrypted {
            let Ok(decrypted) = decrypted else { continue };
            if !decrypted.creator_proven {
                // A creator only a sharer vouches for: proven by the claim the event carries,
                // else decrypted one by one, where the machine may know better.
                let facts = match claim_of(room_id, &event) {
                    Some(claim) => {
                        self.ctx
                            .facts_for_sender_key(
                                &event.sender,
                                decrypted.sender_key,
                                decrypted.key_origin,
                                false,
                                Some(claim),
                            )
                            .await?
                    }
                    None => continue,
                };
                if facts.creator_proven {
                    out.insert(
                        event.event_id,
                        Decryption::Decrypted { plaintext: decrypted.plaintext, facts },
                    );
                }
                continue;
            }
            let key = (
                event.sender.clone(),
                decrypted.sender_key.to_base64(),
                decrypted.key_origin.clone(),
            );
            let facts = match facts_by_key.iter().find(|(k, _)| *k == key) {
                Some((_, facts)) => facts.clone(),
                None => {
                    let facts = self
                        .ctx
                        .facts_for_sender_key(
                            &event.sender,
                            decrypted.sender_key,
                            decrypted.key_origin,
                            true,
                            None,
                        )
                        .await?;
                    facts_by_key.push((key, facts.clone()));
                    facts
                }
            };
            out.insert(
                event.event_id,
                Decryption::Decrypted { plaintext: decrypted.plaintext, facts },
            );
        }
        Ok(out)
    }
}

/// The creator claim `event` carries, to check for `room_id`.
fn claim_of<'a>(room_id: &'a RoomId, event: &'a EncryptedStateEvent) -> Option<SessionClaim<'a>> {
    let claim = event.creator_claim.as_ref()?;
    Some(SessionClaim { room_id, session_id: &event.session_id, claim })
}

/// The Curve25519 key of the device that created the Megolm session, as the machine reports it.
fn megolm_sender_key(info: &EncryptionInfo) -> Option<Curve25519PublicKey> {
    let AlgorithmInfo::MegolmV1AesSha2 { curve25519_key, .. } = &info.algorithm_info else {
        return None;
    };
    Curve25519PublicKey::from_base64(curve25519_key).ok()
}
