//! Writes the seed corpora (`fuzz/seeds/<target>/`) from what our code really produces: an
//! encrypted state event with its creator claim, its payload, a bundle of real sessions, each
//! to-device content, each record sealed by the store's codec. Run by `cargo xtask fuzz-seeds`;
//! the seeds are committed.

use std::{fs, path::PathBuf};

use crypto_ext::{
    CreatorClaim, InboundStateSession, KeyOrigin, OutboundStateSession, OwnDevice, StateSlot,
    bundle::BundleBuilder,
    to_raw,
    vodozemac::{Curve25519PublicKey, Curve25519SecretKey, Ed25519Keypair},
    wire::{
        InviteStateKeys, RestrictedPreview, RoomKeyBundleAnnouncement, StateKeyRequest,
        StateKeyShare,
    },
};
use matrix_sdk_crypto::olm::ExportedRoomKey;
use ruma::{owned_room_id, serde::Raw};
use serde_json::{Value, json};

/// A copy of an exported key (the type is not `Clone`).
fn dup(key: &ExportedRoomKey) -> ExportedRoomKey {
    serde_json::from_value(serde_json::to_value(key).expect("json")).expect("a key")
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    fs::create_dir_all(&dir).expect("seed directory");
    fs::write(dir.join(name), bytes).expect("seed file");
}

#[test]
#[ignore = "writes the committed seed corpora: cargo xtask fuzz-seeds"]
fn write_seed_corpora() {
    let room = owned_room_id!("!room:example.org");
    let keypair = Ed25519Keypair::new();
    let alice = OwnDevice {
        user_id: "@alice:example.org".try_into().expect("user"),
        device_id: "ALICEDEVICE".into(),
        curve25519: Curve25519PublicKey::from(&Curve25519SecretKey::new()),
        ed25519: keypair.public_key(),
    };

    // An encrypted name with its creator claim, and the event as the homeserver serves it.
    let slot = StateSlot::new("m.room.name", "");
    let mut session = OutboundStateSession::new(&room, slot.clone()).expect("session");
    let text = session.creator_claim_text(&alice);
    session.set_creator_claim(CreatorClaim {
        device_id: alice.device_id.clone(),
        signature: keypair.sign(text.as_bytes()).to_base64(),
    });
    let content: Raw<_> = to_raw(&json!({ "name": "Planning" }));
    let encrypted = session.encrypt(&alice, &room, &slot, content).expect("encrypt");
    let event = json!({
        "type": "m.room.encrypted",
        "event_id": "$name:example.org",
        "sender": alice.user_id,
        "origin_server_ts": 1_700_000_000_000u64,
        "room_id": room,
        "state_key": encrypted.packed_state_key.as_str(),
        "content": serde_json::from_str::<Value>(encrypted.content.json().get()).expect("json"),
    });
    write("encrypted_event", "name", event.to_string().as_bytes());
    write("packed_state_key", "name", b"m.room.name:");
    write("packed_state_key", "member_key", b"org.example.status:@alice:example.org");
    write("packed_state_key", "colons", b"a:b:c:");

    // Payloads with their packed keys.
    for (name, packed, payload) in [
        (
            "name",
            "m.room.name:",
            json!({"type": "m.room.name", "state_key": "", "content": {"name": "Planning"}, "room_id": room}),
        ),
        (
            "custom",
            "org.example.status:@alice:example.org",
            json!({"type": "org.example.status", "state_key": "@alice:example.org", "content": {"busy": true}, "room_id": room}),
        ),
        (
            "nested",
            "org.example.deep:",
            json!({"type": "org.example.deep", "state_key": "", "content": {"a": {"b": {"c": [1, 2, {"d": null}]}}}, "room_id": room}),
        ),
    ] {
        write("state_payload", name, format!("{packed}\n{payload}").as_bytes());
    }

    // A bundle with a state session and a withheld message session.
    let mut builder = BundleBuilder::new(&room, &alice);
    builder.add_state_session(&mut session);
    let exported = session.export_current(&alice).expect("exported");
    let mut withheld = dup(&exported);
    withheld.session_id = "unshared".to_owned();
    withheld.shared_history = false;
    builder.add_message_session(withheld);
    let bundle = builder.build();
    write("bundle_plaintext", "bundle", &serde_json::to_vec(&bundle).expect("json"));

    // Each to-device content; the first byte picks the kind (the target's order).
    let keys = vec![dup(&exported)];
    let contents: [(u8, &str, Value); 5] = [
        (0, "invite_keys", serde_json::to_value(InviteStateKeys { room_id: room.clone(), keys: keys.iter().map(dup).collect() }).expect("json")),
        (1, "key_request", serde_json::to_value(StateKeyRequest { room_id: room.clone(), request_id: "r1".into(), session_ids: vec![exported.session_id.clone()] }).expect("json")),
        (2, "key_share", serde_json::to_value(StateKeyShare { room_id: room.clone(), request_id: "r1".into(), keys: keys.iter().map(dup).collect() }).expect("json")),
        (3, "preview", serde_json::to_value(RestrictedPreview { room_id: room.clone(), via: owned_room_id!("!space:example.org"), events: vec![to_raw(&event)], keys: keys.iter().map(dup).collect() }).expect("json")),
        (4, "announcement", serde_json::to_value(RoomKeyBundleAnnouncement { room_id: room.clone(), file: json!({"url": "mxc://example.org/bundle", "v": "v2", "key": {"kty": "oct", "key_ops": ["encrypt", "decrypt"], "alg": "A256CTR", "k": "qcHVMSgYg-71CauWBezXI5qkaRb0LuIy-Wx5kIaHMIA", "ext": true}, "iv": "X85+XgHN+HEAAAAAAAAAAA", "hashes": {"sha256": "5qG4fFnbbVdlAB1Q72JDKwCagV6Dbkx9uds4rSak37c"}}) }).expect("json")),
    ];
    for (kind, name, content) in contents {
        let mut bytes = vec![kind];
        bytes.extend(content.to_string().into_bytes());
        write("to_device", name, &bytes);
    }

    // Store rows: an inbound session pickle, sealed plain and encrypted (first byte: codec and
    // record type, as the target reads it).
    let inbound = InboundStateSession::import(&room, &exported, KeyOrigin::Direct).expect("import");
    for (encrypted, name) in [(false, "inbound_plain"), (true, "inbound_encrypted")] {
        let sealed =
            state_store_ext::fuzzing::seal_value(encrypted, &inbound.pickle()).expect("sealed");
        let mut bytes = vec![if encrypted { 0x80 | 9 } else { 9 }];
        bytes.extend(sealed);
        write("store_value", name, &bytes);
    }
    let pending = state_store_ext::PendingBundle {
        room_id: room.clone(),
        sender: alice.user_id.clone(),
        sender_device: Some(alice.device_id.clone()),
        file: json!({}),
        received_at: ruma::MilliSecondsSinceUnixEpoch(0u32.into()),
    };
    let sealed = state_store_ext::fuzzing::seal_value(false, &pending).expect("sealed");
    let mut bytes = vec![3];
    bytes.extend(sealed);
    write("store_value", "pending_bundle_plain", &bytes);
}
