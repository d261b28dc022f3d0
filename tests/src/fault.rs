//! A homeserver that fails on cue: a Synapse of the test's own (never the suite's shared one),
//! reached through a loopback relay that kills the server (SIGKILL) when a request the test
//! names goes through, before Synapse sees it or after Synapse handled it and before its answer
//! reaches the client. The test then restarts the same server (same database, same port).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use xtask::synapse::Synapse;

/// When the relay kills the server, relative to the request that matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillPoint {
    /// Before the request reaches Synapse: it is lost.
    BeforeRequest,
    /// After Synapse handled the request, before its answer reaches the client: the change is
    /// made, the client does not know.
    BeforeAnswer,
}

/// A kill armed by [`FaultyServer::kill_on`].
struct Trigger {
    /// Strings the request's bytes all contain (a part of its request line such as
    /// `"/invite HTTP/1.1"`, a user's access token to pick whose request).
    patterns: Vec<Vec<u8>>,
    point: KillPoint,
    fired: oneshot::Sender<()>,
}

struct Shared {
    synapse: Mutex<Synapse>,
    trigger: Mutex<Option<Trigger>>,
}

impl Shared {
    fn kill(&self) {
        let mut synapse = self.synapse.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(error) = synapse.kill() {
            tracing::error!(%error, "could not kill the test's Synapse");
        }
    }

    /// Takes the trigger if `window` contains its pattern.
    fn take_trigger(&self, window: &[u8]) -> Option<Trigger> {
        let mut trigger = self.trigger.lock().unwrap_or_else(|e| e.into_inner());
        let matches = trigger.as_ref().is_some_and(|t| {
            t.patterns.iter().all(|p| window.windows(p.len()).any(|bytes| bytes == p.as_slice()))
        });
        if matches { trigger.take() } else { None }
    }
}

/// A Synapse of this test's own behind a relay that kills it on cue; stopped when dropped.
pub struct FaultyServer {
    shared: Arc<Shared>,
    url: String,
    relay: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FaultyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyServer").field("url", &self.url).finish_non_exhaustive()
    }
}

/// The workspace root (the parent of this crate's directory).
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

impl FaultyServer {
    /// Starts a Synapse (installed by `cargo xtask`, as for the suite's shared server) and the
    /// relay in front of it.
    pub async fn start(label: &str) -> Result<Self> {
        let label = label.to_owned();
        let synapse =
            tokio::task::spawn_blocking(move || xtask::synapse::start(&workspace_root(), &label))
                .await??;
        let upstream = synapse.port()?;
        let shared = Arc::new(Shared { synapse: Mutex::new(synapse), trigger: Mutex::new(None) });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let relay = tokio::spawn(relay(listener, upstream, shared.clone()));
        Ok(Self { shared, url, relay })
    }

    /// The URL clients use (the relay's).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Arms a kill: the next request whose bytes (request line and headers) contain each of
    /// `patterns` kills the server at `point`. The returned receiver completes once it did.
    pub fn kill_on(&self, patterns: &[&str], point: KillPoint) -> oneshot::Receiver<()> {
        let (fired, killed) = oneshot::channel();
        let patterns = patterns.iter().map(|p| p.as_bytes().to_vec()).collect();
        let trigger = Trigger { patterns, point, fired };
        *self.shared.trigger.lock().unwrap_or_else(|e| e.into_inner()) = Some(trigger);
        killed
    }

    /// Kills the server now.
    pub fn kill(&self) {
        self.shared.kill();
    }

    /// Starts the killed server again on the same database and port, and waits until it
    /// answers.
    pub async fn restart(&self) -> Result<()> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            shared.synapse.lock().unwrap_or_else(|e| e.into_inner()).restart()
        })
        .await?
        .context("restarting the test's Synapse")
    }
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        self.relay.abort();
        let mut synapse = self.shared.synapse.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(error) = synapse.stop() {
            eprintln!("could not stop the test's Synapse (pid {}): {error:#}", synapse.pid);
        }
        let _ = std::fs::remove_dir_all(&synapse.dir);
    }
}

async fn relay(listener: TcpListener, upstream: u16, shared: Arc<Shared>) {
    while let Ok((client, _)) = listener.accept().await {
        tokio::spawn(relay_connection(client, upstream, shared.clone()));
    }
}

/// Relays one connection; a refused upstream (the server is down) closes it, as a dead server
/// would.
async fn relay_connection(client: TcpStream, upstream: u16, shared: Arc<Shared>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Set when a matching request went through and the server dies before its answer.
    let (answer_kill, mut answer_killed) = tokio::sync::mpsc::channel::<Trigger>(1);

    let requests = {
        let shared = shared.clone();
        async move {
            let mut buffer = vec![0u8; 64 * 1024];
            // The tail of the previous read, so a pattern split across reads still matches.
            let mut tail: Vec<u8> = Vec::new();
            loop {
                let read = match client_read.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => read,
                };
                let mut window = std::mem::take(&mut tail);
                window.extend_from_slice(&buffer[..read]);
                if let Some(trigger) = shared.take_trigger(&window) {
                    match trigger.point {
                        KillPoint::BeforeRequest => {
                            shared.kill();
                            let _ = trigger.fired.send(());
                            return;
                        }
                        KillPoint::BeforeAnswer => {
                            let _ = answer_kill.send(trigger).await;
                        }
                    }
                }
                if server_write.write_all(&buffer[..read]).await.is_err() {
                    return;
                }
                // Long enough for a request line and its headers.
                tail = window[window.len().saturating_sub(4096)..].to_vec();
            }
        }
    };
    let answers = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            if let Ok(trigger) = answer_killed.try_recv() {
                shared.kill();
                let _ = trigger.fired.send(());
                return;
            }
            if client_write.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    };
    // Either side closing ends the connection.
    tokio::select! {
        () = requests => {}
        () = answers => {}
    }
}
