//! Sync overhead: a matrix-sdk client syncing batches of plain timeline messages (no encrypted
//! state) from an in-process homeserver, with and without the extension installed.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::Result;
use matrix_sdk::{
    Client, SessionMeta, SessionTokens,
    authentication::matrix::MatrixSession,
    config::SyncSettings,
    ruma::{OwnedRoomId, OwnedUserId, api::MatrixVersion, device_id, owned_room_id},
    store::RoomLoadSettings,
};
use sdk_ext::{StateExtConfig, StateExtension};
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, Request, Respond, ResponseTemplate,
    matchers::{method, path},
};

use crate::{Plan, alternate, report::Comparison, report::Measurement};

/// Timeline messages per sync response.
const MESSAGES_PER_SYNC: usize = 100;

/// Answers `/sync` with a new batch of messages each time; the first also carries the room.
struct SyncResponder {
    room_id: OwnedRoomId,
    user_id: OwnedUserId,
    batch: AtomicU64,
}

impl Respond for SyncResponder {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let batch = self.batch.fetch_add(1, Ordering::Relaxed);
        let event = |n: u64, kind: &str, state_key: Option<&str>, content: Value| {
            let mut event = json!({
                "type": kind,
                "event_id": format!("$b{batch}e{n}:bench.example"),
                "sender": self.user_id,
                "origin_server_ts": 1_700_000_000_000u64 + batch * 1_000 + n,
                "content": content,
            });
            if let Some(state_key) = state_key {
                event["state_key"] = json!(state_key);
            }
            event
        };
        let state = if batch == 0 {
            vec![
                event(
                    1_000_001,
                    "m.room.create",
                    Some(""),
                    json!({ "creator": self.user_id, "room_version": "11" }),
                ),
                event(
                    1_000_002,
                    "m.room.member",
                    Some(self.user_id.as_str()),
                    json!({ "membership": "join" }),
                ),
            ]
        } else {
            Vec::new()
        };
        let timeline: Vec<Value> = (0..MESSAGES_PER_SYNC as u64)
            .map(|n| {
                event(n, "m.room.message", None, json!({ "msgtype": "m.text", "body": "hello" }))
            })
            .collect();
        ResponseTemplate::new(200).set_body_json(json!({
            "next_batch": format!("s{}", batch + 1),
            "rooms": { "join": { self.room_id.as_str(): {
                "state": { "events": state },
                "timeline": { "events": timeline, "limited": false, "prev_batch": format!("p{batch}") },
            } } },
        }))
    }
}

/// A logged-in client of a fresh in-process homeserver.
async fn client(dir: &std::path::Path) -> Result<(Client, MockServer)> {
    let server = MockServer::start().await;
    let user_id: OwnedUserId = "@bench:bench.example".try_into()?;
    Mock::given(method("GET"))
        .and(path("/_matrix/client/v3/sync"))
        .respond_with(SyncResponder {
            room_id: owned_room_id!("!sync:bench.example"),
            user_id: user_id.clone(),
            batch: AtomicU64::new(0),
        })
        .mount(&server)
        .await;
    let client = logged_in_client(&server, &user_id, dir).await?;
    Ok((client, server))
}

/// A client of `server` (on SQLite stores in `dir`) logged in as `user_id`, after one sync (not
/// measured) that must bring one joined room. `server` answers `/sync` already; this adds the
/// key upload and query every client makes, and an empty success for anything else.
pub(crate) async fn logged_in_client(
    server: &MockServer,
    user_id: &OwnedUserId,
    dir: &std::path::Path,
) -> Result<Client> {
    Mock::given(method("POST"))
        .and(path("/_matrix/client/v3/keys/upload"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "one_time_key_counts": { "signed_curve25519": 50 } })),
        )
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/_matrix/client/v3/keys/query"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "device_keys": {} })))
        .mount(server)
        .await;
    // Anything else (filters, push rules, ...): an empty success.
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .mount(server)
        .await;

    let client = Client::builder()
        .homeserver_url(server.uri())
        .server_versions([MatrixVersion::V1_11])
        .sqlite_store(dir, None)
        .with_enable_share_history_on_invite(false)
        .build()
        .await?;
    let session = MatrixSession {
        meta: SessionMeta {
            user_id: user_id.clone(),
            device_id: device_id!("BENCHDEVICE").to_owned(),
        },
        tokens: SessionTokens { access_token: "token".to_owned(), refresh_token: None },
    };
    client.matrix_auth().restore_session(session, RoomLoadSettings::default()).await?;
    // The first sync brings the room; not measured.
    client.sync_once(SyncSettings::default().timeout(Duration::ZERO)).await?;
    anyhow::ensure!(client.joined_rooms().len() == 1, "the mock sync did not produce the room");
    Ok(client)
}

/// The process's CPU time (user + system), from `/proc/self/stat`: our background task runs on
/// another core, so wall time alone could hide its cost.
pub(crate) fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may hold spaces) are space-separated.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    // The kernel reports CPU time in clock ticks of 1/100 s on Linux.
    Duration::from_millis(ticks * 10)
}

/// `syncs` syncs of 100 messages each; returns (wall time, CPU time).
async fn run(with_extension: bool, syncs: usize) -> Result<(Duration, Duration)> {
    let dir = tempfile::tempdir()?;
    let (client, _server) = client(dir.path()).await?;
    let extension = if with_extension {
        Some(
            StateExtension::install(
                &client,
                StateExtConfig::sqlite(dir.path().join("state"), "bench"),
            )
            .await?,
        )
    } else {
        None
    };
    let settings = SyncSettings::default().timeout(Duration::ZERO);
    let (wall, cpu) = (Instant::now(), cpu_time());
    for _ in 0..syncs {
        client.sync_once(settings.clone()).await?;
    }
    if let Some(extension) = &extension {
        // Let the extension finish the last batch before the clock stops.
        extension.refresh().await?;
    }
    Ok((wall.elapsed(), cpu_time().saturating_sub(cpu)))
}

/// Sync overhead: ours = the client with the extension installed, stock = without.
pub(crate) async fn sync_overhead(syncs: usize, plan: Plan) -> Result<(Comparison, Comparison)> {
    let cpu = std::cell::RefCell::new((Vec::new(), Vec::new()));
    let (ours, stock) = alternate(
        plan,
        || async {
            let (wall, time) = run(true, syncs).await?;
            cpu.borrow_mut().0.push(time);
            Ok(wall)
        },
        || async {
            let (wall, time) = run(false, syncs).await?;
            cpu.borrow_mut().1.push(time);
            Ok(wall)
        },
    )
    .await?;
    let (mut ours_cpu, mut stock_cpu) = cpu.into_inner();
    // The warm-up rounds came first.
    ours_cpu.drain(..plan.warmup);
    stock_cpu.drain(..plan.warmup);
    Ok((
        Comparison {
            workload: format!(
                "sync overhead, {syncs} syncs of {MESSAGES_PER_SYNC} messages (wall)"
            ),
            ours,
            stock,
            primitives: None,
            size: None,
        },
        Comparison {
            workload: format!("sync overhead, {syncs} syncs of {MESSAGES_PER_SYNC} messages (CPU)"),
            ours: Measurement::new(ours_cpu),
            stock: Measurement::new(stock_cpu),
            primitives: None,
            size: None,
        },
    ))
}
