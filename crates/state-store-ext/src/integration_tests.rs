//! One test suite for every backend: `state_store_integration_tests!(backend_expr)` expands to
//! the tests, run against stores built by the expression (a `TestBackend`).

use std::path::PathBuf;

use crypto_ext::{
    KeyOrigin, Provenance, RejectedState, RejectionReason, StateSlot,
    state_sessions::{InboundStateSession, OutboundStateSession, OwnDevice},
};
use ruma::{MilliSecondsSinceUnixEpoch, OwnedRoomId, RoomId, UInt, device_id, serde::Raw, user_id};
use serde_json::json;

use crate::{StateOrigin, StateRecord};

/// How a suite gets stores: fresh ones, and (for persistent backends) the same one reopened.
pub(crate) struct TestBackend {
    pub dir: Option<tempfile::TempDir>,
    pub passphrase: Option<&'static str>,
}

impl TestBackend {
    pub fn memory() -> Self {
        Self { dir: None, passphrase: None }
    }

    pub fn sqlite(passphrase: Option<&'static str>) -> Self {
        Self { dir: Some(tempfile::tempdir().unwrap()), passphrase }
    }

    pub fn path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().to_owned())
    }

    /// Opens the store (a memory backend gives a fresh store each time).
    pub async fn open(&self) -> Box<dyn crate::StateStore> {
        match self.path() {
            Some(path) => {
                Box::new(crate::SqliteStateStore::open(path, self.passphrase).await.unwrap())
            }
            None => Box::new(crate::MemoryStateStore::new()),
        }
    }

    /// `store` again from its files (a new process's view), or the same store when it lives in
    /// memory only.
    pub async fn reopen(&self, store: Box<dyn crate::StateStore>) -> Box<dyn crate::StateStore> {
        if self.path().is_none() {
            return store;
        }
        drop(store);
        self.open().await
    }
}

pub(crate) fn room(n: u8) -> OwnedRoomId {
    RoomId::parse(format!("!room{n}:example.org")).unwrap()
}

pub(crate) fn ts(ms: u64) -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch(UInt::try_from(ms).unwrap())
}

pub(crate) fn name_slot() -> StateSlot {
    StateSlot::new("m.room.name", "")
}

/// A timestamp that falls as positions grow: the tests then show that the room order decides,
/// not the timestamp.
fn ts_against(position: u64) -> MilliSecondsSinceUnixEpoch {
    ts(1_000_000 - position)
}

pub(crate) fn provenance(event_id: &str, ms: u64) -> Provenance {
    Provenance {
        event_id: event_id.try_into().unwrap(),
        sender: user_id!("@alice:example.org").to_owned(),
        origin_server_ts: ts(ms),
        session_id: "session".to_owned(),
        message_index: 0,
        sender_device: Some(device_id!("ALICEDEVICE").to_owned()),
        verification: None,
        key_origin: KeyOrigin::Bundle { shared_by: user_id!("@bob:example.org").to_owned() },
        creator_proven: false,
    }
}

/// An accepted decrypted record at `position` (its timestamp falls as positions grow).
pub(crate) fn encrypted(
    room_id: &RoomId,
    slot: &StateSlot,
    event_id: &str,
    position: u64,
    name: &str,
) -> StateRecord {
    let origin = StateOrigin::Encrypted(provenance(event_id, 1_000_000 - position));
    record(room_id, slot, name, origin, position)
}

/// A plaintext copy at `position` (its timestamp falls as positions grow).
pub(crate) fn plaintext(
    room_id: &RoomId,
    slot: &StateSlot,
    event_id: &str,
    position: u64,
    name: &str,
) -> StateRecord {
    let origin = StateOrigin::Plaintext {
        event_id: event_id.try_into().unwrap(),
        sender: user_id!("@alice:example.org").to_owned(),
        origin_server_ts: ts_against(position),
    };
    record(room_id, slot, name, origin, position)
}

fn record(
    room_id: &RoomId,
    slot: &StateSlot,
    name: &str,
    origin: StateOrigin,
    position: u64,
) -> StateRecord {
    StateRecord {
        room_id: room_id.to_owned(),
        slot: slot.clone(),
        content: content(name),
        origin,
        position,
    }
}

