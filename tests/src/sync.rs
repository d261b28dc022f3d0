//! Waiting on conditions with timeouts, never fixed sleeps.

use std::{future::Future, time::Duration};

use anyhow::{Result, bail};
use matrix_sdk::{Client, config::SyncSettings};
use tokio::time::Instant;

/// The default time a test waits for a condition before failing.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Syncs `client` (long-polling, one second at a time) until `condition` holds, or fails after
/// `timeout` naming `what` was awaited.
pub async fn sync_until<F, Fut>(
    client: &Client,
    what: &str,
    timeout: Duration,
    mut condition: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for: {what}");
        }
        let settings = SyncSettings::default().timeout(Duration::from_secs(1));
        tokio::time::timeout_at(deadline, client.sync_once(settings)).await.ok().transpose()?;
    }
}

/// Polls `condition` (every 50 ms) until it holds, or fails after `timeout`; for conditions
/// that change without a sync (for example a background task finishing).
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        if condition().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for: {what}");
        }
        tick.tick().await;
    }
}

/// A client syncing in the background (an "online" user whose extension answers requests)
/// until this is dropped.
#[derive(Debug)]
pub struct Syncing(tokio::task::JoinHandle<()>);

impl Drop for Syncing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts syncing `client` in the background.
pub fn keep_syncing(client: &Client) -> Syncing {
    let client = client.clone();
    Syncing(tokio::spawn(async move {
        let settings = SyncSettings::default().timeout(Duration::from_secs(1));
        // A server that is down refuses at once: failed syncs are paced, not spun.
        let mut pace = tokio::time::interval(Duration::from_millis(250));
        loop {
            if let Err(error) = client.sync_once(settings.clone()).await {
                tracing::warn!(%error, "background sync failed");
                pace.tick().await;
            }
        }
    }))
}

/// Keeps `client` syncing until `pick` returns `Some` for an update of `ext`'s stream, and
/// returns that value; fails after `DEFAULT_TIMEOUT`.
pub async fn next_update<T>(
    client: &Client,
    ext: &sdk_ext::StateExtension,
    mut pick: impl FnMut(&sdk_ext::StateUpdate) -> Option<T>,
) -> Result<T> {
    let mut updates = ext.subscribe();
    let _online = keep_syncing(client);
    let found = tokio::time::timeout(DEFAULT_TIMEOUT, async {
        loop {
            match updates.recv().await {
                Ok(update) => {
                    if let Some(found) = pick(&update) {
                        return Ok(found);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(error) => return Err(error),
            }
        }
    })
    .await;
    match found {
        Ok(found) => Ok(found?),
        Err(_) => bail!("timed out after {DEFAULT_TIMEOUT:?} waiting for an update"),
    }
}
