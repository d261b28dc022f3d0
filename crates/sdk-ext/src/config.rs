//! How the extension is set up: plain settings, no I/O.

use std::{path::PathBuf, time::Duration};

use crypto_ext::{StateSenderTrust, UnprovenCreators, bundle::BundleLimits};
use matrix_sdk_crypto::CollectStrategy;

use crate::ClientCryptoStore;

/// Where the extension keeps its state.
#[derive(Clone)]
pub enum StoreConfig {
    /// A SQLite file in `path` (a directory, typically next to matrix-sdk's own stores),
    /// encrypted at rest with `passphrase`. `None` keeps values in clear.
    Sqlite {
        /// The directory.
        path: PathBuf,
        /// The passphrase.
        passphrase: Option<String>,
    },
    /// In memory: nothing survives the process (tests, ephemeral bots).
    Memory,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite { path, passphrase } => f
                .debug_struct("Sqlite")
                .field("path", path)
                .field("passphrase", &passphrase.as_ref().map(|_| "<redacted>"))
                .finish(),
            Self::Memory => f.write_str("Memory"),
        }
    }
}

/// The extension's settings.
#[derive(Debug, Clone)]
pub struct StateExtConfig {
    /// The store.
    pub store: StoreConfig,
    /// Which devices receive state keys. Use the same strategy as the client's
    /// `ClientBuilder::with_room_key_recipient_strategy` so that state and messages reach the
    /// same devices.
    pub sharing_strategy: CollectStrategy,
    /// What a received room-key bundle may weigh (64 MiB by default); a bigger one is refused
    /// without being downloaded in full.
    pub bundle_limits: BundleLimits,
    /// The HTTP client that downloads bundles (matrix-sdk's media API reads a whole file into
    /// memory, so the capped download is ours). `None`: a default `reqwest` client. Pass the
    /// one given to `ClientBuilder::http_client` to share its proxy and TLS settings.
    pub http_client: Option<matrix_sdk::reqwest::Client>,
    /// Asking for the state keys we lack, and answering other members who lack them.
    pub key_requests: KeyRequestConfig,
    /// Pushing our restricted rooms' previews to the members of their allowed rooms, and taking
    /// such previews.
    pub restricted_previews: RestrictedPreviewConfig,
    /// What becomes of state whose session's creator only a sharer vouches for (a key from a
    /// bundle, a key share, invite keys or a preview, handed on by someone other than the
    /// session's creator). Default [`UnprovenCreators::Accept`]: such state is shown, its
    /// provenance says `creator_proven: false` and its device never reads as verified. A sharer
    /// cannot forge the content of another member's events (Megolm authenticates it), only
    /// vouch for which device created a session; refusing outright would leave a newcomer
    /// unable to read any state its creator did not hand over in person. Choose
    /// [`UnprovenCreators::Reject`] where the homeserver is not trusted to attribute events.
    pub unproven_creators: UnprovenCreators,
    /// How much the device that created a state session must be trusted for its state to
    /// count. Default [`StateSenderTrust::Untrusted`], matrix-sdk's own default for decryption:
    /// members without cross-signing (bots, older clients) can still set state, and each
    /// value's provenance carries its device's verification state for the app to judge.
    /// [`StateSenderTrust::CrossSigned`] keeps out state from a device its owner never signed
    /// (one a homeserver could add to its user); rejected with
    /// [`RejectionReason::UntrustedDevice`](crate::RejectionReason::UntrustedDevice).
    pub sender_trust: StateSenderTrust,
    /// Bounds on the work that other parties' events and messages make the extension do.
    pub remote_limits: RemoteWorkLimits,
    /// The client's own crypto store, shared so the extension reads room keys from it directly
    /// and signs the creator claims of its state sessions (see [`ClientCryptoStore`]). `None`
    /// (the default): keys are read through matrix-sdk's key export, only for our own actions,
    /// and our sessions travel without a signed claim.
    pub client_crypto_store: Option<ClientCryptoStore>,
}

impl StateExtConfig {
    /// SQLite in `path`, encrypted with `passphrase`; the default strategy.
    pub fn sqlite(path: impl Into<PathBuf>, passphrase: impl Into<String>) -> Self {
        Self::with_store(StoreConfig::Sqlite {
            path: path.into(),
            passphrase: Some(passphrase.into()),
        })
    }

    /// An in-memory store; the default strategy.
    pub fn memory() -> Self {
        Self::with_store(StoreConfig::Memory)
    }