pub(crate) fn rejected(room_id: &RoomId, event_id: &str) -> RejectedState {
    RejectedState {
        room_id: room_id.to_owned(),
        event_id: event_id.try_into().unwrap(),
        sender: user_id!("@mallory:example.org").to_owned(),
        origin_server_ts: ts(5),
        packed_state_key: "m.room.tombstone:".to_owned(),
        session_id: "s".to_owned(),
        message_index: 3,
        reason: RejectionReason::CriticalType { event_type: "m.room.tombstone".to_owned() },
        position: 7,
    }
}

pub(crate) fn own_device() -> OwnDevice {
    let account = vodozemac_account();
    OwnDevice {
        user_id: user_id!("@alice:example.org").to_owned(),
        device_id: device_id!("ALICEDEVICE").to_owned(),
        curve25519: account.0,
        ed25519: account.1,
    }
}

fn vodozemac_account()
-> (crypto_ext::vodozemac::Curve25519PublicKey, crypto_ext::vodozemac::Ed25519PublicKey) {
    let account = crypto_ext::vodozemac::olm::Account::new();
    (account.curve25519_key(), account.ed25519_key())
}

pub(crate) fn content(name: &str) -> Raw<ruma::events::AnyStateEventContent> {
    Raw::new(&json!({ "name": name })).unwrap().cast_unchecked()
}

pub(crate) fn sessions(room_id: &RoomId) -> (OutboundStateSession, InboundStateSession) {
    let outbound = OutboundStateSession::new(room_id, name_slot()).unwrap();
    let inbound = InboundStateSession::from_outbound(&outbound, &own_device());
    (outbound, inbound)
}

