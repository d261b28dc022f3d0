//! The parts of `cargo xtask` that the integration suite shares: running child commands and the
//! local Synapse (the homeserver-fault tests start, kill and restart a Synapse of their own).

pub mod cmd;
pub mod http;
pub mod synapse;
