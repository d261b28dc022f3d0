//! Send latency: one encrypted state event with our extension (`set_encrypted_state`: power
//! check, Megolm encryption with the room's state session, the ratchet saved before sending,
//! the PUT, our copy recorded) against stock matrix-sdk's `send_state_event_raw` of the same
//! content in clear, on the same in-process homeserver.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::Result;
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, owned_room_id};
use sdk_ext::{RoomStateExt, StateExtConfig, StateExtension};
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, Request, Respond, ResponseTemplate,
    matchers::{method, path, path_regex},
};

use crate::{Plan, alternate, instructions, report::Comparison, sync::logged_in_client};

/// The first sync: a room whose only member is the client's user, admin, with encrypted state.
fn room_sync(room_id: &OwnedRoomId, user_id: &OwnedUserId) -> Value {
    let event = |n: u64, kind: &str, state_key: &str, content: Value| {
        json!({
            "type": kind,
            "state_key": state_key,
            "event_id": format!("$setup{n}:bench.example"),
            "sender": user_id,
            "origin_server_ts": 1_700_000_000_000u64 + n,
            "content": content,
        })
    };
    let state = vec![
        event(1, "m.room.create", "", json!({ "creator": user_id, "room_version": "11" })),
        event(2, "m.room.member", user_id.as_str(), json!({ "membership": "join" })),
        event(3, "m.room.power_levels", "", json!({ "users": { user_id.as_str(): 100 } })),
        event(
            4,
            "m.room.encryption",
            "",
            json!({
                "algorithm": "m.megolm.v1.aes-sha2",
                crypto_ext::identifiers::ENCRYPT_STATE_EVENTS_UNSTABLE: true,
            }),
        ),
    ];
    json!({
        "next_batch": "s1",
        "rooms": { "join": { room_id.as_str(): {
            "state": { "events": state },
            "timeline": { "events": [], "limited": false, "prev_batch": "p0" },
        } } },
    })
}

/// Answers every PUT of an event with a new event id, after `delay` (the homeserver's own time
/// to store the event; zero for the in-process floor).
struct EventIds {
    next: AtomicU64,
    delay: Duration,
}

impl Respond for EventIds {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        ResponseTemplate::new(200)
            .set_body_json(json!({ "event_id": format!("$sent{n}:bench.example") }))
            .set_delay(self.delay)
    }
}

/// Per round, `sends` sends of a room name: ours encrypted through the extension, stock in clear
/// with `send_state_event_raw`; the median of the rounds' mean latency per send. The homeserver
/// answers each PUT after `server_delay`.
pub(crate) async fn send_latency(
    sends: usize,
    server_delay: Duration,
    plan: Plan,
) -> Result<Comparison> {
    let dir = tempfile::tempdir()?;
    let server = MockServer::start().await;
    let user_id: OwnedUserId = "@bench:bench.example".try_into()?;
    let room_id = owned_room_id!("!send:bench.example");
    Mock::given(method("GET"))
        .and(path("/_matrix/client/v3/sync"))
        .respond_with(ResponseTemplate::new(200).set_body_json(room_sync(&room_id, &user_id)))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path_regex(r"^/_matrix/client/v3/rooms/[^/]+/state/"))
        .respond_with(EventIds { next: AtomicU64::new(0), delay: server_delay })
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/_matrix/client/v3/rooms/{room_id}/members")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "chunk": [] })))
        .mount(&server)
        .await;
    let client = logged_in_client(&server, &user_id, dir.path()).await?;
    let _extension =
        StateExtension::install(&client, StateExtConfig::sqlite(dir.path().join("state"), "bench"))
            .await?;
    let room = client.get_room(&room_id).ok_or_else(|| anyhow::anyhow!("no room"))?;
    let counter = AtomicU64::new(0);
    let name = || format!("Name {}", counter.fetch_add(1, Ordering::Relaxed));
    let per_send = |total: Duration| total / u32::try_from(sends.max(1)).unwrap_or(u32::MAX);
    let (ours, stock) = alternate(
        plan,
        || async {
            let Some(start) = instructions::start() else { return Ok(Duration::ZERO) };
            for _ in 0..sends {
                room.set_encrypted_state("m.room.name", "", json!({ "name": name() })).await?;
            }
            Ok(per_send(start.elapsed()))
        },
        || async {
            let Some(start) = instructions::start() else { return Ok(Duration::ZERO) };
            for _ in 0..sends {
                room.send_state_event_raw("m.room.name", "", json!({ "name": name() })).await?;
            }
            Ok(per_send(start.elapsed()))
        },
    )
    .await?;
    Ok(Comparison {
        workload: if server_delay.is_zero() {
            format!("send latency, one state event (mean of {sends})")
        } else {
            format!(
                "send latency, server answering in {} ms (mean of {sends})",
                server_delay.as_millis()
            )
        },
        ours,
        stock,
        primitives: None,
        size: None,
    })
}
