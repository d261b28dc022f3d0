//! Helpers for the integration suite and the demo scenario.
//!
//! Everything here talks to a real homeserver whose URL is in the `MATRIX_HOMESERVER_URL`
//! environment variable; `cargo xtask test` and `cargo xtask demo` start a local Synapse and set
//! it.

mod appservice;
pub mod demo;
mod fault;
mod js;
mod room;
mod state;
mod stock;
mod sync;
mod user;

pub use appservice::APPSERVICE_TOKEN;
pub use fault::{FaultyServer, KillPoint};
pub use js::{JS_PEER_ENV, JsPeer};
pub use room::{
    edit_power_levels, has_power_level, is_joined, join, post_encrypted_state, restricted_room,
    set_power_levels, shared_room,
};
pub use state::{
    PRE_INVITE_MESSAGE, StateUser, alice_and_bob_with_encrypted_state, room_with_a_member_at_50,
    room_with_an_admin, room_with_history, server_state, state_config, stores_encrypted_state,
};
pub use stock::{STOCK_CLIENT_ENV, StockClient};
pub use sync::{DEFAULT_TIMEOUT, Syncing, keep_syncing, next_update, sync_until, wait_until};
pub use user::{TestUser, homeserver_url, restore_client, unique_name};

/// Sets up `tracing` output once per process, filtered by `RUST_LOG`, else by `default_filter`.
pub fn init_tracing(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}