    /// `store` with the default strategy, bundle limits and HTTP client.
    pub fn with_store(store: StoreConfig) -> Self {
        Self {
            store,
            sharing_strategy: CollectStrategy::default(),
            bundle_limits: BundleLimits::default(),
            http_client: None,
            key_requests: KeyRequestConfig::default(),
            restricted_previews: RestrictedPreviewConfig::default(),
            unproven_creators: UnprovenCreators::default(),
            sender_trust: StateSenderTrust::default(),
            remote_limits: RemoteWorkLimits::default(),
            client_crypto_store: None,
        }
    }

    /// The same settings, with the client's crypto store shared (see
    /// [`StateExtConfig::client_crypto_store`]).
    #[must_use]
    pub fn with_client_crypto_store(mut self, store: ClientCryptoStore) -> Self {
        self.client_crypto_store = Some(store);
        self
    }
}

/// Bounds on the work other parties can make the extension do: nothing a stranger sends buys
/// unbounded CPU, storage or requests. (The bundle download's bounds are in
/// [`StateExtConfig::bundle_limits`]; explanations of refused events are bounded inside.)
#[derive(Clone, Debug)]
pub struct RemoteWorkLimits {
    /// How many of our to-device messages (key requests and shares, invite keys, restricted
    /// previews, bundle announcements) one user may send us per minute; the rest are ignored
    /// with a log line. Default 30.
    pub to_device_per_sender_per_minute: u32,
    /// For how many rooms the client does not know yet bundle announcements are held (an
    /// announcement may precede its invite): in memory only, never in the store until the
    /// invite arrives; announcements for more rooms are ignored. Default 32.
    pub announcements_for_unknown_rooms: usize,
    /// How long such an announcement is held waiting for its invite; then it is dropped.
    /// Default 10 minutes.
    pub unknown_room_announcement_ttl: Duration,
    /// How many sessions one round of a room's key requests asks for at most; the others wait
    /// for the next rounds. Default 64.
    pub key_request_sessions_per_round: usize,
    /// How many of one sender's encrypted state events in one room may wait for their keys
    /// (each is stored and its key asked for); past that, a new one is rejected with
    /// [`RejectionReason::TooManyWaiting`](crate::RejectionReason::TooManyWaiting), validated
    /// again when the room is scanned in full. Default 256.
    pub pending_per_sender_per_room: usize,
    /// How often at most a room's encrypted state is checked against the homeserver's `/state`
    /// (after a sync with a gap or with encrypted state: the client's store may lack events).
    /// Default one minute.
    pub state_check_interval: Duration,
    /// How long after a bundle download failed for a reason that may clear (the homeserver
    /// unreachable, a timeout) the room's kept bundles are fetched again; the delay doubles
    /// after each further failure, up to an hour. Default 30 seconds.
    pub bundle_retry_delay: Duration,
}

impl Default for RemoteWorkLimits {
    fn default() -> Self {
        Self {
            to_device_per_sender_per_minute: 30,
            announcements_for_unknown_rooms: 32,
            unknown_room_announcement_ttl: Duration::from_secs(10 * 60),
            key_request_sessions_per_round: 64,
            pending_per_sender_per_room: 256,
            state_check_interval: Duration::from_secs(60),
            bundle_retry_delay: Duration::from_secs(30),
        }
    }
}

/// How state keys a member lacks are asked for and handed out.
#[derive(Clone, Debug)]
pub struct KeyRequestConfig {
    /// Ask for the state keys we lack.
    pub request: bool,
    /// Answer other members' requests.
    pub answer: bool,
    /// How long our own devices and the room's moderators have to answer before every member is
    /// asked; the wait doubles after each later attempt.
    pub escalation_delay: Duration,
    /// How many times one session is asked for.
    pub max_attempts: u32,
}

impl Default for KeyRequestConfig {
    fn default() -> Self {
        Self {
            request: true,
            answer: true,
            escalation_delay: Duration::from_secs(30),
            max_attempts: 5,
        }
    }
}

/// Whether restricted rooms' previews are pushed and taken.
#[derive(Clone, Debug)]
pub struct RestrictedPreviewConfig {
    /// For the restricted rooms we push for (we set their join rules, or stepped in for the
    /// member who did): push the aesthetic state (name, topic, avatar) and its
    /// keys to the members of the allowed rooms we are in who are not members yet, whenever the
    /// allow-list, those members or that state change.
    pub share: bool,
    /// Take such previews from moderators of rooms we are in.
    pub accept: bool,
}

impl Default for RestrictedPreviewConfig {
    fn default() -> Self {
        Self { share: true, accept: true }
    }
}
