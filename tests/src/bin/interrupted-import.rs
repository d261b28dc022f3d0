//! A process that accepts an invite with history and is killed (SIGKILL) in the middle of
//! importing the inviter's bundle: as the client's key store is about to take the bundle's keys
//! (the extension's store takes them at the same time, and may or may not have them). The integration suite runs it, then checks that a new
//! process resumes the import.
//!
//! Environment: `MATRIX_HOMESERVER_URL`; `IMPORT_STORE_DIR`, `IMPORT_SESSION` (from
//! `TestUser::stop`); `IMPORT_ROOM_ID`, the room the user is invited to.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};
use integration_tests::{DEFAULT_TIMEOUT, restore_client, state_config, sync_until};
use matrix_sdk::ruma::OwnedRoomId;
use sdk_ext::StateExtension;
use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    Layer, filter::Targets, layer::Context as LayerContext, layer::SubscriberExt,
    util::SubscriberInitExt,
};

/// The receiver's log line as the client's key store is about to take the keys
/// (`sdk_ext::features::history::receive`).
const KILL_POINT: &str = "importing the bundle's keys into the client's key store";

/// Kills the process when the receiver logs [`KILL_POINT`]. The thread that logged it (the one
/// running the import) blocks until the signal lands, so the import goes no further.
struct KillAtKillPoint;

#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: Subscriber> Layer<S> for KillAtKillPoint {
    fn on_event(&self, event: &Event<'_>, _: LayerContext<'_, S>) {
        let mut message = Message::default();
        event.record(&mut message);
        if message.0.contains(KILL_POINT) {
            let pid = std::process::id().to_string();
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            loop {
                std::thread::park();
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let receiver = Targets::new().with_target("sdk_ext::features::history::receive", Level::DEBUG);
    tracing_subscriber::registry().with(KillAtKillPoint.with_filter(receiver)).init();

    let dir = PathBuf::from(std::env::var("IMPORT_STORE_DIR").context("IMPORT_STORE_DIR")?);
    let session = std::env::var("IMPORT_SESSION").context("IMPORT_SESSION")?;
    let room_id: OwnedRoomId =
        std::env::var("IMPORT_ROOM_ID").context("IMPORT_ROOM_ID")?.try_into()?;
    let (client, crypto_store) = restore_client(&dir, &session).await?;
    let ext = StateExtension::install(&client, state_config(&dir, &crypto_store)).await?;

    sync_until(
        &client,
        "the invite and its bundle announcement arrive",
        DEFAULT_TIMEOUT,
        || async {
            client.get_room(&room_id).is_some()
                && !ext.store().pending_bundles(&room_id).await.unwrap_or_default().is_empty()
        },
    )
    .await?;
    // Joining starts the import in the background; it must end this process.
    client.join_room_by_id(&room_id).await?;
    sync_until(&client, "the import reaches the kill point", DEFAULT_TIMEOUT, || async { false })
        .await?;
    bail!("the import never reached its kill point")
}