macro_rules! state_store_integration_tests {
    ($backend:expr) => {
        mod state_store_integration_tests {
            use ruma::{event_id, user_id};

            use crate::{
                KeyRequest, PendingBundle, PendingEvent, SessionEventRef, StateChanges, WithheldSession,
                integration_tests::*,
            };
            #[allow(unused_imports)]
            use super::*;

            fn backend() -> TestBackend {
                $backend
            }

            #[tokio::test]
            async fn the_latest_event_in_room_order_holds_the_slot_and_every_event_is_kept() {
                let backend = backend();
                let store = backend.open().await;
                let (r1, r2, slot) = (room(1), room(2), name_slot());
                for (id, ms, name) in [("$a", 10, "A"), ("$c", 30, "C"), ("$b", 20, "B")] {
                    let changes = StateChanges {
                        state: vec![encrypted(&r1, &slot, id, ms, name)],
                        ..Default::default()
                    };
                    store.save_changes(changes).await.unwrap();
                }
                store
                    .save_changes(StateChanges {
                        state: vec![encrypted(&r2, &slot, "$other", 99, "Other room")],
                        ..Default::default()
                    })
                    .await
                    .unwrap();

                let current = store.current_state(&r1, &slot).await.unwrap().unwrap();
                assert_eq!(current.event_id(), "$c");
                let history = store.slot_history(&r1, &slot).await.unwrap();
                let ids: Vec<&str> = history.iter().map(|r| r.event_id().as_str()).collect();
                assert_eq!(ids, ["$a", "$b", "$c"]);
                let state = store.room_state(&r1).await.unwrap();
                assert_eq!(state.len(), 1);
                assert_eq!(state[0].provenance().unwrap().key_origin.shared_by().unwrap(), "@bob:example.org");
                assert!(store.current_state(&r1, &ruma_slot("m.room.topic")).await.unwrap().is_none());
            }

            fn ruma_slot(t: &str) -> crypto_ext::StateSlot {
                crypto_ext::StateSlot::new(t, "")
            }

            #[tokio::test]
            async fn plaintext_and_encrypted_copies_resolve_by_room_order() {
                let backend = backend();
                let store = backend.open().await;
                let (r, slot) = (room(1), name_slot());
                let changes = StateChanges {
                    state: vec![plaintext(&r, &slot, "$plain", 20, "Plaintext, before the switch")],
                    ..Default::default()
                };
                store.save_changes(changes).await.unwrap();
                assert_eq!(store.current_state(&r, &slot).await.unwrap().unwrap().event_id(), "$plain");
                // An encrypted value outranks the plaintext copy, later in the room or not (every
                // client agrees, whatever it saw of the room's order).
                let changes = StateChanges {
                    state: vec![
                        encrypted(&r, &slot, "$enc", 30, "Encrypted"),
                        plaintext(&r, &slot, "$plain2", 40, "Plaintext, later"),
                    ],
                    ..Default::default()
                };
                store.save_changes(changes).await.unwrap();
                assert_eq!(store.current_state(&r, &slot).await.unwrap().unwrap().event_id(), "$enc");

                // A far-future timestamp earlier in the room pins nothing.
                let mut pinned = encrypted(&r, &slot, "$pinned", 45, "Pinned");
                if let crate::StateOrigin::Encrypted(provenance) = &mut pinned.origin {
                    provenance.origin_server_ts = ts(u64::from(u32::MAX) * 1000);
                }
                store.save_changes(StateChanges { state: vec![pinned], ..Default::default() }).await.unwrap();
                let later = encrypted(&r, &slot, "$later", 46, "Later");
                store.save_changes(StateChanges { state: vec![later], ..Default::default() }).await.unwrap();
                assert_eq!(store.current_state(&r, &slot).await.unwrap().unwrap().event_id(), "$later");

                // Records stored before positions existed (position 0) keep the old rule among
                // themselves: timestamp, then the greater event id.
                let r2 = room(2);
                let old = |id: &str, ms: u64| {
                    let mut record = encrypted(&r2, &slot, id, 0, id);
                    if let crate::StateOrigin::Encrypted(provenance) = &mut record.origin {
                        provenance.origin_server_ts = ts(ms);
                    }
                    record
                };
                let changes = StateChanges {
                    state: vec![old("$zz", 50), old("$yy", 50), old("$newest", 60)],
                    ..Default::default()
                };
                store.save_changes(changes).await.unwrap();
                assert_eq!(store.current_state(&r2, &slot).await.unwrap().unwrap().event_id(), "$newest");
            }

            #[tokio::test]
            async fn a_large_batch_resolves_each_slot_as_one_record_per_batch_does() {
                // Enough records that a backend may seal them on several threads; each slot's
                // updates come out of room order inside the batch, with a plaintext copy among
                // them.
                let (r, slots) = (room(1), (0..8).map(|s| ruma_slot(&format!("org.example.{s}"))).collect::<Vec<_>>());
                let mut records = Vec::new();
                for round in 0..40u64 {
                    for (s, slot) in slots.iter().enumerate() {
                        // Rounds visit the slot's 40 places in room order as a permutation.
                        let position = 1 + (round * 17 % 40) * 8 + s as u64;
                        let id = format!("$e{position}");
                        records.push(if round == 20 {
                            plaintext(&r, slot, &id, position, "plain")
                        } else {
                            encrypted(&r, slot, &id, position, &format!("v{position}"))
                        });
                    }
                }
                let batched = backend();
                let batched_store = batched.open().await;
                batched_store
                    .save_changes(StateChanges { state: records.clone(), ..Default::default() })
                    .await
                    .unwrap();
                let single = backend();
                let single_store = single.open().await;
                for record in records {
                    single_store
                        .save_changes(StateChanges { state: vec![record], ..Default::default() })
                        .await
                        .unwrap();
                }
                for (s, slot) in slots.iter().enumerate() {
                    let current = batched_store.current_state(&r, slot).await.unwrap().unwrap();
                    // The latest in room order, whichever round wrote it.
                    assert_eq!(current.event_id().as_str(), format!("$e{}", 1 + 39 * 8 + s));
                    let one_by_one = single_store.current_state(&r, slot).await.unwrap().unwrap();
                    assert_eq!(current.event_id(), one_by_one.event_id());
                    assert_eq!(batched_store.slot_history(&r, slot).await.unwrap().len(), 40);
                }
            }

            #[tokio::test]
            async fn a_redacted_record_saved_again_empties_the_slot_and_positions_persist() {
                let backend = backend();
                let store = backend.open().await;
                let (r, slot) = (room(1), name_slot());
                assert_eq!(store.room_position(&r).await.unwrap(), 0);
                let changes = StateChanges {
                    state: vec![encrypted(&r, &slot, "$a", 1, "A"), encrypted(&r, &slot, "$b", 2, "B")],
                    room_positions: vec![(r.clone(), 2)],
                    ..Default::default()
                };
                store.save_changes(changes).await.unwrap();
                assert_eq!(store.room_position(&r).await.unwrap(), 2);
                assert_eq!(store.room_position(&room(2)).await.unwrap(), 0);

                let current = store.current_state(&r, &slot).await.unwrap().unwrap();
                assert!(!current.is_redacted());
                let changes = StateChanges { state: vec![current.redacted()], ..Default::default() };
                store.save_changes(changes).await.unwrap();
                let current = store.current_state(&r, &slot).await.unwrap().unwrap();
                assert_eq!(current.event_id(), "$b");
                assert!(current.is_redacted(), "the slot reads as no value");
                let history = store.slot_history(&r, &slot).await.unwrap();
                assert_eq!(history.len(), 2);
                assert!(!history[0].is_redacted() && history[1].is_redacted());
            }

            #[tokio::test]
            async fn rejections_are_kept_with_their_reason_until_the_event_is_accepted() {
                let backend = backend();
                let store = backend.open().await;
                let r = room(1);
                let changes = StateChanges {
                    rejected: vec![rejected(&r, "$bad"), rejected(&r, "$later-ok")],
                    ..Default::default()
                };
                store.save_changes(changes).await.unwrap();
                let mut found = store.rejected_events(&r).await.unwrap();
                found.sort_by(|a, b| a.event_id.cmp(&b.event_id));
                assert_eq!(found, vec![rejected(&r, "$bad"), rejected(&r, "$later-ok")]);
                assert!(store.rejected_events(&room(2)).await.unwrap().is_empty());

                let changes = StateChanges {
                    state: vec![encrypted(&r, &name_slot(), "$later-ok", 10, "ok")],
                    ..Default::default()
                };
                store.save_changes(changes).await.unwrap();
                assert_eq!(store.rejected_events(&r).await.unwrap(), vec![rejected(&r, "$bad")]);
            }

            #[tokio::test]
            async fn pending_events_by_session_and_room() {
                let backend = backend();
                let store = backend.open().await;
                let pending = |room_id: &ruma::RoomId, id: &str, session: &str| PendingEvent {
                    room_id: room_id.to_owned(),
                    event_id: id.try_into().unwrap(),
                    session_id: session.to_owned(),
                    message_index: 2,
                    event: ruma::serde::Raw::new(&serde_json::json!({ "event_id": id }))
                        .unwrap()
                        .cast_unchecked(),
                    position: 4,
                    power_levels_at: Some(serde_json::json!({ "state_default": 50 })),
                };
                let changes = StateChanges {
                    pending: vec![
                        pending(&room(1), "$p1", "s1"),
                        pending(&room(1), "$p2", "s2"),
                        pending(&room(2), "$p3", "s1"),
                    ],
                    ..Default::default()
                };
                store.save_changes(changes).await.unwrap();
                assert_eq!(store.pending_for_session("s1").await.unwrap().len(), 2);
                let in_room = store.pending_in_room(&room(1)).await.unwrap();
                assert_eq!(in_room.len(), 2);
                assert_eq!(in_room[0].position, 4, "the room position is kept");
                assert_eq!(in_room[0].power_levels_at.as_ref().unwrap()["state_default"], 50);

                let changes = StateChanges {
                    resolved_pending: vec![("s1".to_owned(), event_id!("$p1").to_owned())],
                    ..Default::default()
                };
                store.save_changes(changes).await.unwrap();
                let left = store.pending_for_session("s1").await.unwrap();
                assert_eq!(left.len(), 1);
                assert_eq!(left[0].event_id, "$p3");
                assert_eq!(left[0].message_index, 2);
            }

            #[tokio::test]
            async fn session_index_maps_to_its_event() {
                let backend = backend();
                let store = backend.open().await;
                let mapping = SessionEventRef {
                    session_id: "s".to_owned(),
                    message_index: 7,
                    room_id: room(1),
                    event_id: event_id!("$seven").to_owned(),
                    slot: name_slot(),
                };
                store
                    .save_changes(StateChanges { session_events: vec![mapping.clone()], ..Default::default() })
                    .await
                    .unwrap();
                assert_eq!(store.session_event("s", 7).await.unwrap(), Some(mapping));
                assert_eq!(store.session_event("s", 6).await.unwrap(), None);
            }

            #[tokio::test]
            async fn state_sessions_survive_a_round_trip_and_stay_usable() {
                let backend = backend();
                let store = backend.open().await;
                let r = room(1);
                let (mut outbound, inbound) = sessions(&r);
                let session_id = outbound.session_id();
                let own = own_device();
                outbound.encrypt(&own, &r, &name_slot(), content("before")).unwrap();
                store
                    .save_changes(StateChanges {
                        outbound_sessions: vec![outbound.pickle()],
                        inbound_sessions: vec![inbound.pickle()],
                        ..Default::default()
                    })
                    .await
                    .unwrap();

                let pickle = store.outbound_session(&r, &name_slot()).await.unwrap().unwrap();
                let mut restored = crypto_ext::OutboundStateSession::from_pickle(pickle);
                assert_eq!(restored.session_id(), session_id);
                let next = restored.encrypt(&own, &r, &name_slot(), content("after")).unwrap();
                assert_eq!(next.message_index, 1);
                assert_eq!(store.outbound_sessions(&r).await.unwrap().len(), 1);
                assert!(store.outbound_sessions(&room(2)).await.unwrap().is_empty());

                let inbound = store.inbound_session(&session_id).await.unwrap().unwrap();
                let inbound = crypto_ext::InboundStateSession::from_pickle(inbound);
                assert_eq!(inbound.key_origin(), &crypto_ext::KeyOrigin::Own);
                assert!(store.inbound_session("unknown").await.unwrap().is_none());

                // A batch lookup returns what is held and skips the rest.
                let batch = store
                    .inbound_sessions(&["unknown".to_owned(), session_id.clone()])
                    .await
                    .unwrap();
                assert_eq!(batch.len(), 1);
                assert_eq!(batch[0].session_id(), session_id);
            }

            #[tokio::test]
            async fn bundles_and_key_requests_are_kept_until_removed() {
                let backend = backend();
                let store = backend.open().await;
                let r = room(1);
                let bundle = PendingBundle {
                    room_id: r.clone(),
                    sender: user_id!("@alice:example.org").to_owned(),
                    sender_device: None,
                    file: serde_json::json!({ "url": "mxc://example.org/abc" }),
                    received_at: ts(1),
                };
                let request = KeyRequest {
                    room_id: r.clone(),
                    session_id: "s".to_owned(),
                    first_requested_at: ts(2),
                    attempts: 1,
                };
                store
                    .save_changes(StateChanges {
                        pending_bundles: vec![bundle.clone()],
                        key_requests: vec![request.clone()],
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                assert_eq!(store.pending_bundles(&r).await.unwrap(), vec![bundle.clone()]);
                assert_eq!(store.rooms_with_pending_bundles().await.unwrap(), vec![r.clone()]);
                assert_eq!(store.key_requests(&r).await.unwrap(), vec![request]);
                store
                    .save_changes(StateChanges {
                        removed_bundles: vec![(r.clone(), bundle.sender.clone())],
                        removed_key_requests: vec![(r.clone(), "s".to_owned())],
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                assert!(store.pending_bundles(&r).await.unwrap().is_empty());
                assert!(store.rooms_with_pending_bundles().await.unwrap().is_empty());
                assert!(store.key_requests(&r).await.unwrap().is_empty());
            }

            #[tokio::test]
            async fn withheld_sessions_are_found_by_session() {
                let backend = backend();
                let store = backend.open().await;
                let withheld = WithheldSession {
                    room_id: room(1),
                    session_id: "withheld-session".to_owned(),
                    code: "m.history_not_shared".to_owned(),
                    withheld_by: user_id!("@alice:example.org").to_owned(),
                };
                store
                    .save_changes(StateChanges {
                        withheld_sessions: vec![withheld.clone()],
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                assert_eq!(store.withheld_session("withheld-session").await.unwrap(), Some(withheld));
                assert_eq!(store.withheld_session("another-session").await.unwrap(), None);
            }

            #[tokio::test]
            async fn previews_replace_per_room_and_survive_reopening() {
                let backend = backend();
                let store = backend.open().await;
                let (restricted, allowed) = (room(1), room(2));
                let event: ruma::serde::Raw<ruma::events::AnySyncStateEvent> = ruma::serde::Raw::new(&serde_json::json!({
                    "type": "m.room.encrypted",
                    "state_key": "m.room.name:",
                    "event_id": "$name",
                    "sender": "@alice:example.org",
                    "origin_server_ts": 1,
                    "content": {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "c"},
                }))
                .unwrap()
                .cast_unchecked();
                let received = |n: u64| crate::ReceivedPreview {
                    room_id: restricted.clone(),
                    via: allowed.clone(),
                    shared_by: user_id!("@alice:example.org").to_owned(),
                    events: vec![event.clone()],
                    received_at: ts(n),
                };
                let sent = crate::SentPreview {
                    room_id: restricted.clone(),
                    events: vec!["$name".try_into().unwrap()],
                    devices: vec![(
                        user_id!("@bob:example.org").to_owned(),
                        ruma::device_id!("BOBDEVICE").to_owned(),
                    )],
                };
                for n in [1, 2] {
                    store
                        .save_changes(StateChanges {
                            received_previews: vec![received(n)],
                            sent_previews: vec![sent.clone()],
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                }
                let store = backend.reopen(store).await;
                let kept = store.received_preview(&restricted).await.unwrap().unwrap();
                assert_eq!(kept.received_at, ts(2), "the newer preview replaces the older");
                assert_eq!(kept.via, allowed);
                assert_eq!(kept.events.len(), 1);
                assert_eq!(kept.events[0].json().get(), event.json().get());
                assert_eq!(store.sent_preview(&restricted).await.unwrap(), Some(sent));
                assert!(store.received_preview(&allowed).await.unwrap().is_none());
                assert!(store.sent_preview(&allowed).await.unwrap().is_none());
                store
                    .save_changes(StateChanges {
                        removed_previews: vec![restricted.clone()],
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                assert!(store.received_preview(&restricted).await.unwrap().is_none());
            }

            #[tokio::test]
            async fn sent_bundles_are_kept_per_room_and_invitee_until_removed() {
                let backend = backend();
                let store = backend.open().await;
                let (r, other) = (room(1), room(2));
                let bob = user_id!("@bob:example.org");
                let carol = user_id!("@carol:example.org");
                let sent = |url: &str| crate::SentBundle {
                    room_id: r.clone(),
                    invitee: bob.to_owned(),
                    file: serde_json::json!({ "url": url, "key": { "k": "secret" } }),
                    message_keys: 3,
                    state_keys: 1,
                    withheld_keys: 0,
                    built_at: ts(1),
                };
                for url in ["mxc://example.org/first", "mxc://example.org/second"] {
                    store
                        .save_changes(StateChanges {
                            sent_bundles: vec![sent(url)],
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                }
                let store = backend.reopen(store).await;
                assert_eq!(
                    store.sent_bundle(&r, bob).await.unwrap(),
                    Some(sent("mxc://example.org/second")),
                    "one per room and invitee, the last saved"
                );
                assert!(store.sent_bundle(&r, carol).await.unwrap().is_none());
                assert!(store.sent_bundle(&other, bob).await.unwrap().is_none());
                store
                    .save_changes(StateChanges {
                        removed_sent_bundles: vec![(r.clone(), bob.to_owned())],
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                assert!(store.sent_bundle(&r, bob).await.unwrap().is_none());
            }
        }
    };
}

pub(crate) use state_store_integration_tests;
